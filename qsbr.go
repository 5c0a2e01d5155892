package nogil

/*
#include "gobind.h"
*/
import "C"

import (
	"github.com/nogil-go/nogil/internal/gtoken"
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
func (ts *ThreadState) QuiescentState() error {
	// Small enough for the compiler to inline into the caller: the checks of check() and
	// the state test, then the two loads and a compare of the common "nothing new" case.
	if ts != nil && ts.c != nil && atomic.LoadUint32(ts.dead) == C.NG_GO_LIVE &&
		gtoken.Current() == ts.token && atomic.LoadUint32(ts.state) == tsAttached {
		ts.quiescent()
		return nil
	}
	return ts.quiescentMisuse()
}

// quiescentMisuse reports why QuiescentState could not report.
func (ts *ThreadState) quiescentMisuse() error {
	if err := ts.check("QuiescentState"); err != nil {
		return err
	}
	return ts.fail("QuiescentState", C.NG_ESTATE)
}

// quiescent is ng_qsbr_quiescent_state: adopt the current write sequence. The C store is a
// release store so that the reads made so far happen-before a reclaimer that sees it. As in
// C, nothing is written when the slot already holds it, and a report wakes the threads
// sleeping in ng_qsbr_wait (qsbr.h's contract for code that writes seq itself: Go's atomic
// store is sequentially consistent, so it is the store and the full fence before the load of
// waiters).
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
// the GIL), processing of its delayed work. When nothing is pending it is two atomic loads
// and a store; otherwise it calls into C. The goroutine must hold no pointers into
// QSBR-protected memory across it. The state must be attached: ErrState otherwise.
func (ts *ThreadState) Checkpoint() error {
	// The checks of check() spelled inline: this is the path long loops call.
	if ts == nil || ts.c == nil || atomic.LoadUint32(ts.dead) != C.NG_GO_LIVE ||
		gtoken.Current() != ts.token {
		return ts.check("Checkpoint")
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
