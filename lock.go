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
	"sync/atomic"
	"time"
	"unsafe"
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
// byte C code locks with ng_mutex_lock (CPython's PyMutex). Uncontended, Lock is one inlined
// Go compare-and-swap and Unlock (on amd64, where the C core unlocks with plain stores) one
// plain store, with no cgo call; a contended Lock first yields to other goroutines for a
// while (runtime.Gosched), then parks the calling OS thread in the C parking lot. A waiter
// that has waited more than 1 ms in the parking lot is handed the lock directly on unlock, so
// no locker starves.
//
// Create one with NewMutex (or wrap C memory with MutexAt) and Close it when done. Unlike
// sync.Mutex, the zero value is not usable. Like sync.Mutex, it is not reentrant and may be
// unlocked by a goroutine other than the one that locked it.
type Mutex struct {
	_       noCopy
	cell    byteCell
	c       *C.ng_mutex
	plain   *uint8  // the lock byte when Unlock is a plain store (see unlockOr), else nil
	parkers *uint32 // announced-parker count of c's bucket, for the plain-store unlock
	mem     cMemory
	race    raceEdge
}

// useStoreUnlock: Unlock may be a plain store (see unlockOr). The C core decided the mode
// when it was loaded, before any Go code ran, and it never changes. Race builds unlock with a
// CAS, after the race detector's release edge.
var useStoreUnlock = plainStoreIsRelease && !raceEnabled && C.ng_plain_unlock != 0

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
		m.plain, m.parkers = (*uint8)(mem.p), (*uint32)(unsafe.Pointer(C.ng_go_parkers(mem.p)))
	}
}

// CPtr returns the ng_mutex* that C code can lock and unlock.
func (m *Mutex) CPtr() unsafe.Pointer { return unsafe.Pointer(m.c) }

// Lock locks m, waiting as long as needed.
func (m *Mutex) Lock() { m.lockOr((*Mutex).lockSlow) }

// lockOr is Lock's fast path: m.cell.casAlone from 0 to locked, then slow on failure, and
// always in race builds (whose slow paths add the race detector's edges). Inlined, as
// sync.Mutex's is, an uncontended Lock is one CAS and no call. slow is a parameter only to
// keep Lock within the inlining budget, which charges less for a call through a parameter;
// once inlined, it is a direct call.
func (m *Mutex) lockOr(slow func(*Mutex)) {
	if raceEnabled || !m.cell.casAlone(0, locked) {
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
func (m *Mutex) Unlock() { m.unlockOr((*Mutex).unlockSlow) }

// unlockOr is Unlock's fast path. Where the C core unlocks with a plain store (amd64 with
// membarrier), so does it, as Go code the compiler inlines: a plain load finds the byte plain
// LOCKED, a plain MOVB stores 0 (a release store under x86-TSO), and a load of the bucket's
// announced-parker count, ordered after the store by a parker's membarrier (see
// csrc/include/nogil/park_announce.h), says whether someone may need waking; slow then wakes.
// The wrapper's fields are read before the store: once the byte is 0, the next owner may
// Close m and clear them. The compiler keeps the order of the store and the count load (the
// asymmetric fence needs it in the instruction stream, as C's signal fence does) because
// Go's SSA threads every store and atomic through one memory state; the Go memory model
// itself does not promise it.
//
// Where a plain store is not a release store, the byte is released with casAlone. A CAS
// unlock that finds the byte plain LOCKED need not look for announced parkers: only a plain
// store can wipe a sleeper's HAS_PARKED, and the unlocker whose store wiped it reads the
// announcements and wakes. Any other state goes to slow(m, nil), as do race builds (plain is
// nil there, and the CAS path tests raceEnabled).
func (m *Mutex) unlockOr(slow func(*Mutex, *C.ng_mutex)) {
	var stored *C.ng_mutex
	if plainStoreIsRelease {
		if p, parkers := m.plain, m.parkers; p != nil && *p == locked {
			*p = 0
			if atomic.LoadUint32(parkers) == 0 {
				return
			}
			stored = (*C.ng_mutex)(unsafe.Pointer(p))
		}
	} else if !raceEnabled && m.cell.casAlone(locked, 0) {
		return
	}
	slow(m, stored)
}

// unlockSlow unlocks when unlockOr could not: the byte is not plain LOCKED (parked waiters
// to wake, or not locked at all), a borrowed byte's neighbours are in use, CAS mode on
// amd64, or a race build. A CAS unlock is right in either mode (it cannot wipe the parked
// bit), so this path needs no plain store. With stored (the lock that unlockOr has already
// released with a plain store, finding parkers announced in its bucket) only the wake is
// left, and m must not be read: its next owner may have closed it.
func (m *Mutex) unlockSlow(stored *C.ng_mutex) {
	if stored != nil {
		C.ng_mutex_unlock_wake(stored)
		return
	}
	// Read the wrapper before the race-build release: once the lock is free, the next owner
	// may Close it (and so write these fields).
	cell, c := m.cell, m.c
	m.race.release()
	if c == nil {
		panic(mutexUnusable)
	}
	if cell.casOnce(locked, 0) {
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
	m.c, m.cell, m.plain, m.parkers = nil, byteCell{}, nil, nil
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
