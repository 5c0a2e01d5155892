/* QSBR: sequences, the segmented slot space, polls with the laggard hint, the stall detector,
 * memory-aware goals (spec R5), fork, and readers that must never see reclaimed memory.
 *
 * These tests drive an ng_qsbr_shared directly, without interpreters: a slot's owner is a
 * stand-in ng_tstate (only the fields the stall report reads are set), and one thread may act
 * for several slots (the hot paths are plain memory operations on the slot).
 */
#define _GNU_SOURCE
#include "harness.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fork_helpers.h"
#include "qsbr_internal.h"
#include "tstate_internal.h"

#ifdef NOGIL_TORTURE
#define EXPECTED_INITIAL (UINT64_MAX - 2 * UINT64_C(1000))
#else
#define EXPECTED_INITIAL NG_QSBR_INITIAL
#endif

static ng_qsbr_stats stats_of(ng_qsbr_shared *shared)
{
    ng_qsbr_stats st;
    ng_qsbr_get_stats(shared, &st);
    return st;
}

/* Reserves and registers a slot owned by `ts`; NULL (and a recorded failure) if that fails. */
static ng_qsbr_slot *new_slot(ng_qsbr_shared *shared, ng_tstate *ts)
{
    ng_qsbr_slot *slot = NULL;
    if (!CHECK_STATUS(ng_qsbr_reserve(shared, &slot), NG_OK))
        return NULL;
    if (!CHECK_STATUS(ng_qsbr_register(slot, ts), NG_OK))
        return NULL;
    return slot;
}

static void drop_slot(ng_qsbr_slot *slot)
{
    if (slot == NULL)
        return;
    if (ng_atomic_load(&slot->seq, NG_RELAXED) != NG_QSBR_OFFLINE)
        ng_qsbr_detach(slot);
    CHECK_STATUS(ng_qsbr_unregister(slot), NG_OK);
}

/* ---- Sequences ------------------------------------------------------------------------- */

TEST(qsbr_init_and_advance)
{
    ng_qsbr_shared shared;
    memset(&shared, 0xa5, sizeof shared); /* init must not depend on zeroed memory */
    CHECK_STATUS(ng_qsbr_init(&shared), NG_OK);
    ng_qsbr_stats st = stats_of(&shared);
    CHECK(st.wr_seq == EXPECTED_INITIAL);
    CHECK(st.rd_seq == EXPECTED_INITIAL);
    CHECK_EQ(st.registered, 0);
    CHECK_EQ(st.capacity, 0);
#ifdef NOGIL_TORTURE
    CHECK_EQ(shared.item_limit, 1);
#else
    CHECK_EQ(shared.item_limit, NG_QSBR_DEFAULT_ITEM_LIMIT);
#endif
    CHECK(shared.mem_limit == NG_QSBR_DEFAULT_MEM_LIMIT);
    CHECK(shared.page_mem_limit == NG_QSBR_DEFAULT_PAGE_MEM_LIMIT);

    uint64_t before = ng_qsbr_shared_current(&shared);
    CHECK(ng_qsbr_shared_next(&shared) == before + NG_QSBR_INCR);
    for (int i = 0; i < 5; i++) {
        uint64_t got = ng_qsbr_advance(&shared);
        /* The NEW value: the pre-increment one would be a goal one step too early. */
        CHECK(got == before + NG_QSBR_INCR * (uint64_t)(i + 1));
        CHECK(got == ng_qsbr_shared_current(&shared));
        CHECK_EQ(got & 1, 1);
    }
    CHECK(stats_of(&shared).advances == 5);
    CHECK_STATUS(ng_qsbr_init(NULL), NG_EINVAL);
    CHECK_STATUS(ng_qsbr_fini(&shared), NG_OK);
    CHECK_STATUS(ng_qsbr_fini(&shared), NG_OK); /* a second fini is harmless */
    CHECK_STATUS(ng_qsbr_fini(NULL), NG_EINVAL);
}

TEST(qsbr_compare_across_wrap)
{
    uint64_t top = UINT64_MAX - 2; /* odd, two steps before the wrap */
    uint64_t wrapped = top + 2 * NG_QSBR_INCR; /* 1 */
    CHECK(wrapped == 1);
    CHECK(NG_QSBR_LT(top, wrapped));
    CHECK(!NG_QSBR_LT(wrapped, top));
    CHECK(NG_QSBR_LEQ(top, wrapped));
    CHECK(!NG_QSBR_LEQ(wrapped, top));
    CHECK(NG_QSBR_LEQ(wrapped, wrapped));
    CHECK(!NG_QSBR_LT(wrapped, wrapped));
    CHECK(NG_QSBR_LT(UINT64_MAX, UINT64_C(1)));
    CHECK(!NG_QSBR_LT(UINT64_C(1), UINT64_MAX));
}

/* An online slot at the current sequence holds back the goal current+2 until it reports a
 * quiescent state; offline slots never hold anything back. Run across the 64-bit wrap. */
TEST(qsbr_goal_waits_for_online_slots_across_wrap)
{
    ng_qsbr_shared shared;
    ng_qsbr_init(&shared);
    /* White-box: start just before the wrap (as the torture build does for all tests), so
     * that in the second round the reader is online at UINT64_MAX and the goal is 1. */
    shared.wr_seq = shared.rd_seq = UINT64_MAX - 4;
    static ng_tstate ts[3];
    ng_qsbr_slot *reader = new_slot(&shared, &ts[0]);
    ng_qsbr_slot *idle = new_slot(&shared, &ts[1]);   /* registered, never attached */
    ng_qsbr_slot *poller = new_slot(&shared, &ts[2]); /* offline: polls on behalf of a writer */
    REQUIRE(reader && idle && poller);

    for (int round = 0; round < 4; round++) { /* two advances a round: MAX-4, MAX-2, MAX, 1, ... */
        ng_qsbr_attach(reader);
        uint64_t current = ng_qsbr_shared_current(&shared);
        CHECK(ng_atomic_load(&reader->seq, NG_RELAXED) == current);
        uint64_t goal = ng_qsbr_advance(&shared);
        CHECK(goal == current + NG_QSBR_INCR);
        CHECK(goal != NG_QSBR_OFFLINE);
        CHECK(!ng_qsbr_poll(poller, goal));
        CHECK(!ng_qsbr_poll(poller, goal));
        CHECK(ng_qsbr_scan(&shared) == current); /* a scan without the laggard hint */
        ng_qsbr_quiescent_state(reader);
        CHECK(ng_atomic_load(&reader->seq, NG_RELAXED) == goal);
        CHECK(ng_qsbr_poll(poller, goal));
        CHECK(ng_qsbr_goal_reached(poller, goal));
        CHECK(ng_atomic_load(&shared.rd_seq, NG_RELAXED) == goal);

        /* Offline: the next goal is reached without the reader doing anything. */
        ng_qsbr_detach(reader);
        goal = ng_qsbr_advance(&shared);
        CHECK(ng_qsbr_poll(poller, goal));
    }
    CHECK(ng_qsbr_shared_current(&shared) == 11); /* MAX-4 + 8 steps of 2, wrapped */

    /* rd_seq never moves back, even when a scan meets a slot behind it (a thread that read
     * wr_seq, was preempted, and stored it after a scan had passed it by). */
    uint64_t rd = ng_qsbr_scan(&shared);
    CHECK(rd == ng_qsbr_shared_current(&shared));
    ng_atomic_store(&reader->seq, rd - 2 * NG_QSBR_INCR, NG_RELEASE);
    CHECK(ng_qsbr_scan(&shared) == rd);
    CHECK(ng_atomic_load(&shared.rd_seq, NG_RELAXED) == rd);
    ng_qsbr_detach(reader);

    /* A goal nobody has advanced to yet is not reached, even with every slot offline. */
    CHECK(!ng_qsbr_poll(poller, ng_qsbr_shared_next(&shared)));
    drop_slot(reader);
    drop_slot(idle);
    drop_slot(poller);
    CHECK_STATUS(ng_qsbr_fini(&shared), NG_OK);
}

/* ---- Slot space ------------------------------------------------------------------------ */

#define GROWTH_SLOTS 1000

