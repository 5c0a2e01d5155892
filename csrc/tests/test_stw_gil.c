/* Stop-the-world and the run-time GIL (nogil/tstate.h; spec 5.5, 5.8, R1, R4, R8, R9, R16). */
#define _GNU_SOURCE

#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "tstate_helpers.h"

/* ==== Workers ============================================================================ */

/* A thread with a state that loops: attached workers checkpoint and count; detached ones just
 * sleep. The state pointer is published once created. */
struct worker {
    ng_interp *in;
    bool attached;
    int stop;
    ng_tstate *ts;
    uint64_t iterations;
    int result;
    pthread_t thread;
};

static void *worker_main(void *p)
{
    struct worker *w = p;
    ng_tstate *ts = NULL;
    int err = w->attached ? create_attached(w->in, &ts) : ng_tstate_new(w->in, &ts);
    ng_atomic_store(&w->ts, ts, NG_SEQ_CST);
    while (err == NG_OK && !ng_atomic_load(&w->stop, NG_SEQ_CST)) {
        if (w->attached) {
            err = ng_tstate_checkpoint(ts);
            ng_atomic_fetch_add(&w->iterations, 1, NG_SEQ_CST);
        }
        else {
            sleep_us(200);
        }
    }
    w->result = release_keeping_error(ts, err);
    return NULL;
}

static bool all_published(struct worker *w, int n)
{
    for (int i = 0; i < n; i++)
        if (ng_atomic_load(&w[i].ts, NG_SEQ_CST) == NULL)
            return false;
    return true;
}

/* ==== Stop-the-world ======================================================================= */

#define STW_ATTACHED 3
#define STW_DETACHED 2
#define STW_WORKERS (STW_ATTACHED + STW_DETACHED)

static void check_stop_freezes_everyone(ng_interp *in, ng_tstate *requester,
                                        struct worker *w)
{
    uint32_t requester_state = requester != NULL ? state_of(requester) : 0;
    CHECK_STATUS(ng_stop_the_world(in, requester), NG_OK);
    CHECK(ng_world_stopped(in));
    for (int i = 0; i < STW_WORKERS; i++)
        CHECK_EQ(state_of(w[i].ts), NG_TSTATE_SUSPENDED);
    uint64_t before[STW_ATTACHED];
    for (int i = 0; i < STW_ATTACHED; i++)
        before[i] = ng_atomic_load(&w[i].iterations, NG_SEQ_CST);
    sleep_ms(20);
    for (int i = 0; i < STW_ATTACHED; i++)
        CHECK_EQ(ng_atomic_load(&w[i].iterations, NG_SEQ_CST), before[i]);
    /* The requester is left as it was (attached or detached), never suspended. */
    if (requester != NULL)
        CHECK_EQ(state_of(requester), requester_state);
    CHECK_STATUS(ng_start_the_world(in), NG_OK);
    CHECK(!ng_world_stopped(in));
    for (int i = 0; i < STW_ATTACHED; i++)
        CHECK(wait_past(&w[i].iterations, before[i] + 10));
}

TEST(stw_suspends_attached_and_detached_threads)
{
    INTERP_SCENE(in);
    struct worker w[STW_WORKERS];
    for (int i = 0; i < STW_WORKERS; i++) {
        w[i] = (struct worker){.in = in, .attached = i < STW_ATTACHED};
        w[i].thread = spawn_thread(worker_main, &w[i]);
    }
    CHECK(WAIT_UNTIL(all_published(w, STW_WORKERS), PATIENCE_MS));
    for (int i = 0; i < STW_ATTACHED; i++)
        CHECK(wait_past(&w[i].iterations, 0));

    uint64_t stops = stats_of(in).stops;
    /* Requester without a state. */
    for (int round = 0; round < 3; round++)
        check_stop_freezes_everyone(in, NULL, w);
    /* Requester with an attached state: it keeps running. */
    ng_tstate *me = attached_state(in);
    REQUIRE(me != NULL);
    check_stop_freezes_everyone(in, me, w);
    CHECK_STATUS(ng_tstate_checkpoint(me), NG_OK);
    /* Requester with a detached state. */
    CHECK_STATUS(ng_tstate_detach(me), NG_OK);
    check_stop_freezes_everyone(in, me, w);
    CHECK_EQ(stats_of(in).stops, stops + 5);

    STOP_AND_JOIN(w, STW_WORKERS);
    end_scene(in, me);
}

/* Threads that attach, or create a state, while the world is stopped wait for the restart. */
struct late_attacher {
    ng_interp *in;
    bool create_first; /* create the state before the stop, attach on `go` */
    int go;
    ng_tstate *ts;
    uint32_t state_at_creation;
    int attached;
    int result;
};

