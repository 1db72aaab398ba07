package nvml

import (
	"os"
	"path/filepath"
	"testing"
)

func TestLibraryPath(t *testing.T) {
	root := t.TempDir()
	if got := LibraryPath(root); got != LibraryName {
		t.Fatalf("empty root: %q", got)
	}
	for _, dir := range []string{"lib64", "usr/lib/x86_64-linux-gnu"} {
		if err := os.MkdirAll(filepath.Join(root, dir), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, dir, LibraryName), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// usr/lib/x86_64-linux-gnu comes before lib64.
	if got, want := LibraryPath(root), filepath.Join(root, "usr/lib/x86_64-linux-gnu", LibraryName); got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	if got := LibraryPath(""); got != LibraryName {
		t.Fatalf("no root: %q", got)
	}
}
