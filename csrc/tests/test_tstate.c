/* Thread states (nogil/tstate.h; spec 5.3, 5.6, 5.7): life cycle, ids and references, misuse
 * reported with status codes, release at thread exit, thread churn with delayed work, and the
 * block hooks that detach a thread while it sleeps in a lock. */
#define _GNU_SOURCE

#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "tstate_helpers.h"

static uint64_t slot_seq(ng_tstate *ts) { return ng_atomic_load(&ts->qsbr->seq, NG_SEQ_CST); }

/* ==== Life cycle ========================================================================= */

TEST(tstate_lifecycle_ids_and_references)
{
    INTERP_SCENE(in);
    ng_tstate *a = detached_state(in), *b = detached_state(in);
    REQUIRE(a != NULL && b != NULL);

    /* Fresh states: detached, registered, bound to this thread, ids from 1. */
    CHECK_EQ(state_of(a), NG_TSTATE_DETACHED);
    CHECK_EQ(a->id, 1);
    CHECK_EQ(b->id, 2);
    CHECK_EQ(a->refcount, 2);
    CHECK_EQ(a->thread_id, ng_thread_id());
    CHECK_EQ(a->native_tid, gettid());
    CHECK_PTR_EQ(a->interp, in);
    CHECK(a->qsbr != NULL && b->qsbr != NULL && a->qsbr != b->qsbr);
    CHECK_EQ(a->magic, NG_TSTATE_MAGIC);
    CHECK_PTR_EQ(in->threads, b); /* newest first */
    ng_interp_stats st = stats_of(in);
    CHECK_EQ(st.threads, 2);
    CHECK_EQ(st.qsbr.registered, 2);
    CHECK_EQ(st.gil_enabled, 0);

    /* Attach: ATTACHED, current, QSBR online; detach undoes all three. */
    CHECK_PTR_EQ(ng_tstate_current(), NULL);
    CHECK_EQ(slot_seq(a), NG_QSBR_OFFLINE);
    CHECK_STATUS(ng_tstate_attach(a), NG_OK);
    CHECK_EQ(state_of(a), NG_TSTATE_ATTACHED);
    CHECK_PTR_EQ(ng_tstate_current(), a);
    CHECK_NE(slot_seq(a), NG_QSBR_OFFLINE);
    CHECK_EQ(a->holds_gil, 0); /* the GIL is off */

    /* The checkpoint reports a quiescent state at the current write sequence. */
    uint64_t goal = ng_qsbr_advance(&in->qsbr);
    CHECK_STATUS(ng_tstate_checkpoint(a), NG_OK);
    CHECK_EQ(slot_seq(a), goal);
    CHECK_STATUS(ng_tstate_checkpoint_slow(a), NG_OK);

    CHECK_STATUS(ng_tstate_detach(a), NG_OK);
    CHECK_EQ(state_of(a), NG_TSTATE_DETACHED);
    CHECK_PTR_EQ(ng_tstate_current(), NULL);
    CHECK_EQ(slot_seq(a), NG_QSBR_OFFLINE);

    /* Release an attached state: it detaches, leaves the list and QSBR, and its memory is
     * quarantined (dead magic) rather than freed. */
    CHECK_STATUS(ng_tstate_attach(b), NG_OK);
    uint64_t frees = ng_atomic_load(&ng_test_tstate_frees, NG_RELAXED);
    CHECK_STATUS(ng_tstate_release(b), NG_OK);
    CHECK_PTR_EQ(ng_tstate_current(), NULL);
    CHECK_EQ(ng_atomic_load(&ng_test_tstate_frees, NG_RELAXED), frees + 1);
    CHECK_EQ(ng_atomic_load(&b->magic, NG_RELAXED), NG_TSTATE_DEAD_MAGIC);
    st = stats_of(in);
    CHECK_EQ(st.threads, 1);
    CHECK_EQ(st.qsbr.registered, 1);
    CHECK_PTR_EQ(in->threads, a);
    CHECK_PTR_EQ(a->next, NULL);
    CHECK_PTR_EQ(a->prev, NULL);

    /* Ids are never reused. */
    ng_tstate *c = NULL;
    CHECK_STATUS(ng_tstate_new(in, &c), NG_OK);
    CHECK_EQ(c->id, 3);
    CHECK_STATUS(ng_tstate_release(c), NG_OK);
    CHECK_STATUS(ng_tstate_release(a), NG_OK);
    st = stats_of(in);
    CHECK_EQ(st.threads, 0);
    CHECK_EQ(st.qsbr.registered, 0);
    CHECK_EQ(ng_atomic_load(&ng_test_tstate_bad_frees, NG_RELAXED), 0);

    uint64_t interp_frees = ng_atomic_load(&ng_test_interp_frees, NG_RELAXED);
    CHECK_STATUS(ng_interp_delete(in), NG_OK);
    CHECK_EQ(ng_atomic_load(&ng_test_interp_frees, NG_RELAXED), interp_frees + 1);
    CHECK_STATUS(ng_interp_delete(in), NG_ERELEASED);
}

