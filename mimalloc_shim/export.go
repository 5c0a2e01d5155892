package mimalloc_shim

// A file with //export may only declare C, so the C halves of these trampolines are in the
// preamble of visit.go.

// #include <stddef.h>
// #include <stdint.h>
import "C"

import (
	"runtime/cgo"
	"unsafe"
)

// nogilMiVisitCallback is called by C (ng_mi_heap_visit, ng_mi_abandoned_visit) for every
// live block; handle is the cgo.Handle of the walk's *visitor. It returns 0 to stop.
//
//export nogilMiVisitCallback
func nogilMiVisitCallback(block unsafe.Pointer, size C.size_t, handle C.uintptr_t) C.int {
	v := cgo.Handle(handle).Value().(*visitor)
	if v.call(block, uintptr(size)) {
		return 1
	}
	return 0
}
