package nogil_test

import (
	"errors"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/nogil-go/nogil"
	"github.com/nogil-go/nogil/internal/ctest"
)

// test_lock_rwlock: two readers and a writer on threads of their own, stepped by events; the
// lock word must pass through exactly 1, 0, 8, 10, 3, 8, 0.
func TestRWMutexBitSequence(t *testing.T) {
	deadline(t, 60*time.Second)
	rw := nogil.NewRWMutex()
	closeOK(t, rw)
	p := rw.CPtr()
	bits := func() uintptr { return ctest.LoadUintptr(p) }
	expect := func(step string, want uintptr) {
		t.Helper()
		// CPython polls every 10 ms for up to 2 s; allow more for a loaded -race run.
		if !waitFor(5*time.Second, func() bool { return bits() == want }) {
			t.Fatalf("%s: bits = %d, want %d", step, bits(), want)
		}
	}
	step := make([]*nogil.Event, 4)
	for i := 1; i <= 3; i++ {
		step[i] = nogil.NewEvent()
		closeOK(t, step[i])
	}

	rw.Lock()
	expect("write-locked", 1)
	rw.Unlock()
	expect("unlocked", 0)

	var done []<-chan struct{}
	reader := func() {
		rw.RLock()
		step[1].Wait()
		rw.RUnlock()
		rw.RLock() // parks: the writer got in first
		step[3].Wait()
		rw.RUnlock()
	}
	done = append(done, goLocked(reader), goLocked(reader))
	expect("two readers", 8)

	done = append(done, goLocked(func() {
		rw.Lock()
		step[2].Wait()
		rw.Unlock()
	}))
	expect("two readers and a parked writer", 10)

	step[1].Set()
	expect("writer holds, readers parked", 3)

	step[2].Set()
	expect("writer released, both readers back in", 8)

	step[3].Set()
	expect("all released", 0)
	for i, d := range done {
		if !within(d, 10*time.Second) {
			t.Fatalf("helper %d did not finish", i)
		}
	}
}

func TestRWMutexMisusePanics(t *testing.T) {
	rw := nogil.NewRWMutex()
	closeOK(t, rw)
	p := rw.CPtr()
	check := func(what string, f func(), want uintptr) {
		t.Helper()
		mustPanicNogil(t, what, f)
		if b := ctest.LoadUintptr(p); b != want {
			t.Errorf("%s changed the bits to %d (want %d unchanged)", what, b, want)
		}
	}
	check("RUnlock of unlocked", rw.RUnlock, 0)
	check("Unlock of unlocked", rw.Unlock, 0)
	rw.Lock()
	check("RUnlock of write-locked", rw.RUnlock, 1)
	rw.Unlock()
	rw.RLock()
	check("Unlock of read-locked", rw.Unlock, 4)
	rw.RUnlock()
	check("second RUnlock", rw.RUnlock, 0)
}

func TestRWMutexTryAndWriterPreference(t *testing.T) {
	deadline(t, 30*time.Second)
	rw := nogil.NewRWMutex()
	closeOK(t, rw)
	p := rw.CPtr()

	if !rw.TryRLock() || !rw.TryRLock() {
		t.Fatal("TryRLock of a free/read-locked rwmutex failed")
	}
	if rw.TryLock() {
		t.Fatal("TryLock succeeded on a read-locked rwmutex")
	}
	// A writer waits; new readers must now wait behind it.
	writer := holdLock(rw)
	if !waitFor(10*time.Second, func() bool { return ctest.LoadUintptr(p) == 8|2 }) {
		t.Fatalf("bits with a waiting writer = %d, want 10", ctest.LoadUintptr(p))
	}
	if rw.TryRLock() {
		t.Fatal("TryRLock succeeded while a writer waits (not writer-preferring)")
	}
	rgot := make(chan struct{})
	rdone := goLocked(func() {
		rw.RLock()
		close(rgot)
		rw.RUnlock()
	})
	if !waitFor(10*time.Second, func() bool { return nogil.ParkedWaiters(p) == 2 }) {
		t.Fatalf("new reader did not wait behind the writer: ParkedWaiters %d", nogil.ParkedWaiters(p))
	}
	rw.RUnlock()
	rw.RUnlock()
	if !within(writer.got, 10*time.Second) {
		t.Fatal("writer did not get the lock after the readers left")
	}
	select {
	case <-rgot:
		t.Fatal("the new reader got in while the writer holds the lock")
	default:
	}
	close(writer.release)
	<-writer.done
	if !within(rgot, 10*time.Second) {
		t.Fatal("the reader never got in after the writer")
	}
	<-rdone
	if b := ctest.LoadUintptr(p); b != 0 {
		t.Errorf("final bits = %d, want 0", b)
	}
	if !rw.TryLock() {
		t.Fatal("TryLock of a free rwmutex failed")
	}
	if rw.TryRLock() || rw.TryLock() {
		t.Fatal("Try*Lock succeeded on a write-locked rwmutex")
	}
	rw.Unlock()
}

// Writers update a pair (k, 2k) in C memory under Lock; readers check it under RLock; every
// write is counted. Mutual exclusion shows as exact counts and no torn pair.
func TestRWMutexStress(t *testing.T) {
	deadline(t, 60*time.Second)
	rw := nogil.NewRWMutex()
	closeOK(t, rw)
	mem := ctest.Alloc(16)
	defer ctest.Free(mem)
	x, y := (*int64)(mem), (*int64)(unsafe.Add(mem, 8))
	const writers, readers, writes, reads = 2, 3, 2000, 4000

	var wg sync.WaitGroup
	var torn [readers]int
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < writes; i++ {
				rw.Lock()
				v := *x + 1
				*x = v
				*y = 2 * v
				rw.Unlock()
			}
		}()
	}
	for r := 0; r < readers; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < reads; i++ {
				rw.RLock()
				if *y != 2**x {
					torn[r]++
				}
				rw.RUnlock()
			}
		}()
	}
	wg.Wait()
	for r, n := range torn {
		if n != 0 {
			t.Errorf("reader %d saw %d torn pairs", r, n)
		}
	}
	if *x != writers*writes || *y != 2*writers*writes {
		t.Errorf("pair = (%d, %d), want (%d, %d)", *x, *y, writers*writes, 2*writers*writes)
	}
	if b := ctest.LoadUintptr(rw.CPtr()); b != 0 {
		t.Errorf("final bits = %d, want 0", b)
	}
}

func TestRWMutexClose(t *testing.T) {
	rw := nogil.NewRWMutex()
	rw.RLock()
	if err := rw.Close(); !errors.Is(err, nogil.ErrLocked) {
		t.Errorf("Close of a read-locked rwmutex = %v, want ErrLocked", err)
	}
	rw.RUnlock()
	rw.Lock()
	if err := rw.Close(); !errors.Is(err, nogil.ErrLocked) {
		t.Errorf("Close of a write-locked rwmutex = %v, want ErrLocked", err)
	}
	rw.Unlock()
	closeTwice(t, rw)
	mustPanicNogil(t, "RLock after Close", rw.RLock)
	mustPanicNogil(t, "RUnlock after Close", rw.RUnlock)
	mustPanicNogil(t, "Lock after Close", rw.Lock)
	mustPanicNogil(t, "Unlock after Close", rw.Unlock)
	mustPanicNogil(t, "TryRLock after Close", func() { rw.TryRLock() })
	mustPanicNogil(t, "TryLock after Close", func() { rw.TryLock() })
	mustPanicNogil(t, "RWMutexAt(nil)", func() { nogil.RWMutexAt(nil) })
}
