package mimalloc_shim

// C-side views for the package's tests (cgo is not allowed in _test.go files): the C inline
// fast paths of alloc.h called from C, the C compiler's layout, and a few fields read
// through C. Nothing outside the tests uses them.

/*
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include "nogil.h"

static size_t ng_go_mi_layout(int what)
{
	switch (what) {
	case 0: return sizeof(ng_mi_page);
	case 1: return offsetof(ng_mi_page, free);
	case 2: return offsetof(ng_mi_page, local_free);
	case 3: return offsetof(ng_mi_page, used);
	case 4: return offsetof(ng_mi_page, link_offset);
	case 5: return offsetof(ng_mi_page, flags);
	case 6: return offsetof(ng_mi_page, heap_kind);
	case 7: return offsetof(ng_mi_page, block_size);
	case 8: return offsetof(ng_mi_page, thread_free);
	case 9: return offsetof(ng_mi_segment, thread_id);
	case 10: return offsetof(ng_mi_segment, page_shift);
	case 11: return offsetof(ng_mi_segment, kind);
	case 12: return offsetof(ng_mi_segment, pages);
	case 13: return offsetof(ng_mi_heap, direct);
	case 14: return sizeof(((ng_mi_heap *)0)->direct) / sizeof(((ng_mi_heap *)0)->direct[0]);
	case 15: return offsetof(ng_mi_heap, thread_id);
	case 16: return offsetof(ng_mi_heap, kind);
	case 17: return offsetof(ng_mi_heap, prefix);
	case 18: return sizeof(ng_mi_heap);
	case 19: return sizeof(((ng_mi_page *)0)->used);
	case 20: return sizeof(((ng_mi_page *)0)->link_offset);
	case 21: return sizeof(((ng_mi_segment *)0)->thread_id);
	case 22: return sizeof(((ng_mi_segment *)0)->page_shift);
	case 23: return offsetof(ng_mi_heap, use_qsbr);
	case 24: return offsetof(ng_mi_segment, heap_kind);
	case 25: return NG_MI_SEGMENT_MASK;
	}
	return (size_t)-1;
}

static int ng_go_mi_c_free(void *p) { return ng_mi_free(p); }
static void *ng_go_mi_c_malloc(ng_mi_heap *heap, size_t size) { return ng_mi_heap_malloc(heap, size); }

// A Go-benchmark baseline: the inline malloc and free, one cgo call each.
static void *ng_go_mi_c_free_ret(void *p) { ng_mi_free(p); return p; }

static uint64_t ng_go_mi_thread_id(void) { return ng_thread_id(); }

// The page descriptor of p as C finds it, and some of its fields.
static void *ng_go_mi_c_page_of(void *p) { return ng_mi_page_of(ng_mi_segment_of(p), p); }
static uint32_t ng_go_mi_c_page_used(void *p) { return ((ng_mi_page *)ng_go_mi_c_page_of(p))->used; }
static uint64_t ng_go_mi_c_segment_thread(void *p) { return __atomic_load_n(&ng_mi_segment_of(p)->thread_id, __ATOMIC_SEQ_CST); }

// The block the C inline malloc would hand out next for `size` (NULL: none ready).
static void *ng_go_mi_c_direct_next(ng_mi_heap *heap, size_t size)
{
	return size <= NG_MI_DIRECT_MAX ? heap->direct[(size + 7) >> 3]->free : NULL;
}

// The allocator's fault injection (alloc_internal.h): the next n segment mappings fail.
extern int ng_mi_test_fail_mmap;
static void ng_go_mi_fail_mmap(int n) { __atomic_store_n(&ng_mi_test_fail_mmap, n, __ATOMIC_SEQ_CST); }

static void *ng_go_mi_libc_malloc(size_t n) { return malloc(n); }
static void ng_go_mi_libc_free(void *p) { free(p); }
*/
import "C"

import "unsafe"

const (
	layoutPageSize = iota
	layoutPageFree
	layoutPageLocalFree
	layoutPageUsed
	layoutPageLinkOffset
	layoutPageFlags
	layoutPageHeapKind
	layoutPageBlockSize
	layoutPageThreadFree
	layoutSegThreadID
	layoutSegPageShift
	layoutSegKind
	layoutSegPages
	layoutHeapDirect
	layoutHeapDirectLen
	layoutHeapThreadID
	layoutHeapKind
	layoutHeapPrefix
	layoutHeapSize
	layoutPageUsedSize
	layoutPageLinkOffsetSize
	layoutSegThreadIDSize
	layoutSegPageShiftSize
	layoutHeapUseQSBR
	layoutSegHeapKind
	layoutSegMask
)

func cLayout(what int) uintptr { return uintptr(C.ng_go_mi_layout(C.int(what))) }

// cMalloc is the C inline ng_mi_heap_malloc on h, called from C.
func cMalloc(h *Heap, size uintptr) unsafe.Pointer {
	return C.ng_go_mi_c_malloc(h.c, C.size_t(size))
}

// cFree is the C inline ng_mi_free (checked in the nogil_debug build), called from C.
func cFree(p unsafe.Pointer) int { return int(C.ng_go_mi_c_free(p)) }

// cFreeRet is cFree returning p (the benchmark's baseline).
func cFreeRet(p unsafe.Pointer) unsafe.Pointer { return C.ng_go_mi_c_free_ret(p) }

// cThreadID is ng_thread_id() of the calling OS thread.
func cThreadID() uint64 { return uint64(C.ng_go_mi_thread_id()) }

// cPageOf is ng_mi_page_of(ng_mi_segment_of(p), p) computed by C.
func cPageOf(p unsafe.Pointer) unsafe.Pointer { return C.ng_go_mi_c_page_of(p) }

// cPageUsed is the used count of p's page, read by C.
func cPageUsed(p unsafe.Pointer) uint32 { return uint32(C.ng_go_mi_c_page_used(p)) }

// cSegmentThread is the thread id of p's segment, read by C.
func cSegmentThread(p unsafe.Pointer) uint64 { return uint64(C.ng_go_mi_c_segment_thread(p)) }

// cDirectNext is the block the C inline malloc would hand out next for size.
func cDirectNext(h *Heap, size uintptr) unsafe.Pointer {
	return C.ng_go_mi_c_direct_next(h.c, C.size_t(size))
}

// failMmap makes the next n segment mappings fail.
func failMmap(n int) { C.ng_go_mi_fail_mmap(C.int(n)) }

// libcMalloc and libcFree give the tests foreign pointers.
func libcMalloc(n uintptr) unsafe.Pointer { return C.ng_go_mi_libc_malloc(C.size_t(n)) }
func libcFree(p unsafe.Pointer)           { C.ng_go_mi_libc_free(p) }
