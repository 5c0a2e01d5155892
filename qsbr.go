package nogil

/*
#include "gobind.h"
*/
import "C"

import (
	"sync/atomic"
	"unsafe"
)

// QSBR fast paths in Go. They are the inline functions of csrc/include/nogil/qsbr.h and
// tstate.h spelled with sync/atomic on the same words, so that Go callers pay a few
// nanoseconds instead of a cgo call (about 65 ns). Go's atomics are sequentially consistent,
// at least as strong as each C order they replace.

const (
	tsAttached = C.NG_TSTATE_ATTACHED
	qsbrIncr   = C.NG_QSBR_INCR
)

// QuiescentState reports that the goroutine holds no pointers into QSBR-protected memory
// right now, without anything else Checkpoint does: memory retired before this point may be
// reclaimed as far as this goroutine is concerned. The state must be attached (a detached
// one is quiescent anyway): ErrState otherwise. A sync/atomic store; no cgo call.
//
// Like liburcu's report, it writes nothing while the state's QSBR slot already holds the
// current write sequence. That common case is inlined into the caller and costs two atomic
// loads (the slot's and the interpreter's sequences are equal), without the check of the
// calling goroutine: outside race-detector builds, a call from another goroutine while the
// state is attached and has nothing new to report returns nil and does nothing. Every call
// that has something to write, and every call on a detached, released or shut-down state, is
// fully checked (ErrWrongThread, ErrReleased, ErrState, ErrClosed). Race-detector builds, the
// debug builds, check every call.
func (ts *ThreadState) QuiescentState() error {
	return ts.idleOr(false, (*ThreadState).quiescentChecked)
}

// idleOr is the inlined fast path of QuiescentState (withPending false) and Checkpoint
// (withPending true): nil if ts's slot holds the current write sequence and, with
// withPending, nothing is pending; otherwise slow(ts), which checks everything and does the
// work. slow is a parameter only to keep QuiescentState and Checkpoint within the inlining
// budget (the inliner charges less for a call through a parameter; once inlined, it is a
// call of the constant function). The nested ifs keep the compiled code to branches (an &&
// chain materialises a bool).
//
// The two words are equal only while the state is live and attached, so that is all this
// path tests:
//   - Detached, suspended or shut down, the slot holds NG_QSBR_OFFLINE (0), which no write
//     sequence (odd, also across the 64-bit wrap) equals.
//   - Bind pins the slot for the wrapper (ng_tstate_pin_slot): given back by the release or
//     the thread's exit, it stays offline and is not handed to another state, whose attached
//     seq could equal the write sequence, and the interpreter's memory (its write sequence,
//     the slot segments) stays readable, even after Close.
//   - Release then switches the words this path reads to releasedSeq and releasedWrSeq, and
//     drops the pin at once unless a QuiescentReporter was taken (a reporter keeps its own
//     copy of the pointers); otherwise the pin goes when the wrapper is garbage collected
//     (a reporter holds the wrapper), as it does after a thread exit without Release.
//
// So a state that is not live and attached always takes the checked path, which reads the
// liveness word first, and this path writes nothing. The pending word, which lives in the
// thread state and is recycled after the release, is read only once the sequences said the
// state is live. Only the bound goroutine releases a state, so for it nothing changes
// between the loads; another goroutine must not call this concurrently with the release (as
// for State), and a call after it reads the released words.
func (ts *ThreadState) idleOr(withPending bool, slow func(*ThreadState) error) error {
	if !raceEnabled && ts != nil {
		if s := ts.idleSeq.Load(); s != nil {
			if atomic.LoadUint64(s) == atomic.LoadUint64(ts.idleWrSeq.Load()) {
				if !withPending || atomic.LoadUintptr(ts.pending) == 0 {
					return nil
				}
			}
		}
	}
	return slow(ts)
}

// quiescentChecked is QuiescentState with every check: there is something to write (or the
// state is not live or not attached, or this is a race build).
//
//go:noinline
func (ts *ThreadState) quiescentChecked() error {
	if err := ts.check("QuiescentState"); err != nil {
		return err
	}
	if atomic.LoadUint32(ts.state) != tsAttached {
		return ts.fail("QuiescentState", C.NG_ESTATE)
	}
	ts.quiescent()
	return nil
}

// quiescent is ng_qsbr_quiescent_state: adopt the current write sequence. The C store is a
// release store so that the reads made so far happen-before a reclaimer that sees it. As in
// C, nothing is written when the slot already holds it, and a report wakes the threads
// sleeping in ng_qsbr_wait (qsbr.h's contract for code that writes seq itself: Go's atomic
// store is sequentially consistent, so it is the store and the full fence before the load of
// waiters). The caller has checked the goroutine and that the state is attached.
func (ts *ThreadState) quiescent() {
	if raceEnabled {
		ts.edges.qsbr.release()
	}
	if wr := atomic.LoadUint64(ts.wrSeq); atomic.LoadUint64(ts.seq) != wr {
		ts.report(wr)
	}
}

