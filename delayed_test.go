package nogil_test

import (
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/nogil-go/nogil"
	"github.com/nogil-go/nogil/internal/ctest"
)

// A delayed call runs exactly once, and not before every state attached at its retirement
// has reported a quiescent state or detached.
func TestCallDelayedWaitsForReaders(t *testing.T) {
	deadline(t, 60*time.Second)
	in := newInterp(t)
	readers := []*boundGoroutine{startBound(t, in, true), startBound(t, in, true)}
	holding := make([]atomic.Bool, len(readers))
	for i, r := range readers {
		holding[i].Store(true)
		defer r.stop()
	}
	var ran atomic.Int32
	withState(t, in, true, func(w *nogil.ThreadState) {
		must(t, "CallDelayed", w.CallDelayed(func() {
			for i := range holding {
				if holding[i].Load() {
					t.Errorf("delayed call ran while reader %d was still attached without a report", i)
				}
			}
			ran.Add(1)
		}, 0))
		// Give the runner time to misbehave: the call runs asynchronously, so an early run
		// would otherwise be seen only after the readers let go.
		if waitFor(50*time.Millisecond, func() bool {
			must(t, "Checkpoint", w.Checkpoint())
			must(t, "ProcessDelayed", second(w.ProcessDelayed()))
			return ran.Load() != 0
		}) {
			t.Error("delayed call ran while both readers held it back")
		}
		// Reader 0 reports; reader 1 still holds the call back.
		holding[0].Store(false)
		readers[0].run(func(ts *nogil.ThreadState) { must(t, "Checkpoint", ts.Checkpoint()) })
		if waitFor(50*time.Millisecond, func() bool {
			must(t, "Checkpoint", w.Checkpoint())
			must(t, "ProcessDelayed", second(w.ProcessDelayed()))
			return ran.Load() != 0
		}) {
			t.Error("delayed call ran while reader 1 held it back")
		}
		// Reader 1 detaches, and so does reader 0: Barrier stops the world, which an attached
		// goroutine that never reaches a checkpoint would block.
		holding[1].Store(false)
		readers[1].run(func(ts *nogil.ThreadState) { must(t, "Detach", ts.Detach()) })
		readers[0].run(func(ts *nogil.ThreadState) { must(t, "Detach", ts.Detach()) })
		must(t, "Barrier", w.Barrier())
		if n := ran.Load(); n != 1 {
			t.Errorf("delayed call ran %d times by the end of the barrier, want 1", n)
		}
		must(t, "Barrier", w.Barrier())
	})
	if n := ran.Load(); n != 1 {
		t.Errorf("delayed call ran %d times, want 1", n)
	}
}

// Barrier waits for the Go calls too, not only for their hand-over to the runner.
func TestBarrierWaitsForGoCalls(t *testing.T) {
	deadline(t, 60*time.Second)
	in := newInterp(t)
	withState(t, in, true, func(ts *nogil.ThreadState) {
		for round := 0; round < 20; round++ {
			var ran atomic.Int32
			const n = 50
			for i := 0; i < n; i++ {
				must(t, "CallDelayed", ts.CallDelayed(func() {
					for j := 0; j < 20; j++ { // slow enough to be caught mid-batch
						runtime.Gosched()
					}
					ran.Add(1)
				}, 0))
				if i%10 == 0 {
					must(t, "Checkpoint", ts.Checkpoint())
				}
			}
			must(t, "Barrier", ts.Barrier())
			if got := ran.Load(); got != n {
				t.Fatalf("round %d: %d of %d delayed calls had run when Barrier returned", round, got, n)
			}
		}
	})
}

