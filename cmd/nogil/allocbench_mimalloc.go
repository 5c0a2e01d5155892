//go:build nogil_mimalloc

package main

// libmimalloc's rows (allocbench_mimalloc.c), built only with the nogil_mimalloc tag so that
// the tool builds where libmimalloc-dev is not installed. The library is not linked: the
// measuring process loads it with dlopen(RTLD_LOCAL) (see allocbench_mimalloc.c for why).

// #include <stdlib.h>
// #include "allocbench.h"
import "C"

import (
	"errors"
	"fmt"
	"unsafe"
)

// mimallocImplementation returns libmimalloc's side of the comparisons.
func mimallocImplementation() (*allocImpl, string) { return mimallocImpl, "" }

var mimallocImpl = &allocImpl{
	name: allocMimalloc,
	open: func() error {
		buf := (*C.char)(C.calloc(1, 512))
		defer C.free(unsafe.Pointer(buf))
		if rc := C.ab_mimalloc_open(buf, 512); rc != 0 {
			return errors.New(C.GoString(buf))
		}
		return nil
	},
	run: func(p *C.ab_params, r *C.ab_result) C.int { return C.ab_run_mimalloc(p, r) },
	version: func() string {
		v := int(C.ab_mimalloc_version())
		return fmt.Sprintf("libmimalloc %d.%d.%d (dlopen, RTLD_LOCAL)", v/100, v/10%10, v%10)
	},
}
