/* Delayed frees (contract in nogil/delayed_free.h; spec §2).
 *
 * Who touches which queue. A thread state's queue (ts->delayed) is used by its owner only,
 * except
 *  - by the requester of ng_qsbr_barrier while the world is stopped: it splices every other
 *    state's queue into its own (the owners are suspended or detached, and queueing needs an
 *    attached state, so none of them is inside this file's queue code);
 *  - by ng_delayed_abandon, when the owner is releasing the state or no longer exists.
 * Both run under interp->delayed.mutex, which also guards the interpreter's queue, so a
 * barrier and the release of a detached state cannot splice the same queue at once. That
 * mutex is held only for bounded list work: it is taken without detaching, and no user code
 * runs while it is held (no entry, and no poll that scans, since a scan may call the stall
 * handler), so its holder is never suspended while holding it: the fork handler waits for it
 * with every world stopped. Lock order: interp->delayed.mutex, then head_lock. A barrier
 * only try-locks it while the world is stopped (R9: never wait, with a world stopped, for a
 * lock; a holder the stop suspended would never release it).
 *
 * Entries run outside every lock, and the read index moves past an entry before it runs, so a
 * running entry may queue more work into the same queue, process it, or fill it (spec 2.8):
 * processing keeps no pointer into a queue across a run.
 *
 * Goals. An own queue's goals never decrease (each goal is read after the previous one), so
 * processing stops at the first unmet goal (spec I4). Spliced queues (the interpreter's, a
 * barrier requester's) are only piecewise monotone; stopping early there only delays an entry,
 * never runs one early, since every entry is polled on its own.
 *
 * Fork: the thread-state layer's child handler reinitialises interp->delayed.mutex (a thread
 * that no longer exists may have held it) and abandons the dead threads' queues to the
 * interpreter's queue; only the surviving thread runs, so nothing here needs more care. An
 * entry may fork(): the prepare handler waits for interp->delayed.mutex and head_lock, which
 * no running entry's processing holds (entries run outside every lock, above), and the child
 * returns from the entry into a processing loop that holds no pointer into a queue
 * (test_delayed_fork.c). Thread exit: the thread-state layer abandons every state of the exiting thread (ng_delayed_abandon),
 * which processes the interpreter's queue right away with the releasing thread's slot (R6).
 */
#define _GNU_SOURCE
#include <limits.h>
#include <sched.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"
#include "delayed_free_internal.h"
#include "tstate_internal.h"

int ng_test_fail_delayed_chunk_alloc;

/* Entries a processor of the interpreter's queue takes per hold of its mutex: they run after
 * the unlock, so the batch bounds both the hold time and the stack used. */
#define INTERP_BATCH 32

/* Entry runs in progress on this thread. A barrier called from an entry would wait for work
 * queued behind the very entry that is running it. */
static NG_THREAD_LOCAL unsigned delayed_running;

#ifdef NOGIL_TORTURE
/* Forcing knob: give up the CPU at one in four interesting points, so that other threads
 * interleave where a short window would otherwise almost never be hit. */
static NG_THREAD_LOCAL uint64_t torture_rng;

static void torture_yield(void)
{
    if (torture_rng == 0)
        torture_rng = ng_thread_id() * UINT64_C(0x9e3779b97f4a7c15) | 1;
    torture_rng ^= torture_rng >> 12;
    torture_rng ^= torture_rng << 25;
    torture_rng ^= torture_rng >> 27;
    if (((torture_rng * UINT64_C(2685821657736338717)) >> 62) == 0)
        sched_yield();
}
#define TORTURE_YIELD() torture_yield()
#else
#define TORTURE_YIELD() ((void)0)
#endif

/* ---- Counters ------------------------------------------------------------------------- */

/* A queue's counters have one writer at a time (see the top comment) and are read by stats
 * readers on other threads: relaxed loads and stores, no read-modify-write needed. */
static inline void counter_add(uint64_t *c, uint64_t d)
{
    ng_atomic_store(c, ng_atomic_load(c, NG_RELAXED) + d, NG_RELAXED);
}

static inline void counter_sub(uint64_t *c, uint64_t d)
{
    ng_atomic_store(c, ng_atomic_load(c, NG_RELAXED) - d, NG_RELAXED);
}

static inline void set_oldest(ng_delayed_queue *q, uint64_t goal, int64_t ns)
{
    ng_atomic_store(&q->oldest_goal, goal, NG_RELAXED);
    ng_atomic_store(&q->oldest_ns, ns, NG_RELAXED);
}