/* Two interpreters share nothing: ids, lists, QSBR, stop-the-world. */
TEST(tstate_two_interpreters_are_independent)
{
    ng_interp *x = new_interp(), *y = new_interp();
    REQUIRE(x != NULL && y != NULL);
    ng_tstate *tx = detached_state(x), *ty = detached_state(y);
    REQUIRE(tx != NULL && ty != NULL);
    CHECK_EQ(tx->id, 1);
    CHECK_EQ(ty->id, 1);
    CHECK(tx->qsbr->shared == &x->qsbr);
    CHECK(ty->qsbr->shared == &y->qsbr);

    /* Stopping y's world while this thread is attached in x needs nothing from x. */
    CHECK_STATUS(ng_tstate_attach(tx), NG_OK);
    CHECK_STATUS(ng_stop_the_world(y, NULL), NG_OK);
    CHECK(ng_world_stopped(y));
    CHECK(!ng_world_stopped(x));
    CHECK_EQ(state_of(tx), NG_TSTATE_ATTACHED);
    CHECK_EQ(state_of(ty), NG_TSTATE_SUSPENDED);
    CHECK_STATUS(ng_start_the_world(y), NG_OK);
    CHECK_EQ(state_of(ty), NG_TSTATE_DETACHED);
    CHECK_EQ(stats_of(y).stops, 1);
    CHECK_EQ(stats_of(x).stops, 0);

    /* One attached state per OS thread, across interpreters too. */
    CHECK_STATUS(ng_tstate_attach(ty), NG_ESTATE);
    CHECK_STATUS(ng_tstate_detach(tx), NG_OK);
    CHECK_STATUS(ng_tstate_attach(ty), NG_OK);
    CHECK_STATUS(ng_tstate_release(ty), NG_OK);
    CHECK_STATUS(ng_tstate_release(tx), NG_OK);
    CHECK_STATUS(ng_interp_delete(x), NG_OK);
    CHECK_STATUS(ng_interp_delete(y), NG_OK);
}

/* ==== Misuse ============================================================================== */

struct foreign_calls {
    ng_tstate *ts;
    int attach, detach, release, checkpoint, stop, gil;
};

static void *call_from_another_thread(void *p)
{
    struct foreign_calls *f = p;
    f->attach = ng_tstate_attach(f->ts);
    f->detach = ng_tstate_detach(f->ts);
    f->checkpoint = ng_tstate_checkpoint(f->ts);
    f->stop = ng_stop_the_world(f->ts->interp, f->ts);
    f->gil = ng_gil_enable(f->ts);
    f->release = ng_tstate_release(f->ts);
    return NULL;
}

