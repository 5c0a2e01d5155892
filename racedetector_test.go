package nogil_test

// nogil's locks must be visible to the race detector as synchronisation, like sync's are:
// Go data that is only touched under a nogil lock (or published through an Event or a Once)
// is not a data race. The locks synchronise through atomics on C memory and through futexes
// in C, neither of which the race detector sees, so the wrappers have to tell it
// (runtime.RaceAcquire / runtime.RaceReleaseMerge in race builds, on a Go-heap address).
//
// Without -race these tests only check values. Under -race a missing annotation fails them
// with "race detected during execution of test". The data here is deliberately plain Go
// memory, and nothing else (no channel, no WaitGroup) orders the accesses. (In race builds
// every cgo call is itself a global synchronisation point, so the lock paths that go
// through C -- parking, all of RecursiveMutex -- happen to be covered; the Go fast paths
// are not.)

import (
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nogil-go/nogil"
)

func TestRaceDetectorSeesHappensBefore(t *testing.T) {
	deadline(t, 60*time.Second)

	t.Run("Mutex", func(t *testing.T) {
		m := nogil.NewMutex()
		closeOK(t, m)
		counter := 0 // Go memory, guarded by m only
		runParallel(4, func(int) {
			for i := 0; i < 2000; i++ {
				m.Lock()
				counter++
				m.Unlock()
			}
		})
		m.Lock()
		if counter != 8000 {
			t.Errorf("counter = %d, want 8000", counter)
		}
		m.Unlock()
	})

	// The last user frees the lock after taking it over: everything the previous holder's
	// Unlock read of the wrapper must happen before that Close.
	t.Run("Mutex/CloseAfterHandOver", func(t *testing.T) {
		m := nogil.NewMutex()
		result := 0
		go func() {
			m.Lock()
			result = 42
			m.Unlock()
		}()
		for r := 0; r == 0; runtime.Gosched() {
			m.Lock()
			r = result
			m.Unlock()
		}
		if err := m.Close(); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("RWMutex", func(t *testing.T) {
		rw := nogil.NewRWMutex()
		closeOK(t, rw)
		data := map[int]int{}
		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			for i := 0; i < 1000; i++ {
				rw.Lock()
				data[i%10] = i
				rw.Unlock()
			}
		}()
		go func() {
			defer wg.Done()
			for i := 0; i < 1000; i++ {
				rw.RLock()
				_ = data[i%10]
				rw.RUnlock()
			}
		}()
		wg.Wait()
	})

	t.Run("RWMutex/CloseAfterWriter", func(t *testing.T) {
		rw := nogil.NewRWMutex()
		result := 0
		go func() {
			rw.Lock()
			result = 42
			rw.Unlock()
		}()
		for r := 0; r == 0; runtime.Gosched() {
			rw.RLock()
			r = result
			rw.RUnlock()
		}
		rw.Lock()
		rw.Unlock()
		if err := rw.Close(); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("RWMutex/CloseAfterReader", func(t *testing.T) {
		rw := nogil.NewRWMutex()
		var reading atomic.Bool
		go func() {
			rw.RLock()
			reading.Store(true) // orders only what precedes RUnlock
			rw.RUnlock()
		}()
		for !reading.Load() {
			runtime.Gosched()
		}
		rw.Lock() // waits for the reader's RUnlock
		rw.Unlock()
		if err := rw.Close(); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("Event", func(t *testing.T) {
		e := nogil.NewEvent()
		closeOK(t, e)
		var data []int
		go func() {
			data = []int{1, 2, 3}
			e.Set()
		}()
		// Wait for the Set without parking: in race builds every cgo call is a global
		// synchronisation point, which would hide a missing annotation on the fast paths.
		for !e.IsSet() {
			runtime.Gosched()
		}
		e.Wait()
		if len(data) != 3 {
			t.Errorf("data = %v after Wait", data)
		}
	})

	t.Run("Once", func(t *testing.T) {
		o := nogil.NewOnce()
		closeOK(t, o)
		var config map[string]string
		go o.Do(func() error {
			config = map[string]string{"k": "v"}
			return nil
		})
		// Observe completion only through the Once itself.
		for !o.Done() {
			runtime.Gosched()
		}
		if err := o.Do(func() error { t.Error("initialiser ran twice"); return nil }); err != nil {
			t.Fatal(err)
		}
		if config["k"] != "v" {
			t.Errorf("config = %v after Do", config)
		}
	})

	t.Run("RecursiveMutex", func(t *testing.T) {
		m := nogil.NewRecursiveMutex()
		closeOK(t, m)
		counter := 0
		runParallel(2, func(int) {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			for i := 0; i < 1000; i++ {
				m.Lock()
				counter++
				m.Unlock()
			}
		})
		if counter != 2000 {
			t.Errorf("counter = %d, want 2000", counter)
		}
	})
}