static inline int add_sat_int(int a, int b) { return a > INT_MAX - b ? INT_MAX : a + b; }

/* ---- Queue operations ----------------------------------------------------------------- */

/* A chunk for the tail of `q`: its spare if it has one (the most recently drained chunk,
 * likely still in cache), else a new one. Only the owner of an own queue keeps a spare. */
static ng_delayed_chunk *chunk_new(ng_delayed_queue *q)
{
    /* Relaxed: a test sets the counter before the calls it wants to fail. It fails the reuse
     * of the spare too, so the test reaches the out-of-memory path whatever the queue kept. */
    int fail = ng_atomic_load(&ng_test_fail_delayed_chunk_alloc, NG_RELAXED);
    while (fail > 0) {
        if (ng_atomic_cas(&ng_test_fail_delayed_chunk_alloc, &fail, fail - 1, NG_RELAXED,
                          NG_RELAXED))
            return NULL;
    }
    ng_delayed_chunk *c = q->spare;
    if (c != NULL) {
        q->spare = NULL;
        c->next = NULL;
        c->rd_idx = c->wr_idx = 0;
        return c;
    }
    /* Not calloc: every field is written before it is read (entries when pushed). */
    c = malloc(sizeof(ng_delayed_chunk));
    if (c != NULL) {
        c->next = NULL;
        c->rd_idx = c->wr_idx = 0;
    }
    return c;
}

/* The first entry not yet run, or NULL. Drained chunks in front of it are freed, except in
 * own queues (`own`): there a drained last chunk stays, reset, as the cache for the next
 * entry, and another drained chunk becomes the spare if there is none (a thread that frees
 * steadily would otherwise allocate and free a chunk per chunk of entries). */
static ng_delayed_entry *queue_peek(ng_delayed_queue *q, bool own)
{
    for (;;) {
        ng_delayed_chunk *c = q->head;
        if (c == NULL)
            return NULL;
        if (c->rd_idx < c->wr_idx)
            return &c->entries[c->rd_idx];
        if (c->next == NULL) {
            if (own) {
                c->rd_idx = c->wr_idx = 0;
                return NULL;
            }
            q->tail = NULL;
        }
        q->head = c->next;
        if (own && q->spare == NULL)
            q->spare = c;
        else
            free(c);
    }
}

/* Removes the entry queue_peek just returned. */
static ng_delayed_entry queue_pop(ng_delayed_queue *q)
{
    ng_delayed_chunk *c = q->head;
    ng_delayed_entry e = c->entries[c->rd_idx++];
    counter_sub(&q->items, 1);
    counter_sub(&q->bytes, e.size);
    return e;
}

/* After entries left the queue: the head entry changed. We keep no per-entry time, so
 * oldest_ns becomes "at the head since": the age of a queue that makes no progress. */
static void queue_note_progress(ng_delayed_queue *q)
{
    for (ng_delayed_chunk *c = q->head; c != NULL; c = c->next) {
        if (c->rd_idx < c->wr_idx) {
            set_oldest(q, c->entries[c->rd_idx].goal, ng_monotonic_ns());
            return;
        }
    }
    set_oldest(q, 0, 0);
}

static void queue_note_push(ng_delayed_queue *q, const ng_delayed_entry *e)
{
    if (ng_atomic_load(&q->items, NG_RELAXED) == 0)
        set_oldest(q, e->goal, ng_monotonic_ns());
    counter_add(&q->items, 1);
    counter_add(&q->bytes, e->size);
}

static void queue_free_chunks(ng_delayed_queue *q)
{
    ng_delayed_chunk *c = q->head;
    while (c != NULL) {
        ng_delayed_chunk *next = c->next;
        free(c);
        c = next;
    }
    free(q->spare);
    q->head = q->tail = q->spare = NULL;
    ng_atomic_store(&q->items, 0, NG_RELAXED);
    ng_atomic_store(&q->bytes, 0, NG_RELAXED);
    set_oldest(q, 0, 0);
}

/* Moves every entry of `src` behind those of `dst`, in order; `src` ends empty, with no
 * chunk (its spare is freed). An empty `src` is left alone (keeping its cached chunks). */