// Delayed frees and delayed C calls queued through a Go-bound state: processed by the
// barrier, counted in the statistics until then.
func TestFreeDelayedAndCCalls(t *testing.T) {
	deadline(t, 30*time.Second)
	in := newInterp(t)
	counter := ctest.Alloc(8)
	defer ctest.Free(counter)
	reader := startBound(t, in, true) // keeps everything queued until it reports
	withState(t, in, true, func(ts *nogil.ThreadState) {
		const n = 40
		for i := 0; i < n; i++ {
			must(t, "FreeDelayed", ts.FreeDelayed(ctest.Alloc(256), 256))
			if st := ctest.CallDelayedCount(ts.CPtr(), counter, 16); st != ctest.OK {
				t.Fatalf("C ng_call_delayed on the Go-bound state = %d", st)
			}
		}
		must(t, "FreeDelayed(nil)", ts.FreeDelayed(nil, 0))
		s := stats(t, in)
		if s.DelayedItems != 2*n || s.DelayedBytes < n*(256+16) {
			t.Errorf("queued: %d items, %d bytes; want %d, >= %d", s.DelayedItems, s.DelayedBytes, 2*n, n*(256+16))
		}
		if ctest.Load64(counter) != 0 {
			t.Error("a delayed C call ran while a reader held its grace period up")
		}
		reader.stop() // detaches and releases
		must(t, "Barrier", ts.Barrier())
		if got := ctest.Load64(counter); got != n {
			t.Errorf("%d of %d delayed C calls ran", got, n)
		}
		if s := stats(t, in); s.DelayedItems != 0 || s.DelayedBytes != 0 {
			t.Errorf("after the barrier: %d items, %d bytes queued", s.DelayedItems, s.DelayedBytes)
		}
	})
}

// Memory-aware processing: once the item limit is crossed, Checkpoint processes the queue by
// itself, without Barrier or ProcessDelayed.
func TestCheckpointProcessesAtLimit(t *testing.T) {
	deadline(t, 30*time.Second)
	in := newInterp(t)
	must(t, "SetLimits", in.SetLimits(8, 0, 0))
	var ran atomic.Int32
	withState(t, in, true, func(ts *nogil.ThreadState) {
		for i := 0; i < 40; i++ {
			must(t, "CallDelayed", ts.CallDelayed(func() { ran.Add(1) }, 0))
		}
		if !waitFor(10*time.Second, func() bool {
			must(t, "Checkpoint", ts.Checkpoint())
			return ran.Load() >= 32
		}) {
			t.Errorf("only %d of 40 delayed calls ran through checkpoints with an item limit of 8", ran.Load())
		}
	})
	// Big items cross the byte limit: the first checkpoint after one must process it.
	must(t, "SetLimits", in.SetLimits(1000, 1<<20, 0))
	withState(t, in, true, func(ts *nogil.ThreadState) {
		before := stats(t, in).Advances
		var big atomic.Bool
		must(t, "CallDelayed", ts.CallDelayed(func() { big.Store(true) }, 2<<20))
		if stats(t, in).Advances == before {
			t.Error("a 2 MiB delayed call did not advance the write sequence")
		}
		if !waitFor(10*time.Second, func() bool { must(t, "Checkpoint", ts.Checkpoint()); return big.Load() }) {
			t.Error("a 2 MiB delayed call was not processed by the following checkpoints")
		}
	})
}

func TestProcessDelayedCounts(t *testing.T) {
	in := newInterp(t)
	must(t, "SetLimits", in.SetLimits(1000, 1<<30, 0)) // no early advance (nogil_torture: 1 item)
	withState(t, in, true, func(ts *nogil.ThreadState) {
		for i := 0; i < 5; i++ {
			must(t, "FreeDelayed", ts.FreeDelayed(ctest.Alloc(8), 8))
		}
		if items, bytes := ts.Pending(); items != 5 || bytes != 40 {
			t.Errorf("Pending = %d items, %d bytes; want 5, 40", items, bytes)
		}
		// Below the limits nothing advances the write sequence, so the entries' goal (the
		// next sequence) is not reached yet.
		must(t, "Checkpoint", ts.Checkpoint())
		if n, err := ts.ProcessDelayed(); n != 0 || err != nil {
			t.Errorf("ProcessDelayed before any advance = %d, %v; want 0, nil", n, err)
		}
		must(t, "Advance", second(ts.Advance()))
		must(t, "Checkpoint", ts.Checkpoint()) // our own report ends the grace period
		if n, err := ts.ProcessDelayed(); n != 5 || err != nil {
			t.Errorf("ProcessDelayed after an advance and a report = %d, %v; want 5, nil", n, err)
		}
		if s := stats(t, in); s.DelayedItems != 0 {
			t.Errorf("%d delayed items left", s.DelayedItems)
		}
		if items, bytes := ts.Pending(); items != 0 || bytes != 0 {
			t.Errorf("Pending after processing = %d items, %d bytes; want 0, 0", items, bytes)
		}
	})
}

