/* The rest of the lock family: event, once flag, readers-writer mutex, sequence lock and
 * recursive mutex (spec 4.3-4.7 and CPython's test_lock_once / test_lock_rwlock /
 * test_lock_recursive). */
#define _GNU_SOURCE

#include "harness.h"

/* ==== Event ================================================================================= */

static uint8_t event_byte(ng_event *e) { return ng_atomic_load(&e->v, NG_SEQ_CST); }

TEST(event_invalid_arguments)
{
    CHECK_STATUS(ng_event_notify(NULL), NG_EINVAL);
    CHECK(!ng_event_is_set(NULL));
    CHECK_STATUS(ng_event_wait(NULL), NG_EINVAL);
    CHECK_STATUS(ng_event_wait_timed(NULL, 0, 0), NG_EINVAL);
    CHECK_STATUS(ng_event_wait_timed(NULL, -1, 0), NG_EINVAL);
}

TEST(event_notify_before_wait)
{
    ng_event e = NG_EVENT_INIT;
    CHECK(!ng_event_is_set(&e));
    CHECK_STATUS(ng_event_notify(&e), NG_OK);
    CHECK(ng_event_is_set(&e));
    CHECK_EQ(event_byte(&e), NG_LOCKED);
    int64_t start = now_ns();
    CHECK_STATUS(ng_event_wait(&e), NG_OK);
    CHECK_STATUS(ng_event_wait_timed(&e, 0, 0), NG_OK);
    CHECK_STATUS(ng_event_wait_timed(&e, 10 * NG_NS_PER_SEC, 0), NG_OK);
    CHECK_LT(elapsed_ms_since(start), 100); /* none of them slept */
}

TEST(event_notify_is_idempotent)
{
    ng_event e = NG_EVENT_INIT;
    CHECK_STATUS(ng_event_notify(&e), NG_OK);
    CHECK_STATUS(ng_event_notify(&e), NG_OK);
    CHECK_STATUS(ng_event_notify(&e), NG_OK);
    CHECK_EQ(event_byte(&e), NG_LOCKED);
    CHECK(ng_event_is_set(&e));
    CHECK_STATUS(ng_event_wait_timed(&e, 0, 0), NG_OK);
}

TEST(event_wait_timed_times_out)
{
    ng_event e = NG_EVENT_INIT;
    int64_t start = now_ns();
    CHECK_STATUS(ng_event_wait_timed(&e, 0, 0), NG_TIMEOUT);
    CHECK_LT(elapsed_ms_since(start), 100);

    start = now_ns();
    CHECK_STATUS(ng_event_wait_timed(&e, 10 * NG_NS_PER_MS, 0), NG_TIMEOUT);
    int64_t waited = now_ns() - start;
    CHECK_GE(waited, 10 * NG_NS_PER_MS);
    CHECK_LT(waited, 510 * NG_NS_PER_MS);
    CHECK(!ng_event_is_set(&e));
    CHECK_EQ(ng_parking_lot_waiters(&e.v), 0);
    /* A left-over waiter bit must not confuse a later notify. */
    CHECK_STATUS(ng_event_notify(&e), NG_OK);
    CHECK(ng_event_is_set(&e));
    CHECK_STATUS(ng_event_wait_timed(&e, 0, 0), NG_OK);
}

struct event_scene {
    ng_event e;
    int payload; /* plain: the event's release/acquire must publish it */
    int woken;
    int seen_payload[3];
    int results[3];
};

struct event_waiter_arg {
    struct event_scene *scene;
    int index;
};

static void *event_waiter_main(void *p)
{
    struct event_waiter_arg *arg = p;
    struct event_scene *s = arg->scene;
    int rc = ng_event_wait(&s->e);
    s->results[arg->index] = rc;
    s->seen_payload[arg->index] = s->payload;
    ng_atomic_fetch_add(&s->woken, 1, NG_SEQ_CST);
    return NULL;
}

TEST(event_notify_wakes_all_waiters)
{
    enum { N = 3 };
    struct event_scene s = {0};
    struct event_waiter_arg args[N];
    pthread_t t[N];
    for (int i = 0; i < N; i++) {
        args[i] = (struct event_waiter_arg){&s, i};
        t[i] = spawn_thread(event_waiter_main, &args[i]);
    }
    CHECK(WAIT_UNTIL(ng_parking_lot_waiters(&s.e.v) == N, PATIENCE_MS));
    CHECK_EQ(event_byte(&s.e), NG_HAS_PARKED); /* not set, waiters */
    CHECK_EQ(ng_atomic_load(&s.woken, NG_SEQ_CST), 0);
    s.payload = 1234;
    CHECK_STATUS(ng_event_notify(&s.e), NG_OK); /* one notify for all of them */
    CHECK(WAIT_UNTIL(ng_atomic_load(&s.woken, NG_SEQ_CST) == N, PATIENCE_MS));
    for (int i = 0; i < N; i++) {
        join_thread(t[i]);
        CHECK_STATUS(s.results[i], NG_OK);
        CHECK_EQ(s.seen_payload[i], 1234);
    }
    CHECK_EQ(event_byte(&s.e), NG_LOCKED);
    CHECK_EQ(ng_parking_lot_waiters(&s.e.v), 0);
}

