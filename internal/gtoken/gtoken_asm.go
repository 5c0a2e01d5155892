//go:build amd64 || arm64

package gtoken

// current returns the g register (arm64) or the g slot of thread-local storage (amd64): the
// running goroutine's descriptor, which the runtime never moves.
func current() uintptr
