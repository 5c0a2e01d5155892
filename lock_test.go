package nogil_test

// CPython's Modules/_testinternalcapi/test_lock.c, re-expressed for the Go Mutex (spec 11.1),
// plus the Go API's own guarantees: timeouts, contexts, hand-off, C interoperation, Close and
// misuse.
//
// Counters protected by a nogil lock live in C memory: the race detector does not see the
// happens-before edges of nogil locks (see racedetector_test.go), and C memory is outside
// what it checks, so these tests check mutual exclusion by exact counts only.

import (
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/nogil-go/nogil"
	"github.com/nogil-go/nogil/internal/ctest"
)

// cCounter returns an int64 counter in C memory, freed at the end of the test.
func cCounter(t testing.TB) *int64 {
	p := ctest.Alloc(8)
	t.Cleanup(func() { ctest.Free(p) })
	return (*int64)(p)
}

// incr is a deliberately split read-modify-write: without mutual exclusion increments are lost.
func incr(c *int64) {
	v := *c
	*c = v + 1
}

// test_lock_basic: the byte is exactly 1 while held and exactly 0 after.
func TestMutexBasic(t *testing.T) {
	m := nogil.NewMutex()
	closeOK(t, m)
	p := m.CPtr()
	if b := ctest.Load8(p); b != 0 {
		t.Fatalf("new mutex byte = %d, want 0", b)
	}
	if m.IsLocked() {
		t.Fatal("new mutex IsLocked")
	}
	m.Lock()
	if b := ctest.Load8(p); b != 1 {
		t.Errorf("byte while held = %d, want exactly 1", b)
	}
	if !m.IsLocked() || !ctest.MutexIsLocked(p) {
		t.Error("held mutex not reported locked (Go or C)")
	}
	m.Unlock()
	if b := ctest.Load8(p); b != 0 {
		t.Errorf("byte after unlock = %d, want exactly 0", b)
	}
	if m.IsLocked() || ctest.MutexIsLocked(p) {
		t.Error("unlocked mutex reported locked")
	}
}

// test_lock_two_threads: a blocked locker sets the parked bit and parks; the byte is only
// ever 1 or 3 meanwhile. The worker sees exactly 1 while it holds the lock, 0 after.
func TestMutexTwoThreads(t *testing.T) {
	deadline(t, 30*time.Second)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	m := nogil.NewMutex()
	closeOK(t, m)
	p := m.CPtr()
	m.Lock()

	started := make(chan struct{})
	var held, after atomic.Int32
	done := goLocked(func() {
		close(started)
		m.Lock()
		held.Store(int32(ctest.Load8(p)))
		m.Unlock()
		after.Store(int32(ctest.Load8(p)))
	})
	<-started

	saw3 := false
	for start := time.Now(); time.Since(start) < 2*time.Second; time.Sleep(time.Millisecond) {
		b := ctest.Load8(p)
		if b != 1 && b != 3 {
			t.Errorf("byte while the worker waits = %d, want 1 or 3", b)
			break
		}
		if b == 3 {
			saw3 = true
			break
		}
	}
	if !saw3 {
		t.Error("the blocked locker did not set the parked bit (byte never became 3) within 2 s")
	}
	m.Unlock()
	<-done
	if h := held.Load(); h != 1 {
		t.Errorf("worker saw byte %d while holding the lock, want 1", h)
	}
	if a := after.Load(); a != 0 {
		t.Errorf("worker saw byte %d after its unlock, want 0", a)
	}
	if b := ctest.Load8(p); b != 0 {
		t.Errorf("final byte = %d, want 0", b)
	}
}

// runCounter is test_lock_counter: goroutines increment a counter under m, each signalling
// a nogil Event when done, as CPython's test does.
func runCounter(t *testing.T, goroutines, iters int, body func(i int, counter *int64)) int64 {
	t.Helper()
	m := nogil.NewMutex()
	closeOK(t, m)
	counter := cCounter(t)
	events := make([]*nogil.Event, goroutines)
	for g := range events {
		events[g] = nogil.NewEvent()
		closeOK(t, events[g])
	}
	// The WaitGroup only tells the race detector that the goroutines are done with the
	// events before Close: it does not see the Set -> Wait edge (racedetector_test.go).
	var exited sync.WaitGroup
	for g := 0; g < goroutines; g++ {
		ev := events[g]
		exited.Add(1)
		go func() {
			defer exited.Done()
			for i := 0; i < iters; i++ {
				m.Lock()
				body(i, counter)
				m.Unlock()
			}
			ev.Set()
		}()
	}
	for _, ev := range events {
		ev.Wait()
	}
	exited.Wait()
	if m.IsLocked() {
		t.Error("mutex still locked after all goroutines finished")
	}
	return *counter
}

