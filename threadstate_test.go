package nogil_test

import (
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nogil-go/nogil"
	"github.com/nogil-go/nogil/internal/ctest"
)

// newInterp returns an Interpreter that is closed when the test ends.
func newInterp(t testing.TB) *nogil.Interpreter {
	t.Helper()
	in, err := nogil.NewInterpreter()
	if err != nil {
		t.Fatalf("NewInterpreter: %v", err)
	}
	t.Cleanup(func() {
		if err := in.Close(); err != nil {
			t.Errorf("Interpreter.Close: %v", err)
		}
	})
	return in
}

// stats returns in.Stats() or fails the test.
func stats(t testing.TB, in *nogil.Interpreter) nogil.Stats {
	t.Helper()
	s, err := in.Stats()
	if err != nil {
		t.Fatalf("Stats: %v", err)
	}
	return s
}

// withState runs f in a new goroutine with a ThreadState of in bound to it (attached if
// attach), releases the state when f returns, and waits.
func withState(t testing.TB, in *nogil.Interpreter, attach bool, f func(ts *nogil.ThreadState)) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		ts, err := in.Bind()
		if !must(t, "Bind", err) {
			return
		}
		defer func() { must(t, "Release", ts.Release()) }()
		if attach && !must(t, "Attach", ts.Attach()) {
			return
		}
		f(ts)
	}()
	<-done
}

// A boundGoroutine is a goroutine with a ThreadState that runs the functions sent to it, so
// that a test can drive several thread states step by step.
type boundGoroutine struct {
	ts   *nogil.ThreadState
	do   chan func(*nogil.ThreadState)
	done chan struct{}
}

// startBound binds a state of in on a new goroutine (attached if attach).
func startBound(t testing.TB, in *nogil.Interpreter, attach bool) *boundGoroutine {
	t.Helper()
	g := &boundGoroutine{do: make(chan func(*nogil.ThreadState)), done: make(chan struct{})}
	ready := make(chan *nogil.ThreadState)
	go func() {
		defer close(g.done)
		ts, err := in.Bind()
		if !must(t, "Bind", err) {
			close(ready)
			return
		}
		if attach && !must(t, "Attach", ts.Attach()) {
			ts.Release()
			close(ready)
			return
		}
		ready <- ts
		for f := range g.do {
			f(ts)
		}
		must(t, "Release", ts.Release())
	}()
	g.ts = <-ready
	if g.ts == nil {
		t.FailNow()
	}
	return g
}

// run runs f on the goroutine and waits for it.
func (g *boundGoroutine) run(f func(ts *nogil.ThreadState)) {
	ran := make(chan struct{})
	g.do <- func(ts *nogil.ThreadState) {
		defer close(ran)
		f(ts)
	}
	<-ran
}

// stop releases the state and ends the goroutine.
func (g *boundGoroutine) stop() {
	close(g.do)
	<-g.done
}

// threadGone reports whether the OS thread tid of this process has exited.
func threadGone(tid int) bool {
	_, err := os.Stat(fmt.Sprintf("/proc/self/task/%d", tid))
	return os.IsNotExist(err)
}