// report publishes a new sequence and wakes threads sleeping in ng_qsbr_wait, as
// ng_qsbr_report does. Go's atomic store is sequentially consistent, so the waiters load
// below cannot pass it (the full fence qsbr.h asks for).
//
//go:noinline
func (ts *ThreadState) report(wr uint64) {
	atomic.StoreUint64(ts.seq, wr)
	if atomic.LoadUint32((*uint32)(unsafe.Pointer(&ts.slot.shared.waiters))) != 0 {
		C.ng_qsbr_wake_waiters(ts.slot.shared)
	}
}

// Checkpoint is the safe point to call regularly from long-running attached code (CPython's
// eval-breaker check): it reports a quiescent state, then handles what other threads asked
// for, if anything: a stop-the-world (it waits for the restart), a GIL hand-over (it yields
// the GIL), processing of its delayed work (with a back-pressure cap, Interpreter.SetDelayedCap,
// waiting detached until that work can run). The goroutine must hold no pointers into
// QSBR-protected memory across it. The state must be attached: ErrState otherwise.
//
// When there is nothing to report and nothing pending, it is three atomic loads inlined into
// the caller, with the relaxed check of QuiescentState: outside race-detector builds, such a
// call from another goroutine returns nil and does nothing. Every call that reports, handles
// a request or finds the state detached, released or shut down is fully checked. What is
// pending is handled in C.
func (ts *ThreadState) Checkpoint() error {
	return ts.idleOr(true, (*ThreadState).checkpointChecked)
}

// checkpointChecked is Checkpoint with every check.
//
//go:noinline
func (ts *ThreadState) checkpointChecked() error {
	if err := ts.check("Checkpoint"); err != nil {
		return err
	}
	if atomic.LoadUint32(ts.state) == tsAttached {
		ts.quiescent()
		if atomic.LoadUintptr(ts.pending) == 0 {
			return nil
		}
	}
	return ts.checkpointSlow()
}

func (ts *ThreadState) checkpointSlow() error {
	ts.leaving()
	if st := C.ng_tstate_checkpoint_slow(ts.c); st != C.NG_OK {
		return ts.fail("Checkpoint", st)
	}
	ts.returning()
	return nil
}

// Advance starts a new grace period and returns its goal: memory unlinked from shared
// structures before the call may be reclaimed once Poll or GoalReached says the goal is
// reached. FreeDelayed and CallDelayed do this bookkeeping for you; Advance, GoalReached and
// Poll are for code that keeps its own list of retired memory. One atomic add; no cgo call.
func (ts *ThreadState) Advance() (goal uint64, err error) {
	if err := ts.check("Advance"); err != nil {
		return 0, err
	}
	// ng_qsbr_advance: the add is sequentially consistent, so the goal is ordered after the
	// caller's unlink. The statistic is the C side's relaxed counter.
	atomic.AddUint64((*uint64)(&ts.slot.shared.advances), 1)
	return atomic.AddUint64(ts.wrSeq, qsbrIncr), nil
}

// GoalReached reports whether every thread state attached when goal was computed has since
// reported a quiescent state or detached, as known from the last scan; it does not scan.
// One atomic load; no cgo call.
func (ts *ThreadState) GoalReached(goal uint64) bool {
	if ts.check("GoalReached") != nil {
		return false
	}
	return qsbrLEQ(goal, atomic.LoadUint64(ts.rdSeq))
}

// Poll reports whether goal is reached, scanning the thread states if the last scan does not
// tell (a cgo call, cheap while the thread that held up the last poll is still behind). Only
// an attached state scans; a detached one answers like GoalReached. A scan is also what
// notices stalls (SetStallHandler).
func (ts *ThreadState) Poll(goal uint64) bool {
	if ts.check("Poll") != nil {
		return false
	}
	if qsbrLEQ(goal, atomic.LoadUint64(ts.rdSeq)) {
		return true
	}
	// Attached, the state cannot outlive a concurrent Interpreter.Close in the scan: the
	// deletion stops the world first, which waits for this call to return.
	if atomic.LoadUint32(ts.state) != tsAttached {
		return false
	}
	return bool(C.ng_qsbr_poll_slow(ts.slot, C.uint64_t(goal)))
}

// qsbrLEQ is NG_QSBR_LEQ: a <= b for sequences that may wrap around 2^64.
func qsbrLEQ(a, b uint64) bool { return int64(a-b) <= 0 }
