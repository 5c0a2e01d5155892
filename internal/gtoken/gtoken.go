// Package gtoken tells goroutines apart cheaply. The thread-state wrappers use it to check,
// on their nanosecond fast paths, that they are called by the goroutine that bound them: a
// goroutine locked to its OS thread (runtime.LockOSThread) is the only one that runs there,
// so "same goroutine" is "same OS thread" without a system call.
package gtoken

// Current returns a token for the calling goroutine: equal for two calls from the same live
// goroutine, different for two goroutines alive at the same time. A token may be reused
// after its goroutine has exited.
//
// On amd64 and arm64 it is the address of the runtime's goroutine descriptor (about 2 ns);
// elsewhere it is the OS thread id from gettid(2), which is just as good for a goroutine that
// stays locked to its thread, at the cost of a system call.
func Current() uintptr { return current() }