TEST(event_at_fork_reinit)
{
    ng_event e = {NG_HAS_PARKED};
    ng_event_at_fork_reinit(&e); /* drops the dead waiters' bit */
    CHECK_EQ(event_byte(&e), 0);
    e.v = NG_LOCKED;
    ng_event_at_fork_reinit(&e); /* keeps "set" */
    CHECK_EQ(event_byte(&e), NG_LOCKED);
}

/* ==== Once ================================================================================== */

struct flaky_init {
    int calls;
    int fail_first; /* fail this many times, then succeed */
    int failure_code;
};

static int flaky_init_fn(void *p)
{
    struct flaky_init *fi = p;
    fi->calls++;
    return fi->calls <= fi->fail_first ? fi->failure_code : 0;
}

TEST(once_retries_until_success)
{
    /* CPython's test_lock_once. */
    ng_once o = NG_ONCE_INIT;
    struct flaky_init fi = {.fail_first = 4, .failure_code = -1};
    for (int call = 1; call <= 10; call++) {
        int rc = ng_once_call(&o, flaky_init_fn, &fi);
        if (call <= 4)
            CHECK_EQ(rc, -1);
        else
            CHECK_EQ(rc, 0);
        CHECK_EQ(ng_once_is_done(&o), call >= 5);
    }
    CHECK_EQ(fi.calls, 5);
    CHECK_EQ(ng_atomic_load(&o.v, NG_SEQ_CST), NG_ONCE_DONE);

    /* The initialiser's own failure code comes back unchanged. */
    ng_once o2 = NG_ONCE_INIT;
    struct flaky_init fi2 = {.fail_first = 1, .failure_code = 7};
    CHECK_EQ(ng_once_call(&o2, flaky_init_fn, &fi2), 7);
    CHECK_EQ(ng_atomic_load(&o2.v, NG_SEQ_CST), 0); /* back to "not started" */
    CHECK_EQ(ng_once_call(&o2, flaky_init_fn, &fi2), 0);
    CHECK_EQ(fi2.calls, 2);
}

struct slow_once_scene {
    ng_once once;
    int start;
    int runs;
    int value; /* plain: written by the initialiser, read by every caller afterwards */
    int results[8];
    int seen[8];
};

struct slow_once_arg {
    struct slow_once_scene *scene;
    int index;
};

static int slow_init_fn(void *p)
{
    struct slow_once_scene *s = p;
    ng_atomic_fetch_add(&s->runs, 1, NG_SEQ_CST);
    sleep_ms(5); /* long enough that the other callers arrive and wait */
    s->value = 42;
    return 0;
}

static void *slow_once_caller(void *p)
{
    struct slow_once_arg *arg = p;
    struct slow_once_scene *s = arg->scene;
    SPIN_UNTIL(ng_atomic_load(&s->start, NG_ACQUIRE));
    s->results[arg->index] = ng_once_call(&s->once, slow_init_fn, s);
    s->seen[arg->index] = s->value;
    return NULL;
}

TEST(once_concurrent_callers_run_it_once)
{
    enum { N = 8 };
    struct slow_once_scene s = {0};
    struct slow_once_arg args[N];
    pthread_t t[N];
    for (int i = 0; i < N; i++) {
        args[i] = (struct slow_once_arg){&s, i};
        t[i] = spawn_thread(slow_once_caller, &args[i]);
    }
    ng_atomic_store(&s.start, 1, NG_RELEASE);
    for (int i = 0; i < N; i++)
        join_thread(t[i]);
    CHECK_EQ(s.runs, 1);
    for (int i = 0; i < N; i++) {
        CHECK_EQ(s.results[i], 0);
        CHECK_EQ(s.seen[i], 42);
    }
    CHECK(ng_once_is_done(&s.once));
    CHECK_EQ(ng_parking_lot_waiters(&s.once.v), 0);
}

TEST(once_begin_end_pairing)
{
    ng_once o = NG_ONCE_INIT;
    /* Nothing running: an end is misuse, and changes nothing. */
    CHECK_STATUS(ng_once_end(&o, 1), NG_ENOTLOCKED);
    CHECK_EQ(ng_atomic_load(&o.v, NG_SEQ_CST), 0);

    /* A failed initialisation lets the next begin own it again. */
    CHECK_EQ(ng_once_begin(&o), 1);
    CHECK_EQ(ng_atomic_load(&o.v, NG_SEQ_CST), NG_LOCKED);
    CHECK_STATUS(ng_once_end(&o, 0), NG_OK);
    CHECK_EQ(ng_atomic_load(&o.v, NG_SEQ_CST), 0);
    CHECK(!ng_once_is_done(&o));

    /* A successful one is final. */
    CHECK_EQ(ng_once_begin(&o), 1);
    CHECK_STATUS(ng_once_end(&o, 1), NG_OK);
    CHECK(ng_once_is_done(&o));
    CHECK_EQ(ng_once_begin(&o), 0);
    CHECK_STATUS(ng_once_end(&o, 1), NG_ENOTLOCKED);
    CHECK_STATUS(ng_once_end(&o, 0), NG_ENOTLOCKED);
    CHECK(ng_once_is_done(&o)); /* the misplaced end did not undo it */
}

