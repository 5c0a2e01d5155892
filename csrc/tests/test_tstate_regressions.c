/* Regression scenarios of the thread-state layer (spec §13 R3, R7, R18) and fork() with live
 * thread states (spec 5.10). Fork children use no stdio and no test macros (not safe after a
 * multi-threaded fork); they report through their exit status, one bit per failed group of
 * checks, and an alarm() turns a hang into a signal death the parent reports. */
#define _GNU_SOURCE

#include <stdlib.h>
#include <string.h>

#include "fork_helpers.h"
#include "harness.h"
#include "qsbr_internal.h"
#include "tstate_helpers.h"

/* ThreadSanitizer cannot start threads in the child of a multi-threaded fork (it dies with
 * status 66): its children skip the thread checks. */
#if defined(__SANITIZE_THREAD__)
#define THREADS_AFTER_FORK 0
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define THREADS_AFTER_FORK 0
#endif
#endif
#ifndef THREADS_AFTER_FORK
#define THREADS_AFTER_FORK 1
#endif


/* ==== R3: deletion while threads come and go =============================================== */

#define R3_THREADS 8

struct r3_thread {
    ng_interp *in;
    ng_tstate *ts;
    uint64_t seed;
    uint64_t rounds;
    int cancelled;   /* attach reported NG_CANCELLED */
    int release;     /* status of the final release */
    int errors;      /* any other unexpected status */
    int touched_after_cancel;
    pthread_t thread;
};

static void *r3_loop(void *p)
{
    struct r3_thread *t = p;
    ng_tstate *ts = NULL;
    if (ng_tstate_new(t->in, &ts) != NG_OK) {
        t->errors++;
        return NULL;
    }
    ng_atomic_store(&t->ts, ts, NG_SEQ_CST);
    int err = ng_tstate_attach(ts);
    while (err == NG_OK) {
        /* "Touch an object" while attached, then a checkpoint. */
        ng_atomic_fetch_add(&t->rounds, 1, NG_SEQ_CST);
        /* Suspended here when the deletion comes: cancelled on the way out. */
        err = ng_tstate_checkpoint(ts);
        if (err != NG_OK)
            break;
        if (ng_tstate_detach(ts) != NG_OK) {
            t->errors++;
            break;
        }
        sleep_us(1000 + (int64_t)(rng_next(&t->seed) % 4000)); /* a "blocking call" */
        err = ng_tstate_attach(ts);
    }
    if (err == NG_CANCELLED) {
        t->cancelled = 1;
        /* Never attached again: the state stays SHUTTING_DOWN. */
        t->touched_after_cancel = ng_tstate_current() != NULL ||
                                  state_of(ts) != NG_TSTATE_SHUTTING_DOWN ||
                                  ng_tstate_attach(ts) != NG_CANCELLED;
    }
    else if (err != NG_OK) {
        t->errors++;
    }
    t->release = ng_tstate_release(ts);
    return NULL;
}

static bool some_thread_parked(ng_interp *in)
{
    /* Called with the world stopped: the list is stable. */
    for (ng_tstate *ts = in->threads; ts != NULL; ts = ts->next)
        if (ng_parking_lot_waiters(&ts->state) > 0)
            return true;
    return false;
}

static void wait_for_a_parked_thread(ng_interp *in)
{
    CHECK(WAIT_UNTIL(some_thread_parked(in), PATIENCE_MS));
}

