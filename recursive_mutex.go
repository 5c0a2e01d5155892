package nogil

// #include "nogil.h"
import "C"

import (
	"time"
	"unsafe"
)

// A RecursiveMutex may be locked again by the OS thread that holds it (CPython's
// _PyRecursiveMutex); each Lock needs its Unlock. Ownership belongs to an OS thread, not a
// goroutine, so a goroutine must hold runtime.LockOSThread from its first Lock to its last
// Unlock; an Unlock from another thread panics. Every call is one cgo call (the owner check
// needs the C thread id).
type RecursiveMutex struct {
	_    noCopy
	c    *C.ng_recursive_mutex
	mem  cMemory
	race raceEdge
}

// NewRecursiveMutex returns an unlocked RecursiveMutex in freshly allocated C memory.
func NewRecursiveMutex() *RecursiveMutex {
	m := &RecursiveMutex{}
	m.init(allocFor(m, "RecursiveMutex"))
	return m
}

// RecursiveMutexAt wraps the ng_recursive_mutex at p in C memory; Close does not free it.
func RecursiveMutexAt(p unsafe.Pointer) *RecursiveMutex {
	m := &RecursiveMutex{}
	m.init(borrow(p, "RecursiveMutex"))
	return m
}

func (m *RecursiveMutex) init(mem cMemory) {
	m.mem, m.c = mem, (*C.ng_recursive_mutex)(mem.p)
}

// CPtr returns the ng_recursive_mutex* for C code.
func (m *RecursiveMutex) CPtr() unsafe.Pointer { return unsafe.Pointer(m.c) }

// Lock locks m, or adds a level if the calling thread holds it.
func (m *RecursiveMutex) Lock() {
	m.mem.mustOpen("RecursiveMutex")
	C.ng_recursive_mutex_lock(m.c)
	m.race.acquire()
}

// LockTimeout is Lock waiting at most d; it reports whether the caller now holds m.
func (m *RecursiveMutex) LockTimeout(d time.Duration) bool {
	m.mem.mustOpen("RecursiveMutex")
	if d < 0 {
		d = 0
	}
	if C.ng_recursive_mutex_lock_timed(m.c, C.int64_t(d), C.NG_WAIT_DETACH) != C.NG_OK {
		return false
	}
	m.race.acquire()
	return true
}

// Unlock removes one level, unlocking m at the last one. It panics if the calling OS thread
// does not hold m.
func (m *RecursiveMutex) Unlock() {
	m.mem.mustOpen("RecursiveMutex")
	c := m.c // read before the race-build release (see Mutex.Unlock)
	m.race.release()
	if C.ng_recursive_mutex_unlock(c) == C.NG_ENOTOWNER {
		panic("nogil: RecursiveMutex unlocked by an OS thread that does not hold it " +
			"(lock and unlock under runtime.LockOSThread)")
	}
}

// HeldByCurrentThread reports whether the calling OS thread holds m.
func (m *RecursiveMutex) HeldByCurrentThread() bool {
	m.mem.mustOpen("RecursiveMutex")
	return bool(C.ng_recursive_mutex_is_owned(m.c))
}

// Close frees the memory of a RecursiveMutex made by NewRecursiveMutex; ErrLocked if held.
func (m *RecursiveMutex) Close() error {
	if m.c != nil && (bool(C.ng_mutex_is_locked(&m.c.mutex)) || m.mem.inUse()) {
		return ErrLocked
	}
	if err := m.mem.close(); err != nil {
		return err
	}
	m.c = nil
	return nil
}