static void *attach_late(void *p)
{
    struct late_attacher *l = p;
    ng_tstate *ts = NULL;
    int err = ng_tstate_new(l->in, &ts);
    if (err == NG_OK)
        l->state_at_creation = state_of(ts);
    ng_atomic_store(&l->ts, ts, NG_SEQ_CST);
    if (l->create_first)
        SPIN_UNTIL(ng_atomic_load(&l->go, NG_SEQ_CST));
    if (err == NG_OK)
        err = ng_tstate_attach(ts);
    ng_atomic_store(&l->attached, 1, NG_SEQ_CST);
    l->result = release_keeping_error(ts, err);
    return NULL;
}

TEST(stw_attach_while_stopped_waits_for_the_restart)
{
    INTERP_SCENE(in);
    /* One state exists before the stop, one is created while the world is stopped. */
    struct late_attacher before = {.in = in, .create_first = true};
    pthread_t tb = spawn_thread(attach_late, &before);
    CHECK(wait_published(&before.ts));
    REQUIRE(before.ts != NULL);
    CHECK_EQ(before.state_at_creation, NG_TSTATE_DETACHED);

    CHECK_STATUS(ng_stop_the_world(in, NULL), NG_OK);
    CHECK_EQ(state_of(before.ts), NG_TSTATE_SUSPENDED);
    ng_atomic_store(&before.go, 1, NG_SEQ_CST);
    struct late_attacher during = {.in = in};
    pthread_t td = spawn_thread(attach_late, &during);
    CHECK(WAIT_UNTIL(ng_parking_lot_waiters(&before.ts->state) == 1, PATIENCE_MS));
    CHECK(WAIT_UNTIL(ng_atomic_load(&during.ts, NG_SEQ_CST) != NULL &&
                         ng_parking_lot_waiters(&during.ts->state) == 1,
                     PATIENCE_MS));
    CHECK_EQ(during.state_at_creation, NG_TSTATE_SUSPENDED);
    sleep_ms(20);
    CHECK_EQ(ng_atomic_load(&before.attached, NG_SEQ_CST), 0);
    CHECK_EQ(ng_atomic_load(&during.attached, NG_SEQ_CST), 0);
    CHECK_EQ(stats_of(in).threads, 2);
    CHECK_STATUS(ng_start_the_world(in), NG_OK);
    join_thread(tb);
    join_thread(td);
    CHECK_EQ(before.attached, 1);
    CHECK_EQ(during.attached, 1);
    CHECK_STATUS(before.result, NG_OK);
    CHECK_STATUS(during.result, NG_OK);
    CHECK_EQ(stats_of(in).threads, 0);
    CHECK_STATUS(ng_interp_delete(in), NG_OK);
}

/* R8: the requester waits without detaching. A slow worker keeps the stop waiting; an observer
 * samples the requester's state word the whole time. */
struct slow_worker {
    ng_interp *in;
    ng_tstate *ts;
    int stop;
    int result;
    pthread_t thread;
};

static void *slow_checkpoints(void *p)
{
    struct slow_worker *s = p;
    ng_tstate *ts = NULL;
    int err = create_attached(s->in, &ts);
    ng_atomic_store(&s->ts, ts, NG_SEQ_CST);
    while (err == NG_OK && !ng_atomic_load(&s->stop, NG_SEQ_CST)) {
        sleep_ms(3); /* attached and busy: no checkpoint for a while */
        err = ng_tstate_checkpoint(ts);
    }
    s->result = release_keeping_error(ts, err);
    return NULL;
}

struct observer {
    ng_tstate *watched;
    int stop;
    uint64_t samples, not_attached;
};

static void *observe_state(void *p)
{
    struct observer *o = p;
    while (!ng_atomic_load(&o->stop, NG_SEQ_CST)) {
        if (state_of(o->watched) != NG_TSTATE_ATTACHED)
            ng_atomic_fetch_add(&o->not_attached, 1, NG_SEQ_CST);
        ng_atomic_fetch_add(&o->samples, 1, NG_SEQ_CST);
        sched_yield();
    }
    return NULL;
}