TEST(qsbr_reserve_grows_without_moving_slots)
{
    ng_qsbr_shared shared;
    ng_qsbr_init(&shared);
    static ng_tstate ts[GROWTH_SLOTS];
    static ng_qsbr_slot *slots[GROWTH_SLOTS];
    for (int i = 0; i < GROWTH_SLOTS; i++) {
        slots[i] = new_slot(&shared, &ts[i]);
        REQUIRE(slots[i] != NULL);
        /* A pattern in an owner-side word, checked after later growth. */
        slots[i]->deferred_memory = UINT64_C(0x5107000000) + (uint64_t)i;
    }
    ng_qsbr_stats st = stats_of(&shared);
    CHECK_EQ(st.registered, GROWTH_SLOTS);
    /* Segments of 8, 16, ..., 512 slots: 1016 is the smallest capacity >= 1000. */
    CHECK_EQ(st.capacity, 1016);
    CHECK_EQ(ng_atomic_load(&shared.nsegments, NG_RELAXED), 7);

    for (int i = 0; i < GROWTH_SLOTS; i++) {
        ng_qsbr_slot *s = slots[i];
        CHECK_EQ(s->index, i); /* fresh slots are handed out in order */
        CHECK_PTR_EQ(s->shared, &shared);
        CHECK_PTR_EQ(s->tstate, &ts[i]);
        CHECK_EQ(s->allocated, 1);
        CHECK(s->deferred_memory == UINT64_C(0x5107000000) + (uint64_t)i);
        CHECK_EQ((uintptr_t)s % NG_QSBR_SLOT_ALIGN, 0);
        if (i > 0)
            CHECK(s != slots[i - 1]);
    }
    /* Distinct slots, each on its own cache line(s): no two pointers closer than a slot. */
    static uintptr_t sorted[GROWTH_SLOTS];
    for (int i = 0; i < GROWTH_SLOTS; i++)
        sorted[i] = (uintptr_t)slots[i];
    for (int i = 1; i < GROWTH_SLOTS; i++)
        for (int j = i; j > 0 && sorted[j - 1] > sorted[j]; j--) {
            uintptr_t t = sorted[j];
            sorted[j] = sorted[j - 1];
            sorted[j - 1] = t;
        }
    for (int i = 1; i < GROWTH_SLOTS; i++)
        if (!CHECK_GE(sorted[i] - sorted[i - 1], sizeof(ng_qsbr_slot)))
            break;

    /* Scans reach every segment: the first and last slot of each one, online alone, hold
     * back a goal until they go offline. */
    ng_qsbr_slot *poller = slots[GROWTH_SLOTS - 1];
    for (uint32_t k = 0; k < 7; k++) {
        uint32_t first = (NG_QSBR_FIRST_SEGMENT << k) - NG_QSBR_FIRST_SEGMENT;
        uint32_t last = first + (NG_QSBR_FIRST_SEGMENT << k) - 1;
        uint32_t probes[2] = {first, last < GROWTH_SLOTS - 1 ? last : GROWTH_SLOTS - 2};
        for (int p = 0; p < 2; p++) {
            ng_qsbr_slot *s = slots[probes[p]];
            ng_qsbr_attach(s);
            uint64_t goal = ng_qsbr_advance(&shared);
            if (!CHECK(!ng_qsbr_poll(poller, goal)))
                harness_fail(__FILE__, __LINE__, "slot %u (segment %u) was not scanned",
                             probes[p], k);
            ng_qsbr_detach(s);
            CHECK(ng_qsbr_poll(poller, goal));
        }
    }

    /* Busy: fini refuses and changes nothing. */
    CHECK_STATUS(ng_qsbr_fini(&shared), NG_EBUSY);
    CHECK_EQ(stats_of(&shared).capacity, 1016);

    /* Give back every even slot; reserving as many again reuses exactly those. */
    for (int i = 0; i < GROWTH_SLOTS; i += 2)
        drop_slot(slots[i]);
    CHECK_EQ(stats_of(&shared).registered, GROWTH_SLOTS / 2);
    for (int n = 0; n < GROWTH_SLOTS / 2; n++) {
        ng_qsbr_slot *s = NULL;
        REQUIRE(CHECK_STATUS(ng_qsbr_reserve(&shared, &s), NG_OK));
        REQUIRE(CHECK(s->index < GROWTH_SLOTS && s->index % 2 == 0));
        REQUIRE(CHECK_PTR_EQ(slots[s->index], s));
        CHECK(s->tstate == NULL); /* reserved, not yet registered */
        CHECK_STATUS(ng_qsbr_register(s, &ts[s->index]), NG_OK);
    }
    CHECK_EQ(stats_of(&shared).capacity, 1016);
    CHECK_EQ(shared.high_water, GROWTH_SLOTS);
    for (int i = 0; i < GROWTH_SLOTS; i++)
        drop_slot(slots[i]);
    CHECK_EQ(stats_of(&shared).registered, 0);
    CHECK_STATUS(ng_qsbr_fini(&shared), NG_OK);
}

/* Every misuse of the slot calls answers with a status and leaves the freelist intact. */
TEST(qsbr_slot_misuse_is_reported)
{
    ng_qsbr_shared shared;
    ng_qsbr_init(&shared);
    static ng_tstate ts[2];
    ng_qsbr_slot *a = NULL, *b = NULL, *c = NULL;
    CHECK_STATUS(ng_qsbr_reserve(NULL, &a), NG_EINVAL);
    CHECK_STATUS(ng_qsbr_reserve(&shared, NULL), NG_EINVAL);
    REQUIRE(CHECK_STATUS(ng_qsbr_reserve(&shared, &a), NG_OK));

    CHECK_STATUS(ng_qsbr_register(a, NULL), NG_EINVAL);
    CHECK_STATUS(ng_qsbr_register(NULL, &ts[0]), NG_EINVAL);
    ng_qsbr_slot zeroed;
    memset(&zeroed, 0, sizeof zeroed);
    CHECK_STATUS(ng_qsbr_register(&zeroed, &ts[0]), NG_EINVAL);
    CHECK_STATUS(ng_qsbr_unregister(&zeroed), NG_EINVAL);
    CHECK_STATUS(ng_qsbr_unreserve(&zeroed), NG_EINVAL);
    CHECK_STATUS(ng_qsbr_unregister(NULL), NG_EINVAL);
    CHECK_STATUS(ng_qsbr_unreserve(NULL), NG_EINVAL);

    CHECK_STATUS(ng_qsbr_unregister(a), NG_ESTATE); /* reserved only: unreserve it */
    CHECK_STATUS(ng_qsbr_register(a, &ts[0]), NG_OK);
    CHECK_STATUS(ng_qsbr_register(a, &ts[1]), NG_ESTATE); /* already owned */
    CHECK_PTR_EQ(a->tstate, &ts[0]);
    CHECK_STATUS(ng_qsbr_unreserve(a), NG_ESTATE);        /* registered: unregister it */

    ng_qsbr_attach(a);
    CHECK_STATUS(ng_qsbr_unregister(a), NG_ESTATE); /* still online */
    CHECK_EQ(a->allocated, 1);
    ng_qsbr_detach(a);
    CHECK_STATUS(ng_qsbr_unregister(a), NG_OK);
    CHECK_STATUS(ng_qsbr_unregister(a), NG_ESTATE); /* twice */
    CHECK_STATUS(ng_qsbr_unreserve(a), NG_ESTATE);  /* free */
    CHECK_STATUS(ng_qsbr_register(a, &ts[0]), NG_ESTATE); /* free: reserve first */
    CHECK_EQ(stats_of(&shared).registered, 0);

    /* A double push would hand the same slot out twice. */
    REQUIRE(CHECK_STATUS(ng_qsbr_reserve(&shared, &b), NG_OK));
    REQUIRE(CHECK_STATUS(ng_qsbr_reserve(&shared, &c), NG_OK));
    CHECK_PTR_EQ(b, a);
    CHECK(b != c);
    CHECK_STATUS(ng_qsbr_unreserve(b), NG_OK);
    CHECK_STATUS(ng_qsbr_unreserve(b), NG_ESTATE);
    CHECK_STATUS(ng_qsbr_unreserve(c), NG_OK);
    CHECK_EQ(stats_of(&shared).registered, 0);

    CHECK(!ng_qsbr_poll_slow(NULL, 1));
    CHECK(ng_qsbr_scan(NULL) == NG_QSBR_OFFLINE);
    CHECK_STATUS(ng_qsbr_fini(&shared), NG_OK);
}

/* Growth that cannot allocate reports NG_ENOMEM and changes nothing (ASan checks leaks). */
TEST(qsbr_reserve_out_of_memory)
{
    ng_qsbr_shared shared;
    ng_qsbr_init(&shared);
    ng_qsbr_slot *s = NULL;
    ng_test_fail_qsbr_segment_alloc = 1;
    CHECK_STATUS(ng_qsbr_reserve(&shared, &s), NG_ENOMEM);
    CHECK(s == NULL);
    ng_qsbr_stats st = stats_of(&shared);
    CHECK_EQ(st.capacity, 0);
    CHECK_EQ(st.registered, 0);

    ng_qsbr_slot *first[NG_QSBR_FIRST_SEGMENT];
    for (int i = 0; i < NG_QSBR_FIRST_SEGMENT; i++)
        REQUIRE(CHECK_STATUS(ng_qsbr_reserve(&shared, &first[i]), NG_OK));
    ng_test_fail_qsbr_segment_alloc = 1;
    CHECK_STATUS(ng_qsbr_reserve(&shared, &s), NG_ENOMEM);
    st = stats_of(&shared);
    CHECK_EQ(st.capacity, NG_QSBR_FIRST_SEGMENT);
    CHECK_EQ(st.registered, NG_QSBR_FIRST_SEGMENT);
    CHECK_EQ(shared.high_water, NG_QSBR_FIRST_SEGMENT);
    CHECK_EQ(ng_test_fail_qsbr_segment_alloc, 0);
    REQUIRE(CHECK_STATUS(ng_qsbr_reserve(&shared, &s), NG_OK)); /* memory is back */
    CHECK_EQ(s->index, NG_QSBR_FIRST_SEGMENT);
    CHECK_STATUS(ng_qsbr_unreserve(s), NG_OK);
    for (int i = 0; i < NG_QSBR_FIRST_SEGMENT; i++)
        CHECK_STATUS(ng_qsbr_unreserve(first[i]), NG_OK);
    CHECK_STATUS(ng_qsbr_fini(&shared), NG_OK);
}

/* Spec R18: a creation that fails after reserving gives the slot back; 1000 failed creations
 * do not grow the slot space. */
