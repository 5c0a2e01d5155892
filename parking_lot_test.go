package nogil_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/nogil-go/nogil"
	"github.com/nogil-go/nogil/internal/ctest"
)

// cWord returns 64 zeroed, 64-byte aligned bytes of C memory, freed at the end of the test.
func cWord(t testing.TB) unsafe.Pointer {
	p := ctest.Alloc(64)
	t.Cleanup(func() { ctest.Free(p) })
	return p
}

// waitWaiters waits until exactly n threads are parked on addr.
func waitWaiters(t testing.TB, addr unsafe.Pointer, n int) {
	t.Helper()
	if !waitFor(10*time.Second, func() bool { return nogil.ParkedWaiters(addr) == n }) {
		t.Fatalf("ParkedWaiters = %d, want %d", nogil.ParkedWaiters(addr), n)
	}
}

type unparkCall struct {
	token      uintptr
	woke, more bool
}

// unparkRecord calls Unpark with a callback that records its arguments.
func unparkRecord(t testing.TB, addr unsafe.Pointer) (unparkCall, bool) {
	t.Helper()
	var calls []unparkCall
	woke, err := nogil.Unpark(addr, func(token uintptr, woke, more bool) {
		calls = append(calls, unparkCall{token, woke, more})
	})
	if err != nil {
		t.Fatalf("Unpark: %v", err)
	}
	if len(calls) != 1 {
		t.Fatalf("Unpark called its callback %d times, want exactly 1", len(calls))
	}
	if calls[0].woke != woke {
		t.Errorf("Unpark returned %v but its callback was told woke=%v", woke, calls[0].woke)
	}
	return calls[0], woke
}

func TestParkValueChangedEachSize(t *testing.T) {
	addr := cWord(t)
	ctest.Store32(addr, 0x11223344)
	ctest.Store32(unsafe.Add(addr, 4), 0x55667788)
	memory := ctest.Load64(addr) // whatever the byte order makes of the 8 bytes
	for _, size := range []uintptr{1, 2, 4, 8} {
		t.Run(fmt.Sprint("size", size), func(t *testing.T) {
			low := memory
			if size < 8 {
				low &= 1<<(8*size) - 1
			}
			// A mismatch in the compared bytes: ValueChanged, without sleeping.
			res, err := nogil.Park(addr, low^1, size, nogil.Forever, 0)
			if err != nil || res != nogil.ValueChanged {
				t.Errorf("Park(mismatch) = %v, %v; want ValueChanged", res, err)
			}
			// A match, with garbage above the compared bytes that must be ignored.
			expected := low
			if size < 8 {
				expected |= 0xdead << (8 * size)
			}
			res, err = nogil.Park(addr, expected, size, 0, 0)
			if err != nil || res != nogil.TimedOut {
				t.Errorf("Park(match, timeout 0) = %v, %v; want TimedOut (only the low %d bytes count)",
					res, err, size)
			}
		})
	}
	if n := nogil.ParkedWaiters(addr); n != 0 {
		t.Errorf("ParkedWaiters = %d, want 0", n)
	}
}