static void queue_splice(ng_delayed_queue *dst, ng_delayed_queue *src)
{
    uint64_t n = ng_atomic_load(&src->items, NG_RELAXED);
    if (n == 0)
        return;
    free(src->spare);
    src->spare = NULL;
    if (ng_atomic_load(&dst->items, NG_RELAXED) == 0)
        set_oldest(dst, ng_atomic_load(&src->oldest_goal, NG_RELAXED),
                   ng_atomic_load(&src->oldest_ns, NG_RELAXED));
    counter_add(&dst->items, n);
    counter_add(&dst->bytes, ng_atomic_load(&src->bytes, NG_RELAXED));

    ng_delayed_chunk *t = dst->tail;
    if (t != NULL && n <= (uint64_t)(NG_DELAYED_CHUNK_ENTRIES - t->wr_idx)) {
        /* Few entries: copy them into dst's last chunk. Linking them would add a mostly empty
         * chunk per exiting thread to the interpreter's queue (thread churn, R6). */
        for (ng_delayed_chunk *c = src->head; c != NULL;) {
            uint32_t k = c->wr_idx - c->rd_idx;
            memcpy(&t->entries[t->wr_idx], &c->entries[c->rd_idx], k * sizeof(ng_delayed_entry));
            t->wr_idx += k;
            ng_delayed_chunk *next = c->next;
            free(c);
            c = next;
        }
    }
    else {
        /* Only the head chunk can be drained (n > 0 keeps one with entries). */
        while (src->head->rd_idx == src->head->wr_idx) {
            ng_delayed_chunk *c = src->head;
            src->head = c->next;
            free(c);
        }
        if (t == NULL)
            dst->head = src->head;
        else
            t->next = src->head;
        dst->tail = src->tail;
    }
    src->head = src->tail = NULL;
    ng_atomic_store(&src->items, 0, NG_RELAXED);
    ng_atomic_store(&src->bytes, 0, NG_RELAXED);
    set_oldest(src, 0, 0);
}

/* ---- Running entries ------------------------------------------------------------------ */

static void run_entry(ng_interp *interp, const ng_delayed_entry *e)
{
    delayed_running++;
    switch (e->kind) {
    case NG_DELAYED_OBJECT: {
        /* Relaxed: set before objects are queued (ng_interp_set_object_free). */
        ng_object_free_fn *release = ng_atomic_load(&interp->object_free, NG_RELAXED);
        if (release != NULL)
            release(e->ptr);
        else
            free(e->ptr);
        break;
    }
    case NG_DELAYED_CALL:
        ((ng_delayed_fn *)e->ptr)(e->arg);
        break;
    default:
        free(e->ptr);
        break;
    }
    delayed_running--;
}

/* Runs the own queue's entries whose goal is reached, in order. Returns how many ran;
 * *unmet is the goal that stopped it (0 when the queue ran dry). */
static int process_own(ng_tstate *ts, uint64_t *unmet)
{
    ng_delayed_queue *q = &ts->delayed;
    int ran = 0;
    /* The last goal found reached: a reached goal stays reached, and entries come in runs of
     * one goal (every entry between two advances gets the same), so one poll serves a run.
     * NG_QSBR_OFFLINE (0) is never a goal to skip for: goals are odd. */
    uint64_t reached = NG_QSBR_OFFLINE;
    *unmet = 0;
    for (;;) {
        ng_delayed_entry *next = queue_peek(q, true);
        if (next == NULL)
            break;
        uint64_t goal = next->goal;
        if (goal != reached) {
            if (!ng_qsbr_poll(ts->qsbr, goal)) {
                *unmet = goal;
                break;
            }
            reached = goal;
        }
        ng_delayed_entry e = queue_pop(q);
        TORTURE_YIELD();
        run_entry(ts->interp, &e);
        ran = add_sat_int(ran, 1);
    }
    if (ran > 0)
        queue_note_progress(q);
    return ran;
}

/* With the interpreter queue's mutex held: takes up to INTERP_BATCH entries whose goal is
 * known to be reached (rd_seq), in order. It does not scan: a scan may report a stall, and the
 * stall callback must not run under the mutex (it may block, and a thread that a stop
 * suspends while it holds the mutex would stop the fork handler, which waits for it). Returns
 * how many; *full says the batch filled (more may be ready); *unmet is the goal of the first
 * entry left behind (0: none). */
static size_t interp_take_batch(ng_delayed_interp_queue *iq, ng_qsbr_slot *slot,
                                ng_delayed_entry *batch, bool *full, uint64_t *unmet)
{
    size_t n = 0;
    ng_delayed_entry *next;
    *unmet = 0;
    while (n < INTERP_BATCH && (next = queue_peek(&iq->queue, false)) != NULL) {
        if (!ng_qsbr_goal_reached(slot, next->goal)) {
            *unmet = next->goal;
            break;
        }
        batch[n++] = queue_pop(&iq->queue);
    }
    if (n > 0)
        queue_note_progress(&iq->queue);
    /* Relaxed: a hint that lets processors skip the try-lock; whoever adds work sets it under
     * the mutex, and a processor that misses it only delays that work to its next call. */
    ng_atomic_store(&iq->has_work, ng_atomic_load(&iq->queue.items, NG_RELAXED) != 0,
                    NG_RELAXED);
    *full = n == INTERP_BATCH;
    return n;
}

