package nogil

// #include "nogil.h"
import "C"

import (
	"errors"
	"fmt"
)

// Errors returned by the parking lot and the locks. Compare with errors.Is; the errors
// returned also say which operation failed.
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
	default:
		return fmt.Errorf("nogil: %s: %s", op, C.GoString(C.ng_strerror(status)))
	}
	return fmt.Errorf("%w (%s)", base, op)
}