TEST(stw_r8_requester_stays_attached_while_waiting)
{
    INTERP_SCENE(in);
    struct slow_worker s = {.in = in};
    s.thread = spawn_thread(slow_checkpoints, &s);
    CHECK(WAIT_UNTIL(ng_atomic_load(&s.ts, NG_SEQ_CST) != NULL &&
                         state_of(s.ts) == NG_TSTATE_ATTACHED,
                     PATIENCE_MS));
    ng_tstate *me = attached_state(in);
    REQUIRE(me != NULL);
    struct observer o = {.watched = me};
    pthread_t to = spawn_thread(observe_state, &o);
    CHECK(wait_past(&o.samples, 0));
    uint64_t samples_before = ng_atomic_load(&o.samples, NG_SEQ_CST);
    int64_t waited_ns = 0;
    for (int round = 0; round < 10; round++) {
        /* The worker is back at work (attached), so the stop has to wait for its checkpoint. */
        CHECK(WAIT_UNTIL(state_of(s.ts) == NG_TSTATE_ATTACHED, PATIENCE_MS));
        int64_t start = now_ns();
        CHECK_STATUS(ng_stop_the_world(in, me), NG_OK);
        waited_ns += now_ns() - start;
        CHECK_STATUS(ng_start_the_world(in), NG_OK);
        CHECK_STATUS(ng_tstate_checkpoint(me), NG_OK);
    }
    /* The stops really waited (so the observer had something to watch). */
    CHECK_GT(waited_ns, 5 * NG_NS_PER_MS);
    ng_atomic_store(&o.stop, 1, NG_SEQ_CST);
    join_thread(to);
    CHECK_GT(o.samples, samples_before); /* it watched while the stops waited */
    CHECK_EQ(o.not_attached, 0);
    STOP_AND_JOIN(&s, 1);
    end_scene(in, me);
}

/* R9: threads hand a mutex over to each other (every unlock a hand-off) while a requester runs
 * stop/start cycles. A lock handed to a thread that is suspended stays with it until the
 * restart; stop-the-world must never need that lock. */
#define R9_THREADS 4

struct contender {
    ng_interp *in;
    ng_mutex *m;
    int stop;
    uint64_t rounds;
    int result;
    pthread_t thread;
};

static void *contend(void *p)
{
    struct contender *c = p;
    ng_tstate *ts = NULL;
    int err = create_attached(c->in, &ts);
    while (err == NG_OK && !ng_atomic_load(&c->stop, NG_SEQ_CST)) {
        err = ng_mutex_lock(c->m);
        if (err != NG_OK)
            break;
        for (int i = 0; i < 50; i++)
            ng_cpu_relax();
        ng_mutex_unlock(c->m);
        err = ng_tstate_checkpoint(ts);
        ng_atomic_fetch_add(&c->rounds, 1, NG_SEQ_CST);
    }
    c->result = release_keeping_error(ts, err);
    return NULL;
}

TEST(stw_r9_no_hang_with_mutex_handoffs)
{
    INTERP_SCENE(in);
    ng_mutex m = NG_MUTEX_INIT;
    int64_t old_handoff = ng_mutex_set_handoff_ns(0);
    struct contender c[R9_THREADS];
    for (int i = 0; i < R9_THREADS; i++) {
        c[i] = (struct contender){.in = in, .m = &m};
        c[i].thread = spawn_thread(contend, &c[i]);
    }
    long cycles = scaled(SANITIZED ? 300 : 1000);
    uint64_t rounds_before = 0;
    for (int i = 0; i < R9_THREADS; i++)
        CHECK(wait_past(&c[i].rounds, 0));
    for (int i = 0; i < R9_THREADS; i++)
        rounds_before += ng_atomic_load(&c[i].rounds, NG_SEQ_CST);
    for (long k = 0; k < cycles; k++) {
        REQUIRE(CHECK_STATUS(ng_stop_the_world(in, NULL), NG_OK));
        REQUIRE(CHECK_STATUS(ng_start_the_world(in), NG_OK));
        sleep_us(20); /* let the contenders run and hand the mutex over */
    }
    STOP_AND_JOIN(c, R9_THREADS);
    uint64_t rounds_after = 0;
    for (int i = 0; i < R9_THREADS; i++)
        rounds_after += c[i].rounds;
    CHECK_GT(rounds_after, rounds_before);
    ng_mutex_set_handoff_ns(old_handoff);
    CHECK_EQ(stats_of(in).stops, (uint64_t)cycles);
    CHECK_STATUS(ng_interp_delete(in), NG_OK);
}

/* R16: states created and released in a loop by 32 threads while another thread stops the
 * world every 100 us; the QSBR slot space starts at 8 slots, so it grows meanwhile. */
#define R16_THREADS 32

struct creator {
    ng_interp *in;
    long iterations;
    int *ready;        /* shared: threads holding their first state */
    uint64_t *pauses;  /* the pauser's count: creation goes on until 20 pauses overlapped */
    int result;
    pthread_t thread;
};

