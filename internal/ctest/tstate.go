package ctest

/*
#cgo CFLAGS: -std=gnu11 -I${SRCDIR}/../../csrc/include
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "nogil.h"

// ---- Layout of the words Go's fast paths use -------------------------------------------------
static size_t ctest_ts_layout(int what)
{
	switch (what) {
	case 0: return offsetof(ng_tstate, state);
	case 1: return offsetof(ng_tstate, pending);
	case 2: return offsetof(ng_tstate, holds_gil);
	case 3: return offsetof(ng_qsbr_slot, seq);
	case 4: return offsetof(ng_qsbr_shared, wr_seq);
	case 5: return offsetof(ng_qsbr_shared, rd_seq);
	case 6: return offsetof(ng_qsbr_shared, advances);
	case 7: return offsetof(ng_interp, qsbr);
	case 8: return offsetof(ng_interp, gil) + offsetof(ng_gil, enabled);
	case 9: return sizeof(((ng_tstate *)0)->state);
	case 10: return sizeof(((ng_tstate *)0)->pending);
	case 11: return sizeof(((ng_qsbr_slot *)0)->seq);
	}
	return (size_t)-1;
}

// ---- C views of a thread state -----------------------------------------------------------------
static void *ctest_ts_slot(void *ts) { return __atomic_load_n(&((ng_tstate *)ts)->qsbr, __ATOMIC_SEQ_CST); }
static uint64_t ctest_ts_seq(void *ts) { return __atomic_load_n(&((ng_tstate *)ts)->qsbr->seq, __ATOMIC_SEQ_CST); }
static uint32_t ctest_ts_state(void *ts) { return __atomic_load_n(&((ng_tstate *)ts)->state, __ATOMIC_SEQ_CST); }
static uintptr_t ctest_ts_pending(void *ts) { return __atomic_load_n(&((ng_tstate *)ts)->pending, __ATOMIC_SEQ_CST); }
static uint32_t ctest_ts_holds_gil(void *ts) { return __atomic_load_n(&((ng_tstate *)ts)->holds_gil, __ATOMIC_SEQ_CST); }
static uint64_t ctest_ts_thread(void *ts) { return ((ng_tstate *)ts)->thread_id; }
static void *ctest_ts_interp(void *ts) { return ((ng_tstate *)ts)->interp; }
static void ctest_ts_set_pending(void *ts, uintptr_t bits) { ng_tstate_set_pending(ts, bits); }
static void ctest_ts_clear_pending(void *ts, uintptr_t bits) { ng_tstate_clear_pending(ts, bits); }
static int ctest_ts_checkpoint(void *ts) { return ng_tstate_checkpoint(ts); }
static int ctest_ts_attach(void *ts) { return ng_tstate_attach(ts); }
static int ctest_ts_detach(void *ts) { return ng_tstate_detach(ts); }
static void *ctest_ts_current(void) { return ng_tstate_current(); }

static uint64_t ctest_wr_seq(void *in) { return __atomic_load_n(&((ng_interp *)in)->qsbr.wr_seq, __ATOMIC_SEQ_CST); }
static uint64_t ctest_rd_seq(void *in) { return __atomic_load_n(&((ng_interp *)in)->qsbr.rd_seq, __ATOMIC_SEQ_CST); }
static uint64_t ctest_advance(void *in) { return ng_qsbr_advance(&((ng_interp *)in)->qsbr); }
static int ctest_gil_enabled(void *in) { return ng_gil_enabled(in); }

// The core's fault injection (tstate_internal.h): the next n thread-state allocations fail.
extern int ng_test_fail_tstate_alloc;
static void ctest_fail_tstate_alloc(int n) { __atomic_store_n(&ng_test_fail_tstate_alloc, n, __ATOMIC_SEQ_CST); }

// A delayed C call that counts its runs in a C long.
static void ctest_count(void *arg) { __atomic_fetch_add((long *)arg, 1, __ATOMIC_SEQ_CST); }
static int ctest_call_delayed_count(void *ts, void *counter, size_t size)
{
	return ng_call_delayed(ts, ctest_count, counter, size);
}

// ---- Fork with bound thread states ------------------------------------------------------------
enum {
	TSFORK_NEW_FAILED = 1,
	TSFORK_ATTACH_FAILED = 2,
	TSFORK_QUEUE_FAILED = 4,
	TSFORK_BARRIER_FAILED = 8,
	TSFORK_CALLS_WRONG = 16,
	TSFORK_QUEUES_NOT_EMPTY = 32,
	TSFORK_DEAD_STATES_LEFT = 64,
	TSFORK_RELEASE_FAILED = 128,
};

static int tsfork_child(ng_interp *interp, uint64_t own_states)
{
	int failed = 0;
	// Only the forking thread exists here: every other thread's state must be gone.
	ng_interp_stats st;
	ng_interp_get_stats(interp, &st);
	if (st.threads != own_states)
		failed |= TSFORK_DEAD_STATES_LEFT;
	ng_tstate *ts;
	if (ng_tstate_new(interp, &ts) != NG_OK)
		return failed | TSFORK_NEW_FAILED;
	if (ng_tstate_attach(ts) != NG_OK)
		return failed | TSFORK_ATTACH_FAILED;
	enum { N = 300 };
	long calls = 0;
	for (int i = 0; i < N; i++) {
		void *p = malloc(64);
		if (p == NULL || ng_free_delayed(ts, p, 64) != NG_OK ||
		    ng_call_delayed(ts, ctest_count, &calls, 16) != NG_OK) {
			failed |= TSFORK_QUEUE_FAILED;
			break;
		}
		if (i % 50 == 0)
			ng_tstate_checkpoint(ts);
	}
	// Also runs what the dead threads left (their Go calls only get queued for a Go runner
	// that does not exist here: a Go function called in this child would hang it).
	if (ng_qsbr_barrier(ts) != NG_OK)
		failed |= TSFORK_BARRIER_FAILED;
	if (__atomic_load_n(&calls, __ATOMIC_SEQ_CST) != N)
		failed |= TSFORK_CALLS_WRONG;
	ng_interp_get_stats(interp, &st);
	if (st.delayed_items != 0)
		failed |= TSFORK_QUEUES_NOT_EMPTY;
	if (ng_tstate_release(ts) != NG_OK)
		failed |= TSFORK_RELEASE_FAILED;
	return failed;
}

// Forks; returns the child's failure bits, -1 if fork/wait failed or the child crashed, -2
// if the child did not finish within timeout_ms (it is killed).
static int ctest_tstate_fork_check(void *interp, uint64_t own_states, int timeout_ms)
{
	pid_t pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0)
		_exit(tsfork_child(interp, own_states));
	int status;
	for (int waited = 0;; waited++) {
		pid_t r = waitpid(pid, &status, WNOHANG);
		if (r == pid)
			break;
		if (r < 0)
			return -1;
		if (waited >= timeout_ms) {
			kill(pid, SIGKILL);
			waitpid(pid, &status, 0);
			return -2;
		}
		struct timespec ms = {0, 1000000};
		nanosleep(&ms, NULL);
	}
	if (!WIFEXITED(status))
		return -1;
	return WEXITSTATUS(status);
}
*/
import "C"

