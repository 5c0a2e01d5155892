package mimalloc_shim

import (
	"testing"
	"time"
	"unsafe"

	"github.com/nogil-go/nogil"
)

// Only the goroutine that stopped the world may walk it: a third goroutine gets ErrState from
// AbandonedVisit and ErrWrongThread from Heap.Visit even while the world is stopped (C's
// abandoned walk used to check only that the world was stopped, not by whom), while the
// stopper walks both.
func TestVisitOnlyByTheStopper(t *testing.T) {
	deadline(t, 60*time.Second)
	in := newInterp(t)
	owner := startBound(t, in, true)
	var h *Heap
	var p unsafe.Pointer
	owner.run(func(ts *nogil.ThreadState) {
		h = heap(t, ts, Object)
		p, _ = h.Malloc(64)
		must(t, "Detach", ts.Detach()) // an attached idle owner would never stop
	})
	// One live block in the abandoned pool.
	leaver := startBound(t, in, true)
	var left unsafe.Pointer
	leaver.run(func(ts *nogil.ThreadState) {
		left, _ = heap(t, ts, Object).Malloc(64)
		must(t, "Release", ts.Release())
	})
	leaver.stop()

	stopper := startBound(t, in, true)
	stopper.run(func(ts *nogil.ThreadState) {
		must(t, "StopTheWorld", in.StopTheWorld(ts, func() {
			errs := make(chan error, 2)
			go func() {
				errs <- AbandonedVisit(in, Object, func(unsafe.Pointer, uintptr) bool { return true })
				errs <- h.Visit(func(unsafe.Pointer, uintptr) bool { return true })
			}()
			wantErr(t, "AbandonedVisit by a third goroutine", <-errs, nogil.ErrState, "has not stopped the world")
			wantErr(t, "Heap.Visit by a third goroutine", <-errs, nogil.ErrWrongThread, "StopTheWorld")
			pool, mine := 0, 0
			must(t, "AbandonedVisit by the stopper", AbandonedVisit(in, Object, func(q unsafe.Pointer, _ uintptr) bool {
				pool += btoi(q == left)
				return true
			}))
			must(t, "Heap.Visit by the stopper", h.Visit(func(q unsafe.Pointer, _ uintptr) bool {
				mine += btoi(q == p)
				return true
			}))
			if pool != 1 || mine != 1 {
				t.Errorf("the stopper saw the abandoned block %d times and the heap's %d times, want 1 and 1", pool, mine)
			}
		}))
	})
	must(t, "Free (abandoned block)", Free(left))
	owner.run(func(ts *nogil.ThreadState) {
		must(t, "Attach", ts.Attach())
		must(t, "Free", h.Free(p))
	})
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
