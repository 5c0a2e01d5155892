package nogil

import (
	"sync"
	"sync/atomic"
	"testing"
	"unsafe"
)

// byteAt returns byte i of *w as the CPU lays it out in memory.
func byteAt(w *uint32, i int) byte { return *(*byte)(unsafe.Add(unsafe.Pointer(w), i)) }

func TestByteCellTouchesOnlyItsByte(t *testing.T) {
	for i := 0; i < 4; i++ {
		var w uint32 = 0xAAAAAAAA
		c := newByteCell(unsafe.Add(unsafe.Pointer(&w), i))
		if c.word != &w {
			t.Fatalf("byte %d: word %p, want %p", i, c.word, &w)
		}
		if got := c.load(); got != 0xAA {
			t.Fatalf("byte %d: load = %#x", i, got)
		}
		if c.cas(0, 1) {
			t.Fatalf("byte %d: cas from a wrong old value succeeded", i)
		}
		if !c.cas(0xAA, 1) || c.load() != 1 {
			t.Fatalf("byte %d: cas(0xAA, 1) failed or did not store", i)
		}
		if !c.casOnce(1, 0x55) || c.load() != 0x55 {
			t.Fatalf("byte %d: casOnce(1, 0x55) failed or did not store", i)
		}
		for j := 0; j < 4; j++ {
			want := byte(0xAA)
			if j == i {
				want = 0x55
			}
			if got := byteAt(&w, j); got != want {
				t.Errorf("after operating on byte %d: byte %d = %#x, want %#x", i, j, got, want)
			}
		}
	}
}

// Four goroutines each toggle their own byte of one word: cas must never fail for a reason
// other than its own byte (it retries on neighbours' changes), and no toggle is lost.
func TestByteCellNeighboursConcurrently(t *testing.T) {
	var w uint32
	const iters = 20000
	var wg sync.WaitGroup
	var failures atomic.Int32
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := newByteCell(unsafe.Add(unsafe.Pointer(&w), i))
			for k := 0; k < iters; k++ {
				if !c.cas(0, byte(i+1)) {
					failures.Add(1)
				}
				for !c.casOnce(byte(i+1), 0) { // casOnce may fail spuriously; its byte is ours
					if c.load() != byte(i+1) {
						failures.Add(1)
						break
					}
				}
			}
		}()
	}
	wg.Wait()
	if f := failures.Load(); f != 0 {
		t.Errorf("%d operations on a goroutine's own byte failed or saw it changed by a neighbour", f)
	}
	if got := atomic.LoadUint32(&w); got != 0 {
		t.Errorf("word = %#x at the end, want 0", got)
	}
}