/* Processes the interpreter's queue with `slot` (its thread attached). With `locked` the
 * caller holds the mutex for the first batch; later batches use a try-lock: a holder is
 * already at it. An entry whose goal rd_seq does not show yet is polled after the unlock
 * (the scan that may find it reached, or report the stall), and taken on the next round. */
static int interp_drain(ng_interp *interp, ng_qsbr_slot *slot, bool locked)
{
    ng_delayed_interp_queue *iq = &interp->delayed;
    ng_delayed_entry batch[INTERP_BATCH];
    int ran = 0;
    for (;;) {
        if (!locked) {
            if (!ng_atomic_load(&iq->has_work, NG_RELAXED) || !ng_mutex_trylock(&iq->mutex))
                break;
        }
        locked = false;
        bool full;
        uint64_t unmet;
        size_t n = interp_take_batch(iq, slot, batch, &full, &unmet);
        ng_mutex_unlock(&iq->mutex);
        for (size_t i = 0; i < n; i++) {
            TORTURE_YIELD();
            run_entry(interp, &batch[i]);
        }
        ran = add_sat_int(ran, (int)n);
        if (!full && (unmet == 0 || !ng_qsbr_poll(slot, unmet)))
            break;
    }
    return ran;
}

/* ---- Validation --------------------------------------------------------------------------- */

/* The calling thread's own state, attached. */
static int check_attached(ng_tstate *ts)
{
    int rc = ng_tstate_check_owner(ts);
    if (rc != NG_OK)
        return rc;
    /* Relaxed: only the owner (this thread) moves its state away from ATTACHED. */
    if (ng_atomic_load(&ts->state, NG_RELAXED) != NG_TSTATE_ATTACHED || ts->qsbr == NULL)
        return NG_ESTATE;
    return NG_OK;
}

/* ---- Queueing ------------------------------------------------------------------------- */

/* No memory for a chunk (spec 2.3 step 3): get a grace period synchronously instead of
 * queueing. A stop-the-world makes every other thread of the interpreter suspend at a
 * checkpoint or while detached, both quiescent points later than the caller's unlink; once it
 * has stopped, nobody can still hold the memory. The entry runs after the restart, so a call
 * may take locks as usual. Like any stop-the-world, the caller may itself be suspended by a
 * concurrent one while it waits for its turn. If this thread has stopped the world already,
 * the others are quiescent and the entry runs at once (the only case in which a call runs
 * with the world stopped). */
static int run_after_grace_period(ng_tstate *ts, const ng_delayed_entry *e)
{
    ng_interp *interp = ts->interp;
    if (!ng_stw_stopped_by_me(interp)) {
        int rc = ng_stop_the_world(interp, ts);
        if (rc != NG_OK)
            return rc; /* not run: the memory is still the caller's */
        TORTURE_YIELD();
        ng_start_the_world(interp);
    }
    run_entry(interp, e);
    return NG_OK;
}

/* Raises NG_PENDING_DELAYED when the thresholds asked for processing, so that the
 * checkpoint's fast path (one load of `pending`) notices. */
static void request_processing_if_due(ng_tstate *ts)
{
    /* Relaxed: the flag is this thread's own, set by the goal computation just before. */
    if (ng_atomic_load(&ts->qsbr->should_process, NG_RELAXED) &&
        (ng_atomic_load(&ts->pending, NG_RELAXED) & NG_PENDING_DELAYED) == 0)
        ng_tstate_set_pending(ts, NG_PENDING_DELAYED);
}

/* Over the back-pressure cap: raise NG_PENDING_DELAYED, so that the next checkpoint
 * processes and, if the queue stays over the cap, waits (ng_delayed_checkpoint). */
static void request_processing_if_over_cap(ng_tstate *ts)
{
    /* Relaxed: the cap is a tunable (a thread may see a change a few entries late), the
     * byte count is this thread's own, and the pending bit is only tested to skip the RMW. */
    uint64_t cap = ng_atomic_load(&ts->interp->delayed.cap, NG_RELAXED);
    if (cap != 0 && ng_atomic_load(&ts->delayed.bytes, NG_RELAXED) > cap &&
        (ng_atomic_load(&ts->pending, NG_RELAXED) & NG_PENDING_DELAYED) == 0)
        ng_tstate_set_pending(ts, NG_PENDING_DELAYED);
}

