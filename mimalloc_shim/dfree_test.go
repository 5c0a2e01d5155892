package mimalloc_shim

import (
	"testing"
	"time"
	"unsafe"

	"github.com/nogil-go/nogil"
)

// The owner's deferred-free buffer as Heap.Free fills it (nogil/alloc.h, ng_mi_dfree): the Go
// push and its flush against what C reads (statistics, visits, collect, abandon) and against
// C's own pushes into the same buffer.

// bufferOn makes ts's heap set buffer its owner's frees, the way a program gets there: an
// object heap spanning a second segment (a large block), noticed by the next slow path. It
// returns the large block (keep it to keep the buffer on) and the set's buffer.
func bufferOn(t *testing.T, h *Heap) (unsafe.Pointer, *dfreeView) {
	t.Helper()
	small, err := h.Malloc(64)
	must(t, "Malloc", err)
	big, err := h.Malloc(LargeMax)
	must(t, "Malloc(LargeMax)", err)
	p, err := h.Malloc(DirectMax + 1) // always the slow path, which re-decides
	must(t, "Malloc", err)
	must(t, "Free", h.Free(p))
	must(t, "Free", h.Free(small))
	seg := segmentOf(p)
	if seg.dfree == 0 || seg.owner == nil || seg.owner.on == 0 {
		t.Fatalf("%v: buffer off with two segments (dfree byte %d)", h.Kind(), seg.dfree)
	}
	if segmentOf(big).dfree == 0 {
		t.Fatalf("%v: large segment's dfree byte is 0", h.Kind())
	}
	// Empty, so that the tests count from 0.
	must(t, "Collect", h.Collect(false))
	if seg.owner.n != 0 {
		t.Fatalf("buffer holds %d blocks after Collect", seg.owner.n)
	}
	return big, seg.owner
}

// live returns the blocks Visit reports, as a set.
func live(t *testing.T, h *Heap) map[unsafe.Pointer]bool {
	t.Helper()
	m := map[unsafe.Pointer]bool{}
	must(t, "Visit", h.Visit(func(p unsafe.Pointer, _ uintptr) bool { m[p] = true; return true }))
	return m
}

func skipDebug(t *testing.T) {
	if debugBuild {
		t.Skip("the nogil_debug build has no Go free path")
	}
}

// Go frees go into the buffer, in order, and stay counted in their pages; statistics and
// visits see them as free at once, and Collect hands them to their pages.
func TestDfreeGoPush(t *testing.T) {
	skipDebug(t)
	deadline(t, 60*time.Second)
	in := newInterp(t)
	g := startBound(t, in, true)
	g.run(func(ts *nogil.ThreadState) {
		for _, kind := range []HeapKind{Object, GC, GCPre} {
			h := heap(t, ts, kind)
			big, d := bufferOn(t, h)
			var ps [10]unsafe.Pointer
			for i := range ps {
				ps[i], _ = h.Malloc(64)
			}
			page := segmentOf(ps[0]).pageOf(ps[0])
			used := page.used
			before := stats(t, h)
			for i := 0; i < 5; i++ {
				must(t, "Free", h.Free(ps[i]))
			}
			if d.n != 5 {
				t.Fatalf("%v: buffer holds %d blocks after 5 frees", kind, d.n)
			}
			for i := 0; i < 5; i++ {
				if d.blocks[i] != ps[i] {
					t.Errorf("%v: blocks[%d] = %p, want %p", kind, i, d.blocks[i], ps[i])
				}
			}
			if segmentOf(ps[4]).pageOf(ps[4]) == page && page.used != used {
				t.Errorf("%v: page used %d, want %d (buffered blocks stay counted)", kind, page.used, used)
			}
			after := stats(t, h)
			if after.BlocksInUse != before.BlocksInUse-5 {
				t.Errorf("%v: BlocksInUse %d after 5 buffered frees, want %d", kind, after.BlocksInUse, before.BlocksInUse-5)
			}
			seen := live(t, h)
			for i, p := range ps {
				if seen[p] != (i >= 5) {
					t.Errorf("%v: Visit reports block %d (%p): %v, want %v", kind, i, p, seen[p], i >= 5)
				}
			}
			if !seen[big] {
				t.Errorf("%v: Visit misses the large block", kind)
			}
			if d.n != 5 {
				t.Errorf("%v: Stats or Visit flushed the buffer (n = %d); they count it", kind, d.n)
			}
			must(t, "Collect", h.Collect(false))
			if d.n != 0 {
				t.Errorf("%v: buffer holds %d blocks after Collect", kind, d.n)
			}
			if segmentOf(ps[4]).pageOf(ps[4]) == page && page.used != used-5 {
				t.Errorf("%v: page used %d after Collect, want %d", kind, page.used, used-5)
			}
			if s := stats(t, h); s.BlocksInUse != before.BlocksInUse-5 {
				t.Errorf("%v: BlocksInUse %d after Collect, want %d", kind, s.BlocksInUse, before.BlocksInUse-5)
			}
			for _, p := range ps[5:] {
				must(t, "Free", h.Free(p))
			}
			must(t, "Free", h.Free(big))
			must(t, "Collect", h.Collect(false))
			if s := stats(t, h); s.BlocksInUse != before.BlocksInUse-11 {
				t.Errorf("%v: BlocksInUse %d at the end, want %d", kind, s.BlocksInUse, before.BlocksInUse-11)
			}
		}
	})
}