TEST(tstate_r3_interpreter_deletion_cancels_blocked_threads)
{
    INTERP_SCENE(in);
    struct r3_thread t[R3_THREADS];
    uint64_t frees = ng_atomic_load(&ng_test_tstate_frees, NG_RELAXED);
    uint64_t interp_frees = ng_atomic_load(&ng_test_interp_frees, NG_RELAXED);
    for (int i = 0; i < R3_THREADS; i++) {
        t[i] = (struct r3_thread){.in = in, .seed = (uint64_t)i * 7919 + 1};
        t[i].thread = spawn_thread(r3_loop, &t[i]);
    }
    for (int i = 0; i < R3_THREADS; i++)
        CHECK(wait_past(&t[i].rounds, 2));

    /* The deletion pauses, with the world stopped, until some thread tried to attach and is
     * parked as SUSPENDED; the deletion must wake it. */
    ng_test_interp_delete_stopped_hook = wait_for_a_parked_thread;
    CHECK_STATUS(ng_interp_delete(in), NG_OK);
    ng_test_interp_delete_stopped_hook = NULL;

    for (int i = 0; i < R3_THREADS; i++) {
        join_thread(t[i].thread);
        CHECK_EQ(t[i].cancelled, 1);
        CHECK_EQ(t[i].errors, 0);
        CHECK_EQ(t[i].touched_after_cancel, 0);
        CHECK_STATUS(t[i].release, NG_OK);
    }
    /* Each state freed exactly once, and the interpreter's memory only after the last of
     * them (the states' releases used it after the deletion returned). */
    CHECK_EQ(ng_atomic_load(&ng_test_tstate_frees, NG_RELAXED), frees + R3_THREADS);
    CHECK_EQ(ng_atomic_load(&ng_test_tstate_bad_frees, NG_RELAXED), 0);
    CHECK_EQ(ng_atomic_load(&ng_test_interp_frees, NG_RELAXED), interp_frees + 1);
    CHECK_EQ(ng_atomic_load(&in->magic, NG_RELAXED), NG_INTERP_DEAD_MAGIC);
    ng_tstate *late = NULL;
    CHECK_STATUS(ng_tstate_new(in, &late), NG_ERELEASED);
}

/* The interpreter outlives its deletion while a state still refers to it. */
static void *hold_state_until(void *p)
{
    void **args = p;
    ng_interp *in = args[0];
    int *go = args[1];
    ng_tstate *ts = NULL;
    int err = ng_tstate_new(in, &ts);
    ng_atomic_store((ng_tstate **)&args[2], ts, NG_SEQ_CST);
    SPIN_UNTIL(ng_atomic_load(go, NG_SEQ_CST));
    if (err == NG_OK) {
        int attach = ng_tstate_attach(ts);
        err = attach == NG_CANCELLED ? ng_tstate_release(ts) : NG_ESTATE;
    }
    args[3] = (void *)(intptr_t)(err == NG_OK ? 1 : 2);
    return NULL;
}

TEST(tstate_state_may_outlive_its_interpreter)
{
    INTERP_SCENE(in);
    int go = 0;
    void *args[4] = {in, &go, NULL, NULL};
    uint64_t interp_frees = ng_atomic_load(&ng_test_interp_frees, NG_RELAXED);
    pthread_t t = spawn_thread(hold_state_until, args);
    CHECK(wait_published((ng_tstate **)&args[2]));
    ng_tstate *ts = args[2];
    CHECK_STATUS(ng_interp_delete(in), NG_OK);
    /* Deleted (magic dead) but not quarantined: the state holds a reference. */
    CHECK_EQ(ng_atomic_load(&in->magic, NG_RELAXED), NG_INTERP_DEAD_MAGIC);
    CHECK_EQ(ng_atomic_load(&NG_INTERP_IMPL(in)->refs, NG_SEQ_CST), 1);
    CHECK_EQ(ng_atomic_load(&ng_test_interp_frees, NG_RELAXED), interp_frees);
    CHECK_EQ(state_of(ts), NG_TSTATE_SHUTTING_DOWN);
    CHECK_EQ(ng_atomic_load(&ts->refcount, NG_SEQ_CST), 1); /* the list's reference went */
    ng_atomic_store(&go, 1, NG_SEQ_CST);
    join_thread(t);
    CHECK_EQ((intptr_t)args[3], 1);
    CHECK_EQ(ng_atomic_load(&ng_test_interp_frees, NG_RELAXED), interp_frees + 1);
}

/* ==== R7: linked but not yet registered ===================================================== */

static uint64_t r7_paused_thread;
static int r7_paused, r7_resume;

