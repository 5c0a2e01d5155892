package nogil_test

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nogil-go/nogil"
	"github.com/nogil-go/nogil/internal/testutil"
)

// Keep the main OS thread for the main goroutine: a test goroutine that exits while locked to
// its thread then terminates a pthread of its own instead of wedging the main thread (see
// go-ecosystem.md §2d), and thread-bound C state never leaks into the test runner.
func init() { runtime.LockOSThread() }

// Shared with the other packages' tests (internal/testutil).
var (
	deadline = testutil.Deadline
	waitFor  = testutil.WaitFor
	must     = testutil.Must
	wantErr  = testutil.WantErr
)

// goLocked runs f in a new goroutine locked to its own OS thread (so that the thread is
// exclusively f's while it blocks in C) and returns a channel closed when f returns.
func goLocked(f func()) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		f()
	}()
	return done
}

// recoverPanic calls f and returns the panic message ("" and false if f did not panic).
func recoverPanic(f func()) (msg string, panicked bool) {
	defer func() {
		if r := recover(); r != nil {
			msg, panicked = fmt.Sprint(r), true
		}
	}()
	f()
	return "", false
}

// mustPanicNogil fails the test unless f panics with a message starting with "nogil:".
func mustPanicNogil(t testing.TB, what string, f func()) {
	t.Helper()
	msg, panicked := recoverPanic(f)
	if !panicked {
		t.Errorf("%s: did not panic", what)
		return
	}
	if !strings.HasPrefix(msg, "nogil:") {
		t.Errorf("%s: panic message %q does not start with \"nogil:\"", what, msg)
	}
}

// lockHolder is a goroutine, on an OS thread of its own, that takes a lock and holds it
// until released.
type lockHolder struct {
	got     chan struct{}   // closed once it holds the lock (so got means "holds it now")
	release chan struct{}   // close it to make the holder unlock
	done    <-chan struct{} // closed once the holder has unlocked and returned
}

// holdLock starts a lockHolder that calls l.Lock, which may block.
func holdLock(l sync.Locker) lockHolder {
	got, release := make(chan struct{}), make(chan struct{})
	done := goLocked(func() {
		l.Lock()
		close(got)
		<-release
		l.Unlock()
	})
	return lockHolder{got: got, release: release, done: done}
}

// runParallel runs f(0), ..., f(n-1), each in a goroutine of its own, and waits for them all.
func runParallel(n int, f func(i int)) {
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f(i)
		}()
	}
	wg.Wait()
}

// closer is any nogil lock wrapper.
type closer interface{ Close() error }

// closeTwice closes c, which must succeed, and then again, which must fail with ErrClosed.
func closeTwice(t testing.TB, c closer) {
	t.Helper()
	if err := c.Close(); err != nil {
		t.Fatalf("Close = %v", err)
	}
	if err := c.Close(); !errors.Is(err, nogil.ErrClosed) {
		t.Errorf("second Close = %v, want ErrClosed", err)
	}
}

// closeOK closes c at the end of the test and reports an error from Close.
func closeOK(t testing.TB, c closer) {
	t.Helper()
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
}

// waitGoroutines waits (up to 5 s) until at most n goroutines exist and returns the count.
func waitGoroutines(n int) int {
	var now int
	waitFor(5*time.Second, func() bool {
		runtime.GC() // lets finished goroutines be accounted for sooner
		now = runtime.NumGoroutine()
		return now <= n
	})
	return now
}

// within waits for ch up to d and reports whether it was closed or received from.
func within[T any](ch <-chan T, d time.Duration) bool {
	select {
	case <-ch:
		return true
	case <-time.After(d):
		return false
	}
}
