//go:build cgo && linux && (amd64 || arm64)

package cgosymbolizer

/*
#cgo CFLAGS: -std=gnu11 -O2 -g -Wall -Wextra -Wno-unused-parameter -fno-omit-frame-pointer
#cgo LDFLAGS: -ldl
#cgo nogil_libdw LDFLAGS: -ldw -lelf -lpthread

#include <stdint.h>
#include "cgosymbolizer.h"

// Runs the traceback function outside a signal handler, one C frame below the cgo wrapper,
// and returns the number of frames recorded: for init (see cgoReturn) and the package's
// tests. (Returning a value keeps the cgo wrapper from tail-calling it, so the wrapper keeps
// its frame.)
__attribute__((noinline)) int nogilcsym_test_traceback(uintptr_t *buf, uintptr_t max)
{
	struct nogilcsym_traceback_arg arg = {0, 0, buf, max};
	int n = 0;
	nogilcsym_traceback(&arg);
	while ((uintptr_t)n < max && buf[n] != 0)
		n++;
	return n;
}
*/
import "C"

import (
	"runtime"
	"strings"
	"unsafe"
)

func init() {
	C.nogilcsym_init()
	if runtime.GOARCH == "arm64" { // amd64's walk ends before it (cgoReturn)
		C.nogilcsym_set_cgo_return(C.uintptr_t(cgoReturn()))
	}
	runtime.SetCgoTraceback(0, unsafe.Pointer(C.nogilcsym_traceback), nil, unsafe.Pointer(C.nogilcsym_symbolizer))
}

// cgoReturn finds the return address into runtime.asmcgocall from the cgo wrapper it calls,
// where the walk must end (see cgo_return in traceback.c), in a traceback taken from C before
// that end is known; 0 when the walk does not get that far (amd64, where the wrapper's saved
// frame pointer leads to the goroutine stack and ends the walk before it).
func cgoReturn() uintptr {
	for _, pc := range testTraceback() {
		if f := runtime.FuncForPC(pc); f != nil && strings.HasPrefix(f.Name(), "runtime.asmcgocall") {
			return pc + 1 // the walk records return addresses minus one
		}
	}
	return 0
}

// The rest of this file exists for the package's tests (cgo is not allowed in _test.go
// files) and, on arm64, for cgoReturn. Elsewhere the linker drops it from programs that
// only blank-import the package.

// frame is one answer of the symbolizer.
type frame struct {
	Func  string
	File  string
	Line  int
	Entry uintptr
}

// symbolize calls the symbolizer directly, the way the runtime does, following More.
func symbolize(pc uintptr) []frame {
	var arg C.struct_nogilcsym_symbolizer_arg
	var out []frame
	arg.pc = C.uintptr_t(pc)
	for i := 0; i < 100; i++ {
		C.nogilcsym_symbolizer(unsafe.Pointer(&arg))
		out = append(out, frame{
			Func:  C.GoString(arg._func),
			File:  C.GoString(arg.file),
			Line:  int(arg.lineno),
			Entry: uintptr(arg.entry),
		})
		if arg.more == 0 {
			break
		}
	}
	arg.pc = 0
	C.nogilcsym_symbolizer(unsafe.Pointer(&arg))
	return out
}

// testTraceback returns what the traceback function records when called (not from a
// signal handler) by the C function nogilcsym_test_traceback.
func testTraceback() []uintptr {
	var buf [32]C.uintptr_t
	n := int(C.nogilcsym_test_traceback(&buf[0], C.uintptr_t(len(buf))))
	pcs := make([]uintptr, n)
	for i := range pcs {
		pcs[i] = uintptr(buf[i])
	}
	return pcs
}

// tracebackEntry is the address of the C function nogilcsym_traceback.
func tracebackEntry() uintptr {
	return uintptr(unsafe.Pointer(C.nogilcsym_traceback))
}

// testTracebackEntry is the address of the C function nogilcsym_test_traceback.
func testTracebackEntry() uintptr {
	return uintptr(unsafe.Pointer(C.nogilcsym_test_traceback))
}
