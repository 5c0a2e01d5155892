package mimalloc_shim

import (
	"fmt"
	"runtime"
	"testing"
	"unsafe"

	"github.com/nogil-go/nogil"
)

// benchHeap runs f with an attached state's heap of kind on a bound goroutine. One 64-byte
// block stays allocated throughout, so that the pair's free never empties its page (which
// would retire it, a cgo call, on every iteration).
func benchHeap(b *testing.B, kind HeapKind, f func(h *Heap)) {
	in, err := nogil.NewInterpreter()
	if err != nil {
		b.Fatal(err)
	}
	defer in.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		ts, err := in.Bind()
		if err != nil {
			b.Error(err)
			return
		}
		defer ts.Release()
		if err := ts.Attach(); err != nil {
			b.Error(err)
			return
		}
		h, err := HeapOf(ts, kind)
		if err != nil {
			b.Error(err)
			return
		}
		hold, _ := h.Malloc(64)
		f(h)
		h.Free(hold)
	}()
	<-done
}

var sink unsafe.Pointer

// A Malloc+Free pair of 64 bytes: the Go fast paths (no cgo call), the C inline functions
// through one cgo call each (what a wrapper without Go fast paths costs), and Go's own new.
func BenchmarkMallocFree64(b *testing.B) {
	for _, c := range []struct {
		name string
		kind HeapKind
	}{{"go-fast-path", Mem}, {"go-fast-path-object", Object}} {
		b.Run(c.name, func(b *testing.B) {
			benchHeap(b, c.kind, func(h *Heap) {
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					p, _ := h.Malloc(64)
					h.Free(p)
				}
			})
		})
	}
	b.Run("cgo-per-call", func(b *testing.B) {
		benchHeap(b, Mem, func(h *Heap) {
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				cFreeRet(cMalloc(h, 64))
			}
		})
	})
	b.Run("package-Free", func(b *testing.B) {
		benchHeap(b, Mem, func(h *Heap) {
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				p, _ := h.Malloc(64)
				Free(p)
			}
		})
	})
	b.Run("go-new", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			sink = unsafe.Pointer(new([64]byte))
		}
		runtime.KeepAlive(sink)
	})
}

// HeapOf on a state whose Heap is cached.
func BenchmarkHeapOfCached(b *testing.B) {
	in, err := nogil.NewInterpreter()
	if err != nil {
		b.Fatal(err)
	}
	defer in.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		ts, _ := in.Bind()
		defer ts.Release()
		h, _ := HeapOf(ts, Object)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			HeapOf(ts, Object)
		}
		runtime.KeepAlive(h)
	}()
	<-done
}

// Replace-in-window on the Object heap, as `nogil allocbench` runs it in C: the heap keeps W
// live blocks of 16-256 B; an op checks and frees the block of a random slot (Heap.Free) and
// allocates a new one (Heap.Malloc), writing its first and last words. A checkpoint every
// 1,024 ops, as an eval breaker would pass, lets emptied pages come back. At W = 100,000 the
// blocks (about 13 MiB) are mostly cache misses when freed; at W = 1,024 they stay cached.
func BenchmarkWindow(b *testing.B) {
	for _, w := range []int{1024, 100000} {
		b.Run(fmt.Sprintf("W=%d", w), func(b *testing.B) {
			benchHeap(b, Object, func(h *Heap) {
				benchWindow(b, h, w)
			})
		})
	}
}

type windowSlot struct {
	p   unsafe.Pointer
	tag uint64
}

func benchWindow(b *testing.B, h *Heap, w int) {
	rng := uint64(1)
	next := func() uint64 { // splitmix64, as allocbench
		rng += 0x9e3779b97f4a7c15
		z := rng
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
		z = (z ^ (z >> 27)) * 0x94d049bb133111eb
		return z ^ (z >> 31)
	}
	size := func(r uint64) uintptr { return 16 + uintptr(((r>>32)*(256-16+1))>>32) }
	put := func(s *windowSlot, p unsafe.Pointer, n uintptr, tag uint64) {
		tag = tag<<16 | uint64(n)
		*(*uint64)(p) = tag
		*(*uint64)(unsafe.Add(p, n-8)) = ^tag
		s.p, s.tag = p, tag
	}
	slots := make([]windowSlot, w)
	serial := uint64(0)
	for i := range slots {
		n := size(next())
		p, err := h.Malloc(n)
		if err != nil {
			b.Error(err) // not Fatal: this is the bound goroutine, not the benchmark's
			return
		}
		serial++
		put(&slots[i], p, n, serial)
	}
	ts := h.ThreadState()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r := next()
		s := &slots[int(((r&0xffffffff)*uint64(w))>>32)]
		n := uintptr(s.tag & 0xffff)
		if *(*uint64)(s.p) != s.tag || *(*uint64)(unsafe.Add(s.p, n-8)) != ^s.tag {
			b.Errorf("block %p: tag %#x, want %#x", s.p, *(*uint64)(s.p), s.tag)
			return
		}
		h.Free(s.p)
		n = size(r)
		p, err := h.Malloc(n)
		if err != nil {
			b.Error(err)
			return
		}
		serial++
		put(s, p, n, serial)
		if i&1023 == 1023 {
			ts.Checkpoint()
		}
	}
	b.StopTimer()
	for i := range slots {
		h.Free(slots[i].p)
	}
}