func TestBindAttachDetachRelease(t *testing.T) {
	deadline(t, 30*time.Second)
	in := newInterp(t)
	base := stats(t, in)
	withState(t, in, false, func(ts *nogil.ThreadState) {
		if ts.Interpreter() != in {
			t.Error("Interpreter() is not the interpreter that bound it")
		}
		if ts.ID() == 0 {
			t.Error("ID() = 0, want ids from 1")
		}
		if got := ctest.TSThreadID(ts.CPtr()); got != ctest.ThreadID() {
			t.Errorf("the C state is bound to thread %#x, the goroutine runs on %#x", got, ctest.ThreadID())
		}
		if s := stats(t, in); s.Threads != base.Threads+1 || s.QSBRSlots != base.QSBRSlots+1 {
			t.Errorf("after Bind: %d threads, %d slots; want %d, %d", s.Threads, s.QSBRSlots,
				base.Threads+1, base.QSBRSlots+1)
		}
		if st := ts.State(); st != nogil.Detached {
			t.Errorf("new state is %v, want detached", st)
		}
		if !must(t, "Attach", ts.Attach()) {
			return
		}
		if st := ts.State(); st != nogil.Attached || ctest.TSState(ts.CPtr()) != uint32(nogil.Attached) {
			t.Errorf("after Attach: Go says %v, C says %d", st, ctest.TSState(ts.CPtr()))
		}
		if ctest.TSCurrent() != ts.CPtr() {
			t.Error("ng_tstate_current() on the bound thread is not the attached state")
		}
		if ctest.TSSeq(ts.CPtr()) == 0 {
			t.Error("attached but the QSBR slot is offline")
		}
		must(t, "Detach", ts.Detach())
		if st := ts.State(); st != nogil.Detached || ctest.TSCurrent() != nil || ctest.TSSeq(ts.CPtr()) != 0 {
			t.Errorf("after Detach: %v, current %p, seq %d", st, ctest.TSCurrent(), ctest.TSSeq(ts.CPtr()))
		}
		must(t, "Attach again", ts.Attach())
	})
	if s := stats(t, in); s.Threads != base.Threads || s.QSBRSlots != base.QSBRSlots {
		t.Errorf("after Release: %d threads, %d slots; want %d, %d", s.Threads, s.QSBRSlots,
			base.Threads, base.QSBRSlots)
	}
}

// Bind locks the goroutine to its OS thread and Release unlocks it, as does a failed Bind:
// a goroutine that returns while still locked ends its thread, one that returns unlocked
// leaves it to the Go runtime.
func TestBindLocksReleaseUnlocksOSThread(t *testing.T) {
	deadline(t, 30*time.Second)
	in := newInterp(t)
	base := stats(t, in)
	run := func(what string, failAlloc bool) {
		tids := make(chan int, 1)
		done := make(chan struct{})
		go func() {
			defer close(done)
			tid := unix.Gettid()
			tids <- tid
			if failAlloc {
				ctest.FailTStateAlloc(1)
				_, err := in.Bind()
				wantErr(t, "Bind with a failing allocation", err, nogil.ErrNoMemory)
				return
			}
			ts, err := in.Bind()
			if !must(t, "Bind", err) {
				return
			}
			// Goroutines that block move between threads; a locked one must not.
			for i := 0; i < 100; i++ {
				time.Sleep(10 * time.Microsecond)
				runtime.Gosched()
				if unix.Gettid() != tid {
					t.Errorf("bound goroutine moved from thread %d to %d", tid, unix.Gettid())
					break
				}
			}
			must(t, "Release", ts.Release())
		}()
		tid := <-tids
		<-done
		// A thread that a locked goroutine leaves exits at once; give it the time to.
		if waitFor(100*time.Millisecond, func() bool { return threadGone(tid) }) {
			t.Errorf("%s: the goroutine's thread %d exited with it: it was still locked", what, tid)
		}
	}
	run("after Release", false)
	run("after a failed Bind", true)
	if s := stats(t, in); s.Threads != base.Threads || s.QSBRSlots != base.QSBRSlots {
		t.Errorf("%d threads, %d QSBR slots after a failed Bind; want %d, %d", s.Threads, s.QSBRSlots,
			base.Threads, base.QSBRSlots)
	}
}