func TestParkInvalidArguments(t *testing.T) {
	addr := cWord(t)
	cases := []struct {
		name string
		addr unsafe.Pointer
		size uintptr
	}{
		{"size 3", addr, 3},
		{"size 0", addr, 0},
		{"size 16", addr, 16},
		{"nil", nil, 4},
		{"misaligned 2", unsafe.Add(addr, 1), 2},
		{"misaligned 4", unsafe.Add(addr, 2), 4},
		{"misaligned 8", unsafe.Add(addr, 4), 8},
	}
	for _, c := range cases {
		res, err := nogil.Park(c.addr, 0, c.size, nogil.Forever, 0)
		if !errors.Is(err, nogil.ErrInvalid) {
			t.Errorf("Park(%s) = %v, %v; want ErrInvalid", c.name, res, err)
		}
	}
	if _, err := nogil.Unpark(nil, nil); !errors.Is(err, nogil.ErrInvalid) {
		t.Errorf("Unpark(nil) error = %v, want ErrInvalid", err)
	}
	if _, err := nogil.UnparkAll(nil); !errors.Is(err, nogil.ErrInvalid) {
		t.Errorf("UnparkAll(nil) error = %v, want ErrInvalid", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := nogil.ParkContext(ctx, addr, 0, 3, 0); !errors.Is(err, nogil.ErrInvalid) {
		t.Errorf("ParkContext(size 3) error = %v, want ErrInvalid", err)
	}
	if n := nogil.ParkedWaiters(nil); n != 0 {
		t.Errorf("ParkedWaiters(nil) = %d, want 0", n)
	}
}

func TestParkTimeout(t *testing.T) {
	deadline(t, 30*time.Second)
	addr := cWord(t)
	res, err := nogil.Park(addr, 0, 4, 0, 0)
	if err != nil || res != nogil.TimedOut {
		t.Errorf("Park(timeout 0) = %v, %v; want TimedOut", res, err)
	}
	for _, d := range []time.Duration{time.Microsecond, time.Millisecond, 25 * time.Millisecond} {
		start := time.Now()
		res, err := nogil.Park(addr, 0, 4, d, 0)
		el := time.Since(start)
		if err != nil || res != nogil.TimedOut {
			t.Errorf("Park(timeout %v) = %v, %v; want TimedOut", d, res, err)
		}
		if el < d {
			t.Errorf("Park(timeout %v) returned after only %v", d, el)
		}
	}
	if n := nogil.ParkedWaiters(addr); n != 0 {
		t.Errorf("ParkedWaiters after timeouts = %d, want 0", n)
	}
}

// Waiters on one address are woken first-in first-out, and the callback sees each one's token
// and whether more are waiting.
func TestParkFIFOAndUnparkCallback(t *testing.T) {
	deadline(t, 30*time.Second)
	addr := cWord(t)
	const n = 4
	results := make([]nogil.ParkResult, n)
	errs := make([]error, n)
	var dones []<-chan struct{}
	for k := 0; k < n; k++ {
		dones = append(dones, goLocked(func() {
			results[k], errs[k] = nogil.Park(addr, 0, 4, nogil.Forever, uintptr(100+k))
		}))
		waitWaiters(t, addr, k+1) // start the next only once this one is queued
	}
	for k := 0; k < n; k++ {
		call, woke := unparkRecord(t, addr)
		want := unparkCall{token: uintptr(100 + k), woke: true, more: k < n-1}
		if !woke || call != want {
			t.Errorf("Unpark #%d: returned %v, callback %+v; want true, %+v", k, woke, call, want)
		}
		if !within(dones[k], 10*time.Second) {
			t.Fatalf("parker %d did not return after its Unpark", k)
		}
		if errs[k] != nil || results[k] != nogil.Unparked {
			t.Errorf("parker %d: Park = %v, %v; want Unparked", k, results[k], errs[k])
		}
	}
	// Nobody left: the callback still runs, told nobody woke.
	call, woke := unparkRecord(t, addr)
	if woke || call != (unparkCall{}) {
		t.Errorf("Unpark with no waiters: returned %v, callback %+v; want false, {0 false false}", woke, call)
	}
	// Unpark with a nil callback.
	if woke, err := nogil.Unpark(addr, nil); woke || err != nil {
		t.Errorf("Unpark(nil fn) with no waiters = %v, %v", woke, err)
	}
}

// A parker whose token is 0 is still reported as woken: this is why UnparkFunc has `woke`.
func TestUnparkTokenZero(t *testing.T) {
	deadline(t, 30*time.Second)
	addr := cWord(t)
	var res nogil.ParkResult
	done := goLocked(func() { res, _ = nogil.Park(addr, 0, 4, nogil.Forever, 0) })
	waitWaiters(t, addr, 1)
	call, woke := unparkRecord(t, addr)
	if !woke || call != (unparkCall{token: 0, woke: true, more: false}) {
		t.Errorf("Unpark of a token-0 parker: returned %v, callback %+v; want true, {0 true false}", woke, call)
	}
	if !within(done, 10*time.Second) {
		t.Fatal("parker not woken")
	}
	if res != nogil.Unparked {
		t.Errorf("Park = %v, want Unparked", res)
	}
}

// Parkers on another address in the same memory are not woken, and Unpark's callback runs
// under the bucket lock: what it stores is seen by any later parker (no lost wake-up).
func TestUnparkCallbackStoreIsAtomicWithPark(t *testing.T) {
	deadline(t, 30*time.Second)
	addr := cWord(t)
	other := unsafe.Add(addr, 8)
	var otherRes nogil.ParkResult
	otherDone := goLocked(func() { otherRes, _ = nogil.Park(other, 0, 4, nogil.Forever, 7) })
	waitWaiters(t, other, 1)

	var res nogil.ParkResult
	done := goLocked(func() { res, _ = nogil.Park(addr, 0, 4, nogil.Forever, 1) })
	waitWaiters(t, addr, 1)
	woke, err := nogil.Unpark(addr, func(token uintptr, woke, more bool) {
		ctest.Store32(addr, 1) // under the bucket lock
	})
	if !woke || err != nil {
		t.Fatalf("Unpark = %v, %v", woke, err)
	}
	<-done
	if res != nogil.Unparked {
		t.Errorf("Park = %v, want Unparked", res)
	}
	// The value changed under the lock: a new parker expecting 0 does not sleep.
	if r, _ := nogil.Park(addr, 0, 4, nogil.Forever, 0); r != nogil.ValueChanged {
		t.Errorf("Park after the callback's store = %v, want ValueChanged", r)
	}
	if n := nogil.ParkedWaiters(other); n != 1 {
		t.Errorf("waiter on the neighbouring address was disturbed: ParkedWaiters = %d", n)
	}
	if n, _ := nogil.UnparkAll(other); n != 1 {
		t.Errorf("UnparkAll(other) = %d, want 1", n)
	}
	<-otherDone
	if otherRes != nogil.Unparked {
		t.Errorf("other Park = %v, want Unparked", otherRes)
	}
}

func TestUnparkAll(t *testing.T) {
	deadline(t, 30*time.Second)
	addr := cWord(t)
	if n, err := nogil.UnparkAll(addr); n != 0 || err != nil {
		t.Errorf("UnparkAll with no waiters = %d, %v", n, err)
	}
	const n = 3
	results := make([]nogil.ParkResult, n)
	var wg sync.WaitGroup
	for k := 0; k < n; k++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			results[k], _ = nogil.Park(addr, 0, 4, nogil.Forever, uintptr(k))
		}()
	}
	waitWaiters(t, addr, n)
	if got, err := nogil.UnparkAll(addr); got != n || err != nil {
		t.Errorf("UnparkAll = %d, %v; want %d", got, err, n)
	}
	wg.Wait()
	for k, r := range results {
		if r != nogil.Unparked {
			t.Errorf("parker %d: %v, want Unparked", k, r)
		}
	}
	if w := nogil.ParkedWaiters(addr); w != 0 {
		t.Errorf("ParkedWaiters after UnparkAll = %d", w)
	}
}