static void pause_between_link_and_register(ng_tstate *ts)
{
    if (ng_thread_id() != ng_atomic_load(&r7_paused_thread, NG_SEQ_CST))
        return;
    ng_atomic_store(&r7_paused, 1, NG_SEQ_CST);
    SPIN_UNTIL(ng_atomic_load(&r7_resume, NG_SEQ_CST));
}

struct r7_creator {
    ng_interp *in;
    ng_tstate *ts;
    int result;
};

static void *r7_create(void *p)
{
    struct r7_creator *c = p;
    ng_atomic_store(&r7_paused_thread, ng_thread_id(), NG_SEQ_CST);
    int err = create_attached(c->in, &c->ts);
    if (err == NG_OK)
        err = ng_tstate_checkpoint(c->ts);
    c->result = release_keeping_error(c->ts, err);
    return NULL;
}

/* Threads with pending delayed frees, detached and waiting. */
struct r7_holder {
    ng_interp *in;
    int *freed;
    int go;
    int ready;
    int result;
    pthread_t thread;
};

static void *r7_hold_pending(void *p)
{
    struct r7_holder *h = p;
    ng_tstate *ts = NULL;
    int err = create_attached(h->in, &ts);
    for (int i = 0; err == NG_OK && i < 5; i++)
        err = ng_call_delayed(ts, count_call, h->freed, 16);
    if (err == NG_OK)
        err = ng_tstate_detach(ts);
    ng_atomic_store(&h->ready, 1, NG_SEQ_CST);
    SPIN_UNTIL(ng_atomic_load(&h->go, NG_SEQ_CST));
    h->result = release_keeping_error(ts, err);
    return NULL;
}

TEST(tstate_r7_linked_unregistered_state_is_tolerated)
{
    INTERP_SCENE(in);
    int freed = 0;
    struct r7_holder h[3];
    for (int i = 0; i < 3; i++) {
        h[i] = (struct r7_holder){.in = in, .freed = &freed};
        h[i].thread = spawn_thread(r7_hold_pending, &h[i]);
        CHECK(WAIT_UNTIL(ng_atomic_load(&h[i].ready, NG_SEQ_CST), PATIENCE_MS));
    }

    ng_atomic_store(&r7_paused, 0, NG_SEQ_CST);
    ng_atomic_store(&r7_resume, 0, NG_SEQ_CST);
    ng_test_tstate_linked_hook = pause_between_link_and_register;
    struct r7_creator c = {.in = in};
    pthread_t tc = spawn_thread(r7_create, &c);
    CHECK(WAIT_UNTIL(ng_atomic_load(&r7_paused, NG_SEQ_CST), PATIENCE_MS));

    /* The paused state is in the list with no QSBR slot. */
    ng_tstate *linked = in->threads;
    CHECK(linked != NULL && ng_atomic_load(&linked->qsbr, NG_SEQ_CST) == NULL);
    ng_interp_stats st = stats_of(in);
    CHECK_EQ(st.threads, 4);
    CHECK_EQ(st.delayed_items, 15);
    CHECK_EQ(st.qsbr.registered, 4); /* reserved counts */

    /* Stop-the-world, statistics and a collector-style barrier all walk the list. */
    CHECK_STATUS(ng_stop_the_world(in, NULL), NG_OK);
    CHECK_EQ(state_of(linked), NG_TSTATE_SUSPENDED);
    CHECK_STATUS(ng_start_the_world(in), NG_OK);
    ng_tstate *me = attached_state(in);
    REQUIRE(me != NULL);
    CHECK_STATUS(ng_qsbr_barrier(me), NG_OK);
    CHECK_EQ(ng_atomic_load(&freed, NG_SEQ_CST), 15); /* all eligible items ran */
    st = stats_of(in);
    CHECK_EQ(st.delayed_items, 0);
    CHECK_STATUS(ng_tstate_release(me), NG_OK);

    ng_atomic_store(&r7_resume, 1, NG_SEQ_CST);
    join_thread(tc);
    ng_test_tstate_linked_hook = NULL;
    CHECK_STATUS(c.result, NG_OK);
    for (int i = 0; i < 3; i++) {
        ng_atomic_store(&h[i].go, 1, NG_SEQ_CST);
        join_thread(h[i].thread);
        CHECK_STATUS(h[i].result, NG_OK);
    }
    CHECK_EQ(stats_of(in).threads, 0);
    CHECK_STATUS(ng_interp_delete(in), NG_OK);
}