func TestThreadStateMisuse(t *testing.T) {
	deadline(t, 30*time.Second)
	in := newInterp(t)
	other := startBound(t, in, false)
	defer other.stop()

	withState(t, in, false, func(ts *nogil.ThreadState) {
		wantErr(t, "Detach when detached", ts.Detach(), nogil.ErrState, "not attached")
		wantErr(t, "QuiescentState when detached", ts.QuiescentState(), nogil.ErrState)
		wantErr(t, "Checkpoint when detached", ts.Checkpoint(), nogil.ErrState)
		wantErr(t, "CallDelayed when detached", ts.CallDelayed(func() {}, 0), nogil.ErrState)
		wantErr(t, "FreeDelayed when detached", ts.FreeDelayed(ctest.Alloc(8), 8), nogil.ErrState)
		wantErr(t, "ProcessDelayed when detached", second(ts.ProcessDelayed()), nogil.ErrState)
		wantErr(t, "Barrier when detached", ts.Barrier(), nogil.ErrState)
		wantErr(t, "EnableGIL when detached", ts.EnableGIL(), nogil.ErrState)
		must(t, "Attach", ts.Attach())
		wantErr(t, "double Attach", ts.Attach(), nogil.ErrState, "Detach it first")
		wantErr(t, "CallDelayed(nil)", ts.CallDelayed(nil, 0), nogil.ErrInvalid)
		wantErr(t, "DisableGIL without the GIL", ts.DisableGIL(), nogil.ErrState)

		// A second state of the same goroutine may not be attached at the same time.
		ts2, err := in.Bind()
		if must(t, "second Bind", err) {
			wantErr(t, "Attach of a second state", ts2.Attach(), nogil.ErrState, "another ThreadState")
			must(t, "Release of the second state", ts2.Release())
		}

		// The other goroutine (locked to another thread) may not use this state. QuiescentState
		// and Checkpoint are checked when they have something to do (see below).
		tid := unix.Gettid()
		must(t, "QuiescentState", ts.QuiescentState())
		other.run(func(o *nogil.ThreadState) {
			hint := fmt.Sprintf("used from OS thread %d but bound to thread %d", unix.Gettid(), tid)
			checkIdleReports(t, ts, "from another goroutine", nogil.ErrWrongThread)
			// A new sequence: now they would write, and are refused.
			if _, err := o.Advance(); !must(t, "Advance by the other goroutine's state", err) {
				return
			}
			seq := ctest.TSSeq(ts.CPtr())
			for name, err := range map[string]error{
				"Attach":         ts.Attach(),
				"Detach":         ts.Detach(),
				"Checkpoint":     ts.Checkpoint(),
				"QuiescentState": ts.QuiescentState(),
				"CallDelayed":    ts.CallDelayed(func() {}, 0),
				"FreeDelayed":    ts.FreeDelayed(nil, 0),
				"ProcessDelayed": second(ts.ProcessDelayed()),
				"Barrier":        ts.Barrier(),
				"EnableGIL":      ts.EnableGIL(),
				"DisableGIL":     ts.DisableGIL(),
				"Release":        ts.Release(),
				"Advance":        second(ts.Advance()),
				"StopTheWorld":   in.StopTheWorld(ts, func() { t.Error("StopTheWorld ran f") }),
			} {
				wantErr(t, name+" from another goroutine", err, nogil.ErrWrongThread, hint,
					"call it from the goroutine that called Bind")
			}
			if ts.HoldsGIL() || ts.GoalReached(0) || ts.Poll(0) {
				t.Error("HoldsGIL, GoalReached or Poll from another goroutine returned true")
			}
			if got := ctest.TSSeq(ts.CPtr()); got != seq {
				t.Errorf("misuse from another goroutine moved the slot's seq from %d to %d", seq, got)
			}
		})
		if st := ts.State(); st != nogil.Attached {
			t.Errorf("misuse from another goroutine changed the state to %v", st)
		}
		must(t, "Checkpoint by the owner after the misuse", ts.Checkpoint())

		// A goroutine that is not locked at all is caught too.
		done := make(chan struct{})
		go func() {
			defer close(done)
			checkIdleReports(t, ts, "from an unlocked goroutine", nogil.ErrWrongThread)
		}()
		<-done
		if _, err := ts.Advance(); !must(t, "Advance", err) {
			return
		}
		errc := make(chan error)
		go func() { errc <- ts.Checkpoint() }()
		wantErr(t, "Checkpoint from an unlocked goroutine", <-errc, nogil.ErrWrongThread)
		go func() { errc <- ts.QuiescentState() }()
		wantErr(t, "QuiescentState from an unlocked goroutine", <-errc, nogil.ErrWrongThread)
		must(t, "Checkpoint by the owner", ts.Checkpoint())
	})
}

// checkIdleReports calls QuiescentState and Checkpoint on ts, attached and at the current
// sequence with nothing pending, from a goroutine that may not use it (who). Such calls have
// nothing to do: they return nil without checking the goroutine, except in race-detector
// builds, which check every call and return want.
func checkIdleReports(t *testing.T, ts *nogil.ThreadState, who string, want error) {
	t.Helper()
	seq := ctest.TSSeq(ts.CPtr())
	for name, err := range map[string]error{
		"QuiescentState": ts.QuiescentState(),
		"Checkpoint":     ts.Checkpoint(),
	} {
		if nogil.RaceEnabled {
			wantErr(t, name+" with nothing to do "+who+" (race build)", err, want)
		} else if err != nil {
			t.Errorf("%s with nothing to do %s = %v, want nil", name, who, err)
		}
	}
	if got := ctest.TSSeq(ts.CPtr()); got != seq {
		t.Errorf("idle reports %s moved the slot's seq from %d to %d", who, seq, got)
	}
}

