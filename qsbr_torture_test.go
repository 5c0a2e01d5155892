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

// A versioned object in C memory, read by lock-free readers (liburcu's rcutorture in
// miniature). live and live2 are the first two words on purpose: glibc's free() overwrites
// them (tcache link and key), so a FreeDelayed that frees too early shows up as a bad magic
// even without poisoning.
type tortureObject struct {
	live, live2 uint64
	version     uint64
	age         uint64 // grace periods completed since it was retired (Barrier-aged ones)
	data        [4]uint64
}

const (
	tortureLive   = 0x6c697665_6f626a31 // "liveobj1"
	torturePoison = 0xdeaddeaddeaddead
)

func newTortureObject(version uint64) *tortureObject {
	o := (*tortureObject)(ctest.Alloc(int(unsafe.Sizeof(tortureObject{}))))
	o.version = version
	for i := range o.data {
		o.data[i] = version*7 + uint64(i)
	}
	atomic.StoreUint64(&o.live2, tortureLive)
	atomic.StoreUint64(&o.live, tortureLive) // published after the fields by cur.Store anyway
	return o
}

// poisonAndFree is what a reclamation does to an object: any reader still holding it sees
// the poison (or, after the free, glibc's words).
func (o *tortureObject) poisonAndFree() {
	atomic.StoreUint64(&o.live, torturePoison)
	atomic.StoreUint64(&o.live2, torturePoison)
	atomic.StoreUint64(&o.age, 1<<62)
	for i := range o.data {
		atomic.StoreUint64(&o.data[i], torturePoison)
	}
	ctest.Free(unsafe.Pointer(o))
}

// check returns "" if o is a live, consistent object that has not aged.
func (o *tortureObject) check() string {
	if atomic.LoadUint64(&o.live) != tortureLive || atomic.LoadUint64(&o.live2) != tortureLive {
		return "poisoned or freed"
	}
	v := atomic.LoadUint64(&o.version)
	for i := range o.data {
		if atomic.LoadUint64(&o.data[i]) != v*7+uint64(i) {
			return "torn or overwritten data"
		}
	}
	if atomic.LoadUint64(&o.age) != 0 {
		return "survived a grace period while a reader held it"
	}
	return ""
}

