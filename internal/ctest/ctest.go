// Package ctest gives nogil's Go tests access to the C side of the library: it reads and
// writes lock memory with C atomics, calls the ng_* C API on the same memory the Go wrappers
// use, and runs C pthreads that take part in a test.
//
// cgo is not allowed in _test.go files, so these helpers live in an ordinary package. The
// ng_* symbols are defined by the root package, which this package imports for the link;
// therefore only external tests (package nogil_test) can use it.
package ctest

/*
#cgo CFLAGS: -std=gnu11 -I${SRCDIR}/../../csrc/include
#cgo LDFLAGS: -pthread
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "nogil.h"

static void *ctest_alloc(size_t n)
{
	size_t size = (n + 63) & ~(size_t)63;
	void *p = aligned_alloc(64, size ? size : 64);
	if (p)
		memset(p, 0, size ? size : 64);
	return p;
}

static uint8_t ctest_load8(const void *p) { return __atomic_load_n((const uint8_t *)p, __ATOMIC_SEQ_CST); }
static void ctest_store8(void *p, uint8_t v) { __atomic_store_n((uint8_t *)p, v, __ATOMIC_SEQ_CST); }
static uint32_t ctest_load32(const void *p) { return __atomic_load_n((const uint32_t *)p, __ATOMIC_SEQ_CST); }
static void ctest_store32(void *p, uint32_t v) { __atomic_store_n((uint32_t *)p, v, __ATOMIC_SEQ_CST); }
static uint64_t ctest_load64(const void *p) { return __atomic_load_n((const uint64_t *)p, __ATOMIC_SEQ_CST); }
static uintptr_t ctest_loadptr(const void *p) { return __atomic_load_n((const uintptr_t *)p, __ATOMIC_SEQ_CST); }

// ---- ng_mutex -------------------------------------------------------------------------------
static int ctest_mutex_lock(void *m) { return ng_mutex_lock((ng_mutex *)m); }
static int ctest_mutex_unlock(void *m) { return ng_mutex_unlock((ng_mutex *)m); }
static int ctest_mutex_trylock(void *m) { return ng_mutex_trylock((ng_mutex *)m); }
static int ctest_mutex_is_locked(void *m) { return ng_mutex_is_locked((ng_mutex *)m); }
static int ctest_mutex_lock_timed(void *m, int64_t ns) { return ng_mutex_lock_timed((ng_mutex *)m, ns, NG_WAIT_DETACH); }

// ---- ng_event, ng_once ----------------------------------------------------------------------
static int ctest_event_notify(void *e) { return ng_event_notify((ng_event *)e); }
static int ctest_event_is_set(void *e) { return ng_event_is_set((ng_event *)e); }
static int ctest_event_wait(void *e) { return ng_event_wait((ng_event *)e); }

static int ctest_once_fn(void *arg)
{
	(*(long *)arg)++;
	return 0;
}
static int ctest_once_call(void *o, void *counter) { return ng_once_call((ng_once *)o, ctest_once_fn, counter); }
static int ctest_once_is_done(void *o) { return ng_once_is_done((ng_once *)o); }

// ---- ng_rwmutex -----------------------------------------------------------------------------
static int ctest_rw_rlock(void *rw) { return ng_rwmutex_rlock((ng_rwmutex *)rw); }
static int ctest_rw_runlock(void *rw) { return ng_rwmutex_runlock((ng_rwmutex *)rw); }
static int ctest_rw_lock(void *rw) { return ng_rwmutex_lock((ng_rwmutex *)rw); }
static int ctest_rw_unlock(void *rw) { return ng_rwmutex_unlock((ng_rwmutex *)rw); }
static int ctest_rw_tryrlock(void *rw) { return ng_rwmutex_tryrlock((ng_rwmutex *)rw); }
static int ctest_rw_trylock(void *rw) { return ng_rwmutex_trylock((ng_rwmutex *)rw); }

// ---- ng_seqlock -----------------------------------------------------------------------------
static void ctest_seq_write_begin(void *s) { ng_seqlock_write_begin((ng_seqlock *)s); }
static void ctest_seq_write_end(void *s) { ng_seqlock_write_end((ng_seqlock *)s); }
static uint32_t ctest_seq_read_begin(void *s) { return ng_seqlock_read_begin((ng_seqlock *)s); }
static int ctest_seq_read_retry(void *s, uint32_t seq) { return ng_seqlock_read_retry((ng_seqlock *)s, seq); }

// ---- ng_recursive_mutex ---------------------------------------------------------------------
static int ctest_rec_is_owned(void *m) { return ng_recursive_mutex_is_owned((ng_recursive_mutex *)m); }
static uint64_t ctest_rec_thread(void *m)
{
	return __atomic_load_n(&((ng_recursive_mutex *)m)->thread, __ATOMIC_SEQ_CST);
}
static uint64_t ctest_rec_level(void *m)
{
	return __atomic_load_n(&((ng_recursive_mutex *)m)->level, __ATOMIC_SEQ_CST);
}
static uint8_t ctest_rec_bits(void *m) { return ctest_load8(&((ng_recursive_mutex *)m)->mutex.bits); }

static int ctest_plain_unlock(void) { return __atomic_load_n(&ng_plain_unlock, __ATOMIC_RELAXED); }

static size_t ctest_layout(int what)
{
	switch (what) {
	case 0: return sizeof(ng_mutex);
	case 1: return sizeof(ng_event);
	case 2: return sizeof(ng_once);
	case 3: return sizeof(ng_rwmutex);
	case 4: return sizeof(ng_seqlock);
	case 5: return sizeof(ng_recursive_mutex);
	case 6: return offsetof(ng_recursive_mutex, mutex);
	case 7: return offsetof(ng_recursive_mutex, thread);
	case 8: return offsetof(ng_recursive_mutex, level);
	case 9: return offsetof(ng_rwmutex, bits);
	case 10: return offsetof(ng_seqlock, sequence);
	}
	return (size_t)-1;
}

// ---- C threads ------------------------------------------------------------------------------
// A C pthread that increments *counter `iters` times under the ng_mutex, non-atomically.
typedef struct counter_job {
	pthread_t tid;
	ng_mutex *m;
	long *counter;
	long iters;
} counter_job;

static void *counter_main(void *arg)
{
	counter_job *j = arg;
	for (long i = 0; i < j->iters; i++) {
		ng_mutex_lock(j->m);
		// A split read-modify-write: a broken mutex loses increments.
		long v = *(volatile long *)j->counter;
		*(volatile long *)j->counter = v + 1;
		ng_mutex_unlock(j->m);
	}
	return NULL;
}

static counter_job *ctest_start_counter(void *m, void *counter, long iters)
{
	counter_job *j = calloc(1, sizeof *j);
	if (!j)
		return NULL;
	j->m = m;
	j->counter = counter;
	j->iters = iters;
	if (pthread_create(&j->tid, NULL, counter_main, j) != 0) {
		free(j);
		return NULL;
	}
	return j;
}

static void ctest_join_counter(counter_job *j)
{
	pthread_join(j->tid, NULL);
	free(j);
}

// A C pthread that parks once on a 32-bit word.
typedef struct park_job {
	pthread_t tid;
	void *addr;
	uint32_t expected;
	void *token;
	int64_t timeout_ns;
	int result;
} park_job;

static void *park_main(void *arg)
{
	park_job *j = arg;
	j->result = ng_park(j->addr, &j->expected, sizeof j->expected, j->timeout_ns, j->token, 0);
	return NULL;
}

static park_job *ctest_start_park(void *addr, uint32_t expected, uintptr_t token, int64_t timeout_ns)
{
	park_job *j = calloc(1, sizeof *j);
	if (!j)
		return NULL;
	j->addr = addr;
	j->expected = expected;
	j->token = (void *)token;
	j->timeout_ns = timeout_ns;
	if (pthread_create(&j->tid, NULL, park_main, j) != 0) {
		free(j);
		return NULL;
	}
	return j;
}

static int ctest_join_park(park_job *j)
{
	pthread_join(j->tid, NULL);
	int r = j->result;
	free(j);
	return r;
}
*/
import "C"

