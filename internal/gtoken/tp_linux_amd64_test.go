//go:build cgo

package gtoken

import (
	"runtime"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The thread part is the thread's FS base, what C code on the thread uses as its thread
// pointer (glibc's pthread_self on x86-64), read here with arch_prctl rather than %fs:0.
func TestThreadPartIsTheFSBase(t *testing.T) {
	const archGetFS = 0x1003
	check := func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		var base uintptr
		if _, _, e := unix.Syscall(unix.SYS_ARCH_PRCTL, archGetFS, uintptr(unsafe.Pointer(&base)), 0); e != 0 {
			t.Skipf("arch_prctl(ARCH_GET_FS): %v", e)
		}
		if tp := Current().tp; tp != base || tp == 0 {
			t.Errorf("thread part %#x, FS base %#x", tp, base)
		}
	}
	check()
	done := make(chan struct{})
	go func() {
		defer close(done)
		check()
	}()
	<-done
}
