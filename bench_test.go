package nogil_test

// Micro-benchmarks against the standard library, for benchstat:
//
//	go test -run '^$' -bench . -count 6 . > new.txt

import (
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"unsafe"

	"github.com/nogil-go/nogil"
	"github.com/nogil-go/nogil/internal/ctest"
)

// locker is what the mutex benchmarks need from either implementation.
type locker interface {
	Lock()
	Unlock()
}

func newLocker(b *testing.B, name string) locker {
	if name == "sync" {
		return new(sync.Mutex)
	}
	m := nogil.NewMutex()
	b.Cleanup(func() { m.Close() })
	return m
}

func BenchmarkMutexUncontended(b *testing.B) {
	for _, name := range []string{"nogil", "sync"} {
		b.Run(name, func(b *testing.B) {
			m := newLocker(b, name)
			for b.Loop() {
				m.Lock()
				m.Unlock()
			}
		})
	}
}

func BenchmarkMutexContended(b *testing.B) {
	for _, name := range []string{"nogil", "sync"} {
		b.Run(name, func(b *testing.B) {
			m := newLocker(b, name)
			shared := 0
			b.RunParallel(func(pb *testing.PB) {
				local := 0
				for pb.Next() {
					m.Lock()
					shared++ // a tiny critical section
					local = shared
					m.Unlock()
				}
				_ = local
			})
		})
	}
}

func BenchmarkRWMutexRead(b *testing.B) {
	nrw := nogil.NewRWMutex()
	b.Cleanup(func() { nrw.Close() })
	var srw sync.RWMutex
	for _, bc := range []struct {
		name           string
		rlock, runlock func()
	}{
		{"nogil", nrw.RLock, nrw.RUnlock},
		{"sync", srw.RLock, srw.RUnlock},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					bc.rlock()
					bc.runlock()
				}
			})
		})
	}
}

// Two goroutines on OS threads of their own pass a turn back and forth through a word of C
// memory, each sleeping in the parking lot until it is its turn: one op is a full round trip
// (two wake-ups).
func BenchmarkParkUnparkRoundTrip(b *testing.B) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	mem := ctest.Alloc(4)
	defer ctest.Free(mem)
	turn := (*uint32)(mem)
	const ping, pong, stop = 0, 1, 2

	// waitTurn sleeps until *turn == want (or stop) and returns what it saw.
	waitTurn := func(want uint32) uint32 {
		for {
			v := atomic.LoadUint32(turn)
			if v == want || v == stop {
				return v
			}
			nogil.Park(mem, uint64(v), 4, nogil.Forever, 0)
		}
	}
	pass := func(to uint32) {
		atomic.StoreUint32(turn, to)
		nogil.Unpark(mem, nil)
	}

	done := goLocked(func() {
		for waitTurn(pong) != stop {
			pass(ping)
		}
	})
	for b.Loop() {
		pass(pong)
		waitTurn(ping)
	}
	atomic.StoreUint32(turn, stop)
	nogil.UnparkAll(unsafe.Pointer(turn))
	<-done
}
