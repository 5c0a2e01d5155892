package mimalloc_shim

import (
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/nogil-go/nogil"
)

// The Go fast paths (Heap.Malloc, Heap.Free) read and write ng_mi_page, ng_mi_segment and
// ng_mi_heap through Go views; every offset and size they use must be the C compiler's.
func TestLayoutGoMatchesC(t *testing.T) {
	var pg pageView
	var sg segmentView
	var hp heapView
	checks := []struct {
		name string
		got  uintptr
		what int
	}{
		{"sizeof(ng_mi_page)", unsafe.Sizeof(pg), layoutPageSize},
		{"offsetof(ng_mi_page, free)", unsafe.Offsetof(pg.free), layoutPageFree},
		{"offsetof(ng_mi_page, local_free)", unsafe.Offsetof(pg.localFree), layoutPageLocalFree},
		{"offsetof(ng_mi_page, used)", unsafe.Offsetof(pg.used), layoutPageUsed},
		{"sizeof(ng_mi_page.used)", unsafe.Sizeof(pg.used), layoutPageUsedSize},
		{"offsetof(ng_mi_page, link_offset)", unsafe.Offsetof(pg.linkOffset), layoutPageLinkOffset},
		{"sizeof(ng_mi_page.link_offset)", unsafe.Sizeof(pg.linkOffset), layoutPageLinkOffsetSize},
		{"offsetof(ng_mi_page, flags)", unsafe.Offsetof(pg.flags), layoutPageFlags},
		{"offsetof(ng_mi_page, heap_kind)", unsafe.Offsetof(pg.heapKind), layoutPageHeapKind},
		{"offsetof(ng_mi_page, block_size)", unsafe.Offsetof(pg.blockSize), layoutPageBlockSize},
		{"offsetof(ng_mi_page, thread_free)", unsafe.Offsetof(pg.threadFree), layoutPageThreadFree},
		{"offsetof(ng_mi_segment, thread_id)", unsafe.Offsetof(sg.threadID), layoutSegThreadID},
		{"sizeof(ng_mi_segment.thread_id)", unsafe.Sizeof(sg.threadID), layoutSegThreadIDSize},
		{"offsetof(ng_mi_segment, page_shift)", unsafe.Offsetof(sg.pageShift), layoutSegPageShift},
		{"sizeof(ng_mi_segment.page_shift)", unsafe.Sizeof(sg.pageShift), layoutSegPageShiftSize},
		{"offsetof(ng_mi_segment, kind)", unsafe.Offsetof(sg.kind), layoutSegKind},
		{"offsetof(ng_mi_segment, heap_kind)", unsafe.Offsetof(sg.heapKind), layoutSegHeapKind},
		{"offsetof(ng_mi_segment, pages)", unsafe.Sizeof(sg), layoutSegPages},
		{"offsetof(ng_mi_heap, direct)", unsafe.Offsetof(hp.direct), layoutHeapDirect},
		{"len(ng_mi_heap.direct)", uintptr(len(hp.direct)), layoutHeapDirectLen},
		{"offsetof(ng_mi_heap, thread_id)", unsafe.Offsetof(hp.threadID), layoutHeapThreadID},
		{"offsetof(ng_mi_heap, kind)", unsafe.Offsetof(hp.kind), layoutHeapKind},
		{"offsetof(ng_mi_heap, use_qsbr)", unsafe.Offsetof(hp.useQSBR), layoutHeapUseQSBR},
		{"offsetof(ng_mi_heap, prefix)", unsafe.Offsetof(hp.prefix), layoutHeapPrefix},
		{"sizeof(ng_mi_heap)", unsafe.Sizeof(hp), layoutHeapSize},
		{"NG_MI_SEGMENT_MASK", segmentMask, layoutSegMask},
	}
	for _, c := range checks {
		if want := cLayout(c.what); c.got != want {
			t.Errorf("%s: Go view %d, C %d", c.name, c.got, want)
		}
	}
}