TEST(tstate_misuse_is_reported)
{
    INTERP_SCENE(in);
    ng_tstate *a = detached_state(in), *b = detached_state(in);
    REQUIRE(a != NULL && b != NULL);

    /* NULL everywhere. */
    CHECK_STATUS(ng_interp_new(NULL), NG_EINVAL);
    CHECK_STATUS(ng_interp_delete(NULL), NG_EINVAL);
    ng_tstate *none = a;
    CHECK_STATUS(ng_tstate_new(NULL, &none), NG_EINVAL);
    CHECK_PTR_EQ(none, NULL);
    CHECK_STATUS(ng_tstate_new(in, NULL), NG_EINVAL);
    CHECK_STATUS(ng_tstate_attach(NULL), NG_EINVAL);
    CHECK_STATUS(ng_tstate_detach(NULL), NG_EINVAL);
    CHECK_STATUS(ng_tstate_release(NULL), NG_EINVAL);
    CHECK_STATUS(ng_tstate_checkpoint(NULL), NG_EINVAL);
    CHECK_STATUS(ng_stop_the_world(NULL, NULL), NG_EINVAL);
    CHECK_STATUS(ng_start_the_world(NULL), NG_EINVAL);
    CHECK_STATUS(ng_gil_enable(NULL), NG_EINVAL);
    CHECK_STATUS(ng_gil_disable(NULL), NG_EINVAL);
    CHECK_STATUS(ng_gil_enable_permanent(NULL), NG_EINVAL);
    ng_tstate_set_pending(NULL, NG_PENDING_CALLS); /* ignored */
    ng_interp_get_stats(NULL, NULL);               /* ignored */

    /* Wrong attachment state. */
    CHECK_STATUS(ng_tstate_detach(a), NG_ESTATE);
    CHECK_STATUS(ng_tstate_checkpoint(a), NG_ESTATE);
    CHECK_STATUS(ng_gil_enable(a), NG_ESTATE);
    CHECK_STATUS(ng_tstate_attach(a), NG_OK);
    CHECK_STATUS(ng_tstate_attach(a), NG_ESTATE);
    CHECK_STATUS(ng_tstate_attach(b), NG_ESTATE); /* another state of this thread */
    CHECK_STATUS(ng_tstate_detach(b), NG_ESTATE);
    CHECK_STATUS(ng_gil_disable(a), NG_ESTATE); /* does not hold it */
    CHECK_EQ(state_of(a), NG_TSTATE_ATTACHED);
    CHECK_EQ(state_of(b), NG_TSTATE_DETACHED);

    /* Stop-the-world: the attached state must be the requester; no nested stops. */
    CHECK_STATUS(ng_stop_the_world(in, NULL), NG_EINVAL);
    CHECK_STATUS(ng_stop_the_world(in, b), NG_EINVAL);
    CHECK_STATUS(ng_start_the_world(in), NG_EINVAL); /* not stopped */
    CHECK_STATUS(ng_stop_the_world(in, a), NG_OK);
    CHECK_STATUS(ng_stop_the_world(in, a), NG_EBUSY);
    CHECK_STATUS(ng_interp_delete(in), NG_EBUSY);
    CHECK_EQ(state_of(a), NG_TSTATE_ATTACHED);
    CHECK_EQ(state_of(b), NG_TSTATE_SUSPENDED);
    CHECK_STATUS(ng_start_the_world(in), NG_OK);
    CHECK_STATUS(ng_start_the_world(in), NG_EINVAL);
    CHECK_EQ(state_of(b), NG_TSTATE_DETACHED);
    CHECK_STATUS(ng_tstate_detach(a), NG_OK);

    /* Another OS thread may not act as the owner. */
    struct foreign_calls f = {.ts = a};
    join_thread(spawn_thread(call_from_another_thread, &f));
    CHECK_STATUS(f.attach, NG_EWRONGTHREAD);
    CHECK_STATUS(f.detach, NG_EWRONGTHREAD);
    CHECK_STATUS(f.checkpoint, NG_EWRONGTHREAD);
    CHECK_STATUS(f.stop, NG_EWRONGTHREAD);
    CHECK_STATUS(f.gil, NG_EWRONGTHREAD);
    CHECK_STATUS(f.release, NG_EWRONGTHREAD);
    CHECK_EQ(state_of(a), NG_TSTATE_DETACHED);

    /* The interpreter cannot go while this thread has a state in it. */
    CHECK_STATUS(ng_interp_delete(in), NG_EBUSY);

    /* Use after release: the quarantined memory says so. */
    CHECK_STATUS(ng_tstate_release(b), NG_OK);
    CHECK_STATUS(ng_tstate_attach(b), NG_ERELEASED);
    CHECK_STATUS(ng_tstate_detach(b), NG_ERELEASED);
    CHECK_STATUS(ng_tstate_checkpoint(b), NG_ERELEASED);
    CHECK_STATUS(ng_tstate_release(b), NG_ERELEASED);
    CHECK_STATUS(ng_stop_the_world(in, b), NG_ERELEASED);
    CHECK_STATUS(ng_gil_enable(b), NG_ERELEASED);
    CHECK_STATUS(ng_tstate_release(a), NG_OK);
    CHECK_STATUS(ng_interp_delete(in), NG_OK);

    /* A deleted interpreter (still in quarantine) is recognised. */
    ng_tstate *c = NULL;
    CHECK_STATUS(ng_tstate_new(in, &c), NG_ERELEASED);
    CHECK_PTR_EQ(c, NULL);
    CHECK_STATUS(ng_stop_the_world(in, NULL), NG_ERELEASED);
    CHECK_STATUS(ng_start_the_world(in), NG_ERELEASED);
    ng_interp_stats st;
    ng_interp_get_stats(in, &st);
    CHECK_EQ(st.threads, 0);
    CHECK_EQ(ng_atomic_load(&ng_test_tstate_bad_frees, NG_RELAXED), 0);
}

/* ==== Thread exit ========================================================================== */

struct exiting_thread {
    ng_interp *in;
    ng_tstate *attached, *detached;
    int *ran;
    int result;
};

