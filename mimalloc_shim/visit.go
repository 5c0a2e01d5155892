package mimalloc_shim

/*
#include <stdbool.h>
#include <stdint.h>
#include "nogil.h"

extern int nogilMiVisitCallback(void *block, size_t size, uintptr_t handle);

static bool ng_go_mi_visit_tramp(void *block, size_t size, void *arg)
{
	return nogilMiVisitCallback(block, size, (uintptr_t)arg) != 0;
}

static int ng_go_mi_heap_visit(ng_mi_heap *heap, uintptr_t handle)
{
	return ng_mi_heap_visit(heap, ng_go_mi_visit_tramp, (void *)handle);
}

static int ng_go_mi_abandoned_visit(ng_interp *interp, int kind, uintptr_t handle)
{
	return ng_mi_abandoned_visit(interp, (ng_mi_heap_kind)kind, ng_go_mi_visit_tramp, (void *)handle);
}
*/
import "C"

import (
	"fmt"
	"runtime/cgo"
	"unsafe"

	"github.com/nogil-go/nogil"
)

// A visitor is one walk's Go side. C gets only a cgo.Handle of it, never a Go pointer.
type visitor struct {
	fn       func(p unsafe.Pointer, size uintptr) bool
	panicked bool
	panicVal any
}

// call runs fn; a panic stops the walk (so C unwinds normally, releasing what it holds) and
// is raised again once the C walk has returned.
func (v *visitor) call(p unsafe.Pointer, size uintptr) (more bool) {
	defer func() {
		if r := recover(); r != nil {
			v.panicked, v.panicVal, more = true, r, false
		}
	}()
	return v.fn(p, size)
}

// walk runs a C walk with a handle of v and re-raises a panic of the callback.
func (v *visitor) walk(run func(handle C.uintptr_t) C.int) C.int {
	handle := cgo.NewHandle(v)
	st := run(C.uintptr_t(handle))
	handle.Delete()
	if v.panicked {
		panic(v.panicVal)
	}
	return st
}

// Visit calls fn for every live block of the heap, with the block and its block size (its
// size class), until fn returns false. Blocks other goroutines freed count as freed: the
// owner's Visit collects them first.
//
// The heap's bound goroutine may call it while its state is attached; fn must not allocate
// from or free into this heap (those calls return an error matching nogil.ErrBusy). Any
// other goroutine may call it only from the function it passed to Interpreter.StopTheWorld
// (the owner is then paused); elsewhere, even on a third goroutine while the world is
// stopped, it gets an error matching nogil.ErrWrongThread.
func (h *Heap) Visit(fn func(p unsafe.Pointer, size uintptr) bool) error {
	if fn == nil {
		return newError("Visit", "nil function", nogil.ErrInvalid)
	}
	if h == nil || h.c == nil {
		return newError("Visit", "nil Heap; get one from HeapOf", nogil.ErrInvalid)
	}
	owner := h.token.IsCurrent()
	if owner {
		if err := h.check("Visit"); err != nil {
			return err
		}
		h.busy = true
		defer func() { h.busy = false }()
	} else if h.ts.State() == nogil.Released {
		return errReleased("Visit")
	}
	v := &visitor{fn: fn}
	st := v.walk(func(handle C.uintptr_t) C.int { return C.ng_go_mi_heap_visit(h.c, handle) })
	if st == C.NG_EWRONGTHREAD {
		return newError("Visit", "called by a goroutine other than the heap's bound "+
			"goroutine outside the function it passed to Interpreter.StopTheWorld",
			nogil.ErrWrongThread)
	}
	return statusError("Visit", st)
}

// AbandonedVisit calls fn for every live block of kind kind in the interpreter's abandoned
// pool: blocks of heaps whose thread state was released, or whose goroutine returned, that
// no thread has reclaimed yet. It must be called from the function passed to
// in.StopTheWorld, by the goroutine that stopped the world: elsewhere, even on another
// goroutine while the world is stopped, it returns an error matching nogil.ErrState. fn must
// not allocate or free.
func AbandonedVisit(in *nogil.Interpreter, kind HeapKind, fn func(p unsafe.Pointer, size uintptr) bool) error {
	if fn == nil {
		return newError("AbandonedVisit", "nil function", nogil.ErrInvalid)
	}
	if !kind.valid() {
		return newError("AbandonedVisit", fmt.Sprintf("unknown heap kind %d", int(kind)), nogil.ErrInvalid)
	}
	if err := interpLive("AbandonedVisit", in); err != nil {
		return err
	}
	v := &visitor{fn: fn}
	st := v.walk(func(handle C.uintptr_t) C.int {
		return C.ng_go_mi_abandoned_visit((*C.ng_interp)(in.CPtr()), C.int(kind), handle)
	})
	if st == C.NG_ESTATE {
		return newError("AbandonedVisit", "the calling goroutine has not stopped the world; "+
			"call it from the function passed to Interpreter.StopTheWorld", nogil.ErrState)
	}
	return statusError("AbandonedVisit", st)
}

// interpLive returns an error if in is nil or closed. The root package has no accessor for
// "closed"; SetLimits with zeros changes nothing and fails with ErrClosed after Close.
func interpLive(op string, in *nogil.Interpreter) error {
	if in == nil {
		return newError(op, "nil Interpreter", nogil.ErrInvalid)
	}
	if err := in.SetLimits(0, 0, 0); err != nil {
		return newError(op, "the Interpreter was closed", nogil.ErrClosed)
	}
	return nil
}
