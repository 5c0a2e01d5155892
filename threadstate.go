package nogil

/*
#include "gobind.h"
*/
import "C"

import (
	"fmt"
	"runtime"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/nogil-go/nogil/internal/gtoken"
)

// A ThreadState is a goroutine's membership in an Interpreter (CPython's PyThreadState of
// the free-threaded build). It belongs to the goroutine that called Bind, which stays locked
// to its OS thread until Release. Every method must be called from that goroutine: the
// others return ErrWrongThread (HoldsGIL, GoalReached and Poll return false); State, ID,
// CPtr and Interpreter may be called from anywhere. One exception, for speed: outside
// race-detector builds, QuiescentState and Checkpoint skip the goroutine check when they
// have nothing to do (nothing new to report, nothing pending), and return nil without
// effect; see QuiescentState.
//
// Attached, the goroutine may read lock-free structures whose memory is reclaimed through
// QSBR (FreeDelayed, CallDelayed): such memory is not reclaimed while it stays attached
// without reporting a quiescent state (Checkpoint, QuiescentState). Detached, it promises
// to hold no pointers into them. Detach around anything that blocks for long (channel
// operations, I/O, sleeping): an attached goroutine that does not reach a checkpoint holds
// up every grace period and every stop-the-world of the interpreter. The nogil locks do
// this by themselves while they wait.
//
// Release ends it. A goroutine that returns without Release ends its OS thread (it is still
// locked), and the thread's exit releases the state; its delayed work is then run by other
// threads.
type ThreadState struct {
	_      noCopy
	interp *Interpreter
	edges  *raceEdges
	b      *C.ng_go_binding
	c      *C.ng_tstate
	slot   *C.ng_qsbr_slot // fixed from creation to release

	// The words the fast paths use with sync/atomic: the same words the C core uses (see
	// csrc/include/nogil/tstate.h and qsbr.h; TestQSBRLayoutGoMatchesC checks the offsets).
	dead     *uint32  // b->dead: NG_GO_LIVE until Release or thread exit
	state    *uint32  // ts->state
	pending  *uintptr // ts->pending
	holdsGIL *uint32  // ts->holds_gil
	seq      *uint64  // ts->qsbr->seq
	wrSeq    *uint64  // interp->qsbr.wr_seq
	rdSeq    *uint64  // interp->qsbr.rd_seq

	// The words the idle path of the quiescent report compares (see idleOr): seq and wrSeq
	// until Release, then releasedSeq and releasedWrSeq, so that Release can give the slot
	// back at once unless a QuiescentReporter, which keeps its own copy of the pointers, was
	// taken (reporterTaken).
	idleSeq       atomic.Pointer[uint64]
	idleWrSeq     atomic.Pointer[uint64]
	reporterTaken atomic.Bool

	token   gtoken.Token // the goroutine that called Bind, on its OS thread
	tid     int          // that OS thread
	id      uint64
	cleanup runtime.Cleanup
}

// The words a released ThreadState's idle path compares: never equal, as a slot's offline
// value (0) never equals a write sequence (odd). Never written.
var releasedSeq, releasedWrSeq uint64 = C.NG_QSBR_OFFLINE, C.NG_QSBR_INITIAL

// AttachState is a ThreadState's attachment state (ThreadState.State).
type AttachState int32

const (
	// Detached: not touching shared structures; quiescent for QSBR.
	Detached AttachState = C.NG_TSTATE_DETACHED
	// Attached: may touch shared structures; holds the GIL when the GIL is enabled.
	Attached AttachState = C.NG_TSTATE_ATTACHED
	// Suspended: paused by a stop-the-world until the restart.
	Suspended AttachState = C.NG_TSTATE_SUSPENDED
	// ShuttingDown: its Interpreter was closed; it can only be released.
	ShuttingDown AttachState = C.NG_TSTATE_SHUTTING_DOWN
	// Released: Release was called, or its goroutine returned and its thread exited.
	Released AttachState = -1
)

