/* The stall detector when several threads poll the same stalled slot: one stall, one report.
 *
 * A poll that sees a slot behind for the first time records the sighting (time, then seq);
 * after the threshold a poll reports it and marks it reported. A poller that was about to
 * record the first sighting and only gets to it after another poller recorded and reported
 * the same stall must not record it again: that made the stall look new and reported it a
 * second time. The test seam ng_test_qsbr_stall_sighting_hook holds a poller in that window.
 * Then: a poller is never reported as its own laggard, and the QSBR mutex ignores a fired
 * ng_cancel token.
 */
#define _GNU_SOURCE
#include <string.h>

#include "harness.h"
#include "qsbr_internal.h"

#define SIGHTING_THRESHOLD_NS (20 * NG_NS_PER_MS)

struct sighting_scene {
    ng_qsbr_shared shared;
    ng_qsbr_slot *stuck, *early, *late;
    uint64_t goal;
    uint64_t late_thread;  /* ng_thread_id() of the poller held in the window */
    uint32_t in_window;    /* it is there */
    uint32_t release;      /* let it go on */
    uint32_t calls;        /* reports */
    uint32_t late_done;
};

static struct sighting_scene sighting;

static void sighting_hold(ng_qsbr_slot *laggard, uint64_t seq)
{
    (void)laggard;
    (void)seq;
    /* Relaxed: the id is written before the thread that compares it is started. */
    if (ng_thread_id() != ng_atomic_load(&sighting.late_thread, NG_RELAXED) ||
        ng_atomic_exchange(&sighting.in_window, 1, NG_SEQ_CST) != 0)
        return;
    SPIN_UNTIL(ng_atomic_load(&sighting.release, NG_ACQUIRE));
}

static void sighting_count(void *arg, const ng_qsbr_stall *stall)
{
    (void)arg;
    (void)stall;
    ng_atomic_fetch_add(&sighting.calls, 1, NG_SEQ_CST);
}

static void *sighting_late_poller(void *arg)
{
    (void)arg;
    ng_atomic_store(&sighting.late_thread, ng_thread_id(), NG_RELAXED);
    /* Scans, finds the stuck slot behind for the first time, stops in the window. */
    (void)ng_qsbr_poll(sighting.late, sighting.goal);
    ng_atomic_store(&sighting.late_done, 1, NG_RELEASE);
    return NULL;
}

static ng_qsbr_slot *sighting_slot(ng_tstate *owner)
{
    ng_qsbr_slot *slot = NULL;
    if (ng_qsbr_reserve(&sighting.shared, &slot) != NG_OK)
        return NULL;
    if (ng_qsbr_register(slot, owner) != NG_OK) {
        ng_qsbr_unreserve(slot);
        return NULL;
    }
    return slot;
}

static void sighting_drop(ng_qsbr_slot *slot)
{
    if (slot == NULL)
        return;
    if (ng_atomic_load(&slot->seq, NG_RELAXED) != NG_QSBR_OFFLINE)
        ng_qsbr_detach(slot);
    CHECK_STATUS(ng_qsbr_unregister(slot), NG_OK);
}

TEST(qsbr_stall_first_sighting_recorded_late_is_not_a_second_stall)
{
    struct sighting_scene *s = &sighting;
    memset(s, 0, sizeof(*s));
    REQUIRE(ng_qsbr_init(&s->shared) == NG_OK);
    static ng_tstate owners[3];
    s->stuck = sighting_slot(&owners[0]);
    s->early = sighting_slot(&owners[1]);
    s->late = sighting_slot(&owners[2]);
    REQUIRE(s->stuck && s->early && s->late);
    ng_qsbr_set_stall_handler(&s->shared, SIGHTING_THRESHOLD_NS, sighting_count, NULL);
    ng_test_qsbr_stall_sighting_hook = sighting_hold;

    ng_qsbr_attach(s->stuck); /* online and never reporting: every goal after this is stuck */
    s->goal = ng_qsbr_advance(&s->shared);
    pthread_t late = spawn_thread(sighting_late_poller, NULL);
    SPIN_UNTIL(ng_atomic_load(&s->in_window, NG_SEQ_CST));

    /* Meanwhile this thread records the sighting and, once the threshold has passed,
     * reports it. */
    CHECK(WAIT_UNTIL((ng_qsbr_poll(s->early, s->goal), ng_atomic_load(&s->calls, NG_SEQ_CST) >= 1),
                     PATIENCE_MS));
    CHECK_EQ(ng_atomic_load(&s->calls, NG_SEQ_CST), 1);

    /* The held poller records its (stale) first sighting now. */
    ng_atomic_store(&s->release, 1, NG_RELEASE);
    SPIN_UNTIL(ng_atomic_load(&s->late_done, NG_ACQUIRE));
    join_thread(late);
    ng_test_qsbr_stall_sighting_hook = NULL;

    /* The slot stays where it was, for several thresholds: still the one stall. */
    int64_t until = now_ns() + 4 * SIGHTING_THRESHOLD_NS;
    while (now_ns() < until) {
        CHECK(!ng_qsbr_poll(s->early, s->goal));
        CHECK(!ng_qsbr_poll(s->late, s->goal));
        sleep_ms(1);
    }
    CHECK_EQ(ng_atomic_load(&s->calls, NG_SEQ_CST), 1);
    ng_qsbr_stats st;
    ng_qsbr_get_stats(&s->shared, &st);
    CHECK(st.stalls_reported == 1);

    ng_qsbr_set_stall_handler(&s->shared, 0, NULL, NULL);
    sighting_drop(s->stuck);
    sighting_drop(s->early);
    sighting_drop(s->late);
    CHECK_STATUS(ng_qsbr_fini(&s->shared), NG_OK);
}

