package nogil_test

import (
	"runtime"
	"testing"
	"time"

	"github.com/nogil-go/nogil"
	"github.com/nogil-go/nogil/internal/testutil"
	"golang.org/x/sys/unix"
)

// A bound goroutine that calls runtime.UnlockOSThread (a misuse) and runs on another thread
// is no longer its state's owner there: Advance, whose only check is the Go one, refuses it.
// A goroutine-only check would let it through, and also the goroutine that gets the
// descriptor of a bound goroutine that returned, while its thread still exits. The state's
// thread, kept busy by another goroutine meanwhile, then exits, which releases the state.
func TestThreadStateRefusesItsGoroutineOnAnotherThread(t *testing.T) {
	deadline(t, 60*time.Second)
	in := newInterp(t)
	var ts *nogil.ThreadState
	tid := make(chan int)
	wake := make(chan struct{})
	type result struct {
		moved bool
		err   error
	}
	res := make(chan result)
	go func() {
		var err error
		ts, err = in.Bind()
		if !must(t, "Bind", err) {
			close(tid)
			return
		}
		_, err = ts.Advance()
		must(t, "Advance by the owner", err)
		own := unix.Gettid()     // read while locked: unlocked, a preemption may move it
		runtime.UnlockOSThread() // the misuse: the state stays bound to this thread
		tid <- own
		<-wake
		// Locked while it looks, so that the call runs on the thread the id names.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if unix.Gettid() == <-tid {
			res <- result{}
			return
		}
		_, err = ts.Advance()
		res <- result{true, err}
	}()
	old, ok := <-tid
	if !ok {
		return
	}
	// The holder returns locked, ending the thread: the way the state is released.
	release, ok := testutil.OccupyThread(old, 10*time.Second, true)
	if !ok {
		t.Skip("no goroutine got onto the state's thread to keep it busy")
	}
	close(wake)
	tid <- old
	r := <-res
	release()
	switch {
	case !r.moved:
		t.Error("the goroutine ran on its old thread, which another goroutine holds locked")
	case r.err == nil:
		t.Error("Advance by the bound goroutine, moved to another thread after UnlockOSThread, succeeded")
	default:
		wantErr(t, "Advance from another thread", r.err, nogil.ErrWrongThread)
	}
	if !waitFor(10*time.Second, func() bool { return ts.State() == nogil.Released }) {
		t.Errorf("state %v 10 s after its thread was ended; want released", ts.State())
	}
}