TEST(qsbr_unreserve_keeps_capacity)
{
    ng_qsbr_shared shared;
    ng_qsbr_init(&shared);
    static ng_tstate ts;
    ng_qsbr_slot *keep = new_slot(&shared, &ts);
    REQUIRE(keep != NULL);
    ng_qsbr_stats before = stats_of(&shared);
    for (int i = 0; i < 1000; i++) {
        ng_qsbr_slot *s = NULL;
        REQUIRE(CHECK_STATUS(ng_qsbr_reserve(&shared, &s), NG_OK));
        REQUIRE(CHECK_STATUS(ng_qsbr_unreserve(s), NG_OK));
    }
    ng_qsbr_stats after = stats_of(&shared);
    CHECK_EQ(after.capacity, before.capacity);
    CHECK_EQ(after.registered, before.registered);
    CHECK_EQ(shared.high_water, 1); /* the kept slot: the one reused 1000 times went each time */
    drop_slot(keep);
    CHECK_STATUS(ng_qsbr_fini(&shared), NG_OK);
}

/* ---- Concurrency: ownership under churn (spec R10, R2) ---------------------------------- */

#define CHURN_THREADS 8
#define CHURN_MAX_SLOTS 64

struct churn {
    ng_qsbr_shared shared;
    int owner[CHURN_MAX_SLOTS]; /* claim flags by slot index: thread number + 1, or 0 */
    int stop;
    long cycles;
};

struct churn_thread {
    struct churn *c;
    ng_tstate ts;
    int number;
};

static void *churn_worker(void *p)
{
    struct churn_thread *t = p;
    struct churn *c = t->c;
    int me = t->number + 1;
    for (long i = 0; i < c->cycles; i++) {
        ng_qsbr_slot *slot = NULL;
        if (!CHECK_STATUS(ng_qsbr_reserve(&c->shared, &slot), NG_OK))
            return NULL;
        if (!CHECK_LT(slot->index, CHURN_MAX_SLOTS))
            return NULL;
        int expected = 0;
        /* Two owners of one slot at once would find the flag taken. */
        if (!CHECK(ng_atomic_cas(&c->owner[slot->index], &expected, me, NG_ACQ_REL,
                                 NG_ACQUIRE)))
            return NULL;
        if ((i & 7) == 7) { /* a creation that fails after reserving (R18) */
            ng_atomic_store(&c->owner[slot->index], 0, NG_RELEASE);
            CHECK_STATUS(ng_qsbr_unreserve(slot), NG_OK);
            continue;
        }
        CHECK_STATUS(ng_qsbr_register(slot, &t->ts), NG_OK);
        ng_qsbr_attach(slot);
        for (int q = 0; q < 3; q++) {
            ng_qsbr_quiescent_state(slot);
            if (i % 16 == 0)
                sched_yield();
        }
        CHECK_PTR_EQ(ng_atomic_load(&slot->tstate, NG_RELAXED), &t->ts);
        CHECK_EQ(ng_atomic_load(&c->owner[slot->index], NG_ACQUIRE), me);
        ng_qsbr_detach(slot);
        ng_atomic_store(&c->owner[slot->index], 0, NG_RELEASE);
        CHECK_STATUS(ng_qsbr_unregister(slot), NG_OK);
    }
    return NULL;
}

/* Advances and polls while the workers churn; rd_seq must never go backwards nor pass
 * wr_seq. */
static void *churn_poller(void *p)
{
    struct churn *c = p;
    static ng_tstate ts;
    ng_qsbr_slot *slot = new_slot(&c->shared, &ts);
    if (slot == NULL)
        return NULL;
    uint64_t last_rd = ng_atomic_load(&c->shared.rd_seq, NG_ACQUIRE);
    while (!ng_atomic_load(&c->stop, NG_ACQUIRE)) {
        uint64_t goal = ng_qsbr_advance(&c->shared);
        for (int i = 0; i < 100 && !ng_qsbr_poll(slot, goal); i++)
            sched_yield();
        uint64_t rd = ng_atomic_load(&c->shared.rd_seq, NG_ACQUIRE);
        CHECK(NG_QSBR_LEQ(last_rd, rd));
        CHECK(NG_QSBR_LEQ(rd, ng_qsbr_shared_current(&c->shared)));
        last_rd = rd;
    }
    drop_slot(slot);
    return NULL;
}

TEST(qsbr_concurrent_reserve_register_churn)
{
    static struct churn c;
    memset(&c, 0, sizeof c);
    ng_qsbr_init(&c.shared);
    c.cycles = scaled(20000);
    static struct churn_thread threads[CHURN_THREADS];
    pthread_t tids[CHURN_THREADS];
    pthread_t poller = spawn_thread(churn_poller, &c);
    for (int i = 0; i < CHURN_THREADS; i++) {
        threads[i] = (struct churn_thread){.c = &c, .number = i};
        tids[i] = spawn_thread(churn_worker, &threads[i]);
    }
    for (int i = 0; i < CHURN_THREADS; i++)
        join_thread(tids[i]);
    ng_atomic_store(&c.stop, 1, NG_RELEASE);
    join_thread(poller);

    ng_qsbr_stats st = stats_of(&c.shared);
    CHECK_EQ(st.registered, 0);
    /* At most 9 slots in use at once: reuse keeps the space at two segments (8 + 16). */
    CHECK_LE(st.capacity, 24);
    for (int i = 0; i < CHURN_MAX_SLOTS; i++)
        CHECK_EQ(c.owner[i], 0);
    CHECK_STATUS(ng_qsbr_fini(&c.shared), NG_OK);
}

/* Spec R10, deterministically: between choosing a slot and returning it, another thread grows
 * the space by several segments; the returned pointer is still the slot that was marked for
 * this caller, and nobody else got it. */
struct r10_scene {
    ng_qsbr_shared shared;
    ng_qsbr_slot *hooked;
    int in_hook;
    int release;
    ng_qsbr_slot *others[100];
};

static struct r10_scene *r10;

static void r10_hook(ng_qsbr_slot *slot)
{
    if (ng_atomic_load(&r10->hooked, NG_RELAXED) != NULL)
        return; /* only the first reservation waits */
    ng_atomic_store(&r10->hooked, slot, NG_RELAXED);
    ng_atomic_store(&r10->in_hook, 1, NG_RELEASE);
    SPIN_UNTIL(ng_atomic_load(&r10->release, NG_ACQUIRE));
}

static void *r10_reserver(void *p)
{
    ng_qsbr_slot **out = p;
    CHECK_STATUS(ng_qsbr_reserve(&r10->shared, out), NG_OK);
    return NULL;
}

TEST(qsbr_reserve_result_survives_concurrent_growth)
{
    static struct r10_scene scene;
    memset(&scene, 0, sizeof scene);
    r10 = &scene;
    ng_qsbr_init(&scene.shared);
    ng_test_qsbr_reserve_hook = r10_hook;
    ng_qsbr_slot *got = NULL;
    pthread_t t = spawn_thread(r10_reserver, &got);
    SPIN_UNTIL(ng_atomic_load(&scene.in_hook, NG_ACQUIRE));
    for (int i = 0; i < 100; i++)
        CHECK_STATUS(ng_qsbr_reserve(&scene.shared, &scene.others[i]), NG_OK);
    CHECK_GE(stats_of(&scene.shared).capacity, 101);
    ng_atomic_store(&scene.release, 1, NG_RELEASE);
    join_thread(t);
    ng_test_qsbr_reserve_hook = NULL;

    REQUIRE(CHECK(got != NULL));
    CHECK_PTR_EQ(got, scene.hooked);
    CHECK_EQ(got->index, 0);
    CHECK_EQ(got->allocated, 1);
    for (int i = 0; i < 100; i++) {
        CHECK(scene.others[i] != got);
        CHECK_EQ(scene.others[i]->index, i + 1);
        CHECK_STATUS(ng_qsbr_unreserve(scene.others[i]), NG_OK);
    }
    CHECK_STATUS(ng_qsbr_unreserve(got), NG_OK);
    CHECK_STATUS(ng_qsbr_fini(&scene.shared), NG_OK);
}

/* ---- Readers never see reclaimed memory ------------------------------------------------- */

#define GP_READERS 2
#define OBJ_ALIVE UINT64_C(0xa11fea11fea11fe0)
#define OBJ_DEAD UINT64_C(0xdeaddeaddeaddead)

struct gp_obj {
    uint64_t magic;
    uint64_t serial;
};

struct gp_scene {
    ng_qsbr_shared shared;
    struct gp_obj *current;
    int stop;
    int online; /* readers attached so far: the writer starts once all are */
    long bad_reads;
    long reads;
};

