//go:build cgo && linux && (amd64 || arm64)

package cgosymbolizer

/*
#cgo CFLAGS: -std=gnu11 -O2 -g -Wall -Wextra -Wno-unused-parameter -fno-omit-frame-pointer
#cgo LDFLAGS: -ldl
#cgo nogil_libdw LDFLAGS: -ldw -lelf -lpthread

#include <stdint.h>
#include "cgosymbolizer.h"

// For the package's tests: runs the traceback function outside a signal handler, one C
// frame below the cgo wrapper, and returns the number of frames recorded. (Returning a
// value keeps the cgo wrapper from tail-calling it, so the wrapper keeps its frame.)
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
	"unsafe"
)

func init() {
	C.nogilcsym_init()
	runtime.SetCgoTraceback(0, unsafe.Pointer(C.nogilcsym_traceback), nil, unsafe.Pointer(C.nogilcsym_symbolizer))
}

// The rest of this file exists for the package's tests (cgo is not allowed in _test.go
// files). The linker drops it from programs that only blank-import the package.

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