import (
	"unsafe"

	_ "github.com/nogil-go/nogil" // defines the ng_* symbols called here
)

// C status codes (nogil/status.h).
const (
	OK         = int(C.NG_OK)
	Again      = int(C.NG_AGAIN)
	Timeout    = int(C.NG_TIMEOUT)
	Intr       = int(C.NG_INTR)
	Cancelled  = int(C.NG_CANCELLED)
	EInval     = int(C.NG_EINVAL)
	ENotLocked = int(C.NG_ENOTLOCKED)
	ENotOwner  = int(C.NG_ENOTOWNER)
)

// Alloc returns n zeroed bytes of C memory, 64-byte aligned (rounded up to whole lines).
// Free it with Free.
func Alloc(n int) unsafe.Pointer {
	p := C.ctest_alloc(C.size_t(n))
	if p == nil {
		panic("ctest: out of C memory")
	}
	return p
}

// Free frees memory from Alloc.
func Free(p unsafe.Pointer) { C.free(p) }

// Fill sets n bytes at p to b (plain C memset; only for memory no other thread uses yet).
func Fill(p unsafe.Pointer, b byte, n int) { C.memset(p, C.int(b), C.size_t(n)) }

// Load8 reads the byte at p with a C seq-cst atomic load.
func Load8(p unsafe.Pointer) uint8 { return uint8(C.ctest_load8(p)) }

