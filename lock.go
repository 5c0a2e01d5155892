package nogil

/*
#include "nogil.h"

// Where unlocks of the mutex at p look for announced parkers (nogil/park_announce.h).
static uint32_t *ng_go_parkers(void *p)
{
	return &ng_park_announce_slots[ng_lot_bucket_index(p)].parkers;
}

// One cgo call that installs a cancellation token around a timed lock.
static int ng_go_mutex_lock(ng_mutex *m, int64_t timeout_ns, ng_cancel *token)
{
	ng_cancel *previous = ng_cancel_install(token);
	int status = ng_mutex_lock_timed(m, timeout_ns, NG_WAIT_DETACH);
	ng_cancel_install(previous);
	return status;
}
*/
import "C"

import (
	"context"
	"runtime"
	"time"
	"unsafe"

	"github.com/nogil-go/nogil/internal/storeunlock"
)

const (
	locked    = C.NG_LOCKED
	hasParked = C.NG_HAS_PARKED
)

// A contended Lock waits in Go before it takes the cgo slow path (about 65 ns a call here,
// then a futex sleep that costs the unlocker a wake-up): goYieldRounds rounds of
// goYieldsPerRound runtime.Gosched calls, each round followed by one look at the byte. The
// yields hand the P to any other goroutine (with GOMAXPROCS=1 that may be the holder itself)
// and keep this goroutine off the byte's cache line while the holder runs; looking only once
// per round keeps the two goroutines from trading the lock on nearly every acquisition.
// Measured with cmd/nogil lockbench (2 goroutines, cs 10, 30 alternating runs): 1.16x
// sync.Mutex (median; 1 run below parity) with rounds of 10, 1.14x (6 runs below parity) with
// the earlier 16 back-to-back reads and no yield, about 0.75x when the byte was read after
// every second yield.
const (
	goYieldRounds    = 20
	goYieldsPerRound = 10
)

// A Mutex is a mutual-exclusion lock whose whole state is one byte in C memory, the same
// byte C code locks with ng_mutex_lock (CPython's PyMutex). Uncontended Lock and Unlock are
// each one inlined Go compare-and-swap, with no cgo call; a contended Lock first yields to
// other goroutines for a while (runtime.Gosched), then parks the calling OS thread in the C
// parking lot. A waiter that has waited more than 1 ms in the parking lot is handed the lock
// directly on unlock, so no locker starves.
//
// Create one with NewMutex (or wrap C memory with MutexAt) and Close it when done. Unlike
// sync.Mutex, the zero value is not usable. Like sync.Mutex, it is not reentrant and may be
// unlocked by a goroutine other than the one that locked it.
type Mutex struct {
	_       noCopy
	cell    byteCell
	c       *C.ng_mutex
	parkers *uint32 // announced-parker count of c's bucket, for the plain-store unlock
	mem     cMemory
	race    raceEdge
}

// useStoreUnlock: Unlock may be a plain store (see internal/storeunlock). The C core
// decided the mode when it was loaded, before any Go code ran, and it never changes.
var useStoreUnlock = storeunlock.Supported && C.ng_plain_unlock != 0

// NewMutex returns an unlocked Mutex in freshly allocated C memory.
func NewMutex() *Mutex {
	m := &Mutex{}
	m.init(allocFor(m, "Mutex"))
	return m
}

// MutexAt wraps the ng_mutex at p, which must point to C memory that stays valid while the
// Mutex is used (for example a field of a C struct). Close does not free it.
func MutexAt(p unsafe.Pointer) *Mutex {
	m := &Mutex{}
	m.init(borrow(p, "Mutex"))
	return m
}

func (m *Mutex) init(mem cMemory) {
	m.mem, m.c, m.cell = mem, (*C.ng_mutex)(mem.p), newByteCell(mem.p)
	m.cell.aloneIfQuiet(mem.owned)
	if useStoreUnlock {
		m.parkers = (*uint32)(unsafe.Pointer(C.ng_go_parkers(mem.p)))
	}
}

// CPtr returns the ng_mutex* that C code can lock and unlock.
func (m *Mutex) CPtr() unsafe.Pointer { return unsafe.Pointer(m.c) }

// Lock locks m, waiting as long as needed.
func (m *Mutex) Lock() { m.casOr(0, locked, (*Mutex).lockSlow) }