func second[T any](_ T, err error) error { return err }

func TestThreadStateUseAfterRelease(t *testing.T) {
	deadline(t, 30*time.Second)
	in := newInterp(t)
	var ts *nogil.ThreadState
	withState(t, in, true, func(s *nogil.ThreadState) { ts = s })
	if st := ts.State(); st != nogil.Released {
		t.Errorf("State after Release = %v", st)
	}
	// From the goroutine that bound it and from any other: ErrReleased, never a crash.
	check := func(who string) {
		for name, err := range map[string]error{
			"Attach":         ts.Attach(),
			"Detach":         ts.Detach(),
			"Checkpoint":     ts.Checkpoint(),
			"QuiescentState": ts.QuiescentState(),
			"CallDelayed":    ts.CallDelayed(func() {}, 0),
			"FreeDelayed":    ts.FreeDelayed(nil, 0),
			"ProcessDelayed": second(ts.ProcessDelayed()),
			"Barrier":        ts.Barrier(),
			"EnableGIL":      ts.EnableGIL(),
			"Release":        ts.Release(),
			"Advance":        second(ts.Advance()),
		} {
			wantErr(t, name+" after Release ("+who+")", err, nogil.ErrReleased, "after Release")
		}
		if ts.HoldsGIL() {
			t.Error("HoldsGIL after Release")
		}
	}
	check("test goroutine")
	withState(t, in, true, func(*nogil.ThreadState) { check("a goroutine with another state") })
	// The same goroutine can bind again after its Release.
	done := make(chan struct{})
	go func() {
		defer close(done)
		s, err := in.Bind()
		if !must(t, "Bind", err) {
			return
		}
		must(t, "Release", s.Release())
		wantErr(t, "Checkpoint after Release (same goroutine)", s.Checkpoint(), nogil.ErrReleased)
		s2, err := in.Bind()
		if !must(t, "Bind after Release", err) {
			return
		}
		must(t, "Attach of the new state", s2.Attach())
		must(t, "Release of the new state", s2.Release())
	}()
	<-done
}

// The goroutine returns while locked: Go ends its OS thread, the C destructor releases the
// thread state (and the binding is marked), the interpreter drops it, and the delayed work it
// queued runs later, exactly once.
func TestThreadExitReleasesBoundState(t *testing.T) {
	deadline(t, 60*time.Second)
	in := newInterp(t)
	base := stats(t, in)
	var ran atomic.Int32
	var holding atomic.Bool // the exiting goroutine may still hold what it retired
	type result struct {
		ts  *nogil.ThreadState
		tid int
	}
	res := make(chan result, 1)
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		ts, err := in.Bind()
		if !must(t, "Bind", err) || !must(t, "Attach", ts.Attach()) {
			res <- result{}
			return
		}
		holding.Store(true)
		for i := 0; i < 10; i++ {
			must(t, "CallDelayed", ts.CallDelayed(func() {
				if holding.Load() {
					t.Error("delayed call ran while its retiring goroutine was still attached")
				}
				ran.Add(1)
			}, 0))
			must(t, "FreeDelayed", ts.FreeDelayed(ctest.Alloc(100), 100))
		}
		must(t, "ProcessDelayed", second(ts.ProcessDelayed()))
		// The calls run asynchronously: give an early run the time to show.
		if waitFor(20*time.Millisecond, func() bool { return ran.Load() != 0 }) {
			t.Error("delayed calls ran while their goroutine was attached without a report")
		}
		res <- result{ts, unix.Gettid()}
		holding.Store(false)
		// No Release: the goroutine returns while locked.
	}()
	r := <-res
	<-exited
	if r.ts == nil {
		t.FailNow()
	}
	if !waitFor(10*time.Second, func() bool { return threadGone(r.tid) }) {
		t.Fatalf("thread %d still exists after its locked goroutine returned", r.tid)
	}
	if !waitFor(10*time.Second, func() bool {
		s := stats(t, in)
		return s.Threads == base.Threads && s.QSBRSlots == base.QSBRSlots
	}) {
		s := stats(t, in)
		t.Fatalf("after the thread exited: %d threads, %d QSBR slots; want %d, %d", s.Threads,
			s.QSBRSlots, base.Threads, base.QSBRSlots)
	}
	if st := r.ts.State(); st != nogil.Released {
		t.Errorf("State of the exited goroutine's ThreadState = %v, want released", st)
	}
	wantErr(t, "Attach of the exited goroutine's state", r.ts.Attach(), nogil.ErrReleased,
		"exited", "without Release")

	withState(t, in, true, func(ts *nogil.ThreadState) {
		must(t, "Barrier", ts.Barrier())
	})
	if n := ran.Load(); n != 10 {
		t.Errorf("%d of the exited goroutine's 10 delayed calls ran, want 10", n)
	}
	if s := stats(t, in); s.DelayedItems != 0 {
		t.Errorf("%d delayed items left after the barrier", s.DelayedItems)
	}
}