static void *create_destroy_loop(void *p)
{
    struct creator *c = p;
    /* All 32 hold a state at the same time once, so the slot space must grow past 8 (while
     * the pauses go on). */
    ng_tstate *held = NULL;
    int err = ng_tstate_new(c->in, &held);
    ng_atomic_fetch_add(c->ready, 1, NG_SEQ_CST);
    SPIN_UNTIL(ng_atomic_load(c->ready, NG_SEQ_CST) == R16_THREADS);
    uint64_t first_pause = ng_atomic_load(c->pauses, NG_SEQ_CST);
    for (long i = 0; err == NG_OK && (i < c->iterations ||
                                      ng_atomic_load(c->pauses, NG_SEQ_CST) < first_pause + 20);
         i++) {
        ng_tstate *ts = NULL;
        err = create_attached(c->in, &ts);
        if (err == NG_OK)
            err = ng_tstate_checkpoint(ts);
        err = release_keeping_error(ts, err);
    }
    c->result = release_keeping_error(held, err);
    return NULL;
}

struct pauser {
    ng_interp *in;
    int stop;
    uint64_t pauses;
    int result;
    pthread_t thread;
};

static void *pause_repeatedly(void *p)
{
    struct pauser *s = p;
    int err = NG_OK;
    while (err == NG_OK && !ng_atomic_load(&s->stop, NG_SEQ_CST)) {
        err = ng_stop_the_world(s->in, NULL);
        if (err == NG_OK)
            err = ng_start_the_world(s->in);
        ng_atomic_fetch_add(&s->pauses, 1, NG_SEQ_CST);
        sleep_us(100);
    }
    s->result = err;
    return NULL;
}

TEST(stw_r16_creation_and_pauses_do_not_deadlock)
{
    INTERP_SCENE(in);
    CHECK_EQ(stats_of(in).qsbr.capacity, 0);
    struct pauser s = {.in = in};
    s.thread = spawn_thread(pause_repeatedly, &s);
    struct creator c[R16_THREADS];
    int ready = 0;
    for (int i = 0; i < R16_THREADS; i++) {
        c[i] = (struct creator){
            .in = in,
            .iterations = scaled(SANITIZED ? 40 : 200),
            .ready = &ready,
            .pauses = &s.pauses,
        };
        c[i].thread = spawn_thread(create_destroy_loop, &c[i]);
    }
    JOIN_ALL(c, R16_THREADS);
    STOP_AND_JOIN(&s, 1);
    CHECK_GE(s.pauses, 20);
    ng_interp_stats st = stats_of(in);
    CHECK_GT(st.qsbr.capacity, NG_QSBR_FIRST_SEGMENT); /* it grew */
    CHECK_EQ(st.qsbr.registered, 0);
    CHECK_EQ(st.threads, 0);
    CHECK_STATUS(ng_interp_delete(in), NG_OK);
}

/* ==== GIL ================================================================================== */

#define GIL_WORKERS 3

struct gil_worker {
    ng_interp *in;
    int *in_section; /* shared: 1 while some worker is inside */
    int stop;
    uint64_t iterations;
    uint64_t overlaps;
    uint64_t not_holding;
    int result;
    pthread_t thread;
};

static void *gil_worker_main(void *p)
{
    struct gil_worker *w = p;
    ng_tstate *ts = NULL;
    int err = create_attached(w->in, &ts);
    while (err == NG_OK && !ng_atomic_load(&w->stop, NG_SEQ_CST)) {
        if (ng_atomic_exchange(w->in_section, 1, NG_SEQ_CST) != 0)
            w->overlaps++;
        if (ng_gil_enabled(w->in) && !ng_atomic_load(&ts->holds_gil, NG_RELAXED))
            w->not_holding++;
        for (int i = 0; i < 200; i++)
            ng_cpu_relax();
        ng_atomic_store(w->in_section, 0, NG_SEQ_CST);
        ng_atomic_fetch_add(&w->iterations, 1, NG_SEQ_CST);
        err = ng_tstate_checkpoint(ts);
    }
    w->result = release_keeping_error(ts, err);
    return NULL;
}

static bool all_progressed(struct gil_worker *w, uint64_t *since)
{
    for (int i = 0; i < GIL_WORKERS; i++)
        if (ng_atomic_load(&w[i].iterations, NG_SEQ_CST) <= since[i] + 5)
            return false;
    return true;
}