// The Mem heap never buffers, and neither do huge blocks: Heap.Free gives them to their
// pages at once.
func TestDfreeGoNotBuffered(t *testing.T) {
	skipDebug(t)
	deadline(t, 60*time.Second)
	in := newInterp(t)
	g := startBound(t, in, true)
	g.run(func(ts *nogil.ThreadState) {
		h := heap(t, ts, Object)
		big, d := bufferOn(t, h)
		m := heap(t, ts, Mem)
		p, _ := m.Malloc(64)
		q, _ := m.Malloc(64)
		if segmentOf(p).dfree != 0 {
			t.Errorf("mem segment's dfree byte is set")
		}
		page := segmentOf(p).pageOf(p)
		used := page.used
		must(t, "Free", h.Free(p)) // through the object heap's Free: the block decides
		if d.n != 0 || page.used != used-1 || page.localFree != p {
			t.Errorf("mem block: buffer n=%d, page used %d (want %d), local_free %p (want %p)", d.n, page.used, used-1, page.localFree, p)
		}
		must(t, "Free", m.Free(q))
		huge, err := h.Malloc(LargeMax + 1)
		must(t, "Malloc", err)
		before := stats(t, h)
		must(t, "Free", h.Free(huge))
		if d.n != 0 {
			t.Errorf("huge block buffered (n=%d)", d.n)
		}
		if s := stats(t, h); s.HugeBlocks != before.HugeBlocks-1 {
			t.Errorf("HugeBlocks %d after the free, want %d", s.HugeBlocks, before.HugeBlocks-1)
		}
		must(t, "Free", h.Free(big))
	})
}

