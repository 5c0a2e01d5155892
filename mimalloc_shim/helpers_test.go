package mimalloc_shim

import (
	"runtime"
	"testing"

	"github.com/nogil-go/nogil"
	"github.com/nogil-go/nogil/internal/testutil"
)

// Keep the main OS thread for the main goroutine: a test goroutine that exits while locked to
// its thread then ends a thread of its own, and no thread-bound C state lands on the runner.
func init() { runtime.LockOSThread() }

// Shared with the other packages' tests (internal/testutil).
var (
	deadline = testutil.Deadline
	waitFor  = testutil.WaitFor
	must     = testutil.Must
	wantErr  = testutil.WantErr
)

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

// A bound is a goroutine with a ThreadState that runs the functions sent to it.
type bound struct {
	ts   *nogil.ThreadState
	do   chan func(*nogil.ThreadState)
	done chan struct{}
}

// startBound binds a state of in on a new goroutine (attached if attach); it is released
// when the test ends.
func startBound(t testing.TB, in *nogil.Interpreter, attach bool) *bound {
	t.Helper()
	g := &bound{do: make(chan func(*nogil.ThreadState)), done: make(chan struct{})}
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
		if ts.State() != nogil.Released {
			must(t, "Release", ts.Release())
		}
	}()
	g.ts = <-ready
	if g.ts == nil {
		t.FailNow()
	}
	t.Cleanup(g.stop)
	return g
}

// run runs f on the goroutine and waits for it. If f ends its goroutine (t.Fatal), the
// caller's goroutine ends too, so that the test stops instead of waiting for a goroutine
// that is gone.
func (g *bound) run(f func(ts *nogil.ThreadState)) {
	ran := make(chan struct{})
	completed := false
	select {
	case g.do <- func(ts *nogil.ThreadState) {
		defer close(ran)
		f(ts)
		completed = true
	}:
		<-ran
	case <-g.done: // an earlier f ended the goroutine: that test has failed already
	}
	if !completed {
		runtime.Goexit()
	}
}

func (g *bound) stop() {
	select {
	case <-g.done:
	default:
		close(g.do)
		<-g.done
	}
}

// heap returns HeapOf(ts, kind) or fails the test.
func heap(t testing.TB, ts *nogil.ThreadState, kind HeapKind) *Heap {
	t.Helper()
	h, err := HeapOf(ts, kind)
	if err != nil {
		t.Fatalf("HeapOf(%v): %v", kind, err)
	}
	return h
}

// stats returns h.Stats() or fails the test.
func stats(t testing.TB, h *Heap) Stats {
	t.Helper()
	s, err := h.Stats()
	if err != nil {
		t.Fatalf("Stats: %v", err)
	}
	return s
}

func interpStats(t testing.TB, in *nogil.Interpreter) Stats {
	t.Helper()
	s, err := InterpreterStats(in)
	if err != nil {
		t.Fatalf("InterpreterStats: %v", err)
	}
	return s
}

var kinds = []HeapKind{Mem, Object, GC, GCPre}
