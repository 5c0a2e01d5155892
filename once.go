package nogil

// #include "nogil.h"
import "C"

import "unsafe"

const onceDone = C.NG_ONCE_DONE

// A Once runs an initialiser until it succeeds once (CPython's _PyOnceFlag). Unlike
// sync.Once, a failing initialiser (non-nil error, or a panic) leaves the Once unset and the
// next Do runs it again. Concurrent callers wait while one runs it. The state is one byte of
// C memory that C code can share through CPtr and ng_once_call.
type Once struct {
	_    noCopy
	cell byteCell
	c    *C.ng_once
	mem  cMemory
	race raceEdge
}

// NewOnce returns a Once in freshly allocated C memory.
func NewOnce() *Once {
	o := &Once{}
	o.init(allocFor(o, "Once"))
	return o
}

// OnceAt wraps the ng_once at p in C memory; Close does not free it.
func OnceAt(p unsafe.Pointer) *Once {
	o := &Once{}
	o.init(borrow(p, "Once"))
	return o
}

func (o *Once) init(mem cMemory) {
	o.mem, o.c, o.cell = mem, (*C.ng_once)(mem.p), newByteCell(mem.p)
}

// CPtr returns the ng_once* for C code.
func (o *Once) CPtr() unsafe.Pointer { return unsafe.Pointer(o.c) }

// Done reports whether an initialiser has succeeded.
func (o *Once) Done() bool {
	o.mem.mustOpen("Once")
	if o.cell.load() != onceDone {
		return false
	}
	o.race.acquire()
	return true
}

// Do calls f unless a previous call succeeded, and returns f's error (nil if it was not
// called). f must not call Do on the same Once.
func (o *Once) Do(f func() error) error {
	if o.Done() {
		return nil
	}
	// Read before the race-build release (see Mutex.Unlock).
	cell, c := o.cell, o.c
	// Uncontended start without cgo; otherwise C waits for the running initialiser.
	if !cell.casOnce(0, locked) {
		if C.ng_once_begin(c) != 1 {
			o.race.acquire()
			return nil // done by another caller meanwhile
		}
	}
	succeeded := false
	defer func() {
		// Runs on success, error and panic alike: waiters must never be left sleeping.
		if !succeeded || !cell.casOnce(locked, onceDone) {
			C.ng_once_end(c, boolInt(succeeded))
		}
	}()
	err := f()
	succeeded = err == nil
	if succeeded {
		o.race.release()
	}
	return err
}

// Close frees the memory of a Once made by NewOnce. It fails with ErrLocked while an
// initialiser runs.
func (o *Once) Close() error {
	if o.c != nil && (o.cell.load()&locked != 0 || o.mem.inUse()) {
		return ErrLocked
	}
	if err := o.mem.close(); err != nil {
		return err
	}
	o.c, o.cell = nil, byteCell{}
	return nil
}

func boolInt(b bool) C.int {
	if b {
		return 1
	}
	return 0
}