static void *gp_reader(void *p)
{
    struct gp_scene *g = p;
    static ng_tstate ts[GP_READERS];
    static int next;
    ng_qsbr_slot *slot = new_slot(&g->shared, &ts[ng_atomic_fetch_add(&next, 1, NG_RELAXED)]);
    if (slot == NULL)
        return NULL;
    ng_qsbr_attach(slot);
    /* Release: pairs with the writer's acquire, which must find us online before it swaps. */
    ng_atomic_fetch_add(&g->online, 1, NG_RELEASE);
    long bad = 0, reads = 0;
    uint64_t last_serial = 0;
    while (!ng_atomic_load(&g->stop, NG_ACQUIRE)) {
        for (int i = 0; i < 16; i++) {
            struct gp_obj *o = ng_atomic_load(&g->current, NG_ACQUIRE);
            /* Hold the object a while and keep looking: a premature free poisons it
             * meanwhile (or ASan sees the use after free). */
            uint64_t serial = ng_atomic_load(&o->serial, NG_RELAXED);
            for (int k = 0; k < 16; k++) {
                bad += ng_atomic_load(&o->magic, NG_RELAXED) != OBJ_ALIVE;
                ng_cpu_relax();
            }
            if ((reads & 255) == 0)
                sched_yield();
            bad += ng_atomic_load(&o->magic, NG_RELAXED) != OBJ_ALIVE || serial < last_serial;
            last_serial = serial;
            reads++;
        }
        ng_qsbr_quiescent_state(slot);
        if ((reads & 4095) == 0) { /* sometimes go offline, as a blocking call would */
            ng_qsbr_detach(slot);
            sched_yield();
            ng_qsbr_attach(slot);
        }
    }
    ng_qsbr_detach(slot);
    drop_slot(slot);
    ng_atomic_fetch_add(&g->bad_reads, bad, NG_RELAXED);
    ng_atomic_fetch_add(&g->reads, reads, NG_RELAXED);
    return NULL;
}

/* The writer replaces the object, waits for the grace period (offline itself, as a writer
 * waiting for reclamation is; by polling or with ng_qsbr_wait, in turns), poisons the old
 * object, then frees it. A reader that
 * could still see it reads the poison, or ASan reports the use after free. */
TEST(qsbr_readers_never_see_reclaimed_objects)
{
    static struct gp_scene g;
    memset(&g, 0, sizeof g);
    ng_qsbr_init(&g.shared);
    static ng_tstate wts;
    ng_qsbr_slot *writer = new_slot(&g.shared, &wts);
    REQUIRE(writer != NULL);
    struct gp_obj *first = malloc(sizeof *first);
    *first = (struct gp_obj){OBJ_ALIVE, 1};
    ng_atomic_store(&g.current, first, NG_RELEASE);
    pthread_t readers[GP_READERS];
    for (int i = 0; i < GP_READERS; i++)
        readers[i] = spawn_thread(gp_reader, &g);
    /* Without this the writer could finish its swaps before a reader is online, and the test
     * would prove nothing (it then fails on reads > 0). */
    bool online = CHECK(WAIT_UNTIL(ng_atomic_load(&g.online, NG_ACQUIRE) == GP_READERS, 10000));

    long swaps = online ? scaled(3000) : 0;
    for (long i = 0; i < swaps; i++) {
        struct gp_obj *fresh = malloc(sizeof *fresh);
        REQUIRE(fresh != NULL);
        fresh->magic = OBJ_ALIVE;
        fresh->serial = (uint64_t)i + 2;
        struct gp_obj *old = ng_atomic_exchange(&g.current, fresh, NG_ACQ_REL);
        uint64_t goal = ng_qsbr_advance(&g.shared);
        if (i & 1) {
            while (!ng_qsbr_poll(writer, goal))
                sched_yield();
        }
        else {
            CHECK_STATUS(ng_qsbr_wait(writer, goal, -1), NG_OK);
        }
        ng_atomic_store(&old->magic, OBJ_DEAD, NG_RELAXED);
        if (i & 1)
            sched_yield(); /* leave the poison visible for a while */
        free(old);
    }
    ng_atomic_store(&g.stop, 1, NG_RELEASE);
    for (int i = 0; i < GP_READERS; i++)
        join_thread(readers[i]);
    CHECK_EQ(g.bad_reads, 0);
    CHECK_GT(g.reads, 0);
    free(g.current);
    drop_slot(writer);
    CHECK_STATUS(ng_qsbr_fini(&g.shared), NG_OK);
}

/* ---- Poll: laggard hint ---------------------------------------------------------------- */

TEST(qsbr_poll_remembers_the_laggard)
{
    ng_qsbr_shared shared;
    ng_qsbr_init(&shared);
    static ng_tstate ts[4];
    ng_qsbr_slot *a = new_slot(&shared, &ts[0]);
    ng_qsbr_slot *b = new_slot(&shared, &ts[1]);
    ng_qsbr_slot *c = new_slot(&shared, &ts[2]);
    ng_qsbr_slot *poller = new_slot(&shared, &ts[3]);
    REQUIRE(a && b && c && poller);
    ng_qsbr_attach(a);
    ng_qsbr_attach(b);
    ng_qsbr_attach(c);

    /* A goal nobody advanced to: rejected without a scan. */
    uint64_t scans = stats_of(&shared).scans;
    CHECK(!ng_qsbr_poll(poller, ng_qsbr_shared_next(&shared)));
    CHECK(stats_of(&shared).scans == scans);

    uint64_t goal = ng_qsbr_advance(&shared);
    ng_qsbr_quiescent_state(a);
    ng_qsbr_quiescent_state(c);
    CHECK(!ng_qsbr_poll(poller, goal)); /* scans, finds b behind */
    CHECK(stats_of(&shared).scans == scans + 1);
    CHECK_PTR_EQ(shared.laggard, b);
    for (int i = 0; i < 100; i++)
        CHECK(!ng_qsbr_poll(poller, goal));
    CHECK(stats_of(&shared).scans == scans + 1); /* the laggard answered, no scan */

    /* b reports, c falls behind on the next goal: one scan finds c. */
    ng_qsbr_quiescent_state(b);
    uint64_t goal2 = ng_qsbr_advance(&shared);
    ng_qsbr_quiescent_state(a);
    ng_qsbr_quiescent_state(b);
    CHECK(ng_qsbr_poll(poller, goal)); /* the old goal: b is no longer behind it */
    CHECK(!ng_qsbr_poll(poller, goal2));
    CHECK_PTR_EQ(shared.laggard, c);
    uint64_t after = stats_of(&shared).scans;
    CHECK(!ng_qsbr_poll(poller, goal2));
    CHECK(stats_of(&shared).scans == after);

    /* The laggard goes offline: the next poll scans and succeeds. */
    ng_qsbr_detach(c);
    CHECK(ng_qsbr_poll(poller, goal2));
    CHECK(stats_of(&shared).scans == after + 1);
    CHECK(ng_qsbr_goal_reached(poller, goal2));

    /* Slots that report one after the other: each failing poll blames the one still behind,
     * and only when all reported does a poll succeed. */
    uint64_t goal3 = ng_qsbr_advance(&shared);
    CHECK(!ng_qsbr_poll(poller, goal3));
    ng_qsbr_quiescent_state(a);
    CHECK(!ng_qsbr_poll(poller, goal3));
    ng_qsbr_quiescent_state(b);
    CHECK(ng_qsbr_poll(poller, goal3));

    drop_slot(a);
    drop_slot(b);
    drop_slot(c);
    drop_slot(poller);
    CHECK_STATUS(ng_qsbr_fini(&shared), NG_OK);
}

/* ---- Stall detector --------------------------------------------------------------------- */

#define STALL_THRESHOLD_NS (20 * NG_NS_PER_MS)

struct stall_log {
    int calls;
    ng_qsbr_stall last;
    int64_t at_ns;
};

static void record_stall(void *arg, const ng_qsbr_stall *stall)
{
    struct stall_log *log = arg;
    log->last = *stall;
    log->at_ns = now_ns();
    ng_atomic_fetch_add(&log->calls, 1, NG_RELAXED);
}

/* Polls `goal` every millisecond until the log has `calls` reports or PATIENCE_MS passes;
 * returns when the first poll failed. */
static int64_t poll_until_reports(ng_qsbr_slot *poller, uint64_t goal, struct stall_log *log,
                                  int calls)
{
    int64_t first = now_ns();
    CHECK(!ng_qsbr_poll(poller, goal));
    CHECK(WAIT_UNTIL((ng_qsbr_poll(poller, goal), log->calls >= calls), PATIENCE_MS));
    return first;
}

TEST(qsbr_stall_detector_reports_once_per_slot_and_seq)
{
    ng_qsbr_shared shared;
    ng_qsbr_init(&shared);
    static ng_tstate ts[2];
    ts[0].thread_id = 4242;
    ts[0].id = 7;
    ts[0].delayed.bytes = 4096;
    ng_qsbr_slot *stuck = new_slot(&shared, &ts[0]);
    ng_qsbr_slot *poller = new_slot(&shared, &ts[1]);
    REQUIRE(stuck && poller);
    struct stall_log log = {0};
    ng_qsbr_set_stall_handler(&shared, STALL_THRESHOLD_NS, record_stall, &log);

    ng_qsbr_attach(stuck);
    uint64_t stuck_seq = ng_atomic_load(&stuck->seq, NG_RELAXED);
    uint64_t goal = ng_qsbr_advance(&shared);
    int64_t first_poll = poll_until_reports(poller, goal, &log, 1);
    REQUIRE(CHECK_EQ(log.calls, 1));
    CHECK_GE(log.at_ns - first_poll, STALL_THRESHOLD_NS); /* never before the threshold */
    CHECK(log.last.goal == goal);
    CHECK_EQ(log.last.slot_index, stuck->index);
    CHECK(log.last.attached);
    CHECK_GE(log.last.behind_ns, STALL_THRESHOLD_NS);
    CHECK(log.last.thread_id == 4242);
    CHECK(log.last.tstate_id == 7);
    CHECK(log.last.pending_bytes == 4096);
    ng_qsbr_stats st = stats_of(&shared);
    CHECK(st.stalls_reported == 1);
    CHECK_EQ(st.last_stall.slot_index, stuck->index);
    CHECK(st.last_stall.goal == goal);

    /* Same slot, same seq: never again, however long it stays behind, even for a newer
     * goal. */
    uint64_t goal2 = ng_qsbr_advance(&shared);
    int64_t until = now_ns() + 3 * STALL_THRESHOLD_NS;
    while (now_ns() < until) {
        CHECK(!ng_qsbr_poll(poller, goal));
        CHECK(!ng_qsbr_poll(poller, goal2));
        sleep_ms(1);
    }
    CHECK_EQ(log.calls, 1);
    CHECK(ng_atomic_load(&stuck->seq, NG_RELAXED) == stuck_seq);

    /* It moves on, then stalls at its new seq: a new report. */
    ng_qsbr_quiescent_state(stuck);
    CHECK(ng_qsbr_poll(poller, goal2));
    uint64_t goal3 = ng_qsbr_advance(&shared);
    poll_until_reports(poller, goal3, &log, 2);
    CHECK_EQ(log.calls, 2);
    CHECK(log.last.goal == goal3);

    /* Off: no more reports. */
    ng_qsbr_set_stall_handler(&shared, 0, NULL, NULL);
    ng_qsbr_quiescent_state(stuck);
    uint64_t goal4 = ng_qsbr_advance(&shared);
    until = now_ns() + 2 * STALL_THRESHOLD_NS;
    while (now_ns() < until) {
        CHECK(!ng_qsbr_poll(poller, goal4));
        sleep_ms(1);
    }
    CHECK_EQ(log.calls, 2);
    CHECK(stats_of(&shared).stalls_reported == 2);

    drop_slot(stuck);
    drop_slot(poller);
    CHECK_STATUS(ng_qsbr_fini(&shared), NG_OK);
}

