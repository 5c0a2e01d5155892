package nogil_test

// Benchmarks of the thread-state and QSBR paths, each next to its reference measured in the
// same run: the C inline spelling of the same operation (one cgo call per op, so the
// reference includes the cgo cost the Go fast paths avoid), or plain malloc/free.
//
//	go test -run '^$' -bench 'QuiescentState|Checkpoint|FreeDelayed|AttachDetach' -count 6 .

import (
	"runtime"
	"testing"

	"github.com/nogil-go/nogil"
	"github.com/nogil-go/nogil/internal/ctest"
)

// benchState runs f on the calling goroutine with an attached ThreadState.
func benchState(b *testing.B, f func(ts *nogil.ThreadState)) {
	in, err := nogil.NewInterpreter()
	if err != nil {
		b.Fatal(err)
	}
	defer in.Close()
	ts, err := in.Bind()
	if err != nil {
		b.Fatal(err)
	}
	defer ts.Release()
	if err := ts.Attach(); err != nil {
		b.Fatal(err)
	}
	f(ts)
}

func BenchmarkQuiescentState(b *testing.B) {
	b.Run("go", func(b *testing.B) {
		benchState(b, func(ts *nogil.ThreadState) {
			for b.Loop() {
				ts.QuiescentState()
			}
		})
	})
	b.Run("reference=cgo-checkpoint", func(b *testing.B) {
		benchState(b, func(ts *nogil.ThreadState) {
			c := ts.CPtr()
			for b.Loop() {
				ctest.TSCheckpoint(c)
			}
		})
	})
}

func BenchmarkCheckpoint(b *testing.B) {
	b.Run("go", func(b *testing.B) {
		benchState(b, func(ts *nogil.ThreadState) {
			for b.Loop() {
				ts.Checkpoint()
			}
		})
	})
	b.Run("reference=cgo-checkpoint", func(b *testing.B) {
		benchState(b, func(ts *nogil.ThreadState) {
			c := ts.CPtr()
			for b.Loop() {
				ctest.TSCheckpoint(c)
			}
		})
	})
}

// One op: allocate 64 bytes of C memory and retire them; the checkpoints process the queue
// as the memory-aware limits ask. The reference allocates and frees at once.
func BenchmarkFreeDelayed(b *testing.B) {
	b.Run("go", func(b *testing.B) {
		benchState(b, func(ts *nogil.ThreadState) {
			i := 0
			for b.Loop() {
				ts.FreeDelayed(ctest.Alloc(64), 64)
				if i++; i%64 == 0 {
					ts.Checkpoint()
				}
			}
			b.StopTimer()
			ts.Barrier()
		})
	})
	b.Run("reference=malloc-free", func(b *testing.B) {
		for b.Loop() {
			ctest.Free(ctest.Alloc(64))
		}
	})
}

func BenchmarkAttachDetach(b *testing.B) {
	b.Run("go", func(b *testing.B) {
		benchState(b, func(ts *nogil.ThreadState) {
			ts.Detach()
			for b.Loop() {
				ts.Attach()
				ts.Detach()
			}
			ts.Attach()
		})
	})
	b.Run("reference=cgo-attach-detach", func(b *testing.B) {
		benchState(b, func(ts *nogil.ThreadState) {
			c := ts.CPtr()
			ts.Detach()
			for b.Loop() {
				ctest.TSAttach(c)
				ctest.TSDetach(c)
			}
			ts.Attach()
		})
	})
	// Bind and Release a state per op: the cost of a short-lived goroutine's membership.
	b.Run("bind-release", func(b *testing.B) {
		in, err := nogil.NewInterpreter()
		if err != nil {
			b.Fatal(err)
		}
		defer in.Close()
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		for b.Loop() {
			ts, _ := in.Bind()
			ts.Release()
		}
	})
}
