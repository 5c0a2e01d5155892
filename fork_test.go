package nogil_test

import (
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nogil-go/nogil"
	"github.com/nogil-go/nogil/internal/ctest"
)

// Fork while a Go-owned thread sleeps in the parking lot and a goroutine holds a mutex, with
// the Go runtime busy allocating and collecting. The child (C only, see DESIGN §4) checks
// that the atfork handler reset the lot, that the held mutex works after reinit, and that new
// threads can contend in the child. Repeated to catch forks that land mid-park or mid-unpark.
func TestForkChildResetsLotAndLocks(t *testing.T) {
	deadline(t, 60*time.Second)
	word := ctest.Alloc(4)
	defer ctest.Free(word)
	held := nogil.NewMutex()
	held.Lock()

	// A thread parked (and kept parked) on word for the whole test.
	parked := goLocked(func() {
		for {
			if _, err := nogil.Park(word, 0, 4, nogil.Forever, 0); err != nil || ctest.Load32(word) != 0 {
				return
			}
		}
	})
	if !waitFor(10*time.Second, func() bool { return nogil.ParkedWaiters(word) == 1 }) {
		t.Fatal("parker never parked")
	}

	// Churn: garbage and park/unpark traffic on another word while we fork.
	var stop atomic.Bool
	other := ctest.Alloc(4)
	defer ctest.Free(other)
	churn := goLocked(func() {
		var sink [][]byte
		for !stop.Load() {
			sink = append(sink, make([]byte, 1<<10))
			if len(sink) > 1000 {
				sink = nil
				runtime.GC()
			}
			nogil.Park(other, 0, 4, 50*time.Microsecond, 0)
			nogil.UnparkAll(other)
		}
	})

	for i := 0; i < 20; i++ {
		failed := ctest.ForkCheck(word, held.CPtr())
		if failed < 0 {
			t.Fatalf("fork %d: child could not run or crashed", i)
		}
		for bit, what := range ctest.ForkFailure {
			if failed&bit != 0 {
				t.Errorf("fork %d: %s", i, what)
			}
		}
	}
	stop.Store(true)
	<-churn

	// The parent is untouched: still one parked thread, mutex still held.
	if n := nogil.ParkedWaiters(word); n != 1 {
		t.Errorf("parent: %d waiters on the word after the forks, want 1", n)
	}
	if held.TryLock() {
		t.Error("parent: the held mutex became free")
	}
	ctest.Store32(word, 1)
	nogil.UnparkAll(word)
	<-parked
	held.Unlock()
	closeOK(t, held)
}