static int queue_entry(ng_tstate *ts, uint32_t kind, void *ptr, void *arg, size_t size)
{
    int rc = check_attached(ts);
    if (rc != NG_OK)
        return rc;
    if (ptr == NULL)
        return NG_OK;
    ng_interp *interp = ts->interp;
    ng_delayed_entry e = {
        .ptr = ptr,
        .arg = arg,
        .goal = 0,
        .size = size > UINT32_MAX ? UINT32_MAX : (uint32_t)size,
        .kind = kind,
    };

    if (kind == NG_DELAYED_FREE && ng_stw_stopped_by_me(interp)) {
        /* Only the requester runs and every other thread is suspended, hence quiescent: no
         * reader can hold the block (spec 2.3 step 1). Calls and objects still queue: they
         * run user code, which must not run while the world is stopped (it could wait for a
         * lock a suspended thread holds, R9). */
        free(ptr);
        return NG_OK;
    }

    ng_delayed_queue *q = &ts->delayed;
    ng_delayed_chunk *c = q->tail;
    if (c == NULL || c->wr_idx == NG_DELAYED_CHUNK_ENTRIES) {
        ng_delayed_chunk *fresh = chunk_new(q);
        if (fresh == NULL)
            return run_after_grace_period(ts, &e);
        if (c == NULL)
            q->head = fresh;
        else
            c->next = fresh;
        q->tail = c = fresh;
    }

    /* The caller's unlink (a store) must be ordered before the read of wr_seq that fixes the
     * goal: ng_qsbr_goal_for_free fences (or advances, a seq-cst RMW) for us. */
    uint64_t goal = ng_qsbr_goal_for_free(ts->qsbr, size);
    TORTURE_YIELD();
    /* Field by field into the chunk, not a copy of `e`: a 16-byte load of a struct whose goal
     * was just stored with 8 bytes cannot be forwarded from the store buffer, and that stall
     * was a measurable part of the per-entry cost (qsbrbench's delayed-free writer). */
    ng_delayed_entry *slot = &c->entries[c->wr_idx++];
    slot->ptr = e.ptr;
    slot->arg = e.arg;
    slot->goal = goal;
    slot->size = e.size;
    slot->kind = e.kind;
    queue_note_push(q, slot);
    request_processing_if_due(ts);
    request_processing_if_over_cap(ts);

    /* Safety valve: a full chunk is processed now, whatever the thresholds say. */
    if (c->wr_idx == NG_DELAYED_CHUNK_ENTRIES)
        ng_process_delayed(ts);
    return NG_OK;
}

int ng_free_delayed(ng_tstate *ts, void *ptr, size_t size)
{
    return queue_entry(ts, NG_DELAYED_FREE, ptr, NULL, size);
}

int ng_object_free_delayed(ng_tstate *ts, void *obj, size_t size)
{
    return queue_entry(ts, NG_DELAYED_OBJECT, obj, NULL, size);
}

int ng_call_delayed(ng_tstate *ts, ng_delayed_fn *fn, void *arg, size_t size)
{
    return queue_entry(ts, NG_DELAYED_CALL, (void *)fn, arg, size);
}

/* ---- Processing ----------------------------------------------------------------------- */

/* The goal of the newest entry of an own queue (0: none). An own queue's goals never
 * decrease, so once it is reached every entry queued so far can run; after a barrier's
 * splice they are only piecewise monotone, and reaching it may leave some entries for
 * later, which only makes the back-pressure wait end early. */
static uint64_t newest_goal(const ng_delayed_queue *q)
{
    const ng_delayed_chunk *t = q->tail;
    if (t == NULL || t->wr_idx == t->rd_idx)
        return 0;
    return t->entries[t->wr_idx - 1].goal;
}

/* The back-pressure wait: detached, so that this thread holds back neither the grace period
 * it waits for nor a stop-the-world, and gives up the GIL; then attached again (waiting
 * while a stop-the-world is in progress). Nothing of the queue is touched while detached:
 * the interpreter's deletion or a barrier may splice it meanwhile (both treat a detached
 * state's queue as theirs). */