// Store8 writes the byte at p with a C seq-cst atomic store.
func Store8(p unsafe.Pointer, v uint8) { C.ctest_store8(p, C.uint8_t(v)) }

// Bytes reads n bytes at p, each with a C atomic byte load.
func Bytes(p unsafe.Pointer, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = Load8(unsafe.Add(p, i))
	}
	return b
}

// Load32 reads the 32-bit word at p with a C seq-cst atomic load.
func Load32(p unsafe.Pointer) uint32 { return uint32(C.ctest_load32(p)) }

// Store32 writes the 32-bit word at p with a C seq-cst atomic store.
func Store32(p unsafe.Pointer, v uint32) { C.ctest_store32(p, C.uint32_t(v)) }

// Load64 reads the 64-bit word at p with a C seq-cst atomic load.
func Load64(p unsafe.Pointer) uint64 { return uint64(C.ctest_load64(p)) }

// LoadUintptr reads the uintptr_t at p with a C seq-cst atomic load.
func LoadUintptr(p unsafe.Pointer) uintptr { return uintptr(C.ctest_loadptr(p)) }

// MutexLock is the inline ng_mutex_lock, from C. Blocks the calling thread.
func MutexLock(m unsafe.Pointer) int { return int(C.ctest_mutex_lock(m)) }

// MutexUnlock is the inline ng_mutex_unlock, from C.
func MutexUnlock(m unsafe.Pointer) int { return int(C.ctest_mutex_unlock(m)) }

// MutexTryLock is ng_mutex_trylock.
func MutexTryLock(m unsafe.Pointer) bool { return C.ctest_mutex_trylock(m) != 0 }

// MutexIsLocked is ng_mutex_is_locked.
func MutexIsLocked(m unsafe.Pointer) bool { return C.ctest_mutex_is_locked(m) != 0 }

// MutexLockTimed is ng_mutex_lock_timed with NG_WAIT_DETACH.
func MutexLockTimed(m unsafe.Pointer, ns int64) int {
	return int(C.ctest_mutex_lock_timed(m, C.int64_t(ns)))
}

// SetHandoffNs sets the process-wide mutex hand-off threshold and returns the previous one.
func SetHandoffNs(ns int64) int64 { return int64(C.ng_mutex_set_handoff_ns(C.int64_t(ns))) }

// PlainUnlock reports whether C's ng_mutex_unlock uses plain-store unlocks in this process
// (membarrier available and NOGIL_CAS_UNLOCK unset; see nogil/park_announce.h) rather than CAS.
func PlainUnlock() bool { return C.ctest_plain_unlock() != 0 }

// ThreadID is ng_thread_id() of the calling OS thread.
func ThreadID() uint64 { return uint64(C.ng_thread_id()) }

// EventNotify is ng_event_notify.
func EventNotify(e unsafe.Pointer) int { return int(C.ctest_event_notify(e)) }

// EventIsSet is ng_event_is_set.
func EventIsSet(e unsafe.Pointer) bool { return C.ctest_event_is_set(e) != 0 }

// EventWait is ng_event_wait (blocks the calling thread).
func EventWait(e unsafe.Pointer) int { return int(C.ctest_event_wait(e)) }

// OnceCall runs ng_once_call with a C initialiser that increments the C long at counter and
// succeeds.
func OnceCall(o, counter unsafe.Pointer) int { return int(C.ctest_once_call(o, counter)) }

// OnceIsDone is ng_once_is_done.
func OnceIsDone(o unsafe.Pointer) bool { return C.ctest_once_is_done(o) != 0 }

// RWMutex C API.
func RWRLock(rw unsafe.Pointer) int        { return int(C.ctest_rw_rlock(rw)) }
func RWRUnlock(rw unsafe.Pointer) int      { return int(C.ctest_rw_runlock(rw)) }
func RWLock(rw unsafe.Pointer) int         { return int(C.ctest_rw_lock(rw)) }
func RWUnlock(rw unsafe.Pointer) int       { return int(C.ctest_rw_unlock(rw)) }
func RWTryRLock(rw unsafe.Pointer) bool    { return C.ctest_rw_tryrlock(rw) != 0 }
func RWTryLock(rw unsafe.Pointer) bool     { return C.ctest_rw_trylock(rw) != 0 }
func SeqWriteBegin(s unsafe.Pointer)       { C.ctest_seq_write_begin(s) }
func SeqWriteEnd(s unsafe.Pointer)         { C.ctest_seq_write_end(s) }
func SeqReadBegin(s unsafe.Pointer) uint32 { return uint32(C.ctest_seq_read_begin(s)) }

