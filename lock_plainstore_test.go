package nogil_test

// Stress of the Go Mutex's uncontended Unlock (a plain byte store and a look at the announced
// parkers on amd64, see Mutex.unlockOr) mixed with C threads that lock the same byte, with
// waiters that park, with hand-offs, and with a neighbouring C mutex in the same word. Go
// workers check a two-field invariant that breaks without mutual exclusion; everybody
// increments one non-atomic counter in C memory. A lost wake-up shows as a worker that makes
// no progress while waiters stay parked, which the watchdog reports (rescuing the sleepers so
// that the test fails instead of hanging).

import (
	"flag"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/nogil-go/nogil"
	"github.com/nogil-go/nogil/internal/ctest"
)

var plainStoreRounds = flag.Int("plainstore.rounds", 1,
	"rounds of TestMutexPlainStoreStress per subtest (more for a long soak)")

// plainStoreData is what the lock under test protects, in C memory: the race detector does
// not see nogil's happens-before edges (racedetector_test.go), so exclusion is checked by
// values. a and b are equal outside the critical section; a Go worker makes them unequal
// while it holds the lock, across a sleep when the hold is long.
type plainStoreData struct {
	counter int64 // incremented by Go workers and C threads
	a, b    int64
	nbCount int64 // incremented by the C threads on the neighbouring mutex
}

func TestMutexPlainStoreStress(t *testing.T) {
	cases := []struct {
		name     string
		borrowed bool
		busyWrap bool // a neighbour byte is non-zero when MutexAt wraps (no casAlone)
	}{
		{"NewMutex", false, false},
		{"MutexAt/neighbour-mutex", true, false},
		{"MutexAt/neighbour-busy-at-wrap", true, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for range *plainStoreRounds {
				plainStoreRound(t, tc.borrowed, tc.busyWrap)
				if t.Failed() {
					return
				}
			}
		})
	}
}

func plainStoreRound(t *testing.T, borrowed, busyWrap bool) {
	deadline(t, 120*time.Second)
	const (
		goWorkers = 3
		goIters   = 1500
		longEvery = 50   // every longEvery-th critical section of a Go worker sleeps
		cThreads  = 2    // C threads at a time, each restarted until the Go workers finish
		cIters    = 2000 // per C thread
		nbIters   = 200000
	)
	// Wiping the parked bit as a racing plain-store unlock would leaves sleepers that only
	// the announcement count finds; only a plain-store Go Unlock must (and can) then wake
	// them. A CAS unlock owes that wake to the unlocker that wiped the bit, which here is
	// the test itself: it does not wipe in that mode.
	wipe := ctest.PlainUnlock() && nogil.PlainStoreUnlock && !nogil.RaceEnabled

	dataMem := ctest.Alloc(int(unsafe.Sizeof(plainStoreData{})))
	defer ctest.Free(dataMem)
	ctest.Fill(dataMem, 0, int(unsafe.Sizeof(plainStoreData{})))
	d := (*plainStoreData)(dataMem)

	var m *nogil.Mutex
	var lockMem unsafe.Pointer // the word holding the borrowed byte and its neighbours
	if borrowed {
		lockMem = ctest.Alloc(8)
		defer ctest.Free(lockMem)
		ctest.Fill(lockMem, 0, 8)
		if busyWrap {
			ctest.Store8(unsafe.Add(lockMem, 2), 0xa5)
		}
		m = nogil.MutexAt(lockMem)
	} else {
		m = nogil.NewMutex()
	}
	p := m.CPtr()

	var nb []ctest.CounterThread
	if borrowed { // a C mutex in the next byte, locked and plain-unlocked all along
		nb = append(nb, ctest.StartCounterThread(unsafe.Add(lockMem, 1), unsafe.Pointer(&d.nbCount), nbIters))
	}

	var progress, broken, sawParked, wiped, cRuns atomic.Int64
	done := make(chan struct{})
	cDone := make(chan struct{})
	for range cThreads {
		go func() {
			defer func() { cDone <- struct{}{} }()
			for {
				select {
				case <-done:
					return
				default:
				}
				ctest.StartCounterThread(p, unsafe.Pointer(&d.counter), cIters).Join()
				cRuns.Add(1)
			}
		}()
	}
	var exited atomic.Int32
	for w := range goWorkers {
		go func() {
			defer func() {
				if exited.Add(1) == goWorkers {
					close(done)
				}
			}()
			for i := range goIters {
				if w == 0 && i%2 == 0 { // TryLock barges past parked waiters
					for !m.TryLock() {
						runtime.Gosched()
					}
				} else {
					m.Lock()
				}
				if d.a != d.b {
					broken.Add(1)
				}
				d.a++
				incr(&d.counter)
				if i%longEvery == w { // long enough that the others park (and some get handed off)
					time.Sleep(time.Duration(1+i/longEvery%2) * time.Millisecond)
					if b := ctest.Load8(p); b&2 != 0 {
						sawParked.Add(1)
						if wipe && b == 3 {
							// While the byte reads 3 nobody else writes it (mutex.c).
							ctest.Store8(p, 1)
							wiped.Add(1)
						}
					}
				}
				d.b++
				m.Unlock()
				progress.Add(1)
			}
		}()
	}

	// Watchdog: no progress for 5 s with the workers unfinished is a lost wake-up.
	last, since := int64(-1), time.Now()
	for finished := false; !finished; {
		select {
		case <-done:
			finished = true
		case <-time.After(50 * time.Millisecond):
			if n := progress.Load(); n != last {
				last, since = n, time.Now()
			} else if time.Since(since) > 5*time.Second {
				parked, b := nogil.ParkedWaiters(p), ctest.Load8(p)
				for !within(done, 10*time.Millisecond) { // rescue them so that the test reports
					nogil.UnparkAll(p)
				}
				t.Fatalf("lost wake-up: no progress for 5 s after %d critical sections, %d "+
					"waiters parked, lock byte %d, %d parked bits wiped", n, parked, b, wiped.Load())
			}
		}
	}
	for range cThreads {
		<-cDone
	}
	for _, th := range nb {
		th.Join()
	}

	m.Lock() // orders the C threads' last increments before the reads below
	got, a, b := d.counter, d.a, d.b
	m.Unlock()
	if want := int64(goWorkers*goIters) + cRuns.Load()*cIters; got != want {
		t.Errorf("counter = %d, want %d (C unlocks %s)", got, want, cUnlockMode())
	}
	if n := broken.Load(); n != 0 || a != b || a != goWorkers*goIters {
		t.Errorf("two-field invariant broken %d times; a = %d, b = %d, want both %d", n, a, b, goWorkers*goIters)
	}
	if n := cRuns.Load(); n < 2*cThreads {
		t.Errorf("C threads ran %d times, want them to overlap the Go workers (>= %d)", n, 2*cThreads)
	}
	if sawParked.Load() == 0 {
		t.Errorf("no long hold ever saw a parked waiter: the park and wake paths did not run")
	}
	if wipe && wiped.Load() == 0 {
		t.Errorf("no parked bit was wiped: the announced-sleeper wake did not run")
	}
	if v := ctest.Load8(p); v != 0 {
		t.Errorf("final lock byte = %d, want 0", v)
	}
	if n := nogil.ParkedWaiters(p); n != 0 {
		t.Errorf("%d waiters still parked at the end", n)
	}
	if borrowed {
		if got := d.nbCount; got != nbIters {
			t.Errorf("neighbouring mutex's counter = %d, want %d", got, nbIters)
		}
		if v := ctest.Load8(unsafe.Add(lockMem, 1)); v != 0 {
			t.Errorf("neighbouring mutex's byte = %d, want 0", v)
		}
		if busyWrap {
			if v := ctest.Load8(unsafe.Add(lockMem, 2)); v != 0xa5 {
				t.Errorf("untouched neighbour byte = %#x, want 0xa5", v)
			}
		}
	}
	if err := m.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	t.Logf("C unlocks %s; %d C thread runs; parked bit seen %d times, wiped %d times",
		cUnlockMode(), cRuns.Load(), sawParked.Load(), wiped.Load())
}