static void *create_and_exit(void *p)
{
    struct exiting_thread *t = p;
    int err = ng_tstate_new(t->in, &t->detached);
    if (err == NG_OK)
        err = ng_tstate_new(t->in, &t->attached);
    if (err == NG_OK)
        err = ng_tstate_attach(t->attached);
    if (err == NG_OK)
        err = ng_call_delayed(t->attached, count_call, t->ran, 0);
    if (err == NG_OK)
        err = ng_free_delayed(t->attached, malloc(64), 64);
    t->result = err;
    return NULL; /* no release: the thread-exit destructor does it */
}

TEST(tstate_thread_exit_releases_bound_states)
{
    INTERP_SCENE(in);
    int ran = 0;
    uint64_t frees = ng_atomic_load(&ng_test_tstate_frees, NG_RELAXED);
    struct exiting_thread t = {.in = in, .ran = &ran};
    join_thread(spawn_thread(create_and_exit, &t));
    CHECK_STATUS(t.result, NG_OK);

    /* Both states were released by the destructor: out of the list, out of QSBR. */
    ng_interp_stats st = stats_of(in);
    CHECK_EQ(st.threads, 0);
    CHECK_EQ(st.qsbr.registered, 0);
    CHECK_EQ(ng_atomic_load(&ng_test_tstate_frees, NG_RELAXED), frees + 2);
    CHECK_EQ(ng_atomic_load(&t.attached->magic, NG_RELAXED), NG_TSTATE_DEAD_MAGIC);
    CHECK_EQ(ng_atomic_load(&t.detached->magic, NG_RELAXED), NG_TSTATE_DEAD_MAGIC);

    /* Its queued work was handed over; a barrier from this thread runs whatever is left. */
    ng_tstate *me = attached_state(in);
    REQUIRE(me != NULL);
    CHECK_STATUS(ng_qsbr_barrier(me), NG_OK);
    CHECK_EQ(ng_atomic_load(&ran, NG_SEQ_CST), 1);
    end_scene(in, me);
}

/* Thread churn: threads bind, attach, queue work and go, half by release and half by thread
 * exit. No QSBR slot and no state may leak, and every callback runs exactly once. */
#define CHURN_CALLS 3
#define CHURN_FREES 2
#define CHURN_BATCH 8

struct churn_thread {
    ng_interp *in;
    uint32_t *ran; /* CHURN_CALLS counters of this thread */
    bool release;
    int result;
};

static void count_once(void *arg) { ng_atomic_fetch_add((uint32_t *)arg, 1, NG_SEQ_CST); }

static void *churn_main(void *p)
{
    struct churn_thread *t = p;
    ng_tstate *ts = NULL;
    int err = create_attached(t->in, &ts);
    for (int k = 0; err == NG_OK && k < CHURN_CALLS; k++)
        err = ng_call_delayed(ts, count_once, &t->ran[k], 8);
    for (int k = 0; err == NG_OK && k < CHURN_FREES; k++)
        err = ng_free_delayed(ts, malloc(48), 48);
    if (err == NG_OK)
        err = ng_tstate_checkpoint(ts);
    if (err == NG_OK && t->release)
        err = ng_tstate_release(ts);
    t->result = err;
    return NULL;
}

TEST(tstate_churn_leaks_nothing_and_runs_every_callback_once)
{
    INTERP_SCENE(in);
    /* Thread creation is 10-30 times slower under ThreadSanitizer; its churn is shorter. */
    long n = scaled(THREAD_SANITIZER ? 2000 : 10000);
    uint32_t *ran = calloc((size_t)n * CHURN_CALLS, sizeof(uint32_t));
    REQUIRE(ran != NULL);
    uint64_t frees = ng_atomic_load(&ng_test_tstate_frees, NG_RELAXED);
    struct churn_thread batch[CHURN_BATCH];
    pthread_t threads[CHURN_BATCH];
    int failures = 0;
    uint64_t max_interp_items = 0;
    for (long i = 0; i < n; i += CHURN_BATCH) {
        int k = 0;
        for (; k < CHURN_BATCH && i + k < n; k++) {
            batch[k] = (struct churn_thread){
                .in = in, .ran = &ran[(i + k) * CHURN_CALLS], .release = (i + k) % 2 == 0};
            threads[k] = spawn_thread(churn_main, &batch[k]);
        }
        for (int j = 0; j < k; j++) {
            join_thread(threads[j]);
            failures += batch[j].result != NG_OK;
        }
        ng_interp_stats st = stats_of(in);
        if (st.interp_queue_items > max_interp_items)
            max_interp_items = st.interp_queue_items;
    }
    CHECK_EQ(failures, 0);
    ng_interp_stats st = stats_of(in);
    CHECK_EQ(st.threads, 0);
    CHECK_EQ(st.qsbr.registered, 0);
    CHECK_EQ(ng_atomic_load(&ng_test_tstate_frees, NG_RELAXED), frees + (uint64_t)n);
    CHECK_EQ(ng_atomic_load(&ng_test_tstate_bad_frees, NG_RELAXED), 0);
    /* At most 8 threads at a time: the slot space never grew past what they need. */
    CHECK_LE(st.qsbr.capacity, 3 * NG_QSBR_FIRST_SEGMENT);
    /* Exiting threads process the interpreter's queue (R6): it stays small. */
    CHECK_LT(max_interp_items, 20 * CHURN_BATCH * (CHURN_CALLS + CHURN_FREES));

    ng_tstate *me = attached_state(in);
    REQUIRE(me != NULL);
    CHECK_STATUS(ng_qsbr_barrier(me), NG_OK);
    long wrong = 0;
    for (long i = 0; i < n * CHURN_CALLS; i++)
        wrong += ng_atomic_load(&ran[i], NG_SEQ_CST) != 1;
    CHECK_EQ(wrong, 0);
    end_scene(in, me);
    free(ran);
}