// The semantics behind the offsets, on live heaps: Go finds the same page descriptor as C
// (small, medium, large and huge blocks), the heap's and the page's fields say what the
// header says, and the free-list link sits at link_offset.
func TestLayoutSemantics(t *testing.T) {
	deadline(t, 60*time.Second)
	in := newInterp(t)
	g := startBound(t, in, true)
	g.run(func(ts *nogil.ThreadState) {
		for _, kind := range kinds {
			h := heap(t, ts, kind)
			if HeapKind(h.v.kind) != kind || uintptr(h.v.prefix) != kind.Prefix() {
				t.Errorf("%v: heap kind %d prefix %d, want %d %d", kind, h.v.kind, h.v.prefix, kind, kind.Prefix())
			}
			if (h.v.useQSBR != 0) != (kind != Mem) {
				t.Errorf("%v: use_qsbr = %d", kind, h.v.useQSBR)
			}
			if tid := cThreadID(); h.tid != tid {
				t.Errorf("%v: heap thread id %d, calling thread's ng_thread_id %d", kind, h.tid, tid)
			}
			for i, p := range h.v.direct {
				if p == nil {
					t.Fatalf("%v: direct[%d] is NULL", kind, i)
				}
			}
			for _, size := range []uintptr{0, 1, 8, 24, 64, 100, 1000, DirectMax, 4000, SmallMax, SmallMax + 1, MediumMax, MediumMax + 1, LargeMax, LargeMax + 1, 3 * LargeMax} {
				p, err := h.Malloc(size)
				if err != nil {
					t.Fatalf("%v: Malloc(%d): %v", kind, size, err)
				}
				seg := segmentOf(p)
				page := seg.pageOf(p)
				if unsafe.Pointer(page) != cPageOf(p) {
					t.Errorf("%v size %d: Go page descriptor %p, C %p (page shift %d)", kind, size, page, cPageOf(p), seg.pageShift)
				}
				if page.used != cPageUsed(p) || page.used == 0 {
					t.Errorf("%v size %d: used: Go %d, C %d", kind, size, page.used, cPageUsed(p))
				}
				if atomic.LoadUint64(&seg.threadID) != h.tid || cSegmentThread(p) != h.tid {
					t.Errorf("%v size %d: segment thread %d (C %d), heap's %d", kind, size, seg.threadID, cSegmentThread(p), h.tid)
				}
				if uintptr(page.linkOffset) != kind.Prefix() || HeapKind(page.heapKind) != kind || HeapKind(seg.heapKind) != kind {
					t.Errorf("%v size %d: page link_offset %d heap_kind %d, segment heap_kind %d", kind, size, page.linkOffset, page.heapKind, seg.heapKind)
				}
				if page.blockSize < size || UsableSize(p) != page.blockSize {
					t.Errorf("%v size %d: block_size %d, usable size %d", kind, size, page.blockSize, UsableSize(p))
				}
				if huge := size > LargeMax; huge != (page.flags&uint8(pageHuge) != 0) {
					t.Errorf("%v size %d: page flags %#x", kind, size, page.flags)
				}
				must(t, "Free", h.Free(p))
			}

			// The link: two blocks of one page freed by the owner go on local_free, newest
			// first, each linking to the previous one at link_offset.
			const size = 48
			var ps [8]unsafe.Pointer
			for i := range ps {
				ps[i], _ = h.Malloc(size)
			}
			a, b := ps[3], ps[4]
			pa, pb := segmentOf(a).pageOf(a), segmentOf(b).pageOf(b)
			if pa != pb {
				t.Fatalf("%v: consecutive blocks on different pages", kind)
			}
			if debugBuild {
				must(t, "Free", h.Free(a))
				must(t, "Free", h.Free(b))
			} else {
				before := pa.used
				must(t, "Free", h.Free(a))
				must(t, "Free", h.Free(b))
				if pa.localFree != b || *(*unsafe.Pointer)(unsafe.Add(b, pa.linkOffset)) != a {
					t.Errorf("%v: local_free = %p, link of %p = %p; want %p -> %p", kind, pa.localFree, b,
						*(*unsafe.Pointer)(unsafe.Add(b, pa.linkOffset)), b, a)
				}
				if pa.used != before-2 || cPageUsed(a) != pa.used {
					t.Errorf("%v: used %d (C %d), want %d", kind, pa.used, cPageUsed(a), before-2)
				}
			}
			// And the allocation list: Go's Malloc hands out what C's inline malloc would.
			next := cDirectNext(h, size)
			p, _ := h.Malloc(size)
			if next != nil && p != next {
				t.Errorf("%v: Go Malloc returned %p, the C fast path's next block is %p", kind, p, next)
			}
			must(t, "Free", h.Free(p))
			for i, q := range ps {
				if i != 3 && i != 4 {
					must(t, "Free", h.Free(q))
				}
			}
		}
	})
}