/* ---- Memory-aware goals (spec R5) -------------------------------------------------------- */

/* Expects `goal` to be a forced advance: the new write sequence, one step past `before`, with
 * should_process set (then cleared, as the owner's processing would). */
static void check_advanced(ng_qsbr_slot *slot, uint64_t before, uint64_t goal, const char *what)
{
    uint64_t now = ng_qsbr_shared_current(slot->shared);
    if (now != before + NG_QSBR_INCR || goal != now || slot->should_process != 1)
        harness_fail(__FILE__, __LINE__, "%s: no forced advance (wr %llu -> %llu, goal %llu, "
                     "should_process %d)", what, (unsigned long long)before,
                     (unsigned long long)now, (unsigned long long)goal, slot->should_process);
    slot->should_process = 0;
}

static void check_deferred(ng_qsbr_slot *slot, uint64_t before, uint64_t goal, const char *what)
{
    uint64_t now = ng_qsbr_shared_current(slot->shared);
    if (now != before || goal != before + NG_QSBR_INCR || slot->should_process != 0)
        harness_fail(__FILE__, __LINE__, "%s: advanced or wrong goal (wr %llu -> %llu, goal "
                     "%llu, should_process %d)", what, (unsigned long long)before,
                     (unsigned long long)now, (unsigned long long)goal, slot->should_process);
}

TEST(qsbr_memory_aware_goals)
{
    ng_qsbr_shared shared;
    ng_qsbr_init(&shared);
    /* CPython 3.14's thresholds, whatever the build's default item limit. */
    ng_qsbr_set_limits(&shared, NG_QSBR_DEFAULT_ITEM_LIMIT, 0, 0);
    CHECK_EQ(shared.item_limit, 127);
    CHECK(shared.mem_limit == 1024 * 1024);
    CHECK(shared.page_mem_limit == 4096 * 20);
    static ng_tstate ts;
    ng_qsbr_slot *s = new_slot(&shared, &ts);
    REQUIRE(s != NULL);
    uint64_t wr;

    /* One block over 1 MiB. */
    wr = ng_qsbr_shared_current(&shared);
    check_advanced(s, wr, ng_qsbr_goal_for_free(s, 1024 * 1024 + 1), "1 MiB + 1");
    /* Exactly 1 MiB is not "over". */
    wr = ng_qsbr_shared_current(&shared);
    check_deferred(s, wr, ng_qsbr_goal_for_free(s, 1024 * 1024), "1 MiB");
    check_advanced(s, wr, ng_qsbr_goal_for_free(s, 1), "1 MiB, then 1 byte");

    /* 127 small frees wait; the 128th advances. Size 0 (unknown) counts as an item. */
    for (int i = 0; i < 127; i++) {
        wr = ng_qsbr_shared_current(&shared);
        check_deferred(s, wr, ng_qsbr_goal_for_free(s, i % 2 ? 8 : 0), "small free");
    }
    check_advanced(s, wr, ng_qsbr_goal_for_free(s, 8), "128th small free");
    CHECK_EQ(s->deferred_count, 0);

    /* Cumulative: 16 x 64 KiB = 1 MiB waits, the 17th crosses it. */
    for (int i = 0; i < 16; i++) {
        wr = ng_qsbr_shared_current(&shared);
        check_deferred(s, wr, ng_qsbr_goal_for_free(s, 64 * 1024), "64 KiB free");
    }
    check_advanced(s, wr, ng_qsbr_goal_for_free(s, 64 * 1024), "17th 64 KiB free");
    CHECK(s->deferred_memory == 0);

    /* Pages: 20 x 4 KiB = 80 KiB waits, the 21st crosses; one page over 80 KiB advances. */
    for (int i = 0; i < 20; i++) {
        wr = ng_qsbr_shared_current(&shared);
        check_deferred(s, wr, ng_qsbr_goal_for_page(s, 4096), "4 KiB page");
    }
    check_advanced(s, wr, ng_qsbr_goal_for_page(s, 4096), "21st 4 KiB page");
    wr = ng_qsbr_shared_current(&shared);
    check_advanced(s, wr, ng_qsbr_goal_for_page(s, 4096 * 20 + 1), "80 KiB + 1 page");

    /* Tunables: 0 keeps a value; small limits advance sooner. */
    ng_qsbr_set_limits(&shared, 2, 0, 100);
    CHECK_EQ(shared.item_limit, 2);
    CHECK(shared.mem_limit == 1024 * 1024);
    CHECK(shared.page_mem_limit == 100);
    wr = ng_qsbr_shared_current(&shared);
    check_deferred(s, wr, ng_qsbr_goal_for_free(s, 1), "item 1 of limit 2");
    check_deferred(s, wr, ng_qsbr_goal_for_free(s, 1), "item 2 of limit 2");
    check_advanced(s, wr, ng_qsbr_goal_for_free(s, 1), "item 3 of limit 2");
    wr = ng_qsbr_shared_current(&shared);
    check_advanced(s, wr, ng_qsbr_goal_for_page(s, 101), "page over 100 bytes");
    /* Huge sizes saturate rather than wrap the byte counter. */
    ng_qsbr_set_limits(&shared, 1000, UINT64_MAX, 0);
    wr = ng_qsbr_shared_current(&shared);
    check_deferred(s, wr, ng_qsbr_goal_for_free(s, SIZE_MAX), "SIZE_MAX bytes");
    check_deferred(s, wr, ng_qsbr_goal_for_free(s, SIZE_MAX), "SIZE_MAX bytes again");
    CHECK(s->deferred_memory == UINT64_MAX);

    drop_slot(s);
    CHECK_STATUS(ng_qsbr_fini(&shared), NG_OK);
}

/* ---- Fork ------------------------------------------------------------------------------- */

enum {
    QFORK_MUTEX = 1 << 0,
    QFORK_SURVIVOR = 1 << 1,
    QFORK_DEAD_SLOTS = 1 << 2,
    QFORK_GOAL = 1 << 3,
    QFORK_REUSE = 1 << 4,
};

static const char *const qfork_names[] = {
    "the mutex held by a dead thread was not reset",
    "the survivor's slot lost its owner or its allocation",
    "dead threads' slots were not freed (allocated, owner, online seq, or count)",
    "a dead thread's online slot still holds back grace periods",
    "reserving after the fork grew the space or did not reuse the freed slots",
};

struct qfork_scene {
    ng_qsbr_shared shared;
    ng_qsbr_slot *survivor, *dead_online, *dead_reserved, *dead_registered;
    ng_tstate ts[4];
    int holder_ready;
    int release_holder;
};

/* A thread that is online in its slot and holds the QSBR mutex when the fork happens. */
static void *qfork_holder(void *p)
{
    struct qfork_scene *s = p;
    ng_qsbr_attach(s->dead_online);
    ng_mutex_lock(&s->shared.mutex);
    ng_atomic_store(&s->holder_ready, 1, NG_RELEASE);
    SPIN_UNTIL(ng_atomic_load(&s->release_holder, NG_ACQUIRE));
    ng_mutex_unlock(&s->shared.mutex);
    ng_qsbr_detach(s->dead_online);
    return NULL;
}

static bool qfork_is_dead_slot(struct qfork_scene *s, ng_qsbr_slot *slot)
{
    return slot == s->dead_online || slot == s->dead_reserved || slot == s->dead_registered;
}

