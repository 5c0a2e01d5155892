package nogil

import "unsafe"

// RaceEnabled tells the external tests whether this is a race-detector build, whose
// QuiescentState and Checkpoint check every call.
const RaceEnabled = raceEnabled

// Exported for the external tests only (this file is compiled into package nogil when
// testing): the layout the Go fast paths assume, in ctest.TStateLayoutItems order, measured
// from the addresses the wrappers actually use.
func FastPathLayout(ts *ThreadState) []uintptr {
	base := uintptr(unsafe.Pointer(ts.c))
	slot := uintptr(unsafe.Pointer(ts.slot))
	shared := uintptr(unsafe.Pointer(ts.slot.shared))
	interp := uintptr(unsafe.Pointer(ts.interp.c))
	return []uintptr{
		uintptr(unsafe.Pointer(ts.state)) - base,
		uintptr(unsafe.Pointer(ts.pending)) - base,
		uintptr(unsafe.Pointer(ts.holdsGIL)) - base,
		uintptr(unsafe.Pointer(ts.seq)) - slot,
		uintptr(unsafe.Pointer(ts.wrSeq)) - shared,
		uintptr(unsafe.Pointer(ts.rdSeq)) - shared,
		uintptr(unsafe.Pointer(&ts.slot.shared.advances)) - shared,
		shared - interp,
		uintptr(unsafe.Pointer(&ts.interp.c.gil.enabled)) - interp,
		unsafe.Sizeof(*ts.state),
		unsafe.Sizeof(*ts.pending),
		unsafe.Sizeof(*ts.seq),
	}
}

// PlainStoreUnlock tells the external tests whether Mutex.Unlock stores plainly on this
// architecture (when the C core does).
const PlainStoreUnlock = plainStoreIsRelease
