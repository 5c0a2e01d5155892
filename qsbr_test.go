package nogil_test

import (
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nogil-go/nogil"
	"github.com/nogil-go/nogil/internal/ctest"
)

// The Go fast paths (QuiescentState, Checkpoint, Advance, GoalReached, State, HoldsGIL) use
// sync/atomic on words of the C structs; the C compiler's offsets and sizes must be the ones
// the wrappers use.
func TestQSBRLayoutGoMatchesC(t *testing.T) {
	in := newInterp(t)
	withState(t, in, true, func(ts *nogil.ThreadState) {
		goSide := nogil.FastPathLayout(ts)
		if len(goSide) != len(ctest.TStateLayoutItems) {
			t.Fatalf("%d Go layout items, %d C ones", len(goSide), len(ctest.TStateLayoutItems))
		}
		for i, name := range ctest.TStateLayoutItems {
			if c := ctest.TStateLayout(i); goSide[i] != c {
				t.Errorf("%s: Go wrappers use %d, C compiler says %d", name, goSide[i], c)
			}
		}
		if ctest.TSSlot(ts.CPtr()) == nil {
			t.Error("the state has no QSBR slot")
		}
	})
}

// The same words, seen from both sides: what Go's fast paths store, C reads, and the other
// way round.
func TestQSBRFastPathsShareCWords(t *testing.T) {
	deadline(t, 30*time.Second)
	in := newInterp(t)
	ip := in.CPtr()
	withState(t, in, true, func(ts *nogil.ThreadState) {
		c := ts.CPtr()
		// C advances; Go's quiescent report adopts the new sequence in the C slot.
		w := ctest.Advance(ip)
		if got := ctest.WrSeq(ip); got != w {
			t.Fatalf("C wr_seq = %d after an advance that returned %d", got, w)
		}
		if ctest.TSSeq(c) == w {
			t.Fatal("the slot already had the new sequence before any report")
		}
		must(t, "QuiescentState", ts.QuiescentState())
		if got := ctest.TSSeq(c); got != w {
			t.Errorf("after Go QuiescentState the C slot has seq %d, want %d", got, w)
		}
		w = ctest.Advance(ip)
		must(t, "Checkpoint", ts.Checkpoint())
		if got := ctest.TSSeq(c); got != w {
			t.Errorf("after Go Checkpoint the C slot has seq %d, want %d", got, w)
		}
		// Go advances; C sees it; C's inline checkpoint reports it.
		g, err := ts.Advance()
		must(t, "Advance", err)
		if got := ctest.WrSeq(ip); got != g || g != w+2 {
			t.Errorf("Go Advance returned %d; C wr_seq is %d; want %d", g, got, w+2)
		}
		if st := ctest.TSCheckpoint(c); st != ctest.OK || ctest.TSSeq(c) != g {
			t.Errorf("C checkpoint after Go Advance: status %d, seq %d, want %d", st, ctest.TSSeq(c), g)
		}
		// The goal is reached once a scan saw it (we are the only thread): Poll scans,
		// GoalReached reads C's rd_seq.
		if !ts.Poll(g) {
			t.Error("Poll of a goal every thread state has reached = false")
		}
		if !ts.GoalReached(g) || ctest.RdSeq(ip) != g {
			t.Errorf("after Poll: GoalReached = %v, C rd_seq = %d, want true, %d", ts.GoalReached(g), ctest.RdSeq(ip), g)
		}
		// A pending bit set from C sends Go's Checkpoint to the C slow path, which handles and
		// clears it.
		ctest.TSSetPending(c, ctest.PendingDelayed)
		must(t, "Checkpoint with a pending bit", ts.Checkpoint())
		if p := ctest.TSPending(c); p&ctest.PendingDelayed != 0 {
			t.Errorf("pending = %#x after Checkpoint, want the delayed bit handled", p)
		}
		// State, both ways.
		if st := ctest.TSDetach(c); st != ctest.OK || ts.State() != nogil.Detached {
			t.Errorf("C detach: status %d, Go State %v", st, ts.State())
		}
		if ctest.TSSeq(c) != 0 {
			t.Error("C detach left the QSBR slot online")
		}
		wantErr(t, "Go Checkpoint after a C detach", ts.Checkpoint(), nogil.ErrState)
		if st := ctest.TSAttach(c); st != ctest.OK || ts.State() != nogil.Attached {
			t.Errorf("C attach: status %d, Go State %v", st, ts.State())
		}
		must(t, "Go Detach after a C attach", ts.Detach())
		if ctest.TSState(c) != uint32(nogil.Detached) || ctest.TSCurrent() != nil {
			t.Error("C does not see the Go Detach")
		}
		must(t, "Attach", ts.Attach())
	})
}

