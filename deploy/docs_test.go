package deploy

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
)

// The operator's guide is reachable from the README, its links resolve, and it explains
// every alert that ships.
func TestOperatingGuide(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(readme), "](docs/operating.md)") {
		t.Error("README does not link docs/operating.md")
	}
	guide, err := os.ReadFile("../docs/operating.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range regexp.MustCompile(`\]\(([^)#]+)(#[^)]*)?\)`).FindAllStringSubmatch(string(guide), -1) {
		if strings.Contains(m[1], "://") {
			continue
		}
		if _, err := os.Stat(filepath.Join("../docs", m[1])); err != nil {
			t.Errorf("docs/operating.md links %s: %v", m[1], err)
		}
	}
	rule := find[*monitoringv1.PrometheusRule](t, rendered(t))
	for _, g := range rule.Spec.Groups {
		for _, r := range g.Rules {
			if !strings.Contains(string(guide), "`"+r.Alert+"`") {
				t.Errorf("docs/operating.md does not explain alert %s", r.Alert)
			}
		}
	}
}