struct once_begin_arg {
    ng_once *once;
    int result;
    int done;
};

static void *once_begin_main(void *p)
{
    struct once_begin_arg *arg = p;
    int rc = ng_once_begin(arg->once);
    ng_atomic_store(&arg->result, rc, NG_SEQ_CST);
    ng_atomic_store(&arg->done, 1, NG_SEQ_CST);
    return NULL;
}

TEST(once_begin_waits_for_running_initialiser)
{
    ng_once o = NG_ONCE_INIT;
    CHECK_EQ(ng_once_begin(&o), 1);

    /* A second caller waits while we "initialise"; our failure hands it the job. */
    struct once_begin_arg second = {.once = &o};
    pthread_t t = spawn_thread(once_begin_main, &second);
    CHECK(WAIT_UNTIL(ng_parking_lot_waiters(&o.v) == 1, PATIENCE_MS));
    CHECK_EQ(ng_atomic_load(&o.v, NG_SEQ_CST), NG_LOCKED | NG_HAS_PARKED);
    CHECK(!ng_atomic_load(&second.done, NG_SEQ_CST));
    CHECK_STATUS(ng_once_end(&o, 0), NG_OK);
    join_thread(t);
    CHECK_EQ(second.result, 1);

    /* Now it runs the initialiser (on our behalf here); a third caller waits and learns
     * that it succeeded. */
    struct once_begin_arg third = {.once = &o};
    t = spawn_thread(once_begin_main, &third);
    CHECK(WAIT_UNTIL(ng_parking_lot_waiters(&o.v) == 1, PATIENCE_MS));
    CHECK_STATUS(ng_once_end(&o, 1), NG_OK);
    join_thread(t);
    CHECK_EQ(third.result, 0);
    CHECK(ng_once_is_done(&o));
}

TEST(once_invalid_arguments)
{
    ng_once o = NG_ONCE_INIT;
    struct flaky_init fi = {0};
    CHECK_STATUS(ng_once_call(NULL, flaky_init_fn, &fi), NG_EINVAL);
    CHECK_STATUS(ng_once_call(&o, NULL, &fi), NG_EINVAL);
    CHECK_STATUS(ng_once_begin(NULL), NG_EINVAL);
    CHECK_STATUS(ng_once_end(NULL, 1), NG_EINVAL);
    CHECK_EQ(fi.calls, 0);
    CHECK_EQ(ng_atomic_load(&o.v, NG_SEQ_CST), 0);
}

TEST(once_after_fork_resets_running_flag)
{
    ng_once o = {NG_LOCKED};
    CHECK_EQ(ng_once_after_fork(&o), 1);
    CHECK_EQ(o.v, 0);
    o.v = NG_LOCKED | NG_HAS_PARKED;
    CHECK_EQ(ng_once_after_fork(&o), 1);
    CHECK_EQ(o.v, 0);
    o.v = NG_ONCE_DONE;
    CHECK_EQ(ng_once_after_fork(&o), 0);
    CHECK_EQ(o.v, NG_ONCE_DONE);
    o.v = 0;
    CHECK_EQ(ng_once_after_fork(&o), 0);
    CHECK_EQ(o.v, 0);
}

/* ==== Readers-writer mutex ================================================================== */

static uintptr_t rw_bits(ng_rwmutex *rw) { return ng_atomic_load(&rw->bits, NG_SEQ_CST); }

/* Polls every 1 ms for up to 2 s, as CPython's test does, and reports the last value seen. */
static bool await_rw_bits(ng_rwmutex *rw, uintptr_t want, const char *step)
{
    if (WAIT_UNTIL(rw_bits(rw) == want, 2000))
        return true;
    harness_fail(__FILE__, __LINE__, "%s: bits stayed %lu, expected %lu", step,
                 (unsigned long)rw_bits(rw), (unsigned long)want);
    return false;
}

struct rw_scene {
    ng_rwmutex rw;
    ng_event step1, step2, step3;
    int errors;
};

static void rw_expect_ok(struct rw_scene *s, int rc)
{
    if (rc != NG_OK)
        ng_atomic_fetch_add(&s->errors, 1, NG_SEQ_CST);
}

static void *rw_scene_reader(void *p)
{
    struct rw_scene *s = p;
    rw_expect_ok(s, ng_rwmutex_rlock(&s->rw));
    ng_event_wait(&s->step1);
    rw_expect_ok(s, ng_rwmutex_runlock(&s->rw));
    /* Straight back in: the writer is queued, so this parks behind it. */
    rw_expect_ok(s, ng_rwmutex_rlock(&s->rw));
    ng_event_wait(&s->step3);
    rw_expect_ok(s, ng_rwmutex_runlock(&s->rw));
    return NULL;
}

static void *rw_scene_writer(void *p)
{
    struct rw_scene *s = p;
    rw_expect_ok(s, ng_rwmutex_lock(&s->rw));
    ng_event_wait(&s->step2);
    rw_expect_ok(s, ng_rwmutex_unlock(&s->rw));
    return NULL;
}

