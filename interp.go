package nogil

/*
#include "gobind.h"
*/
import "C"

import (
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
)

// An Interpreter is the shared runtime state that thread states attach to (CPython's
// PyInterpreterState of the free-threaded build): the list of thread states, QSBR (the
// grace periods that tell when memory unlinked from lock-free structures may be freed), the
// queue of delayed work left by exited threads, stop-the-world and the GIL, which is off
// unless turned on. Its memory is C memory, shared with C code through CPtr.
//
// Goroutines take part by binding a ThreadState (Bind). Close deletes the interpreter.
type Interpreter struct {
	_ noCopy
	c *C.ng_interp

	// Go-side state: guarded by mu, except where marked atomic.
	mu             sync.Mutex
	closed         atomic.Bool
	box            *C.ng_go_box           // queue of finished delayed calls and stall reports (C memory)
	stallThreshold time.Duration          // 0: no stall handler
	runner         atomic.Pointer[runner] // nil until the first CallDelayed or SetStallHandler
	edges          *raceEdges             // shared with the thread states and the runner
	cleanup        runtime.Cleanup
}

// NewInterpreter creates an interpreter. Close it when done; until then its C memory stays
// allocated even if the Interpreter is garbage collected (C code may still use it), and the
// leak handler (SetLeakHandler) is told.
func NewInterpreter() (*Interpreter, error) {
	var c *C.ng_interp
	if st := C.ng_interp_new(&c); st != C.NG_OK {
		return nil, statusError("NewInterpreter", st)
	}
	box := C.ng_go_box_new()
	if box == nil {
		C.ng_interp_delete(c)
		return nil, fmt.Errorf("%w (NewInterpreter)", ErrNoMemory)
	}
	in := &Interpreter{c: c, box: box, edges: new(raceEdges)}
	in.cleanup = runtime.AddCleanup(in, func(what string) {
		reportLeak(what + " garbage-collected without Close; its C memory is leaked")
	}, fmt.Sprintf("Interpreter %p", c))
	return in, nil
}

// CPtr returns the ng_interp* for C code (csrc/include/nogil/tstate.h). It is valid until
// Close.
func (in *Interpreter) CPtr() unsafe.Pointer { return unsafe.Pointer(in.c) }

func (in *Interpreter) check(op string) error {
	if in == nil || in.c == nil {
		return fmt.Errorf("%w (%s: nil Interpreter; create one with NewInterpreter)", ErrInvalid, op)
	}
	if in.closed.Load() {
		return fmt.Errorf("%w (%s: the Interpreter was closed)", ErrClosed, op)
	}
	return nil
}

// Close deletes the interpreter: it runs the delayed work still queued (CallDelayed
// functions included, before Close returns, so Close waits for them) and frees the C memory. Every ThreadState
// should have been released first. Close fails with ErrBusy if the calling goroutine still
// has a ThreadState of this interpreter, is inside its StopTheWorld, or is the interpreter's
// own runner goroutine (a CallDelayed function or stall handler). Thread states other goroutines still hold are
// shut down: their Attach fails with ErrClosed and they can only be released. Using the
// Interpreter after Close returns ErrClosed.
func (in *Interpreter) Close() error {
	if err := in.check("Close"); err != nil {
		return err
	}
	// in.mu is not held across the deletion or the wait for the runner: the deletion stops
	// the world, which waits for attached goroutines, and one of them may be blocked on
	// in.mu in its first CallDelayed (ensureRunner) after it saw the Interpreter open.
	in.mu.Lock()
	if in.closed.Load() {
		in.mu.Unlock()
		return fmt.Errorf("%w (Close: the Interpreter was closed)", ErrClosed)
	}
	r := in.runner.Load()
	if r != nil && r.isCurrent() {
		in.mu.Unlock()
		return fmt.Errorf("%w (Interpreter.Close called by a CallDelayed function or stall "+
			"handler, which run on the interpreter's own goroutine; close it from another one)", ErrBusy)
	}
	// Closed first, so that a concurrent CallDelayed or SetStallHandler cannot start a
	// runner after the one below was stopped (they check closed under in.mu). No more stall
	// reports either: the box they go to is freed below.
	in.closed.Store(true)
	C.ng_go_set_stall_handler(in.c, in.box, 0)
	box := in.box
	in.mu.Unlock()
	// Locked so that the C check "the calling thread has a state" is about this goroutine.
	runtime.LockOSThread()
	st := C.ng_interp_delete(in.c)
	runtime.UnlockOSThread()
	if st != C.NG_OK {
		in.mu.Lock()
		in.closed.Store(false)
		C.ng_go_set_stall_handler(in.c, in.box, C.int64_t(in.stallThreshold))
		in.mu.Unlock()
		if st == C.NG_EBUSY {
			return fmt.Errorf("%w (Interpreter.Close: the calling goroutine still has a "+
				"ThreadState of this interpreter, or is inside its StopTheWorld; Release the "+
				"state, or return from StopTheWorld, first)", ErrBusy)
		}
		return statusError("Interpreter.Close", st)
	}
	// The deletion ran the remaining delayed work, which queued the Go calls for the runner:
	// let it run them. The runner frees the box when it is done with it.
	if r != nil {
		r.close()
	} else {
		C.ng_go_box_free(box)
	}
	in.mu.Lock()
	in.box = nil
	in.mu.Unlock()
	in.cleanup.Stop()
	return nil
}

