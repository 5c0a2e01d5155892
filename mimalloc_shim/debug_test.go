//go:build nogil_debug

package mimalloc_shim

import (
	"errors"
	"testing"
	"time"
	"unsafe"

	"github.com/nogil-go/nogil"
)

// The nogil_debug build checks every free: a double free and a pointer the allocator did
// not hand out are errors, from Heap.Free and from the package-level Free, on the owner's
// goroutine and on others, and the heap is unharmed.
func TestDebugCheckedFrees(t *testing.T) {
	deadline(t, 60*time.Second)
	in := newInterp(t)
	g := startBound(t, in, true)
	for _, kind := range kinds {
		t.Run(kind.String(), func(t *testing.T) {
			var h *Heap
			var p, q unsafe.Pointer
			g.run(func(ts *nogil.ThreadState) {
				h = heap(t, ts, kind)
				p, _ = h.Malloc(64)
				q, _ = h.Malloc(64)
				must(t, "Free", h.Free(p))
				err := h.Free(p)
				wantErr(t, "Heap.Free twice", err, ErrDoubleFree, "Free", "double free")
				if !errors.Is(err, nogil.ErrInvalid) {
					t.Errorf("double free error %v does not match nogil.ErrInvalid", err)
				}
				wantErr(t, "Free twice", Free(p), ErrDoubleFree)
				wantErr(t, "Heap.Free of an interior pointer", h.Free(unsafe.Add(q, 8)), ErrNotAllocated, "not allocated by this allocator")
			})
			// From a goroutine without a thread state.
			wantErr(t, "Free of an interior pointer (other goroutine)", Free(unsafe.Add(q, 16)), ErrNotAllocated)
			// A double free on another goroutine (not the owner's thread) is found too, and the
			// heap stays consistent: the block comes back once.
			var r, keep unsafe.Pointer
			g.run(func(ts *nogil.ThreadState) {
				r, _ = h.Malloc(64) // Heap.Malloc's fast path would skip the live bit
				keep, _ = h.Malloc(64)
			})
			must(t, "Free (other goroutine)", Free(r))
			wantErr(t, "Free twice (other goroutine)", Free(r), ErrDoubleFree, "double free")
			errs := make(chan error, 2)
			for range 2 {
				go func() { errs <- Free(r) }()
			}
			for range 2 {
				wantErr(t, "Free twice (third goroutine)", <-errs, ErrDoubleFree)
			}
			g.run(func(ts *nogil.ThreadState) {
				must(t, "Collect", h.Collect(false))
				if s := stats(t, h); s.BlocksInUse != 2 { // q and keep
					t.Errorf("%d blocks in use after the rejected frees, want 2", s.BlocksInUse)
				}
				seen := map[unsafe.Pointer]bool{q: true, keep: true}
				var got []unsafe.Pointer
				for range 8 {
					b, err := h.Malloc(64)
					if !must(t, "Malloc", err) {
						return
					}
					if seen[b] {
						t.Errorf("Malloc handed out %p twice", b)
					}
					seen[b] = true
					got = append(got, b)
				}
				for _, b := range got {
					must(t, "Free", h.Free(b))
				}
				must(t, "Free", h.Free(keep))
			})
			foreign := libcMalloc(256)
			wantErr(t, "Free of a libc pointer", Free(foreign), ErrNotAllocated, "not allocated by this allocator")
			libcFree(foreign)
			// A block of a huge segment, interior.
			g.run(func(ts *nogil.ThreadState) {
				big, err := h.Malloc(LargeMax + 100)
				if !must(t, "Malloc(huge)", err) {
					return
				}
				wantErr(t, "Heap.Free of a huge block's interior", h.Free(unsafe.Add(big, 4096)), ErrNotAllocated)
				must(t, "Free(huge)", h.Free(big))
				// Freed, the huge segment is unmapped (Mem) or waits for its goal (object
				// heaps): not allocated, or a double free.
				err = h.Free(big)
				if !errors.Is(err, ErrNotAllocated) && !errors.Is(err, ErrDoubleFree) {
					t.Errorf("Heap.Free of a freed huge block = %v", err)
				}
				// Another goroutine's double free of a huge block is found too.
				big, _ = h.Malloc(LargeMax + 100)
				must(t, "Free(huge)", Free(big))
				if kind != Mem {
					freed := make(chan error)
					go func() { freed <- Free(big) }()
					wantErr(t, "Free of a freed huge block (other goroutine)", <-freed, ErrDoubleFree)
				}
				must(t, "Free", h.Free(q))
				if s := stats(t, h); s.BlocksInUse != 0 {
					t.Errorf("%d blocks in use after the rejected frees", s.BlocksInUse)
				}
			})
		})
	}
}

// The goroutine that owns an object heap frees its blocks only while its ThreadState is
// attached (a StopTheWorld walker may read the page the local free writes): detached, Free
// returns an error matching nogil.ErrState (not ErrDoubleFree) and leaves the block
// allocated; Mem blocks are freed. Before, the detached free went through.
func TestDebugDetachedOwnerFreeIsRefused(t *testing.T) {
	deadline(t, 60*time.Second)
	in := newInterp(t)
	g := startBound(t, in, true)
	g.run(func(ts *nogil.ThreadState) {
		obj, mem := heap(t, ts, Object), heap(t, ts, Mem)
		p, _ := obj.Malloc(64)
		m, _ := mem.Malloc(64)
		must(t, "Detach", ts.Detach())
		err := Free(p)
		wantErr(t, "Free of an object block while detached", err, nogil.ErrState, "detached", "Attach first")
		if errors.Is(err, ErrDoubleFree) {
			t.Errorf("refused detached free %v matches ErrDoubleFree", err)
		}
		must(t, "Free of a Mem block while detached", Free(m))
		must(t, "Attach", ts.Attach())
		must(t, "Free once attached", obj.Free(p))
		wantErr(t, "Free twice", obj.Free(p), ErrDoubleFree)
	})
}
