package mimalloc_shim

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/nogil-go/nogil"
)

func bytesOf(p unsafe.Pointer, n uintptr) []byte { return unsafe.Slice((*byte)(p), n) }

// patternAt reports whether fill writes byte i of an n-byte block: every byte of blocks up
// to 64 KiB and of the first and last 16 KiB of bigger ones, every 251st byte in between
// (huge blocks would make the test slow under the race detector otherwise).
func patternAt(i, n uintptr) bool {
	return n <= 64<<10 || i < 16<<10 || i >= n-16<<10 || i%251 == 0
}

func fill(p unsafe.Pointer, n uintptr, seed byte) {
	b := bytesOf(p, n)
	for i := uintptr(0); i < n; i++ {
		if patternAt(i, n) {
			b[i] = seed + byte(i*7)
		} else if i%251 == 1 {
			i += 249
		}
	}
}

// check returns the first offset below n whose byte is not what fill(seed) wrote, or -1.
func check(p unsafe.Pointer, n uintptr, seed byte) int { return checkUpTo(p, n, n, seed) }

// checkUpTo checks the bytes below upto of a block filled as an n-byte block.
func checkUpTo(p unsafe.Pointer, upto, n uintptr, seed byte) int {
	b := bytesOf(p, upto)
	for i := uintptr(0); i < upto; i++ {
		if patternAt(i, n) {
			if b[i] != seed+byte(i*7) {
				return int(i)
			}
		} else if i%251 == 1 {
			i += 249
		}
	}
	return -1
}

// Blocks from the Go fast path are freed by C's inline ng_mi_free and vice versa, and an
// interleaving of Go and C allocations and frees on one heap keeps the counts of C's page
// descriptors, the Go view and the heap's statistics in agreement.
func TestGoAndCAgree(t *testing.T) {
	deadline(t, 60*time.Second)
	in := newInterp(t)
	g := startBound(t, in, true)
	for _, kind := range kinds {
		t.Run(kind.String(), func(t *testing.T) {
			g.run(func(ts *nogil.ThreadState) {
				h := heap(t, ts, kind)
				base := stats(t, h)
				rng := rand.New(rand.NewPCG(1, uint64(kind)))
				live := map[unsafe.Pointer]uintptr{} // block -> usable size
				var order []unsafe.Pointer
				var goAllocs, cAllocs, goFrees, cFrees int
				free := func(i int) {
					p := order[i]
					order[i] = order[len(order)-1]
					order = order[:len(order)-1]
					delete(live, p)
					if rng.IntN(2) == 0 {
						must(t, "Heap.Free", h.Free(p))
						goFrees++
					} else if st := cFree(p); st != 0 {
						t.Fatalf("C ng_mi_free = %d", st)
					} else {
						cFrees++
					}
				}
				for i := 0; i < 20000; i++ {
					if len(order) > 0 && rng.IntN(5) < 2 {
						free(rng.IntN(len(order)))
						continue
					}
					size := uintptr(rng.IntN(int(DirectMax) + 1))
					var p unsafe.Pointer
					if rng.IntN(2) == 0 {
						var err error
						if p, err = h.Malloc(size); err != nil {
							t.Fatalf("Malloc(%d): %v", size, err)
						}
						goAllocs++
					} else {
						if p = cMalloc(h, size); p == nil {
							t.Fatalf("C ng_mi_heap_malloc(%d) = NULL", size)
						}
						cAllocs++
					}
					if _, dup := live[p]; dup {
						t.Fatalf("block %p handed out twice", p)
					}
					live[p] = UsableSize(p)
					order = append(order, p)
				}
				// Every live block's page: the Go view and C agree on the count.
				var bytes uint64
				for p, n := range live {
					if got, want := segmentOf(p).pageOf(p).used, cPageUsed(p); got != want {
						t.Fatalf("page of %p: Go used %d, C used %d", p, got, want)
					}
					bytes += uint64(n)
				}
				s := stats(t, h)
				if s.BlocksInUse != base.BlocksInUse+uint64(len(live)) || s.BytesInUse != base.BytesInUse+bytes {
					t.Errorf("Stats: %d blocks / %d bytes in use, want %d / %d", s.BlocksInUse, s.BytesInUse,
						base.BlocksInUse+uint64(len(live)), base.BytesInUse+bytes)
				}
				for len(order) > 0 {
					free(len(order) - 1)
				}
				if s := stats(t, h); s.BlocksInUse != base.BlocksInUse || s.BytesInUse != base.BytesInUse {
					t.Errorf("after freeing everything: %d blocks / %d bytes in use, want %d / %d",
						s.BlocksInUse, s.BytesInUse, base.BlocksInUse, base.BytesInUse)
				}
				t.Logf("Go malloc %d, C malloc %d, Go free %d, C free %d", goAllocs, cAllocs, goFrees, cFrees)
			})
		})
	}
}

