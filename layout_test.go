package nogil_test

// The Go wrappers and the C API must drive the same bytes with the same protocol: Go's fast
// paths CAS the aligned 32-bit word around a lock byte (bytecell.go), C uses byte atomics.
// These tests put locks at every offset of a C buffer filled with a canary, operate them
// alternately from Go and from C, and check the lock byte and every neighbouring byte.

import (
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/nogil-go/nogil"
	"github.com/nogil-go/nogil/internal/ctest"
)

const canary = 0xAA

// canaryBuf returns a 16-byte C buffer of canary bytes, except for a zero byte at off.
func canaryBuf(t testing.TB, off int) (buf, p unsafe.Pointer) {
	buf = ctest.Alloc(16)
	t.Cleanup(func() { ctest.Free(buf) })
	ctest.Fill(buf, canary, 16)
	p = unsafe.Add(buf, off)
	ctest.Store8(p, 0)
	return buf, p
}

// checkBytes fails unless byte off of buf is want and the other 15 are still the canary.
func checkBytes(t testing.TB, step string, buf unsafe.Pointer, off int, want byte) {
	t.Helper()
	got := ctest.Bytes(buf, 16)
	for i, b := range got {
		switch {
		case i == off && b != want:
			t.Errorf("%s: lock byte (offset %d) = %#x, want %#x (buffer % x)", step, off, b, want, got)
		case i != off && b != canary:
			t.Errorf("%s: neighbouring byte %d = %#x, want %#x (buffer % x)", step, i, b, byte(canary), got)
		}
	}
}

func TestLayoutMutexEveryOffset(t *testing.T) {
	deadline(t, 60*time.Second)
	for off := 0; off < 8; off++ {
		t.Run(fmt.Sprint("offset", off), func(t *testing.T) {
			buf, p := canaryBuf(t, off)
			m := nogil.MutexAt(p)
			if m.CPtr() != p {
				t.Fatalf("CPtr = %p, want %p", m.CPtr(), p)
			}

			m.Lock() // Go fast path
			checkBytes(t, "Go Lock", buf, off, 1)
			if !ctest.MutexIsLocked(p) || ctest.MutexTryLock(p) {
				t.Error("C does not see the Go-locked mutex as locked")
			}
			if st := ctest.MutexUnlock(p); st != ctest.OK {
				t.Errorf("C unlock of a Go-locked mutex = %d", st)
			}
			checkBytes(t, "C unlock", buf, off, 0)

			if st := ctest.MutexLock(p); st != ctest.OK {
				t.Fatalf("C lock = %d", st)
			}
			checkBytes(t, "C lock", buf, off, 1)
			if m.TryLock() {
				t.Error("Go TryLock succeeded on a C-locked mutex")
			}
			if !m.IsLocked() {
				t.Error("Go IsLocked false on a C-locked mutex")
			}
			if m.LockTimeout(time.Millisecond) {
				t.Error("Go LockTimeout succeeded on a C-locked mutex")
			}
			m.Unlock()
			checkBytes(t, "Go Unlock after C lock", buf, off, 0)

			// C holds, a Go waiter parks (byte 3), C's unlock wakes it.
			ctest.MutexLock(p)
			waiter := holdLock(m)
			waitParked(t, p, 1)
			checkBytes(t, "Go waiter parked on a C-held mutex", buf, off, 3)
			if st := ctest.MutexUnlock(p); st != ctest.OK {
				t.Fatalf("C unlock with a parked Go waiter = %d", st)
			}
			if !within(waiter.got, 10*time.Second) {
				t.Fatal("Go waiter not woken by the C unlock")
			}
			checkBytes(t, "Go waiter holds", buf, off, 1)
			close(waiter.release)
			<-waiter.done
			checkBytes(t, "Go waiter unlocked", buf, off, 0)

			// Go holds, a C waiter parks, Go's unlock wakes it.
			m.Lock()
			cgot := make(chan int)
			go func() {
				st := ctest.MutexLock(p)
				cgot <- st
			}()
			waitParked(t, p, 1)
			checkBytes(t, "C waiter parked on a Go-held mutex", buf, off, 3)
			m.Unlock()
			select {
			case st := <-cgot:
				if st != ctest.OK {
					t.Fatalf("C lock = %d", st)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("C waiter not woken by the Go unlock")
			}
			checkBytes(t, "C waiter holds", buf, off, 1)
			ctest.MutexUnlock(p)
			checkBytes(t, "end", buf, off, 0)
			if err := m.Close(); err != nil { // borrowed memory: Close must not free it
				t.Errorf("Close = %v", err)
			}
			checkBytes(t, "after Close", buf, off, 0)
		})
	}
}

// Eight mutexes packed into the bytes of two words, each hammered by a goroutine (Go word
// CAS) and by a C pthread (C byte CAS) at once: every counter must be exact, so no update of
// one byte ever undoes a concurrent update of its neighbour.
func TestLayoutAdjacentMutexesShareWords(t *testing.T) {
	deadline(t, 60*time.Second)
	const n, iters = 8, 5000
	locks := ctest.Alloc(n)
	defer ctest.Free(locks)
	counters := ctest.Alloc(8 * n)
	defer ctest.Free(counters)
	counter := func(i int) *int64 { return (*int64)(unsafe.Add(counters, 8*i)) }

	var threads []ctest.CounterThread
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		p := unsafe.Add(locks, i)
		m := nogil.MutexAt(p)
		threads = append(threads, ctest.StartCounterThread(p, unsafe.Pointer(counter(i)), iters))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; k < iters; k++ {
				m.Lock()
				incr(counter(i))
				m.Unlock()
			}
		}()
	}
	wg.Wait()
	for _, th := range threads {
		th.Join()
	}
	for i := 0; i < n; i++ {
		p := unsafe.Add(locks, i)
		ctest.MutexLock(p)
		got := *counter(i)
		ctest.MutexUnlock(p)
		if got != 2*iters {
			t.Errorf("counter %d = %d, want %d", i, got, 2*iters)
		}
		if b := ctest.Load8(p); b != 0 {
			t.Errorf("mutex %d byte = %d at the end, want 0", i, b)
		}
	}
}

