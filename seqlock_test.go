package nogil_test

import (
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/nogil-go/nogil"
	"github.com/nogil-go/nogil/internal/ctest"
)

// One writer stores a pair (k, 2k) in C memory, one word at a time, sometimes yielding between
// the two stores; two readers read it optimistically. A reader must never accept a torn pair.
//
// With GOMAXPROCS=1 the goroutines interleave only at the yields inside the read and write
// windows, which makes torn reads frequent whatever the machine's load; with the default
// they also run in parallel.
func TestSeqLockReadersNeverAcceptTornPairs(t *testing.T) {
	deadline(t, 60*time.Second)
	for _, procs := range []int{1, runtime.GOMAXPROCS(0)} {
		t.Run(fmt.Sprint("GOMAXPROCS=", procs), func(t *testing.T) {
			defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(procs))
			seqlockTornPairs(t)
		})
	}
}

func seqlockTornPairs(t *testing.T) {
	s := nogil.NewSeqLock()
	closeOK(t, s)
	mem := ctest.Alloc(16)
	defer ctest.Free(mem)
	x, y := (*uint64)(mem), (*uint64)(unsafe.Add(mem, 8))
	const writes = 20000

	var stop atomic.Bool
	var wg, ready sync.WaitGroup
	var acceptedTotal atomic.Int64
	var running atomic.Int32 // readers still reading (a failing one stops)
	var accepted, retried, tornSeen [2]int
	for r := 0; r < 2; r++ {
		wg.Add(1)
		ready.Add(1)
		running.Add(1)
		go func() {
			defer wg.Done()
			defer running.Add(-1)
			ready.Done()
			for i := 0; !stop.Load(); i++ {
				seq := s.BeginRead()
				if seq&1 != 0 {
					t.Errorf("BeginRead returned odd sequence %d", seq)
					return
				}
				a := atomic.LoadUint64(x)
				if i%2 == 0 {
					// Let the writer run between the two loads. Relying on parallelism
					// alone, reads and writes hardly overlap on a loaded 2-CPU machine.
					runtime.Gosched()
				}
				b := atomic.LoadUint64(y)
				if s.Retry(seq) {
					retried[r]++
					if b != 2*a {
						tornSeen[r]++ // correctly rejected: shows that torn reads do happen here
					}
					continue
				}
				accepted[r]++
				acceptedTotal.Add(1)
				if b != 2*a {
					t.Errorf("reader %d accepted a torn pair (%d, %d) at sequence %d", r, a, b, seq)
					return
				}
			}
		}()
	}
	ready.Wait()
	// Write at least `writes` times, and until the readers have done some work alongside.
	start := time.Now()
	k := uint64(0)
	for running.Load() > 0 &&
		(k < writes || (acceptedTotal.Load() < 4000 && time.Since(start) < 10*time.Second)) {
		k++
		s.BeginWrite()
		atomic.StoreUint64(x, k)
		if k%8 == 0 {
			runtime.Gosched() // let readers run between the two stores
		}
		atomic.StoreUint64(y, 2*k)
		s.EndWrite()
		if k%8 == 4 {
			runtime.Gosched() // and between writes
		}
	}
	stop.Store(true)
	wg.Wait()
	if seq := s.BeginRead(); seq != uint32(2*k) {
		t.Errorf("final sequence = %d, want %d", seq, 2*k)
	}
	t.Logf("%d writes; readers: accepted %v, retried %v (of which torn %v)", k, accepted, retried, tornSeen)
	if acceptedTotal.Load() == 0 {
		t.Error("readers never completed a read")
	}
}

// Writers exclude each other: a non-atomic counter in C memory updated only inside
// BeginWrite/EndWrite is exact.
func TestSeqLockWritersExcludeEachOther(t *testing.T) {
	deadline(t, 30*time.Second)
	s := nogil.NewSeqLock()
	closeOK(t, s)
	counter := cCounter(t)
	const writers, iters = 4, 5000
	runParallel(writers, func(int) {
		for i := 0; i < iters; i++ {
			s.BeginWrite()
			incr(counter)
			s.EndWrite()
		}
	})
	if *counter != writers*iters {
		t.Errorf("counter = %d, want %d", *counter, writers*iters)
	}
	if seq := ctest.Load32(s.CPtr()); seq != 2*writers*iters {
		t.Errorf("sequence = %d, want %d", seq, 2*writers*iters)
	}
}

func TestSeqLockAbandonWrite(t *testing.T) {
	s := nogil.NewSeqLock()
	closeOK(t, s)
	seq := s.BeginRead()
	s.BeginWrite()
	if !s.Retry(seq) {
		t.Error("Retry false while a write is in progress")
	}
	s.AbandonWrite()
	if s.Retry(seq) {
		t.Error("Retry true after an abandoned write")
	}
	if got := ctest.Load32(s.CPtr()); got != seq {
		t.Errorf("sequence after AbandonWrite = %d, want %d", got, seq)
	}
	s.BeginWrite()
	s.EndWrite()
	if !s.Retry(seq) {
		t.Error("Retry false after a completed write")
	}
}

func TestSeqLockMisuse(t *testing.T) {
	s := nogil.NewSeqLock()
	closeOK(t, s)
	mustPanicNogil(t, "EndWrite without BeginWrite", s.EndWrite)
	mustPanicNogil(t, "AbandonWrite without BeginWrite", s.AbandonWrite)
	if seq := ctest.Load32(s.CPtr()); seq != 0 {
		t.Errorf("sequence after misuse = %d, want 0", seq)
	}
	s.BeginWrite()
	s.EndWrite()
	mustPanicNogil(t, "second EndWrite", s.EndWrite)
	if seq := ctest.Load32(s.CPtr()); seq != 2 {
		t.Errorf("sequence = %d, want 2", seq)
	}
}

func TestSeqLockClose(t *testing.T) {
	s := nogil.NewSeqLock()
	closeTwice(t, s)
	mustPanicNogil(t, "BeginWrite after Close", s.BeginWrite)
	mustPanicNogil(t, "EndWrite after Close", s.EndWrite)
	mustPanicNogil(t, "BeginRead after Close", func() { s.BeginRead() })
	mustPanicNogil(t, "SeqLockAt(nil)", func() { nogil.SeqLockAt(nil) })
}