func TestMutexCounter(t *testing.T) {
	deadline(t, 30*time.Second)
	if got := runCounter(t, 5, 10000, func(_ int, c *int64) { incr(c) }); got != 50000 {
		t.Errorf("counter = %d, want 50000", got)
	}
}

// test_lock_counter_slow: sleeping 2 ms while holding the lock pushes waiters past the 1 ms
// fairness threshold, so the hand-off path runs.
func TestMutexCounterSlow(t *testing.T) {
	deadline(t, 30*time.Second)
	got := runCounter(t, 5, 100, func(i int, c *int64) {
		incr(c)
		if i%7 == 0 {
			time.Sleep(2 * time.Millisecond)
		}
	})
	if got != 500 {
		t.Errorf("counter = %d, want 500", got)
	}
}

func TestMutexUnlockOfUnlockedPanics(t *testing.T) {
	m := nogil.NewMutex()
	closeOK(t, m)
	mustPanicNogil(t, "Unlock of a new Mutex", m.Unlock)
	m.Lock()
	m.Unlock()
	mustPanicNogil(t, "second Unlock", m.Unlock)
	if b := ctest.Load8(m.CPtr()); b != 0 {
		t.Errorf("byte after failed unlocks = %d, want 0", b)
	}
	// Still usable.
	if !m.TryLock() {
		t.Fatal("TryLock failed after the misuse")
	}
	m.Unlock()
}

func TestMutexTryLock(t *testing.T) {
	m := nogil.NewMutex()
	closeOK(t, m)
	if !m.TryLock() {
		t.Fatal("TryLock of a free mutex failed")
	}
	if b := ctest.Load8(m.CPtr()); b != 1 {
		t.Errorf("byte after TryLock = %d, want 1", b)
	}
	if m.TryLock() {
		t.Fatal("TryLock of a held mutex succeeded")
	}
	// From another goroutine too (the lock is not owned by a goroutine).
	res := make(chan bool)
	go func() { res <- m.TryLock() }()
	if <-res {
		t.Fatal("TryLock from another goroutine succeeded on a held mutex")
	}
	m.Unlock()
	go func() {
		ok := m.TryLock()
		if ok {
			m.Unlock()
		}
		res <- ok
	}()
	if !<-res {
		t.Fatal("TryLock from another goroutine failed on a free mutex")
	}
}