TEST(gil_serialises_attached_threads_and_hands_over)
{
    TSTATE_SCENE(in, me);
    CHECK(!ng_gil_enabled(in));
    CHECK_STATUS(ng_gil_enable(me), NG_OK);
    CHECK(ng_gil_enabled(in));
    CHECK_EQ(me->holds_gil, 1);
    CHECK_PTR_EQ(in->gil.holder, me);
    CHECK(ng_mutex_is_locked(&in->gil.lock));
    CHECK_EQ(stats_of(in).gil_enabled, 1);
    /* A second request only counts. */
    CHECK_STATUS(ng_gil_enable(me), NG_OK);
    CHECK_EQ(in->gil.enabled, 2);

    int in_section = 0;
    struct gil_worker w[GIL_WORKERS];
    for (int i = 0; i < GIL_WORKERS; i++) {
        w[i] = (struct gil_worker){.in = in, .in_section = &in_section};
        w[i].thread = spawn_thread(gil_worker_main, &w[i]);
    }
    /* We hold the GIL: nobody gets in. */
    sleep_ms(20);
    for (int i = 0; i < GIL_WORKERS; i++)
        CHECK_EQ(ng_atomic_load(&w[i].iterations, NG_SEQ_CST), 0);
    /* Detached we hold nothing: they take turns, and since none of them ever detaches, each
     * turn is a yield asked for by a waiter (NG_PENDING_GIL_DROP). */
    uint64_t zero[GIL_WORKERS] = {0};
    uint64_t switches = ng_atomic_load(&in->gil.switches, NG_RELAXED);
    CHECK_STATUS(ng_tstate_detach(me), NG_OK);
    CHECK_EQ(me->holds_gil, 0);
    CHECK(WAIT_UNTIL(all_progressed(w, zero), PATIENCE_MS));
    CHECK_GT(ng_atomic_load(&in->gil.switches, NG_RELAXED), switches + GIL_WORKERS - 1);

    /* Back in (we wait for the GIL like anyone) and switch it off. */
    CHECK_STATUS(ng_tstate_attach(me), NG_OK);
    CHECK_EQ(me->holds_gil, 1);
    /* Holding the GIL, we see everything the workers did under it: never two inside. */
    for (int i = 0; i < GIL_WORKERS; i++)
        CHECK_EQ(w[i].overlaps, 0);
    CHECK_STATUS(ng_gil_disable(me), NG_OK);
    CHECK_EQ(me->holds_gil, 1); /* one request left */
    CHECK_STATUS(ng_gil_disable(me), NG_OK);
    CHECK(!ng_gil_enabled(in));
    CHECK_EQ(me->holds_gil, 0);
    CHECK_STATUS(ng_gil_disable(me), NG_ESTATE);
    /* Parallel again: while we stay attached, the workers run, and sooner or later two of
     * them are inside at once (two CPUs here; with one they would still interleave). */
    uint64_t since[GIL_WORKERS];
    for (int i = 0; i < GIL_WORKERS; i++)
        since[i] = ng_atomic_load(&w[i].iterations, NG_SEQ_CST);
    CHECK(WAIT_UNTIL(all_progressed(w, since), PATIENCE_MS));
    CHECK_STATUS(ng_tstate_checkpoint(me), NG_OK);

    STOP_AND_JOIN(w, GIL_WORKERS);
    for (int i = 0; i < GIL_WORKERS; i++)
        CHECK_EQ(w[i].not_holding, 0);
    end_scene(in, me);
}

/* Without the GIL, two attached threads can be inside at the same time: each waits inside
 * until it has seen the other inside (with the GIL on this would never end). */
struct meeting {
    ng_interp *in;
    int inside;
    int met[2];
    int result[2];
};

struct meeting_arg {
    struct meeting *m;
    int index;
};

static void *meet(void *p)
{
    struct meeting_arg *a = p;
    struct meeting *m = a->m;
    ng_tstate *ts = NULL;
    int err = create_attached(m->in, &ts);
    if (err == NG_OK) {
        ng_atomic_fetch_add(&m->inside, 1, NG_SEQ_CST);
        int64_t deadline = now_ns() + (int64_t)PATIENCE_MS * 1000000;
        while (ng_atomic_load(&m->inside, NG_SEQ_CST) < 2 && now_ns() < deadline) {
            err = ng_tstate_checkpoint(ts);
            sched_yield();
        }
        m->met[a->index] = ng_atomic_load(&m->inside, NG_SEQ_CST) == 2;
    }
    m->result[a->index] = release_keeping_error(ts, err);
    return NULL;
}

