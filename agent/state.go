package agent

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"go.uber.org/zap"

	"github.com/probe-agent/probe-agent/prober"
)

// stateFile is where the agent keeps what must survive its own restart.
const stateFile = "state.json"

// savedState is the agent's memory across restarts, keyed by container name.
type savedState struct {
	Version    int                       `json:"version"`
	Containers map[string]savedContainer `json:"containers"`
}

type savedContainer struct {
	Instance     string        `json:"instance"`
	RestartCount int           `json:"restart_count"`
	Started      bool          `json:"started"`
	Ready        bool          `json:"ready"`
	LastExitCode *int          `json:"last_exit_code,omitempty"`
	BackoffDelay time.Duration `json:"backoff_delay"`
	BackoffLast  time.Time     `json:"backoff_last"`
}

// loadState reads the saved state; a missing file is an empty state.
func loadState(dir string) (savedState, error) {
	s := savedState{Version: 1, Containers: map[string]savedContainer{}}
	data, err := os.ReadFile(filepath.Join(dir, stateFile))
	if os.IsNotExist(err) {
		return s, nil
	}
	if err != nil {
		return s, err
	}
	if err := json.Unmarshal(data, &s); err != nil {
		return savedState{Version: 1, Containers: map[string]savedContainer{}},
			fmt.Errorf("%s: %w (starting without saved state)", filepath.Join(dir, stateFile), err)
	}
	if s.Containers == nil {
		s.Containers = map[string]savedContainer{}
	}
	return s, nil
}

// writeState replaces the state file atomically: a complete new file is synced and
// renamed over the old one, so a crash leaves either the old or the new state.
func writeState(dir string, data []byte) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, stateFile+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, stateFile)); err != nil {
		return err
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// snapshot builds the state to save; called with a.mu held.
func (a *Agent) snapshot() savedState {
	s := savedState{Version: 1, Containers: map[string]savedContainer{}}
	for name, cs := range a.ctrs {
		started, ready, _ := a.probeReadiness(cs) // the GPU is looked at again after a restart
		delay, last := cs.backoff.State()
		s.Containers[name] = savedContainer{Instance: cs.instance, RestartCount: cs.restarts, Started: started,
			Ready: ready, LastExitCode: cs.lastExit, BackoffDelay: delay, BackoffLast: last}
	}
	return s
}

// persist saves the state if it changed; called with a.mu held.
func (a *Agent) persist() {
	if a.opts.StateDir == "" {
		return
	}
	data, err := json.MarshalIndent(a.snapshot(), "", "  ")
	if err != nil || string(data) == a.lastSaved {
		return
	}
	if err := writeState(a.opts.StateDir, data); err != nil {
		a.log.Error("cannot save state", zap.String("state_dir", a.opts.StateDir), zap.Error(err))
		return
	}
	a.lastSaved = string(data)
}

// restoreFor returns the probe state to restore for a container instance found running.
func (a *Agent) restoreFor(name, instance string) *prober.Restore {
	sc, ok := a.saved.Containers[name]
	if !ok || sc.Instance != instance {
		return nil
	}
	r := &prober.Restore{Started: sc.Started, Readiness: prober.ValueFailure}
	if sc.Ready {
		r.Readiness = prober.ValueSuccess
	}
	return r
}

// restoreSaved reads what the previous agent left in the state dir, if there is one.
func (a *Agent) restoreSaved() {
	if a.opts.StateDir == "" {
		return
	}
	saved, err := loadState(a.opts.StateDir)
	if err != nil {
		a.log.Error("cannot read saved state", zap.Error(err))
	}
	a.saved = saved
}