static int wait_for_goal_detached(ng_tstate *ts, uint64_t goal)
{
    ng_qsbr_slot *slot = ts->qsbr;
    /* Relaxed: a statistic. */
    ng_atomic_fetch_add(&ts->interp->delayed.cap_waits, 1, NG_RELAXED);
    ng_tstate_detach_to(ts, NG_TSTATE_DETACHED);
    TORTURE_YIELD();
    /* No time limit: the cap is a bound on memory, kept even while a reader stalls. Offline,
     * the slot cannot be the one holding the goal back (NG_ESTATE is impossible), and it
     * stays registered until this thread releases the state, as does the shared state
     * (the thread state's reference keeps the interpreter's memory). The wait's polls are
     * what reports a reader that keeps us here: the stall handler runs on this thread, with
     * the state detached (no current state; a stop may even suspend it meanwhile) and no
     * lock held, and names that reader, never us (a scan skips offline slots). */
    int rc = ng_qsbr_wait(slot, goal, -1);
    int err = ng_tstate_attach_unchecked(ts);
    return err != NG_OK ? err : rc;
}

/* Processing, with the back-pressure wait when `may_wait` (the caller is at a checkpoint:
 * it holds no references, and no entry of this thread is running). */
static int process_delayed(ng_tstate *ts, bool may_wait)
{
    int rc = check_attached(ts);
    if (rc != NG_OK)
        return rc;
    ng_interp *interp = ts->interp;
    /* The stop-the-world requester itself: entries would run user code with the world
     * stopped (R9). Ask again, so a checkpoint after the restart processes. */
    if (ng_stw_stopped_by_me(interp)) {
        ng_tstate_set_pending(ts, NG_PENDING_DELAYED);
        return 0;
    }

    /* Clear before processing, so a threshold crossed by an entry queued meanwhile (by a
     * running entry) sets them again. Relaxed: the flag is owner-only state. */
    ng_atomic_store(&ts->qsbr->should_process, 0, NG_RELAXED);
    /* The checkpoint that calls us has taken the bit already: skip the RMW then (it is most
     * of the cost of a checkpoint that retries an unmet goal, R5). Relaxed: only this thread
     * clears the bit, so one seen set stays set until the clear; one set by another thread
     * after this load (only tests do that) is handled by the next checkpoint, as a request
     * arriving just after the clear would be. */
    if (ng_atomic_load(&ts->pending, NG_RELAXED) & NG_PENDING_DELAYED)
        ng_tstate_clear_pending(ts, NG_PENDING_DELAYED);

    uint64_t unmet;
    int ran = process_own(ts, &unmet);
    ran = add_sat_int(ran, interp_drain(interp, ts->qsbr, false));

    /* Over the cap with entries still waiting: wait for the newest one's goal, then run them.
     * Not from inside an entry (delayed_running): an outer processing loop of this thread
     * would go on with a queue that the interpreter's deletion may have taken while we were
     * detached. Relaxed loads: the cap is a tunable, the byte count our own. */
    uint64_t cap = ng_atomic_load(&interp->delayed.cap, NG_RELAXED);
    if (unmet != 0 && cap != 0 && ng_atomic_load(&ts->delayed.bytes, NG_RELAXED) > cap) {
        uint64_t goal = newest_goal(&ts->delayed);
        if (!may_wait || delayed_running != 0) {
            /* Still over: the next checkpoint must wait, even if nothing is queued before. */
            ng_tstate_set_pending(ts, NG_PENDING_DELAYED);
            return ran;
        }
        if (goal != 0) {
            rc = wait_for_goal_detached(ts, goal);
            if (rc != NG_OK)
                return rc;
            ran = add_sat_int(ran, process_own(ts, &unmet));
        }
    }

    /* An entry whose goal the write sequence has already passed waits only for the other
     * threads' next quiescent states: ask the next checkpoint to look again, so memory held
     * past a threshold does not wait for another threshold (R5). While some thread stays
     * behind, each retry costs one load (the poll's laggard check). */
    if (unmet != 0 && NG_QSBR_LEQ(unmet, ng_qsbr_shared_current(&interp->qsbr)))
        ng_tstate_set_pending(ts, NG_PENDING_DELAYED);
    return ran;
}

int ng_process_delayed(ng_tstate *ts) { return process_delayed(ts, false); }

/* The checkpoint's retry (R5, see the end of process_delayed) when it cannot run anything
 * yet: nothing but the retry asked for processing, the interpreter's queue has no work, the
 * queue is not over the cap, and the first entry's goal is still unmet. Processing would
 * reach the same end (nothing run, ask again) through a dozen calls; a thread that retires
 * an object between two checkpoints while a slow reader holds the goal back pays that at
 * every checkpoint (qsbrbench's delayed-free writer, when its reader shares its CPU or is
 * preempted). Returns whether it handled the checkpoint. Not for the stop-the-world
 * requester, whose processing only asks again (without polling: a poll may report a
 * stall). */