// CallDelayed functions run on the runner goroutine: there Barrier and Interpreter.Close
// would wait for themselves, so they refuse.
func TestDelayedCallCannotWaitForItself(t *testing.T) {
	deadline(t, 30*time.Second)
	in := newInterp(t)
	done := make(chan struct{})
	withState(t, in, true, func(ts *nogil.ThreadState) {
		must(t, "CallDelayed", ts.CallDelayed(func() {
			defer close(done)
			wantErr(t, "Close from a delayed call", in.Close(), nogil.ErrBusy, "another one")
			inner, err := in.Bind()
			if !must(t, "Bind in a delayed call", err) {
				return
			}
			defer inner.Release()
			must(t, "Attach in a delayed call", inner.Attach())
			wantErr(t, "Barrier from a delayed call", inner.Barrier(), nogil.ErrBusy, "wait for itself")
		}, 0))
		must(t, "Barrier", ts.Barrier())
	})
	<-done
}

// Interpreter.Close runs what is still queued, CallDelayed functions included, before it
// returns; a Go function is never lost.
func TestCloseRunsQueuedCalls(t *testing.T) {
	deadline(t, 30*time.Second)
	in, err := nogil.NewInterpreter()
	if err != nil {
		t.Fatal(err)
	}
	var ran atomic.Int32
	blocker := startBound(t, in, true) // no grace period ends before Close
	withState(t, in, true, func(ts *nogil.ThreadState) {
		for i := 0; i < 30; i++ {
			must(t, "CallDelayed", ts.CallDelayed(func() { ran.Add(1) }, 0))
		}
	})
	if waitFor(20*time.Millisecond, func() bool { return ran.Load() != 0 }) {
		t.Error("delayed calls ran while a reader held the grace period up")
	}
	blocker.run(func(ts *nogil.ThreadState) { must(t, "Detach", ts.Detach()) })
	if err := in.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if n := ran.Load(); n != 30 {
		t.Errorf("%d of 30 delayed calls ran by the time Close returned", n)
	}
	blocker.stop()
}

