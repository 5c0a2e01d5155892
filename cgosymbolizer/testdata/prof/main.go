// Command prof is run by the cgosymbolizer tests: with the package blank-imported, it takes
// a CPU profile at a high sampling rate while goroutines spin in C code and while other
// C code keeps taking the dynamic loader's and malloc's locks, then writes the profile to
// the file named by its first argument. It must finish (no deadlock in the signal handler)
// and the profile must name the C functions.
package main

/*
#cgo CFLAGS: -O1 -g -fno-omit-frame-pointer
#include <stdint.h>
uint64_t prof_spin_outer(uint64_t n);
int prof_phdr_loop(int n);
uint64_t prof_malloc_loop(int n);
*/
import "C"

import (
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"sync"
	"time"

	_ "github.com/nogil-go/nogil/cgosymbolizer"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: prof out.pprof")
		os.Exit(2)
	}
	f, err := os.Create(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// More SIGPROF than the default 100 Hz. (StartCPUProfile then prints a harmless
	// "cannot set cpu profile rate" warning and keeps this rate.)
	runtime.SetCPUProfileRate(1000)
	if err := pprof.StartCPUProfile(f); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}

	deadline := time.Now().Add(300 * time.Millisecond)
	var wg sync.WaitGroup
	loop := func(body func()) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				body()
			}
		}()
	}
	for i := 0; i < 2; i++ {
		loop(func() { C.prof_spin_outer(2_000_000) })
	}
	loop(func() { C.prof_phdr_loop(200) })
	loop(func() { C.prof_malloc_loop(2000) })
	loop(func() { // Go code too, and Go -> C -> Go transitions through the runtime
		s := make([]byte, 1<<10)
		for i := range s {
			s[i] = byte(i)
		}
		runtime.Gosched()
	})
	wg.Wait()

	pprof.StopCPUProfile()
	if err := f.Close(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println("prof: ok")
}