// Readers (bound, attached goroutines) follow a pointer to versioned C objects and check
// each one for poison, consistency, age and version order while they hold it; writers
// replace the object and retire the old one in three ways: CallDelayed (poison, then free),
// FreeDelayed (free() clobbers it), and Barrier-based aging (age++ after each barrier, free
// after two). Readers report quiescent states (Checkpoint, QuiescentState), detach and
// re-attach, and sometimes exit their goroutine without Release. Run it under -race and with
// -tags nogil_torture (4-entry chunks, an advance every second retirement, sequences that
// wrap, random yields in the C core).
func TestQSBRTorture(t *testing.T) {
	deadline(t, 120*time.Second)
	duration := time.Second
	if testing.Short() {
		duration = 200 * time.Millisecond
	}
	in := newInterp(t)
	start := stats(t, in)

	var cur atomic.Pointer[tortureObject]
	cur.Store(newTortureObject(1))
	var stop atomic.Bool
	var reads, retired, reclaimed, readerExits atomic.Int64
	var failures atomic.Int32
	fail := func(format string, args ...any) {
		if failures.Add(1) <= 10 {
			t.Errorf(format, args...)
		}
	}

	const readers, writers = 3, 2
	var wg sync.WaitGroup
	reader := func(id int) {
		defer wg.Done()
		for generation := 0; !stop.Load(); generation++ {
			exitLocked := generation%3 == 2 // then the goroutine returns without Release
			done := make(chan struct{})
			go func() {
				defer close(done)
				ts, err := in.Bind()
				if !must(t, "reader Bind", err) || !must(t, "reader Attach", ts.Attach()) {
					return
				}
				var last uint64
				for i := 0; i < 2000 && !stop.Load(); i++ {
					o := cur.Load()
					v := atomic.LoadUint64(&o.version)
					if msg := o.check(); msg != "" {
						fail("reader %d: object version %d at first sight: %s", id, v, msg)
						return
					}
					if v < last {
						fail("reader %d: version went back from %d to %d", id, last, v)
					}
					last = v
					if i%16 == 0 {
						runtime.Gosched() // hold it across a reschedule
					}
					if msg := o.check(); msg != "" {
						fail("reader %d: object version %d while held: %s", id, v, msg)
						return
					}
					reads.Add(1)
					switch {
					case i%97 == 0:
						must(t, "reader Detach", ts.Detach())
						must(t, "reader Attach", ts.Attach())
					case i%2 == 0:
						must(t, "reader QuiescentState", ts.QuiescentState())
					default:
						must(t, "reader Checkpoint", ts.Checkpoint())
					}
				}
				if exitLocked {
					readerExits.Add(1)
					return // locked: the thread exits and releases the state
				}
				must(t, "reader Release", ts.Release())
			}()
			<-done
		}
	}
	writer := func(id int) {
		defer wg.Done()
		withState(t, in, true, func(ts *nogil.ThreadState) {
			var aging []*tortureObject
			for i := 0; !stop.Load(); i++ {
				// Versions increase in publication order, also with two writers.
				var old *tortureObject
				for {
					old = cur.Load()
					o := newTortureObject(atomic.LoadUint64(&old.version) + 1)
					if cur.CompareAndSwap(old, o) {
						break
					}
					ctest.Free(unsafe.Pointer(o)) // never published
				}
				retired.Add(1)
				switch i % 3 {
				case 0:
					must(t, "CallDelayed", ts.CallDelayed(func() {
						old.poisonAndFree()
						reclaimed.Add(1)
					}, unsafe.Sizeof(*old)))
				case 1:
					must(t, "FreeDelayed", ts.FreeDelayed(unsafe.Pointer(old), unsafe.Sizeof(*old)))
					reclaimed.Add(1)
				case 2:
					aging = append(aging, old)
				}
				if i%64 == 63 {
					// A barrier is a grace period: everything retired before it has aged.
					must(t, "Barrier", ts.Barrier())
					kept := aging[:0]
					for _, o := range aging {
						if atomic.AddUint64(&o.age, 1) >= 2 {
							o.poisonAndFree()
							reclaimed.Add(1)
						} else {
							kept = append(kept, o)
						}
					}
					aging = kept
				}
				must(t, "writer Checkpoint", ts.Checkpoint())
			}
			// The rest: one barrier ages, the next frees.
			must(t, "Barrier", ts.Barrier())
			for _, o := range aging {
				o.poisonAndFree()
				reclaimed.Add(1)
			}
		})
	}
	for r := 0; r < readers; r++ {
		wg.Add(1)
		go reader(r)
	}
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go writer(w)
	}
	time.Sleep(duration)
	// On a loaded machine the first locked exits (every third reader generation) may come
	// later than the planned duration: run on until one did, within a generous bound.
	for deadline := time.Now().Add(30 * time.Second); readerExits.Load() == 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	stop.Store(true)
	wg.Wait()

	withState(t, in, true, func(ts *nogil.ThreadState) { must(t, "Barrier", ts.Barrier()) })
	cur.Load().poisonAndFree()
	end := stats(t, in)
	if r, c := retired.Load(), reclaimed.Load(); r != c || r == 0 {
		t.Errorf("%d objects retired, %d reclaimed", r, c)
	}
	if end.DelayedItems != 0 {
		t.Errorf("%d delayed items left after the final barrier", end.DelayedItems)
	}
	if reads.Load() == 0 || readerExits.Load() == 0 {
		t.Errorf("%d reads, %d reader goroutines exited locked: the run exercised nothing", reads.Load(), readerExits.Load())
	}
	if end.QSBRSlots != start.QSBRSlots && !waitFor(10*time.Second, func() bool {
		return stats(t, in).QSBRSlots == start.QSBRSlots
	}) {
		t.Errorf("QSBR slots %d -> %d after the run", start.QSBRSlots, stats(t, in).QSBRSlots)
	}
	// nogil_torture starts 1000 advances before 2^64: a run with more advances wraps.
	if start.WriteSeq > 1<<63 && end.Advances-start.Advances > 1100 && end.WriteSeq > start.WriteSeq {
		t.Errorf("torture build: %d advances but the write sequence did not wrap (%#x -> %#x)",
			end.Advances-start.Advances, start.WriteSeq, end.WriteSeq)
	}
	t.Logf("%d reads, %d objects retired, %d reader exits, %d advances, write sequence %#x -> %#x",
		reads.Load(), retired.Load(), readerExits.Load(), end.Advances-start.Advances, start.WriteSeq, end.WriteSeq)
}