/* ==== Block hooks ========================================================================== */

struct blocker {
    ng_interp *in;
    ng_mutex *mutex;
    ng_tstate *ts;
    int ready;
    int locked;              /* ng_mutex_lock returned */
    uint32_t state_after;    /* the state as seen right after the lock returned */
    int current_after;       /* whether it was still the current state */
    int result;
};

static void *attached_lock_waiter(void *p)
{
    struct blocker *b = p;
    int err = create_attached(b->in, &b->ts);
    ng_atomic_store(&b->ready, 1, NG_SEQ_CST);
    if (err == NG_OK) {
        err = ng_mutex_lock(b->mutex);
        b->state_after = state_of(b->ts);
        b->current_after = ng_tstate_current() == b->ts;
        ng_atomic_store(&b->locked, 1, NG_SEQ_CST);
        ng_mutex_unlock(b->mutex);
    }
    if (err == NG_OK)
        err = ng_tstate_checkpoint(b->ts);
    if (err == NG_OK)
        err = ng_tstate_release(b->ts);
    b->result = err;
    return NULL;
}

TEST(tstate_blocked_lock_waiter_is_detached_and_reattached)
{
    INTERP_SCENE(in);
    ng_mutex m = NG_MUTEX_INIT;
    ng_mutex_lock(&m);
    struct blocker b = {.in = in, .mutex = &m};
    pthread_t t = spawn_thread(attached_lock_waiter, &b);
    CHECK(WAIT_UNTIL(ng_atomic_load(&b.ready, NG_SEQ_CST), PATIENCE_MS));

    /* While it sleeps in the lock it is detached and offline ... */
    CHECK(WAIT_UNTIL(ng_parking_lot_waiters(&m.bits) == 1, PATIENCE_MS));
    CHECK(WAIT_UNTIL(state_of(b.ts) == NG_TSTATE_DETACHED, PATIENCE_MS));
    CHECK_EQ(slot_seq(b.ts), NG_QSBR_OFFLINE);

    /* ... so a grace period completes without it. */
    ng_tstate *me = attached_state(in);
    REQUIRE(me != NULL);
    uint64_t goal = ng_qsbr_advance(&in->qsbr);
    ng_qsbr_quiescent_state(me->qsbr);
    CHECK(ng_qsbr_poll(me->qsbr, goal));

    /* ... and a stop-the-world completes without it; when the lock is handed over while the
     * world is stopped it stays suspended until the restart. */
    CHECK_STATUS(ng_stop_the_world(in, me), NG_OK);
    CHECK_EQ(state_of(b.ts), NG_TSTATE_SUSPENDED);
    ng_mutex_unlock(&m);
    sleep_ms(20);
    CHECK_EQ(ng_atomic_load(&b.locked, NG_SEQ_CST), 0);
    CHECK_STATUS(ng_start_the_world(in), NG_OK);

    /* Re-attached when the lock call returns. */
    CHECK(WAIT_UNTIL(ng_atomic_load(&b.locked, NG_SEQ_CST), PATIENCE_MS));
    join_thread(t);
    CHECK_EQ(b.state_after, NG_TSTATE_ATTACHED);
    CHECK_EQ(b.current_after, 1);
    CHECK_STATUS(b.result, NG_OK);
    end_scene(in, me);
}
