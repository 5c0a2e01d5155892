package mimalloc_shim

// #include "nogil.h"
import "C"

import "github.com/nogil-go/nogil"

// Stats is a snapshot of an allocator's counters: one heap's (Heap.Stats) or a whole
// interpreter's (InterpreterStats). It mirrors ng_mi_stats.
type Stats struct {
	// BlocksInUse counts blocks handed out and not freed (blocks other threads freed count
	// as in use until the owner collects them).
	BlocksInUse uint64
	// BytesInUse is the same in block-size bytes.
	BytesInUse uint64
	// PagesInUse counts pages with at least one live block.
	PagesInUse uint64
	// PagesWaiting counts empty pages of the object heaps waiting for their QSBR goal
	// before they may serve another size class or leave the heap.
	PagesWaiting uint64
	// BytesWaiting is their size in bytes.
	BytesWaiting uint64
	// PagesFree counts empty pages in segments, usable for any size class.
	PagesFree uint64
	// PagesAbandoned counts pages in the interpreter's abandoned pool (InterpreterStats
	// only): pages of released or exited thread states not reclaimed yet.
	PagesAbandoned uint64
	// Segments counts mapped segments, huge ones included.
	Segments uint64
	// BytesMapped is the memory mapped for them.
	BytesMapped uint64
	// SegmentsHugepage counts the segments among them advised for transparent huge pages
	// (see SetHugepages).
	SegmentsHugepage uint64
	// HugeBlocks counts live blocks larger than LargeMax (one huge segment each).
	HugeBlocks uint64

	// Counters since creation.

	// PagesDeferred counts pages that started waiting for a QSBR goal.
	PagesDeferred uint64
	// PagesReleasedAfterGoal counts waiting pages returned once their goal was reached.
	PagesReleasedAfterGoal uint64
	// PagesReusedSameClass counts waiting pages allocated from again for their own size
	// class (their goal was dropped).
	PagesReusedSameClass uint64
	// SegmentsAbandoned counts segments given to the abandoned pool.
	SegmentsAbandoned uint64
	// SegmentsReclaimed counts segments taken back from the abandoned pool.
	SegmentsReclaimed uint64
	// MmapFailures counts mappings the kernel refused.
	MmapFailures uint64
}

func statsFromC(s *C.ng_mi_stats) Stats {
	return Stats{
		BlocksInUse:            uint64(s.blocks_in_use),
		BytesInUse:             uint64(s.bytes_in_use),
		PagesInUse:             uint64(s.pages_in_use),
		PagesWaiting:           uint64(s.pages_waiting),
		BytesWaiting:           uint64(s.bytes_waiting),
		PagesFree:              uint64(s.pages_free),
		PagesAbandoned:         uint64(s.pages_abandoned),
		Segments:               uint64(s.segments),
		BytesMapped:            uint64(s.bytes_mapped),
		SegmentsHugepage:       uint64(s.segments_hugepage),
		HugeBlocks:             uint64(s.huge_blocks),
		PagesDeferred:          uint64(s.pages_deferred),
		PagesReleasedAfterGoal: uint64(s.pages_released_after_goal),
		PagesReusedSameClass:   uint64(s.pages_reused_same_class),
		SegmentsAbandoned:      uint64(s.segments_abandoned),
		SegmentsReclaimed:      uint64(s.segments_reclaimed),
		MmapFailures:           uint64(s.mmap_failures),
	}
}

// Stats returns the heap's counters. The heap's bound goroutine may call it (attached or
// not); any other goroutine only inside Interpreter.StopTheWorld (an error matching
// nogil.ErrWrongThread otherwise).
func (h *Heap) Stats() (Stats, error) {
	if h == nil || h.c == nil {
		return Stats{}, newError("Stats", "nil Heap; get one from HeapOf", nogil.ErrInvalid)
	}
	if h.ts.State() == nogil.Released {
		return Stats{}, errReleased("Stats")
	}
	if h.token.IsCurrent() && h.busy {
		return Stats{}, newError("Stats", "called by the heap's own Visit callback", nogil.ErrBusy)
	}
	var s C.ng_mi_stats
	if st := C.ng_mi_heap_get_stats(h.c, &s); st != C.NG_OK {
		if st == C.NG_EWRONGTHREAD {
			return Stats{}, newError("Stats", "called by a goroutine other than the heap's "+
				"bound goroutine outside Interpreter.StopTheWorld", nogil.ErrWrongThread)
		}
		return Stats{}, statusError("Stats", st)
	}
	return statsFromC(&s), nil
}

// InterpreterStats returns the counters of every heap of in's thread states plus its
// abandoned pool. Any goroutine may call it; the snapshot is exact inside
// Interpreter.StopTheWorld, and otherwise reads other threads' counters as they are.
func InterpreterStats(in *nogil.Interpreter) (Stats, error) {
	if err := interpLive("InterpreterStats", in); err != nil {
		return Stats{}, err
	}
	var s C.ng_mi_stats
	if st := C.ng_mi_interp_get_stats((*C.ng_interp)(in.CPtr()), &s); st != C.NG_OK {
		return Stats{}, statusError("InterpreterStats", st)
	}
	return statsFromC(&s), nil
}
