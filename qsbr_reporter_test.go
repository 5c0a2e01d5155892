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
				must(t, "QuiescentReporter.QuiescentState", c.QuiescentState())
				if got := ctest.TSSeq(reader.ts.CPtr()); got != goal {
					t.Errorf("round %d: after the report the C slot has seq %d, want %d", round, got, goal)
				}
				// Nothing new: idle, no write.
				must(t, "QuiescentReporter.QuiescentState again", r.QuiescentState())
			})
			if !writer.Poll(goal) {
				t.Fatalf("round %d: goal %d not reached after the reporter's report (rd_seq %d)",
					round, goal, ctest.RdSeq(ip))
			}
		}
	})
}

// The reporter's errors are its ThreadState's: detached, from another goroutine with
// something to write, after Release; the zero value says what it is.
func TestQuiescentReporterErrors(t *testing.T) {
	deadline(t, 30*time.Second)
	var zero nogil.QuiescentReporter
	wantErr(t, "zero QuiescentReporter", zero.QuiescentState(), nogil.ErrInvalid, "zero QuiescentReporter")
	if zero.ThreadState() != nil {
		t.Error("zero QuiescentReporter has a ThreadState")
	}
	var nilTS *nogil.ThreadState
	wantErr(t, "QuiescentReporter of a nil ThreadState", nilTS.QuiescentReporter().QuiescentState(),
		nogil.ErrInvalid)

	in := newInterp(t)
	other := startBound(t, in, true)
	defer other.stop()
	var r nogil.QuiescentReporter
	withState(t, in, false, func(ts *nogil.ThreadState) {
		r = ts.QuiescentReporter()
		wantErr(t, "QuiescentState of a detached state's reporter", r.QuiescentState(), nogil.ErrState,
			"not attached")
		if !must(t, "Attach", ts.Attach()) {
			return
		}
		must(t, "QuiescentState", r.QuiescentState())

		// Another goroutine: idle calls are not checked (except in race builds), calls that
		// would write are refused and write nothing.
		idle := make(chan error)
		go func() { idle <- r.QuiescentState() }()
		if err := <-idle; nogil.RaceEnabled {
			wantErr(t, "idle report from another goroutine (race build)", err, nogil.ErrWrongThread)
		} else if err != nil {
			t.Errorf("idle report from another goroutine = %v, want nil", err)
		}
		other.run(func(o *nogil.ThreadState) { must(t, "Advance by the other state", second(o.Advance())) })
		seq := ctest.TSSeq(ts.CPtr())
		other.run(func(*nogil.ThreadState) {
			wantErr(t, "report from another goroutine", r.QuiescentState(), nogil.ErrWrongThread,
				"call it from the goroutine that called Bind")
		})
		if got := ctest.TSSeq(ts.CPtr()); got != seq {
			t.Errorf("a refused report moved the slot's seq from %d to %d", seq, got)
		}
		must(t, "owner's report", r.QuiescentState())
		if got := ctest.TSSeq(ts.CPtr()); got == seq {
			t.Error("the owner's report did not write the new sequence")
		}
	})
	// withState released the state: from any goroutine, ErrReleased and no crash.
	wantErr(t, "report after Release", r.QuiescentState(), nogil.ErrReleased, "after Release")
	other.run(func(*nogil.ThreadState) {
		wantErr(t, "report after Release from another goroutine", r.QuiescentState(), nogil.ErrReleased)
	})
	// A reporter taken after Release is no different.
	wantErr(t, "reporter taken after Release", r.ThreadState().QuiescentReporter().QuiescentState(),
		nogil.ErrReleased)
}