// randomSize returns mostly small sizes, some medium, large and huge ones.
func randomSize(rng *rand.Rand) uintptr {
	switch r := rng.IntN(100); {
	case r < 60:
		return uintptr(rng.IntN(int(DirectMax) + 1))
	case r < 80:
		return DirectMax + uintptr(rng.IntN(int(SmallMax-DirectMax)+1))
	case r < 93:
		return SmallMax + uintptr(rng.IntN(int(MediumMax-SmallMax)+1))
	case r < 99:
		return MediumMax + uintptr(rng.IntN(int(LargeMax-MediumMax)+1))
	}
	// Huge blocks are fresh mappings: every page of one costs a page fault when filled.
	return LargeMax + 1 + uintptr(rng.IntN(int(LargeMax)))
}

// Every block holds what was written into it while other blocks come and go, Calloc's
// blocks are zero and Realloc keeps the contents, for random sizes of every page kind.
func TestPatternRandomSizes(t *testing.T) {
	deadline(t, 120*time.Second)
	in := newInterp(t)
	g := startBound(t, in, true)
	for _, kind := range kinds {
		t.Run(kind.String(), func(t *testing.T) {
			g.run(func(ts *nogil.ThreadState) {
				h := heap(t, ts, kind)
				base := stats(t, h)
				rng := rand.New(rand.NewPCG(2, uint64(kind)))
				type block struct {
					p    unsafe.Pointer
					size uintptr
					seed byte
				}
				var live []block
				verify := func(b block, when string) {
					if off := check(b.p, b.size, b.seed); off >= 0 {
						t.Fatalf("%s: block %p (%d bytes) corrupted at offset %d", when, b.p, b.size, off)
					}
				}
				var huge uint64
				for i := 0; i < 3000; i++ {
					switch op := rng.IntN(10); {
					case op < 3 && len(live) > 0:
						j := rng.IntN(len(live))
						verify(live[j], "before free")
						must(t, "Free", h.Free(live[j].p))
						live[j] = live[len(live)-1]
						live = live[:len(live)-1]
					case op < 4 && len(live) > 0:
						j := rng.IntN(len(live))
						b := live[j]
						size := randomSize(rng)
						q, err := h.Realloc(b.p, size)
						if err != nil {
							t.Fatalf("Realloc(%d -> %d): %v", b.size, size, err)
						}
						if off := checkUpTo(q, min(size, b.size), b.size, b.seed); off >= 0 {
							t.Fatalf("Realloc(%d -> %d) lost the contents at offset %d", b.size, size, off)
						}
						live[j] = block{q, size, byte(i)}
						fill(q, size, byte(i))
					default:
						size := randomSize(rng)
						var p unsafe.Pointer
						var err error
						if op == 9 {
							p, err = h.Calloc(size/8+1, 8)
							size = (size/8 + 1) * 8
							for off, c := range bytesOf(p, size) {
								if c != 0 {
									t.Fatalf("Calloc(%d): byte %d = %#x", size, off, c)
								}
							}
						} else {
							p, err = h.Malloc(size)
						}
						if err != nil {
							t.Fatalf("allocating %d bytes: %v", size, err)
						}
						if us := UsableSize(p); us < size {
							t.Fatalf("UsableSize = %d for a %d-byte request", us, size)
						}
						fill(p, size, byte(i))
						live = append(live, block{p, size, byte(i)})
					}
					// Bound the memory: about 64 MiB of live blocks at most.
					for len(live) > 400 {
						verify(live[0], "trim")
						must(t, "Free", h.Free(live[0].p))
						live = live[1:]
					}
				}
				for _, b := range live {
					verify(b, "end")
					if b.size > LargeMax {
						huge++
					}
				}
				s := stats(t, h)
				if s.BlocksInUse != base.BlocksInUse+uint64(len(live)) || s.HugeBlocks != base.HugeBlocks+huge {
					t.Errorf("Stats: %d blocks, %d huge; want %d, %d", s.BlocksInUse, s.HugeBlocks,
						base.BlocksInUse+uint64(len(live)), base.HugeBlocks+huge)
				}
				for _, b := range live {
					must(t, "Free", h.Free(b.p))
				}
				must(t, "Collect", h.Collect(false))
				if s := stats(t, h); s.BlocksInUse != base.BlocksInUse || s.HugeBlocks != base.HugeBlocks {
					t.Errorf("after freeing everything: %d blocks, %d huge in use", s.BlocksInUse, s.HugeBlocks)
				}
			})
		})
	}
}

