package mimalloc_shim

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/nogil-go/nogil"
)

// Keep the main OS thread for the main goroutine: a test goroutine that exits while locked to
// its thread then ends a thread of its own, and no thread-bound C state lands on the runner.
func init() { runtime.LockOSThread() }

// deadline panics with every goroutine's stack if the test still runs after d.
func deadline(t testing.TB, d time.Duration) {
	t.Helper()
	name := t.Name()
	timer := time.AfterFunc(d, func() {
		buf := make([]byte, 4<<20)
		n := runtime.Stack(buf, true)
		panic(fmt.Sprintf("watchdog: %s still running after %v; goroutines:\n%s", name, d, buf[:n]))
	})
	t.Cleanup(func() { timer.Stop() })
}

// waitFor polls cond every millisecond until it holds or timeout passes.
func waitFor(timeout time.Duration, cond func() bool) bool {
	for end := time.Now().Add(timeout); ; time.Sleep(time.Millisecond) {
		if cond() {
			return true
		}
		if time.Now().After(end) {
			return false
		}
	}
}

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

func must(t testing.TB, what string, err error) bool {
	t.Helper()
	if err != nil {
		t.Errorf("%s: %v", what, err)
		return false
	}
	return true
}

// wantErr fails unless err matches target and its message starts with "nogil: " and
// contains every hint.
func wantErr(t testing.TB, what string, err, target error, hints ...string) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Errorf("%s = %v, want %v", what, err, target)
		return
	}
	if !strings.HasPrefix(err.Error(), "nogil: ") {
		t.Errorf("%s: message %q does not start with \"nogil: \"", what, err)
	}
	for _, h := range hints {
		if !strings.Contains(err.Error(), h) {
			t.Errorf("%s: message %q does not say %q", what, err, h)
		}
	}
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
