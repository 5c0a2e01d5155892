package mimalloc_shim

// #include "nogil.h"
// #define NG_GO_FREE_DETACHED 1
import "C"

import (
	"errors"
	"fmt"

	"github.com/nogil-go/nogil"
)

// Errors of checked frees (the nogil_debug build). Both also match nogil.ErrInvalid.
var (
	// ErrNotAllocated reports a Free of a pointer this allocator did not hand out (a foreign
	// pointer, or one into the middle of a block). Only the nogil_debug build detects it.
	ErrNotAllocated = errors.New("nogil: pointer not allocated by this allocator")
	// ErrDoubleFree reports a Free of a block that is already free. Only the nogil_debug
	// build detects it.
	ErrDoubleFree = errors.New("nogil: double free")
)

// An allocError says which operation failed and why; it matches its sentinels (the root
// package's ErrWrongThread, ErrReleased, ... and this package's) with errors.Is.
type allocError struct {
	op   string
	msg  string
	base []error
}

func (e *allocError) Error() string   { return "nogil: " + e.op + ": " + e.msg }
func (e *allocError) Unwrap() []error { return e.base }

func newError(op, msg string, base ...error) error {
	return &allocError{op: op, msg: msg, base: base}
}

func errWrongThread(op string) error {
	return newError(op, "Heap used from a goroutine other than the ThreadState's bound "+
		"goroutine (the one that called Bind and HeapOf); call it from that goroutine, or "+
		"use the package-level Free", nogil.ErrWrongThread)
}

func errReleased(op string) error {
	return newError(op, "ThreadState used after Release (or after its goroutine returned "+
		"and its OS thread exited); its heaps are gone", nogil.ErrReleased)
}

func errNotAttached(op string) error {
	return newError(op, "ThreadState is not attached; call Attach first", nogil.ErrState)
}

func errNoMemory(op string, size uintptr) error {
	return newError(op, fmt.Sprintf("cannot allocate %d bytes (the kernel refused a mapping, "+
		"or the size overflows)", size), nogil.ErrNoMemory)
}

// statusError turns a C status of this package's functions into an error (nil for NG_OK).
func statusError(op string, st C.int) error {
	switch st {
	case C.NG_OK:
		return nil
	case C.NG_EWRONGTHREAD:
		return errWrongThread(op)
	case C.NG_ERELEASED:
		return errReleased(op)
	case C.NG_EINVAL:
		return newError(op, "invalid argument", nogil.ErrInvalid)
	case C.NG_ESTATE:
		return newError(op, "wrong state for this operation", nogil.ErrState)
	case C.NG_ENOMEM:
		return newError(op, "out of memory", nogil.ErrNoMemory)
	case C.NG_EBUSY:
		return newError(op, "busy", nogil.ErrBusy)
	}
	return newError(op, C.GoString(C.ng_strerror(st)))
}

// freeError turns the status of ng_go_mi_free (heap.go) into an error.
func freeError(op string, st C.int) error {
	switch st {
	case C.NG_OK:
		return nil
	case C.NG_EINVAL:
		return newError(op, "pointer not allocated by this allocator", ErrNotAllocated, nogil.ErrInvalid)
	case C.NG_GO_FREE_DETACHED:
		return newError(op, "block of an object heap freed by its ThreadState's own "+
			"goroutine while detached, with none of its states in that Interpreter "+
			"attached (a StopTheWorld may be walking that heap); Attach first: the block "+
			"is still allocated", nogil.ErrState)
	case C.NG_ESTATE:
		return newError(op, "double free", ErrDoubleFree, nogil.ErrInvalid)
	}
	return statusError(op, st)
}
