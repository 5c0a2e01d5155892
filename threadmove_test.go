package nogil_test

import (
	"testing"
	"time"

	"github.com/nogil-go/nogil"
	"github.com/nogil-go/nogil/internal/testutil"
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
	var err error
	moved := testutil.RunMovedAfterUnlock(t, func() bool {
		if ts, err = in.Bind(); !must(t, "Bind", err) {
			return false
		}
		_, err = ts.Advance()
		return must(t, "Advance by the owner", err)
	}, func() {
		_, err = ts.Advance()
	})
	if ts == nil {
		return
	}
	if moved {
		if err == nil {
			t.Error("Advance by the bound goroutine, moved to another thread after UnlockOSThread, succeeded")
		} else {
			wantErr(t, "Advance from another thread", err, nogil.ErrWrongThread)
		}
	}
	if !waitFor(10*time.Second, func() bool { return ts.State() == nogil.Released }) {
		t.Errorf("state %v 10 s after its thread was ended; want released", ts.State())
	}
}