/* A poller whose own slot is the one behind its goal (it polls without having reported since
 * the advance) is not told about itself: its own next quiescent report ends that "stall", and
 * the handler would name the very thread that is running it. */

static uint32_t self_calls;

static void self_count(void *arg, const ng_qsbr_stall *stall)
{
    (void)arg;
    (void)stall;
    ng_atomic_fetch_add(&self_calls, 1, NG_SEQ_CST);
}

TEST(qsbr_stall_poller_is_never_its_own_laggard)
{
    static ng_qsbr_shared shared;
    static ng_tstate owner;
    REQUIRE(ng_qsbr_init(&shared) == NG_OK);
    ng_qsbr_slot *slot = NULL;
    REQUIRE(ng_qsbr_reserve(&shared, &slot) == NG_OK);
    REQUIRE(ng_qsbr_register(slot, &owner) == NG_OK);
    ng_atomic_store(&self_calls, 0, NG_SEQ_CST);
    ng_qsbr_set_stall_handler(&shared, SIGHTING_THRESHOLD_NS, self_count, NULL);

    ng_qsbr_attach(slot);
    uint64_t goal = ng_qsbr_advance(&shared);
    /* The first poll records the sighting (if any is recorded); after the threshold, a
     * second poll through the scan and one through the laggard hint would report it. */
    CHECK(!ng_qsbr_poll(slot, goal));
    sleep_ms(3 * SIGHTING_THRESHOLD_NS / NG_NS_PER_MS);
    CHECK(!ng_qsbr_poll(slot, goal));
    CHECK(!ng_qsbr_poll(slot, goal));
    CHECK_EQ(ng_atomic_load(&self_calls, NG_SEQ_CST), 0);
    ng_qsbr_stats st;
    ng_qsbr_get_stats(&shared, &st);
    CHECK(st.stalls_reported == 0);

    /* Its report fixes it. */
    ng_qsbr_quiescent_state(slot);
    CHECK(ng_qsbr_poll(slot, goal));

    ng_qsbr_set_stall_handler(&shared, 0, NULL, NULL);
    ng_qsbr_detach(slot);
    CHECK_STATUS(ng_qsbr_unregister(slot), NG_OK);
    CHECK_STATUS(ng_qsbr_fini(&shared), NG_OK);
}

/* The QSBR mutex is not cancellable: a thread whose ng_cancel token has fired still waits for
 * it (the callers have no error path for "not taken", and carrying on without the lock would
 * race on the freelist and pin counts, then unlock someone else's lock). */

struct cancel_scene {
    ng_qsbr_shared shared;
    ng_qsbr_slot *slot;
    uint32_t started;
    uint32_t done;
    int err;
};

static struct cancel_scene cancel_scene;

static void *cancelled_pinner(void *arg)
{
    (void)arg;
    struct cancel_scene *s = &cancel_scene;
    ng_cancel token;
    ng_cancel_init(&token);
    ng_cancel_fire(&token);
    ng_cancel *prev = ng_cancel_install(&token);
    ng_atomic_store(&s->started, 1, NG_SEQ_CST);
    s->err = ng_qsbr_pin(s->slot);
    ng_atomic_store(&s->done, 1, NG_SEQ_CST);
    ng_cancel_install(prev);
    return NULL;
}

TEST(qsbr_mutex_is_not_cancellable)
{
    struct cancel_scene *s = &cancel_scene;
    memset(s, 0, sizeof(*s));
    static ng_tstate owner;
    REQUIRE(ng_qsbr_init(&s->shared) == NG_OK);
    REQUIRE(ng_qsbr_reserve(&s->shared, &s->slot) == NG_OK);
    REQUIRE(ng_qsbr_register(s->slot, &owner) == NG_OK);

    /* Held here: the pinner must wait for it, cancelled or not. */
    REQUIRE(ng_mutex_lock(&s->shared.mutex) == NG_OK);
    pthread_t t = spawn_thread(cancelled_pinner, NULL);
    /* It either parks on the mutex (correct) or returns without it (the defect). */
    SPIN_UNTIL(ng_atomic_load(&s->done, NG_SEQ_CST) ||
               (ng_atomic_load(&s->shared.mutex.bits, NG_SEQ_CST) & NG_HAS_PARKED) != 0);
    CHECK_EQ(ng_atomic_load(&s->done, NG_SEQ_CST), 0);
    CHECK_EQ(s->slot->pins, 0);
    int unlock_err = ng_mutex_unlock(&s->shared.mutex);
    join_thread(t);
    CHECK_STATUS(unlock_err, NG_OK);
    CHECK_STATUS(s->err, NG_OK);
    CHECK_EQ(s->slot->pins, 1);
    CHECK(ng_mutex_trylock(&s->shared.mutex)); /* the pinner unlocked its own lock */
    ng_mutex_unlock(&s->shared.mutex);

    CHECK_STATUS(ng_qsbr_unpin(s->slot), NG_OK);
    CHECK_STATUS(ng_qsbr_unregister(s->slot), NG_OK);
    CHECK_STATUS(ng_qsbr_fini(&s->shared), NG_OK);
}