// Unlock's path depends on the byte: a plain LOCKED byte is stored, anything else goes to the
// CAS and parking-lot path. Unlocking an unlocked byte, one with only the parked bit (a
// woken waiter's retry pending), or a closed Mutex panics; none of them may change the byte
// or its neighbours.
func TestMutexPlainStoreUnlockStates(t *testing.T) {
	mem := ctest.Alloc(8)
	defer ctest.Free(mem)
	ctest.Fill(mem, 0, 8)
	ctest.Store8(unsafe.Add(mem, 1), 0x5a)
	ctest.Store8(unsafe.Add(mem, 3), 0xc3)
	m := nogil.MutexAt(mem)
	neighbours := func(what string) {
		t.Helper()
		if a, b := ctest.Load8(unsafe.Add(mem, 1)), ctest.Load8(unsafe.Add(mem, 3)); a != 0x5a || b != 0xc3 {
			t.Errorf("%s: neighbour bytes = %#x, %#x, want 0x5a, 0xc3", what, a, b)
		}
	}
	wantPanic := func(what, msg string) {
		t.Helper()
		got, panicked := recoverPanic(m.Unlock)
		if !panicked || got != msg {
			t.Errorf("Unlock of %s: panic %q (panicked %v), want %q", what, got, panicked, msg)
		}
	}

	wantPanic("an unlocked Mutex", "nogil: unlock of unlocked Mutex")
	ctest.Store8(mem, 2) // unlocked with the parked bit left set (nobody is parked)
	wantPanic("an unlocked Mutex with the parked bit", "nogil: unlock of unlocked Mutex")
	if b := ctest.Load8(mem); b != 2 {
		t.Errorf("byte after the refused unlock = %d, want 2", b)
	}
	ctest.Store8(mem, 0)

	m.Lock()
	m.Unlock()
	if b := ctest.Load8(mem); b != 0 {
		t.Errorf("byte after Lock, Unlock = %d, want 0", b)
	}
	neighbours("plain LOCKED")

	// LOCKED with the parked bit but nobody parked (a waiter that timed out leaves it).
	m.Lock()
	ctest.Store8(mem, 3)
	m.Unlock()
	if b := ctest.Load8(mem); b != 0 {
		t.Errorf("byte after unlocking 3 with nobody parked = %d, want 0", b)
	}
	neighbours("LOCKED|HAS_PARKED")

	// C locks, Go unlocks, and the other way round.
	if ctest.MutexLock(mem) != 0 {
		t.Fatal("C lock failed")
	}
	m.Unlock()
	m.Lock()
	if r := ctest.MutexUnlock(mem); r != 0 {
		t.Errorf("C unlock of a Go-locked mutex = %d, want NG_OK", r)
	}
	if b := ctest.Load8(mem); b != 0 {
		t.Errorf("byte after the mixed pairs = %d, want 0", b)
	}
	neighbours("mixed Go and C")

	if err := m.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	wantPanic("a closed Mutex", "nogil: Mutex used after Close or not made by NewMutex/MutexAt")
	if b := ctest.Load8(mem); b != 0 {
		t.Errorf("byte after Unlock of a closed Mutex = %d, want 0", b)
	}
	neighbours("after Close")
}