// A page whose last blocks sit in the buffer is not empty yet: it is deferred (retired) only
// when the buffer is flushed, here by Heap.Free's 16th push.
func TestDfreeGoFlushRetires(t *testing.T) {
	skipDebug(t)
	deadline(t, 60*time.Second)
	in := newInterp(t)
	g := startBound(t, in, true)
	g.run(func(ts *nogil.ThreadState) {
		h := heap(t, ts, Object)
		big, d := bufferOn(t, h)
		// 8 KiB blocks: 8 to a small page, so that two pages of the class are in use and
		// the first one, once empty, is deferred rather than kept as its class's last page.
		const size = 8192
		var ps []unsafe.Pointer
		for i := 0; i < 24; i++ {
			p, err := h.Malloc(size)
			must(t, "Malloc", err)
			ps = append(ps, p)
		}
		page := segmentOf(ps[0]).pageOf(ps[0])
		var mine []unsafe.Pointer
		byPage := map[*pageView][]unsafe.Pointer{}
		var order []*pageView
		for _, p := range ps {
			pg := segmentOf(p).pageOf(p)
			if pg == page {
				mine = append(mine, p)
				continue
			}
			if byPage[pg] == nil {
				order = append(order, pg)
			}
			byPage[pg] = append(byPage[pg], p)
		}
		// The other blocks, one page after another, so that the pushes below give each of
		// those pages a few blocks back without emptying it.
		var others []unsafe.Pointer
		for more := true; more; {
			more = false
			for _, pg := range order {
				if l := byPage[pg]; len(l) > 0 {
					others = append(others, l[0])
					byPage[pg] = l[1:]
					more = true
				}
			}
		}
		// A full page (in its heap's full queue) that gets a block back must leave that
		// queue: the flush sends its blocks through C.
		wasFull := map[*pageView]bool{}
		for _, pg := range order {
			if pg.flags&uint8(pageInFull) != 0 {
				wasFull[pg] = true
			}
		}
		if len(wasFull) == 0 {
			t.Fatalf("no full page among %d pages of 8 KiB blocks", len(order))
		}
		if len(mine) == 0 || len(mine) >= int(dfreeN) || len(others) < int(dfreeN) {
			t.Fatalf("%d blocks on the first page, %d elsewhere", len(mine), len(others))
		}
		must(t, "Collect", h.Collect(false))
		before := stats(t, h)
		for _, p := range mine {
			must(t, "Free", h.Free(p))
		}
		if page.used != uint32(len(mine)) || page.qsbrGoal != 0 {
			t.Errorf("buffered page: used %d (want %d), goal %d", page.used, len(mine), page.qsbrGoal)
		}
		if s := stats(t, h); s.PagesDeferred != before.PagesDeferred || s.PagesWaiting != before.PagesWaiting {
			t.Errorf("page deferred before the flush: %d -> %d deferred, %d -> %d waiting",
				before.PagesDeferred, s.PagesDeferred, before.PagesWaiting, s.PagesWaiting)
		}
		k := int(dfreeN) - len(mine)
		for _, p := range others[:k-1] {
			must(t, "Free", h.Free(p))
		}
		if d.n != dfreeN-1 || page.used != uint32(len(mine)) {
			t.Fatalf("one push short of full: n=%d, page used %d", d.n, page.used)
		}
		must(t, "Free", h.Free(others[k-1])) // the 16th: Heap.Free flushes
		if d.n != 0 {
			t.Fatalf("buffer holds %d blocks after the 16th push", d.n)
		}
		if page.used != 0 {
			t.Errorf("page used %d after the flush, want 0", page.used)
		}
		for _, p := range others[:k] {
			if pg := segmentOf(p).pageOf(p); wasFull[pg] && (pg.used == 0 || pg.flags&uint8(pageInFull) != 0) {
				t.Errorf("full page got blocks back: used %d, flags %#x (want >0, not in the full queue)", pg.used, pg.flags)
			}
		}
		s := stats(t, h)
		// (The other blocks may empty a second page: at least ours.)
		if s.PagesDeferred < before.PagesDeferred+1 || page.qsbrGoal == 0 {
			t.Errorf("emptied page not deferred by the flush: PagesDeferred %d -> %d, goal %d",
				before.PagesDeferred, s.PagesDeferred, page.qsbrGoal)
		}
		if s.BlocksInUse != before.BlocksInUse-uint64(dfreeN) {
			t.Errorf("BlocksInUse %d, want %d", s.BlocksInUse, before.BlocksInUse-uint64(dfreeN))
		}
		for _, p := range others[k:] {
			must(t, "Free", h.Free(p))
		}
		must(t, "Free", h.Free(big))
	})
}

