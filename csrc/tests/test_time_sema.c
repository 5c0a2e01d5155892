/* Clock and deadline arithmetic, and the futex semaphore every parked thread sleeps on. */
#define _GNU_SOURCE
#include "harness.h"

#include <signal.h>

/* ---- Time -------------------------------------------------------------------------------- */

TEST(time_add_sat)
{
    CHECK_EQ(ng_add_sat(1, 2), 3);
    CHECK_EQ(ng_add_sat(-5, 3), -2);
    CHECK_EQ(ng_add_sat(INT64_MAX, -1), INT64_MAX - 1);
    CHECK_EQ(ng_add_sat(INT64_MIN, 1), INT64_MIN + 1);
    /* Saturation at the top end. */
    CHECK_EQ(ng_add_sat(INT64_MAX, 1), INT64_MAX);
    CHECK_EQ(ng_add_sat(INT64_MAX, INT64_MAX), INT64_MAX);
    CHECK_EQ(ng_add_sat(INT64_MAX - 10, 11), INT64_MAX);
    /* ... and at the bottom end. */
    CHECK_EQ(ng_add_sat(INT64_MIN, -1), INT64_MIN);
    CHECK_EQ(ng_add_sat(INT64_MIN, INT64_MIN), INT64_MIN);
    CHECK_EQ(ng_add_sat(INT64_MIN + 10, -11), INT64_MIN);
}

TEST(time_monotonic_clock)
{
    /* ng_monotonic_ns must be CLOCK_MONOTONIC: it lies between two direct readings. */
    int64_t before = now_ns();
    int64_t ng = ng_monotonic_ns();
    int64_t after = now_ns();
    CHECK_LE(before, ng);
    CHECK_LE(ng, after);
    int64_t previous = ng_monotonic_ns();
    for (int i = 0; i < 1000; i++) {
        int64_t t = ng_monotonic_ns();
        CHECK_GE(t, previous);
        previous = t;
    }
}

TEST(time_deadline_after)
{
    CHECK_EQ(ng_deadline_after(-1), NG_DEADLINE_NEVER);
    CHECK_EQ(ng_deadline_after(-123456789), NG_DEADLINE_NEVER);
    CHECK_EQ(ng_deadline_after(INT64_MIN), NG_DEADLINE_NEVER);
    /* A huge timeout saturates to "never" instead of wrapping into the past. */
    CHECK_EQ(ng_deadline_after(INT64_MAX), NG_DEADLINE_NEVER);
    CHECK_EQ(ng_deadline_after(INT64_MAX - 1000), NG_DEADLINE_NEVER);

    int64_t before = now_ns();
    int64_t d0 = ng_deadline_after(0);
    int64_t d1 = ng_deadline_after(NG_NS_PER_SEC);
    int64_t after = now_ns();
    CHECK_LE(before, d0); /* 0 is "now" */
    CHECK_LE(d0, after);
    CHECK_LE(before + NG_NS_PER_SEC, d1);
    CHECK_LE(d1, after + NG_NS_PER_SEC);
}

TEST(time_deadline_remaining)
{
    CHECK_EQ(ng_deadline_remaining(NG_DEADLINE_NEVER), INT64_MAX);
    /* Passed deadlines report 0, never a negative or wrapped value. */
    CHECK_EQ(ng_deadline_remaining(0), 0);
    CHECK_EQ(ng_deadline_remaining(INT64_MIN), 0);
    CHECK_EQ(ng_deadline_remaining(now_ns() - NG_NS_PER_SEC), 0);

    int64_t deadline = now_ns() + NG_NS_PER_SEC;
    int64_t left = ng_deadline_remaining(deadline);
    CHECK_GT(left, 0);
    CHECK_LE(left, NG_NS_PER_SEC);
    /* Not absurdly stale: computed now, so within half a second of the full second. */
    CHECK_GT(left, NG_NS_PER_SEC / 2);

    int64_t d = ng_deadline_after(50 * NG_NS_PER_MS);
    sleep_ms(60);
    CHECK_EQ(ng_deadline_remaining(d), 0);
}

/* ---- Semaphore --------------------------------------------------------------------------- */