// String returns the state's name ("attached", ...).
func (s AttachState) String() string {
	switch s {
	case Detached:
		return "detached"
	case Attached:
		return "attached"
	case Suspended:
		return "suspended"
	case ShuttingDown:
		return "shutting down"
	case Released:
		return "released"
	}
	return fmt.Sprintf("AttachState(%d)", int32(s))
}

// Bind creates a ThreadState of the interpreter for the calling goroutine, detached, and
// locks the goroutine to its OS thread (runtime.LockOSThread) until Release. A goroutine may
// hold thread states of several interpreters, but only one may be attached at a time.
func (in *Interpreter) Bind() (*ThreadState, error) {
	if err := in.check("Bind"); err != nil {
		return nil, err
	}
	runtime.LockOSThread()
	var st C.int
	b := C.ng_go_bind(in.c, &st)
	if b == nil {
		runtime.UnlockOSThread()
		if st == C.NG_ERELEASED {
			return nil, fmt.Errorf("%w (Bind: the Interpreter is being closed)", ErrClosed)
		}
		return nil, statusError("Bind", st)
	}
	c := b.ts
	slot := c.qsbr
	ts := &ThreadState{
		interp:   in,
		edges:    in.edges,
		b:        b,
		c:        c,
		slot:     slot,
		dead:     (*uint32)(unsafe.Pointer(&b.dead)),
		state:    (*uint32)(unsafe.Pointer(&c.state)),
		pending:  (*uintptr)(unsafe.Pointer(&c.pending)),
		holdsGIL: (*uint32)(unsafe.Pointer(&c.holds_gil)),
		seq:      (*uint64)(unsafe.Pointer(&slot.seq)),
		wrSeq:    (*uint64)(unsafe.Pointer(&slot.shared.wr_seq)),
		rdSeq:    (*uint64)(unsafe.Pointer(&slot.shared.rd_seq)),
		token:    gtoken.Current(),
		tid:      int(c.native_tid),
		id:       uint64(c.id),
	}
	ts.idleSeq.Store(ts.seq)
	ts.idleWrSeq.Store(ts.wrSeq)
	// The binding outlives both the wrapper and the state: the wrapper's reference goes
	// when the wrapper is collected, and with it the pin of the slot if Release kept it
	// (see idleOr).
	what := fmt.Sprintf("ThreadState %d of interpreter %p", ts.id, in.c)
	ts.cleanup = runtime.AddCleanup(ts, func(b *C.ng_go_binding) {
		if atomic.LoadUint32((*uint32)(unsafe.Pointer(&b.dead))) == C.NG_GO_LIVE {
			reportLeak(what + " garbage-collected without Release; it stays bound to " +
				"its OS thread until that thread exits")
		}
		C.ng_go_binding_collected(b)
	}, b)
	return ts, nil
}

// Interpreter returns the interpreter the state belongs to.
func (ts *ThreadState) Interpreter() *Interpreter { return ts.interp }

// ID returns the state's id, unique within its interpreter (from 1, in creation order).
func (ts *ThreadState) ID() uint64 { return ts.id }

// CPtr returns the ng_tstate* for C code running on the same OS thread (C functions check
// the thread as the Go methods do). It is valid until Release.
func (ts *ThreadState) CPtr() unsafe.Pointer { return unsafe.Pointer(ts.c) }

// State returns the attachment state, or Released. Any goroutine may call it, for example
// to watch a stop-the-world, as long as the state is not released concurrently.
func (ts *ThreadState) State() AttachState {
	if ts == nil || ts.dead == nil || atomic.LoadUint32(ts.dead) != C.NG_GO_LIVE {
		return Released
	}
	return AttachState(atomic.LoadUint32(ts.state))
}