func TestMutexLockTimeout(t *testing.T) {
	deadline(t, 30*time.Second)
	m := nogil.NewMutex()
	closeOK(t, m)
	if !m.LockTimeout(time.Second) {
		t.Fatal("LockTimeout of a free mutex failed")
	}
	// Held (by us; the mutex is not reentrant).
	for _, d := range []time.Duration{time.Millisecond, 30 * time.Millisecond} {
		start := time.Now()
		if m.LockTimeout(d) {
			t.Fatalf("LockTimeout(%v) of a held mutex succeeded", d)
		}
		if el := time.Since(start); el < d {
			t.Errorf("LockTimeout(%v) returned after only %v", d, el)
		}
	}
	// d <= 0 is a TryLock: it must not block.
	for _, d := range []time.Duration{0, -1, nogil.Forever} {
		done := make(chan bool)
		go func() { done <- m.LockTimeout(d) }()
		select {
		case ok := <-done:
			if ok {
				t.Fatalf("LockTimeout(%v) of a held mutex succeeded", d)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("LockTimeout(%v) blocked on a held mutex (d <= 0 is documented as TryLock)", d)
		}
	}
	if n := nogil.ParkedWaiters(m.CPtr()); n != 0 {
		t.Errorf("%d waiters left parked after timeouts", n)
	}
	// Succeeds once released in time.
	go func() {
		time.Sleep(20 * time.Millisecond)
		m.Unlock()
	}()
	if !m.LockTimeout(20 * time.Second) {
		t.Fatal("LockTimeout did not get the mutex released after 20 ms")
	}
	m.Unlock()
	if b := ctest.Load8(m.CPtr()); b != 0 {
		t.Errorf("final byte = %d, want 0", b)
	}
}

// waitParked waits until n threads are parked on the mutex byte and the byte shows it.
func waitParked(t testing.TB, p unsafe.Pointer, n int) {
	t.Helper()
	if !waitFor(10*time.Second, func() bool {
		return nogil.ParkedWaiters(p) == n && ctest.Load8(p)&2 != 0
	}) {
		t.Fatalf("waiters never parked: ParkedWaiters = %d (want %d), byte = %d",
			nogil.ParkedWaiters(p), n, ctest.Load8(p))
	}
}

func TestMutexLockContextCancel(t *testing.T) {
	deadline(t, 30*time.Second)
	m := nogil.NewMutex()
	closeOK(t, m)
	p := m.CPtr()
	m.Lock()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	res := make(chan error, 1)
	go func() { res <- m.LockContext(ctx) }()
	waitParked(t, p, 1)

	cancel()
	select {
	case err := <-res:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("LockContext after cancel = %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("LockContext did not return within 10 s of the cancel (the holder still holds)")
	}
	if n := nogil.ParkedWaiters(p); n != 0 {
		t.Errorf("ParkedWaiters after cancel = %d, want 0", n)
	}
	if !m.IsLocked() {
		t.Error("cancelling a waiter unlocked the holder's mutex")
	}
	m.Unlock()
	// The canceller must not hold the mutex: another goroutine can take it.
	got := make(chan bool)
	go func() {
		ok := m.TryLock()
		if ok {
			m.Unlock()
		}
		got <- ok
	}()
	if !<-got {
		t.Errorf("TryLock failed after the holder unlocked: the cancelled LockContext left it locked (byte %d)",
			ctest.Load8(p))
	}
	if n := nogil.ParkedWaiters(p); n != 0 {
		t.Errorf("ParkedWaiters at the end = %d, want 0", n)
	}
}

func TestMutexLockContextDone(t *testing.T) {
	deadline(t, 30*time.Second)
	m := nogil.NewMutex()
	closeOK(t, m)
	m.Lock()
	defer m.Unlock()

	const d = 30 * time.Millisecond
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	err := m.LockContext(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("LockContext with a deadline = %v, want context.DeadlineExceeded", err)
	}
	if el := time.Since(start); el < d {
		t.Errorf("LockContext returned after %v, before the %v deadline", el, d)
	}

	// A context that is already done on a held mutex: fails without waiting for the holder.
	done, cancel2 := context.WithCancel(context.Background())
	cancel2()
	res := make(chan error, 1)
	go func() { res <- m.LockContext(done) }()
	select {
	case err := <-res:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("LockContext with a done context = %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("LockContext with a done context blocked on a held mutex")
	}
	if n := nogil.ParkedWaiters(m.CPtr()); n != 0 {
		t.Errorf("ParkedWaiters = %d, want 0", n)
	}

	// context.Background (never done) waits like Lock.
	go func() {
		time.Sleep(10 * time.Millisecond)
		m.Unlock()
	}()
	if err := m.LockContext(context.Background()); err != nil {
		t.Fatalf("LockContext(Background) = %v", err)
	}
}

func TestMutexLockContextNoGoroutineLeak(t *testing.T) {
	deadline(t, 30*time.Second)
	m := nogil.NewMutex()
	closeOK(t, m)
	before := runtime.NumGoroutine()
	for i := 0; i < 20; i++ {
		// Succeeds at once.
		ctx, cancel := context.WithCancel(context.Background())
		if err := m.LockContext(ctx); err != nil {
			t.Fatal(err)
		}
		// Cancelled while waiting.
		go func() {
			time.Sleep(time.Millisecond)
			cancel()
		}()
		if err := m.LockContext(ctx); !errors.Is(err, context.Canceled) {
			t.Fatalf("LockContext = %v, want Canceled", err)
		}
		// Deadline while waiting.
		tctx, tcancel := context.WithTimeout(context.Background(), time.Millisecond)
		if err := m.LockContext(tctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("LockContext = %v, want DeadlineExceeded", err)
		}
		tcancel()
		m.Unlock()
	}
	if now := waitGoroutines(before); now > before {
		t.Errorf("goroutines: %d before, %d after 60 LockContext calls", before, now)
	}
}

// Every nil LockContext means the caller holds the mutex, and no cancellation leaves it
// locked or leaves a waiter behind.
func TestMutexLockContextStress(t *testing.T) {
	deadline(t, 45*time.Second)
	m := nogil.NewMutex()
	closeOK(t, m)
	var holders atomic.Int32
	var violations atomic.Int32
	enter := func() {
		if holders.Add(1) != 1 {
			violations.Add(1)
		}
	}
	leave := func() { holders.Add(-1) }

	stop := make(chan struct{})
	holderDone := make(chan struct{})
	go func() {
		defer close(holderDone)
		for {
			select {
			case <-stop:
				return
			default:
			}
			m.Lock()
			enter()
			time.Sleep(time.Duration(rand.IntN(1500)) * time.Microsecond)
			leave()
			m.Unlock()
			time.Sleep(time.Duration(rand.IntN(200)) * time.Microsecond)
		}
	}()

	var acquired, timedOut atomic.Int32
	runParallel(4, func(int) {
		for i := 0; i < 50; i++ {
			time.Sleep(time.Duration(rand.IntN(500)) * time.Microsecond)
			ctx, cancel := context.WithTimeout(context.Background(),
				time.Duration(rand.IntN(1000))*time.Microsecond)
			err := m.LockContext(ctx)
			cancel()
			switch {
			case err == nil:
				enter()
				leave()
				m.Unlock()
				acquired.Add(1)
			case errors.Is(err, context.DeadlineExceeded):
				timedOut.Add(1)
			default:
				t.Errorf("LockContext = %v", err)
			}
		}
	})
	close(stop)
	<-holderDone

	if v := violations.Load(); v != 0 {
		t.Errorf("%d times two goroutines held the mutex at once", v)
	}
	if m.IsLocked() {
		t.Errorf("mutex left locked (byte %d)", ctest.Load8(m.CPtr()))
	}
	if n := nogil.ParkedWaiters(m.CPtr()); n != 0 {
		t.Errorf("%d waiters left parked", n)
	}
	if !m.TryLock() {
		t.Fatal("TryLock failed at the end")
	}
	m.Unlock()
	t.Logf("200 LockContext calls: %d acquired, %d timed out", acquired.Load(), timedOut.Load())
}

// A waiter that waited more than 1 ms gets the lock directly: right after the holder's
// unlock the mutex is already locked on the waiter's behalf, so a barging TryLock fails.
func TestMutexFairHandOff(t *testing.T) {
	deadline(t, 30*time.Second)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	m := nogil.NewMutex()
	closeOK(t, m)
	p := m.CPtr()
	m.Lock()

	waiter := holdLock(m)
	waitParked(t, p, 1)
	time.Sleep(3 * time.Millisecond) // the waiter is now past the 1 ms threshold
	m.Unlock()
	if m.TryLock() {
		t.Fatal("TryLock right after unlocking to a long waiter succeeded: no hand-off")
	}
	if b := ctest.Load8(p); b != 1 {
		t.Errorf("byte right after the hand-off = %d, want 1 (locked for the waiter, nobody else parked)", b)
	}
	if !within(waiter.got, 10*time.Second) {
		t.Fatal("the waiter did not get the handed-off mutex")
	}
	close(waiter.release)
	<-waiter.done
	if b := ctest.Load8(p); b != 0 {
		t.Errorf("final byte = %d, want 0", b)
	}
}

// Below the threshold there is no hand-off: the woken waiter competes, and a barging TryLock
// can win. With the threshold set to an hour, a TryLock right after Unlock must win at least
// once in 20 tries (with a hand-off it could never win).
func TestMutexNoHandOffBeforeThreshold(t *testing.T) {
	deadline(t, 30*time.Second)
	old := ctest.SetHandoffNs(int64(time.Hour))
	defer ctest.SetHandoffNs(old)
	m := nogil.NewMutex()
	closeOK(t, m)
	p := m.CPtr()

	barged := false
	for try := 0; try < 20 && !barged; try++ {
		m.Lock()
		waiter := holdLock(m)
		waitParked(t, p, 1)
		time.Sleep(2 * time.Millisecond)
		m.Unlock()
		if m.TryLock() {
			barged = true
			select {
			case <-waiter.got:
				t.Error("the waiter holds the mutex while TryLock also succeeded")
			default:
			}
			m.Unlock()
		}
		close(waiter.release)
		if !within(waiter.got, 10*time.Second) {
			t.Fatal("the waiter never got the mutex")
		}
		<-waiter.done
	}
	if !barged {
		t.Error("TryLock never barged in 20 unlocks with the hand-off threshold at 1 h: the unlock handed off anyway")
	}
}

// A contended Lock yields to other goroutines before it parks its thread in C. With one P
// the holder runs only when the waiter yields; then it unlocks, and the waiter takes the
// mutex without a cgo call. A Lock that entered C at once (or spun without yielding) would
// make one every time. The scheduler may interleave differently now and then (a GC, the race
// detector's shuffling), so one success in 20 tries is enough.
func TestMutexLockYieldsBeforeParking(t *testing.T) {
	deadline(t, 30*time.Second)
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	m := nogil.NewMutex()
	closeOK(t, m)

	withoutCgo := 0
	for range 20 {
		m.Lock()
		calls := make(chan int64, 1)
		go func() {
			before := runtime.NumCgoCall()
			m.Lock()
			n := runtime.NumCgoCall() - before
			m.Unlock()
			calls <- n // after Unlock: the mutex is closed once the test ends
		}()
		runtime.Gosched() // the waiter runs until it yields inside Lock
		m.Unlock()
		if <-calls == 0 {
			withoutCgo++
		}
	}
	if withoutCgo == 0 {
		t.Error("every contended Lock made a cgo call: it did not let the holder run first")
	}
	t.Logf("%d of 20 contended Locks took the mutex without a cgo call", withoutCgo)
}

// One mutex, one counter in C memory, incremented by C pthreads (ng_mutex_lock/unlock, non-
// atomic increments in C) and by goroutines (Lock/Unlock, non-atomic increments in Go).
func TestMutexMixedGoAndC(t *testing.T) {
	deadline(t, 45*time.Second)
	m := nogil.NewMutex()
	closeOK(t, m)
	counter := cCounter(t)
	const cThreads, goroutines, iters = 2, 2, 20000

	var threads []ctest.CounterThread
	for i := 0; i < cThreads; i++ {
		threads = append(threads, ctest.StartCounterThread(m.CPtr(), unsafe.Pointer(counter), iters))
	}
	runParallel(goroutines, func(int) {
		for i := 0; i < iters; i++ {
			m.Lock()
			incr(counter)
			m.Unlock()
		}
	})
	for _, th := range threads {
		th.Join()
	}
	m.Lock() // orders the C threads' last increments before our read
	got := *counter
	m.Unlock()
	if want := int64((cThreads + goroutines) * iters); got != want {
		t.Errorf("counter = %d, want %d (C unlocks %s)", got, want, cUnlockMode())
	}
	t.Logf("C unlocks: %s", cUnlockMode())
	if b := ctest.Load8(m.CPtr()); b != 0 {
		t.Errorf("final byte = %d, want 0", b)
	}
}

// cUnlockMode says how C's ng_mutex_unlock releases a lock in this process.
func cUnlockMode() string {
	if ctest.PlainUnlock() {
		return "plain-store"
	}
	return "CAS"
}

// C's uncontended unlock is a plain store when membarrier is available, a CAS otherwise
// (nogil/park_announce.h); Go's Unlock follows C's mode on amd64 (outside race builds) and
// uses a CAS elsewhere. Run the tests where C and Go unlock the same
// and neighbouring bytes again in a child process forced into the other C mode.
func TestMixedGoAndCOtherUnlockMode(t *testing.T) {
	if os.Getenv("NOGIL_TEST_CHILD") != "" {
		t.Skip("already the child")
	}
	deadline(t, 60*time.Second)
	env := append(os.Environ(), "NOGIL_TEST_CHILD=1")
	want := "CAS"
	if !ctest.PlainUnlock() {
		if os.Getenv("NOGIL_CAS_UNLOCK") == "" {
			t.Skip("membarrier unavailable: C unlocks always use CAS, there is no other mode")
		}
		want = "plain-store"
		env = slices.DeleteFunc(env, func(kv string) bool { return strings.HasPrefix(kv, "NOGIL_CAS_UNLOCK=") })
	} else {
		env = append(env, "NOGIL_CAS_UNLOCK=1")
	}
	cmd := exec.Command(os.Args[0], "-test.v", "-test.count=1",
		"-test.run=^(TestMutexMixedGoAndC|TestLayoutMutexEveryOffset|TestLayoutAdjacentMutexesShareWords|TestMutexTwoThreads|TestMutexFairHandOff)$")
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child with C unlocks in %s mode failed: %v\n%s", want, err, out)
	}
	if !strings.Contains(string(out), "C unlocks: "+want) {
		t.Fatalf("child did not run in %s mode:\n%s", want, out)
	}
	t.Logf("child passed with C unlocks in %s mode", want)
}

func TestMutexClose(t *testing.T) {
	m := nogil.NewMutex()
	m.Lock()
	if err := m.Close(); !errors.Is(err, nogil.ErrLocked) {
		t.Fatalf("Close of a locked mutex = %v, want ErrLocked", err)
	}
	m.Unlock() // still usable after the refused Close
	closeTwice(t, m)
	mustPanicNogil(t, "Lock after Close", m.Lock)
	mustPanicNogil(t, "Unlock after Close", m.Unlock)
	mustPanicNogil(t, "TryLock after Close", func() { m.TryLock() })
	mustPanicNogil(t, "IsLocked after Close", func() { m.IsLocked() })
	mustPanicNogil(t, "LockTimeout after Close", func() { m.LockTimeout(time.Millisecond) })
	mustPanicNogil(t, "LockContext after Close", func() { _ = m.LockContext(context.Background()) })
}

func TestMutexZeroValuePanics(t *testing.T) {
	var m nogil.Mutex
	mustPanicNogil(t, "Lock of a zero Mutex", m.Lock)
	mustPanicNogil(t, "Unlock of a zero Mutex", m.Unlock)
	mustPanicNogil(t, "TryLock of a zero Mutex", func() { m.TryLock() })
	mustPanicNogil(t, "IsLocked of a zero Mutex", func() { m.IsLocked() })
	mustPanicNogil(t, "MutexAt(nil)", func() { nogil.MutexAt(nil) })
}

// newWrapper returns a new wrapper of the nogil type named kind.
func newWrapper(kind string) closer {
	switch kind {
	case "Mutex":
		return nogil.NewMutex()
	case "Event":
		return nogil.NewEvent()
	case "Once":
		return nogil.NewOnce()
	case "RWMutex":
		return nogil.NewRWMutex()
	case "SeqLock":
		return nogil.NewSeqLock()
	case "RecursiveMutex":
		return nogil.NewRecursiveMutex()
	}
	panic(kind)
}

//go:noinline
func leakOne(kind string) { newWrapper(kind) }

//go:noinline
func closeOne(t testing.TB, kind string) {
	if err := newWrapper(kind).Close(); err != nil {
		t.Fatalf("Close of a new %s: %v", kind, err)
	}
}

// countLeakReports runs the GC twice, then counts the reports starting with prefix that
// arrive within window.
func countLeakReports(reports <-chan string, prefix string, window time.Duration) int {
	runtime.GC()
	runtime.GC()
	n := 0
	timeout := time.After(window)
	for {
		select {
		case r := <-reports:
			if strings.HasPrefix(r, prefix) {
				n++
			}
		case <-timeout:
			return n
		}
	}
}

// A wrapper dropped without Close is reported to the leak handler, naming its type; one that
// was closed is not.
func TestSetLeakHandler(t *testing.T) {
	deadline(t, 30*time.Second)
	reports := make(chan string, 1000)
	nogil.SetLeakHandler(func(what string) {
		select {
		case reports <- what:
		default:
		}
	})
	t.Cleanup(func() { nogil.SetLeakHandler(nil) })

	for _, kind := range []string{"Mutex", "Event", "Once", "RWMutex", "SeqLock", "RecursiveMutex"} {
		t.Run(kind, func(t *testing.T) {
			prefix := kind + " " // "Mutex " does not match "RecursiveMutex ..."
			// Let wrappers leaked earlier (by a failed test) report first.
			runtime.GC()
			runtime.GC()
			for drained := false; !drained; {
				select {
				case <-reports:
				case <-time.After(20 * time.Millisecond):
					drained = true
				}
			}
			closeOne(t, kind)
			leakOne(kind)
			seen := 0
			for try := 0; try < 50 && seen == 0; try++ {
				seen += countLeakReports(reports, prefix, 20*time.Millisecond)
			}
			if seen == 0 {
				t.Fatalf("no leak report starting with %q after dropping a New%s without Close", prefix, kind)
			}
			// The closed one must not be reported: give its (stopped) cleanup a chance.
			seen += countLeakReports(reports, prefix, 50*time.Millisecond)
			if seen != 1 {
				t.Errorf("%d leak reports for %s, want 1 (a closed wrapper was reported?)", seen, kind)
			}
		})
	}
}
