/* Delayed frees: release memory (or run a destructor) once QSBR says no reader can still see it
 * (CPython's _PyMem_FreeDelayed / _PyObject_XDecRefDelayed; liburcu's call_rcu).
 *
 * Each thread state owns a FIFO queue of chunks of (entry, goal); goals are non-decreasing in
 * append order, so processing stops at the first unmet goal. Memory-aware: every entry feeds
 * the thread's QSBR counters (ng_qsbr_goal_for_free), which force an advance and set
 * `should_process` when a threshold is crossed; the thread's next checkpoint then processes.
 * A full chunk processes immediately as a safety valve.
 *
 * Thread exit: the queue is spliced onto the interpreter's queue, which the exiting thread (and
 * later any thread's processing, with a try-lock) drains (CPython's R6 fix). Fork: the child
 * adopts dead threads' queues through the same splice.
 *
 * Back-pressure (beyond CPython and liburcu, whose queues have no bound): with a cap set
 * (ng_delayed_set_cap), a thread whose own queue holds more than `cap` accounted bytes after
 * processing at a checkpoint waits there, detached, until the goal of its newest entry is
 * reached, then runs what is due. Its queue thus stays below the cap plus what it queues
 * between two checkpoints, however slowly the other threads report; the price is that the
 * writer waits as long as a reader holds a grace period back (the stall detector reports
 * that). Detached while it waits, it holds back neither grace periods nor stop-the-world,
 * and it drops the GIL. The waiting thread polls its goal, so a stall that keeps it waiting
 * is reported from it: the stall handler then runs on that thread while its state is
 * detached (ng_tstate_current() is NULL there; a stop-the-world may even have suspended the
 * state meanwhile), and it names the reader that holds the goal back, never the waiter,
 * whose slot is offline. Processing never calls the handler with a lock of the core held.
 */
#ifndef NOGIL_DELAYED_FREE_H
#define NOGIL_DELAYED_FREE_H

#include <stddef.h>
#include <stdint.h>
#include "mutex.h"