// Blocks allocated by one bound goroutine are freed by other goroutines (unbound ones with
// the package-level Free, a bound one through its own Heap.Free), then collected and handed
// out again by the owner.
func TestCrossGoroutineFree(t *testing.T) {
	deadline(t, 60*time.Second)
	in := newInterp(t)
	owner := startBound(t, in, true)
	other := startBound(t, in, true)
	for _, kind := range []HeapKind{Mem, Object} {
		t.Run(kind.String(), func(t *testing.T) {
			const n, freers = 8000, 4
			blocks := make([]unsafe.Pointer, n)
			var h *Heap
			var base Stats
			owner.run(func(ts *nogil.ThreadState) {
				h = heap(t, ts, kind)
				base = stats(t, h)
				for i := range blocks {
					p, err := h.Malloc(uintptr(16 + 8*(i%8)))
					if err != nil {
						t.Fatalf("Malloc: %v", err)
					}
					fill(p, 16, byte(i))
					blocks[i] = p
				}
			})
			freed := map[unsafe.Pointer]bool{}
			for _, p := range blocks {
				freed[p] = true
			}
			var wg sync.WaitGroup
			for w := 0; w < freers; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := w; i < n/2; i += freers {
						if off := check(blocks[i], 16, byte(i)); off >= 0 {
							t.Errorf("block %d corrupted at %d before its free", i, off)
						}
						must(t, "Free", Free(blocks[i]))
					}
				}()
			}
			wg.Wait()
			other.run(func(ts *nogil.ThreadState) {
				oh := heap(t, ts, kind)
				for _, p := range blocks[n/2:] {
					must(t, "other Heap.Free", oh.Free(p))
				}
			})
			owner.run(func(ts *nogil.ThreadState) {
				if err := ts.QuiescentState(); err != nil {
					t.Fatal(err)
				}
				must(t, "Collect", h.Collect(false))
				if s := stats(t, h); s.BlocksInUse != base.BlocksInUse {
					t.Errorf("after the other goroutines' frees and Collect: %d blocks in use, want %d",
						s.BlocksInUse, base.BlocksInUse)
				}
				reused := 0
				for i := range blocks {
					p, err := h.Malloc(uintptr(16 + 8*(i%8)))
					if err != nil {
						t.Fatalf("Malloc: %v", err)
					}
					if freed[p] {
						reused++
					}
					blocks[i] = p
				}
				if reused < n/2 {
					t.Errorf("only %d of %d blocks freed by other goroutines were handed out again", reused, n)
				}
				for _, p := range blocks {
					must(t, "Free", h.Free(p))
				}
				if s := stats(t, h); s.BlocksInUse != base.BlocksInUse {
					t.Errorf("end: %d blocks in use, want %d", s.BlocksInUse, base.BlocksInUse)
				}
			})
		})
	}
}

