//go:build linux && cgo && amd64 && !no_dynamic_plugins

package nvml

// go-nvml leaves NVML's symbols unresolved until libnvidia-ml is opened at run time.
// On linux/amd64 the containerd client links Go's plugin package, which makes the
// linker bind every symbol at program start (-z now), so a binary with both dies
// before main with "undefined symbol: nvml…", GPU or not. The build tag
// no_dynamic_plugins drops containerd's plugin loader; the Makefile sets it in GOFLAGS.
// This line stops a build without it:
var _ = buildWithTagNoDynamicPlugins
