package mimalloc_shim_test

import (
	"fmt"
	"unsafe"

	"github.com/nogil-go/nogil"
	"github.com/nogil-go/nogil/mimalloc_shim"
)

// Allocate and free on a bound, attached ThreadState.
func Example() {
	in, err := nogil.NewInterpreter()
	if err != nil {
		panic(err)
	}
	defer in.Close()

	done := make(chan struct{})
	go func() { // a goroutine of its own: Bind locks it to its OS thread until Release
		defer close(done)
		ts, err := in.Bind()
		if err != nil {
			panic(err)
		}
		defer ts.Release()
		if err := ts.Attach(); err != nil {
			panic(err)
		}
		h, err := mimalloc_shim.HeapOf(ts, mimalloc_shim.Mem)
		if err != nil {
			panic(err)
		}
		var blocks [3]unsafe.Pointer
		for i := range blocks {
			if blocks[i], err = h.Malloc(100); err != nil {
				panic(err)
			}
		}
		p := blocks[0]
		copy(unsafe.Slice((*byte)(p), 100), "hello")
		fmt.Println(string(unsafe.Slice((*byte)(p), 5)), mimalloc_shim.UsableSize(p) >= 100)
		s, _ := h.Stats()
		fmt.Println("blocks in use:", s.BlocksInUse)

		// The owner frees with the heap's fast path; any goroutine may use the
		// package-level Free.
		if err := h.Free(blocks[0]); err != nil {
			panic(err)
		}
		freed := make(chan error)
		go func() { freed <- mimalloc_shim.Free(blocks[1]) }()
		if err := <-freed; err != nil {
			panic(err)
		}
		h.Collect(false) // takes back the other goroutine's free
		s, _ = h.Stats()
		fmt.Println("blocks in use:", s.BlocksInUse)
		mimalloc_shim.Free(blocks[2])
	}()
	<-done
	// Output:
	// hello true
	// blocks in use: 3
	// blocks in use: 1
}

// Emptied pages of an object heap wait for a QSBR goal: while another thread state is
// attached and has not reported a quiescent state, it may still be reading the freed
// objects' headers, so the pages stay in their heap (usable only for their own size class).
func ExampleHeap_Collect_qsbrGatedReuse() {
	in, err := nogil.NewInterpreter()
	if err != nil {
		panic(err)
	}
	defer in.Close()

	// A reader: attached, and silent until told to report.
	report, reported, released := make(chan struct{}), make(chan struct{}), make(chan struct{})
	attached := make(chan struct{})
	go func() {
		defer close(released)
		ts, _ := in.Bind()
		defer ts.Release()
		ts.Attach()
		close(attached)
		<-report
		ts.QuiescentState() // done with what it read before
		ts.Detach()         // and quiescent from now on
		close(reported)
	}()
	<-attached

	done := make(chan struct{})
	go func() {
		defer close(done)
		ts, _ := in.Bind()
		defer ts.Release()
		ts.Attach()
		h, _ := mimalloc_shim.HeapOf(ts, mimalloc_shim.Object)
		blocks := make([]unsafe.Pointer, 4096) // four 64 KiB pages of 64-byte blocks
		for i := range blocks {
			blocks[i], _ = h.Malloc(64)
		}
		for _, p := range blocks {
			h.Free(p)
		}
		ts.QuiescentState()
		h.Collect(false)
		s, _ := h.Stats()
		fmt.Println("reader silent: pages waiting:", s.PagesWaiting > 0)

		close(report)
		<-reported
		// Some pages may wait for a later goal (one no advance has produced yet): a collect
		// advances the write sequence for them and the owner's next report reaches it.
		for i := 0; i < 10 && s.PagesWaiting > 0; i++ {
			ts.QuiescentState()
			h.Collect(false)
			s, _ = h.Stats()
		}
		fmt.Println("reader reported and detached: pages waiting:", s.PagesWaiting, "released:", s.PagesReleasedAfterGoal > 0)
	}()
	<-done
	<-released
	// Output:
	// reader silent: pages waiting: true
	// reader reported and detached: pages waiting: 0 released: true
}

// Choose which segments use transparent huge pages: here ordinary pages everywhere, as a
// process that keeps many small heaps might prefer.
func ExampleSetHugepages() {
	before := mimalloc_shim.CurrentHugepages()
	if err := mimalloc_shim.SetHugepages(mimalloc_shim.HugepagesNever); err != nil {
		panic(err)
	}
	fmt.Println(mimalloc_shim.CurrentHugepages())
	_ = mimalloc_shim.SetHugepages(before)
	// Output: never
}