TEST(semaphore_invalid)
{
    CHECK_STATUS(ng_semaphore_post(NULL), NG_EINVAL);
    CHECK_STATUS(ng_semaphore_wait(NULL, 0, 0), NG_EINVAL);
    CHECK_STATUS(ng_semaphore_wait(NULL, -1, 0), NG_EINVAL);
    CHECK_STATUS(ng_semaphore_wait_until(NULL, NG_DEADLINE_NEVER, 0), NG_EINVAL);
}

TEST(semaphore_post_before_wait_is_remembered)
{
    ng_semaphore s = NG_SEMAPHORE_INIT;
    CHECK_STATUS(ng_semaphore_post(&s), NG_OK);
    /* The post is consumed without sleeping, even with timeout 0. */
    CHECK_STATUS(ng_semaphore_wait(&s, 0, 0), NG_OK);
    CHECK_STATUS(ng_semaphore_wait(&s, 0, 0), NG_TIMEOUT);

    /* Posts count: two posts satisfy two waits. */
    CHECK_STATUS(ng_semaphore_post(&s), NG_OK);
    CHECK_STATUS(ng_semaphore_post(&s), NG_OK);
    CHECK_EQ(ng_atomic_load(&s.value, NG_SEQ_CST), 2);
    CHECK_STATUS(ng_semaphore_wait(&s, -1, 0), NG_OK);
    CHECK_STATUS(ng_semaphore_wait_until(&s, NG_DEADLINE_NEVER, 0), NG_OK);
    CHECK_STATUS(ng_semaphore_wait(&s, 0, 0), NG_TIMEOUT);
    CHECK_EQ(ng_atomic_load(&s.value, NG_SEQ_CST), 0);
}

TEST(semaphore_timeouts)
{
    ng_semaphore s = NG_SEMAPHORE_INIT;

    int64_t start = now_ns();
    CHECK_STATUS(ng_semaphore_wait(&s, 0, 0), NG_TIMEOUT);
    CHECK_LT(elapsed_ms_since(start), 100); /* 0 means "do not sleep" */

    start = now_ns();
    CHECK_STATUS(ng_semaphore_wait(&s, 5 * NG_NS_PER_MS, 0), NG_TIMEOUT);
    int64_t waited = now_ns() - start;
    CHECK_GE(waited, 5 * NG_NS_PER_MS);
    CHECK_LT(waited, 505 * NG_NS_PER_MS);

    /* Absolute deadlines: one in the past times out at once, one ahead is honoured. */
    start = now_ns();
    CHECK_STATUS(ng_semaphore_wait_until(&s, start - NG_NS_PER_SEC, 0), NG_TIMEOUT);
    CHECK_LT(elapsed_ms_since(start), 100);
    int64_t deadline = now_ns() + 5 * NG_NS_PER_MS;
    CHECK_STATUS(ng_semaphore_wait_until(&s, deadline, 0), NG_TIMEOUT);
    CHECK_GE(now_ns(), deadline);

    /* A timed-out wait leaves no trace: the next post is still a post. */
    CHECK_EQ(ng_atomic_load(&s.value, NG_SEQ_CST), 0);
    CHECK_STATUS(ng_semaphore_post(&s), NG_OK);
    CHECK_STATUS(ng_semaphore_wait(&s, 0, 0), NG_OK);
}

struct sema_sleeper {
    ng_semaphore sema;
    int64_t timeout_ns;
    int flags;
    int result;
    int done;
};

static void *sema_sleeper_main(void *p)
{
    struct sema_sleeper *sl = p;
    int rc = ng_semaphore_wait(&sl->sema, sl->timeout_ns, sl->flags);
    ng_atomic_store(&sl->result, rc, NG_SEQ_CST);
    ng_atomic_store(&sl->done, 1, NG_SEQ_CST);
    return NULL;
}

TEST(semaphore_cross_thread_post_wakes_sleeper)
{
    struct sema_sleeper sl = {.timeout_ns = -1, .flags = 0};
    pthread_t t = spawn_thread(sema_sleeper_main, &sl);
    /* -1 is documented as "the waiter is asleep on the futex": post only once it sleeps, so
     * this exercises the wake path rather than the remembered-post path. */
    bool asleep = WAIT_UNTIL(ng_atomic_load(&sl.sema.value, NG_SEQ_CST) == -1, PATIENCE_MS);
    CHECK(asleep);
    CHECK_EQ(ng_atomic_load(&sl.done, NG_SEQ_CST), 0);
    CHECK_STATUS(ng_semaphore_post(&sl.sema), NG_OK);
    CHECK(WAIT_UNTIL(ng_atomic_load(&sl.done, NG_SEQ_CST), PATIENCE_MS));
    join_thread(t);
    CHECK_STATUS(sl.result, NG_OK);
    CHECK_EQ(sl.sema.value, 0);
}

