package nogil_test

import (
	"math"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nogil-go/nogil"
)

func TestDelayedCapSetting(t *testing.T) {
	in, err := nogil.NewInterpreter()
	if err != nil {
		t.Fatal(err)
	}
	if c, w, err := in.DelayedCap(); c != 0 || w != 0 || err != nil {
		t.Errorf("DelayedCap of a new Interpreter = %d, %d, %v; want 0 (off), 0, nil", c, w, err)
	}
	must(t, "SetDelayedCap", in.SetDelayedCap(4096))
	if c, _, err := in.DelayedCap(); c != 4096 || err != nil {
		t.Errorf("DelayedCap = %d, %v; want 4096, nil", c, err)
	}
	must(t, "SetDelayedCap", in.SetDelayedCap(0))
	if c, _, _ := in.DelayedCap(); c != 0 {
		t.Errorf("DelayedCap after SetDelayedCap(0) = %d, want 0", c)
	}
	must(t, "Close", in.Close())
	wantErr(t, "SetDelayedCap after Close", in.SetDelayedCap(1), nogil.ErrClosed)
	_, _, err = in.DelayedCap()
	wantErr(t, "DelayedCap after Close", err, nogil.ErrClosed)
}

// With a cap, a writer's queue is at most the cap after every Checkpoint, although the
// thresholds never ask for processing; with none, it grows while a reader holds it back.
func TestDelayedCapBoundsTheQueueAtCheckpoints(t *testing.T) {
	deadline(t, 60*time.Second)
	const entry, capBytes, n = 100, 1000, 200
	for _, on := range []bool{false, true} {
		in := newInterp(t)
		must(t, "SetLimits", in.SetLimits(math.MaxUint32, 1<<40, 0))
		if on {
			must(t, "SetDelayedCap", in.SetDelayedCap(capBytes))
		}
		reader := startBound(t, in, true)
		stop := make(chan struct{})
		readerDone := make(chan struct{})
		go func() {
			defer close(readerDone)
			reader.run(func(ts *nogil.ThreadState) {
				for on { // off: never reports, so nothing queued can run
					select {
					case <-stop:
						return
					default:
					}
					if !must(t, "reader Checkpoint", ts.Checkpoint()) {
						return
					}
					runtime.Gosched()
				}
			})
		}()
		var ran atomic.Int64
		withState(t, in, true, func(ts *nogil.ThreadState) {
			var peak uint64
			for i := 0; i < n; i++ {
				must(t, "CallDelayed", ts.CallDelayed(func() { ran.Add(1) }, entry))
				must(t, "Checkpoint", ts.Checkpoint())
				_, b := ts.Pending()
				peak = max(peak, b)
			}
			if on && peak > capBytes {
				t.Errorf("cap %d: %d bytes queued after a checkpoint", capBytes, peak)
			}
			if !on && peak != n*entry {
				t.Errorf("no cap, reader holding: peak %d bytes queued, want %d", peak, n*entry)
			}
			close(stop)
			<-readerDone
			reader.stop()
			must(t, "Barrier", ts.Barrier())
		})
		_, waits, err := in.DelayedCap()
		must(t, "DelayedCap", err)
		if on != (waits > 0) {
			t.Errorf("cap on: %v, checkpoints that waited: %d", on, waits)
		}
		if !waitFor(10*time.Second, func() bool { return ran.Load() == n }) {
			t.Errorf("%d of %d delayed calls ran", ran.Load(), n)
		}
	}
}