/* ==== R18: failed creation gives the QSBR slot back ========================================= */

TEST(tstate_r18_failed_creation_leaks_no_slot)
{
    INTERP_SCENE(in);
    ng_tstate *keep = detached_state(in);
    REQUIRE(keep != NULL);
    ng_interp_stats before = stats_of(in);
    for (int i = 0; i < 1000; i++) {
        ng_tstate *ts = (ng_tstate *)1;
        ng_atomic_store(&ng_test_fail_tstate_alloc, 1, NG_SEQ_CST);
        if (!CHECK_STATUS(ng_tstate_new(in, &ts), NG_ENOMEM))
            break;
        CHECK_PTR_EQ(ts, NULL);
    }
    ng_atomic_store(&ng_test_fail_tstate_alloc, 0, NG_SEQ_CST);
    ng_interp_stats after = stats_of(in);
    CHECK_EQ(after.qsbr.capacity, before.qsbr.capacity);
    CHECK_EQ(after.qsbr.registered, before.qsbr.registered);
    CHECK_EQ(after.threads, before.threads);

    /* The slot space itself out of memory: nothing is linked either. */
    for (int i = 0; i < NG_QSBR_FIRST_SEGMENT - 1; i++) {
        ng_tstate *ts = NULL;
        CHECK_STATUS(ng_tstate_new(in, &ts), NG_OK); /* fill the first segment */
    }
    ng_interp_stats full = stats_of(in);
    ng_atomic_store(&ng_test_fail_qsbr_segment_alloc, 1, NG_SEQ_CST);
    ng_tstate *ts = NULL;
    CHECK_STATUS(ng_tstate_new(in, &ts), NG_ENOMEM);
    ng_atomic_store(&ng_test_fail_qsbr_segment_alloc, 0, NG_SEQ_CST);
    after = stats_of(in);
    CHECK_EQ(after.threads, full.threads);
    CHECK_EQ(after.qsbr.registered, full.qsbr.registered);

    /* And creation works again afterwards, with ids that went on counting. */
    CHECK_STATUS(ng_tstate_new(in, &ts), NG_OK);
    CHECK_EQ(ts->id, NG_QSBR_FIRST_SEGMENT + 1);
    for (ng_tstate *t = in->threads; t != NULL; t = in->threads)
        CHECK_STATUS(ng_tstate_release(t), NG_OK);
    CHECK_EQ(stats_of(in).qsbr.registered, 0);
    CHECK_STATUS(ng_interp_delete(in), NG_OK);
}

/* ==== fork() ================================================================================ */

#define FORK_WORKERS 3

struct fork_worker {
    ng_interp *in;
    int index;
    int stop;
    int ready;
    uint64_t rounds;
    int result;
    pthread_t thread;
};

/* Worker 0 stays attached and checkpoints; worker 1 queues frees and stays detached; worker 2
 * queues frees and stays attached. */
static void *fork_worker_main(void *p)
{
    struct fork_worker *w = p;
    ng_tstate *ts = NULL;
    int err = create_attached(w->in, &ts);
    for (int i = 0; err == NG_OK && w->index > 0 && i < 10; i++)
        err = ng_free_delayed(ts, malloc(100), 100);
    if (err == NG_OK && w->index == 1)
        err = ng_tstate_detach(ts);
    ng_atomic_store(&w->ready, 1, NG_SEQ_CST);
    while (err == NG_OK && !ng_atomic_load(&w->stop, NG_SEQ_CST)) {
        if (w->index == 1) {
            sleep_us(100);
        }
        else {
            err = ng_tstate_checkpoint(ts);
            sched_yield();
        }
        ng_atomic_fetch_add(&w->rounds, 1, NG_SEQ_CST);
    }
    w->result = release_keeping_error(ts, err);
    return NULL;
}

static int child_freed;

