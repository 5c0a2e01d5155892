package main

// The page allocator's rows (allocbench_nogil.c). Its C sources are compiled once, in package
// mimalloc_shim; importing the package links them in (as importing the root package links
// the C core).

// #include "allocbench.h"
import "C"

import _ "github.com/nogil-go/nogil/mimalloc_shim"

func nogilImplementation() (*allocImpl, string) { return nogilAllocImpl, "" }

var nogilAllocImpl = &allocImpl{
	name: allocNogil,
	run:  func(p *C.ab_params, r *C.ab_result) C.int { return C.ab_run_nogil(p, r) },
}
