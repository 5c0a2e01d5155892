/* C side of the Go wrappers of interpreters and thread states (interp.go, threadstate.go,
 * delayed.go). Not part of the C API.
 *
 * Nothing here calls into Go. Delayed work and stall reports run in C at moments when Go
 * cannot run (a pthread-key destructor of an exiting thread, the child of fork(), a C thread
 * the Go runtime has never seen), so the C side only queues them; a Go goroutine per
 * interpreter takes them off the queue and runs the Go functions (liburcu's call_rcu worker
 * model).
 */
#ifndef NOGIL_GOBIND_H
#define NOGIL_GOBIND_H

#include <stdint.h>
#include "nogil.h"

/* ---- Bindings: one per ThreadState wrapper ---------------------------------------------- */

enum ng_go_dead {
    NG_GO_LIVE = 0,
    NG_GO_RELEASED = 1,      /* Release was called */
    NG_GO_THREAD_EXITED = 2, /* the bound OS thread exited without Release */
};

/* Outlives the thread state it describes, so the Go wrapper can always read `dead` (a seq-cst
 * word) before it touches the state: freed when both the wrapper (garbage collected) and the
 * thread (Release or exit) have dropped their reference.
 *
 * The state's QSBR slot is pinned for the wrapper (ng_tstate_pin_slot) until Release, or
 * until the wrapper is collected if a QuiescentReporter was taken or the thread exited, so the
 * wrapper's inlined quiescent report may compare the slot's seq with the write sequence
 * without reading `dead` first: both words stay readable, and they are equal only while the
 * state is live, attached and up to date. */
typedef struct ng_go_binding {
    uint32_t dead;               /* enum ng_go_dead */
    uint32_t refs;               /* the Go wrapper's and the bound thread's */
    ng_tstate *ts;
    ng_qsbr_slot *slot;          /* the state's slot while the wrapper pins it, else NULL */
    struct ng_go_binding *next;  /* the thread's bindings, the value of a pthread key */
} ng_go_binding;

/* Creates a thread state of `interp` bound to the calling thread and its binding, and pins its
 * slot; NULL and *status on failure (nothing leaked). */
ng_go_binding *ng_go_bind(ng_interp *interp, int *status);
/* Releases the binding's thread state (calling thread only) and marks it NG_GO_RELEASED. */
int ng_go_release(ng_go_binding *b);
/* Drops the wrapper's pin of the slot, if it still holds it (any thread). */
void ng_go_unpin(ng_go_binding *b);
/* The Go wrapper was collected: drops its pin of the slot, if any, and its reference. */
void ng_go_binding_collected(ng_go_binding *b);

/* ---- The queue from C to the Go runner ------------------------------------------------- */

enum ng_go_item_kind {
    NG_GO_CALL = 0,  /* a delayed Go call whose grace period is over */
    NG_GO_STALL = 1, /* a stall report */
};

typedef struct ng_go_box ng_go_box;

typedef struct ng_go_item {
    struct ng_go_item *next;
    ng_go_box *box;
    uint32_t kind;
    uintptr_t handle;      /* NG_GO_CALL: the runtime/cgo.Handle of the Go function */
    ng_qsbr_stall stall;   /* NG_GO_STALL */
} ng_go_item;

/* One per interpreter. Pushers are lock-free (a Treiber stack that the runner empties with
 * one exchange), so a push is safe in a thread-exit destructor and in a fork child.
 *
 * Lifetime: items refer to the box, and a thread state released while its interpreter is
 * deleted may still run its delayed work after the deletion (see csrc/interp.c), so the box
 * outlives Interpreter.Close: the runner frees it when it is asked to stop and no delayed Go
 * call is outstanding. A box that ever had a stall handler is never freed: the core cannot
 * tell when a poller that read the handler just before it was removed has finished with it. */
struct ng_go_box {
    ng_go_item *head;      /* newest first */
    uint64_t kick;         /* bumped by Barrier and Close: the runner must finish a pass */
    uint64_t outstanding;  /* NG_GO_CALL items queued and not yet freed by the runner */
    uint32_t gen;          /* bumped after every push, kick and stop; the runner parks on it */
    uint32_t stop;
    uint32_t keep;         /* a stall handler was installed: never free */
};

ng_go_box *ng_go_box_new(void);
/* Frees the box of an interpreter whose runner never started (no item can exist). */
void ng_go_box_free(ng_go_box *b);

/* Queues a delayed Go call on the calling thread's state `ts` (see ng_call_delayed). */
int ng_go_call_delayed(ng_tstate *ts, ng_go_box *b, uintptr_t handle, size_t size);

/* Takes every queued item, oldest first, into *list. Sleeps while there is none, unless a
 * kick newer than `done_kick` is pending (then *list is NULL). *kick_out is the kick count
 * read before the queue was emptied. Returns 1, with nothing taken, once stop was asked and
 * nothing is queued or outstanding: the runner must exit (and free the box, see above). */
int ng_go_take(ng_go_box *b, uint64_t done_kick, uint64_t *kick_out, ng_go_item **list);
/* Frees taken items after they ran. */
void ng_go_items_free(ng_go_box *b, ng_go_item *list);
/* Asks the runner for a pass that starts after this call; returns the kick to wait for. */
uint64_t ng_go_kick(ng_go_box *b);
/* Asks the runner to exit once nothing is queued or outstanding. */
void ng_go_stop(ng_go_box *b);
/* The runner's last act: frees the box unless it must be kept. */
void ng_go_box_release(ng_go_box *b);

/* Installs (threshold_ns > 0) or removes the stall handler that queues reports in `b`. */
void ng_go_set_stall_handler(ng_interp *interp, ng_go_box *b, int64_t threshold_ns);

#endif /* NOGIL_GOBIND_H */
