package nogil

import (
	"sync/atomic"
	"unsafe"
)

// Exported for the external tests only: the QSBR waiter words of the state's interpreter.
func QSBRAddWaitersForTest(ts *ThreadState, d int32) {
	atomic.AddUint32((*uint32)(unsafe.Pointer(&ts.slot.shared.waiters)), uint32(d))
}

func QSBRWakeSeqForTest(ts *ThreadState) uint32 {
	return atomic.LoadUint32((*uint32)(unsafe.Pointer(&ts.slot.shared.wake_seq)))
}
