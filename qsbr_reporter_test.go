package nogil_test

import (
	"testing"
	"time"

	"github.com/nogil-go/nogil"
	"github.com/nogil-go/nogil/internal/ctest"
)

// A report through a QuiescentReporter writes the C slot and so lets a goal complete, with
// every copy of the reporter.
func TestQuiescentReporterReports(t *testing.T) {
	deadline(t, 30*time.Second)
	in := newInterp(t)
	ip := in.CPtr()
	reader := startBound(t, in, true)
	defer reader.stop()
	var r nogil.QuiescentReporter
	reader.run(func(ts *nogil.ThreadState) {
		r = ts.QuiescentReporter()
		if r.ThreadState() != ts {
			t.Error("QuiescentReporter().ThreadState() is not its ThreadState")
		}
	})
	withState(t, in, true, func(writer *nogil.ThreadState) {
		for round := range 20 {
			goal, err := writer.Advance()
			if !must(t, "Advance", err) {
				return
			}
			must(t, "writer QuiescentState", writer.QuiescentState())
			if writer.Poll(goal) {
				t.Fatalf("round %d: goal %d reached before the reader reported", round, goal)
			}
			reader.run(func(*nogil.ThreadState) {
				c := r // a copy reports as well as the original
				if round%2 == 0 {
					must(t, "QuiescentReporter.QuiescentState", c.QuiescentState())
				} else if !c.Report() {
					t.Errorf("round %d: Report = false (Err: %v)", round, c.Err())
				}
				if got := ctest.TSSeq(reader.ts.CPtr()); got != goal {
					t.Errorf("round %d: after the report the C slot has seq %d, want %d", round, got, goal)
				}
				// Nothing new: idle, no write.
				must(t, "QuiescentReporter.QuiescentState again", r.QuiescentState())
				if !r.Report() {
					t.Errorf("round %d: idle Report = false (Err: %v)", round, r.Err())
				}
			})
			if !writer.Poll(goal) {
				t.Fatalf("round %d: goal %d not reached after the reporter's report (rd_seq %d)",
					round, goal, ctest.RdSeq(ip))
			}
		}
	})
}

// wantReportErr checks that QuiescentState and Report with Err fail with target.
func wantReportErr(t *testing.T, what string, r nogil.QuiescentReporter, target error, hints ...string) {
	t.Helper()
	wantErr(t, what+" (QuiescentState)", r.QuiescentState(), target, hints...)
	if r.Report() {
		t.Errorf("%s: Report = true, want false", what)
	}
	wantErr(t, what+" (Err after Report)", r.Err(), target, hints...)
}

// wantZeroReporter checks a reporter with no ThreadState: its error forms say ErrInvalid
// and Report panics (see Report for why it does not return false).
func wantZeroReporter(t *testing.T, what string, r nogil.QuiescentReporter) {
	t.Helper()
	wantErr(t, what+" (QuiescentState)", r.QuiescentState(), nogil.ErrInvalid, "zero QuiescentReporter")
	wantErr(t, what+" (Err)", r.Err(), nogil.ErrInvalid, "zero QuiescentReporter")
	mustPanicNogil(t, what+" (Report)", func() { r.Report() })
	if r.ThreadState() != nil {
		t.Errorf("%s has a ThreadState", what)
	}
}

// The reporter's errors are its ThreadState's: detached, from another goroutine with
// something to write, after Release; the zero value says what it is.
func TestQuiescentReporterErrors(t *testing.T) {
	deadline(t, 30*time.Second)
	wantZeroReporter(t, "zero QuiescentReporter", nogil.QuiescentReporter{})
	var nilTS *nogil.ThreadState
	wantZeroReporter(t, "QuiescentReporter of a nil ThreadState", nilTS.QuiescentReporter())

	in := newInterp(t)
	other := startBound(t, in, true)
	defer other.stop()
	var r nogil.QuiescentReporter
	withState(t, in, false, func(ts *nogil.ThreadState) {
		r = ts.QuiescentReporter()
		wantReportErr(t, "report of a detached state", r, nogil.ErrState, "not attached")
		if !must(t, "Attach", ts.Attach()) {
			return
		}
		must(t, "QuiescentState", r.QuiescentState())

		// Another goroutine: idle calls are not checked (except in race builds), calls that
		// would write are refused and write nothing.
		idle := make(chan error)
		idleOK := make(chan bool)
		go func() { idle <- r.QuiescentState(); idleOK <- r.Report() }()
		if err, ok := <-idle, <-idleOK; nogil.RaceEnabled {
			wantErr(t, "idle report from another goroutine (race build)", err, nogil.ErrWrongThread)
			if ok {
				t.Error("idle Report from another goroutine (race build) = true")
			}
		} else if err != nil || !ok {
			t.Errorf("idle report from another goroutine = %v, Report %v, want nil, true", err, ok)
		}
		other.run(func(o *nogil.ThreadState) { must(t, "Advance by the other state", second(o.Advance())) })
		seq := ctest.TSSeq(ts.CPtr())
		other.run(func(*nogil.ThreadState) {
			wantReportErr(t, "report from another goroutine", r, nogil.ErrWrongThread,
				"call it from the goroutine that called Bind")
		})
		if got := ctest.TSSeq(ts.CPtr()); got != seq {
			t.Errorf("a refused report moved the slot's seq from %d to %d", seq, got)
		}
		if !r.Report() {
			t.Errorf("owner's Report = false (Err: %v)", r.Err())
		}
		if got := ctest.TSSeq(ts.CPtr()); got == seq {
			t.Error("the owner's report did not write the new sequence")
		}
	})
	// withState released the state: from any goroutine, ErrReleased and no crash.
	wantReportErr(t, "report after Release", r, nogil.ErrReleased, "after Release")
	other.run(func(*nogil.ThreadState) {
		wantReportErr(t, "report after Release from another goroutine", r, nogil.ErrReleased)
	})
	// A reporter taken after Release is no different.
	wantReportErr(t, "reporter taken after Release", r.ThreadState().QuiescentReporter(), nogil.ErrReleased)
}
