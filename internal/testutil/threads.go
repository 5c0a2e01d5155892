package testutil

import (
	"runtime"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// OccupyThread gets a goroutine onto the OS thread tid and keeps it there, locked and
// blocked, so that no other goroutine runs on that thread until release is called: a
// goroutine that unlocked itself from tid then runs elsewhere. It gives up after timeout
// (ok false). If exit is set, the holder returns still locked when released, which ends the
// thread and with it any C state bound to it; release does not wait for the thread's end.
//
// It works by spinning a few goroutines through the scheduler until one lands on tid, so it
// suits a thread that was just given up by a goroutine (and so still runs the scheduler),
// not one asleep in the runtime's pool.
func OccupyThread(tid int, timeout time.Duration, exit bool) (release func(), ok bool) {
	held := make(chan struct{}, 1)
	done := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < 2*runtime.GOMAXPROCS(0)+2; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				default:
				}
				runtime.LockOSThread()
				if unix.Gettid() == tid {
					select {
					case held <- struct{}{}:
						<-done
						if exit {
							return // locked: the thread ends with the goroutine
						}
					default:
					}
					runtime.UnlockOSThread()
					return
				}
				runtime.UnlockOSThread()
				runtime.Gosched()
			}
		}()
	}
	release = func() { close(done); wg.Wait() }
	select {
	case <-held:
		return release, true
	case <-time.After(timeout):
		release()
		return nil, false
	}
}

// RunMovedAfterUnlock runs bind on a new goroutine, which must leave it locked to its OS
// thread (as nogil's Bind does) and return false after reporting any failure. The goroutine
// then unlocks itself (the misuse under test), another goroutine occupies its old thread, and
// moved runs on the same goroutine from another thread. It reports whether moved ran there;
// it skips the test if nothing could occupy the old thread. The occupier returns locked once
// moved is done, which ends the old thread and whatever C state is bound to it.
func RunMovedAfterUnlock(t testing.TB, bind func() bool, moved func()) bool {
	t.Helper()
	tid := make(chan int)
	wake := make(chan struct{})
	ran := make(chan bool)
	go func() {
		if !bind() {
			close(tid)
			return
		}
		own := unix.Gettid()     // read while locked: unlocked, a preemption may move it
		runtime.UnlockOSThread() // the misuse: the binding stays with this thread
		tid <- own
		<-wake
		// Locked while it looks, so that moved runs on the thread the id names.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if unix.Gettid() == <-tid {
			ran <- false
			return
		}
		moved()
		ran <- true
	}()
	old, ok := <-tid
	if !ok {
		return false
	}
	release, ok := OccupyThread(old, 10*time.Second, true)
	if !ok {
		t.Skip("no goroutine got onto the bound thread to keep it busy")
	}
	close(wake)
	tid <- old
	r := <-ran
	release()
	if !r {
		t.Error("the goroutine ran on its old thread, which another goroutine holds locked")
	}
	return r
}
