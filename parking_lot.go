package nogil

/*
#include <stdint.h>
#include "nogil.h"

// Parks with `expected` narrowed to `size` bytes, optionally under a cancellation token, in
// one cgo call.
static int ng_go_park(void *addr, uint64_t expected, size_t size, int64_t timeout_ns,
                      uintptr_t token, int flags, ng_cancel *cancel)
{
	uint8_t e1 = (uint8_t)expected;
	uint16_t e2 = (uint16_t)expected;
	uint32_t e4 = (uint32_t)expected;
	const void *e = size == 1 ? (const void *)&e1 : size == 2 ? (const void *)&e2
	              : size == 4 ? (const void *)&e4 : (const void *)&expected;
	ng_cancel *previous = ng_cancel_install(cancel);
	int status = ng_park(addr, e, size, timeout_ns, (void *)token, flags);
	ng_cancel_install(previous);
	return status;
}

int ng_go_unpark(const void *addr, uintptr_t handle);
*/
import "C"

import (
	"context"
	"fmt"
	"runtime/cgo"
	"time"
	"unsafe"
)

// ParkResult says why Park returned.
type ParkResult int

const (
	// Unparked: another thread called Unpark or UnparkAll on the address.
	Unparked ParkResult = iota
	// ValueChanged: the address did not hold the expected value, so Park did not sleep.
	ValueChanged
	// TimedOut: the timeout expired (or was 0 and the value matched).
	TimedOut
	// Interrupted: a signal interrupted the sleep (only with ParkInterruptible).
	Interrupted
	// Cancelled: the context of ParkContext was done.
	Cancelled
)

func (r ParkResult) String() string {
	switch r {
	case Unparked:
		return "unparked"
	case ValueChanged:
		return "value changed"
	case TimedOut:
		return "timed out"
	case Interrupted:
		return "interrupted"
	case Cancelled:
		return "cancelled"
	}
	return fmt.Sprintf("ParkResult(%d)", int(r))
}

// Forever is the Park timeout that never expires.
const Forever time.Duration = -1

// ParkOption changes how Park sleeps.
type ParkOption int

const (
	// ParkDetach runs the block hooks around the sleep (the thread-state layer uses them to
	// detach the caller while it sleeps).
	ParkDetach ParkOption = C.NG_WAIT_DETACH
	// ParkInterruptible makes a signal end the sleep with Interrupted.
	ParkInterruptible ParkOption = C.NG_WAIT_INTERRUPTIBLE
)

func parkResult(status C.int) (ParkResult, error) {
	switch status {
	case C.NG_OK:
		return Unparked, nil
	case C.NG_AGAIN:
		return ValueChanged, nil
	case C.NG_TIMEOUT:
		return TimedOut, nil
	case C.NG_INTR:
		return Interrupted, nil
	case C.NG_CANCELLED:
		return Cancelled, nil
	}
	return 0, statusError("park", status)
}

func parkFlags(opts []ParkOption) C.int {
	var flags C.int
	for _, o := range opts {
		flags |= C.int(o)
	}
	return flags
}

// Park puts the calling OS thread to sleep on addr if the size bytes at addr (1, 2, 4 or 8;
// addr aligned to size) still equal the low bytes of expected; the comparison is atomic with
// respect to Unpark. It returns when woken by Unpark/UnparkAll, when timeout expires (Forever:
// never; 0: do not sleep), or at once with ValueChanged. token is handed to the Unpark
// callback that wakes us. addr must point to C memory (or memory C may read during the call).
// Errors: ErrInvalid for a nil or misaligned addr or an unsupported size.
func Park(addr unsafe.Pointer, expected uint64, size uintptr, timeout time.Duration, token uintptr, opts ...ParkOption) (ParkResult, error) {
	ns := int64(-1)
	if timeout >= 0 {
		ns = int64(timeout)
	}
	return parkResult(C.ng_go_park(addr, C.uint64_t(expected), C.size_t(size), C.int64_t(ns),
		C.uintptr_t(token), parkFlags(opts), nil))
}

// ParkContext is Park without a timeout that returns Cancelled once ctx is done; the
// cancellation wakes the sleeping thread directly.
func ParkContext(ctx context.Context, addr unsafe.Pointer, expected uint64, size uintptr, token uintptr, opts ...ParkOption) (ParkResult, error) {
	if ctx.Done() == nil {
		return Park(addr, expected, size, Forever, token, opts...)
	}
	flags := parkFlags(opts)
	status := waitContext(ctx, func(cancel *C.ng_cancel) C.int {
		return C.ng_go_park(addr, C.uint64_t(expected), C.size_t(size), -1, C.uintptr_t(token), flags, cancel)
	})
	return parkResult(status)
}

// UnparkFunc is called by Unpark while it holds the lock of addr's bucket, whether or not a
// thread was woken: token is the woken thread's Park token (woke false: no thread was
// parked), hasMoreWaiters whether threads are still parked on addr. Whatever it stores at addr
// is atomic with respect to new Park calls. It must be short and must not park or unpark.
type UnparkFunc func(token uintptr, woke, hasMoreWaiters bool)

// Unpark wakes the thread that has been parked on addr the longest and reports whether there
// was one. fn may be nil. Errors: ErrInvalid for a nil addr.
func Unpark(addr unsafe.Pointer, fn UnparkFunc) (bool, error) {
	var status C.int
	if fn == nil {
		status = C.ng_unpark(addr, nil, nil)
	} else {
		h := cgo.NewHandle(fn)
		status = C.ng_go_unpark(addr, C.uintptr_t(h))
		h.Delete()
	}
	if status < 0 {
		return false, statusError("unpark", status)
	}
	return status == 1, nil
}

// UnparkAll wakes every thread parked on addr and returns how many there were.
func UnparkAll(addr unsafe.Pointer) (int, error) {
	n := C.ng_unpark_all(addr)
	if n < 0 {
		return 0, statusError("unpark all", n)
	}
	return int(n), nil
}

// ParkedWaiters returns how many threads are parked on addr (a snapshot, for tests and
// diagnostics).
func ParkedWaiters(addr unsafe.Pointer) int {
	n := C.ng_parking_lot_waiters(addr)
	if n < 0 {
		return 0
	}
	return int(n)
}
