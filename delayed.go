package nogil

/*
#include "gobind.h"
*/
import "C"

import (
	"fmt"
	"runtime"
	"runtime/cgo"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/nogil-go/nogil/internal/gtoken"
)

// Delayed work: memory or functions retired by a thread state, run once every thread state
// that was attached when it was retired has reported a quiescent state or detached
// (CPython's _PyMem_FreeDelayed; liburcu's call_rcu).
//
// The C core runs an entry whenever some thread processes its queue: at a checkpoint, in a
// barrier, at a release, in the exit of a thread, in the child of a fork, or on a C thread.
// Go cannot run in several of those places, so a Go function given to CallDelayed is not
// called there: the C side queues it (gobind.c) and the interpreter's runner goroutine calls
// it, in the order the grace periods ended.

// FreeDelayed frees p, C memory from malloc (C.malloc, or memory C code allocated), with C
// free() once no thread state can still be reading it. size is what it accounts for in the
// memory-aware thresholds (SetLimits); 0 counts as one item. The state must be attached.
// p must not point to Go memory. A nil p does nothing.
func (ts *ThreadState) FreeDelayed(p unsafe.Pointer, size uintptr) error {
	if err := ts.check("FreeDelayed"); err != nil {
		return err
	}
	if st := C.ng_free_delayed(ts.c, p, C.size_t(size)); st != C.NG_OK {
		return ts.fail("FreeDelayed", st)
	}
	return nil
}

// CallDelayed calls fn once no thread state can still be reading what the caller unlinked
// before the call: every state attached now must first report a quiescent state or detach.
// fn runs on the interpreter's runner goroutine (one per interpreter, started by the first
// CallDelayed), never on a thread-state goroutine, so it may block without holding up a
// grace period, but it delays the functions queued after it. size is what fn releases, for
// the memory-aware thresholds (SetLimits). The state must be attached.
//
// Every queued fn runs exactly once: if its thread state is released, or its goroutine
// exits, the work passes to the interpreter and runs later (Barrier waits for it); Close
// runs whatever is left before it returns (only a state released while Close runs may hand
// its last functions over just after). A panic in fn ends the program, as in any goroutine.
//
// With the race detector, fn is ordered after every thread state's quiescent reports and
// detaches that came before it ran, so Go data that readers used and fn then recycles is not
// reported as a race.
func (ts *ThreadState) CallDelayed(fn func(), size uintptr) error {
	if fn == nil {
		return &threadError{"CallDelayed", "nil function", ErrInvalid}
	}
	if err := ts.check("CallDelayed"); err != nil {
		return err
	}
	// Only an attached state may queue (the C core checks it too, but after the runner's box
	// was touched). Attached, it also cannot race with Interpreter.Close: the deletion stops
	// the world first, which waits until this call has returned, so the runner counts the
	// new call before it is told to stop.
	if atomic.LoadUint32(ts.state) != tsAttached {
		return ts.fail("CallDelayed", C.NG_ESTATE)
	}
	if ts.interp.closed.Load() {
		return &threadError{"CallDelayed", "the Interpreter was closed; Release this ThreadState", ErrClosed}
	}
	r, err := ts.interp.ensureRunner("CallDelayed")
	if err != nil {
		return err
	}
	h := cgo.NewHandle(fn)
	if raceEnabled {
		ts.edges.qsbr.release() // the caller's writes before the retirement, for fn
	}
	if st := C.ng_go_call_delayed(ts.c, r.box, C.uintptr_t(h), C.size_t(size)); st != C.NG_OK {
		h.Delete()
		return ts.fail("CallDelayed", st)
	}
	return nil
}

// ProcessDelayed runs the delayed work whose grace period is over, from this state's queue
// and the interpreter's, and returns how many entries ran (CallDelayed functions count when
// they are handed to the runner). Checkpoint does this by itself when enough has piled up.
// The state must be attached.
func (ts *ThreadState) ProcessDelayed() (int, error) {
	if err := ts.check("ProcessDelayed"); err != nil {
		return 0, err
	}
	n := C.ng_process_delayed(ts.c)
	if n < 0 {
		return 0, ts.fail("ProcessDelayed", n)
	}
	return int(n), nil
}

