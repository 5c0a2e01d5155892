package mimalloc_shim

import (
	"testing"
	"time"
	"unsafe"

	"github.com/nogil-go/nogil"
	"github.com/nogil-go/nogil/internal/testutil"
)

// The heap's Go fast paths refuse the bound goroutine once it has called
// runtime.UnlockOSThread (a misuse) and runs on another thread: with a goroutine-only
// check, Malloc would take a block from the old thread's free list from here, as would the
// goroutine that gets the descriptor of a bound goroutine that returned while its thread
// still exits. The old thread, kept busy meanwhile, then exits and releases the state.
func TestHeapRefusesItsGoroutineOnAnotherThread(t *testing.T) {
	deadline(t, 60*time.Second)
	in := newInterp(t)
	var ts *nogil.ThreadState
	var h *Heap
	var p unsafe.Pointer
	var mallocErr, freeErr error
	moved := testutil.RunMovedAfterUnlock(t, func() bool {
		var err error
		if ts, err = in.Bind(); !must(t, "Bind", err) {
			return false
		}
		if !must(t, "Attach", ts.Attach()) {
			ts.Release()
			return false
		}
		if h, err = HeapOf(ts, Mem); !must(t, "HeapOf", err) {
			ts.Release()
			return false
		}
		// Two blocks of a warm size class, so that a Malloc from the other thread would
		// find one on the free list without a cgo call, and one to free.
		for i := 0; i < 2; i++ {
			q, err := h.Malloc(64)
			if !must(t, "Malloc by the owner", err) {
				ts.Release()
				return false
			}
			if i == 0 {
				must(t, "Free by the owner", h.Free(q))
			} else {
				p = q
			}
		}
		return true
	}, func() {
		_, mallocErr = h.Malloc(64)
		freeErr = h.Free(p)
	})
	if h == nil {
		return
	}
	if moved {
		wantErr(t, "Malloc from another thread", mallocErr, nogil.ErrWrongThread)
		wantErr(t, "Heap.Free from another thread", freeErr, nogil.ErrWrongThread)
	}
	if !waitFor(10*time.Second, func() bool { return ts.State() == nogil.Released }) {
		t.Errorf("state %v 10 s after its thread was ended; want released", ts.State())
	}
}