// Concurrent owners and freers: every goroutine allocates from its own heap and frees
// blocks of the others (some through Free, some through its own Heap.Free).
func TestConcurrentOwnersAndFreers(t *testing.T) {
	deadline(t, 120*time.Second)
	in := newInterp(t)
	const workers, rounds, batch = 4, 200, 64
	chans := make([]chan unsafe.Pointer, workers)
	for i := range chans {
		chans[i] = make(chan unsafe.Pointer, batch*workers)
	}
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ts, err := in.Bind()
			if !must(t, "Bind", err) {
				return
			}
			defer ts.Release()
			must(t, "Attach", ts.Attach())
			h, err := HeapOf(ts, HeapKind(w%heapKindCount))
			if !must(t, "HeapOf", err) {
				return
			}
			rng := rand.New(rand.NewPCG(3, uint64(w)))
			for r := 0; r < rounds; r++ {
				for i := 0; i < batch; i++ {
					size := uintptr(rng.IntN(2000))
					p, err := h.Malloc(size)
					if err != nil {
						t.Errorf("Malloc: %v", err)
						return
					}
					fill(p, size, byte(size))
					*(*uintptr)(p) = size // only read back for blocks >= 8 bytes
					if size < 8 {
						must(t, "Free", h.Free(p))
						continue
					}
					select {
					case chans[(w+1+i)%workers] <- p:
					default: // the receiver is behind: never block while attached
						must(t, "Heap.Free", h.Free(p))
					}
				}
			drain:
				for {
					select {
					case p := <-chans[w]:
						size := *(*uintptr)(p)
						if off := check(unsafe.Add(p, 8), size-8, byte(size)+56); off >= 0 {
							t.Errorf("received block corrupted at %d", off+8)
						}
						if r%2 == 0 {
							must(t, "Free", Free(p))
						} else {
							must(t, "Heap.Free", h.Free(p))
						}
					default:
						break drain
					}
				}
				must(t, "QuiescentState", ts.QuiescentState())
			}
		}()
	}
	wg.Wait()
	// The blocks still queued: free them from here (no thread state).
	for _, c := range chans {
		close(c)
		for p := range c {
			must(t, "Free", Free(p))
		}
	}
}

