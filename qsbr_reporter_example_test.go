package nogil_test

import (
	"fmt"
	"sync/atomic"

	"github.com/nogil-go/nogil"
)

// A hot read loop reports its quiescent states through a QuiescentReporter taken once before
// the loop: the report then costs about as much as in C.
func ExampleQuiescentReporter() {
	in, _ := nogil.NewInterpreter()
	defer in.Close()
	table := &atomic.Pointer[[]int]{}
	table.Store(&[]int{1, 2, 3})

	done := make(chan struct{})
	go func() {
		defer close(done)
		ts, _ := in.Bind()
		defer ts.Release()
		ts.Attach()
		r := ts.QuiescentReporter()
		sum := 0
		for i := 0; i < 1_000_000; i++ {
			t := *table.Load() // valid until the next report
			sum += t[i%len(t)]
			if err := r.QuiescentState(); err != nil {
				panic(err)
			}
		}
		fmt.Println(sum)
	}()
	<-done
	// Output: 1999999
}

// The hottest loops test Report's bool and ask Err only when it is false: a loop that tests
// QuiescentState's error pays an extra jump per call.
func ExampleQuiescentReporter_Report() {
	in, _ := nogil.NewInterpreter()
	defer in.Close()
	counter := &atomic.Pointer[int]{}
	n := 0
	counter.Store(&n)

	done := make(chan struct{})
	go func() {
		defer close(done)
		ts, _ := in.Bind()
		defer ts.Release()
		ts.Attach()
		r := ts.QuiescentReporter()
		sum := 0
		for i := 0; i < 1000; i++ {
			sum += *counter.Load() + 1
			if !r.Report() {
				panic(r.Err())
			}
		}
		fmt.Println(sum)
		ts.Detach()
		if !r.Report() {
			fmt.Println("detached:", r.Err())
		}
	}()
	<-done
	// Output:
	// 1000
	// detached: nogil: QuiescentState: ThreadState is not attached; call Attach first
}