// The QSBR contract through the Go API: a goal is not reached while a thread state that was
// attached when it was computed has neither reported a quiescent state nor detached.
func TestQSBRGoalWaitsForAttachedReader(t *testing.T) {
	deadline(t, 30*time.Second)
	in := newInterp(t)
	reader := startBound(t, in, true)
	defer reader.stop()
	detached := startBound(t, in, false) // a detached state never holds a goal up
	defer detached.stop()

	withState(t, in, true, func(writer *nogil.ThreadState) {
		for round := 0; round < 50; round++ {
			goal, err := writer.Advance()
			if !must(t, "Advance", err) {
				return
			}
			for i := 0; i < 3; i++ {
				must(t, "writer Checkpoint", writer.Checkpoint())
				if writer.Poll(goal) || writer.GoalReached(goal) {
					t.Fatalf("round %d: goal %d reached while the reader has not reported", round, goal)
				}
			}
			switch round % 3 {
			case 0:
				reader.run(func(ts *nogil.ThreadState) { must(t, "QuiescentState", ts.QuiescentState()) })
			case 1:
				reader.run(func(ts *nogil.ThreadState) { must(t, "Checkpoint", ts.Checkpoint()) })
			case 2:
				reader.run(func(ts *nogil.ThreadState) {
					must(t, "Detach", ts.Detach())
					must(t, "Attach", ts.Attach())
				})
			}
			must(t, "writer Checkpoint", writer.Checkpoint())
			if !writer.Poll(goal) || !writer.GoalReached(goal) {
				t.Fatalf("round %d: goal %d not reached after every state reported (rd_seq %d)",
					round, goal, ctest.RdSeq(in.CPtr()))
			}
		}
	})
}

// Sequences are compared wrap-safely. The nogil_torture build starts them 1000 advances
// before 2^64, so this test crosses the wrap there; elsewhere it checks the same goals far
// from it.
func TestQSBRSequenceWrap(t *testing.T) {
	deadline(t, 30*time.Second)
	in := newInterp(t)
	start := stats(t, in).WriteSeq
	torture := start > 1<<63
	reader := startBound(t, in, true)
	defer reader.stop()
	withState(t, in, true, func(ts *nogil.ThreadState) {
		for i := 0; i < 1500; i++ {
			goal, _ := ts.Advance()
			if goal%2 != 1 {
				t.Fatalf("goal %d is even (0 is the offline sequence)", goal)
			}
			if i%100 == 0 {
				if ts.Poll(goal) {
					t.Fatalf("advance %d: goal %#x reached while the reader lags", i, goal)
				}
				reader.run(func(r *nogil.ThreadState) { must(t, "Checkpoint", r.Checkpoint()) })
			} else {
				reader.run(func(r *nogil.ThreadState) { must(t, "Checkpoint", r.Checkpoint()) })
			}
			must(t, "Checkpoint", ts.Checkpoint())
			if !ts.Poll(goal) {
				t.Fatalf("advance %d: goal %#x not reached (rd_seq %#x)", i, goal, ctest.RdSeq(in.CPtr()))
			}
		}
	})
	end := stats(t, in).WriteSeq
	if torture && end > start {
		t.Errorf("torture build: the write sequence went %#x -> %#x without wrapping", start, end)
	}
}

// A goal held up longer than the threshold is reported to the stall handler, on the
// interpreter's runner goroutine, naming the thread state that holds it up.
func TestStallHandler(t *testing.T) {
	deadline(t, 60*time.Second)
	in := newInterp(t)
	reports := make(chan nogil.Stall, 100)
	must(t, "SetStallHandler", in.SetStallHandler(time.Millisecond, func(s nogil.Stall) {
		select {
		case reports <- s:
		default:
		}
	}))
	staller := startBound(t, in, true)
	defer staller.stop()
	withState(t, in, true, func(ts *nogil.ThreadState) {
		goal, _ := ts.Advance()
		must(t, "Checkpoint", ts.Checkpoint()) // only the staller holds the goal up
		var got nogil.Stall
		found := waitFor(20*time.Second, func() bool {
			ts.Poll(goal) // polling is what notices the stall
			select {
			case got = <-reports:
				return true
			default:
				return false
			}
		})
		if !found {
			t.Fatal("no stall reported while a thread state stayed attached without reporting")
		}
		if got.ThreadStateID != staller.ts.ID() || !got.Attached || got.Goal != goal || got.Behind <= 0 {
			t.Errorf("stall report %+v; want state %d, attached, goal %d, behind > 0", got, staller.ts.ID(), goal)
		}
		if s := stats(t, in); s.StallsReported == 0 || s.LastStall.ThreadStateID != staller.ts.ID() {
			t.Errorf("Stats: %d stalls reported, last %+v", s.StallsReported, s.LastStall)
		}
		staller.run(func(s *nogil.ThreadState) { must(t, "Checkpoint", s.Checkpoint()) })
		must(t, "Checkpoint", ts.Checkpoint())
		if !ts.Poll(goal) {
			t.Error("goal not reached after the staller reported")
		}
		// Off: no more reports, however long the staller lags.
		must(t, "SetStallHandler(0)", in.SetStallHandler(0, nil))
		for len(reports) > 0 {
			<-reports
		}
		goal, _ = ts.Advance()
		waitFor(50*time.Millisecond, func() bool { ts.Poll(goal); return false })
		staller.run(func(s *nogil.ThreadState) { must(t, "Detach", s.Detach()) })
		must(t, "Barrier", ts.Barrier()) // flushes anything queued for the runner
		if len(reports) != 0 {
			t.Errorf("%d stall reports after the handler was removed", len(reports))
		}
	})
}