// Barrier waits until all delayed work queued before the call, by any thread state of the
// interpreter, has run, CallDelayed functions included (liburcu's rcu_barrier). It stops the
// world to collect the work, so every other attached ThreadState must reach a Checkpoint (or
// detach) before it returns. The state must be attached and hold no pointers into
// QSBR-protected memory: Barrier reports a quiescent state for it, and detaches it while it
// waits for the runner. A CallDelayed function cannot call Barrier (ErrBusy): it would wait
// for itself.
func (ts *ThreadState) Barrier() error {
	if err := ts.check("Barrier"); err != nil {
		return err
	}
	r := ts.interp.runner.Load()
	if r != nil && r.isCurrent() {
		return &threadError{"Barrier", "called from a CallDelayed function or stall handler, " +
			"which would wait for itself", ErrBusy}
	}
	ts.leaving()
	if st := C.ng_qsbr_barrier(ts.c); st != C.NG_OK {
		return ts.fail("Barrier", st)
	}
	ts.returning()
	if r == nil {
		r = ts.interp.runner.Load()
		if r == nil {
			return nil // no CallDelayed yet: nothing was handed to Go
		}
	}
	// Every Go call queued before the barrier is in the runner's queue or done; wait for a
	// pass of the runner that starts now. Detached, like the C part of the wait.
	kick := uint64(C.ng_go_kick(r.box))
	if r.finished(kick) {
		return nil
	}
	ts.leaving()
	if st := C.ng_tstate_detach(ts.c); st != C.NG_OK {
		return ts.fail("Barrier", st)
	}
	r.wait(kick)
	if st := C.ng_tstate_attach(ts.c); st != C.NG_OK {
		return ts.fail("Barrier", st)
	}
	ts.returning()
	return nil
}

// A runner is the goroutine that runs an interpreter's CallDelayed functions and stall
// handler. It does not reference the Interpreter, so an Interpreter dropped without Close is
// still collected (and reported as a leak).
type runner struct {
	box   *C.ng_go_box
	edges *raceEdges
	stall atomic.Pointer[func(Stall)]
	token atomic.Pointer[gtoken.Token] // the runner goroutine's, while it runs

	mu       sync.Mutex
	cond     sync.Cond
	doneKick uint64 // the kick count read before the last finished pass
}

