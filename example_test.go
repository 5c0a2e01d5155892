package nogil_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/nogil-go/nogil"
	"github.com/nogil-go/nogil/internal/ctest"
)

func ExampleMutex() {
	m := nogil.NewMutex() // one byte of C memory; C code can lock it too (m.CPtr())
	defer m.Close()

	m.Lock()
	fmt.Println("locked:", m.IsLocked())
	fmt.Println("TryLock while held:", m.TryLock())
	m.Unlock()
	fmt.Println("locked:", m.IsLocked())
	// Output:
	// locked: true
	// TryLock while held: false
	// locked: false
}

func ExampleMutex_LockContext() {
	m := nogil.NewMutex()
	defer m.Close()
	m.Lock() // somebody holds it for a long time

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if err := m.LockContext(ctx); err != nil {
		fmt.Println("gave up:", err)
	}
	m.Unlock()

	if err := m.LockContext(context.Background()); err == nil {
		fmt.Println("acquired")
		m.Unlock()
	}
	// Output:
	// gave up: context deadline exceeded
	// acquired
}

func ExampleEvent() {
	ready := nogil.NewEvent()
	defer ready.Close()

	done := make(chan struct{})
	go func() {
		ready.Wait() // sleeps until Set
		fmt.Println("waiter: woken")
		close(done)
	}()
	fmt.Println("set:", ready.IsSet())
	ready.Set()
	<-done
	fmt.Println("set:", ready.IsSet())
	// Output:
	// set: false
	// waiter: woken
	// set: true
}

func ExampleOnce() {
	once := nogil.NewOnce()
	defer once.Close()

	attempts := 0
	connect := func() error {
		attempts++
		if attempts < 3 {
			return errors.New("server not up yet")
		}
		return nil
	}
	for i := 0; i < 5; i++ {
		// Unlike sync.Once, a failed initialiser runs again on the next call.
		fmt.Println(once.Do(connect))
	}
	fmt.Println("attempts:", attempts)
	// Output:
	// server not up yet
	// server not up yet
	// <nil>
	// <nil>
	// <nil>
	// attempts: 3
}

func ExampleRWMutex() {
	rw := nogil.NewRWMutex()
	defer rw.Close()

	rw.RLock()
	rw.RLock() // readers share it
	fmt.Println("writer while read-locked:", rw.TryLock())
	rw.RUnlock()
	rw.RUnlock()

	rw.Lock()
	fmt.Println("reader while write-locked:", rw.TryRLock())
	rw.Unlock()
	// Output:
	// writer while read-locked: false
	// reader while write-locked: false
}

func ExampleSeqLock() {
	s := nogil.NewSeqLock()
	defer s.Close()
	var x, y atomic.Int64 // protected data is read and written with atomics

	// Writer.
	s.BeginWrite()
	x.Store(3)
	y.Store(4)
	s.EndWrite()

	// Reader: retry until no write overlapped the read.
	for {
		seq := s.BeginRead()
		a, b := x.Load(), y.Load()
		if !s.Retry(seq) {
			fmt.Println(a, b)
			break
		}
	}
	// Output:
	// 3 4
}

// Two goroutines hand a value over through a word of C memory: the receiver sleeps in the
// parking lot while the word is 0, the sender stores the value and wakes it.
func ExamplePark() {
	mem := ctest.Alloc(4) // any C memory: C.malloc, a field of a C struct, ...
	defer ctest.Free(mem)
	word := (*uint32)(mem)

	received := make(chan uint32)
	go func() {
		for atomic.LoadUint32(word) == 0 {
			// Sleeps only if the word still holds 0 (checked atomically with Unpark).
			nogil.Park(mem, 0, 4, nogil.Forever, 0)
		}
		received <- atomic.LoadUint32(word)
	}()

	atomic.StoreUint32(word, 42)
	nogil.Unpark(mem, nil) // wakes the receiver if it sleeps; harmless if not
	fmt.Println("received", <-received)
	// Output:
	// received 42
}
