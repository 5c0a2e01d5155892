package nogil_test

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nogil-go/nogil"
	"github.com/nogil-go/nogil/internal/ctest"
)

// test_lock_once: an initialiser that fails its first 4 calls and then succeeds; 10 calls.
func TestOnceRetriesUntilSuccess(t *testing.T) {
	o := nogil.NewOnce()
	closeOK(t, o)
	errInit := errors.New("init failed")
	runs := 0
	f := func() error {
		runs++
		if runs <= 4 {
			return fmt.Errorf("attempt %d: %w", runs, errInit)
		}
		return nil
	}
	for call := 1; call <= 10; call++ {
		err := o.Do(f)
		if call <= 4 {
			if !errors.Is(err, errInit) {
				t.Errorf("call %d = %v, want the initialiser's error", call, err)
			}
			if o.Done() || ctest.Load8(o.CPtr()) != 0 {
				t.Errorf("call %d failed but Done %v, byte %d; want false, 0", call, o.Done(), ctest.Load8(o.CPtr()))
			}
		} else if err != nil {
			t.Errorf("call %d = %v, want nil", call, err)
		}
	}
	if runs != 5 {
		t.Errorf("initialiser ran %d times, want 5", runs)
	}
	if !o.Done() || !ctest.OnceIsDone(o.CPtr()) || ctest.Load8(o.CPtr()) != 4 {
		t.Errorf("after success: Done %v, C done %v, byte %d; want true, true, 4",
			o.Done(), ctest.OnceIsDone(o.CPtr()), ctest.Load8(o.CPtr()))
	}
}

// A panicking initialiser leaves the Once unset, and the panic reaches the caller unchanged.
func TestOncePanicLeavesUnset(t *testing.T) {
	o := nogil.NewOnce()
	closeOK(t, o)
	type boom struct{ n int }
	var got any
	func() {
		defer func() { got = recover() }()
		o.Do(func() error { panic(boom{7}) })
	}()
	if got != (boom{7}) {
		t.Fatalf("recovered %#v, want the initialiser's panic value boom{7}", got)
	}
	if o.Done() || ctest.Load8(o.CPtr()) != 0 {
		t.Fatalf("after a panic: Done %v, byte %d; want false, 0", o.Done(), ctest.Load8(o.CPtr()))
	}
	ran := false
	if err := o.Do(func() error { ran = true; return nil }); err != nil || !ran {
		t.Fatalf("Do after the panic = %v, ran %v", err, ran)
	}
	if !o.Done() {
		t.Error("not Done after a successful Do")
	}
}

// 8 concurrent callers of a slow initialiser: it runs once, and nobody returns before it has
// finished.
func TestOnceConcurrent(t *testing.T) {
	deadline(t, 30*time.Second)
	o := nogil.NewOnce()
	closeOK(t, o)
	var runs atomic.Int32
	var finished atomic.Bool
	f := func() error {
		runs.Add(1)
		time.Sleep(20 * time.Millisecond)
		finished.Store(true)
		return nil
	}
	start := make(chan struct{})
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			if err := o.Do(f); err != nil {
				t.Errorf("Do = %v", err)
			}
			if !finished.Load() {
				t.Error("Do returned before the initialiser finished")
			}
		}()
	}
	close(start)
	wg.Wait()
	if n := runs.Load(); n != 1 {
		t.Errorf("initialiser ran %d times, want 1", n)
	}
	if n := nogil.ParkedWaiters(o.CPtr()); n != 0 {
		t.Errorf("ParkedWaiters = %d", n)
	}
}

// Callers waiting on a running initialiser that fails (error or panic) are woken, and one of
// them runs its own initialiser.
func TestOnceFailureWakesWaiters(t *testing.T) {
	for _, mode := range []string{"error", "panic"} {
		t.Run(mode, func(t *testing.T) {
			deadline(t, 30*time.Second)
			o := nogil.NewOnce()
			closeOK(t, o)
			p := o.CPtr()
			release := make(chan struct{})
			first := make(chan any, 1)
			go func() {
				var outcome any // the error or the panic value
				defer func() {
					if r := recover(); r != nil {
						outcome = r
					}
					first <- outcome
				}()
				outcome = o.Do(func() error {
					<-release
					if mode == "panic" {
						panic("initialiser panicked")
					}
					return errors.New("initialiser failed")
				})
			}()
			if !waitFor(10*time.Second, func() bool { return ctest.Load8(p) == 1 }) {
				t.Fatalf("first initialiser never started (byte %d)", ctest.Load8(p))
			}
			var secondRuns atomic.Int32
			second := make(chan error, 1)
			go func() {
				second <- o.Do(func() error { secondRuns.Add(1); return nil })
			}()
			if !waitFor(10*time.Second, func() bool {
				return ctest.Load8(p) == 3 && nogil.ParkedWaiters(p) == 1
			}) {
				t.Fatalf("second caller did not wait: byte %d, ParkedWaiters %d", ctest.Load8(p), nogil.ParkedWaiters(p))
			}
			close(release)
			if r := <-first; r == nil {
				t.Errorf("first Do: got no %s", mode)
			}
			select {
			case err := <-second:
				if err != nil {
					t.Errorf("second Do = %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the waiter was not woken after the initialiser failed")
			}
			if secondRuns.Load() != 1 || !o.Done() {
				t.Errorf("second initialiser ran %d times, Done %v; want 1, true", secondRuns.Load(), o.Done())
			}
		})
	}
}

func TestOnceClose(t *testing.T) {
	o := nogil.NewOnce()
	closeTwice(t, o)
	mustPanicNogil(t, "Do after Close", func() { o.Do(func() error { return nil }) })
	mustPanicNogil(t, "Done after Close", func() { o.Done() })
	mustPanicNogil(t, "OnceAt(nil)", func() { nogil.OnceAt(nil) })
}

// Like every other lock's Close, Once.Close must refuse while the Once is in use (an
// initialiser running): freeing the byte under it would leave Do's completion and any
// waiters on freed memory.
func TestOnceCloseWhileRunning(t *testing.T) {
	o := nogil.NewOnce()
	var closeErr error
	msg, panicked := recoverPanic(func() {
		o.Do(func() error {
			closeErr = o.Close()
			return nil
		})
	})
	if panicked {
		t.Errorf("Do panicked after Close ran inside the initialiser: %s", msg)
	}
	if !errors.Is(closeErr, nogil.ErrLocked) {
		t.Errorf("Close while the initialiser runs = %v, want ErrLocked", closeErr)
	}
}