#ifdef __cplusplus
extern "C" {
#endif

struct ng_tstate;
struct ng_interp;

typedef void ng_delayed_fn(void *arg);

/* Entries per 4 KiB chunk (4 with the nogil_torture build). */
#ifdef NOGIL_TORTURE
#define NG_DELAYED_CHUNK_ENTRIES 4
#else
#define NG_DELAYED_CHUNK_ENTRIES 126
#endif

enum ng_delayed_kind {
    NG_DELAYED_FREE = 0,   /* free(ptr) */
    NG_DELAYED_OBJECT = 1, /* the interpreter's object release function (ng_interp_set_object_free) */
    NG_DELAYED_CALL = 2,   /* fn(arg) */
};

typedef struct ng_delayed_entry {
    void *ptr;        /* memory, object, or the function for NG_DELAYED_CALL */
    void *arg;
    uint64_t goal;
    uint32_t size;    /* bytes accounted (saturated at UINT32_MAX) */
    uint32_t kind;
} ng_delayed_entry;

typedef struct ng_delayed_chunk {
    struct ng_delayed_chunk *next;
    uint32_t rd_idx, wr_idx;
    ng_delayed_entry entries[NG_DELAYED_CHUNK_ENTRIES];
} ng_delayed_chunk;

/* A FIFO of chunks; `head` is processed first. Counters are read by other threads for stats
 * (relaxed). An own queue keeps one drained chunk in `spare` for its next chunk, so a thread
 * that retires steadily neither allocates nor frees chunks (and writes into memory still in
 * its cache); the spare goes with the queue's hand-over. */
typedef struct ng_delayed_queue {
    ng_delayed_chunk *head, *tail;
    ng_delayed_chunk *spare;
    uint64_t items;        /* entries not yet run */
    uint64_t bytes;        /* their accounted size */
    uint64_t oldest_goal;  /* goal of the head entry (0: empty) */
    int64_t oldest_ns;     /* since when the head entry heads the queue (0: empty) */
} ng_delayed_queue;

/* The interpreter's queue of abandoned work. */
typedef struct ng_delayed_interp_queue {
    ng_mutex mutex;
    uint32_t has_work;     /* hint, relaxed */
    ng_delayed_queue queue;
    uint64_t cap;          /* back-pressure cap in bytes per thread (0: off); relaxed */
    uint64_t cap_waits;    /* checkpoints that waited because of it (statistics, relaxed) */
} ng_delayed_interp_queue;

/* Queue work on the calling thread's state `ts` (attached, bound to the calling thread).
 * `size` feeds the memory-aware thresholds. NULL ptr (fn for ng_call_delayed) is ignored.
 * When the chunk cannot be allocated the call waits for a grace period and runs the entry
 * itself (it never fails for lack of memory). While the caller has stopped the world, a plain
 * free runs at once (calls and objects still queue: they run user code). An entry runs with
 * no lock of the library held and after it left its queue, so it may queue more work,
 * process, and fork(): the child carries on from inside the entry with the queues intact
 * (only ng_qsbr_barrier is refused from inside an entry). Returns NG_OK, NG_EINVAL (ts
 * NULL), NG_ERELEASED, NG_EWRONGTHREAD, NG_ESTATE (not attached). */
int ng_free_delayed(struct ng_tstate *ts, void *ptr, size_t size);
int ng_object_free_delayed(struct ng_tstate *ts, void *obj, size_t size);
int ng_call_delayed(struct ng_tstate *ts, ng_delayed_fn *fn, void *arg, size_t size);

/* Runs the entries whose goal is reached: the thread's own queue, then (try-lock) the
 * interpreter's. Clears should_process. Returns the number of entries run (>= 0) or a
 * negative status. Never waits (the back-pressure wait is the checkpoint's). */
int ng_process_delayed(struct ng_tstate *ts);

/* Back-pressure cap: a thread whose own delayed queue holds more than `bytes` accounted bytes
 * (the sizes passed when queueing) waits at its next checkpoint until its queue can run (see
 * the top comment). 0 turns it off, the default: queues are then bounded only by the
 * memory-aware thresholds, which ask for processing but never wait. Takes effect at each
 * thread's next queueing. NG_OK, NG_EINVAL, NG_ERELEASED (deleted interpreter). */
int ng_delayed_set_cap(struct ng_interp *interp, uint64_t bytes);
/* The current cap (0: off, also for a bad interpreter) and how many checkpoints waited. */
uint64_t ng_delayed_cap(struct ng_interp *interp);
uint64_t ng_delayed_cap_waits(struct ng_interp *interp);

/* Waits until every entry queued (by any thread of the interpreter) before the call has run
 * (entries already running elsewhere excepted). The caller must be attached and hold no
 * references into shared structures across the call: the barrier stops the world and reports a
 * quiescent state for it. NG_OK, NG_EBUSY (called from a delayed entry, or while the caller
 * has stopped the world), or a misuse status. */
int ng_qsbr_barrier(struct ng_tstate *ts);

/* Internal to the core (thread-state layer): the checkpoint's processing, ng_process_delayed
 * plus the back-pressure wait. The caller (the checkpoint) holds no references into shared
 * structures. NG_CANCELLED when the interpreter was deleted during the wait (the state stays
 * detached: release it). */
int ng_delayed_checkpoint(struct ng_tstate *ts);

/* Internal to the core (thread-state layer): move `ts`'s queue to the interpreter's and process
 * it with `caller`'s slot (may be NULL: only splice). */
void ng_delayed_abandon(struct ng_tstate *ts, struct ng_tstate *caller);
/* Runs everything in `q` unconditionally (interpreter deletion). */
void ng_delayed_queue_run_all(struct ng_interp *interp, ng_delayed_queue *q);

#ifdef __cplusplus
}
#endif
#endif /* NOGIL_DELAYED_FREE_H */