/* Runs in the child: no test macros, failures go to the exit status. */
static int qfork_child(struct qfork_scene *s, uint32_t capacity_before)
{
    int failed = 0;
    ng_qsbr_after_fork(&s->shared, s->survivor);

    if (ng_atomic_load(&s->shared.mutex.bits, NG_RELAXED) != 0)
        failed |= QFORK_MUTEX;
    if (!s->survivor->allocated || s->survivor->tstate != &s->ts[0] ||
        s->survivor->seq == NG_QSBR_OFFLINE)
        failed |= QFORK_SURVIVOR;
    ng_qsbr_slot *dead[] = {s->dead_online, s->dead_reserved, s->dead_registered};
    for (int i = 0; i < 3; i++)
        if (dead[i]->allocated || dead[i]->tstate != NULL || dead[i]->seq != NG_QSBR_OFFLINE)
            failed |= QFORK_DEAD_SLOTS;
    ng_qsbr_stats st;
    ng_qsbr_get_stats(&s->shared, &st);
    if (st.registered != 1)
        failed |= QFORK_DEAD_SLOTS;

    /* The dead thread was online at an old seq; only the survivor counts now. */
    uint64_t goal = ng_qsbr_advance(&s->shared);
    ng_qsbr_quiescent_state(s->survivor);
    if (!ng_qsbr_poll(s->survivor, goal))
        failed |= QFORK_GOAL;

    for (int i = 0; i < 3; i++) {
        ng_qsbr_slot *slot = NULL;
        if (ng_qsbr_reserve(&s->shared, &slot) != NG_OK || !qfork_is_dead_slot(s, slot))
            failed |= QFORK_REUSE;
    }
    ng_qsbr_get_stats(&s->shared, &st);
    if (st.capacity != capacity_before || st.registered != 4)
        failed |= QFORK_REUSE;
    return failed;
}

TEST(qsbr_after_fork_keeps_only_the_survivor)
{
    static struct qfork_scene s;
    memset(&s, 0, sizeof s);
    ng_qsbr_init(&s.shared);
    s.survivor = new_slot(&s.shared, &s.ts[0]);
    s.dead_online = new_slot(&s.shared, &s.ts[1]);
    s.dead_registered = new_slot(&s.shared, &s.ts[2]);
    REQUIRE(s.survivor && s.dead_online && s.dead_registered);
    REQUIRE(CHECK_STATUS(ng_qsbr_reserve(&s.shared, &s.dead_reserved), NG_OK));
    ng_qsbr_slot *spare = NULL; /* on the freelist at fork time */
    REQUIRE(CHECK_STATUS(ng_qsbr_reserve(&s.shared, &spare), NG_OK));
    CHECK_STATUS(ng_qsbr_unreserve(spare), NG_OK);
    ng_qsbr_attach(s.survivor);
    uint32_t capacity = stats_of(&s.shared).capacity;

    pthread_t holder = spawn_thread(qfork_holder, &s);
    SPIN_UNTIL(ng_atomic_load(&s.holder_ready, NG_ACQUIRE));
    pid_t pid = fork();
    if (pid == 0) {
        alarm(20);
        _exit(qfork_child(&s, capacity));
    }
    CHECK_GT(pid, 0);
    if (pid > 0) {
        int status = wait_child(pid, 60000);
        if (status == -1 || !WIFEXITED(status))
            harness_fail(__FILE__, __LINE__, "fork child hung or died (status %d)", status);
        else
            for (int bit = 0; bit < (int)(sizeof qfork_names / sizeof qfork_names[0]); bit++)
                if (WEXITSTATUS(status) & (1 << bit))
                    harness_fail(__FILE__, __LINE__, "fork child: %s", qfork_names[bit]);
    }
    ng_atomic_store(&s.release_holder, 1, NG_RELEASE);
    join_thread(holder);

    /* The parent is untouched by the child's reset. */
    CHECK_EQ(stats_of(&s.shared).registered, 4);
    CHECK_EQ(s.dead_online->allocated, 1);
    ng_qsbr_detach(s.survivor);
    drop_slot(s.survivor);
    drop_slot(s.dead_online);
    drop_slot(s.dead_registered);
    CHECK_STATUS(ng_qsbr_unreserve(s.dead_reserved), NG_OK);
    CHECK_STATUS(ng_qsbr_fini(&s.shared), NG_OK);
}

/* ---- Pinned slots --------------------------------------------------------------------- */

/* A slot given back while pinned is retained: offline (and so never equal to a write sequence,
 * which is odd, also across the wrap), skipped by scans, not handed out, not counted as
 * registered, and blocking fini; the last unpin frees it. A pin without a give-back just
 * goes. */
TEST(qsbr_pinned_slot_is_retained_until_unpinned)
{
    ng_qsbr_shared shared;
    ng_tstate ts[3];
    memset(ts, 0, sizeof ts);
    REQUIRE(CHECK_STATUS(ng_qsbr_init(&shared), NG_OK));
    ng_qsbr_slot *a = new_slot(&shared, &ts[0]);
    ng_qsbr_slot *b = new_slot(&shared, &ts[1]);
    REQUIRE(a != NULL && b != NULL);
    CHECK_STATUS(ng_qsbr_pin(NULL), NG_EINVAL);
    CHECK_STATUS(ng_qsbr_unpin(NULL), NG_EINVAL);
    CHECK_STATUS(ng_qsbr_unpin(a), NG_ESTATE); /* not pinned */
    CHECK_STATUS(ng_qsbr_pin(a), NG_OK);
    CHECK_STATUS(ng_qsbr_pin(a), NG_OK); /* pins count */
    ng_qsbr_attach(a);
    CHECK_EQ(ng_atomic_load(&a->seq, NG_RELAXED), ng_qsbr_shared_current(&shared));
    ng_qsbr_detach(a);
    CHECK_STATUS(ng_qsbr_unregister(a), NG_OK);
    CHECK_EQ(a->allocated, 1);
    CHECK_EQ(a->retained, 1);
    CHECK_PTR_EQ(a->tstate, NULL);
    CHECK_EQ(ng_atomic_load(&a->seq, NG_RELAXED), NG_QSBR_OFFLINE);
    ng_qsbr_stats st = stats_of(&shared);
    CHECK_EQ(st.registered, 1);
    CHECK_EQ(st.retained, 1);
    CHECK_STATUS(ng_qsbr_unregister(a), NG_ESTATE); /* no owner any more */
    CHECK_STATUS(ng_qsbr_unreserve(a), NG_ESTATE);
    CHECK_STATUS(ng_qsbr_register(a, &ts[2]), NG_ESTATE);
    CHECK_STATUS(ng_qsbr_pin(a), NG_ESTATE);

    /* Not handed out: a new owner gets fresh space, and its online seq is its own. */
    ng_qsbr_slot *c = new_slot(&shared, &ts[2]);
    REQUIRE(c != NULL);
    CHECK(c != a);
    ng_qsbr_attach(b);
    ng_qsbr_attach(c);
    /* Skipped by scans; its seq never equals the write sequence, across the wrap too (the
     * torture build starts 1000 advances before it). */
    for (int i = 0; i < 1100; i++) {
        uint64_t goal = ng_qsbr_advance(&shared);
        ng_qsbr_quiescent_state(b);
        ng_qsbr_quiescent_state(c);
        if (!CHECK(ng_qsbr_poll(b, goal)))
            break;
        if (!CHECK(ng_atomic_load(&a->seq, NG_RELAXED) != ng_qsbr_shared_current(&shared)))
            break;
    }
    CHECK_STATUS(ng_qsbr_fini(&shared), NG_EBUSY);

    CHECK_STATUS(ng_qsbr_unpin(a), NG_OK);
    CHECK_EQ(a->retained, 1); /* one pin left */
    CHECK_STATUS(ng_qsbr_unpin(a), NG_OK);
    CHECK_EQ(a->allocated, 0);
    CHECK_EQ(a->retained, 0);
    st = stats_of(&shared);
    CHECK_EQ(st.registered, 2);
    CHECK_EQ(st.retained, 0);
    CHECK_STATUS(ng_qsbr_unpin(a), NG_ESTATE);

    /* Freed: the next owner gets it. A pin of a live slot just goes; a reserved slot given
     * back while pinned is retained too. */
    ng_qsbr_slot *d = NULL;
    REQUIRE(CHECK_STATUS(ng_qsbr_reserve(&shared, &d), NG_OK));
    CHECK_PTR_EQ(d, a);
    CHECK_STATUS(ng_qsbr_pin(d), NG_OK);
    CHECK_STATUS(ng_qsbr_unreserve(d), NG_OK);
    CHECK_EQ(d->retained, 1);
    CHECK_EQ(stats_of(&shared).retained, 1);
    CHECK_STATUS(ng_qsbr_unpin(d), NG_OK);
    CHECK_STATUS(ng_qsbr_pin(b), NG_OK);
    CHECK_STATUS(ng_qsbr_unpin(b), NG_OK);
    ng_qsbr_detach(b);
    ng_qsbr_detach(c);
    drop_slot(b);
    drop_slot(c);
    CHECK_EQ(b->allocated, 0);
    st = stats_of(&shared);
    CHECK_EQ(st.registered, 0);
    CHECK_EQ(st.retained, 0);
    CHECK_STATUS(ng_qsbr_fini(&shared), NG_OK);
}

/* Child of fork(): a dead thread's pinned slot is retained, not freed, even if it was online;
 * a slot retained before the fork stays so; the others are freed as usual. */
enum {
    QPIN_SURVIVOR = 1 << 0,
    QPIN_DEAD_PINNED = 1 << 1,
    QPIN_RETAINED = 1 << 2,
    QPIN_DEAD_FREED = 1 << 3,
    QPIN_COUNTS = 1 << 4,
    QPIN_REUSE = 1 << 5,
};