static void *child_thread_main(void *p)
{
    ng_interp *in = p;
    ng_tstate *ts = NULL;
    int ok = ng_tstate_new(in, &ts) == NG_OK && ng_tstate_attach(ts) == NG_OK &&
             ng_free_delayed(ts, malloc(10), 10) == NG_OK &&
             ng_call_delayed(ts, count_call, &child_freed, 0) == NG_OK &&
             ng_tstate_checkpoint(ts) == NG_OK && ng_tstate_release(ts) == NG_OK;
    return (void *)(intptr_t)ok;
}

/* Runs fn(arg) on a new thread of a fork child (no test macros there); whether it returned
 * (void *)1. */
static bool child_thread_ok(void *(*fn)(void *), void *arg)
{
    pthread_t t;
    void *ok = NULL;
    return pthread_create(&t, NULL, fn, arg) == 0 && pthread_join(t, &ok) == 0 &&
           ok == (void *)1;
}

/* The child's checks, given the forking thread's state; returns a bit set of failed groups. */
static int fork_child_checks(void *arg)
{
    ng_tstate *me = arg;
    ng_interp *in = me->interp;
    int failed = 0;
    ng_interp_stats st;
    ng_interp_get_stats(in, &st);
    /* 1: only the forking thread's state is left, in the list and in QSBR. */
    if (st.threads != 1 || st.qsbr.registered != 1 || in->threads != me || me->next != NULL ||
        ng_tstate_current() != me || state_of(me) != NG_TSTATE_ATTACHED ||
        me->native_tid != gettid())
        failed |= 1;
    /* 2: it works: checkpoint, queue, barrier (the dead threads' frees ran too). */
    if (ng_tstate_checkpoint(me) != NG_OK || ng_free_delayed(me, malloc(8), 8) != NG_OK ||
        ng_qsbr_barrier(me) != NG_OK)
        failed |= 2;
    ng_interp_get_stats(in, &st);
    if (st.delayed_items != 0)
        failed |= 2;
    /* 4: stop-the-world and detach/attach. */
    if (ng_stop_the_world(in, me) != NG_OK || ng_start_the_world(in) != NG_OK ||
        ng_tstate_detach(me) != NG_OK || ng_stop_the_world(in, NULL) != NG_OK ||
        ng_start_the_world(in) != NG_OK || ng_tstate_attach(me) != NG_OK)
        failed |= 4;
    /* 8: new states on this thread and on new threads. */
    ng_tstate *extra = NULL;
    if (ng_tstate_new(in, &extra) != NG_OK || extra->id <= me->id ||
        ng_tstate_release(extra) != NG_OK)
        failed |= 8;
    if (THREADS_AFTER_FORK) {
        if (!child_thread_ok(child_thread_main, in))
            failed |= 8;
        if (ng_qsbr_barrier(me) != NG_OK || ng_atomic_load(&child_freed, NG_SEQ_CST) != 1)
            failed |= 8;
    }
    /* 16: tear down. */
    if (ng_tstate_release(me) != NG_OK || ng_interp_delete(in) != NG_OK)
        failed |= 16;
    return failed;
}

static const char *const fork_check_names[] = {
    "only the forking thread's state is left",
    "checkpoint, queue and barrier work",
    "stop-the-world and detach/attach work",
    "new states and threads work",
    "release and interpreter deletion work",
    NULL,
};

