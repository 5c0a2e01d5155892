package mimalloc_shim

import (
	"runtime"
	"testing"
	"time"
	"unsafe"

	"github.com/nogil-go/nogil"
	"github.com/nogil-go/nogil/internal/testutil"
	"golang.org/x/sys/unix"
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
	tid := make(chan int)
	wake := make(chan struct{})
	type result struct {
		moved              bool
		mallocErr, freeErr error
	}
	res := make(chan result)
	go func() {
		var err error
		ts, err = in.Bind()
		if !must(t, "Bind", err) {
			close(tid)
			return
		}
		if !must(t, "Attach", ts.Attach()) {
			ts.Release()
			close(tid)
			return
		}
		h, err := HeapOf(ts, Mem)
		if !must(t, "HeapOf", err) {
			ts.Release()
			close(tid)
			return
		}
		// Two blocks of a warm size class, so that a Malloc from the other thread would
		// find one on the free list without a cgo call, and one to free.
		var p unsafe.Pointer
		for i := 0; i < 2; i++ {
			q, err := h.Malloc(64)
			if !must(t, "Malloc by the owner", err) {
				ts.Release()
				close(tid)
				return
			}
			if i == 0 {
				must(t, "Free by the owner", h.Free(q))
			} else {
				p = q
			}
		}
		own := unix.Gettid()     // read while locked: unlocked, a preemption may move it
		runtime.UnlockOSThread() // the misuse: the state stays bound to this thread
		tid <- own
		<-wake
		// Locked while it looks, so that the calls run on the thread the id names.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if unix.Gettid() == <-tid {
			res <- result{}
			return
		}
		_, mallocErr := h.Malloc(64)
		res <- result{true, mallocErr, h.Free(p)}
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
	if !r.moved {
		t.Error("the goroutine ran on its old thread, which another goroutine holds locked")
	} else {
		wantErr(t, "Malloc from another thread", r.mallocErr, nogil.ErrWrongThread)
		wantErr(t, "Heap.Free from another thread", r.freeErr, nogil.ErrWrongThread)
	}
	if !waitFor(10*time.Second, func() bool { return ts.State() == nogil.Released }) {
		t.Errorf("state %v 10 s after its thread was ended; want released", ts.State())
	}
}