static bool checkpoint_retry_is_futile(ng_tstate *ts)
{
    ng_interp *interp = ts->interp;
    ng_delayed_queue *q = &ts->delayed;
    ng_delayed_chunk *c = q->head;
    /* A drained head chunk: the full path moves past it. */
    if (c == NULL || c->rd_idx == c->wr_idx)
        return false;
    /* Relaxed: should_process is our own; has_work is a hint (see interp_take_batch); the cap
     * is a tunable and the byte count ours, as in process_delayed. */
    if (ng_atomic_load(&ts->qsbr->should_process, NG_RELAXED) ||
        ng_atomic_load(&interp->delayed.has_work, NG_RELAXED))
        return false;
    uint64_t cap = ng_atomic_load(&interp->delayed.cap, NG_RELAXED);
    if (cap != 0 && ng_atomic_load(&q->bytes, NG_RELAXED) > cap)
        return false;
    if (ng_stw_stopped_by_me(interp))
        return false;
    uint64_t goal = c->entries[c->rd_idx].goal;
    if (ng_qsbr_poll(ts->qsbr, goal))
        return false;
    /* End with the request bit as process_delayed leaves it for this unmet goal: set when
     * only reports are missing (the retry), clear otherwise. A checkpoint that leaves the bit
     * to us (instead of taking it) then pays no RMW for a futile retry. Relaxed: only this
     * thread clears the bit (see process_delayed). */
    bool retry = NG_QSBR_LEQ(goal, ng_qsbr_shared_current(&interp->qsbr));
    bool requested = (ng_atomic_load(&ts->pending, NG_RELAXED) & NG_PENDING_DELAYED) != 0;
    if (retry && !requested)
        ng_tstate_set_pending(ts, NG_PENDING_DELAYED);
    else if (!retry && requested)
        ng_tstate_clear_pending(ts, NG_PENDING_DELAYED);
    return true;
}

int ng_delayed_checkpoint(ng_tstate *ts)
{
    if (checkpoint_retry_is_futile(ts))
        return 0;
    return process_delayed(ts, true);
}

int ng_delayed_set_cap(ng_interp *interp, uint64_t bytes)
{
    int rc = ng_interp_check_live(interp);
    if (rc != NG_OK)
        return rc;
    /* Relaxed: a tunable, read by each thread when it queues and at its checkpoints. */
    ng_atomic_store(&interp->delayed.cap, bytes, NG_RELAXED);
    return NG_OK;
}

uint64_t ng_delayed_cap(ng_interp *interp)
{
    if (ng_interp_check_live(interp) != NG_OK)
        return 0;
    return ng_atomic_load(&interp->delayed.cap, NG_RELAXED); /* a tunable */
}

uint64_t ng_delayed_cap_waits(ng_interp *interp)
{
    if (ng_interp_check_live(interp) != NG_OK)
        return 0;
    return ng_atomic_load(&interp->delayed.cap_waits, NG_RELAXED); /* a statistic */
}

/* ---- Hand-over and shutdown ----------------------------------------------------------- */

void ng_delayed_abandon(ng_tstate *ts, ng_tstate *caller)
{
    if (ng_tstate_check_live(ts) != NG_OK)
        return;
    ng_interp *interp = ts->interp;
    ng_delayed_interp_queue *iq = &interp->delayed;
    ng_delayed_queue *q = &ts->delayed;
    bool can_process = caller != NULL && check_attached(caller) == NG_OK &&
                       caller->interp == interp && !ng_stw_stopped_by_me(interp);

    /* Under the interpreter queue's mutex even when `q` is empty: a barrier splices the
     * queues of all listed states under it, and the owner of `ts` may be releasing it
     * detached, i.e. while a barrier's stop-the-world is in progress. */
    ng_lock_nodetach(&iq->mutex);
    if (ng_atomic_load(&q->items, NG_RELAXED) == 0) {
        queue_free_chunks(q); /* at most the cached, drained chunk */
    }
    else {
        ng_delayed_chunk *tail = q->tail;
        uint64_t last_goal = tail->entries[tail->wr_idx - 1].goal;
        /* Goals that no advance has passed yet would wait for some other thread's advance,
         * which under thread churn may never come (R6): advance now, so that quiescent
         * states alone make the whole queue due. */
        if (NG_QSBR_LT(ng_qsbr_shared_current(&interp->qsbr), last_goal))
            ng_qsbr_advance(&interp->qsbr);
        TORTURE_YIELD();
        queue_splice(&iq->queue, q);
        /* Relaxed: a hint (see interp_take_batch); the mutex orders the queue itself. */
        ng_atomic_store(&iq->has_work, 1, NG_RELAXED);
    }
    if (!can_process) {
        ng_mutex_unlock(&iq->mutex);
        return;
    }
    if (caller == ts) {
        /* `ts` is being released by its own thread, which holds no references through it any
         * more: report that (after the advance above), or its own slot would hold back the
         * goals it just handed over. */
        ng_qsbr_quiescent_state(ts->qsbr);
    }
    interp_drain(interp, caller->qsbr, true); /* unlocks */
}

