package nogil_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/nogil-go/nogil"
	"github.com/nogil-go/nogil/internal/ctest"
)

func TestEventBasic(t *testing.T) {
	e := nogil.NewEvent()
	closeOK(t, e)
	p := e.CPtr()
	if e.IsSet() || ctest.Load8(p) != 0 {
		t.Fatalf("new event: IsSet %v, byte %d", e.IsSet(), ctest.Load8(p))
	}
	e.Set()
	if !e.IsSet() || ctest.Load8(p) != 1 {
		t.Fatalf("after Set: IsSet %v, byte %d; want true, 1", e.IsSet(), ctest.Load8(p))
	}
	e.Set() // idempotent
	if b := ctest.Load8(p); b != 1 {
		t.Errorf("byte after a second Set = %d, want 1", b)
	}
	// A set event never blocks.
	e.Wait()
	if !e.WaitTimeout(0) || !e.WaitTimeout(-1) || !e.WaitTimeout(time.Hour) {
		t.Error("WaitTimeout on a set event returned false")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := e.WaitContext(ctx); err != nil {
		t.Errorf("WaitContext(done ctx) on a set event = %v, want nil", err)
	}
}

func TestEventWaitTimeout(t *testing.T) {
	deadline(t, 30*time.Second)
	e := nogil.NewEvent()
	defer e.Set() // Close after abandoned waits is TestEventCloseAfterAbandonedWait's subject
	closeOK(t, e)
	for _, d := range []time.Duration{0, -1} {
		done := make(chan bool)
		go func() { done <- e.WaitTimeout(d) }()
		select {
		case ok := <-done:
			if ok {
				t.Errorf("WaitTimeout(%v) on an unset event = true", d)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("WaitTimeout(%v) blocked", d)
		}
	}
	for _, d := range []time.Duration{time.Millisecond, 25 * time.Millisecond} {
		start := time.Now()
		if e.WaitTimeout(d) {
			t.Fatalf("WaitTimeout(%v) on an unset event = true", d)
		}
		if el := time.Since(start); el < d {
			t.Errorf("WaitTimeout(%v) returned after only %v", d, el)
		}
	}
	if e.IsSet() {
		t.Error("timed-out waits set the event")
	}
	if n := nogil.ParkedWaiters(e.CPtr()); n != 0 {
		t.Errorf("ParkedWaiters after timeouts = %d", n)
	}
	// Set while WaitTimeout waits: returns true well before its timeout.
	go func() {
		time.Sleep(10 * time.Millisecond)
		e.Set()
	}()
	if !e.WaitTimeout(20 * time.Second) {
		t.Error("WaitTimeout missed a Set")
	}
}

// One Set wakes every kind of waiter.
func TestEventSetWakesAllWaiters(t *testing.T) {
	deadline(t, 30*time.Second)
	e := nogil.NewEvent()
	closeOK(t, e)
	p := e.CPtr()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	var wg sync.WaitGroup
	results := make([]bool, 4)
	waiters := []func() bool{
		func() bool { e.Wait(); return true },
		func() bool { return e.WaitTimeout(time.Hour) },
		func() bool { return e.WaitContext(ctx) == nil },
		func() bool { return ctest.EventWait(p) == ctest.OK }, // a C waiter
	}
	for i, w := range waiters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = w()
		}()
	}
	waitWaiters(t, p, len(waiters))
	if b := ctest.Load8(p); b != 2 {
		t.Errorf("byte with parked waiters = %d, want 2 (not set, has parked)", b)
	}
	e.Set()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	if !within(done, 10*time.Second) {
		t.Fatal("Set did not wake every waiter")
	}
	for i, ok := range results {
		if !ok {
			t.Errorf("waiter %d returned false/error after Set", i)
		}
	}
	if b := ctest.Load8(p); b != 1 {
		t.Errorf("byte after Set = %d, want 1", b)
	}
}

