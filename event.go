package nogil

/*
#include "nogil.h"

static int ng_go_event_wait(ng_event *e, int64_t timeout_ns, ng_cancel *token)
{
	ng_cancel *previous = ng_cancel_install(token);
	int status = ng_event_wait_timed(e, timeout_ns, NG_WAIT_DETACH);
	ng_cancel_install(previous);
	return status;
}
*/
import "C"

import (
	"context"
	"time"
	"unsafe"
)

const eventSet = C.NG_LOCKED

// An Event is a one-shot notification in one byte of C memory (CPython's PyEvent): Wait
// blocks until some thread calls Set, and from then on returns at once. C code can wait on
// and set the same event (CPtr). Create it with NewEvent or EventAt; Close it when done.
type Event struct {
	_    noCopy
	cell byteCell
	c    *C.ng_event
	mem  cMemory
	race raceEdge
}

// NewEvent returns an unset Event in freshly allocated C memory.
func NewEvent() *Event {
	e := &Event{}
	e.init(allocFor(e, "Event"))
	return e
}

// EventAt wraps the ng_event at p in C memory; Close does not free it.
func EventAt(p unsafe.Pointer) *Event {
	e := &Event{}
	e.init(borrow(p, "Event"))
	return e
}

func (e *Event) init(mem cMemory) {
	e.mem, e.c, e.cell = mem, (*C.ng_event)(mem.p), newByteCell(mem.p)
}

// CPtr returns the ng_event* for C code.
func (e *Event) CPtr() unsafe.Pointer { return unsafe.Pointer(e.c) }

// Set sets the event and wakes every waiter. Setting a set event does nothing.
func (e *Event) Set() {
	e.mem.mustOpen("Event")
	cell, c := e.cell, e.c // read before the race-build release (see Mutex.Unlock)
	e.race.release()
	if !cell.casOnce(0, eventSet) { // waiters may be parked: let C wake them
		C.ng_event_notify(c)
	}
}

// IsSet reports whether the event has been set.
func (e *Event) IsSet() bool {
	e.mem.mustOpen("Event")
	if e.cell.load() != eventSet {
		return false
	}
	e.race.acquire()
	return true
}

// Wait blocks until the event is set.
func (e *Event) Wait() {
	if !e.IsSet() {
		C.ng_event_wait(e.c)
		e.race.acquire()
	}
}

// WaitTimeout waits at most d for the event and reports whether it is set.
func (e *Event) WaitTimeout(d time.Duration) bool {
	if e.IsSet() {
		return true
	}
	if d <= 0 {
		return false
	}
	return C.ng_event_wait_timed(e.c, C.int64_t(d), C.NG_WAIT_DETACH) == C.NG_OK && e.IsSet()
}

// WaitContext waits until the event is set (nil) or ctx is done (ctx.Err()).
func (e *Event) WaitContext(ctx context.Context) error {
	if e.IsSet() {
		return nil
	}
	if ctx.Done() == nil {
		e.Wait()
		return nil
	}
	status := waitContext(ctx, func(token *C.ng_cancel) C.int {
		return C.ng_go_event_wait(e.c, -1, token)
	})
	if status == C.NG_OK {
		e.race.acquire()
		return nil
	}
	return ctx.Err()
}

// Close frees the memory of an Event made by NewEvent. It fails with ErrLocked while
// threads wait on it.
func (e *Event) Close() error {
	if e.mem.inUse() {
		return ErrLocked
	}
	if err := e.mem.close(); err != nil {
		return err
	}
	e.c, e.cell = nil, byteCell{}
	return nil
}