// Many short-lived goroutines, half releasing and half exiting while locked: the QSBR slots
// return to the baseline, every delayed call runs exactly once, none before its goroutine
// stopped holding what it retired.
func TestThreadExitChurn(t *testing.T) {
	deadline(t, 240*time.Second)
	n := 10000
	if testing.Short() {
		n = 1000
	}
	in := newInterp(t)
	base := stats(t, in)
	ranCount := make([]atomic.Int32, n)
	holding := make([]atomic.Bool, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32) // thread states alive at once
	for i := 0; i < n; i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			ts, err := in.Bind()
			if !must(t, "Bind", err) || !must(t, "Attach", ts.Attach()) {
				return
			}
			// From before the retirement to the goroutine's first quiescent point.
			holding[i].Store(true)
			must(t, "CallDelayed", ts.CallDelayed(func() {
				if holding[i].Load() {
					t.Errorf("goroutine %d: delayed call ran before the goroutine went quiescent", i)
				}
				ranCount[i].Add(1)
			}, 64))
			holding[i].Store(false)
			if i%7 == 0 {
				must(t, "Checkpoint", ts.Checkpoint())
			}
			if i%2 == 0 {
				must(t, "Release", ts.Release())
			}
			// Odd: return while locked; the thread exits and releases the state.
		}()
	}
	wg.Wait()
	if !waitFor(60*time.Second, func() bool {
		s := stats(t, in)
		return s.QSBRSlots == base.QSBRSlots && s.Threads == base.Threads
	}) {
		s := stats(t, in)
		t.Fatalf("after the churn: %d QSBR slots, %d threads; want %d, %d", s.QSBRSlots,
			s.Threads, base.QSBRSlots, base.Threads)
	}
	withState(t, in, true, func(ts *nogil.ThreadState) { must(t, "Barrier", ts.Barrier()) })
	bad := 0
	for i := range ranCount {
		if c := ranCount[i].Load(); c != 1 {
			if bad++; bad <= 10 {
				t.Errorf("goroutine %d's delayed call ran %d times, want 1", i, c)
			}
		}
	}
	if s := stats(t, in); s.DelayedItems != 0 {
		t.Errorf("%d delayed items left after the barrier", s.DelayedItems)
	}
}

func TestInterpreterClose(t *testing.T) {
	deadline(t, 30*time.Second)
	in, err := nogil.NewInterpreter()
	if err != nil {
		t.Fatal(err)
	}
	var ran atomic.Int32

	// A state on the closing goroutine blocks Close.
	ts, err := in.Bind()
	if err != nil {
		t.Fatal(err)
	}
	wantErr(t, "Close with a bound state on the caller", in.Close(), nogil.ErrBusy, "Release the state")
	must(t, "Attach", ts.Attach())
	for i := 0; i < 5; i++ {
		must(t, "CallDelayed", ts.CallDelayed(func() { ran.Add(1) }, 0))
	}
	must(t, "Release", ts.Release())

	// A state of another goroutine is shut down by Close.
	other := startBound(t, in, false)
	if err := in.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if n := ran.Load(); n != 5 {
		t.Errorf("%d of 5 delayed calls ran by the time Close returned", n)
	}
	other.run(func(ts *nogil.ThreadState) {
		if st := ts.State(); st != nogil.ShuttingDown {
			t.Errorf("state of another goroutine after Close = %v, want shutting down", st)
		}
		wantErr(t, "Attach after Close", ts.Attach(), nogil.ErrClosed, "Release this ThreadState")
	})
	other.stop() // its Release must work after Close

	wantErr(t, "second Close", in.Close(), nogil.ErrClosed)
	wantErr(t, "Bind after Close", second(in.Bind()), nogil.ErrClosed)
	wantErr(t, "Stats after Close", second(in.Stats()), nogil.ErrClosed)
	wantErr(t, "SetLimits after Close", in.SetLimits(1, 1, 1), nogil.ErrClosed)
	wantErr(t, "SetStallHandler after Close", in.SetStallHandler(time.Second, func(nogil.Stall) {}), nogil.ErrClosed)
	wantErr(t, "StopTheWorld after Close", in.StopTheWorld(nil, func() {}), nogil.ErrClosed)
	if in.GILEnabled() {
		t.Error("GILEnabled after Close")
	}
}

