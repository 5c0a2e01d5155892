//go:build !linux || !(amd64 || arm64) || !cgo

package gtoken

import "golang.org/x/sys/unix"

// current has no cheap goroutine descriptor here; the thread id alone serves the callers,
// whose goroutines stay locked to their threads.
func current() (gp, tp uintptr) { return 0, uintptr(unix.Gettid()) }

func isCurrent(t *Token) bool { return *t == Current() }

// NamesGoroutine reports whether tokens name the goroutine itself, not only its thread.
const NamesGoroutine = false
