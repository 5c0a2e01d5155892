//go:build linux && (amd64 || arm64) && cgo

package gtoken

// The thread pointer is libc's (glibc's or musl's thread control block): linked in here so
// that every binary using this package has one per thread. Without libc, Go on linux/amd64
// points FS at its own per-M block, whose first word is 0, and on linux/arm64 it leaves
// TPIDR_EL0 as the first thread had it: both are left to the gettid fallback.
import _ "runtime/cgo"

// current returns the running goroutine's descriptor (the g register on arm64, the g slot
// of thread-local storage on amd64), which the runtime never moves, and the thread pointer
// (%fs:0 on amd64, which the x86-64 TLS ABI defines to hold the pointer itself; TPIDR_EL0
// on arm64), which is the thread's own for as long as it lives.
func current() (gp, tp uintptr)

// isCurrent is *t == current(), without storing current's results and loading them back.
//
//go:noescape
func isCurrent(t *Token) bool

// NamesGoroutine reports whether tokens name the goroutine itself, not only its thread.
const NamesGoroutine = true
