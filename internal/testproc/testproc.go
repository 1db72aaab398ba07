// Package testproc finds processes for tests that check what is left running.
package testproc

import (
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
)

// Find returns the live (not zombie) processes whose argv is exactly argv.
func Find(argv ...string) []int {
	want := strings.Join(argv, "\x00") + "\x00"
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if string(cmdline) == want && Alive(pid) {
			out = append(out, pid)
		}
	}
	return out
}

// Alive reports whether pid is a process that has not exited (a zombie has).
func Alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] != 'Z'
}

// UniqueSleep returns an argument for sleep that no other process is likely to use, so
// that Find("sleep", arg) finds the test's own.
func UniqueSleep() string { return strconv.Itoa(100000 + rand.IntN(900000)) }
