// Package nvml reads GPU health from the NVIDIA driver through go-nvml. It is the only
// package that imports go-nvml and the only one that needs cgo.
//
// Two builds, chosen by build constraints:
//   - source.go (linux, cgo, and on amd64 the no_dynamic_plugins tag): the real
//     source, which opens libnvidia-ml at run time;
//   - stub.go (every other build): Load reports that NVML support was not built in,
//     and the agent runs without GPU monitoring.
//
// Why the tag: go-nvml leaves NVML's symbols unresolved until libnvidia-ml is opened at
// run time. On linux/amd64 the containerd client links Go's plugin package, which makes
// the linker bind every symbol at program start (-z now), so a binary with both would
// die before main with "undefined symbol: nvml…", GPU or not. The tag drops
// containerd's plugin loader; the Makefile and deploy/Dockerfile set it. Without it the
// agent still builds and runs, and says that GPU monitoring was not built in.
package nvml