// check returns nil if ts is live and the caller is the goroutine that bound it.
//
// The goroutine check compares gtoken.Current (about 2 ns) with the token taken at Bind,
// which names the goroutine and its OS thread together: an OS-thread check without a system
// call. The goroutine part alone would not do. When the bound goroutine returns, the runtime
// frees its descriptor before the thread exits and runs the destructor that marks the
// binding dead (gobind.c); in between, a new goroutine on another thread can get the same
// descriptor and would pass, allocating from the dying thread's heap while it is torn down.
// A goroutine that calls runtime.UnlockOSThread would pass on any thread it moves to. The
// thread part fails both: a thread pointer is the thread's own while it lives, and once the
// thread has exited the binding is already marked dead, which is checked first. Slow paths
// are checked again by the C core against its own thread id.
func (ts *ThreadState) check(op string) error {
	if ts == nil || ts.c == nil {
		return &threadError{op, "nil ThreadState; get one from Interpreter.Bind", ErrInvalid}
	}
	if d := atomic.LoadUint32(ts.dead); d != C.NG_GO_LIVE {
		return ts.released(op, d)
	}
	if !ts.token.IsCurrent() {
		return ts.wrongThread(op)
	}
	return nil
}

// A threadError says which operation failed, why, and what to do; it matches its sentinel
// (ErrWrongThread, ErrState, ...) with errors.Is.
type threadError struct {
	op   string
	msg  string
	base error
}

func (e *threadError) Error() string { return "nogil: " + e.op + ": " + e.msg }
func (e *threadError) Unwrap() error { return e.base }

func (ts *ThreadState) wrongThread(op string) error {
	return &threadError{op, fmt.Sprintf("ThreadState used from OS thread %d but bound to thread "+
		"%d; call it from the goroutine that called Bind", unix.Gettid(), ts.tid), ErrWrongThread}
}

func (ts *ThreadState) released(op string, dead uint32) error {
	if dead == C.NG_GO_THREAD_EXITED {
		return &threadError{op, fmt.Sprintf("ThreadState used after its OS thread %d exited "+
			"(the goroutine that called Bind returned without Release)", ts.tid), ErrReleased}
	}
	return &threadError{op, "ThreadState used after Release", ErrReleased}
}

// fail turns a C status of a thread-state operation into an error.
func (ts *ThreadState) fail(op string, st C.int) error {
	closed := &threadError{op, "the Interpreter was closed; Release this ThreadState", ErrClosed}
	switch st {
	case C.NG_EWRONGTHREAD:
		return ts.wrongThread(op)
	case C.NG_ERELEASED:
		return ts.released(op, C.NG_GO_RELEASED)
	case C.NG_CANCELLED:
		return closed
	case C.NG_ESTATE:
		var msg string
		switch AttachState(atomic.LoadUint32(ts.state)) {
		case Attached:
			msg = "ThreadState is attached"
			if op == "Attach" {
				msg += "; Detach it first"
			}
		case ShuttingDown:
			return closed
		default:
			msg = "ThreadState is not attached; call Attach first"
			if op == "Attach" {
				msg = "another ThreadState of this goroutine is attached; Detach it first"
			}
		}
		if op == "DisableGIL" {
			msg = "the ThreadState does not hold the GIL (it must be attached while the GIL " +
				"is enabled, and not enabled permanently)"
		}
		return &threadError{op, msg, ErrState}
	}
	return statusError(op, st)
}

// raceEdges are an interpreter's happens-before edges for the race detector (see race.go):
// the C core synchronises through C memory, which the detector does not see.
type raceEdges struct {
	qsbr raceEdge // a reader's quiescent report, detach or release -> delayed callbacks
	gil  raceEdge // GIL holder gives it up -> next holder
	stw  raceEdge // a thread's detach or suspension -> the requester -> resumed threads
}

// leaving is called before a C call that may detach this thread (and so end its read-side
// section, drop the GIL, or suspend it for a stop-the-world).
func (ts *ThreadState) leaving() {
	if raceEnabled {
		ts.edges.qsbr.release()
		ts.edges.stw.release()
		if atomic.LoadUint32(ts.holdsGIL) != 0 {
			ts.edges.gil.release()
		}
	}
}

