// Package nogil is the runtime machinery of CPython's free-threaded build as a standalone
// library for Go and C: an address-keyed parking lot and the lock family built on it,
// interpreters and thread states, QSBR and delayed frees.
//
// Every lock keeps its whole state in a byte or word of C memory, so the same lock can be
// used from Go and from C (see CPtr and csrc/include/nogil.h). Uncontended operations are
// Go atomics on that memory; only waiting and waking cross into C, where a thread sleeps on
// a futex in the parking lot.
//
//   - Mutex: one byte, spins then parks, hands the lock to a waiter that waited > 1 ms.
//   - Event: one-shot notification. Once: initialiser retried until it succeeds.
//   - RWMutex: writer-preferring. SeqLock: optimistic readers. RecursiveMutex.
//   - Park / Unpark / UnparkAll: compare-and-sleep on any C address, for building more.
//   - Interpreter, ThreadState: goroutines bind thread states (Bind) and attach while they
//     read lock-free structures. FreeDelayed and CallDelayed reclaim what was unlinked from
//     them once every attached goroutine has passed a Checkpoint (QSBR). StopTheWorld, and
//     a GIL that can be switched on (EnableGIL).
//
// Waiting calls block the calling OS thread (not only the goroutine), because the waiter
// sleeps in C; LockContext, WaitContext and ParkContext are woken directly when their
// context is done.
//
// After fork(2) the C core resets the parking lot in the child by itself (pthread_atfork);
// a Go program's child can run only C, see csrc/include/nogil/parking_lot.h.
package nogil
