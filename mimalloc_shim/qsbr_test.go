package mimalloc_shim

import (
	"testing"
	"time"
	"unsafe"

	"github.com/nogil-go/nogil"
)

// QSBR-gated page reuse seen from Go. A second thread state stays attached without
// reporting a quiescent state; the owner fills whole pages of an object heap and frees every
// block. The emptied pages wait for their goal: the first Prefix() bytes of every freed block
// keep what the owner wrote (a racing lock-free reader may still load them), and Collect does
// not release the pages, until the reader reports; then Collect releases them. A Mem heap
// is not gated.
func TestQSBRGatedReuse(t *testing.T) {
	deadline(t, 60*time.Second)
	for _, kind := range kinds {
		t.Run(kind.String(), func(t *testing.T) {
			in := newInterp(t)
			owner := startBound(t, in, true)
			reader := startBound(t, in, true) // attached, and silent until told
			const size = 64
			const n = 3 * (64 << 10) / size // three small pages' worth, at least two whole ones
			prefix := kind.Prefix()
			var h *Heap
			var blocks []unsafe.Pointer
			owner.run(func(ts *nogil.ThreadState) {
				h = heap(t, ts, kind)
				for i := 0; i < n; i++ {
					p, err := h.Malloc(size)
					if err != nil {
						t.Fatalf("Malloc: %v", err)
					}
					fill(p, size, byte(i))
					blocks = append(blocks, p)
				}
				for _, p := range blocks {
					must(t, "Free", h.Free(p))
				}
				// The owner reports and collects; the reader has not reported.
				must(t, "QuiescentState", ts.QuiescentState())
				must(t, "Collect", h.Collect(false))
				s := stats(t, h)
				if kind == Mem {
					if s.PagesWaiting != 0 || s.PagesDeferred != 0 {
						t.Errorf("Mem heap: %d pages waiting, %d deferred; want none", s.PagesWaiting, s.PagesDeferred)
					}
					return
				}
				if s.PagesWaiting < 2 || s.BytesWaiting < 2*(64<<10) || s.PagesDeferred < 2 || s.BlocksInUse != 0 {
					t.Errorf("while the reader is silent: %d pages / %d bytes waiting, %d deferred, %d blocks in use; "+
						"want >= 2 pages waiting and no block in use", s.PagesWaiting, s.BytesWaiting, s.PagesDeferred, s.BlocksInUse)
				}
				for i, p := range blocks {
					if off := check(p, prefix, byte(i)); off >= 0 {
						t.Fatalf("freed block %d: prefix byte %d was overwritten before the reader reported", i, off)
					}
				}
			})
			if kind == Mem {
				return
			}
			// Still gated after more owner reports and collects.
			owner.run(func(ts *nogil.ThreadState) {
				for i := 0; i < 3; i++ {
					must(t, "QuiescentState", ts.QuiescentState())
					must(t, "Collect", h.Collect(false))
				}
				if s := stats(t, h); s.PagesWaiting == 0 || s.PagesReleasedAfterGoal != 0 {
					t.Errorf("pages released while the reader was silent: %+v", s)
				}
				for i, p := range blocks {
					if off := check(p, prefix, byte(i)); off >= 0 {
						t.Fatalf("freed block %d: prefix byte %d overwritten before the reader reported", i, off)
					}
				}
			})
			reader.run(func(ts *nogil.ThreadState) { must(t, "reader QuiescentState", ts.QuiescentState()) })
			owner.run(func(ts *nogil.ThreadState) {
				var s Stats
				ok := waitFor(10*time.Second, func() bool {
					must(t, "QuiescentState", ts.QuiescentState())
					must(t, "Collect", h.Collect(false))
					s = stats(t, h)
					return s.PagesWaiting == 0
				})
				if !ok || s.BytesWaiting != 0 || s.PagesReleasedAfterGoal < 2 {
					t.Errorf("after the reader reported: %d pages / %d bytes waiting, %d released after their goal",
						s.PagesWaiting, s.BytesWaiting, s.PagesReleasedAfterGoal)
				}
			})
		})
	}
}

// A waiting page serves its own size class right away (the goal is dropped): the same
// blocks come back, without waiting for the silent reader.
func TestQSBRWaitingPageReusedSameClass(t *testing.T) {
	deadline(t, 60*time.Second)
	in := newInterp(t)
	owner := startBound(t, in, true)
	startBound(t, in, true) // a silent reader
	owner.run(func(ts *nogil.ThreadState) {
		h := heap(t, ts, Object)
		const size, n = 128, (64 << 10) / 128 * 2
		seen := map[unsafe.Pointer]bool{}
		var blocks []unsafe.Pointer
		for i := 0; i < n; i++ {
			p, _ := h.Malloc(size)
			seen[p] = true
			blocks = append(blocks, p)
		}
		for _, p := range blocks {
			must(t, "Free", h.Free(p))
		}
		must(t, "Collect", h.Collect(false))
		before := stats(t, h)
		if before.PagesWaiting == 0 {
			t.Fatalf("no page waiting after freeing %d blocks: %+v", n, before)
		}
		reused := 0
		for i := range blocks {
			p, err := h.Malloc(size)
			if err != nil {
				t.Fatal(err)
			}
			if seen[p] {
				reused++
			}
			blocks[i] = p
		}
		after := stats(t, h)
		if reused < n*9/10 || after.PagesReusedSameClass == before.PagesReusedSameClass || after.PagesWaiting >= before.PagesWaiting {
			t.Errorf("reallocating: %d of %d blocks reused, pages reused %d -> %d, waiting %d",
				reused, n, before.PagesReusedSameClass, after.PagesReusedSameClass, after.PagesWaiting)
		}
		for _, p := range blocks {
			must(t, "Free", h.Free(p))
		}
	})
}
