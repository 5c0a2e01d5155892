package mimalloc_shim

/*
#include "nogil.h"
#include "alloc_internal.h"

// Not a status: ng_go_mi_free's NG_ESTATE for a detached owner's object free (errors.go).
#define NG_GO_FREE_DETACHED 1

// ng_mi_free as the header spells it (checked in NG_MI_DEBUG builds): the C inline fast
// path on the calling thread, the out-of-line path otherwise. NG_ESTATE is split in the same
// call, on the same thread (the refusal depends on it): a double free, or
// NG_GO_FREE_DETACHED.
static int ng_go_mi_free(void *p)
{
	int st = ng_mi_free(p);
	if (st == NG_ESTATE && ng_mi_free_refused_detached(p))
		return NG_GO_FREE_DETACHED;
	return st;
}
*/
import "C"

import (
	"errors"
	"fmt"
	"math/bits"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"
	"weak"

	"github.com/nogil-go/nogil"
	"github.com/nogil-go/nogil/internal/gtoken"
)

// A HeapKind names one of the four heaps every thread state has (CPython's
// _Py_MIMALLOC_HEAP_*).
type HeapKind int

const (
	// Mem is the raw-memory heap (PyMem_Malloc): no QSBR gating, no preserved prefix.
	Mem HeapKind = C.NG_MI_HEAP_MEM
	// Object is the heap of plain objects (PyObject_Malloc): emptied pages wait for a QSBR
	// goal, and the first ObjectPrefix bytes of a block are never written by the allocator.
	Object HeapKind = C.NG_MI_HEAP_OBJECT
	// GC is the heap of GC objects without a pre-header; gated like Object.
	GC HeapKind = C.NG_MI_HEAP_GC
	// GCPre is the heap of GC objects with a two-pointer pre-header; gated like Object,
	// with GCPrePrefix preserved bytes.
	GCPre HeapKind = C.NG_MI_HEAP_GC_PRE

	heapKindCount = int(C.NG_MI_HEAP_COUNT)
)

// String returns the kind's name ("mem", "object", "gc", "gc_pre").
func (k HeapKind) String() string {
	switch k {
	case Mem:
		return "mem"
	case Object:
		return "object"
	case GC:
		return "gc"
	case GCPre:
		return "gc_pre"
	}
	return fmt.Sprintf("HeapKind(%d)", int(k))
}

// Prefix returns the number of bytes at the start of a block of this heap kind that the
// allocator never writes (0 for Mem, ObjectPrefix for Object and GC, GCPrePrefix for GCPre).
func (k HeapKind) Prefix() uintptr {
	switch k {
	case Object, GC:
		return ObjectPrefix
	case GCPre:
		return GCPrePrefix
	}
	return 0
}

func (k HeapKind) valid() bool { return k >= 0 && int(k) < heapKindCount }

// A Heap is the heap of one kind of one ThreadState. Only the ThreadState's bound goroutine
// allocates from it and collects it, while the state is attached; any goroutine may free its
// blocks with the package-level Free. A Heap is valid until its ThreadState is released;
// then its methods return an error matching nogil.ErrReleased, and its live blocks stay valid
// (their pages are abandoned to the Interpreter, see the package documentation).
type Heap struct {
	c     *C.ng_mi_heap
	v     *heapView // the same C memory, as the Go fast paths see it
	ts    *nogil.ThreadState
	kind  HeapKind
	token gtoken.Token // the ThreadState's bound goroutine on its thread
	tid   uint64       // the owner's ng_thread_id() (heap->thread_id)
	busy  bool         // inside Visit (owner only)
}

type heapKey struct {
	ts   uintptr // the ng_tstate*
	kind HeapKind
}

// heaps caches the Heap of each (thread state, kind), weakly: a Heap keeps its ThreadState
// reachable, so a strong cache would keep every ThreadState wrapper (and its leak report)
// alive forever. A collected Heap is simply made again by the next HeapOf.
var heaps sync.Map // heapKey -> weak.Pointer[Heap]