// Go data read by attached readers and recycled by a CallDelayed function is not a data race
// for the race detector: the readers' quiescent reports (Go fast paths, no cgo call) are
// ordered before the function. The objects are plain Go memory and nothing else orders the
// accesses: the rounds are driven through C memory, whose atomics the race detector ignores
// (Go atomics would order the readers before the writer by themselves in its model, as would a
// cgo call), and the writer waits for the runner only through loads. The readers and the
// writer go in lock step so that each recycling comes soon after the reads it must follow:
// the detector forgets old accesses. Without -race the test still checks that no reader sees
// a recycled object.
func TestCallDelayedOrdersGoData(t *testing.T) {
	deadline(t, 60*time.Second)
	in := newInterp(t)
	type object struct {
		a, b     int
		recycled bool
	}
	const readers, rounds = 2, 2000
	objects := make([]object, rounds)
	for i := range objects {
		objects[i] = object{a: i, b: 2 * i}
	}
	words := ctest.Alloc(8 * (2 + readers)) // current index, stop flag, each reader's last round
	defer ctest.Free(words)
	word := func(i int) *uint64 { return (*uint64)(unsafe.Add(words, 8*i)) }
	current, stop := word(0), word(1)
	var wg sync.WaitGroup
	for r := 0; r < readers; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			withState(t, in, true, func(ts *nogil.ThreadState) {
				seen := uint64(0)
				for atomic.LoadUint64(stop) == 0 {
					i := atomic.LoadUint64(current)
					if i == seen {
						// Holding nothing while waiting for the next round.
						if err := ts.QuiescentState(); err != nil {
							t.Errorf("QuiescentState: %v", err)
							return
						}
						runtime.Gosched()
						continue
					}
					o := &objects[i]
					a, b, recycled := o.a, o.b, o.recycled
					if recycled || b != 2*a {
						t.Errorf("reader saw a recycled object: a=%d b=%d recycled=%v", a, b, recycled)
						return
					}
					if err := ts.QuiescentState(); err != nil {
						t.Errorf("QuiescentState: %v", err)
						return
					}
					atomic.StoreUint64(word(2+r), i)
					seen = i
				}
			})
		}()
	}
	var recycled atomic.Int64
	withState(t, in, true, func(ts *nogil.ThreadState) {
		for i := 1; i < rounds; i++ {
			atomic.StoreUint64(current, uint64(i))
			for r := 0; r < readers; r++ {
				for atomic.LoadUint64(word(2+r)) != uint64(i) {
					runtime.Gosched()
				}
			}
			// Every reader has moved on from object i-1 and reported since.
			old := &objects[i-1]
			must(t, "CallDelayed", ts.CallDelayed(func() {
				old.a, old.b, old.recycled = -1, 1, true
				recycled.Add(1)
			}, unsafe.Sizeof(*old)))
			must(t, "Advance", second(ts.Advance()))
			for recycled.Load() < int64(i) {
				must(t, "Checkpoint", ts.Checkpoint())
				must(t, "ProcessDelayed", second(ts.ProcessDelayed()))
				runtime.Gosched()
			}
		}
		atomic.StoreUint64(stop, 1)
		wg.Wait()
	})
	if got := recycled.Load(); got != rounds-1 {
		t.Errorf("%d objects recycled, want %d", got, rounds-1)
	}
}

// Thread states released while their interpreter is being closed: their delayed Go calls may
// reach the runner after Close has returned, and must still run exactly once (the runner and
// its queue outlive Close until then).
func TestCloseRacingWithRelease(t *testing.T) {
	deadline(t, 120*time.Second)
	for round := 0; round < 30; round++ {
		in, err := nogil.NewInterpreter()
		if err != nil {
			t.Fatal(err)
		}
		const workers, calls = 4, 20
		var ran atomic.Int32
		var ready, released sync.WaitGroup
		start := make(chan struct{})
		for w := 0; w < workers; w++ {
			ready.Add(1)
			released.Add(1)
			go func() {
				defer released.Done()
				ts, err := in.Bind()
				if !must(t, "Bind", err) || !must(t, "Attach", ts.Attach()) {
					ready.Done()
					return
				}
				for i := 0; i < calls; i++ {
					must(t, "CallDelayed", ts.CallDelayed(func() { ran.Add(1) }, 0))
				}
				must(t, "Detach", ts.Detach()) // not attached while it waits: Close stops the world
				ready.Done()
				<-start
				must(t, "Release", ts.Release())
			}()
		}
		ready.Wait()
		close(start)
		if err := in.Close(); err != nil {
			t.Fatalf("round %d: Close: %v", round, err)
		}
		released.Wait()
		if !waitFor(10*time.Second, func() bool { return ran.Load() == workers*calls }) {
			t.Fatalf("round %d: %d of %d delayed calls ran", round, ran.Load(), workers*calls)
		}
		if waitFor(5*time.Millisecond, func() bool { return ran.Load() > workers*calls }) {
			t.Fatalf("round %d: a delayed call ran twice", round)
		}
	}
}
