package nogil

// #include <stdint.h>
import "C"

import (
	"runtime/cgo"
	"unsafe"
)

// Functions C calls back into Go. A file with //export may only declare C, so the C side of
// these trampolines is in callbacks.c.

//export nogilUnparkCallback
func nogilUnparkCallback(handle C.uintptr_t, parkArg unsafe.Pointer, woke, more C.int) {
	fn := cgo.Handle(handle).Value().(UnparkFunc)
	fn(uintptr(parkArg), woke != 0, more != 0)
}
