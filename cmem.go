package nogil

/*
#include <stdlib.h>
#include <string.h>
#include "nogil.h"

// One cgo call: a zeroed cache line (every lock's zero value is "unlocked").
static void *ng_go_alloc_cell(size_t size)
{
	void *p = aligned_alloc(size, size);
	if (p != NULL)
		memset(p, 0, size);
	return p;
}
*/
import "C"

import (
	"fmt"
	"os"
	"runtime"
	"sync/atomic"
	"unsafe"
)

// Lock state lives in C memory so that C code can use the same lock (Go memory may not be
// kept by C). Each wrapper owns its allocation and frees it in Close. If a wrapper becomes
// unreachable without Close, the memory is deliberately not freed, because C code may still
// use it; instead the leak handler is told.

// cellSize is the allocation unit: one cache line, so two locks never share a line.
const cellSize = 64

func allocCell() unsafe.Pointer {
	p := C.ng_go_alloc_cell(cellSize)
	if p == nil {
		panic("nogil: out of C memory")
	}
	return p
}

func freeCell(p unsafe.Pointer) { C.free(p) }

var leakHandler atomic.Pointer[func(string)]

// SetLeakHandler installs the function told about a lock that was garbage-collected without
// Close (its C memory is leaked on purpose, since C code may still hold it). The default
// writes one line to standard error. nil restores the default.
func SetLeakHandler(h func(what string)) {
	if h == nil {
		leakHandler.Store(nil)
		return
	}
	leakHandler.Store(&h)
}

func reportLeak(what string) {
	if h := leakHandler.Load(); h != nil {
		(*h)(what)
		return
	}
	fmt.Fprintf(os.Stderr, "nogil: %s\n", what)
}

// cMemory is the C memory behind one lock wrapper: either allocated by a New* constructor
// (owned: freed by close, leak-reported if never closed) or borrowed from C (*At wrappers).
type cMemory struct {
	p       unsafe.Pointer
	cleanup runtime.Cleanup
	owned   bool
}

// allocFor allocates a zeroed cell for wrapper, reporting a leak as kind if wrapper becomes
// unreachable before close.
func allocFor[T any](wrapper *T, kind string) cMemory {
	return cMemory{
		p:     allocCell(),
		owned: true,
		cleanup: runtime.AddCleanup(wrapper, func(kind string) {
			reportLeak(kind + " garbage-collected without Close; its C memory is leaked")
		}, kind),
	}
}

// borrow wraps C memory the caller keeps ownership of.
func borrow(p unsafe.Pointer, kind string) cMemory {
	if p == nil {
		panic("nogil: " + kind + "At(nil)")
	}
	return cMemory{p: p}
}

// close frees owned memory; afterwards mustOpen panics.
func (m *cMemory) close() error {
	if m.p == nil {
		return ErrClosed
	}
	if m.owned {
		m.cleanup.Stop()
		freeCell(m.p)
	}
	*m = cMemory{}
	return nil
}

// inUse reports whether threads are parked on the lock's memory right now. A set
// has-parked bit alone does not mean that: a waiter that timed out or was cancelled leaves it.
func (m *cMemory) inUse() bool {
	return m.p != nil && C.ng_parking_lot_waiters(m.p) > 0
}

func (m *cMemory) mustOpen(kind string) {
	if m.p == nil {
		panic("nogil: " + kind + " used after Close or not made by New" + kind + "/" + kind + "At")
	}
}