// ensureRunner returns the interpreter's runner, starting it if needed.
func (in *Interpreter) ensureRunner(op string) (*runner, error) {
	if r := in.runner.Load(); r != nil {
		return r, nil
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.closed.Load() {
		return nil, fmt.Errorf("%w (%s: the Interpreter was closed)", ErrClosed, op)
	}
	return in.startRunnerLocked(), nil
}

func (in *Interpreter) startRunnerLocked() *runner {
	if r := in.runner.Load(); r != nil {
		return r
	}
	r := &runner{box: in.box, edges: in.edges}
	r.cond.L = &r.mu
	in.runner.Store(r)
	go r.loop()
	return r
}

func (r *runner) loop() {
	// isCurrent compares only the goroutine part: exact, because the token is withdrawn
	// before the runner returns and its descriptor can be reused. The runner is not locked:
	// a locked goroutine pays a thread handoff (tens of microseconds) each time a
	// CallDelayed function blocks in Go. Where a token is only a thread id, it must be.
	if !gtoken.NamesGoroutine {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
	}
	tok := gtoken.Current()
	r.token.Store(&tok)
	defer r.token.Store(nil)
	var done C.uint64_t
	for {
		var kick C.uint64_t
		var list *C.ng_go_item
		if C.ng_go_take(r.box, done, &kick, &list) != 0 {
			// Stopped, and no delayed Go call is left anywhere: nothing refers to the box.
			C.ng_go_box_release(r.box)
			return
		}
		for it := list; it != nil; it = it.next {
			r.run(it)
		}
		C.ng_go_items_free(r.box, list)
		done = kick
		r.mu.Lock()
		r.doneKick = uint64(kick)
		r.cond.Broadcast()
		r.mu.Unlock()
	}
}

// isCurrent reports whether the caller is the runner goroutine, that is, runs inside a
// CallDelayed function or stall handler.
func (r *runner) isCurrent() bool {
	tok := r.token.Load()
	return tok != nil && tok.IsCurrentGoroutine()
}

func (r *runner) run(it *C.ng_go_item) {
	switch it.kind {
	case C.NG_GO_CALL:
		h := cgo.Handle(it.handle)
		fn := h.Value().(func())
		h.Delete()
		if raceEnabled {
			r.edges.qsbr.acquire()
		}
		fn()
	case C.NG_GO_STALL:
		if fn := r.stall.Load(); fn != nil {
			(*fn)(stallFromC(&it.stall))
		}
	}
}

// finished reports whether a pass that read kick count k (or a later one) has finished.
func (r *runner) finished(k uint64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.doneKick >= k
}

func (r *runner) wait(k uint64) {
	r.mu.Lock()
	for r.doneKick < k {
		r.cond.Wait()
	}
	r.mu.Unlock()
}

// close runs what is queued now, then lets the runner exit once no delayed Go call is left
// (a thread state released during the interpreter's deletion may still hand some over
// later; the runner stays for them). It does not wait for that.
func (r *runner) close() {
	r.wait(uint64(C.ng_go_kick(r.box)))
	C.ng_go_stop(r.box)
}

// Pending reports the delayed frees and calls this thread state has queued that have not run
// yet, and the bytes they account for (the per-thread counterpart of Stats' DelayedItems and
// DelayedBytes). Any goroutine may call it, as long as the state is not released
// concurrently: two atomic loads, no cgo call. A released state reports 0, 0: its work went
// to the interpreter's queue.
func (ts *ThreadState) Pending() (items, bytes uint64) {
	if ts == nil || ts.dead == nil || atomic.LoadUint32(ts.dead) != C.NG_GO_LIVE {
		return 0, 0
	}
	// The owner updates both with relaxed C atomics; each value is recent on its own.
	return atomic.LoadUint64((*uint64)(unsafe.Pointer(&ts.c.delayed.items))),
		atomic.LoadUint64((*uint64)(unsafe.Pointer(&ts.c.delayed.bytes)))
}

// SetDelayedCap turns on back-pressure: a thread state whose own queue of delayed work holds
// more than bytes (the sizes passed to FreeDelayed and CallDelayed) waits at its next
// Checkpoint until every entry it queued can run, and runs them (CallDelayed functions are
// handed to the runner goroutine). While it waits it is detached: it holds back neither the
// grace period it waits for nor a stop-the-world, and it gives up the GIL. The queue thus
// stays below the cap plus what the state queues between two checkpoints, however slowly
// other states report; the price is that the writer waits as long as an attached state
// stalls (SetStallHandler reports that). Only Checkpoint waits; QuiescentState and
// ProcessDelayed never do. Neither CPython nor liburcu bounds its queues this way.
//
// 0 turns it off, the default: queues are then bounded only by SetLimits' thresholds, which
// ask for processing but never wait. The cap applies to each thread state separately, from
// its next queued entry on. If the Interpreter is closed while a state waits, that Checkpoint
// returns ErrClosed.
func (in *Interpreter) SetDelayedCap(bytes uint64) error {
	if err := in.check("SetDelayedCap"); err != nil {
		return err
	}
	if st := C.ng_delayed_set_cap(in.c, C.uint64_t(bytes)); st != C.NG_OK {
		return statusError("SetDelayedCap", st)
	}
	return nil
}

// DelayedCap returns the back-pressure cap set by SetDelayedCap (0: off) and how many
// checkpoints have waited because of it.
func (in *Interpreter) DelayedCap() (bytes, waits uint64, err error) {
	if err := in.check("DelayedCap"); err != nil {
		return 0, 0, err
	}
	return uint64(C.ng_delayed_cap(in.c)), uint64(C.ng_delayed_cap_waits(in.c)), nil
}
