// Package gtoken tells (goroutine, OS thread) pairs apart cheaply. The thread-state wrappers
// use it to check, on their nanosecond fast paths, that they are called by the goroutine
// that bound them, on the thread it was bound on, without a system call.
//
// The goroutine part alone is not enough. A goroutine that returns while locked to its
// thread (runtime.LockOSThread) has its descriptor put on the runtime's free list before
// the thread exits and runs the destructor that marks its bindings dead (gobind.c): in that
// window a new goroutine can get the same descriptor. And a goroutine that calls
// runtime.UnlockOSThread by mistake moves on to other threads. The thread part tells both
// apart from the bound pair: the dying thread runs no goroutine, and a live thread's
// pointer is its own.
package gtoken

// A Token identifies the calling goroutine together with the OS thread it runs on. Tokens
// are comparable: two calls from the same live goroutine on the same thread give equal
// tokens, and two goroutines running at the same time give different ones. A token can
// come back after its goroutine has exited: a new goroutine may get the same descriptor and
// run on the same thread, or on a new thread that got an exited one's pointer. The zero
// Token is never current.
type Token struct {
	g  uintptr // the runtime's goroutine descriptor (0 where it cannot be read cheaply)
	tp uintptr // the thread pointer, or the thread id
}

// Current returns the token of the calling goroutine on its current thread.
//
// On linux/amd64 and linux/arm64 with cgo it is the address of the runtime's goroutine
// descriptor and the thread pointer that libc set (about 2 ns, no system call). Elsewhere
// it is the OS thread id from gettid(2), which is as good for a goroutine locked to its
// thread, at the cost of a system call.
func Current() Token {
	g, tp := current()
	return Token{g, tp}
}

// IsCurrent reports whether *t == Current(), for the fast paths: it saves the round trip of
// Current's two results through memory (about 0.2 ns).
func (t *Token) IsCurrent() bool { return isCurrent(t) }

// IsCurrentGoroutine reports whether the caller is t's goroutine, on whatever thread it runs
// now. It is exact only while t's goroutine is known to be running (its descriptor can be
// reused once it exits), so the owner must withdraw t before it returns. Where tokens do
// not name the goroutine (NamesGoroutine false) it compares threads, as IsCurrent does.
func (t *Token) IsCurrentGoroutine() bool {
	if !NamesGoroutine {
		return t.IsCurrent()
	}
	g, _ := current()
	return g == t.g
}
