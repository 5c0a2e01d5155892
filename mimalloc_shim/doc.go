// Package mimalloc_shim is nogil's page allocator seen from Go: a mimalloc-style allocator
// of C memory whose object heaps keep an emptied page until QSBR says no lock-free reader can
// still hold a pointer into it. It is the counterpart of the mimalloc that CPython's
// free-threaded build bundles, with CPython's QSBR page patches (PEP 703 "page reuse";
// Objects/obmalloc.c, _PyMem_mi_page_maybe_free and friends). The C API is
// csrc/include/nogil/alloc.h; the C implementation is this directory's .c files.
//
// # Heaps
//
// Every nogil.ThreadState has four heaps (HeapOf), as a CPython thread state does:
//
//   - Mem: raw memory (PyMem_Malloc). Its emptied pages are reused or released at once.
//   - Object: plain objects (PyObject_Malloc).
//   - GC: GC objects.
//   - GCPre: GC objects with a two-pointer pre-header.
//
// Memory comes from the kernel in 4 MiB segments (SegmentSize); a segment holds 64 KiB pages
// of blocks up to SmallMax, 512 KiB pages up to MediumMax, or one page of a block up to
// LargeMax; a bigger block gets a segment of its own (a huge block). Once a heap needs a new
// segment of small (or medium) pages while it has mostly used one, its dense segments of that
// kind are put on transparent huge pages: blocks picked at random from more memory than the
// TLB covers with 4 KiB pages stop missing it, and a small heap keeps 4 KiB pages and a small
// resident set (SetHugepages, NOGIL_HUGEPAGES, Stats.SegmentsHugepage).
//
// # QSBR-gated reuse
//
// In the three object heaps, a page whose last block is freed gets a QSBR goal instead of
// going back to its segment: until every thread state attached at that time has reported a
// quiescent state (nogil.ThreadState.QuiescentState, Checkpoint) or detached, the page stays
// in its heap and serves only its own size class, and the first Kind().Prefix() bytes of its
// blocks (ObjectPrefix, GCPrePrefix: the object header a racing reader may load) keep what
// their last user wrote. Heap.Collect releases the pages whose goal is reached. Stats shows
// the waiting pages (PagesWaiting) and the counters of the mechanism. The Mem heap is not
// gated.
//
// # Threads
//
// A Heap belongs to its ThreadState's bound goroutine, which allocates from it (Malloc,
// Calloc, Realloc), frees into it (Heap.Free) and collects it while the state is attached;
// the Go fast paths check this with a goroutine token, as the thread-state methods do, and
// other goroutines get an error matching nogil.ErrWrongThread. Any goroutine, with or
// without a ThreadState, frees any block with the package-level Free. Another goroutine may
// read a heap (Heap.Stats, Heap.Visit) only inside Interpreter.StopTheWorld.
//
// Small allocations and the owner's frees are Go code on the allocator's C memory (the
// Go spellings of alloc.h's inline ng_mi_heap_malloc and ng_mi_free; a layout test keeps
// them in step with C): a few nanoseconds, no cgo call while the size class has free
// blocks. Refills, large blocks, other threads' blocks and emptied pages call into C.
//
// # Thread exit, Release and fork
//
// When a ThreadState is released, or its goroutine returns without Release (its OS thread
// exits and the thread's exit releases the state), its heaps are abandoned to the
// Interpreter: segments that still hold live blocks or waiting pages go to the
// interpreter's abandoned pool (Stats.PagesAbandoned, AbandonedVisit), empty ones back to
// the kernel. The blocks stay valid: any goroutine may go on using and freeing them, and a
// heap of the same kind takes the segments over when it needs a page or in Collect(true).
// The Heap values of a released state return errors matching nogil.ErrReleased. When the
// Interpreter is closed, every segment it still owns is unmapped: blocks must not be used
// or freed after Interpreter.Close (the nogil_debug build's Free returns ErrNotAllocated for
// them; elsewhere it is undefined).
//
// In the child of fork() (which can run only C in a Go process) the surviving thread adopts
// the segments of the threads that did not survive.
//
// # Debug build
//
// Built with the nogil_debug tag, the allocator checks every free: Free and Heap.Free return
// ErrNotAllocated for a pointer it did not hand out and ErrDoubleFree for a block already
// free, without touching the memory. Double frees are found on every goroutine, racing ones
// included (one of two concurrent frees of a block succeeds): that build keeps a live bit per
// block and sends every Heap.Malloc to C, which sets it (see Heap.Free). Otherwise, as with free(3), such a
// free is undefined.
package mimalloc_shim