import "unsafe"

// Pending bits of a thread state (nogil/tstate.h).
const (
	PendingGILDrop = uintptr(C.NG_PENDING_GIL_DROP)
	PendingStop    = uintptr(C.NG_PENDING_STOP)
	PendingDelayed = uintptr(C.NG_PENDING_DELAYED)
)

// More C status codes.
const (
	EWrongThread = int(C.NG_EWRONGTHREAD)
	EState       = int(C.NG_ESTATE)
	EReleased    = int(C.NG_ERELEASED)
)

// FailTStateAlloc makes the next n allocations of a thread state fail (ng_tstate_new returns
// NG_ENOMEM), the core's fault injection.
func FailTStateAlloc(n int) { C.ctest_fail_tstate_alloc(C.int(n)) }

// TStateLayoutItems names what TStateLayout returns, the words that Go's fast paths access.
var TStateLayoutItems = []string{
	"offsetof(ng_tstate, state)", "offsetof(ng_tstate, pending)",
	"offsetof(ng_tstate, holds_gil)", "offsetof(ng_qsbr_slot, seq)",
	"offsetof(ng_qsbr_shared, wr_seq)", "offsetof(ng_qsbr_shared, rd_seq)",
	"offsetof(ng_qsbr_shared, advances)", "offsetof(ng_interp, qsbr)",
	"offsetof(ng_interp, gil.enabled)", "sizeof(ng_tstate.state)",
	"sizeof(ng_tstate.pending)", "sizeof(ng_qsbr_slot.seq)",
}

// TStateLayout returns TStateLayoutItems[i] as the C compiler computes it.
func TStateLayout(i int) uintptr { return uintptr(C.ctest_ts_layout(C.int(i))) }

// TSSlot returns ts->qsbr (an ng_qsbr_slot*).
func TSSlot(ts unsafe.Pointer) unsafe.Pointer { return C.ctest_ts_slot(ts) }

// TSSeq reads ts->qsbr->seq with a C atomic load.
func TSSeq(ts unsafe.Pointer) uint64 { return uint64(C.ctest_ts_seq(ts)) }