TEST(gil_off_lets_attached_threads_run_together)
{
    /* On and off again first, so the check is about "after disable". */
    TSTATE_SCENE(in, me);
    CHECK_STATUS(ng_gil_enable(me), NG_OK);
    CHECK_STATUS(ng_gil_disable(me), NG_OK);
    CHECK_STATUS(ng_tstate_release(me), NG_OK);

    struct meeting m = {.in = in};
    struct meeting_arg a0 = {&m, 0}, a1 = {&m, 1};
    pthread_t t0 = spawn_thread(meet, &a0), t1 = spawn_thread(meet, &a1);
    join_thread(t0);
    join_thread(t1);
    CHECK_EQ(m.met[0], 1);
    CHECK_EQ(m.met[1], 1);
    CHECK_STATUS(m.result[0], NG_OK);
    CHECK_STATUS(m.result[1], NG_OK);
    CHECK_STATUS(ng_interp_delete(in), NG_OK);
}

TEST(gil_permanent_cannot_be_disabled)
{
    TSTATE_SCENE(in, me);
    CHECK_STATUS(ng_gil_enable(me), NG_OK);
    CHECK_STATUS(ng_gil_enable_permanent(me), NG_OK);
    CHECK_EQ(in->gil.enabled, INT32_MAX);
    CHECK_STATUS(ng_gil_enable(me), NG_OK);
    CHECK_EQ(in->gil.enabled, INT32_MAX);
    CHECK_STATUS(ng_gil_disable(me), NG_ESTATE);
    CHECK(ng_gil_enabled(in));
    /* Detach and re-attach take and give it. */
    CHECK_STATUS(ng_tstate_detach(me), NG_OK);
    CHECK(!ng_mutex_is_locked(&in->gil.lock));
    CHECK_STATUS(ng_tstate_attach(me), NG_OK);
    CHECK(ng_mutex_is_locked(&in->gil.lock));
    CHECK_STATUS(ng_tstate_release(me), NG_OK);
    CHECK(!ng_mutex_is_locked(&in->gil.lock));
    CHECK_STATUS(ng_interp_delete(in), NG_OK);
}

/* Spec 5.3 step e: the GIL is switched on (a whole stop-the-world) between an attach's no-op
 * GIL take and its state CAS. The attach must notice and take the GIL before it counts as
 * attached. A test hook holds the attaching thread in that window. */
static uint64_t window_thread;
static int window_reached, window_release;

static void hold_in_attach_window(ng_tstate *ts)
{
    if (ng_thread_id() != ng_atomic_load(&window_thread, NG_SEQ_CST) ||
        ng_atomic_load(&window_reached, NG_SEQ_CST))
        return; /* only the first pass of that thread */
    ng_atomic_store(&window_reached, 1, NG_SEQ_CST);
    SPIN_UNTIL(ng_atomic_load(&window_release, NG_SEQ_CST));
}

struct window_attacher {
    ng_interp *in;
    ng_tstate *ts;
    int attached;
    uint32_t holds_gil_when_attached;
    int result;
};

static void *attach_through_window(void *p)
{
    struct window_attacher *a = p;
    ng_tstate *ts = NULL;
    int err = ng_tstate_new(a->in, &ts);
    ng_atomic_store(&a->ts, ts, NG_SEQ_CST);
    ng_atomic_store(&window_thread, ng_thread_id(), NG_SEQ_CST);
    if (err == NG_OK)
        err = ng_tstate_attach(ts);
    if (err == NG_OK)
        a->holds_gil_when_attached = ts->holds_gil;
    ng_atomic_store(&a->attached, 1, NG_SEQ_CST);
    a->result = release_keeping_error(ts, err);
    return NULL;
}

TEST(gil_enabled_during_an_attach_is_taken_by_it)
{
    TSTATE_SCENE(in, me);
    ng_atomic_store(&window_reached, 0, NG_SEQ_CST);
    ng_atomic_store(&window_release, 0, NG_SEQ_CST);
    ng_test_attach_window_hook = hold_in_attach_window;
    struct window_attacher a = {.in = in};
    pthread_t t = spawn_thread(attach_through_window, &a);
    CHECK(WAIT_UNTIL(ng_atomic_load(&window_reached, NG_SEQ_CST), PATIENCE_MS));

    /* It passed the GIL take while the GIL was off; now switch it on and hold it. */
    CHECK_STATUS(ng_gil_enable(me), NG_OK);
    CHECK_EQ(me->holds_gil, 1);
    ng_atomic_store(&window_release, 1, NG_SEQ_CST);
    /* It must now wait for the GIL, not run attached beside us. */
    sleep_ms(20);
    CHECK_EQ(ng_atomic_load(&a.attached, NG_SEQ_CST), 0);
    CHECK_NE(state_of(a.ts), NG_TSTATE_ATTACHED);
    CHECK_STATUS(ng_tstate_detach(me), NG_OK);
    join_thread(t);
    ng_test_attach_window_hook = NULL;
    CHECK_STATUS(a.result, NG_OK);
    CHECK_EQ(a.holds_gil_when_attached, 1);
    CHECK_STATUS(ng_tstate_attach(me), NG_OK);
    CHECK_STATUS(ng_gil_disable(me), NG_OK);
    end_scene(in, me);
}

