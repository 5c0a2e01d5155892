package nogil_test

import (
	"fmt"
	"os"
	"runtime"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/nogil-go/nogil"
	"github.com/nogil-go/nogil/internal/ctest"
)

// What happens to locks whose owning thread exits: a goroutine that returns while locked to
// its OS thread ends that thread (its pthread-key destructors run), and the locks it held stay
// held. The recursive mutex's owner id is never reused, so no later thread inherits it; a
// plain Mutex may be unlocked by anyone, as with sync.Mutex.
func TestLocksHeldByAnExitedThread(t *testing.T) {
	deadline(t, 30*time.Second)
	rm := nogil.NewRecursiveMutex()
	m := nogil.NewMutex()
	tids := make(chan int, 1)
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		// Deliberately no UnlockOSThread: the thread terminates with the goroutine.
		runtime.LockOSThread()
		rm.Lock()
		rm.Lock()
		m.Lock()
		tids <- unix.Gettid()
	}()
	tid := <-tids
	<-exited
	if !waitFor(10*time.Second, func() bool {
		_, err := os.Stat(fmt.Sprintf("/proc/self/task/%d", tid))
		return os.IsNotExist(err)
	}) {
		t.Fatalf("thread %d is still alive after its locked goroutine returned", tid)
	}

	done := goLocked(func() {
		if rm.HeldByCurrentThread() {
			t.Error("a new thread believes it holds the dead thread's recursive mutex")
		}
		if rm.LockTimeout(10 * time.Millisecond) {
			t.Error("the dead thread's recursive mutex was acquired by another thread")
		}
		mustPanicNogil(t, "Unlock by a thread that does not own it", rm.Unlock)
	})
	<-done
	if err := rm.Close(); err != nogil.ErrLocked {
		t.Errorf("Close of a recursive mutex held by a dead thread = %v, want ErrLocked", err)
	}
	// Only a reset of the memory (what ng_recursive_mutex_at_fork_reinit does in a fork
	// child) frees it; do that so that it can be closed.
	ctest.Fill(rm.CPtr(), 0, int(unsafe.Sizeof(uint64(0))*3))
	closeOK(t, rm)

	if !m.IsLocked() {
		t.Fatal("the Mutex held by the exited thread was released")
	}
	m.Unlock() // allowed from any goroutine, as for sync.Mutex
	closeOK(t, m)
}