TEST(semaphore_interruptible_wait_returns_intr)
{
    install_counting_handler(SIGUSR1);
    struct sema_sleeper sl = {.timeout_ns = -1, .flags = NG_WAIT_INTERRUPTIBLE};
    pthread_t t = spawn_thread(sema_sleeper_main, &sl);
    CHECK(WAIT_UNTIL(ng_atomic_load(&sl.sema.value, NG_SEQ_CST) == -1, PATIENCE_MS));
    /* A signal can land just before the futex sleep and be missed; keep signalling until
     * the wait returns. */
    int64_t deadline = now_ns() + PATIENCE_MS * NG_NS_PER_MS;
    while (!ng_atomic_load(&sl.done, NG_SEQ_CST) && now_ns() < deadline) {
        pthread_kill(t, SIGUSR1);
        sleep_ms(5);
    }
    bool returned = ng_atomic_load(&sl.done, NG_SEQ_CST);
    CHECK(returned);
    if (!returned) /* unblock it so the test can end */
        ng_semaphore_post(&sl.sema);
    join_thread(t);
    CHECK_STATUS(sl.result, NG_INTR);
    CHECK_GE(counted_signals(), 1);
    /* The interrupted waiter consumed nothing and left no "asleep" marker behind. */
    CHECK_EQ(ng_atomic_load(&sl.sema.value, NG_SEQ_CST), 0);
    CHECK_STATUS(ng_semaphore_post(&sl.sema), NG_OK);
    CHECK_STATUS(ng_semaphore_wait(&sl.sema, 0, 0), NG_OK);
    restore_signal(SIGUSR1);
}

TEST(semaphore_uninterruptible_wait_absorbs_signals)
{
    install_counting_handler(SIGUSR1);
    struct sema_sleeper sl = {.timeout_ns = -1, .flags = 0};
    pthread_t t = spawn_thread(sema_sleeper_main, &sl);
    CHECK(WAIT_UNTIL(ng_atomic_load(&sl.sema.value, NG_SEQ_CST) == -1, PATIENCE_MS));
    for (int i = 0; i < 10; i++) {
        pthread_kill(t, SIGUSR1);
        sleep_ms(3);
    }
    /* Signals arrived while it slept, and it is still waiting. (The handler's count is only
     * checked after the join: TSan defers handlers of threads blocked in raw syscalls.) */
    sleep_ms(10);
    CHECK_EQ(ng_atomic_load(&sl.done, NG_SEQ_CST), 0);
    CHECK_STATUS(ng_semaphore_post(&sl.sema), NG_OK);
    CHECK(WAIT_UNTIL(ng_atomic_load(&sl.done, NG_SEQ_CST), PATIENCE_MS));
    join_thread(t);
    CHECK_STATUS(sl.result, NG_OK);
    CHECK_GE(counted_signals(), 1);
    restore_signal(SIGUSR1);
}

TEST(semaphore_uninterruptible_timed_wait_keeps_deadline)
{
    /* A signal must not restart the timeout from scratch, nor end the wait early. */
    install_counting_handler(SIGUSR1);
    struct sema_sleeper sl = {.timeout_ns = 50 * NG_NS_PER_MS, .flags = 0};
    int64_t start = now_ns();
    pthread_t t = spawn_thread(sema_sleeper_main, &sl);
    while (!ng_atomic_load(&sl.done, NG_SEQ_CST) && elapsed_ms_since(start) < PATIENCE_MS) {
        pthread_kill(t, SIGUSR1);
        sleep_ms(2);
    }
    join_thread(t);
    int64_t waited = now_ns() - start;
    CHECK_STATUS(sl.result, NG_TIMEOUT);
    CHECK_GE(waited, 50 * NG_NS_PER_MS);
    CHECK_LT(waited, 550 * NG_NS_PER_MS);
    restore_signal(SIGUSR1);
}
