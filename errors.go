package nogil

// #include "nogil.h"
import "C"

import (
	"errors"
	"fmt"
)

// Errors returned by the parking lot, the locks, interpreters and thread states. Compare
// with errors.Is; the errors returned also say which operation failed and what to do.
var (
	// ErrInvalid reports a bad argument: a nil or misaligned address, an unsupported size.
	ErrInvalid = errors.New("nogil: invalid argument")
	// ErrTimeout reports that a timed wait expired.
	ErrTimeout = errors.New("nogil: timed out")
	// ErrInterrupted reports that a signal interrupted a wait that asked to be told.
	ErrInterrupted = errors.New("nogil: interrupted by a signal")
	// ErrClosed reports use of a lock after Close.
	ErrClosed = errors.New("nogil: use after Close")
	// ErrLocked reports Close of a lock that is still held or waited for.
	ErrLocked = errors.New("nogil: lock is held")
	// ErrWrongThread reports a ThreadState used by a goroutine other than the one that bound
	// it (and so from another OS thread).
	ErrWrongThread = errors.New("nogil: ThreadState used from the wrong OS thread")
	// ErrState reports a ThreadState in the wrong attachment state for the operation: Attach
	// when attached, Detach or delayed work when detached.
	ErrState = errors.New("nogil: ThreadState in the wrong attachment state")
	// ErrReleased reports use of a ThreadState after Release, or after the goroutine that
	// bound it returned without Release (its OS thread exited and released it).
	ErrReleased = errors.New("nogil: ThreadState used after Release")
	// ErrBusy reports an operation refused because something is still in use: Close of an
	// Interpreter by a thread that still has a ThreadState of it, a nested stop-the-world.
	ErrBusy = errors.New("nogil: still in use")
	// ErrNoMemory reports that the C core could not allocate memory; nothing was changed.
	ErrNoMemory = errors.New("nogil: out of C memory")
)

// statusError turns a C status code into an error (nil for NG_OK).
func statusError(op string, status C.int) error {
	var base error
	switch status {
	case C.NG_OK:
		return nil
	case C.NG_EINVAL:
		base = ErrInvalid
	case C.NG_TIMEOUT:
		base = ErrTimeout
	case C.NG_INTR:
		base = ErrInterrupted
	case C.NG_EWRONGTHREAD:
		base = ErrWrongThread
	case C.NG_ESTATE:
		base = ErrState
	case C.NG_ERELEASED:
		base = ErrReleased
	case C.NG_EBUSY:
		base = ErrBusy
	case C.NG_ENOMEM:
		base = ErrNoMemory
	default:
		return fmt.Errorf("nogil: %s: %s", op, C.GoString(C.ng_strerror(status)))
	}
	return fmt.Errorf("%w (%s)", base, op)
}