// HeapOf returns the heap of the given kind of ts, creating ts's four heaps on first use. It
// must be called from ts's bound goroutine (nogil.ErrWrongThread otherwise); the state
// need not be attached. Repeated calls return the same *Heap without a cgo call while the
// caller keeps it reachable. A released state returns an error matching nogil.ErrReleased,
// an unknown kind one matching nogil.ErrInvalid.
func HeapOf(ts *nogil.ThreadState, kind HeapKind) (*Heap, error) {
	if ts == nil {
		return nil, newError("HeapOf", "nil ThreadState; get one from Interpreter.Bind", nogil.ErrInvalid)
	}
	if !kind.valid() {
		return nil, newError("HeapOf", fmt.Sprintf("unknown heap kind %d", int(kind)), nogil.ErrInvalid)
	}
	// Before the pointer is used at all: a released state's C memory may belong to another
	// state by now.
	if ts.State() == nogil.Released {
		return nil, errReleased("HeapOf")
	}
	key := heapKey{uintptr(ts.CPtr()), kind}
	if v, ok := heaps.Load(key); ok {
		if h := v.(weak.Pointer[Heap]).Value(); h != nil && h.ts == ts {
			if !h.token.IsCurrent() {
				return nil, errWrongThread("HeapOf")
			}
			return h, nil
		}
	}
	var c *C.ng_mi_heap
	if st := C.ng_mi_heap_of((*C.ng_tstate)(ts.CPtr()), C.ng_mi_heap_kind(kind), &c); st != C.NG_OK {
		return nil, statusError("HeapOf", st)
	}
	// The C function checked that this goroutine's OS thread is ts's: it is ts's bound
	// goroutine, the only one running there.
	h := &Heap{
		c:     c,
		v:     (*heapView)(unsafe.Pointer(c)),
		ts:    ts,
		kind:  kind,
		token: gtoken.Current(),
		tid:   uint64(c.thread_id),
	}
	wp := weak.Make(h)
	heaps.Store(key, wp)
	runtime.AddCleanup(h, func(e heapEntry) { heaps.CompareAndDelete(e.key, e.wp) }, heapEntry{key, wp})
	return h, nil
}

type heapEntry struct {
	key heapKey
	wp  weak.Pointer[Heap]
}

// ThreadState returns the state the heap belongs to.
func (h *Heap) ThreadState() *nogil.ThreadState { return h.ts }

// Kind returns the heap's kind.
func (h *Heap) Kind() HeapKind { return h.kind }

// CPtr returns the ng_mi_heap* for C code running on the owner's OS thread. It is valid
// until the ThreadState is released.
func (h *Heap) CPtr() unsafe.Pointer { return unsafe.Pointer(h.c) }

// owned reports whether the caller may use the heap's owner-only fast paths: the state is
// live and attached, the caller is its bound goroutine, and no Visit is running. Two
// atomic loads (in State) and a compare of gtoken tokens.
func (h *Heap) owned() bool {
	return h != nil && h.ts.State() == nogil.Attached && h.token.IsCurrent() && !h.busy
}

// check returns why the caller may not use the owner-only operations (nil if it may).
func (h *Heap) check(op string) error {
	if h == nil || h.c == nil {
		return newError(op, "nil Heap; get one from HeapOf", nogil.ErrInvalid)
	}
	switch h.ts.State() {
	case nogil.Released:
		return errReleased(op)
	case nogil.Attached:
	default:
		if !h.token.IsCurrent() {
			return errWrongThread(op)
		}
		return errNotAttached(op)
	}
	if !h.token.IsCurrent() {
		return errWrongThread(op)
	}
	if h.busy {
		return newError(op, "Heap used by its own Visit callback; the callback must not "+
			"allocate from or free into the heap it visits", nogil.ErrBusy)
	}
	return nil
}

// Malloc returns a block of at least size bytes from the heap (nil, with an error matching
// nogil.ErrNoMemory, if the memory cannot be had). Size 0 returns a unique block of the
// smallest size class. The block is not zeroed; in the Object and GC heaps its first
// Kind().Prefix() bytes hold what the previous user of the block left there.
//
// Sizes up to DirectMax are served without a cgo call when their size class has a free
// block ready (the Go spelling of the C inline ng_mi_heap_malloc); other requests call
// ng_mi_heap_malloc_generic. In the nogil_debug build every request calls C.
func (h *Heap) Malloc(size uintptr) (unsafe.Pointer, error) {
	// The checks of owned, spelled here so that they are inlined.
	// checkedAlloc (the nogil_debug build) sends every request to C, which keeps the live
	// bit of each block the checked free tests; a constant, so the release build is unchanged.
	if !checkedAlloc && size <= DirectMax && h != nil && h.ts.State() == nogil.Attached && h.token.IsCurrent() && !h.busy {
		page := h.v.direct[(size+7)>>3]
		if b := page.free; b != nil {
			page.free = *(*unsafe.Pointer)(unsafe.Add(b, page.linkOffset))
			page.used++
			return b, nil
		}
	}
	return h.mallocSlow(size)
}

func (h *Heap) mallocSlow(size uintptr) (unsafe.Pointer, error) {
	if err := h.check("Malloc"); err != nil {
		return nil, err
	}
	p := C.ng_mi_heap_malloc_generic(h.c, C.size_t(size))
	if p == nil {
		return nil, errNoMemory("Malloc", size)
	}
	return p, nil
}

// Calloc returns a zeroed block of n*size bytes (an error matching nogil.ErrNoMemory if the
// product overflows or the memory cannot be had).
func (h *Heap) Calloc(n, size uintptr) (unsafe.Pointer, error) {
	hi, total := bits.Mul(uint(n), uint(size))
	if hi == 0 && uintptr(total) <= DirectMax && h.owned() {
		p, err := h.Malloc(uintptr(total))
		if err != nil {
			return nil, err
		}
		clear(unsafe.Slice((*byte)(p), total))
		return p, nil
	}
	if err := h.check("Calloc"); err != nil {
		return nil, err
	}
	p := C.ng_mi_heap_calloc(h.c, C.size_t(n), C.size_t(size))
	if p == nil {
		if hi != 0 {
			return nil, newError("Calloc", fmt.Sprintf("%d * %d bytes overflows", n, size), nogil.ErrNoMemory)
		}
		return nil, errNoMemory("Calloc", uintptr(total))
	}
	return p, nil
}