TEST(rwmutex_bit_sequence)
{
    /* CPython's test_lock_rwlock: 1, 0, 8, 10, 3, 8, 0. */
    static struct rw_scene s;
    s = (struct rw_scene){0};
    CHECK_STATUS(ng_rwmutex_lock(&s.rw), NG_OK);
    CHECK_EQ(rw_bits(&s.rw), 1);
    CHECK_STATUS(ng_rwmutex_unlock(&s.rw), NG_OK);
    CHECK_EQ(rw_bits(&s.rw), 0);

    pthread_t r1 = spawn_thread(rw_scene_reader, &s);
    pthread_t r2 = spawn_thread(rw_scene_reader, &s);
    bool ok = await_rw_bits(&s.rw, 8, "two readers");
    pthread_t w = spawn_thread(rw_scene_writer, &s);
    ok = ok && await_rw_bits(&s.rw, 10, "writer parked behind readers");
    ng_event_notify(&s.step1);
    ok = ok && await_rw_bits(&s.rw, 3, "writer holds, readers parked");
    ng_event_notify(&s.step2);
    ok = ok && await_rw_bits(&s.rw, 8, "readers back in");
    ng_event_notify(&s.step3);
    await_rw_bits(&s.rw, 0, "all released");
    /* After a failure some helper may still wait on a later step: release them all. */
    ng_event_notify(&s.step1);
    ng_event_notify(&s.step2);
    ng_event_notify(&s.step3);
    join_thread(r1);
    join_thread(r2);
    join_thread(w);
    CHECK_EQ(s.errors, 0);
    CHECK_EQ(rw_bits(&s.rw), 0);
}

/* A fired cancellation token makes blocked readers and writers give up (without taking the
 * lock) instead of re-parking in a hot loop. */
TEST(rwmutex_waits_end_when_cancelled)
{
    ng_rwmutex rw = NG_RWMUTEX_INIT;
    CHECK_STATUS(ng_rwmutex_lock(&rw), NG_OK);
    ng_cancel token = NG_CANCEL_INIT;
    ng_cancel_fire(&token);
    ng_cancel *previous = ng_cancel_install(&token);
    CHECK_STATUS(ng_rwmutex_rlock(&rw), NG_CANCELLED);
    CHECK_STATUS(ng_rwmutex_lock(&rw), NG_CANCELLED);
    ng_cancel_install(previous);
    /* Still write-locked by us; the cancelled calls left only the parked hint behind. */
    CHECK_EQ(rw_bits(&rw) & ~(uintptr_t)NG_RWMUTEX_PARKED, NG_WRITE_LOCKED);
    CHECK_STATUS(ng_rwmutex_unlock(&rw), NG_OK);
    CHECK_EQ(rw_bits(&rw), 0);
}

TEST(rwmutex_misuse_and_invalid_arguments)
{
    ng_rwmutex rw = NG_RWMUTEX_INIT;
    CHECK_STATUS(ng_rwmutex_runlock(&rw), NG_ENOTLOCKED);
    CHECK_STATUS(ng_rwmutex_unlock(&rw), NG_ENOTLOCKED);
    CHECK_EQ(rw_bits(&rw), 0);

    /* Read-held: a write unlock is misuse and changes nothing. */
    CHECK_STATUS(ng_rwmutex_rlock(&rw), NG_OK);
    CHECK_STATUS(ng_rwmutex_unlock(&rw), NG_ENOTLOCKED);
    CHECK_EQ(rw_bits(&rw), 4);
    CHECK_STATUS(ng_rwmutex_runlock(&rw), NG_OK);
    CHECK_STATUS(ng_rwmutex_runlock(&rw), NG_ENOTLOCKED);
    CHECK_EQ(rw_bits(&rw), 0);

    /* Write-held: a read unlock is misuse and changes nothing. */
    CHECK_STATUS(ng_rwmutex_lock(&rw), NG_OK);
    CHECK_STATUS(ng_rwmutex_runlock(&rw), NG_ENOTLOCKED);
    CHECK_EQ(rw_bits(&rw), 1);
    CHECK_STATUS(ng_rwmutex_unlock(&rw), NG_OK);
    CHECK_STATUS(ng_rwmutex_unlock(&rw), NG_ENOTLOCKED);
    CHECK_EQ(rw_bits(&rw), 0);

    /* Parked bit alone: still neither read- nor write-locked. */
    rw.bits = NG_RWMUTEX_PARKED;
    CHECK_STATUS(ng_rwmutex_runlock(&rw), NG_ENOTLOCKED);
    CHECK_STATUS(ng_rwmutex_unlock(&rw), NG_ENOTLOCKED);
    CHECK_EQ(rw_bits(&rw), NG_RWMUTEX_PARKED);

    CHECK_STATUS(ng_rwmutex_rlock(NULL), NG_EINVAL);
    CHECK_STATUS(ng_rwmutex_runlock(NULL), NG_EINVAL);
    CHECK_STATUS(ng_rwmutex_lock(NULL), NG_EINVAL);
    CHECK_STATUS(ng_rwmutex_unlock(NULL), NG_EINVAL);
    CHECK(!ng_rwmutex_tryrlock(NULL));
    CHECK(!ng_rwmutex_trylock(NULL));
}