// SeqReadRetry is ng_seqlock_read_retry.
func SeqReadRetry(s unsafe.Pointer, seq uint32) bool {
	return C.ctest_seq_read_retry(s, C.uint32_t(seq)) != 0
}

// RecursiveIsOwned is ng_recursive_mutex_is_owned, evaluated on the calling OS thread.
func RecursiveIsOwned(m unsafe.Pointer) bool { return C.ctest_rec_is_owned(m) != 0 }

// RecursiveThread reads the owner field of an ng_recursive_mutex.
func RecursiveThread(m unsafe.Pointer) uint64 { return uint64(C.ctest_rec_thread(m)) }

// RecursiveLevel reads the level field of an ng_recursive_mutex.
func RecursiveLevel(m unsafe.Pointer) uint64 { return uint64(C.ctest_rec_level(m)) }

// RecursiveBits reads the byte of the ng_mutex inside an ng_recursive_mutex.
func RecursiveBits(m unsafe.Pointer) uint8 { return uint8(C.ctest_rec_bits(m)) }

// Layout items compared between the C compiler and cgo's Go view.
var LayoutItems = []string{
	"sizeof(ng_mutex)", "sizeof(ng_event)", "sizeof(ng_once)", "sizeof(ng_rwmutex)",
	"sizeof(ng_seqlock)", "sizeof(ng_recursive_mutex)", "offsetof(ng_recursive_mutex, mutex)",
	"offsetof(ng_recursive_mutex, thread)", "offsetof(ng_recursive_mutex, level)",
	"offsetof(ng_rwmutex, bits)", "offsetof(ng_seqlock, sequence)",
}

// CLayout returns LayoutItems[i] as the C compiler computes it.
func CLayout(i int) uintptr { return uintptr(C.ctest_layout(C.int(i))) }

// GoLayout returns LayoutItems[i] as cgo's Go translation of the structs (the view the root
// package's Go code uses) has it.
func GoLayout(i int) uintptr {
	var rm C.ng_recursive_mutex
	var rw C.ng_rwmutex
	var sl C.ng_seqlock
	switch i {
	case 0:
		return unsafe.Sizeof(C.ng_mutex{})
	case 1:
		return unsafe.Sizeof(C.ng_event{})
	case 2:
		return unsafe.Sizeof(C.ng_once{})
	case 3:
		return unsafe.Sizeof(rw)
	case 4:
		return unsafe.Sizeof(sl)
	case 5:
		return unsafe.Sizeof(rm)
	case 6:
		return unsafe.Offsetof(rm.mutex)
	case 7:
		return unsafe.Offsetof(rm.thread)
	case 8:
		return unsafe.Offsetof(rm.level)
	case 9:
		return unsafe.Offsetof(rw.bits)
	case 10:
		return unsafe.Offsetof(sl.sequence)
	}
	return ^uintptr(0)
}

// CounterThread is a C pthread incrementing a C long under an ng_mutex.
type CounterThread struct{ j *C.counter_job }

// StartCounterThread starts a C pthread that does iters times: ng_mutex_lock(m);
// (*counter)++ (a non-atomic read then write); ng_mutex_unlock(m). counter points to a C long.
func StartCounterThread(m, counter unsafe.Pointer, iters int) CounterThread {
	j := C.ctest_start_counter(m, counter, C.long(iters))
	if j == nil {
		panic("ctest: cannot start a C thread")
	}
	return CounterThread{j}
}

// Join waits for the thread to finish.
func (t CounterThread) Join() { C.ctest_join_counter(t.j) }

// ParkThread is a C pthread that parks once.
type ParkThread struct{ j *C.park_job }

// StartParkThread starts a C pthread that calls ng_park(addr, &expected, 4, timeoutNs, token, 0).
func StartParkThread(addr unsafe.Pointer, expected uint32, token uintptr, timeoutNs int64) ParkThread {
	j := C.ctest_start_park(addr, C.uint32_t(expected), C.uintptr_t(token), C.int64_t(timeoutNs))
	if j == nil {
		panic("ctest: cannot start a C thread")
	}
	return ParkThread{j}
}

// Join waits for the thread and returns ng_park's status.
func (t ParkThread) Join() int { return int(C.ctest_join_park(t.j)) }