static const char *const qpin_names[] = {
    "the survivor's slot lost its owner or its allocation",
    "a dead thread's pinned slot was not retained offline",
    "a slot retained before the fork changed",
    "a dead thread's unpinned slot was not freed",
    "registered/retained counts are wrong",
    "a reservation got a retained slot",
    NULL,
};

struct qpin_scene {
    ng_qsbr_shared shared;
    ng_qsbr_slot *survivor, *dead_pinned, *retained, *dead;
    ng_tstate ts[4];
};

static int qpin_child(void *arg)
{
    struct qpin_scene *s = arg;
    int failed = 0;
    ng_qsbr_after_fork(&s->shared, s->survivor);
    if (!s->survivor->allocated || s->survivor->tstate != &s->ts[0])
        failed |= QPIN_SURVIVOR;
    if (!s->dead_pinned->allocated || !s->dead_pinned->retained ||
        s->dead_pinned->tstate != NULL || s->dead_pinned->seq != NG_QSBR_OFFLINE)
        failed |= QPIN_DEAD_PINNED;
    if (!s->retained->allocated || !s->retained->retained || s->retained->pins != 1)
        failed |= QPIN_RETAINED;
    if (s->dead->allocated)
        failed |= QPIN_DEAD_FREED;
    ng_qsbr_stats st;
    ng_qsbr_get_stats(&s->shared, &st);
    if (st.registered != 1 || st.retained != 2)
        failed |= QPIN_COUNTS;
    for (int i = 0; i < 4; i++) {
        ng_qsbr_slot *slot = NULL;
        if (ng_qsbr_reserve(&s->shared, &slot) != NG_OK || slot == s->dead_pinned ||
            slot == s->retained)
            failed |= QPIN_REUSE;
    }
    return failed;
}

TEST(qsbr_after_fork_retains_pinned_slots)
{
    static struct qpin_scene s;
    memset(&s, 0, sizeof s);
    ng_qsbr_init(&s.shared);
    s.survivor = new_slot(&s.shared, &s.ts[0]);
    s.dead_pinned = new_slot(&s.shared, &s.ts[1]);
    s.retained = new_slot(&s.shared, &s.ts[2]);
    s.dead = new_slot(&s.shared, &s.ts[3]);
    REQUIRE(s.survivor && s.dead_pinned && s.retained && s.dead);
    CHECK_STATUS(ng_qsbr_pin(s.dead_pinned), NG_OK);
    CHECK_STATUS(ng_qsbr_pin(s.retained), NG_OK);
    CHECK_STATUS(ng_qsbr_unregister(s.retained), NG_OK);
    ng_qsbr_attach(s.survivor);
    ng_qsbr_attach(s.dead_pinned); /* online when the fork happens */
    pid_t pid = fork_checks(qpin_child, &s);
    if (CHECK_GT(pid, 0))
        check_child(pid, qpin_names, "fork with pinned slots");
    ng_qsbr_detach(s.survivor);
    ng_qsbr_detach(s.dead_pinned);
    drop_slot(s.survivor);
    drop_slot(s.dead_pinned);
    drop_slot(s.dead);
    CHECK_STATUS(ng_qsbr_unpin(s.dead_pinned), NG_OK);
    CHECK_STATUS(ng_qsbr_unpin(s.retained), NG_OK);
    ng_qsbr_stats st = stats_of(&s.shared);
    CHECK_EQ(st.registered, 0);
    CHECK_EQ(st.retained, 0);
    CHECK_STATUS(ng_qsbr_fini(&s.shared), NG_OK);
}

/* The thread-state layer's pin (the Go wrapper's): a released state's slot stays offline and
 * out of use, and the deleted interpreter's memory (the write sequence, the slot segments)
 * stays readable, until the unpin, whose last reference quarantines it. Under ASan a read of
 * freed or quarantined memory here would be reported. */
TEST(tstate_pinned_slot_outlives_release_and_deletion)
{
    ng_interp *in = NULL;
    REQUIRE(CHECK_STATUS(ng_interp_new(&in), NG_OK));
    ng_tstate *ts = NULL;
    REQUIRE(CHECK_STATUS(ng_tstate_new(in, &ts), NG_OK));
    ng_qsbr_slot *slot = NULL;
    CHECK_STATUS(ng_tstate_pin_slot(NULL, &slot), NG_EINVAL);
    CHECK_STATUS(ng_tstate_pin_slot(ts, NULL), NG_EINVAL);
    REQUIRE(CHECK_STATUS(ng_tstate_pin_slot(ts, &slot), NG_OK));
    CHECK_PTR_EQ(slot, ts->qsbr);
    uint64_t *wr = &in->qsbr.wr_seq;
    CHECK_STATUS(ng_tstate_attach(ts), NG_OK);
    ng_qsbr_quiescent_state(slot);
    CHECK_EQ(ng_atomic_load(&slot->seq, NG_SEQ_CST), ng_atomic_load(wr, NG_SEQ_CST));
    CHECK_STATUS(ng_tstate_release(ts), NG_OK);
    CHECK_EQ(ng_atomic_load(&slot->seq, NG_SEQ_CST), NG_QSBR_OFFLINE);
    ng_interp_stats st;
    ng_interp_get_stats(in, &st);
    CHECK_EQ(st.qsbr.registered, 0);
    CHECK_EQ(st.qsbr.retained, 1);

    /* Another state of the interpreter gets another slot. */
    ng_tstate *other = NULL;
    REQUIRE(CHECK_STATUS(ng_tstate_new(in, &other), NG_OK));
    CHECK(other->qsbr != slot);
    CHECK_STATUS(ng_tstate_attach(other), NG_OK);
    CHECK(ng_atomic_load(&slot->seq, NG_SEQ_CST) != ng_atomic_load(wr, NG_SEQ_CST));
    CHECK_STATUS(ng_tstate_release(other), NG_OK);

    /* Deleted: the teardown runs, the memory stays for the pin. */
    uint64_t frees = ng_atomic_load(&ng_test_interp_frees, NG_SEQ_CST);
    CHECK_STATUS(ng_interp_delete(in), NG_OK);
    CHECK_EQ(ng_atomic_load(&ng_test_interp_frees, NG_SEQ_CST), frees);
    CHECK_EQ(ng_interp_check_live(in), NG_ERELEASED);
    CHECK_EQ(ng_atomic_load(&slot->seq, NG_SEQ_CST), NG_QSBR_OFFLINE);
    CHECK(ng_atomic_load(wr, NG_SEQ_CST) % 2 == 1);
    ng_tstate_unpin_slot(slot);
    CHECK_EQ(ng_atomic_load(&ng_test_interp_frees, NG_SEQ_CST), frees + 1);

    /* A pin dropped before the release: the release frees the slot itself. */
    REQUIRE(CHECK_STATUS(ng_interp_new(&in), NG_OK));
    REQUIRE(CHECK_STATUS(ng_tstate_new(in, &ts), NG_OK));
    REQUIRE(CHECK_STATUS(ng_tstate_pin_slot(ts, &slot), NG_OK));
    ng_tstate_unpin_slot(slot);
    CHECK_STATUS(ng_tstate_release(ts), NG_OK);
    ng_interp_get_stats(in, &st);
    CHECK_EQ(st.qsbr.registered, 0);
    CHECK_EQ(st.qsbr.retained, 0);
    frees = ng_atomic_load(&ng_test_interp_frees, NG_SEQ_CST);
    CHECK_STATUS(ng_interp_delete(in), NG_OK);
    CHECK_EQ(ng_atomic_load(&ng_test_interp_frees, NG_SEQ_CST), frees + 1);
}

/* ---- Waiting for a goal ------------------------------------------------------------------ */

TEST(qsbr_wait_statuses)
{
    ng_qsbr_shared shared;
    ng_qsbr_init(&shared);
    static ng_tstate ts[2];
    ng_qsbr_slot *reader = new_slot(&shared, &ts[0]);
    ng_qsbr_slot *waiter = new_slot(&shared, &ts[1]);
    REQUIRE(reader && waiter);
    CHECK_STATUS(ng_qsbr_wait(NULL, 1, 0), NG_EINVAL);

    uint64_t goal = ng_qsbr_advance(&shared);
    CHECK_STATUS(ng_qsbr_wait(waiter, goal, 0), NG_OK); /* nobody online */

    /* The waiter's own slot online behind the goal would wait for itself. */
    ng_qsbr_attach(waiter);
    goal = ng_qsbr_advance(&shared);
    CHECK_STATUS(ng_qsbr_wait(waiter, goal, -1), NG_ESTATE);
    ng_qsbr_quiescent_state(waiter); /* at the goal now: fine */
    CHECK_STATUS(ng_qsbr_wait(waiter, goal, -1), NG_OK);
    ng_qsbr_detach(waiter);

    /* A reader that never reports: the timeout, not before it. */
    ng_qsbr_attach(reader);
    goal = ng_qsbr_advance(&shared);
    int64_t start = now_ns();
    CHECK_STATUS(ng_qsbr_wait(waiter, goal, 20 * NG_NS_PER_MS), NG_TIMEOUT);
    CHECK_GE(now_ns() - start, 20 * NG_NS_PER_MS);
    CHECK_EQ(shared.waiters, 0);
    drop_slot(reader);
    drop_slot(waiter);
    CHECK_STATUS(ng_qsbr_fini(&shared), NG_OK);
}

/* A goal from ng_qsbr_shared_next (or a non-advancing ng_qsbr_goal_for_free) lies past the
 * write sequence until someone advances. A waiter must not depend on somebody else doing it:
 * an advance wakes nobody, so with every other slot offline it would sleep through its whole
 * re-poll interval after each advance, and without one it would never return at all. */
