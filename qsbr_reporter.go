package nogil

import "sync/atomic"

// A QuiescentReporter is ThreadState.QuiescentState for hot loops: a small value that holds
// the pointers the report reads, so that a loop keeps them in registers instead of reloading
// them from the ThreadState on every call (Go does not hoist plain loads across atomic
// ones). It is what C code does with the ng_qsbr_slot pointer it passes to the inline
// ng_qsbr_quiescent_state. Take one with ThreadState.QuiescentReporter before the loop and
// copy it freely; it keeps the ThreadState reachable.
//
// It reports for its ThreadState, with the same checks and errors. Most of the gain is
// Report's: a loop that tests QuiescentState's error saves only the reloads (see
// QuiescentState). The zero value is not usable: QuiescentState and Err return ErrInvalid,
// Report panics.
type QuiescentReporter struct {
	seq   *uint64 // ts.seq, nil in the zero value
	wrSeq *uint64 // ts.wrSeq
	ts    *ThreadState
}

// QuiescentReporter returns a reporter for ts (see QuiescentReporter). It can be taken in
// any state, even after Release: the checks happen when it reports.
func (ts *ThreadState) QuiescentReporter() QuiescentReporter {
	if ts == nil {
		return QuiescentReporter{}
	}
	// Before the loads of the pointers: see Release, which then keeps the slot's pin for
	// the reporter until the wrapper is collected.
	if !ts.reporterTaken.Load() {
		ts.reporterTaken.Store(true)
	}
	return QuiescentReporter{seq: ts.idleSeq.Load(), wrSeq: ts.idleWrSeq.Load(), ts: ts}
}

// ThreadState returns the thread state r reports for, nil for the zero value.
func (r QuiescentReporter) ThreadState() *ThreadState { return r.ts }

// QuiescentState is ThreadState.QuiescentState of r's thread state, with the same checks,
// errors and relaxed goroutine check on the idle path: inlined, a call with nothing to write
// is two atomic loads through r's pointers. On the zero value, ErrInvalid.
//
// A loop that tests the error pays for it: the inlined nil and the checked path's error
// meet before the caller's test, which costs a second taken branch per call (Go does not
// thread that jump for interface values). Report and Err do not have that cost.
func (r QuiescentReporter) QuiescentState() error {
	return r.idleOrErr(reporterChecked)
}

// Report is QuiescentState returning whether it succeeded, for the hottest loops: the test
// of its bool folds into the inlined branches, so a call with nothing to write costs a nil
// test and the two loads and their compare, each with a branch not taken, and no jump (the
// loop C code runs). After false, Err says why.
//
// On the zero QuiescentReporter, a programming error like a Mutex not made by NewMutex, it
// panics. Returning false there would cost every call: the nil test would then be a second
// way into the checked path's call, and the compiler places the spills of the caller's
// loop values for that call where both ways meet, inside the loop (a store per call,
// measured 1.3-1.6x liburcu instead of about 1x). A panic leaves the call one way in, and
// the spills move to it.
func (r QuiescentReporter) Report() bool {
	return r.idleOrOK(reportChecked)
}

// Err is the error of a Report that returned false, found by running the checked report
// again: for the bound goroutine the cause stays (a released, detached or closed state
// stays so until it acts). From another goroutine, it is ErrWrongThread, or nil if the
// owner has reported meanwhile. Like QuiescentState, it reports if it can. Keep it out of
// the loop's fast path: it is a call.
func (r QuiescentReporter) Err() error { return reporterChecked(r.ts) }

// idleOrErr and idleOrOK take the checked path as a parameter only to stay within the
// inlining budget (as ThreadState.idleOr does). They return without it while r's state is
// live and its slot holds the current write sequence (nothing to write); race builds always
// take it, so that every call is checked. They spell the test out rather than share a bool
// helper: the bool's test would not fold into the caller's. idleOrOK panics on the zero
// reporter first (see Report).
//
// What makes the two loads enough, and safe, is explained at ThreadState.idleOr: a slot a
// reporter was taken for stays pinned until r's ThreadState is garbage collected (r holds
// it), so both words stay readable and are equal only while the state is live, attached and
// up to date.
func (r QuiescentReporter) idleOrErr(slow func(*ThreadState) error) error {
	if !raceEnabled {
		if s := r.seq; s != nil {
			if atomic.LoadUint64(s) == atomic.LoadUint64(r.wrSeq) {
				return nil
			}
		}
	}
	return slow(r.ts)
}

func (r QuiescentReporter) idleOrOK(slow func(*ThreadState) bool) bool {
	s := r.seq
	if s == nil {
		panic(zeroReporterReport)
	}
	if !raceEnabled {
		if atomic.LoadUint64(s) == atomic.LoadUint64(r.wrSeq) {
			return true
		}
	}
	return slow(r.ts)
}

const zeroReporterReport = "nogil: Report on the zero QuiescentReporter; get one from ThreadState.QuiescentReporter"

// reporterChecked is the checked path of QuiescentState. It takes only the ThreadState so
// that the inlined call passes one register.
//
//go:noinline
func reporterChecked(ts *ThreadState) error {
	if ts == nil {
		return &threadError{"QuiescentState", "zero QuiescentReporter; get one from " +
			"ThreadState.QuiescentReporter", ErrInvalid}
	}
	return ts.quiescentChecked()
}

// reportChecked is the checked path of Report.
//
//go:noinline
func reportChecked(ts *ThreadState) bool { return reporterChecked(ts) == nil }
