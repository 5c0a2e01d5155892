package nogil_test

import (
	"runtime"
	"testing"
	"time"
	"unsafe"

	"github.com/nogil-go/nogil"
	"github.com/nogil-go/nogil/internal/ctest"
)

// The inlined reports read only the slot's seq and the write sequence, so a released state's
// reports must not succeed because another state, attached and up to date, now owns its old
// slot. Three ways to end a state:
//   - Release after a QuiescentReporter was taken: the slot stays out of use while the
//     wrapper lives (a new state gets another one);
//   - Release without one: the slot is given back at once and the new state may get it, but
//     the released wrapper no longer reads it;
//   - the goroutine returns locked (the thread's exit releases the state, no Go code runs):
//     as with a reporter.
//
// In every case each report of the released state fails, from any goroutine, while the new
// state is attached and up to date.
func TestReleasedReportsIgnoreTheSlotsNewOwner(t *testing.T) {
	deadline(t, 30*time.Second)
	cases := []struct {
		name           string
		reporterBefore bool // take a QuiescentReporter before the end
		exit           bool // end by returning locked instead of Release
	}{
		{"Release with a reporter", true, false},
		{"Release without a reporter", false, false},
		{"thread exit", false, true},
	}
	for _, c := range cases {
		in := newInterp(t)
		base := stats(t, in)
		var ts *nogil.ThreadState
		var before nogil.QuiescentReporter
		var slot unsafe.Pointer
		done := make(chan struct{})
		go func() {
			defer close(done)
			s, err := in.Bind()
			if !must(t, "Bind", err) || !must(t, "Attach", s.Attach()) {
				return
			}
			must(t, "QuiescentState", s.QuiescentState())
			ts, slot = s, ctest.TSSlot(s.CPtr())
			if c.reporterBefore {
				before = s.QuiescentReporter()
			}
			if !c.exit {
				must(t, "Release", ts.Release())
			}
		}()
		<-done
		if ts == nil {
			t.FailNow()
		}
		if !waitFor(10*time.Second, func() bool { return stats(t, in).QSBRSlots == base.QSBRSlots }) {
			t.Fatalf("%s: the state still has its slot", c.name)
		}
		retained := c.reporterBefore || c.exit
		if got, want := ctest.QSBRRetained(in.CPtr()), map[bool]uint32{false: 0, true: 1}[retained]; got != want {
			t.Errorf("%s: %d slots retained, want %d", c.name, got, want)
		}
		b := startBound(t, in, true)
		check := func(who string) {
			who = c.name + ", " + who
			if c.reporterBefore {
				wantReportErr(t, who+": reporter taken before", before, nogil.ErrReleased)
			}
			wantReportErr(t, who+": reporter taken after", ts.QuiescentReporter(), nogil.ErrReleased)
			wantErr(t, who+": QuiescentState", ts.QuiescentState(), nogil.ErrReleased)
			wantErr(t, who+": Checkpoint", ts.Checkpoint(), nogil.ErrReleased)
		}
		b.run(func(bts *nogil.ThreadState) {
			must(t, "QuiescentState of the new state", bts.QuiescentState())
			reused := ctest.TSSlot(bts.CPtr()) == slot
			if retained && reused {
				t.Errorf("%s: a new state got the released state's slot while it is pinned", c.name)
			}
			if !retained && !reused {
				// A reservation takes the lowest free slot: the released state's slot was the
				// lowest free one when it was bound, and is again once given back (the slots
				// under it still have their owners). Otherwise the case is not what it says.
				t.Errorf("%s: the new state did not get the released state's slot", c.name)
			}
			check("the new state's goroutine")
		})
		check("the test goroutine")
		b.stop()
		runtime.KeepAlive(ts)
		runtime.KeepAlive(before)
	}
}

// The pin goes with the wrapper: released ThreadStates keep their slots while reachable (the
// slot space grows), and once they and their reporters are garbage collected the slots serve
// new states again (it does not grow any more).
func TestReleasedSlotsReturnWhenCollected(t *testing.T) {
	deadline(t, 60*time.Second)
	in := newInterp(t)
	const n = 40
	var keep []nogil.QuiescentReporter
	slots := map[unsafe.Pointer]bool{}
	for range n {
		withState(t, in, true, func(ts *nogil.ThreadState) {
			keep = append(keep, ts.QuiescentReporter())
			slots[ctest.TSSlot(ts.CPtr())] = true
		})
	}
	if len(slots) != n {
		t.Errorf("%d states bound one after another, with their wrappers kept, used %d slots; "+
			"want %d (a released state's slot is not reused while its wrapper lives)", n, len(slots), n)
	}
	if got := ctest.QSBRRetained(in.CPtr()); got != n {
		t.Errorf("%d slots retained, want %d", got, n)
	}
	for _, r := range keep {
		if r.Report() {
			t.Error("Report of a released state = true")
		}
	}
	capacity := stats(t, in).QSBRCapacity
	keep = nil
	if !waitFor(30*time.Second, func() bool {
		runtime.GC() // the cleanups run after a collection
		return ctest.QSBRRetained(in.CPtr()) == 0
	}) {
		t.Fatalf("%d slots still retained after their wrappers were collected",
			ctest.QSBRRetained(in.CPtr()))
	}
	for range n {
		withState(t, in, true, func(ts *nogil.ThreadState) {
			keep = append(keep, ts.QuiescentReporter())
		})
	}
	if s := stats(t, in); s.QSBRCapacity != capacity {
		t.Errorf("QSBR capacity %d -> %d: the collected states' slots were not reused", capacity,
			s.QSBRCapacity)
	}
	runtime.KeepAlive(keep)
}

// A reporter stays safe, and says why it fails, when its Interpreter is closed and its memory
// could serve new interpreters: the pin keeps the write sequence and the slot readable and
// out of use until the wrapper is collected.
func TestReporterAfterInterpreterClosed(t *testing.T) {
	deadline(t, 60*time.Second)
	in, err := nogil.NewInterpreter()
	if err != nil {
		t.Fatal(err)
	}
	b := startBound(t, in, true)
	var r nogil.QuiescentReporter
	b.run(func(ts *nogil.ThreadState) {
		r = ts.QuiescentReporter()
		if !r.Report() {
			t.Errorf("Report = false (Err: %v)", r.Err())
		}
	})
	// Close stops the world: the attached state must reach a checkpoint.
	closed := make(chan error)
	go func() { closed <- in.Close() }()
	b.run(func(ts *nogil.ThreadState) {
		for ts.Checkpoint() == nil {
			runtime.Gosched()
		}
		wantErr(t, "Checkpoint while closing", ts.Checkpoint(), nogil.ErrClosed)
		wantReportErr(t, "reporter of a shut-down state", r, nogil.ErrClosed)
	})
	must(t, "Close", <-closed)
	b.stop()
	wantReportErr(t, "reporter released after Close", r, nogil.ErrReleased)
	// Interpreters created and closed after it reuse deleted interpreters' memory (the
	// quarantine keeps a few); none of their attached, up-to-date states may make r succeed.
	for i := range 20 {
		in2, err := nogil.NewInterpreter()
		if err != nil {
			t.Fatal(err)
		}
		withState(t, in2, true, func(ts *nogil.ThreadState) {
			must(t, "QuiescentState", ts.QuiescentState())
			if r.Report() {
				t.Errorf("interpreter %d: the released reporter's Report = true", i)
			}
		})
		must(t, "Close", in2.Close())
	}
	wantReportErr(t, "reporter after the churn", r, nogil.ErrReleased)
}
