package nogil_test

import (
	"fmt"
	"sync/atomic"

	"github.com/nogil-go/nogil"
)

// A goroutine takes part in an interpreter through a ThreadState bound to it: attached while
// it reads shared structures, detached while it blocks, released at the end.
func ExampleInterpreter_Bind() {
	in, err := nogil.NewInterpreter()
	if err != nil {
		panic(err)
	}
	defer in.Close()

	done := make(chan struct{})
	go func() {
		defer close(done)
		ts, err := in.Bind() // locks this goroutine to its OS thread until Release
		if err != nil {
			panic(err)
		}
		defer ts.Release()
		fmt.Println("after Bind:", ts.State())
		if err := ts.Attach(); err != nil {
			panic(err)
		}
		fmt.Println("after Attach:", ts.State())
		if err := ts.Detach(); err != nil {
			panic(err)
		}
		fmt.Println("after Detach:", ts.State())
	}()
	<-done
	// Output:
	// after Bind: detached
	// after Attach: attached
	// after Detach: detached
}

// Attach again after a blocking operation: a goroutine that blocks while attached would hold
// up every grace period and stop-the-world of the interpreter.
func ExampleThreadState_Attach() {
	in, _ := nogil.NewInterpreter()
	defer in.Close()
	requests := make(chan int, 1)
	requests <- 42

	done := make(chan struct{})
	go func() {
		defer close(done)
		ts, _ := in.Bind()
		defer ts.Release()
		ts.Attach()
		// ... read lock-free structures ...
		ts.Detach()
		r := <-requests // may block: detached
		ts.Attach()
		fmt.Println("handled request", r, "attached:", ts.State() == nogil.Attached)
	}()
	<-done
	// Output: handled request 42 attached: true
}

// A long computation while attached reports quiescent states and honours stop-the-world and
// GIL requests at its checkpoints. Between two checkpoints it may keep pointers into
// QSBR-protected memory; across one it may not.
func ExampleThreadState_Checkpoint() {
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
		sum := 0
		for i := 0; i < 1000; i++ {
			t := *table.Load() // valid until the next checkpoint
			sum += t[i%len(t)]
			if err := ts.Checkpoint(); err != nil {
				panic(err)
			}
		}
		fmt.Println(sum)
	}()
	<-done
	// Output: 1999
}

// Replace a shared configuration without locks: readers load it while attached; the writer
// swaps in the new one and recycles the old one with CallDelayed, which runs only once no
// reader can still be using it.
func ExampleThreadState_CallDelayed() {
	in, _ := nogil.NewInterpreter()
	defer in.Close()
	type config struct{ name string }
	var current atomic.Pointer[config]
	current.Store(&config{name: "v1"})

	done := make(chan struct{})
	go func() {
		defer close(done)
		ts, _ := in.Bind()
		defer ts.Release()
		ts.Attach()
		old := current.Swap(&config{name: "v2"})
		ts.CallDelayed(func() {
			fmt.Println("no reader uses", old.name, "any more")
		}, 0)
		ts.Barrier() // waits for it (normally the checkpoints get there by themselves)
		fmt.Println("current:", current.Load().name)
	}()
	<-done
	// Output:
	// no reader uses v1 any more
	// current: v2
}