void ng_delayed_queue_run_all(ng_interp *interp, ng_delayed_queue *q)
{
    if (interp == NULL || q == NULL)
        return;
    /* Entries may queue more into `q` while it runs; they run too. */
    while (queue_peek(q, false) != NULL) {
        ng_delayed_entry e = queue_pop(q);
        run_entry(interp, &e);
    }
    set_oldest(q, 0, 0);
}

/* ---- Barrier ---------------------------------------------------------------------------- */

static void pause_ns(int64_t ns)
{
    struct timespec t = {.tv_sec = 0, .tv_nsec = (long)ns};
    nanosleep(&t, NULL);
}

int ng_qsbr_barrier(ng_tstate *ts)
{
    int rc = check_attached(ts);
    if (rc != NG_OK)
        return rc;
    ng_interp *interp = ts->interp;
    /* From inside an entry: the wait would include the running entry's own completion.
     * With the world stopped by this thread: nobody else could reach a quiescent state. */
    if (delayed_running > 0 || ng_stw_stopped_by_me(interp))
        return NG_EBUSY;

    /* Stop the world holding the interpreter queue's mutex, which also serialises us with
     * ng_delayed_abandon of states released meanwhile. Only a try-lock while stopped (R9):
     * no holder of that mutex can be suspended (see the top comment), but a wait with the
     * world stopped must not rest on that; on failure restart the world and try again. */
    int64_t retry_pause = 1000;
    for (;;) {
        rc = ng_stop_the_world(interp, ts);
        if (rc != NG_OK)
            return rc;
        if (ng_mutex_trylock(&interp->delayed.mutex))
            break;
        ng_start_the_world(interp);
        pause_ns(retry_pause);
        if (retry_pause < NG_NS_PER_MS)
            retry_pause *= 2;
    }
    TORTURE_YIELD();
    /* Collect all queued work into our queue (spec 2.6: never process through another state,
     * whose slot may not even be registered yet, R7). */
    ng_lock_nodetach(&interp->head_lock);
    for (ng_tstate *t = interp->threads; t != NULL; t = t->next) {
        if (t != ts)
            queue_splice(&ts->delayed, &t->delayed);
    }
    ng_mutex_unlock(&interp->head_lock);
    queue_splice(&ts->delayed, &interp->delayed.queue);
    ng_atomic_store(&interp->delayed.has_work, 0, NG_RELAXED); /* hint, see interp_take_batch */
    ng_mutex_unlock(&interp->delayed.mutex);
    /* Every goal handed out so far is at most the current wr_seq + NG_QSBR_INCR, which is
     * what this advance returns. */
    uint64_t goal = ng_qsbr_advance(&interp->qsbr);
    ng_start_the_world(interp);
    TORTURE_YIELD();

    /* The stop was itself a grace period: every other state was suspended (offline) and
     * comes back at a sequence >= `goal`. Our own slot is the only one left behind; the
     * caller holds no references across the barrier, so report for it. Should a slot still
     * be behind, wait at checkpoints (which honour stop-the-world and GIL requests). */
    ng_qsbr_quiescent_state(ts->qsbr);
    int64_t pause = 1000;
    while (!ng_qsbr_poll(ts->qsbr, goal)) {
        pause_ns(pause);
        if (pause < NG_NS_PER_MS)
            pause *= 2;
        rc = ng_tstate_checkpoint(ts);
        if (rc != NG_OK)
            return rc;
    }
    /* All earlier work is in our queue, ahead of anything newer, with a goal <= `goal`, which
     * is reached: one pass runs all of it. */
    uint64_t unmet;
    process_own(ts, &unmet);
    return NG_OK;
}