// Stop-the-world from Go: attached goroutines stop at their next Checkpoint, detached ones
// are suspended and cannot attach until the restart; f sees every other state suspended and
// no counter moving.
func TestStopTheWorld(t *testing.T) {
	deadline(t, 60*time.Second)
	in := newInterp(t)
	const workers = 4
	counters := make([]atomic.Int64, workers)
	var stop, inSTW atomic.Bool
	var states []*nogil.ThreadState
	var mu sync.Mutex
	var ready, wg sync.WaitGroup
	for i := 0; i < workers; i++ {
		ready.Add(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			ts, err := in.Bind()
			if !must(t, "Bind", err) {
				ready.Done()
				return
			}
			defer ts.Release()
			mu.Lock()
			states = append(states, ts)
			mu.Unlock()
			must(t, "Attach", ts.Attach())
			ready.Done()
			for !stop.Load() {
				if inSTW.Load() {
					t.Errorf("worker %d runs attached code during the stop-the-world", i)
				}
				counters[i].Add(1)
				if err := ts.Checkpoint(); err != nil {
					t.Errorf("Checkpoint: %v", err)
					return
				}
				if counters[i].Load()%64 == 0 { // sometimes detached when the stop comes
					must(t, "Detach", ts.Detach())
					runtime.Gosched()
					must(t, "Attach", ts.Attach())
				}
			}
		}()
	}
	ready.Wait()
	// A goroutine that tries to attach while the world is stopped.
	late := startBound(t, in, false)
	defer late.stop()
	attached := make(chan bool)

	before := stats(t, in).Stops
	for round := 0; round < 20; round++ {
		must(t, "StopTheWorld", in.StopTheWorld(nil, func() {
			inSTW.Store(true)
			defer inSTW.Store(false)
			mu.Lock()
			for _, ts := range states {
				if st := ts.State(); st != nogil.Suspended {
					t.Errorf("round %d: a worker is %v during the stop-the-world", round, st)
				}
			}
			mu.Unlock()
			snap := make([]int64, workers)
			for i := range counters {
				snap[i] = counters[i].Load()
			}
			if round == 0 {
				go late.run(func(ts *nogil.ThreadState) {
					err := ts.Attach()
					attached <- inSTW.Load()
					must(t, "late Attach", err)
					must(t, "late Detach", ts.Detach())
				})
			}
			for i := 0; i < 200; i++ {
				runtime.Gosched()
			}
			for i := range counters {
				if c := counters[i].Load(); c != snap[i] {
					t.Errorf("round %d: worker %d counted %d -> %d while stopped", round, i, snap[i], c)
				}
			}
		}))
		if round == 0 && <-attached {
			t.Error("a state attached while the world was stopped")
		}
	}
	must(t, "StopTheWorld", in.StopTheWorld(nil, func() {
		wantErr(t, "Close inside StopTheWorld", in.Close(), nogil.ErrBusy, "StopTheWorld")
	}))
	if s := stats(t, in).Stops; s != before+21 {
		t.Errorf("Stats.Stops went %d -> %d, want +21", before, s)
	}

	// The requester may be an attached state itself; it must say so.
	withState(t, in, true, func(ts *nogil.ThreadState) {
		wantErr(t, "StopTheWorld(nil) with an attached state", in.StopTheWorld(nil, func() {
			t.Error("f ran")
		}), nogil.ErrState, "pass it as ts")
		must(t, "StopTheWorld(ts)", in.StopTheWorld(ts, func() {
			wantErr(t, "nested StopTheWorld", in.StopTheWorld(ts, func() {}), nogil.ErrBusy)
			wantErr(t, "Barrier inside StopTheWorld", ts.Barrier(), nogil.ErrBusy)
		}))
		must(t, "Detach", ts.Detach())
		must(t, "StopTheWorld(ts) detached", in.StopTheWorld(ts, func() {}))
		must(t, "Attach", ts.Attach())
	})
	stop.Store(true)
	wg.Wait()
	for i := range counters {
		if counters[i].Load() == 0 {
			t.Errorf("worker %d never ran", i)
		}
	}
}