/* R1: with the GIL on, B releases its (attached) state while A holds the QSBR mutex and then
 * wants the GIL. B must have released the GIL before it waits for the QSBR mutex. */
struct r1_releaser {
    ng_interp *in;
    ng_tstate *ts;
    int go;
    int done;
    int result;
};

static void *r1_release_attached(void *p)
{
    struct r1_releaser *b = p;
    int err = create_attached(b->in, &b->ts);
    ng_atomic_store(&b->go, 1, NG_SEQ_CST);
    while (err == NG_OK && ng_atomic_load(&b->go, NG_SEQ_CST) != 2)
        sched_yield(); /* attached, holding the GIL */
    if (err == NG_OK)
        err = ng_tstate_release(b->ts);
    ng_atomic_store(&b->done, 1, NG_SEQ_CST);
    b->result = err;
    return NULL;
}

TEST(gil_r1_release_drops_the_gil_before_leaving_qsbr)
{
    TSTATE_SCENE(in, a);
    CHECK_STATUS(ng_gil_enable(a), NG_OK);
    CHECK_STATUS(ng_tstate_detach(a), NG_OK);

    struct r1_releaser b = {.in = in};
    pthread_t t = spawn_thread(r1_release_attached, &b);
    CHECK(WAIT_UNTIL(ng_atomic_load(&b.go, NG_SEQ_CST) == 1, PATIENCE_MS));
    REQUIRE(b.ts != NULL);
    CHECK_EQ(ng_atomic_load(&b.ts->holds_gil, NG_SEQ_CST), 1);

    /* A: hold the QSBR mutex, let B release, wait until B is stuck on the mutex, then take
     * the GIL. A deadlock here ends the run through the watchdog. */
    ng_mutex_lock(&in->qsbr.mutex);
    ng_atomic_store(&b.go, 2, NG_SEQ_CST);
    CHECK(WAIT_UNTIL(ng_parking_lot_waiters(&in->qsbr.mutex.bits) == 1, PATIENCE_MS));
    CHECK_STATUS(ng_tstate_attach(a), NG_OK);
    CHECK_EQ(a->holds_gil, 1);
    ng_mutex_unlock(&in->qsbr.mutex);
    CHECK(WAIT_UNTIL(ng_atomic_load(&b.done, NG_SEQ_CST), PATIENCE_MS));
    join_thread(t);
    CHECK_STATUS(b.result, NG_OK);
    CHECK_STATUS(ng_gil_disable(a), NG_OK);
    end_scene(in, a);
}

/* R1 stress: with the GIL on, 20 threads keep starting short-lived threads that attach (take
 * the GIL), queue work and exit without releasing (the exit destructor releases). */
#define R1_STARTERS 20

struct short_lived {
    ng_interp *in;
    int result;
};

static void *short_lived_main(void *p)
{
    struct short_lived *s = p;
    ng_tstate *ts = NULL;
    int err = create_attached(s->in, &ts);
    if (err == NG_OK && !ng_atomic_load(&ts->holds_gil, NG_RELAXED))
        err = NG_ESTATE;
    if (err == NG_OK)
        err = ng_free_delayed(ts, malloc(32), 32);
    if (err == NG_OK)
        err = ng_tstate_checkpoint(ts);
    s->result = err;
    return NULL;
}

struct starter {
    ng_interp *in;
    long threads;
    int failures;
};

static void *start_short_lived(void *p)
{
    struct starter *s = p;
    for (long i = 0; i < s->threads; i++) {
        struct short_lived sl = {.in = s->in};
        join_thread(spawn_thread(short_lived_main, &sl));
        s->failures += sl.result != NG_OK;
    }
    return NULL;
}

