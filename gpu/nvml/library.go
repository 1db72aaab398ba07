package nvml

import (
	"errors"
	"os"
	"path/filepath"
)

// ErrUnavailable says this build cannot talk to NVML: it was built without cgo, or on
// linux/amd64 without the no_dynamic_plugins tag (see stub.go).
var ErrUnavailable = errors.New("NVML support not built in (needs cgo and, on linux/amd64, -tags no_dynamic_plugins)")

// LibraryName is the NVML library the driver installs.
const LibraryName = "libnvidia-ml.so.1"

// libraryDirs are where distributions and the GPU operator's driver container put
// the driver's libraries, relative to the driver root.
var libraryDirs = []string{
	"usr/lib64", "usr/lib/x86_64-linux-gnu", "usr/lib/aarch64-linux-gnu", "lib64",
	"lib/x86_64-linux-gnu", "lib/aarch64-linux-gnu", "usr/lib", "lib",
}

// LibraryPath finds NVML under a driver root (for example /run/nvidia/driver when the
// GPU operator's driver container is used). With no root, or when the root has no
// library, it returns the bare name for the dynamic loader to find.
func LibraryPath(driverRoot string) string {
	if driverRoot == "" || driverRoot == "/" {
		return LibraryName
	}
	for _, dir := range libraryDirs {
		p := filepath.Join(driverRoot, dir, LibraryName)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return LibraryName
}