// returning is called after such a call: the thread may have been resumed by a restart or
// been handed the GIL.
func (ts *ThreadState) returning() {
	if raceEnabled {
		ts.edges.stw.acquire()
		if atomic.LoadUint32(ts.holdsGIL) != 0 {
			ts.edges.gil.acquire()
		}
	}
}

// Attach makes the state attached: it waits while a stop-the-world is in progress, takes
// the GIL when it is enabled, and comes online for QSBR. ErrState if this goroutine already
// has an attached state; ErrClosed if the Interpreter was closed (Release the state).
func (ts *ThreadState) Attach() error {
	if err := ts.check("Attach"); err != nil {
		return err
	}
	if st := C.ng_tstate_attach(ts.c); st != C.NG_OK {
		return ts.fail("Attach", st)
	}
	ts.returning()
	return nil
}

// Detach makes the state detached: offline for QSBR (it must hold no pointers into
// QSBR-protected memory any more), suspendable by a stop-the-world, and without the GIL.
// ErrState if it is not attached.
func (ts *ThreadState) Detach() error {
	if err := ts.check("Detach"); err != nil {
		return err
	}
	ts.leaving()
	if st := C.ng_tstate_detach(ts.c); st != C.NG_OK {
		return ts.fail("Detach", st)
	}
	return nil
}

// Release ends the state: it detaches it if attached, hands its delayed work to the
// interpreter (which runs it once its grace period is over), and unlocks the goroutine from
// its OS thread. Later calls return ErrReleased.
func (ts *ThreadState) Release() error {
	if err := ts.check("Release"); err != nil {
		return err
	}
	ts.leaving()
	if st := C.ng_go_release(ts.b); st != C.NG_OK {
		return ts.fail("Release", st)
	}
	// The slot is offline and still pinned (see idleOr). From now on the idle path compares
	// words that are never equal, and so do reporters taken from now on; the pin is needed
	// only by reporters taken before. The stores come before the load of reporterTaken and
	// QuiescentReporter stores it before it loads the pointers (all sequentially
	// consistent): either the reporter copies the released words or Release sees it taken.
	ts.idleSeq.Store(&releasedSeq)
	ts.idleWrSeq.Store(&releasedWrSeq)
	if !ts.reporterTaken.Load() {
		C.ng_go_unpin(ts.b)
	}
	runtime.UnlockOSThread()
	return nil
}

// EnableGIL counts one request for the GIL; the first request stops the world and turns it
// on. The state must be attached, and holds the GIL on return. From then on an attached
// state always holds the GIL, so attached goroutines run one at a time; a waiter asks the
// holder to yield at its next Checkpoint after 5 ms.
func (ts *ThreadState) EnableGIL() error {
	if err := ts.check("EnableGIL"); err != nil {
		return err
	}
	ts.leaving()
	if st := C.ng_gil_enable(ts.c); st != C.NG_OK {
		return ts.fail("EnableGIL", st)
	}
	ts.returning()
	return nil
}

// DisableGIL drops one request made by EnableGIL; the last one turns the GIL off and
// releases it. The state must be attached and hold the GIL.
func (ts *ThreadState) DisableGIL() error {
	if err := ts.check("DisableGIL"); err != nil {
		return err
	}
	ts.leaving()
	if st := C.ng_gil_disable(ts.c); st != C.NG_OK {
		return ts.fail("DisableGIL", st)
	}
	return nil
}

// HoldsGIL reports whether the state holds the GIL (false if the GIL is off, the state is
// detached, or the caller is not the bound goroutine).
func (ts *ThreadState) HoldsGIL() bool {
	if ts.check("HoldsGIL") != nil {
		return false
	}
	return atomic.LoadUint32(ts.holdsGIL) != 0
}