TEST(qsbr_wait_for_an_unadvanced_goal_returns)
{
    ng_qsbr_shared shared;
    ng_qsbr_init(&shared);
    static ng_tstate ts[2];
    ng_qsbr_slot *waiter = new_slot(&shared, &ts[0]);
    ng_qsbr_slot *freer = new_slot(&shared, &ts[1]);
    REQUIRE(waiter && freer);
    ng_test_qsbr_wait_slice_ns = 600 * NG_NS_PER_SEC;
    uint64_t goal = ng_qsbr_shared_next(&shared);
    CHECK_STATUS(ng_qsbr_wait(waiter, goal, 200 * NG_NS_PER_MS), NG_OK);
    CHECK(ng_qsbr_poll(waiter, goal));

    /* The same through the memory-aware goal of a small free (no advance of its own). */
    ng_qsbr_attach(freer);
    uint64_t before = ng_atomic_load(&shared.wr_seq, NG_RELAXED);
    goal = ng_qsbr_goal_for_free(freer, 16);
    CHECK_EQ(ng_atomic_load(&shared.wr_seq, NG_RELAXED), before);
    ng_qsbr_detach(freer);
    CHECK_STATUS(ng_qsbr_wait(waiter, goal, 200 * NG_NS_PER_MS), NG_OK);
    CHECK_EQ(shared.waiters, 0);
    ng_test_qsbr_wait_slice_ns = 0;
    drop_slot(freer);
    drop_slot(waiter);
    CHECK_STATUS(ng_qsbr_fini(&shared), NG_OK);
}

struct wait_scene {
    ng_qsbr_shared shared;
    ng_qsbr_slot *waiter;
    uint64_t goal;
    int result;
    int done;
};

static void *wait_thread(void *p)
{
    struct wait_scene *w = p;
    ng_atomic_store(&w->result, ng_qsbr_wait(w->waiter, w->goal, -1), NG_RELAXED);
    ng_atomic_store(&w->done, 1, NG_RELEASE);
    return NULL;
}

/* Starts a waiter for a new goal and waits until it sleeps. */
static pthread_t start_waiter(struct wait_scene *w)
{
    w->goal = ng_qsbr_advance(&w->shared);
    ng_atomic_store(&w->done, 0, NG_RELAXED);
    pthread_t t = spawn_thread(wait_thread, w);
    CHECK(WAIT_UNTIL(ng_parking_lot_waiters(&w->shared.wake_seq) == 1, PATIENCE_MS));
    CHECK(!ng_atomic_load(&w->done, NG_ACQUIRE));
    return t;
}

/* Finishes a waiter; if no wake-up came, wakes it by hand so that it can be joined. */
static void finish_waiter(struct wait_scene *w, pthread_t t, const char *what)
{
    if (!WAIT_UNTIL(ng_atomic_load(&w->done, NG_ACQUIRE), PATIENCE_MS)) {
        harness_fail(__FILE__, __LINE__, "%s did not wake the waiter", what);
        while (!ng_atomic_load(&w->done, NG_ACQUIRE)) {
            ng_qsbr_wake_waiters(&w->shared);
            sleep_ms(1);
        }
    }
    join_thread(t);
    CHECK_STATUS(w->result, NG_OK);
}

/* With the periodic re-poll made longer than the test's patience, only a wake-up from the
 * report (or the detach) that ends the grace period can return the waiter in time. */
TEST(qsbr_wait_is_woken_by_report_and_by_detach)
{
    static struct wait_scene w;
    memset(&w, 0, sizeof w);
    ng_qsbr_init(&w.shared);
    static ng_tstate ts[2];
    ng_qsbr_slot *reader = new_slot(&w.shared, &ts[0]);
    w.waiter = new_slot(&w.shared, &ts[1]);
    REQUIRE(reader && w.waiter);
    ng_test_qsbr_wait_slice_ns = 600 * NG_NS_PER_SEC;

    ng_qsbr_attach(reader);
    pthread_t t = start_waiter(&w);
    uint32_t wakes = ng_atomic_load(&w.shared.wake_seq, NG_RELAXED);
    ng_qsbr_quiescent_state(reader);
    CHECK_NE(ng_atomic_load(&w.shared.wake_seq, NG_RELAXED), wakes);
    finish_waiter(&w, t, "a quiescent report");

    /* A report with nothing new (already at the current seq) wakes nobody and costs no
     * fence; going offline ends the next grace period and wakes. */
    t = start_waiter(&w);
    wakes = ng_atomic_load(&w.shared.wake_seq, NG_RELAXED);
    ng_qsbr_slot *idle = new_slot(&w.shared, &ts[0]);
    REQUIRE(idle != NULL);
    ng_qsbr_attach(idle);
    ng_qsbr_quiescent_state(idle); /* already current: skipped */
    CHECK_EQ(ng_atomic_load(&w.shared.wake_seq, NG_RELAXED), wakes);
    ng_qsbr_detach(idle);          /* an offline slot that was not behind: a harmless wake */
    drop_slot(idle);
    ng_qsbr_detach(reader);
    finish_waiter(&w, t, "a detach");

    ng_test_qsbr_wait_slice_ns = 0;
    drop_slot(reader);
    drop_slot(w.waiter);
    CHECK_STATUS(ng_qsbr_fini(&w.shared), NG_OK);
}

struct wake_race {
    ng_qsbr_shared shared;
    int stop;
    int online;
    long sleeps; /* waits that went to sleep at least once */
};

static void *wake_race_reader(void *p)
{
    struct wake_race *r = p;
    static ng_tstate ts;
    ng_qsbr_slot *slot = new_slot(&r->shared, &ts);
    if (slot == NULL)
        return NULL;
    uint64_t rng = 0x9e3779b97f4a7c15;
    ng_qsbr_attach(slot);
    ng_atomic_store(&r->online, 1, NG_RELEASE);
    while (!ng_atomic_load(&r->stop, NG_ACQUIRE)) {
        ng_qsbr_quiescent_state(slot);
        uint64_t x = rng_next(&rng);
        /* Reports 0-8 us apart: around the waiter's 2 us of spinning, so that it often goes
         * to sleep just as a report comes. */
        int64_t until = now_ns() + (int64_t)(x & 8191);
        while (now_ns() < until)
            ng_cpu_relax();
    }
    ng_qsbr_detach(slot);
    drop_slot(slot);
    return NULL;
}

/* A report racing with a waiter going to sleep must never be lost: each grace period needs
 * exactly one report from the reader, so a lost wake-up leaves the waiter asleep for the whole
 * (lengthened) re-poll interval and the wait times out. (The reader stays online: offline, it
 * would let grace periods pass without any race; detach's wake-up is tested above.) */
TEST(qsbr_wait_never_loses_a_wake_up)
{
    static struct wake_race r;
    memset(&r, 0, sizeof r);
    ng_qsbr_init(&r.shared);
    static ng_tstate ts;
    ng_qsbr_slot *waiter = new_slot(&r.shared, &ts);
    REQUIRE(waiter != NULL);
    ng_test_qsbr_wait_slice_ns = 600 * NG_NS_PER_SEC;
    pthread_t reader = spawn_thread(wake_race_reader, &r);
    SPIN_UNTIL(ng_atomic_load(&r.online, NG_ACQUIRE));
    long rounds = scaled(3000), failures = 0, sleeps = 0;
    for (long i = 0; i < rounds && failures < 3; i++) {
        uint64_t goal = ng_qsbr_advance(&r.shared);
        uint32_t wakes = ng_atomic_load(&r.shared.wake_seq, NG_RELAXED);
        int st = ng_qsbr_wait(waiter, goal, 5 * NG_NS_PER_SEC);
        if (!CHECK_STATUS(st, NG_OK))
            failures++;
        sleeps += ng_atomic_load(&r.shared.wake_seq, NG_RELAXED) != wakes;
    }
    ng_atomic_store(&r.stop, 1, NG_RELEASE);
    join_thread(reader);
    /* The race was really run: many waits went as far as counting themselves. */
    CHECK_GE(sleeps, rounds / 10);
    ng_test_qsbr_wait_slice_ns = 0;
    drop_slot(waiter);
    CHECK_STATUS(ng_qsbr_fini(&r.shared), NG_OK);
}

/* Statistics never take the QSBR mutex: a thread that has stopped the world may ask for them
 * while the mutex belongs to a suspended thread (spec R9). Here the caller itself holds it,
 * so a locking implementation would deadlock (and the watchdog would fail the test). */
TEST(qsbr_stats_do_not_need_the_mutex)
{
    ng_qsbr_shared shared;
    memset(&shared, 0, sizeof shared);
    REQUIRE(ng_qsbr_init(&shared) == NG_OK);
    ng_qsbr_slot *slot = NULL;
    REQUIRE(ng_qsbr_reserve(&shared, &slot) == NG_OK);
    ng_mutex_lock(&shared.mutex);
    ng_qsbr_stats st;
    ng_qsbr_get_stats(&shared, &st);
    ng_mutex_unlock(&shared.mutex);
    CHECK_EQ(st.registered, 1);
    CHECK_EQ(st.capacity, NG_QSBR_FIRST_SEGMENT);
    CHECK_STATUS(ng_qsbr_unreserve(slot), NG_OK);
    CHECK_STATUS(ng_qsbr_fini(&shared), NG_OK);
}