func TestParkContext(t *testing.T) {
	deadline(t, 30*time.Second)
	addr := cWord(t)

	// Cancelled while parked.
	ctx, cancel := context.WithCancel(context.Background())
	var res nogil.ParkResult
	var err error
	done := goLocked(func() { res, err = nogil.ParkContext(ctx, addr, 0, 4, 1) })
	waitWaiters(t, addr, 1)
	cancel()
	if !within(done, 10*time.Second) {
		t.Fatal("ParkContext did not return within 10 s of the cancel")
	}
	if err != nil || res != nogil.Cancelled {
		t.Errorf("ParkContext after cancel = %v, %v; want Cancelled", res, err)
	}
	if n := nogil.ParkedWaiters(addr); n != 0 {
		t.Errorf("ParkedWaiters after cancel = %d, want 0", n)
	}

	// Already cancelled: does not sleep.
	res, err = nogil.ParkContext(ctx, addr, 0, 4, 1)
	if err != nil || res != nogil.Cancelled {
		t.Errorf("ParkContext with a done context = %v, %v; want Cancelled", res, err)
	}

	// Deadline.
	tctx, tcancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer tcancel()
	res, err = nogil.ParkContext(tctx, addr, 0, 4, 1)
	if err != nil || res != nogil.Cancelled {
		t.Errorf("ParkContext past its deadline = %v, %v; want Cancelled", res, err)
	}
	// The context itself says whether the deadline had passed (a clock read taken after
	// WithTimeout could not: it starts late).
	if tctx.Err() == nil {
		t.Errorf("ParkContext returned Cancelled before its deadline")
	}

	// Value mismatch, with a live context.
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	if res, err = nogil.ParkContext(ctx2, addr, 5, 4, 1); err != nil || res != nogil.ValueChanged {
		t.Errorf("ParkContext(mismatch) = %v, %v; want ValueChanged", res, err)
	}

	// Unparked normally, with a live context and with Background.
	for _, c := range []context.Context{ctx2, context.Background()} {
		done = goLocked(func() { res, err = nogil.ParkContext(c, addr, 0, 4, 9) })
		waitWaiters(t, addr, 1)
		call, woke := unparkRecord(t, addr)
		if !woke || call.token != 9 {
			t.Errorf("Unpark of a ParkContext waiter: %v, %+v", woke, call)
		}
		if !within(done, 10*time.Second) {
			t.Fatal("ParkContext waiter not woken by Unpark")
		}
		if err != nil || res != nogil.Unparked {
			t.Errorf("ParkContext = %v, %v; want Unparked", res, err)
		}
	}
}