// The GIL from Go: with it enabled, attached goroutines run one at a time, so a counter
// protected by nothing else stays exact and the critical-section flag is never seen set by
// another goroutine (under -race, the GIL hand-overs are also the only happens-before edges
// that make the counter's plain increments legal).
func TestGILFromGo(t *testing.T) {
	deadline(t, 120*time.Second)
	in := newInterp(t)
	const workers, iters = 4, 3000
	var counter int // protected only by the GIL
	var inCS atomic.Int32
	enabled := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ts, err := in.Bind()
			if !must(t, "Bind", err) {
				return
			}
			defer ts.Release()
			if w == 0 {
				must(t, "Attach", ts.Attach())
				must(t, "EnableGIL", ts.EnableGIL())
				if !ts.HoldsGIL() || !in.GILEnabled() || !ctest.TSHoldsGIL(ts.CPtr()) {
					t.Error("after EnableGIL: not holding the GIL, or it is not enabled")
				}
				close(enabled)
			} else {
				<-enabled
				must(t, "Attach", ts.Attach())
			}
			for i := 0; i < iters; i++ {
				if !ts.HoldsGIL() {
					t.Error("attached without the GIL while it is enabled")
					return
				}
				if inCS.Add(1) != 1 {
					t.Error("two goroutines in the GIL's critical section")
				}
				v := counter
				runtime.Gosched() // the others may run now, but not attached
				counter = v + 1
				inCS.Add(-1)
				if i%50 == 0 {
					must(t, "Detach", ts.Detach()) // yields the GIL
					must(t, "Attach", ts.Attach())
				} else if err := ts.Checkpoint(); err != nil { // yields when asked
					t.Errorf("Checkpoint: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if counter != workers*iters {
		t.Errorf("counter = %d, want %d", counter, workers*iters)
	}
	if !in.GILEnabled() {
		t.Error("GIL off before anyone disabled it")
	}
	withState(t, in, true, func(ts *nogil.ThreadState) {
		must(t, "DisableGIL", ts.DisableGIL())
		if ts.HoldsGIL() || in.GILEnabled() {
			t.Error("the GIL is still held or enabled after DisableGIL")
		}
	})
}

// fork() in a process whose goroutines hold thread states (attached and checkpointing,
// detached, with delayed Go calls and frees queued): the child, which runs only C, drops the
// other threads' states, adopts their delayed work, and can use the C API. Go calls among
// that work must only be queued in the child (calling Go there would hang it); the parent is
// unaffected. Forked from an unbound goroutine and from one with a detached state of its
// own, which the child keeps.
func TestForkWithBoundThreadStates(t *testing.T) {
	deadline(t, 120*time.Second)
	in := newInterp(t)
	var stop atomic.Bool
	var queued, ran atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < 3; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ts, err := in.Bind()
			if !must(t, "Bind", err) {
				return
			}
			defer ts.Release()
			must(t, "Attach", ts.Attach())
			for i := 0; !stop.Load(); i++ {
				if w == 1 {
					must(t, "CallDelayed", ts.CallDelayed(func() { ran.Add(1) }, 32))
					must(t, "FreeDelayed", ts.FreeDelayed(ctest.Alloc(32), 32))
					queued.Add(1)
				}
				if err := ts.Checkpoint(); err != nil {
					t.Errorf("Checkpoint: %v", err)
					return
				}
				if i%100 == 0 { // and sometimes detached
					must(t, "Detach", ts.Detach())
					runtime.Gosched()
					must(t, "Attach", ts.Attach())
				}
			}
		}()
	}
	idle := startBound(t, in, false) // detached the whole time
	defer idle.stop()
	if !waitFor(10*time.Second, func() bool { return queued.Load() >= 200 }) {
		t.Fatal("the workers queued no delayed work")
	}

	check := func(how string, own uint64) {
		for i := 0; i < 10; i++ {
			failed := ctest.TStateForkCheck(in.CPtr(), own, 20000)
			switch {
			case failed == -2:
				t.Fatalf("%s, fork %d: the child hung (killed after 20 s)", how, i)
			case failed < 0:
				t.Fatalf("%s, fork %d: the child crashed or could not run", how, i)
			}
			for bit, what := range ctest.TStateForkFailure {
				if failed&bit != 0 {
					t.Errorf("%s, fork %d: %s", how, i, what)
				}
			}
		}
	}
	done := goLocked(func() { check("unbound forking goroutine", 0) })
	<-done
	withState(t, in, false, func(ts *nogil.ThreadState) { check("forking goroutine with a detached state", 1) })

	stop.Store(true)
	wg.Wait()
	// The parent goes on: its work is intact and runs.
	withState(t, in, true, func(ts *nogil.ThreadState) { must(t, "Barrier", ts.Barrier()) })
	if s := stats(t, in); s.DelayedItems != 0 || ran.Load() != queued.Load() {
		t.Errorf("parent after the forks: %d delayed items left, %d of %d Go calls ran",
			s.DelayedItems, ran.Load(), queued.Load())
	}
}

