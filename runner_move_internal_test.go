package nogil

import (
	"testing"
	"time"

	"github.com/nogil-go/nogil/internal/testutil"
	"golang.org/x/sys/unix"
)

// A CallDelayed function that blocks in Go may resume on another thread; it is still the
// runner, which Barrier and Interpreter.Close must recognise (they would wait for
// themselves). The function blocks while other goroutines take its thread, so that it
// resumes elsewhere; the test is skipped if it could not be moved (a runner locked to its
// thread).
func TestRunnerRecognisedOnAnotherThread(t *testing.T) {
	testutil.Deadline(t, 30*time.Second)
	in, err := NewInterpreter()
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	type result struct{ moved, recognised bool }
	res := make(chan result, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		ts, err := in.Bind()
		if err != nil {
			t.Error(err)
			return
		}
		defer ts.Release()
		if err := ts.Attach(); err != nil {
			t.Error(err)
			return
		}
		err = ts.CallDelayed(func() {
			r := in.runner.Load()
			tid := unix.Gettid()
			release, ok := testutil.OccupyThread(tid, 300*time.Millisecond, false)
			if ok {
				defer release()
			}
			res <- result{unix.Gettid() != tid, r.isCurrent()}
		}, 0)
		if err != nil {
			t.Error(err)
			return
		}
		if err := ts.Barrier(); err != nil {
			t.Error(err)
		}
	}()
	<-done
	r := <-res
	if !r.moved {
		t.Skip("the runner did not move to another thread (it is locked to it)")
	}
	if !r.recognised {
		t.Error("a CallDelayed function that moved to another thread is not recognised as the runner")
	}
}
