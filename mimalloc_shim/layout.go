package mimalloc_shim

/*
#include "nogil.h"

// Constants the Go views are built from (cgo reads enum values; the macros cast to size_t).
enum {
	ng_go_mi_direct_max = NG_MI_DIRECT_MAX,
	ng_go_mi_direct_wsize = NG_MI_DIRECT_WSIZE,
	ng_go_mi_segment_shift = NG_MI_SEGMENT_SHIFT,
	ng_go_mi_object_prefix = NG_MI_OBJECT_PREFIX,
	ng_go_mi_gc_pre_prefix = NG_MI_GC_PRE_PREFIX,
	ng_go_mi_small_max = NG_MI_SMALL_MAX,
	ng_go_mi_medium_max = NG_MI_MEDIUM_MAX,
	ng_go_mi_large_max = NG_MI_LARGE_MAX,
};
*/
import "C"

import "unsafe"

// Geometry of the allocator (csrc/include/nogil/alloc.h).
const (
	// DirectMax is the largest size Heap.Malloc serves without a cgo call when its size
	// class has a free block ready.
	DirectMax = uintptr(C.ng_go_mi_direct_max)
	// SmallMax is the largest block on a 64 KiB small page.
	SmallMax = uintptr(C.ng_go_mi_small_max)
	// MediumMax is the largest block on a 512 KiB medium page.
	MediumMax = uintptr(C.ng_go_mi_medium_max)
	// LargeMax is the largest block on the single page of a large segment; bigger blocks
	// get a huge segment of their own.
	LargeMax = uintptr(C.ng_go_mi_large_max)
	// SegmentSize is the size and alignment of a segment (4 MiB): the segment of a block p
	// starts at p &^ (SegmentSize-1).
	SegmentSize = uintptr(1) << C.ng_go_mi_segment_shift
	// ObjectPrefix is the number of bytes at the start of a block of the Object and GC
	// heaps that the allocator never writes, also while the block is free:
	// offsetof(PyObject, ob_type) in CPython's free-threaded layout.
	ObjectPrefix = uintptr(C.ng_go_mi_object_prefix)
	// GCPrePrefix is ObjectPrefix plus the two-pointer GC pre-header, for the GCPre heap.
	GCPrePrefix = uintptr(C.ng_go_mi_gc_pre_prefix)

	directWSize = int(C.ng_go_mi_direct_wsize)
	pageInFull  = C.NG_MI_PAGE_IN_FULL // ng_mi_page.flags
	pageHuge    = C.NG_MI_PAGE_HUGE
	segmentMask = SegmentSize - 1
)

// Go views of the C structures the fast paths read and write. They mirror ng_mi_page,
// ng_mi_segment and ng_mi_heap field by field (TestLayoutGoMatchesC compares every offset
// the Go code uses, and the sizes, with the C compiler's). The views are only ever pointers
// into C memory; the pointer-typed fields hold C pointers (or nil), never Go pointers.

// pageView is ng_mi_page.
type pageView struct {
	free       unsafe.Pointer // owner only: blocks ready to hand out
	localFree  unsafe.Pointer // owner only: blocks the owner freed since the last collect
	used       uint32         // owner only
	linkOffset uint16         // where a free block keeps its next pointer
	flags      uint8          // any bit set: frees take the out-of-line path
	heapKind   uint8
	blockSize  uintptr
	threadFree uintptr // atomic, C's
	// Private to the C allocator from here on.
	heap          uintptr
	prev, next    uintptr
	qsbrPrev      uintptr
	qsbrNext      uintptr
	qsbrGoal      uint64
	start         uintptr
	area          uintptr
	capacity      uint32
	reserved      uint32
	inUse         uint8
	retireExpire  uint8
	bin           uint8
	reservedFlags uint8
	reserved2     uint64
}

// segmentView is the header of ng_mi_segment; the page descriptors follow it.
type segmentView struct {
	threadID  uint64 // atomic: the owner's ng_thread_id(); NG_MI_NO_THREAD while abandoned
	pageShift uint32
	kind      uint8
	heapKind  uint8
	reserved0 uint16
	// Private to the C allocator from here on.
	size       uintptr
	pageCount  uint32
	pagesUsed  uint32
	owner      uintptr
	prev, next uintptr
	allNext    uintptr
	cookie     uint64
	reserved1  [2]uint64
	hugepages  uint8
	// pages []pageView follows
}

// heapView is ng_mi_heap.
type heapView struct {
	direct   [directWSize + 1]*pageView // owner only; never nil
	threadID uint64                     // the owner's ng_thread_id()
	thread   uintptr
	tstate   uintptr
	kind     uint8
	useQSBR  uint8
	prefix   uint16
	priv     uintptr
}

// segmentOf is ng_mi_segment_of.
func segmentOf(p unsafe.Pointer) *segmentView {
	return (*segmentView)(unsafe.Pointer(uintptr(p) &^ segmentMask))
}

// pageOf is ng_mi_page_of: the descriptor of the page holding p (page 0 for huge segments,
// whose page shift is 63).
func (s *segmentView) pageOf(p unsafe.Pointer) *pageView {
	index := (uintptr(p) - uintptr(unsafe.Pointer(s))) >> s.pageShift
	return (*pageView)(unsafe.Add(unsafe.Pointer(s), unsafe.Sizeof(segmentView{})+index*unsafe.Sizeof(pageView{})))
}