// Realloc resizes the block p (of any heap, of any thread state) to size bytes with
// realloc(3)'s semantics, allocating the new block from this heap: a nil p allocates; the
// contents up to the smaller size are kept; p is freed when a new block was returned. On
// failure p is left alone and the error matches nogil.ErrNoMemory.
func (h *Heap) Realloc(p unsafe.Pointer, size uintptr) (unsafe.Pointer, error) {
	if err := h.check("Realloc"); err != nil {
		return nil, err
	}
	q, errno := C.ng_mi_heap_realloc(h.c, p, C.size_t(size))
	if q == nil && (size != 0 || errors.Is(errno, syscall.ENOMEM)) {
		return nil, errNoMemory("Realloc", size)
	}
	return q, nil
}

// Free frees a block of any heap of any thread state from the heap's bound goroutine (the
// state must be attached). A block of a page this heap's thread owns is pushed on the page's
// local free list in Go, without a cgo call (the Go spelling of the C inline ng_mi_free);
// the page that becomes empty, and every other block, go through C. A nil p is ignored.
//
// Other goroutines use the package-level Free. Freeing a pointer the allocator did not hand
// out, or freeing a block twice, is undefined (as with free(3)) except in the nogil_debug
// build, which returns ErrNotAllocated or ErrDoubleFree from any goroutine: the C check keeps
// a live bit per block, cleared atomically before the block is touched, so of two racing
// frees of one block exactly one succeeds. A second free of a block whose page has since gone
// back to its segment returns ErrNotAllocated; one of a huge block whose memory was unmapped
// (a Mem one at once) returns ErrDoubleFree while it is among the last 64 such blocks, and
// ErrNotAllocated after. A block freed after its Interpreter was closed is ErrNotAllocated
// there (undefined in the release build).
//
// The bound goroutine of an Object, GC or GCPre heap frees their blocks only while its state,
// or another of its states in the same Interpreter, is attached (Heap.Free checks it; for the
// package-level Free it is the caller's rule): otherwise a goroutine inside
// Interpreter.StopTheWorld may be walking the heap. The nogil_debug build's
// Free refuses such a free with an error matching nogil.ErrState and keeps the block.
func (h *Heap) Free(p unsafe.Pointer) error {
	if p == nil {
		return nil
	}
	if !debugBuild && h != nil && h.ts.State() == nogil.Attached && h.token.IsCurrent() && !h.busy {
		seg := segmentOf(p)
		page := seg.pageOf(p)
		if atomic.LoadUint64(&seg.threadID) == h.tid && page.flags == 0 {
			*(*unsafe.Pointer)(unsafe.Add(p, page.linkOffset)) = page.localFree
			page.localFree = p
			page.used--
			if page.used == 0 {
				C.ng_mi_page_retire((*C.ng_mi_page)(unsafe.Pointer(page)))
			}
			return nil
		}
		// Another thread's page, a full or huge page: the out-of-line path, which only
		// needs the block (any thread may call it).
		C.ng_mi_free_generic((*C.ng_mi_segment)(unsafe.Pointer(seg)), (*C.ng_mi_page)(unsafe.Pointer(page)), p)
		return nil
	}
	if err := h.check("Free"); err != nil {
		return err
	}
	return freeError("Free", C.ng_go_mi_free(p))
}

// Free frees a block of any heap of any thread state, from any goroutine, with or without a
// ThreadState (ng_mi_free: one cgo call; C decides whether the calling OS thread owns the
// block's page). A nil p is ignored. A block of a heap whose ThreadState is gone stays valid
// until freed and may be freed here. See Heap.Free about invalid frees.
func Free(p unsafe.Pointer) error {
	if p == nil {
		return nil
	}
	return freeError("Free", C.ng_go_mi_free(p))
}

// UsableSize returns the number of bytes usable in the block p (its size class; at least
// the size asked for), 0 for nil. Any goroutine may call it while p is allocated.
func UsableSize(p unsafe.Pointer) uintptr {
	if p == nil {
		return 0
	}
	return uintptr(C.ng_mi_usable_size(p))
}

// Collect takes back the blocks other goroutines freed, returns waiting pages whose QSBR
// goal is reached to their segments and empty segments to the kernel. With force it also
// reclaims the segments of exited or released thread states of the same heap kind from the
// Interpreter's abandoned pool (their waiting pages keep their goals). The state must be
// attached, and the caller its bound goroutine.
func (h *Heap) Collect(force bool) error {
	if err := h.check("Collect"); err != nil {
		return err
	}
	return statusError("Collect", C.ng_mi_heap_collect(h.c, C.bool(force)))
}