// Stall describes a grace period that has not ended for longer than the threshold given to
// SetStallHandler, and the thread state holding it back.
type Stall struct {
	Goal          uint64        // the write sequence that is not yet reached
	ThreadStateID uint64        // ID of the thread state holding it back (0: unknown)
	ThreadID      uint64        // the C core's id of its OS thread (ng_thread_id; 0: unknown)
	Attached      bool          // it was attached when seen (attached and not reporting)
	Behind        time.Duration // how long it has been seen at its old sequence
	PendingBytes  uint64        // bytes waiting in its delayed-free queue
	SlotIndex     uint32        // its QSBR slot
}

func stallFromC(s *C.ng_qsbr_stall) Stall {
	return Stall{
		Goal:          uint64(s.goal),
		ThreadStateID: uint64(s.tstate_id),
		ThreadID:      uint64(s.thread_id),
		Attached:      bool(s.attached),
		Behind:        time.Duration(s.behind_ns),
		PendingBytes:  uint64(s.pending_bytes),
		SlotIndex:     uint32(s.slot_index),
	}
}

// Stats is a snapshot of an interpreter's counters (Interpreter.Stats).
type Stats struct {
	Threads          uint64        // thread states in the interpreter's list
	DelayedItems     uint64        // delayed frees and calls not yet run, in every queue
	DelayedBytes     uint64        // their accounted size
	InterpQueueItems uint64        // of those, in the queue of exited threads' work
	OldestPending    time.Duration // age of the oldest queued item (0: none)
	Stops            uint64        // completed stop-the-world pauses
	GILEnabled       bool          // the GIL is on
	WriteSeq         uint64        // QSBR write sequence (advances when memory is retired)
	ReadSeq          uint64        // QSBR read sequence (every attached thread has reached it)
	QSBRSlots        uint32        // QSBR slots in use (one per thread state)
	QSBRCapacity     uint32        // QSBR slots allocated
	QSBRScanSlots    uint32        // slots a QSBR scan walks: 1 + the highest slot in use
	Scans            uint64        // QSBR scans of the slots
	Advances         uint64        // QSBR write-sequence advances
	StallsReported   uint64        // stalls reported to the stall handler
	LastStall        Stall         // the last one (zero if none)
}

// Stats returns a snapshot of the interpreter's counters.
func (in *Interpreter) Stats() (Stats, error) {
	if err := in.check("Stats"); err != nil {
		return Stats{}, err
	}
	var s C.ng_interp_stats
	C.ng_interp_get_stats(in.c, &s)
	return Stats{
		Threads:          uint64(s.threads),
		DelayedItems:     uint64(s.delayed_items),
		DelayedBytes:     uint64(s.delayed_bytes),
		InterpQueueItems: uint64(s.interp_queue_items),
		OldestPending:    time.Duration(s.oldest_pending_age_ns),
		Stops:            uint64(s.stops),
		GILEnabled:       s.gil_enabled != 0,
		WriteSeq:         uint64(s.qsbr.wr_seq),
		ReadSeq:          uint64(s.qsbr.rd_seq),
		QSBRSlots:        uint32(s.qsbr.registered),
		QSBRCapacity:     uint32(s.qsbr.capacity),
		QSBRScanSlots:    uint32(s.qsbr.scan_slots),
		Scans:            uint64(s.qsbr.scans),
		Advances:         uint64(s.qsbr.advances),
		StallsReported:   uint64(s.qsbr.stalls_reported),
		LastStall:        stallFromC(&s.qsbr.last_stall),
	}, nil
}