// casOr is the fast path of Lock (0 to locked) and Unlock (locked to 0): m.cell.casAlone,
// then slow on failure, and always in race builds (whose slow paths add the race detector's
// edges). Inlined, as sync.Mutex's are, an uncontended Lock and Unlock are one CAS each and
// no call. slow is a parameter only to keep Lock and Unlock within the inlining budget,
// which charges less for a call through a parameter; once inlined, it is a direct call.
//
// A CAS unlock that finds the byte plain LOCKED need not look for announced parkers (as
// the plain-store unlock in unlockSlow must): only a plain store can wipe a sleeper's
// HAS_PARKED, and the unlocker whose store wiped it reads the announcements and wakes.
func (m *Mutex) casOr(old, new uint8, slow func(*Mutex)) {
	if raceEnabled || !m.cell.casAlone(old, new) {
		slow(m)
	}
}

func (m *Mutex) lockSlow() {
	m.lockWait()
	m.race.acquire()
}

func (m *Mutex) lockWait() {
	m.check()
	if m.cell.casOnce(0, locked) { // a borrowed byte whose neighbours are in use
		return
	}
	// With waiters parked, spinning would only barge past them; the C path parks at once.
	if m.cell.load()&hasParked == 0 {
		for range goYieldRounds {
			for range goYieldsPerRound {
				runtime.Gosched()
			}
			if v := m.cell.load(); v&locked == 0 && m.cell.cas(v, v|locked) {
				return
			}
		}
	}
	C.ng_mutex_lock_timed(m.c, -1, C.NG_WAIT_DETACH)
}

// TryLock locks m if it is free and reports whether it did. Like the C try-lock it may take
// the lock ahead of parked waiters.
func (m *Mutex) TryLock() bool {
	m.check()
	for {
		v := m.cell.load()
		if v&locked != 0 {
			return false
		}
		if m.cell.cas(v, v|locked) {
			m.race.acquire()
			return true
		}
	}
}

// LockTimeout locks m, waiting at most d, and reports whether it did. d <= 0 is TryLock.
func (m *Mutex) LockTimeout(d time.Duration) bool {
	if m.TryLock() {
		return true
	}
	if d <= 0 {
		return false
	}
	if C.ng_mutex_lock_timed(m.c, C.int64_t(d), C.NG_WAIT_DETACH) != C.NG_OK {
		return false
	}
	m.race.acquire()
	return true
}

// LockContext locks m unless ctx is done first; then it returns ctx.Err() and m is not
// locked. The waiting thread is woken by the cancellation itself, not by polling.
func (m *Mutex) LockContext(ctx context.Context) error {
	if m.TryLock() {
		return nil
	}
	if ctx.Done() == nil {
		m.Lock()
		return nil
	}
	status := waitContext(ctx, func(token *C.ng_cancel) C.int {
		return C.ng_go_mutex_lock(m.c, -1, token)
	})
	if status == C.NG_OK {
		m.race.acquire()
		return nil
	}
	return ctx.Err()
}

// Unlock unlocks m. Unlocking an unlocked Mutex panics, as it does for sync.Mutex.
func (m *Mutex) Unlock() { m.casOr(locked, 0, (*Mutex).unlockSlow) }

// unlockSlow unlocks when the byte is not plain LOCKED in an otherwise zero word (parked
// waiters to wake, or a borrowed byte whose neighbours are in use), and in race builds.
func (m *Mutex) unlockSlow() {
	// Read the wrapper before the race-build release: once the lock is free, the next owner
	// may Close it (and so write these fields).
	cell, c, parkers := m.cell, m.c, m.parkers
	m.race.release()
	if c == nil {
		panic(mutexUnusable)
	}
	if useStoreUnlock {
		switch storeunlock.Unlock((*uint8)(unsafe.Pointer(c)), parkers) {
		case storeunlock.Unlocked:
			return
		case storeunlock.Announced:
			C.ng_mutex_unlock_wake(c)
			return
		}
	} else if cell.casOnce(locked, 0) {
		return
	}
	if C.ng_mutex_unlock_slow(c) == C.NG_ENOTLOCKED {
		panic("nogil: unlock of unlocked Mutex")
	}
}

// IsLocked reports whether m is locked right now (a snapshot).
func (m *Mutex) IsLocked() bool {
	m.check()
	return m.cell.load()&locked != 0
}

// Close frees the memory of a Mutex made by NewMutex. It fails with ErrLocked if m is held
// or has waiters. Using m after Close panics.
func (m *Mutex) Close() error {
	if m.c != nil && (m.cell.load()&locked != 0 || m.mem.inUse()) {
		return ErrLocked
	}
	if err := m.mem.close(); err != nil {
		return err
	}
	m.c, m.cell, m.parkers = nil, byteCell{}, nil
	return nil
}

const mutexUnusable = "nogil: Mutex used after Close or not made by NewMutex/MutexAt"

func (m *Mutex) check() {
	if m.c == nil {
		panic(mutexUnusable)
	}
}

// noCopy makes go vet's copylocks check flag copies of lock values.
type noCopy struct{}

func (*noCopy) Lock()   {}
func (*noCopy) Unlock() {}