// TSState reads ts->state with a C atomic load.
func TSState(ts unsafe.Pointer) uint32 { return uint32(C.ctest_ts_state(ts)) }

// TSPending reads ts->pending with a C atomic load.
func TSPending(ts unsafe.Pointer) uintptr { return uintptr(C.ctest_ts_pending(ts)) }

// TSHoldsGIL reads ts->holds_gil with a C atomic load.
func TSHoldsGIL(ts unsafe.Pointer) bool { return C.ctest_ts_holds_gil(ts) != 0 }

// TSThreadID reads ts->thread_id, the ng_thread_id() of its OS thread.
func TSThreadID(ts unsafe.Pointer) uint64 { return uint64(C.ctest_ts_thread(ts)) }

// TSInterp reads ts->interp.
func TSInterp(ts unsafe.Pointer) unsafe.Pointer { return C.ctest_ts_interp(ts) }

// TSSetPending is ng_tstate_set_pending.
func TSSetPending(ts unsafe.Pointer, bits uintptr) { C.ctest_ts_set_pending(ts, C.uintptr_t(bits)) }

// TSClearPending is ng_tstate_clear_pending.
func TSClearPending(ts unsafe.Pointer, bits uintptr) {
	C.ctest_ts_clear_pending(ts, C.uintptr_t(bits))
}

// TSCheckpoint is the inline ng_tstate_checkpoint, from C (on the calling OS thread).
func TSCheckpoint(ts unsafe.Pointer) int { return int(C.ctest_ts_checkpoint(ts)) }

// TSAttach is ng_tstate_attach, from C (on the calling OS thread).
func TSAttach(ts unsafe.Pointer) int { return int(C.ctest_ts_attach(ts)) }

// TSDetach is ng_tstate_detach, from C (on the calling OS thread).
func TSDetach(ts unsafe.Pointer) int { return int(C.ctest_ts_detach(ts)) }

// TSCurrent is ng_tstate_current() of the calling OS thread.
func TSCurrent() unsafe.Pointer { return C.ctest_ts_current() }

// WrSeq reads the interpreter's QSBR write sequence with a C atomic load.
func WrSeq(interp unsafe.Pointer) uint64 { return uint64(C.ctest_wr_seq(interp)) }

// RdSeq reads the interpreter's QSBR read sequence with a C atomic load.
func RdSeq(interp unsafe.Pointer) uint64 { return uint64(C.ctest_rd_seq(interp)) }

// Advance is the inline ng_qsbr_advance on the interpreter's QSBR state, from C.
func Advance(interp unsafe.Pointer) uint64 { return uint64(C.ctest_advance(interp)) }

// GILEnabled is the inline ng_gil_enabled, from C.
func GILEnabled(interp unsafe.Pointer) bool { return C.ctest_gil_enabled(interp) != 0 }

// CallDelayedCount queues, on the thread state ts of the calling OS thread, a delayed C call
// that atomically increments the C long at counter. Returns the C status.
func CallDelayedCount(ts, counter unsafe.Pointer, size uintptr) int {
	return int(C.ctest_call_delayed_count(ts, counter, C.size_t(size)))
}

// TStateForkCheck forks the process from C. The child (C only) checks that the interpreter
// lists ownStates thread states (those of the forking thread; the other threads' are gone),
// then creates a thread state, attaches it, queues 300 delayed frees and 300 delayed C calls,
// runs a barrier (which also runs the work the dead threads left), and checks that every call
// ran, that no delayed work is left and that the state can be released. It returns the
// child's failure bits (see TStateForkFailure), -1 if the child crashed or could not be run,
// -2 if it did not finish within timeoutMs (then it was killed).
func TStateForkCheck(interp unsafe.Pointer, ownStates uint64, timeoutMs int) int {
	return int(C.ctest_tstate_fork_check(interp, C.uint64_t(ownStates), C.int(timeoutMs)))
}

// TStateForkFailure names the bits TStateForkCheck returns.
var TStateForkFailure = map[int]string{
	C.TSFORK_NEW_FAILED:       "ng_tstate_new failed in the child",
	C.TSFORK_ATTACH_FAILED:    "ng_tstate_attach failed in the child",
	C.TSFORK_QUEUE_FAILED:     "queueing delayed work failed in the child",
	C.TSFORK_BARRIER_FAILED:   "ng_qsbr_barrier failed in the child",
	C.TSFORK_CALLS_WRONG:      "not every delayed C call ran exactly once in the child",
	C.TSFORK_QUEUES_NOT_EMPTY: "delayed work left after the barrier in the child",
	C.TSFORK_DEAD_STATES_LEFT: "the child still lists thread states of threads that do not exist there",
	C.TSFORK_RELEASE_FAILED:   "ng_tstate_release failed in the child",
}
