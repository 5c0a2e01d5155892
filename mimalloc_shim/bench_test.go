package mimalloc_shim

import (
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