TEST(tstate_fork_child_keeps_only_the_forking_threads_state)
{
    INTERP_SCENE(in);
    struct fork_worker w[FORK_WORKERS];
    for (int i = 0; i < FORK_WORKERS; i++) {
        w[i] = (struct fork_worker){.in = in, .index = i};
        w[i].thread = spawn_thread(fork_worker_main, &w[i]);
        CHECK(WAIT_UNTIL(ng_atomic_load(&w[i].ready, NG_SEQ_CST), PATIENCE_MS));
    }
    ng_tstate *me = attached_state(in);
    REQUIRE(me != NULL);
    CHECK_STATUS(ng_free_delayed(me, malloc(50), 50), NG_OK);
    ng_interp_stats before = stats_of(in);
    CHECK_EQ(before.threads, FORK_WORKERS + 1);

    pid_t pid = fork_checks(fork_child_checks, me);
    REQUIRE(pid > 0);
    /* The parent goes on: its world was restarted, every state is still there. */
    CHECK_EQ(stats_of(in).threads, FORK_WORKERS + 1);
    CHECK(!ng_world_stopped(in));
    for (int i = 0; i < FORK_WORKERS; i++)
        CHECK(wait_past(&w[i].rounds, ng_atomic_load(&w[i].rounds, NG_SEQ_CST)));
    CHECK_STATUS(ng_tstate_checkpoint(me), NG_OK);
    check_child(pid, fork_check_names, "fork with live states");

    STOP_AND_JOIN(w, FORK_WORKERS);
    CHECK_STATUS(ng_qsbr_barrier(me), NG_OK);
    end_scene(in, me);
}

/* Fork with the GIL on, while another thread waits for it: the child's forking thread keeps
 * the GIL, the waiter is gone, and the GIL still changes hands in the child. */
struct gil_waiter {
    ng_interp *in;
    ng_tstate *ts;
    int result;
};

static void *wait_for_gil(void *p)
{
    struct gil_waiter *g = p;
    /* The attach blocks until the parent's main thread detaches. */
    int err = create_attached(g->in, &g->ts);
    g->result = release_keeping_error(g->ts, err);
    return NULL;
}

static void *child_attach_with_gil(void *p)
{
    ng_interp *in = p;
    ng_tstate *ts = NULL;
    int ok = ng_tstate_new(in, &ts) == NG_OK && ng_tstate_attach(ts) == NG_OK &&
             ts->holds_gil == 1 && ng_tstate_release(ts) == NG_OK;
    return (void *)(intptr_t)ok;
}

static const char *const fork_gil_check_names[] = {
    "the forking thread's state keeps the GIL",
    "its detach releases the GIL",
    "another thread takes the GIL",
    "teardown works",
    NULL,
};

static int fork_gil_child_checks(void *arg)
{
    ng_tstate *me = arg;
    ng_interp *in = me->interp;
    int failed = 0;
    ng_interp_stats st;
    ng_interp_get_stats(in, &st);
    if (st.threads != 1 || me->holds_gil != 1 || !ng_mutex_is_locked(&in->gil.lock) ||
        in->gil.holder != me || ng_parking_lot_waiters(&in->gil.lock.bits) != 0)
        failed |= 1;
    if (ng_tstate_checkpoint(me) != NG_OK || ng_tstate_detach(me) != NG_OK ||
        ng_mutex_is_locked(&in->gil.lock))
        failed |= 2;
    if (THREADS_AFTER_FORK && !child_thread_ok(child_attach_with_gil, in))
        failed |= 4;
    if (ng_tstate_attach(me) != NG_OK || me->holds_gil != 1 || ng_gil_disable(me) != NG_OK ||
        ng_tstate_release(me) != NG_OK || ng_interp_delete(in) != NG_OK)
        failed |= 8;
    return failed;
}

TEST(tstate_fork_child_keeps_the_gil_of_the_forking_thread)
{
    TSTATE_SCENE(in, me);
    CHECK_STATUS(ng_gil_enable(me), NG_OK);
    struct gil_waiter g = {.in = in};
    pthread_t t = spawn_thread(wait_for_gil, &g);
    CHECK(WAIT_UNTIL(ng_parking_lot_waiters(&in->gil.lock.bits) == 1, PATIENCE_MS));

    pid_t pid = fork_checks(fork_gil_child_checks, me);
    REQUIRE(pid > 0);
    check_child(pid, fork_gil_check_names, "fork with the GIL on");
    CHECK_STATUS(ng_tstate_detach(me), NG_OK); /* lets the waiter in */
    join_thread(t);
    CHECK_STATUS(g.result, NG_OK);
    CHECK_STATUS(ng_tstate_attach(me), NG_OK);
    CHECK_STATUS(ng_gil_disable(me), NG_OK);
    end_scene(in, me);
}