TEST(rwmutex_trylock_and_tryrlock)
{
    ng_rwmutex rw = NG_RWMUTEX_INIT;
    CHECK(ng_rwmutex_trylock(&rw));
    CHECK_EQ(rw_bits(&rw), 1);
    CHECK(!ng_rwmutex_trylock(&rw));
    CHECK(!ng_rwmutex_tryrlock(&rw));
    CHECK_STATUS(ng_rwmutex_unlock(&rw), NG_OK);

    CHECK(ng_rwmutex_tryrlock(&rw));
    CHECK(ng_rwmutex_tryrlock(&rw));
    CHECK_EQ(rw_bits(&rw), 8);
    CHECK(!ng_rwmutex_trylock(&rw));
    CHECK_STATUS(ng_rwmutex_runlock(&rw), NG_OK);
    CHECK(!ng_rwmutex_trylock(&rw));
    CHECK_STATUS(ng_rwmutex_runlock(&rw), NG_OK);
    CHECK_EQ(rw_bits(&rw), 0);

    CHECK(ng_rwmutex_trylock(&rw));
    CHECK_STATUS(ng_rwmutex_unlock(&rw), NG_OK);
    CHECK_EQ(rw_bits(&rw), 0);
}

struct rw_preference_scene {
    ng_rwmutex rw;
    int writer_in;
    int late_reader_in;
    int release_writer;
};

static void *preference_writer(void *p)
{
    struct rw_preference_scene *s = p;
    ng_rwmutex_lock(&s->rw);
    ng_atomic_store(&s->writer_in, 1, NG_SEQ_CST);
    SPIN_UNTIL(ng_atomic_load(&s->release_writer, NG_SEQ_CST));
    ng_rwmutex_unlock(&s->rw);
    return NULL;
}

static void *preference_late_reader(void *p)
{
    struct rw_preference_scene *s = p;
    ng_rwmutex_rlock(&s->rw);
    /* Writer preference: we may only get in after the queued writer has been and gone. */
    if (!ng_atomic_load(&s->writer_in, NG_SEQ_CST))
        harness_fail(__FILE__, __LINE__, "late reader entered before the waiting writer");
    ng_atomic_store(&s->late_reader_in, 1, NG_SEQ_CST);
    ng_rwmutex_runlock(&s->rw);
    return NULL;
}

TEST(rwmutex_waiting_writer_blocks_new_readers)
{
    static struct rw_preference_scene s;
    s = (struct rw_preference_scene){0};
    CHECK_STATUS(ng_rwmutex_rlock(&s.rw), NG_OK);
    pthread_t w = spawn_thread(preference_writer, &s);
    CHECK(WAIT_UNTIL(rw_bits(&s.rw) == (4 | NG_RWMUTEX_PARKED), PATIENCE_MS));
    /* A reader arriving now must not barge past the parked writer. */
    CHECK(!ng_rwmutex_tryrlock(&s.rw));
    pthread_t r = spawn_thread(preference_late_reader, &s);
    CHECK(WAIT_UNTIL(ng_parking_lot_waiters(&s.rw.bits) == 2, PATIENCE_MS));
    CHECK(!ng_atomic_load(&s.late_reader_in, NG_SEQ_CST));

    CHECK_STATUS(ng_rwmutex_runlock(&s.rw), NG_OK);
    CHECK(WAIT_UNTIL(ng_atomic_load(&s.writer_in, NG_SEQ_CST), PATIENCE_MS));
    sleep_ms(2);
    CHECK(!ng_atomic_load(&s.late_reader_in, NG_SEQ_CST));
    ng_atomic_store(&s.release_writer, 1, NG_SEQ_CST);
    join_thread(w);
    join_thread(r);
    CHECK(ng_atomic_load(&s.late_reader_in, NG_SEQ_CST));
    CHECK_EQ(rw_bits(&s.rw), 0);
}

struct rw_stress {
    ng_rwmutex rw;
    /* Plain fields: the lock is their only protection. A writer updates them one after the
     * other, so a reader inside the lock must never see them differ. */
    long first, second;
    long writes_per_writer;
    int readers_running; /* writers start once both readers run, so they overlap */
    int writers_left;
    long reads;
};

static void *rw_stress_writer(void *p)
{
    struct rw_stress *s = p;
    SPIN_UNTIL(ng_atomic_load(&s->readers_running, NG_SEQ_CST) == 2);
    for (long i = 0; i < s->writes_per_writer; i++) {
        ng_rwmutex_lock(&s->rw);
        s->first++;
        if ((i & 63) == 0)
            sched_yield(); /* widen the half-applied window */
        s->second++;
        ng_rwmutex_unlock(&s->rw);
    }
    ng_atomic_fetch_sub(&s->writers_left, 1, NG_SEQ_CST);
    return NULL;
}