// An Interpreter dropped without Close, and a ThreadState dropped without Release while its
// goroutine goes on, are reported to the leak handler; closed and released ones, and the
// state of a goroutine that exited (its thread released it), are not.
func TestLeakReportsInterpreterAndThreadState(t *testing.T) {
	deadline(t, 60*time.Second)
	reports := make(chan string, 1000)
	nogil.SetLeakHandler(func(what string) {
		select {
		case reports <- what:
		default:
		}
	})
	t.Cleanup(func() { nogil.SetLeakHandler(nil) })
	countLeakReports(reports, "", 20*time.Millisecond) // earlier leaks first
	var droppedInterp string

	func() {
		closed, err := nogil.NewInterpreter()
		if err != nil {
			t.Fatal(err)
		}
		must(t, "Close", closed.Close())
		in, err := nogil.NewInterpreter()
		if err != nil {
			t.Fatal(err)
		}
		// Other tests' dropped wrappers may be collected now too: count only this one's.
		droppedInterp = fmt.Sprintf("Interpreter %p ", in.CPtr())
	}()
	seen := 0
	for try := 0; try < 50 && seen == 0; try++ {
		seen += countLeakReports(reports, droppedInterp, 20*time.Millisecond)
	}
	seen += countLeakReports(reports, droppedInterp, 50*time.Millisecond)
	if seen != 1 {
		t.Errorf("%d leak reports for Interpreter, want 1", seen)
	}

	in := newInterp(t)
	withState(t, in, true, func(*nogil.ThreadState) {}) // released
	exited := make(chan struct{})
	go func() { // returns without Release: its thread releases the state
		defer close(exited)
		in.Bind()
	}()
	<-exited
	hold := make(chan struct{})
	bound := make(chan struct{})
	done := make(chan struct{})
	var dropped string
	go func() {
		defer close(done)
		ts, err := in.Bind()
		if !must(t, "Bind", err) {
			close(bound)
			return
		}
		// Other tests' dropped wrappers may be collected now too: count only this one's.
		dropped = fmt.Sprintf("ThreadState %d of interpreter %p ", ts.ID(), in.CPtr())
		ts = nil // the wrapper is dropped at once
		close(bound)
		<-hold // the state stays bound to this goroutine's thread
	}()
	<-bound
	seen = 0
	for try := 0; try < 50 && seen == 0; try++ {
		seen += countLeakReports(reports, dropped, 20*time.Millisecond)
	}
	seen += countLeakReports(reports, dropped, 50*time.Millisecond)
	if seen != 1 {
		t.Errorf("%d leak reports for ThreadState, want 1", seen)
	}
	close(hold)
	<-done // exits locked: the thread releases the state
}