// Misuse: a Heap used from another goroutine, by a detached or released state, bad
// arguments, allocation failures, a Visit callback that touches its heap.
func TestMisuse(t *testing.T) {
	deadline(t, 60*time.Second)
	in := newInterp(t)
	owner := startBound(t, in, true)
	fresh := startBound(t, in, true)

	if _, err := HeapOf(nil, Mem); !errors.Is(err, nogil.ErrInvalid) {
		t.Errorf("HeapOf(nil) = %v", err)
	}
	// Another goroutine's HeapOf: checked by C for a state without heaps yet, by the cache
	// for one with heaps.
	_, err := HeapOf(fresh.ts, Object)
	wantErr(t, "HeapOf from another goroutine (C check)", err, nogil.ErrWrongThread)

	var h *Heap
	var p unsafe.Pointer
	owner.run(func(ts *nogil.ThreadState) {
		for _, k := range []HeapKind{-1, 4, 100} {
			_, err := HeapOf(ts, k)
			wantErr(t, fmt.Sprintf("HeapOf(kind %d)", k), err, nogil.ErrInvalid, "unknown heap kind")
		}
		h = heap(t, ts, Mem)
		if again := heap(t, ts, Mem); again != h {
			t.Errorf("HeapOf twice: %p, %p", h, again)
		}
		if o := heap(t, ts, Object); o == h || o.Kind() != Object || o.ThreadState() != ts {
			t.Errorf("HeapOf(Object) = %p kind %v", o, o.Kind())
		}
		p, _ = h.Malloc(32)
	})
	_, err = HeapOf(owner.ts, Mem)
	wantErr(t, "HeapOf from another goroutine (cached)", err, nogil.ErrWrongThread)
	_, err = h.Malloc(32)
	wantErr(t, "Malloc from another goroutine", err, nogil.ErrWrongThread, "Malloc")
	_, err = h.Malloc(DirectMax + 1)
	wantErr(t, "Malloc(large) from another goroutine", err, nogil.ErrWrongThread)
	_, err = h.Calloc(2, 8)
	wantErr(t, "Calloc from another goroutine", err, nogil.ErrWrongThread)
	_, err = h.Realloc(p, 64)
	wantErr(t, "Realloc from another goroutine", err, nogil.ErrWrongThread)
	wantErr(t, "Heap.Free from another goroutine", h.Free(p), nogil.ErrWrongThread, "package-level Free")
	wantErr(t, "Collect from another goroutine", h.Collect(false), nogil.ErrWrongThread)
	_, err = h.Stats()
	wantErr(t, "Stats from another goroutine", err, nogil.ErrWrongThread, "StopTheWorld")
	wantErr(t, "Visit from another goroutine", h.Visit(func(unsafe.Pointer, uintptr) bool { return true }),
		nogil.ErrWrongThread, "StopTheWorld")
	if UsableSize(p) < 32 {
		t.Errorf("UsableSize from another goroutine = %d", UsableSize(p))
	}

	// Inside a stop-the-world, another goroutine may read the heap. (The owner detaches
	// first: attached and idle, it would never reach the checkpoint that stops it.)
	owner.run(func(ts *nogil.ThreadState) { must(t, "Detach", ts.Detach()) })
	fresh.run(func(ts *nogil.ThreadState) {
		must(t, "StopTheWorld", in.StopTheWorld(ts, func() {
			s, err := h.Stats()
			if must(t, "Stats inside StopTheWorld", err) && s.BlocksInUse == 0 {
				t.Error("Stats inside StopTheWorld: no block in use")
			}
			found := false
			must(t, "Visit inside StopTheWorld", h.Visit(func(q unsafe.Pointer, size uintptr) bool {
				found = found || q == p
				return true
			}))
			if !found {
				t.Error("Visit inside StopTheWorld did not see the live block")
			}
		}))
	})

	owner.run(func(ts *nogil.ThreadState) {
		must(t, "Attach", ts.Attach())
		// The callback of Visit must leave its heap alone.
		var extra [3]unsafe.Pointer
		for i := range extra {
			extra[i], _ = h.Malloc(8)
		}
		defer func() {
			for _, q := range extra {
				Free(q)
			}
		}()
		n := 0
		must(t, "Visit", h.Visit(func(q unsafe.Pointer, size uintptr) bool {
			n++
			_, err := h.Malloc(8)
			wantErr(t, "Malloc inside Visit", err, nogil.ErrBusy)
			wantErr(t, "Free inside Visit", h.Free(q), nogil.ErrBusy)
			return false // stop after one
		}))
		if n != 1 {
			t.Errorf("Visit went on after the callback returned false: %d calls", n)
		}
		// A panic in the callback reaches the caller after the walk; the heap stays usable.
		func() {
			defer func() {
				if r := recover(); r != "boom" {
					t.Errorf("recover() = %v, want boom", r)
				}
			}()
			h.Visit(func(unsafe.Pointer, uintptr) bool { panic("boom") })
		}()
		q, err := h.Malloc(8)
		if must(t, "Malloc after a panicking Visit", err) {
			must(t, "Free", h.Free(q))
		}

		// Allocation failures.
		_, err = h.Malloc(^uintptr(0) - 4096)
		wantErr(t, "Malloc(huge overflow)", err, nogil.ErrNoMemory)
		_, err = h.Calloc(1<<40, 1<<40)
		wantErr(t, "Calloc overflow", err, nogil.ErrNoMemory, "overflows")
		before := stats(t, h).MmapFailures
		failMmap(1)
		_, err = h.Malloc(3 * LargeMax)
		failMmap(0)
		wantErr(t, "Malloc with the mapping refused", err, nogil.ErrNoMemory)
		if after := stats(t, h).MmapFailures; after != before+1 {
			t.Errorf("MmapFailures %d -> %d, want one more", before, after)
		}

		// Detached: no allocation.
		must(t, "Detach", ts.Detach())
		_, err = h.Malloc(32)
		wantErr(t, "Malloc while detached", err, nogil.ErrState, "Attach")
		wantErr(t, "Heap.Free while detached", h.Free(p), nogil.ErrState)
		if _, err := h.Stats(); err != nil {
			t.Errorf("Stats while detached: %v", err)
		}
		must(t, "Attach", ts.Attach())
		must(t, "Free", h.Free(p))

		// Released: every method fails, HeapOf too; the package-level Free still works for
		// the blocks that were live.
		p, _ = h.Malloc(100)
		must(t, "Release", ts.Release())
		_, err = HeapOf(ts, Mem)
		wantErr(t, "HeapOf after Release", err, nogil.ErrReleased)
		_, err = h.Malloc(8)
		wantErr(t, "Malloc after Release", err, nogil.ErrReleased)
		wantErr(t, "Heap.Free after Release", h.Free(p), nogil.ErrReleased)
		wantErr(t, "Collect after Release", h.Collect(true), nogil.ErrReleased)
		_, err = h.Stats()
		wantErr(t, "Stats after Release", err, nogil.ErrReleased)
	})
	must(t, "Free of a released state's block", Free(p))
	if err := Free(nil); err != nil {
		t.Errorf("Free(nil) = %v", err)
	}
	_, err = InterpreterStats(nil)
	wantErr(t, "InterpreterStats(nil)", err, nogil.ErrInvalid)
	err = AbandonedVisit(in, Object, func(unsafe.Pointer, uintptr) bool { return true })
	wantErr(t, "AbandonedVisit outside StopTheWorld", err, nogil.ErrState, "StopTheWorld")
	err = AbandonedVisit(in, 9, func(unsafe.Pointer, uintptr) bool { return true })
	wantErr(t, "AbandonedVisit(bad kind)", err, nogil.ErrInvalid)
}