static void *rw_stress_reader(void *p)
{
    struct rw_stress *s = p;
    long reads = 0, torn = 0;
    ng_atomic_fetch_add(&s->readers_running, 1, NG_SEQ_CST);
    while (ng_atomic_load(&s->writers_left, NG_SEQ_CST) > 0) {
        ng_rwmutex_rlock(&s->rw);
        long a = s->first, b = s->second;
        ng_rwmutex_runlock(&s->rw);
        if (a != b && torn++ < 5)
            harness_fail(__FILE__, __LINE__, "reader saw a half-applied update: %ld vs %ld", a,
                         b);
        reads++;
    }
    ng_atomic_fetch_add(&s->reads, reads, NG_SEQ_CST);
    return NULL;
}

TEST(rwmutex_stress_readers_see_whole_updates)
{
    static struct rw_stress s;
    s = (struct rw_stress){.writes_per_writer = scaled(20000), .writers_left = 2};
    pthread_t t[4];
    t[0] = spawn_thread(rw_stress_reader, &s);
    t[1] = spawn_thread(rw_stress_reader, &s);
    t[2] = spawn_thread(rw_stress_writer, &s);
    t[3] = spawn_thread(rw_stress_writer, &s);
    for (int i = 0; i < 4; i++)
        join_thread(t[i]);
    CHECK_EQ(s.first, 2 * s.writes_per_writer); /* writers excluded each other */
    CHECK_EQ(s.second, 2 * s.writes_per_writer);
    CHECK_GT(s.reads, 0);
    CHECK_EQ(rw_bits(&s.rw), 0);
}

TEST(rwmutex_at_fork_reinit)
{
    ng_rwmutex rw = {NG_WRITE_LOCKED | NG_RWMUTEX_PARKED};
    ng_rwmutex_at_fork_reinit(&rw);
    CHECK_EQ(rw_bits(&rw), 0);
    rw.bits = (3u << NG_RWMUTEX_READER_SHIFT) | NG_RWMUTEX_PARKED;
    ng_rwmutex_at_fork_reinit(&rw);
    CHECK_EQ(rw_bits(&rw), 0);
    CHECK(ng_rwmutex_trylock(&rw));
}

/* ==== Sequence lock ========================================================================== */

struct seqlock_scene {
    ng_seqlock lock;
    uint64_t first, second; /* only accessed with relaxed atomics, as the protocol requires */
    int stop;
    int writing; /* the writer is in its loop: readers start only then, so they overlap */
    long reads_per_reader;
    long writes;
};

static void *seqlock_writer(void *p)
{
    struct seqlock_scene *s = p;
    uint64_t k = 0;
    while (!ng_atomic_load(&s->stop, NG_ACQUIRE)) {
        k++;
        ng_seqlock_write_begin(&s->lock);
        ng_atomic_store(&s->first, k, NG_RELAXED);
        /* Widen the half-written window, so that a reader that fails to notice the write
         * (a broken retry check) actually gets to see a torn pair. */
        for (int spin = 0; spin < 20; spin++)
            ng_cpu_relax();
        ng_atomic_store(&s->second, 2 * k, NG_RELAXED);
        ng_seqlock_write_end(&s->lock);
        if (k == 1)
            ng_atomic_store(&s->writing, 1, NG_RELEASE);
        /* ... and leave readers room to finish between writes. */
        for (int spin = 0; spin < 100; spin++)
            ng_cpu_relax();
    }
    s->writes = (long)k;
    return NULL;
}

static void *seqlock_reader(void *p)
{
    struct seqlock_scene *s = p;
    long bad = 0;
    uint64_t last_first = 0;
    SPIN_UNTIL(ng_atomic_load(&s->writing, NG_ACQUIRE));
    for (long i = 0; i < s->reads_per_reader; i++) {
        uint64_t a, b;
        uint32_t seq;
        do {
            seq = ng_seqlock_read_begin(&s->lock);
            a = ng_atomic_load(&s->first, NG_RELAXED);
            for (long spin = i & 15; spin > 0; spin--) /* likewise, a varying gap */
                ng_cpu_relax();
            b = ng_atomic_load(&s->second, NG_RELAXED);
        } while (ng_seqlock_read_retry(&s->lock, seq));
        if ((b != 2 * a || a < last_first) && bad++ < 5)
            harness_fail(__FILE__, __LINE__,
                         "accepted an inconsistent pair (%llu, %llu) after first=%llu",
                         (unsigned long long)a, (unsigned long long)b,
                         (unsigned long long)last_first);
        last_first = a; /* a single writer only moves forward */
    }
    return NULL;
}

TEST(seqlock_readers_never_accept_torn_pairs)
{
    static struct seqlock_scene s;
    s = (struct seqlock_scene){.reads_per_reader = scaled(100000)};
    pthread_t w = spawn_thread(seqlock_writer, &s);
    pthread_t r1 = spawn_thread(seqlock_reader, &s);
    pthread_t r2 = spawn_thread(seqlock_reader, &s);
    join_thread(r1);
    join_thread(r2);
    ng_atomic_store(&s.stop, 1, NG_RELEASE);
    join_thread(w);
    CHECK_GT(s.writes, 0);
    CHECK_EQ(ng_atomic_load(&s.lock.sequence, NG_SEQ_CST), 2u * (uint32_t)s.writes);
}

struct seqlock_writers_scene {
    ng_seqlock lock;
    uint64_t counter;
    long per_writer;
    int ready; /* both writers start together, so they contend */
};