func TestEventWaitContext(t *testing.T) {
	deadline(t, 30*time.Second)
	e := nogil.NewEvent()
	defer e.Set() // see TestEventCloseAfterAbandonedWait
	closeOK(t, e)

	ctx, cancel := context.WithCancel(context.Background())
	res := make(chan error, 1)
	go func() { res <- e.WaitContext(ctx) }()
	waitWaiters(t, e.CPtr(), 1)
	cancel()
	select {
	case err := <-res:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("WaitContext after cancel = %v, want Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("WaitContext did not return after cancel")
	}
	if n := nogil.ParkedWaiters(e.CPtr()); n != 0 {
		t.Errorf("ParkedWaiters after cancel = %d", n)
	}

	start := time.Now()
	tctx, tcancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer tcancel()
	if err := e.WaitContext(tctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitContext past deadline = %v, want DeadlineExceeded", err)
	}
	if el := time.Since(start); el < 20*time.Millisecond {
		t.Errorf("WaitContext returned after %v, before its deadline", el)
	}
	if e.IsSet() {
		t.Error("cancelled waits set the event")
	}
}

// Set racing with a waiter that is just about to park never loses the wake-up.
func TestEventSetWaitRace(t *testing.T) {
	deadline(t, 45*time.Second)
	for i := 0; i < 300; i++ {
		e := nogil.NewEvent()
		done := make(chan struct{})
		go func() {
			e.Wait()
			close(done)
		}()
		if i%2 == 0 {
			time.Sleep(time.Duration(i%50) * time.Microsecond)
		}
		e.Set()
		if !within(done, 10*time.Second) {
			t.Fatalf("round %d: waiter missed the Set", i)
		}
		if err := e.Close(); err != nil {
			t.Fatalf("round %d: Close = %v", i, err)
		}
	}
}

func TestEventClose(t *testing.T) {
	deadline(t, 30*time.Second)
	e := nogil.NewEvent()
	done := make(chan struct{})
	go func() {
		e.Wait()
		close(done)
	}()
	waitWaiters(t, e.CPtr(), 1)
	if err := e.Close(); !errors.Is(err, nogil.ErrLocked) {
		t.Errorf("Close with a waiter = %v, want ErrLocked", err)
	}
	e.Set()
	<-done
	closeTwice(t, e)
	mustPanicNogil(t, "Set after Close", e.Set)
	mustPanicNogil(t, "IsSet after Close", func() { e.IsSet() })
	mustPanicNogil(t, "Wait after Close", e.Wait)
	mustPanicNogil(t, "WaitTimeout after Close", func() { e.WaitTimeout(time.Millisecond) })
	mustPanicNogil(t, "WaitContext after Close", func() { _ = e.WaitContext(context.Background()) })
	mustPanicNogil(t, "EventAt(nil)", func() { nogil.EventAt(nil) })
}

// Close "fails with ErrLocked while threads wait on it": after a wait that timed out or was
// cancelled nobody waits, so Close must succeed.
func TestEventCloseAfterAbandonedWait(t *testing.T) {
	deadline(t, 30*time.Second)
	e := nogil.NewEvent()
	if e.WaitTimeout(time.Millisecond) {
		t.Fatal("WaitTimeout on an unset event = true")
	}
	if n := nogil.ParkedWaiters(e.CPtr()); n != 0 {
		t.Fatalf("ParkedWaiters = %d after the timed-out wait", n)
	}
	if err := e.Close(); err != nil {
		t.Errorf("Close of an event nobody waits on = %v (byte %d left by the timed-out wait), want nil",
			err, ctest.Load8(e.CPtr()))
		e.Set()
		if err := e.Close(); err != nil {
			t.Errorf("Close after Set = %v", err)
		}
	}

	e = nogil.NewEvent()
	ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
	defer cancel()
	if err := e.WaitContext(ctx); err == nil {
		t.Fatal("WaitContext on an unset event = nil")
	}
	if err := e.Close(); err != nil {
		t.Errorf("Close after a cancelled WaitContext = %v, want nil", err)
		e.Set()
		e.Close()
	}
}