// Go's and C's pushes share one buffer: either side's 16th push flushes it, and the blocks
// of both arrive in their pages exactly once (statistics after Collect).
func TestDfreeGoAndC(t *testing.T) {
	skipDebug(t)
	deadline(t, 60*time.Second)
	in := newInterp(t)
	g := startBound(t, in, true)
	g.run(func(ts *nogil.ThreadState) {
		h := heap(t, ts, Object)
		big, d := bufferOn(t, h)
		const n = 200
		ps := make([]unsafe.Pointer, n)
		for i := range ps {
			ps[i], _ = h.Malloc(uintptr(16 + i%240))
		}
		must(t, "Collect", h.Collect(false))
		before := stats(t, h)
		// Runs of 1-5 frees on one side, then the other: the 16th push falls to both sides.
		want := uint32(0)
		for i, side := 0, 0; i < n; side++ {
			for run := 1 + side%5; run > 0 && i < n; run-- {
				switch side % 3 {
				case 0:
					must(t, "Heap.Free", h.Free(ps[i]))
				case 1:
					if st := cFree(ps[i]); st != 0 {
						t.Fatalf("ng_mi_free: %d", st)
					}
				case 2:
					must(t, "Free", Free(ps[i]))
				}
				i++
				want = (want + 1) % dfreeN
				if d.n != want {
					t.Fatalf("after %d frees the buffer holds %d, want %d", i, d.n, want)
				}
			}
		}
		if s := stats(t, h); s.BlocksInUse != before.BlocksInUse-n {
			t.Errorf("BlocksInUse %d before Collect, want %d", s.BlocksInUse, before.BlocksInUse-n)
		}
		must(t, "Collect", h.Collect(false))
		if s := stats(t, h); s.BlocksInUse != before.BlocksInUse-n {
			t.Errorf("BlocksInUse %d after Collect, want %d", s.BlocksInUse, before.BlocksInUse-n)
		}
		if seen := live(t, h); len(seen) != int(before.BlocksInUse-n) || !seen[big] {
			t.Errorf("Visit reports %d blocks (large block: %v), want %d", len(seen), seen[big], before.BlocksInUse-n)
		}
		must(t, "Free", h.Free(big))
	})
}

// Releasing a state whose buffer holds blocks loses none: the abandon flushes them to their
// pages, and the interpreter's statistics count exactly the blocks still live.
func TestDfreeGoRelease(t *testing.T) {
	skipDebug(t)
	deadline(t, 60*time.Second)
	in := newInterp(t)
	base := interpStats(t, in).BlocksInUse
	g := startBound(t, in, true)
	var keep []unsafe.Pointer
	var big unsafe.Pointer
	g.run(func(ts *nogil.ThreadState) {
		h := heap(t, ts, Object)
		var d *dfreeView
		big, d = bufferOn(t, h)
		for i := 0; i < 40; i++ {
			p, _ := h.Malloc(uintptr(16 + 8*i))
			if i%4 == 0 {
				keep = append(keep, p)
			} else {
				must(t, "Free", h.Free(p))
			}
		}
		if d.n == 0 {
			t.Fatalf("buffer empty before the release")
		}
		must(t, "Release", ts.Release())
	})
	want := base + uint64(len(keep)) + 1
	if s := interpStats(t, in); s.BlocksInUse != want {
		t.Errorf("BlocksInUse %d after the release, want %d", s.BlocksInUse, want)
	}
	// The survivors are still the program's: free them from a goroutine without a state.
	for _, p := range append(keep, big) {
		must(t, "Free", Free(p))
	}
	g2 := startBound(t, in, true)
	g2.run(func(ts *nogil.ThreadState) {
		must(t, "Collect", heap(t, ts, Object).Collect(true))
	})
	if s := interpStats(t, in); s.BlocksInUse != base {
		t.Errorf("BlocksInUse %d after freeing the survivors, want %d", s.BlocksInUse, base)
	}
}