static void *seqlock_counting_writer(void *p)
{
    struct seqlock_writers_scene *s = p;
    ng_atomic_fetch_add(&s->ready, 1, NG_SEQ_CST);
    SPIN_UNTIL(ng_atomic_load(&s->ready, NG_SEQ_CST) == 2);
    for (long i = 0; i < s->per_writer; i++) {
        ng_seqlock_write_begin(&s->lock);
        /* Load-then-store: only correct if writers exclude each other. */
        uint64_t v = ng_atomic_load(&s->counter, NG_RELAXED);
        ng_atomic_store(&s->counter, v + 1, NG_RELAXED);
        ng_seqlock_write_end(&s->lock);
    }
    return NULL;
}

TEST(seqlock_writers_exclude_each_other)
{
    static struct seqlock_writers_scene s;
    s = (struct seqlock_writers_scene){.per_writer = scaled(20000)};
    pthread_t a = spawn_thread(seqlock_counting_writer, &s);
    pthread_t b = spawn_thread(seqlock_counting_writer, &s);
    join_thread(a);
    join_thread(b);
    CHECK_EQ(s.counter, 2 * s.per_writer);
    CHECK_EQ(s.lock.sequence, 4 * s.per_writer);
}

TEST(seqlock_write_abandon_restores_sequence)
{
    ng_seqlock s = NG_SEQLOCK_INIT;
    uint32_t seq = ng_seqlock_read_begin(&s);
    CHECK_EQ(seq, 0);
    ng_seqlock_write_begin(&s);
    CHECK_EQ(s.sequence, 1); /* odd while writing */
    ng_seqlock_write_abandon(&s);
    CHECK_EQ(s.sequence, 0);
    /* A read overlapping an abandoned write need not retry. */
    CHECK(!ng_seqlock_read_retry(&s, seq));

    ng_seqlock_write_begin(&s);
    ng_seqlock_write_end(&s);
    CHECK_EQ(s.sequence, 2);
    CHECK(ng_seqlock_read_retry(&s, seq)); /* a completed write forces a retry */
    seq = ng_seqlock_read_begin(&s);
    CHECK_EQ(seq, 2);
    ng_seqlock_write_begin(&s);
    ng_seqlock_write_abandon(&s);
    CHECK_EQ(s.sequence, 2);
    CHECK(!ng_seqlock_read_retry(&s, seq));
}

TEST(seqlock_after_fork)
{
    ng_seqlock s = {7}; /* a writer died mid-update */
    CHECK_EQ(ng_seqlock_after_fork(&s), 1);
    CHECK_EQ(s.sequence, 0);
    s.sequence = 6; /* idle */
    CHECK_EQ(ng_seqlock_after_fork(&s), 0);
    CHECK_EQ(s.sequence, 6);
}

/* ==== Recursive mutex ======================================================================= */

static uint64_t rmutex_thread(ng_recursive_mutex *m) { return ng_atomic_load(&m->thread, NG_SEQ_CST); }

TEST(recursive_mutex_nesting)
{
    /* CPython's test_lock_recursive. */
    ng_recursive_mutex m = NG_RECURSIVE_MUTEX_INIT;
    uint64_t me = ng_thread_id();
    CHECK(!ng_recursive_mutex_is_owned(&m));
    CHECK_STATUS(ng_recursive_mutex_lock(&m), NG_OK);
    CHECK_EQ(rmutex_thread(&m), me);
    CHECK(ng_mutex_is_locked(&m.mutex));
    CHECK_EQ(m.level, 0);
    CHECK(ng_recursive_mutex_is_owned(&m));

    CHECK_STATUS(ng_recursive_mutex_lock(&m), NG_OK);
    CHECK_EQ(m.level, 1);
    CHECK_STATUS(ng_recursive_mutex_lock_timed(&m, 0, 0), NG_OK); /* the owner never waits */
    CHECK_EQ(m.level, 2);

    CHECK_STATUS(ng_recursive_mutex_unlock(&m), NG_OK);
    CHECK_STATUS(ng_recursive_mutex_unlock(&m), NG_OK);
    CHECK_EQ(m.level, 0);
    CHECK_EQ(rmutex_thread(&m), me);
    CHECK(ng_mutex_is_locked(&m.mutex));

    CHECK_STATUS(ng_recursive_mutex_unlock(&m), NG_OK);
    CHECK_EQ(rmutex_thread(&m), 0);
    CHECK(!ng_mutex_is_locked(&m.mutex));
    CHECK_EQ(m.level, 0);
    CHECK(!ng_recursive_mutex_is_owned(&m));
    CHECK_STATUS(ng_recursive_mutex_unlock(&m), NG_ENOTOWNER);
}

TEST(recursive_mutex_invalid_arguments)
{
    CHECK_STATUS(ng_recursive_mutex_lock(NULL), NG_EINVAL);
    CHECK_STATUS(ng_recursive_mutex_lock_timed(NULL, 0, 0), NG_EINVAL);
    CHECK_STATUS(ng_recursive_mutex_unlock(NULL), NG_EINVAL);
    CHECK(!ng_recursive_mutex_is_owned(NULL));
}