TEST(gil_r1_stress_thread_churn_with_the_gil_on)
{
    TSTATE_SCENE(in, me);
    CHECK_STATUS(ng_gil_enable(me), NG_OK);
    CHECK_STATUS(ng_tstate_detach(me), NG_OK);

    struct starter s[R1_STARTERS];
    pthread_t t[R1_STARTERS];
    for (int i = 0; i < R1_STARTERS; i++) {
        s[i] = (struct starter){.in = in, .threads = scaled(SANITIZED ? 10 : 50)};
        t[i] = spawn_thread(start_short_lived, &s[i]);
    }
    for (int i = 0; i < R1_STARTERS; i++) {
        join_thread(t[i]);
        CHECK_EQ(s[i].failures, 0);
    }
    CHECK_STATUS(ng_tstate_attach(me), NG_OK);
    CHECK_STATUS(ng_qsbr_barrier(me), NG_OK);
    ng_interp_stats st = stats_of(in);
    CHECK_EQ(st.threads, 1);
    CHECK_EQ(st.qsbr.registered, 1);
    CHECK_EQ(st.delayed_items, 0);
    CHECK_STATUS(ng_gil_disable(me), NG_OK);
    end_scene(in, me);
}

/* R4: the words other threads write are separate from holds_gil. */
TEST(gil_r4_words_written_by_others_are_separate)
{
    /* Each its own naturally aligned word, none overlapping another. */
    CHECK_EQ(offsetof(ng_tstate, state) % sizeof(uint32_t), 0);
    CHECK_EQ(offsetof(ng_tstate, holds_gil) % sizeof(uint32_t), 0);
    CHECK_EQ(offsetof(ng_tstate, pending) % sizeof(uintptr_t), 0);
    CHECK_GE(offsetof(ng_tstate, holds_gil), offsetof(ng_tstate, state) + sizeof(uint32_t));
    CHECK_GE(offsetof(ng_tstate, pending), offsetof(ng_tstate, holds_gil) + sizeof(uint32_t));
    CHECK_GE(offsetof(ng_tstate, magic), offsetof(ng_tstate, pending) + sizeof(uintptr_t));
    CHECK_EQ(sizeof(((ng_tstate *)0)->state), sizeof(uint32_t));
    CHECK_EQ(sizeof(((ng_tstate *)0)->holds_gil), sizeof(uint32_t));
    CHECK_EQ(sizeof(((ng_tstate *)0)->pending), sizeof(uintptr_t));
}

/* R4 under TSan: A takes and drops the GIL (holds_gil toggles) while B sets and clears other
 * pending bits on A's state and reads its state word. holds_gil must always match the truth. */
struct r4_toggler {
    ng_interp *in;
    ng_tstate *ts;
    long rounds;
    int ready;
    int done;
    uint64_t wrong;
    int result;
};

static void *r4_toggle(void *p)
{
    struct r4_toggler *a = p;
    int err = create_attached(a->in, &a->ts);
    if (err == NG_OK)
        err = ng_gil_enable(a->ts);
    ng_atomic_store(&a->ready, 1, NG_SEQ_CST);
    for (long i = 0; err == NG_OK && i < a->rounds; i++) {
        if (a->ts->holds_gil != 1 || a->in->gil.holder != a->ts ||
            !ng_mutex_is_locked(&a->in->gil.lock))
            a->wrong++;
        err = ng_tstate_detach(a->ts);
        if (err == NG_OK && a->ts->holds_gil != 0)
            a->wrong++;
        if (err == NG_OK)
            err = ng_tstate_attach(a->ts);
    }
    if (err == NG_OK)
        err = ng_gil_disable(a->ts);
    a->result = release_keeping_error(a->ts, err);
    ng_atomic_store(&a->done, 1, NG_SEQ_CST);
    return NULL;
}

TEST(gil_r4_pending_bits_and_holds_gil_do_not_race)
{
    INTERP_SCENE(in);
    struct r4_toggler a = {.in = in, .rounds = scaled(SANITIZED ? 20000 : 200000)};
    pthread_t t = spawn_thread(r4_toggle, &a);
    CHECK(WAIT_UNTIL(ng_atomic_load(&a.ready, NG_SEQ_CST), PATIENCE_MS));
    ng_tstate *ts = a.ts;
    uint64_t attached_seen = 0;
    while (!ng_atomic_load(&a.done, NG_SEQ_CST) && ts != NULL) {
        ng_tstate_set_pending(ts, NG_PENDING_CALLS | NG_PENDING_MERGE);
        attached_seen += state_of(ts) == NG_TSTATE_ATTACHED;
        (void)ng_atomic_load(&ts->holds_gil, NG_RELAXED);
        ng_tstate_clear_pending(ts, NG_PENDING_CALLS | NG_PENDING_MERGE);
    }
    join_thread(t);
    CHECK_STATUS(a.result, NG_OK);
    CHECK_EQ(a.wrong, 0);
    CHECK_STATUS(ng_interp_delete(in), NG_OK);
}