// SetLimits sets when a thread's delayed work is processed early (CPython 3.14's memory-aware
// QSBR): after items delayed frees or calls, or bytes of them, or pageBytes of deferred
// pages since the last forced advance. 0 keeps a value. The defaults are 127 items, 1 MiB and
// 80 KiB.
func (in *Interpreter) SetLimits(items uint32, bytes, pageBytes uint64) error {
	if err := in.check("SetLimits"); err != nil {
		return err
	}
	C.ng_qsbr_set_limits(&in.c.qsbr, C.uint32_t(items), C.uint64_t(bytes), C.uint64_t(pageBytes))
	return nil
}

// SetStallHandler asks to be told when a grace period stays unmet for longer than threshold:
// some thread state is attached and not reporting quiescent states (a goroutine that blocks
// or computes for long while attached), so no delayed work can run. fn runs on the
// interpreter's own goroutine (the one that runs CallDelayed functions), not on the thread
// that noticed the stall, which may be inside the C core or a thread Go cannot run on; it
// should return quickly. A threshold <= 0 or a nil fn turns the reports off.
func (in *Interpreter) SetStallHandler(threshold time.Duration, fn func(Stall)) error {
	if err := in.check("SetStallHandler"); err != nil {
		return err
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.closed.Load() {
		return fmt.Errorf("%w (SetStallHandler: the Interpreter was closed)", ErrClosed)
	}
	if threshold <= 0 || fn == nil {
		in.stallThreshold = 0
		C.ng_go_set_stall_handler(in.c, in.box, 0)
		if r := in.runner.Load(); r != nil {
			r.stall.Store(nil)
		}
		return nil
	}
	in.startRunnerLocked().stall.Store(&fn)
	in.stallThreshold = threshold
	C.ng_go_set_stall_handler(in.c, in.box, C.int64_t(threshold))
	return nil
}

// StopTheWorld pauses every other thread state of the interpreter, runs f, and restarts
// them. Attached threads stop at their next Checkpoint; detached ones cannot attach until
// the restart. ts is the calling goroutine's ThreadState of this interpreter, or nil if it
// has none attached; the caller's attached state would otherwise never reach a checkpoint.
// f must not wait for the paused threads (for example by locking a Mutex one of them may
// hold), and must not call StopTheWorld (ErrBusy).
func (in *Interpreter) StopTheWorld(ts *ThreadState, f func()) error {
	if err := in.check("StopTheWorld"); err != nil {
		return err
	}
	var cts *C.ng_tstate
	if ts != nil {
		if err := ts.check("StopTheWorld"); err != nil {
			return err
		}
		if ts.interp != in {
			return fmt.Errorf("%w (StopTheWorld: the ThreadState belongs to another Interpreter)", ErrInvalid)
		}
		cts = ts.c
	}
	// The C core checks "the calling thread" (its own attached state, a nested stop): keep
	// this goroutine on one thread from the stop to the restart.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	in.edges.stw.release()
	switch st := C.ng_stop_the_world(in.c, cts); st {
	case C.NG_OK:
	case C.NG_EINVAL:
		return fmt.Errorf("%w (StopTheWorld: the calling goroutine has an attached ThreadState of "+
			"this interpreter; pass it as ts, or detach it first)", ErrState)
	case C.NG_EBUSY:
		return fmt.Errorf("%w (StopTheWorld: the world is already stopped by this goroutine)", ErrBusy)
	default:
		if ts != nil {
			return ts.fail("StopTheWorld", st)
		}
		return statusError("StopTheWorld", st)
	}
	in.edges.stw.acquire()
	defer func() {
		in.edges.stw.release()
		if st := C.ng_start_the_world(in.c); st != C.NG_OK {
			panic(fmt.Sprintf("nogil: StopTheWorld: restart failed: %v", statusError("start", st)))
		}
	}()
	f()
	return nil
}

// GILEnabled reports whether the interpreter's GIL is on (see ThreadState.EnableGIL).
func (in *Interpreter) GILEnabled() bool {
	if in.check("GILEnabled") != nil {
		return false
	}
	return atomic.LoadInt32((*int32)(unsafe.Pointer(&in.c.gil.enabled))) != 0
}