// The inlined fast path of QuiescentState and Checkpoint reads the slot's and the
// interpreter's sequences only after the binding says the state is live: after a Release or
// the bound thread's exit, even once the interpreter (and with it the slot memory) is gone,
// every call is refused with ErrReleased, from any goroutine.
func TestIdleReportsAfterReleaseAndClose(t *testing.T) {
	deadline(t, 60*time.Second)
	in, err := nogil.NewInterpreter()
	if err != nil {
		t.Fatal(err)
	}
	// A state whose goroutine returned without Release (its thread exits), and one released
	// by its goroutine, which keeps it for calls after the Close.
	exited := make(chan *nogil.ThreadState, 1)
	tids := make(chan int, 1)
	go func() {
		ts, err := in.Bind()
		if !must(t, "Bind", err) || !must(t, "Attach", ts.Attach()) {
			exited <- nil
			return
		}
		must(t, "QuiescentState", ts.QuiescentState())
		tids <- unix.Gettid()
		exited <- ts
	}()
	ex := <-exited
	if ex == nil {
		t.FailNow()
	}
	tid := <-tids
	if !waitFor(10*time.Second, func() bool { return threadGone(tid) }) {
		t.Fatalf("thread %d still exists after its locked goroutine returned", tid)
	}
	afterClose := make(chan struct{})
	released := make(chan struct{})
	owner := make(chan struct{})
	go func() {
		defer close(owner)
		runtime.LockOSThread() // stays locked: the goroutine exits with its thread
		ts, err := in.Bind()
		if !must(t, "Bind", err) || !must(t, "Attach", ts.Attach()) {
			close(released)
			return
		}
		must(t, "QuiescentState", ts.QuiescentState())
		must(t, "Release", ts.Release())
		close(released)
		<-afterClose
		wantErr(t, "QuiescentState after Release and Close (owner)", ts.QuiescentState(),
			nogil.ErrReleased, "after Release")
		wantErr(t, "Checkpoint after Release and Close (owner)", ts.Checkpoint(),
			nogil.ErrReleased, "after Release")
	}()
	<-released
	if err := in.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	// Give the memory some reuse: new interpreters take the freed slot segments and
	// interpreter memory back from malloc and the quarantine.
	for i := 0; i < 20; i++ {
		in2, err := nogil.NewInterpreter()
		if err != nil {
			t.Fatal(err)
		}
		withState(t, in2, true, func(ts *nogil.ThreadState) { must(t, "QuiescentState", ts.QuiescentState()) })
		defer in2.Close()
	}
	close(afterClose)
	<-owner
	for _, who := range []string{"the test goroutine", "another goroutine"} {
		check := func() {
			wantErr(t, "QuiescentState of an exited thread's state from "+who, ex.QuiescentState(),
				nogil.ErrReleased, "exited")
			wantErr(t, "Checkpoint of an exited thread's state from "+who, ex.Checkpoint(),
				nogil.ErrReleased, "exited")
		}
		if who == "the test goroutine" {
			check()
		} else {
			done := make(chan struct{})
			go func() { defer close(done); check() }()
			<-done
		}
	}
}

// A burst of thread states that came and went leaves scans walking only the slots in use:
// the scan bound drops back when the top slots are given back.
func TestQSBRScanSlotsDropAfterABurst(t *testing.T) {
	deadline(t, 30*time.Second)
	in := newInterp(t)
	base := stats(t, in)
	const burst = 64
	bound := make(chan struct{}, burst)
	release := make(chan struct{})
	done := make(chan struct{}, burst)
	for i := 0; i < burst; i++ {
		go func() {
			defer func() { done <- struct{}{} }()
			ts, err := in.Bind()
			if !must(t, "Bind", err) {
				bound <- struct{}{}
				return
			}
			bound <- struct{}{}
			<-release
			must(t, "Release", ts.Release())
		}()
	}
	for i := 0; i < burst; i++ {
		<-bound
	}
	if s := stats(t, in); s.QSBRScanSlots < base.QSBRScanSlots+burst {
		t.Errorf("with %d more states: scans walk %d slots, want at least %d", burst,
			s.QSBRScanSlots, base.QSBRScanSlots+burst)
	}
	close(release)
	for i := 0; i < burst; i++ {
		<-done
	}
	if s := stats(t, in); s.QSBRSlots != base.QSBRSlots || s.QSBRScanSlots != base.QSBRScanSlots {
		t.Errorf("after the burst: %d slots in use, scans walk %d; want %d and %d", s.QSBRSlots,
			s.QSBRScanSlots, base.QSBRSlots, base.QSBRScanSlots)
	}
}