// Go unparks a C pthread and receives the token C parked with.
func TestUnparkCParker(t *testing.T) {
	deadline(t, 30*time.Second)
	addr := cWord(t)
	th := ctest.StartParkThread(addr, 0, 0xC0FFEE, -1)
	waitWaiters(t, addr, 1)
	call, woke := unparkRecord(t, addr)
	if !woke || call.token != 0xC0FFEE {
		t.Errorf("Unpark of a C parker: %v, %+v; want token 0xC0FFEE", woke, call)
	}
	if st := th.Join(); st != ctest.OK {
		t.Errorf("C ng_park = %d, want NG_OK", st)
	}
}

// R15: a timeout racing with an unpark never loses the wake-up. A parker with tiny random
// timeouts against an unparker in a loop: the parker's Unparked results must correspond one
// to one with the callbacks that reported waking it, token by token.
func TestParkTimeoutUnparkRace(t *testing.T) {
	deadline(t, 60*time.Second)
	addr := cWord(t)
	rounds := 10000
	if testing.Short() {
		rounds = 2000
	}

	results := make([]nogil.ParkResult, rounds)
	var finished atomic.Bool
	parkerDone := goLocked(func() {
		defer finished.Store(true)
		for i := 0; i < rounds; i++ {
			var d time.Duration
			switch rand.IntN(4) {
			case 0:
				d = 0
			case 1:
				d = time.Duration(rand.IntN(5)) * time.Microsecond
			default:
				d = time.Duration(rand.IntN(100)) * time.Microsecond
			}
			r, err := nogil.Park(addr, 0, 4, d, uintptr(i+1))
			if err != nil {
				t.Errorf("round %d: Park: %v", i, err)
			}
			results[i] = r
		}
	})

	wokenBy := make(map[uintptr]int) // token -> callbacks that reported waking it
	var bad []unparkCall
	unparks := 0
	unparkerDone := goLocked(func() {
		for !finished.Load() {
			_, err := nogil.Unpark(addr, func(token uintptr, woke, more bool) {
				if woke {
					wokenBy[token]++
				} else if token != 0 || more {
					bad = append(bad, unparkCall{token, woke, more})
				}
			})
			if err != nil {
				t.Errorf("Unpark: %v", err)
				return
			}
			unparks++
			if rand.IntN(8) == 0 {
				time.Sleep(time.Duration(rand.IntN(50)) * time.Microsecond)
			}
		}
	})
	<-parkerDone
	<-unparkerDone

	counts := map[nogil.ParkResult]int{}
	for i, r := range results {
		counts[r]++
		token := uintptr(i + 1)
		switch r {
		case nogil.Unparked:
			if wokenBy[token] != 1 {
				t.Errorf("round %d returned Unparked but %d callbacks reported waking token %d",
					i, wokenBy[token], token)
			}
		case nogil.TimedOut:
			if wokenBy[token] != 0 {
				t.Errorf("round %d returned TimedOut but a callback reported waking it (lost wake-up)", i)
			}
		default:
			t.Errorf("round %d: Park = %v, want Unparked or TimedOut", i, r)
		}
		delete(wokenBy, token)
	}
	if len(wokenBy) != 0 {
		t.Errorf("callbacks reported waking tokens that no round used: %v", wokenBy)
	}
	if len(bad) != 0 {
		t.Errorf("callbacks without a woken thread had a token or more-waiters: %v", bad[:min(len(bad), 5)])
	}
	if n := nogil.ParkedWaiters(addr); n != 0 {
		t.Errorf("ParkedWaiters at the end = %d", n)
	}
	t.Logf("%d rounds, %d unparks: %d unparked, %d timed out", rounds, unparks,
		counts[nogil.Unparked], counts[nogil.TimedOut])
}

func TestParkResultString(t *testing.T) {
	for r, want := range map[nogil.ParkResult]string{
		nogil.Unparked: "unparked", nogil.ValueChanged: "value changed", nogil.TimedOut: "timed out",
		nogil.Interrupted: "interrupted", nogil.Cancelled: "cancelled", nogil.ParkResult(42): "ParkResult(42)",
	} {
		if got := r.String(); got != want {
			t.Errorf("%d.String() = %q, want %q", int(r), got, want)
		}
	}
}