struct rmutex_other {
    ng_recursive_mutex *m;
    int unlock_result;
    int timed_result;
    bool owned;
};

static void *rmutex_other_thread(void *p)
{
    struct rmutex_other *o = p;
    o->owned = ng_recursive_mutex_is_owned(o->m);
    o->unlock_result = ng_recursive_mutex_unlock(o->m);
    o->timed_result = ng_recursive_mutex_lock_timed(o->m, 10 * NG_NS_PER_MS, 0);
    if (o->timed_result == NG_OK)
        ng_recursive_mutex_unlock(o->m);
    return NULL;
}

TEST(recursive_mutex_only_owner_unlocks)
{
    ng_recursive_mutex m = NG_RECURSIVE_MUTEX_INIT;
    CHECK_STATUS(ng_recursive_mutex_lock(&m), NG_OK);
    CHECK_STATUS(ng_recursive_mutex_lock(&m), NG_OK);
    struct rmutex_other o = {.m = &m};
    join_thread(spawn_thread(rmutex_other_thread, &o));
    CHECK(!o.owned);
    CHECK_STATUS(o.unlock_result, NG_ENOTOWNER);
    CHECK_STATUS(o.timed_result, NG_TIMEOUT);
    /* Nothing changed. */
    CHECK_EQ(rmutex_thread(&m), ng_thread_id());
    CHECK_EQ(m.level, 1);
    CHECK(ng_mutex_is_locked(&m.mutex));
    CHECK_STATUS(ng_recursive_mutex_unlock(&m), NG_OK);
    CHECK_STATUS(ng_recursive_mutex_unlock(&m), NG_OK);
    CHECK(!ng_mutex_is_locked(&m.mutex));
}

struct rmutex_counter {
    ng_recursive_mutex m;
    long counter;
    long per_thread;
};

static void *rmutex_counter_worker(void *p)
{
    struct rmutex_counter *c = p;
    for (long i = 0; i < c->per_thread; i++) {
        ng_recursive_mutex_lock(&c->m);
        ng_recursive_mutex_lock(&c->m);
        c->counter++;
        ng_recursive_mutex_unlock(&c->m);
        c->counter++; /* still held after the inner unlock */
        ng_recursive_mutex_unlock(&c->m);
    }
    return NULL;
}

TEST(recursive_mutex_counter)
{
    static struct rmutex_counter c;
    c = (struct rmutex_counter){.per_thread = scaled(5000)};
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        t[i] = spawn_thread(rmutex_counter_worker, &c);
    for (int i = 0; i < 4; i++)
        join_thread(t[i]);
    CHECK_EQ(c.counter, 4 * 2 * c.per_thread);
    CHECK_EQ(rmutex_thread(&c.m), 0);
    CHECK_EQ(c.m.level, 0);
    CHECK(!ng_mutex_is_locked(&c.m.mutex));
}

/* ---- Thread ids ---------------------------------------------------------------------------- */

struct id_probe {
    uint64_t id;
    uint64_t id_again;
    int release;
};

static void *id_probe_main(void *p)
{
    struct id_probe *probe = p;
    ng_atomic_store(&probe->id, ng_thread_id(), NG_SEQ_CST);
    SPIN_UNTIL(ng_atomic_load(&probe->release, NG_SEQ_CST));
    probe->id_again = ng_thread_id();
    return NULL;
}

TEST(thread_ids_unique_and_never_reused)
{
    uint64_t me = ng_thread_id();
    CHECK_NE(me, 0);
    CHECK_EQ(ng_thread_id(), me); /* stable */

    /* Two live threads. */
    struct id_probe a = {0}, b = {0};
    pthread_t ta = spawn_thread(id_probe_main, &a);
    pthread_t tb = spawn_thread(id_probe_main, &b);
    CHECK(WAIT_UNTIL(ng_atomic_load(&a.id, NG_SEQ_CST) && ng_atomic_load(&b.id, NG_SEQ_CST),
                     PATIENCE_MS));
    ng_atomic_store(&a.release, 1, NG_SEQ_CST);
    ng_atomic_store(&b.release, 1, NG_SEQ_CST);
    join_thread(ta);
    join_thread(tb);
    CHECK_NE(a.id, 0);
    CHECK_NE(b.id, 0);
    CHECK_NE(a.id, b.id);
    CHECK_NE(a.id, me);
    CHECK_NE(b.id, me);
    CHECK_EQ(a.id_again, a.id);

    /* Threads created one after another, each after the previous exited: the C library
     * reuses their stacks and TLS blocks, but an id must never come back. */
    enum { SEQUENTIAL = 50 };
    uint64_t ids[SEQUENTIAL];
    for (int i = 0; i < SEQUENTIAL; i++) {
        struct id_probe p = {.release = 1};
        join_thread(spawn_thread(id_probe_main, &p));
        ids[i] = p.id;
        CHECK_NE(ids[i], 0);
        CHECK_NE(ids[i], me);
        CHECK_NE(ids[i], a.id);
        CHECK_NE(ids[i], b.id);
        for (int j = 0; j < i; j++)
            if (!CHECK_NE(ids[i], ids[j]))
                break;
    }
}
