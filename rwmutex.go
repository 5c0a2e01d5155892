package nogil

// #include "nogil.h"
import "C"

import (
	"sync/atomic"
	"unsafe"
)

const (
	rwWriter    = uintptr(C.NG_WRITE_LOCKED)
	rwParked    = uintptr(C.NG_RWMUTEX_PARKED)
	rwOneReader = uintptr(1) << C.NG_RWMUTEX_READER_SHIFT
)

// An RWMutex is a writer-preferring readers-writer lock in one word of C memory (CPython's
// _PyRWMutex): once a writer waits, new readers wait behind it. Uncontended RLock, RUnlock,
// Lock and Unlock are Go atomics on the same word C code uses (CPtr). Not reentrant: a
// goroutine that holds a read lock must not RLock again while a writer may be waiting.
type RWMutex struct {
	_    noCopy
	bits *uintptr
	c    *C.ng_rwmutex
	mem  cMemory
	// Race-build edges: a writer's Unlock to later readers and writers, readers' RUnlock to
	// later writers.
	fromWriter, fromReaders raceEdge
}

// NewRWMutex returns an unlocked RWMutex in freshly allocated C memory.
func NewRWMutex() *RWMutex {
	rw := &RWMutex{}
	rw.init(allocFor(rw, "RWMutex"))
	return rw
}

// RWMutexAt wraps the ng_rwmutex at p in C memory; Close does not free it.
func RWMutexAt(p unsafe.Pointer) *RWMutex {
	rw := &RWMutex{}
	rw.init(borrow(p, "RWMutex"))
	return rw
}

func (rw *RWMutex) init(mem cMemory) {
	rw.mem, rw.c = mem, (*C.ng_rwmutex)(mem.p)
	rw.bits = (*uintptr)(unsafe.Pointer(&rw.c.bits))
}

// CPtr returns the ng_rwmutex* for C code.
func (rw *RWMutex) CPtr() unsafe.Pointer { return unsafe.Pointer(rw.c) }

// RLock locks rw for reading.
func (rw *RWMutex) RLock() {
	rw.mem.mustOpen("RWMutex")
	// A failed CAS means another reader got in first: retry here rather than pay a cgo call
	// (the C path would only retry the same CAS). Only a writer or a parked waiter sends a
	// reader to C, where it may sleep.
	for b := atomic.LoadUintptr(rw.bits); b&(rwWriter|rwParked) == 0; b = atomic.LoadUintptr(rw.bits) {
		if atomic.CompareAndSwapUintptr(rw.bits, b, b+rwOneReader) {
			rw.fromWriter.acquire()
			return
		}
	}
	C.ng_rwmutex_rlock(rw.c)
	rw.fromWriter.acquire()
}

// TryRLock read-locks rw if no writer holds or waits for it, and reports whether it did.
func (rw *RWMutex) TryRLock() bool {
	rw.mem.mustOpen("RWMutex")
	if !C.ng_rwmutex_tryrlock(rw.c) {
		return false
	}
	rw.fromWriter.acquire()
	return true
}

// RUnlock undoes one RLock. It panics if rw is not read-locked, as sync.RWMutex does.
func (rw *RWMutex) RUnlock() {
	// Wrapper fields are read before the race-build release (see Mutex.Unlock).
	bits, c := rw.bits, rw.c
	if c == nil {
		panic(rwUnusable)
	}
	rw.fromReaders.release()
	// Only the last reader out with waiters parked needs C (to wake them); a failed CAS is
	// another reader's change, retried here (see RLock).
	for {
		b := atomic.LoadUintptr(bits)
		if b/rwOneReader <= 1 && (b < rwOneReader || b&rwParked != 0) {
			break
		}
		if atomic.CompareAndSwapUintptr(bits, b, b-rwOneReader) {
			return
		}
	}
	if C.ng_rwmutex_runlock(c) == C.NG_ENOTLOCKED {
		panic("nogil: RUnlock of unlocked RWMutex")
	}
}

// Lock locks rw for writing.
func (rw *RWMutex) Lock() {
	rw.mem.mustOpen("RWMutex")
	if !atomic.CompareAndSwapUintptr(rw.bits, 0, rwWriter) {
		C.ng_rwmutex_lock(rw.c)
	}
	rw.fromWriter.acquire()
	rw.fromReaders.acquire()
}

// TryLock write-locks rw if it is free and reports whether it did.
func (rw *RWMutex) TryLock() bool {
	rw.mem.mustOpen("RWMutex")
	if !C.ng_rwmutex_trylock(rw.c) {
		return false
	}
	rw.fromWriter.acquire()
	rw.fromReaders.acquire()
	return true
}

// Unlock undoes Lock. It panics if rw is not write-locked, as sync.RWMutex does.
func (rw *RWMutex) Unlock() {
	bits, c := rw.bits, rw.c
	if c == nil {
		panic(rwUnusable)
	}
	rw.fromWriter.release()
	if !atomic.CompareAndSwapUintptr(bits, rwWriter, 0) &&
		C.ng_rwmutex_unlock(c) == C.NG_ENOTLOCKED {
		panic("nogil: Unlock of unlocked RWMutex")
	}
}

const rwUnusable = "nogil: RWMutex used after Close or not made by NewRWMutex/RWMutexAt"

// Close frees the memory of an RWMutex made by NewRWMutex; ErrLocked if it is held.
func (rw *RWMutex) Close() error {
	if rw.c != nil && (atomic.LoadUintptr(rw.bits)&^rwParked != 0 || rw.mem.inUse()) {
		return ErrLocked
	}
	if err := rw.mem.close(); err != nil {
		return err
	}
	rw.c, rw.bits = nil, nil
	return nil
}
