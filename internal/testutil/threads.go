package testutil

import (
	"runtime"
	"sync"
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
