package nogil_test

import (
	"errors"
	"runtime"
	"testing"
	"time"

	"github.com/nogil-go/nogil"
	"github.com/nogil-go/nogil/internal/ctest"
)

// recState is what C sees in an ng_recursive_mutex.
type recState struct {
	thread, level uint64
	bits          uint8
}

func recursiveState(m *nogil.RecursiveMutex) recState {
	p := m.CPtr()
	return recState{ctest.RecursiveThread(p), ctest.RecursiveLevel(p), ctest.RecursiveBits(p)}
}

// test_lock_recursive (spec 4.7): owner, level and mutex byte after each step.
func TestRecursiveMutexNesting(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	m := nogil.NewRecursiveMutex()
	closeOK(t, m)
	me := ctest.ThreadID()
	check := func(step string, want recState, held bool) {
		t.Helper()
		if got := recursiveState(m); got != want {
			t.Errorf("%s: {thread %d, level %d, byte %d}, want {thread %d, level %d, byte %d}",
				step, got.thread, got.level, got.bits, want.thread, want.level, want.bits)
		}
		if m.HeldByCurrentThread() != held {
			t.Errorf("%s: HeldByCurrentThread = %v, want %v", step, !held, held)
		}
	}
	check("new", recState{0, 0, 0}, false)
	m.Lock()
	check("locked once", recState{me, 0, 1}, true)
	m.Lock()
	check("locked twice", recState{me, 1, 1}, true)
	if !m.LockTimeout(0) {
		t.Fatal("LockTimeout(0) by the owner failed")
	}
	check("locked three times", recState{me, 2, 1}, true)
	m.Unlock()
	m.Unlock()
	check("unlocked twice", recState{me, 0, 1}, true)
	m.Unlock()
	check("unlocked", recState{0, 0, 0}, false)
	mustPanicNogil(t, "Unlock of an unlocked RecursiveMutex", m.Unlock)
	check("after the refused Unlock", recState{0, 0, 0}, false)
}

// Only the owning OS thread may unlock; other threads wait for the last Unlock.
func TestRecursiveMutexOtherThreads(t *testing.T) {
	deadline(t, 30*time.Second)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	m := nogil.NewRecursiveMutex()
	closeOK(t, m)
	m.Lock()
	m.Lock()
	before := recursiveState(m)

	type result struct {
		panicMsg       string
		panicked, held bool
		timedOut       bool
		elapsed        time.Duration
	}
	res := make(chan result)
	go func() {
		runtime.LockOSThread() // a thread other than the owner's
		defer runtime.UnlockOSThread()
		var r result
		r.held = m.HeldByCurrentThread()
		r.panicMsg, r.panicked = recoverPanic(m.Unlock)
		start := time.Now()
		r.timedOut = !m.LockTimeout(20 * time.Millisecond)
		r.elapsed = time.Since(start)
		res <- r
	}()
	r := <-res
	if r.held {
		t.Error("HeldByCurrentThread true on a thread that does not hold it")
	}
	if !r.panicked || len(r.panicMsg) < 6 || r.panicMsg[:6] != "nogil:" {
		t.Errorf("Unlock from another thread: panicked %v with %q; want a \"nogil:\" panic", r.panicked, r.panicMsg)
	}
	if !r.timedOut || r.elapsed < 20*time.Millisecond {
		t.Errorf("LockTimeout(20ms) from another thread: timed out %v after %v", r.timedOut, r.elapsed)
	}
	// (The parked bit a timed-out waiter leaves in the byte stays until the unlock.)
	if got := recursiveState(m); got.thread != before.thread || got.level != before.level || got.bits&1 != 1 {
		t.Errorf("the other thread changed the state: %+v, want %+v", got, before)
	}

	// A blocked locker on another thread gets in only after the last Unlock.
	waiter := holdLock(m)
	waitParked(t, m.CPtr(), 1) // the inner ng_mutex is at offset 0
	m.Unlock()
	select {
	case <-waiter.got:
		t.Fatal("another thread got the lock while the owner still held one level")
	case <-time.After(20 * time.Millisecond):
	}
	m.Unlock()
	if !within(waiter.got, 10*time.Second) {
		t.Fatal("the waiting thread did not get the lock after the owner's last Unlock")
	}
	if m.HeldByCurrentThread() {
		t.Error("the former owner still HeldByCurrentThread")
	}
	close(waiter.release)
	<-waiter.done
}

// Goroutines on their own threads increment a C counter under nested locks.
func TestRecursiveMutexCounter(t *testing.T) {
	deadline(t, 30*time.Second)
	m := nogil.NewRecursiveMutex()
	closeOK(t, m)
	counter := cCounter(t)
	const goroutines, iters = 4, 2000
	runParallel(goroutines, func(int) {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		for i := 0; i < iters; i++ {
			m.Lock()
			m.Lock()
			incr(counter)
			m.Unlock()
			m.Unlock()
		}
	})
	if *counter != goroutines*iters {
		t.Errorf("counter = %d, want %d", *counter, goroutines*iters)
	}
	if s := recursiveState(m); s != (recState{}) {
		t.Errorf("final state %+v, want zero", s)
	}
}

func TestRecursiveMutexClose(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	m := nogil.NewRecursiveMutex()
	m.Lock()
	if err := m.Close(); !errors.Is(err, nogil.ErrLocked) {
		t.Errorf("Close of a held RecursiveMutex = %v, want ErrLocked", err)
	}
	m.Unlock()
	closeTwice(t, m)
	mustPanicNogil(t, "Lock after Close", m.Lock)
	mustPanicNogil(t, "Unlock after Close", m.Unlock)
	mustPanicNogil(t, "LockTimeout after Close", func() { m.LockTimeout(time.Millisecond) })
	mustPanicNogil(t, "HeldByCurrentThread after Close", func() { m.HeldByCurrentThread() })
	mustPanicNogil(t, "RecursiveMutexAt(nil)", func() { nogil.RecursiveMutexAt(nil) })
}