func TestLayoutEventOddOffsets(t *testing.T) {
	deadline(t, 60*time.Second)
	for _, off := range []int{1, 3, 5, 7} {
		t.Run(fmt.Sprint("offset", off), func(t *testing.T) {
			// Go sets, C sees.
			buf, p := canaryBuf(t, off)
			e := nogil.EventAt(p)
			if e.IsSet() || ctest.EventIsSet(p) {
				t.Fatal("new event is set")
			}
			e.Set()
			checkBytes(t, "Go Set", buf, off, 1)
			if !ctest.EventIsSet(p) {
				t.Error("C does not see the Go-set event")
			}
			if st := ctest.EventWait(p); st != ctest.OK {
				t.Errorf("C wait on a set event = %d", st)
			}

			// A Go waiter parks (byte 2), C's notify wakes it.
			buf, p = canaryBuf(t, off)
			e = nogil.EventAt(p)
			done := goLocked(e.Wait)
			waitParked(t, p, 1)
			checkBytes(t, "Go waiter parked", buf, off, 2)
			if st := ctest.EventNotify(p); st != ctest.OK {
				t.Fatalf("C notify = %d", st)
			}
			if !within(done, 10*time.Second) {
				t.Fatal("Go waiter not woken by C's notify")
			}
			checkBytes(t, "C notify", buf, off, 1)
			if !e.IsSet() {
				t.Error("Go IsSet false after C notify")
			}

			// A C waiter parks, Go's Set wakes it.
			buf, p = canaryBuf(t, off)
			e = nogil.EventAt(p)
			cdone := make(chan int)
			go func() { cdone <- ctest.EventWait(p) }()
			waitParked(t, p, 1)
			e.Set()
			select {
			case st := <-cdone:
				if st != ctest.OK {
					t.Errorf("C wait = %d", st)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("C waiter not woken by Go's Set")
			}
			checkBytes(t, "Go Set with a C waiter", buf, off, 1)
		})
	}
}

func TestLayoutOnceOddOffsets(t *testing.T) {
	for _, off := range []int{1, 3, 5, 7} {
		t.Run(fmt.Sprint("offset", off), func(t *testing.T) {
			cCalls := cCounter(t)

			// Go runs it; C sees it done and does not run its own initialiser.
			buf, p := canaryBuf(t, off)
			o := nogil.OnceAt(p)
			goCalls := 0
			if err := o.Do(func() error { goCalls++; return nil }); err != nil {
				t.Fatal(err)
			}
			checkBytes(t, "Go Do", buf, off, 4)
			if !ctest.OnceIsDone(p) {
				t.Error("C does not see the Go once as done")
			}
			if st := ctest.OnceCall(p, unsafe.Pointer(cCalls)); st != 0 || *cCalls != 0 {
				t.Errorf("C once_call on a done flag = %d and ran %d times", st, *cCalls)
			}

			// C runs it; Go sees it done.
			buf, p = canaryBuf(t, off)
			o = nogil.OnceAt(p)
			if st := ctest.OnceCall(p, unsafe.Pointer(cCalls)); st != 0 || *cCalls != 1 {
				t.Fatalf("C once_call = %d, ran %d times", st, *cCalls)
			}
			checkBytes(t, "C once_call", buf, off, 4)
			if !o.Done() {
				t.Error("Go Done false after C ran the once")
			}
			if err := o.Do(func() error { goCalls++; return nil }); err != nil || goCalls != 1 {
				t.Errorf("Go Do on a C-done flag = %v, Go initialiser ran %d times in total (want 1)", err, goCalls)
			}
			checkBytes(t, "end", buf, off, 4)
		})
	}
}

func TestLayoutRWMutex(t *testing.T) {
	deadline(t, 30*time.Second)
	rw := nogil.NewRWMutex()
	closeOK(t, rw)
	p := rw.CPtr()
	bits := func() uintptr { return ctest.LoadUintptr(p) }

	rw.RLock()
	rw.RLock()
	if b := bits(); b != 8 {
		t.Errorf("bits after two Go RLocks = %d, want 8", b)
	}
	if ctest.RWTryLock(p) {
		t.Fatal("C trylock succeeded on a Go read-locked rwmutex")
	}
	// A C writer parks behind the Go readers; the last Go RUnlock lets it in.
	cdone := make(chan int)
	go func() { cdone <- ctest.RWLock(p) }()
	if !waitFor(10*time.Second, func() bool { return bits() == 10 }) {
		t.Fatalf("bits with a parked C writer = %d, want 10", bits())
	}
	rw.RUnlock()
	rw.RUnlock()
	select {
	case st := <-cdone:
		if st != ctest.OK {
			t.Fatalf("C lock = %d", st)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("C writer not woken by the Go readers' RUnlock")
	}
	if b := bits(); b&1 == 0 {
		t.Errorf("bits while the C writer holds = %d, want the writer bit", b)
	}
	if rw.TryRLock() || rw.TryLock() {
		t.Fatal("Go TryRLock/TryLock succeeded on a C write-locked rwmutex")
	}
	if st := ctest.RWUnlock(p); st != ctest.OK {
		t.Fatalf("C unlock = %d", st)
	}
	if b := bits(); b != 0 {
		t.Errorf("bits after C unlock = %d, want 0", b)
	}

	// Go writer, C readers.
	rw.Lock()
	if b := bits(); b != 1 {
		t.Errorf("bits after Go Lock = %d, want 1", b)
	}
	if ctest.RWTryRLock(p) {
		t.Error("C tryrlock succeeded on a Go write-locked rwmutex")
	}
	rw.Unlock()
	if st := ctest.RWRLock(p); st != ctest.OK {
		t.Fatalf("C rlock = %d", st)
	}
	if b := bits(); b != 4 {
		t.Errorf("bits after C rlock = %d, want 4", b)
	}
	rw.RUnlock() // a C read lock released from Go: one protocol
	if b := bits(); b != 0 {
		t.Errorf("bits after Go RUnlock of a C read lock = %d, want 0", b)
	}
}

func TestLayoutSeqLock(t *testing.T) {
	s := nogil.NewSeqLock()
	closeOK(t, s)
	p := s.CPtr()

	s.BeginWrite()
	if seq := ctest.Load32(p); seq&1 == 0 {
		t.Errorf("C sees sequence %d during a Go write, want odd", seq)
	}
	s.EndWrite()
	if seq := ctest.Load32(p); seq != 2 {
		t.Errorf("sequence after one Go write = %d, want 2", seq)
	}

	seq := ctest.SeqReadBegin(p)
	if ctest.SeqReadRetry(p, seq) {
		t.Error("C read retry with no write in between")
	}
	s.BeginWrite()
	s.EndWrite()
	if !ctest.SeqReadRetry(p, seq) {
		t.Error("C read does not see the Go write (retry false)")
	}

	seq = ctest.SeqReadBegin(p)
	s.BeginWrite()
	s.AbandonWrite()
	if ctest.SeqReadRetry(p, seq) {
		t.Error("C read must not retry over an abandoned Go write")
	}

	gseq := s.BeginRead()
	ctest.SeqWriteBegin(p)
	if !s.Retry(gseq) {
		t.Error("Go Retry false during a C write")
	}
	ctest.SeqWriteEnd(p)
	if !s.Retry(gseq) {
		t.Error("Go Retry false after a C write")
	}
	if got := s.BeginRead(); got != gseq+2 {
		t.Errorf("Go BeginRead after a C write = %d, want %d", got, gseq+2)
	}
}

func TestLayoutRecursiveMutex(t *testing.T) {
	for i, item := range ctest.LayoutItems {
		if c, g := ctest.CLayout(i), ctest.GoLayout(i); c != g {
			t.Errorf("%s: C says %d, cgo's Go view %d", item, c, g)
		}
	}

	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	m := nogil.NewRecursiveMutex()
	closeOK(t, m)
	p := m.CPtr()
	m.Lock()
	if !ctest.RecursiveIsOwned(p) {
		t.Error("C ng_recursive_mutex_is_owned false on the thread that locked from Go")
	}
	if id := ctest.RecursiveThread(p); id == 0 || id != ctest.ThreadID() {
		t.Errorf("thread field = %d, want this thread's id %d (nonzero)", id, ctest.ThreadID())
	}
	if b := ctest.RecursiveBits(p); b != 1 {
		t.Errorf("inner mutex byte = %d, want 1", b)
	}
	other := make(chan bool)
	go func() {
		runtime.LockOSThread() // a different thread: ours is locked to this goroutine
		defer runtime.UnlockOSThread()
		other <- ctest.RecursiveIsOwned(p)
	}()
	if <-other {
		t.Error("C reports the recursive mutex owned by another thread")
	}
	m.Unlock()
	if ctest.RecursiveIsOwned(p) || ctest.RecursiveThread(p) != 0 || ctest.RecursiveBits(p) != 0 {
		t.Errorf("after Unlock: owned %v, thread %d, byte %d; want false, 0, 0",
			ctest.RecursiveIsOwned(p), ctest.RecursiveThread(p), ctest.RecursiveBits(p))
	}
}
