package mimalloc_shim

import (
	"fmt"
	"os"
	"sync"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/nogil-go/nogil"
)

// A goroutine binds, allocates, hands its blocks to another goroutine and returns without
// Release: its OS thread exits and the thread-exit destructor releases the state, abandoning
// its segments to the interpreter. The blocks stay valid and may be freed by anyone; the
// abandoned pages are seen by InterpreterStats and AbandonedVisit; a surviving heap of the
// same kind reclaims them with Collect(true) and then owns the rest of the blocks.
func TestThreadExitAbandonsAndReclaims(t *testing.T) {
	deadline(t, 60*time.Second)
	in := newInterp(t)
	survivor := startBound(t, in, true)
	var sh *Heap
	var base Stats
	survivor.run(func(ts *nogil.ThreadState) {
		sh = heap(t, ts, Object)
		base = stats(t, sh)
	})

	type block struct {
		p    unsafe.Pointer
		size uintptr
		seed byte
	}
	handed := make(chan []block, 1)
	states := make(chan *nogil.ThreadState, 1)
	tids := make(chan int, 1)
	go func() {
		// No Release and no UnlockOSThread: the thread ends with the goroutine.
		ts, err := in.Bind()
		if !must(t, "Bind", err) {
			close(handed)
			return
		}
		states <- ts
		tids <- unix.Gettid()
		must(t, "Attach", ts.Attach())
		h, err := HeapOf(ts, Object)
		if !must(t, "HeapOf", err) {
			close(handed)
			return
		}
		var blocks []block
		for i, size := range []uintptr{40, 64, 200, 1000, 5000, 20000, 300000, LargeMax + 12345} {
			for j := 0; j < 300 && (j == 0 || size < 10000); j++ {
				p, err := h.Malloc(size)
				if !must(t, "Malloc", err) {
					break
				}
				fill(p, size, byte(i+j))
				blocks = append(blocks, block{p, size, byte(i + j)})
			}
		}
		handed <- blocks
	}()
	ts := <-states
	tid := <-tids
	blocks := <-handed
	if !waitFor(10*time.Second, func() bool {
		_, err := os.Stat(fmt.Sprintf("/proc/self/task/%d", tid))
		return os.IsNotExist(err) && ts.State() == nogil.Released
	}) {
		t.Fatalf("thread %d still alive, or its state not released (%v)", tid, ts.State())
	}
	if _, err := HeapOf(ts, Object); err == nil {
		t.Error("HeapOf of the exited thread's state succeeded")
	}

	s := interpStats(t, in)
	if s.PagesAbandoned == 0 || s.SegmentsAbandoned == 0 || s.BlocksInUse < uint64(len(blocks)) {
		t.Errorf("after the thread exited: %d pages abandoned, %d segments abandoned, %d blocks in use (want >= %d)",
			s.PagesAbandoned, s.SegmentsAbandoned, s.BlocksInUse, len(blocks))
	}
	verify := func(when string, bs []block) {
		for _, b := range bs {
			if off := check(b.p, b.size, b.seed); off >= 0 {
				t.Fatalf("%s: block %p (%d bytes) corrupted at %d", when, b.p, b.size, off)
			}
		}
	}
	verify("after the thread exited", blocks)

	// AbandonedVisit sees exactly the handed-over blocks (the world stopped by the survivor).
	survivor.run(func(ts *nogil.ThreadState) {
		live := map[unsafe.Pointer]bool{}
		for _, b := range blocks {
			live[b.p] = true
		}
		seen := 0
		must(t, "StopTheWorld", in.StopTheWorld(ts, func() {
			must(t, "AbandonedVisit", AbandonedVisit(in, Object, func(p unsafe.Pointer, size uintptr) bool {
				if !live[p] {
					t.Errorf("AbandonedVisit: %p (%d bytes) is not a handed-over block", p, size)
				}
				seen++
				return true
			}))
			n := 0
			must(t, "AbandonedVisit(Mem)", AbandonedVisit(in, Mem, func(unsafe.Pointer, uintptr) bool { n++; return true }))
			if n != 0 {
				t.Errorf("AbandonedVisit(Mem) saw %d blocks", n)
			}
		}))
		if seen != len(blocks) {
			t.Errorf("AbandonedVisit saw %d blocks, %d were handed over", seen, len(blocks))
		}
	})

	// Half the blocks are freed by goroutines without a thread state.
	var wg sync.WaitGroup
	half := len(blocks) / 2
	for w := 0; w < 2; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < half; i += 2 {
				must(t, "Free", Free(blocks[i].p))
			}
		}()
	}
	wg.Wait()
	rest := blocks[half:]

	survivor.run(func(ts *nogil.ThreadState) {
		must(t, "QuiescentState", ts.QuiescentState())
		must(t, "Collect(true)", sh.Collect(true))
		s := interpStats(t, in)
		if s.PagesAbandoned != 0 || s.SegmentsReclaimed == 0 {
			t.Errorf("after Collect(true): %d pages abandoned, %d segments reclaimed", s.PagesAbandoned, s.SegmentsReclaimed)
		}
		hs := stats(t, sh)
		if hs.BlocksInUse != base.BlocksInUse+uint64(len(rest)) {
			t.Errorf("survivor's heap: %d blocks in use, want %d", hs.BlocksInUse, base.BlocksInUse+uint64(len(rest)))
		}
		verify("after the reclaim", rest)
		for _, b := range rest {
			if got := cSegmentThread(b.p); got != sh.tid {
				t.Fatalf("reclaimed block %p: segment thread %d, survivor %d", b.p, got, sh.tid)
			}
			must(t, "Heap.Free", sh.Free(b.p))
		}
		must(t, "Collect", sh.Collect(false))
		if hs := stats(t, sh); hs.BlocksInUse != base.BlocksInUse {
			t.Errorf("after freeing the rest: %d blocks in use, want %d", hs.BlocksInUse, base.BlocksInUse)
		}
	})
}