func TestHeapKindString(t *testing.T) {
	for k, want := range map[HeapKind]string{Mem: "mem", Object: "object", GC: "gc", GCPre: "gc_pre", 7: "HeapKind(7)"} {
		if k.String() != want {
			t.Errorf("%d.String() = %q, want %q", int(k), k.String(), want)
		}
	}
	if Mem.Prefix() != 0 || Object.Prefix() != 24 || GC.Prefix() != 24 || GCPre.Prefix() != 40 {
		t.Errorf("prefixes %d %d %d %d", Mem.Prefix(), Object.Prefix(), GC.Prefix(), GCPre.Prefix())
	}
}

// A released ThreadState whose C memory is reused by a new state must not hand out the old
// state's cached Heap, even while the old Heap is still reachable.
func TestHeapCacheAfterRelease(t *testing.T) {
	deadline(t, 60*time.Second)
	in := newInterp(t)
	done := make(chan struct{})
	reused := 0
	go func() {
		defer close(done)
		old := map[unsafe.Pointer]*Heap{} // kept reachable, so their cache entries stay
		for i := 0; i < 300 && reused < 5; i++ {
			ts, err := in.Bind()
			if !must(t, "Bind", err) {
				return
			}
			must(t, "Attach", ts.Attach())
			h := heap(t, ts, Object)
			if prev := old[ts.CPtr()]; prev != nil {
				reused++
				if h == prev {
					t.Errorf("round %d: HeapOf returned the Heap of a released state at the same address", i)
				}
			}
			if h.ThreadState() != ts {
				t.Errorf("round %d: HeapOf returned another state's Heap", i)
			}
			p, err := h.Malloc(64)
			if must(t, "Malloc", err) {
				must(t, "Free", h.Free(p))
			}
			old[ts.CPtr()] = h
			must(t, "Release", ts.Release())
			_, err = h.Malloc(64)
			wantErr(t, "Malloc on the released state's Heap", err, nogil.ErrReleased)
		}
	}()
	<-done
	if reused == 0 {
		t.Skip("no thread-state address was reused in 300 rounds; the cache's identity check was not exercised")
	}
}
