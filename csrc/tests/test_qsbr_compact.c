/* QSBR: a compact slot space. The lowest free slot is handed out first and the scan bound
 * (high_water, reported as scan_slots) drops when the top slots are given back, so that after
 * a burst of threads that exited a scan walks only about as many slots as are in use.
 *
 * The properties: the mark is always one past the highest allocated slot (reserved,
 * registered or retained), checked against a model through random operations; a retained
 * slot holds the mark up until its last unpin; a scan never loses an online slot while other
 * threads make the mark go up and down around it (a thread online at an old sequence holds
 * every goal back, and readers churning through slots never see an object reclaimed under
 * them); a fork child's mark comes down to its survivor and the retained slots.
 */
#define _GNU_SOURCE
#include "harness.h"

#include <stdlib.h>
#include <string.h>

#include "fork_helpers.h"
#include "qsbr_internal.h"

#if defined(__SANITIZE_THREAD__)
#define COMPACT_SLOW 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define COMPACT_SLOW 1
#endif
#endif
#ifndef COMPACT_SLOW
#define COMPACT_SLOW 0
#endif

/* A stand-in owner: registration only needs a non-NULL state. */
static ng_tstate owner;

static uint32_t scan_slots(ng_qsbr_shared *shared)
{
    ng_qsbr_stats st;
    ng_qsbr_get_stats(shared, &st);
    return st.scan_slots;
}

static uint32_t capacity(ng_qsbr_shared *shared)
{
    ng_qsbr_stats st;
    ng_qsbr_get_stats(shared, &st);
    return st.capacity;
}

/* Gives a slot back the way its state requires: unregister if registered, else unreserve. */
static bool give_back(ng_qsbr_slot *slot)
{
    if (slot->tstate != NULL)
        return CHECK_STATUS(ng_qsbr_unregister(slot), NG_OK);
    return CHECK_STATUS(ng_qsbr_unreserve(slot), NG_OK);
}

/* ---- The mark against a model ------------------------------------------------------------ */

#define MODEL_SLOTS 200

/* What the slot space should look like: which indices are allocated (owned or retained). */
struct model {
    ng_qsbr_slot *slot[MODEL_SLOTS]; /* by index; NULL: free */
    bool retained[MODEL_SLOTS];
    uint32_t pins[MODEL_SLOTS];
};

static uint32_t model_mark(const struct model *m)
{
    uint32_t mark = 0;
    for (uint32_t i = 0; i < MODEL_SLOTS; i++)
        if (m->slot[i] != NULL)
            mark = i + 1;
    return mark;
}

static uint32_t model_lowest_free(const struct model *m)
{
    uint32_t i = 0;
    while (i < MODEL_SLOTS && m->slot[i] != NULL)
        i++;
    return i;
}

/* The mark equals the model's, in the struct and in the statistics. */
static bool mark_matches(ng_qsbr_shared *shared, const struct model *m, const char *after)
{
    uint32_t want = model_mark(m);
    uint32_t got = ng_atomic_load(&shared->high_water, NG_RELAXED);
    if (got != want || scan_slots(shared) != want) {
        harness_fail(__FILE__, __LINE__, "after %s: high_water %u, scan_slots %u, want %u", after,
                     got, scan_slots(shared), want);
        return false;
    }
    return true;
}

static bool model_reserve(ng_qsbr_shared *shared, struct model *m, bool register_it)
{
    uint32_t want = model_lowest_free(m);
    ng_qsbr_slot *s = NULL;
    if (!CHECK_STATUS(ng_qsbr_reserve(shared, &s), NG_OK))
        return false;
    if (s->index != want) {
        harness_fail(__FILE__, __LINE__, "reserve handed out slot %u, the lowest free is %u",
                     s->index, want);
        return false;
    }
    if (register_it && !CHECK_STATUS(ng_qsbr_register(s, &owner), NG_OK))
        return false;
    m->slot[s->index] = s;
    return mark_matches(shared, m, "a reservation");
}

/* Gives slot i back (it must be owned): free, or retained if pinned. */
static bool model_give_back(ng_qsbr_shared *shared, struct model *m, uint32_t i)
{
    if (!give_back(m->slot[i]))
        return false;
    if (m->pins[i] > 0)
        m->retained[i] = true;
    else
        m->slot[i] = NULL;
    return mark_matches(shared, m, "a give-back");
}

static bool model_unpin(ng_qsbr_shared *shared, struct model *m, uint32_t i)
{
    if (!CHECK_STATUS(ng_qsbr_unpin(m->slot[i]), NG_OK))
        return false;
    if (--m->pins[i] == 0 && m->retained[i]) {
        m->retained[i] = false;
        m->slot[i] = NULL;
    }
    return mark_matches(shared, m, "an unpin");
}

/* A burst of 200 slots given back in random order (all but slot 0) brings the mark back to 1,
 * and the next reservation gets slot 1; then random reservations, give-backs, pins and unpins
 * keep the mark at one past the highest allocated slot and always hand out the lowest free
 * one. */
TEST(qsbr_compact_mark_follows_the_highest_slot_in_use)
{
    static ng_qsbr_shared shared;
    static struct model m;
    memset(&m, 0, sizeof m);
    REQUIRE(CHECK_STATUS(ng_qsbr_init(&shared), NG_OK));
    for (uint32_t i = 0; i < MODEL_SLOTS; i++)
        REQUIRE(model_reserve(&shared, &m, i % 3 != 0)); /* some only reserved */
    uint32_t cap = capacity(&shared);

    uint32_t order[MODEL_SLOTS - 1];
    for (uint32_t i = 0; i < MODEL_SLOTS - 1; i++)
        order[i] = i + 1;
    uint64_t rng = UINT64_C(0x6a09e667f3bcc909);
    for (uint32_t i = MODEL_SLOTS - 2; i > 0; i--) {
        uint32_t j = (uint32_t)(rng_next(&rng) % (i + 1));
        uint32_t t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    for (uint32_t i = 0; i < MODEL_SLOTS - 1; i++)
        REQUIRE(model_give_back(&shared, &m, order[i]));
    CHECK_EQ(scan_slots(&shared), 1);
    REQUIRE(model_reserve(&shared, &m, true));
    CHECK_EQ(m.slot[1] != NULL, 1);
    CHECK_EQ(scan_slots(&shared), 2);
    CHECK_EQ(capacity(&shared), cap); /* segments never shrink */

    long steps = scaled(20000);
    for (long n = 0; n < steps && harness_failures() == 0; n++) {
        uint64_t r = rng_next(&rng);
        uint32_t i = (uint32_t)((r >> 8) % MODEL_SLOTS);
        bool owned = m.slot[i] != NULL && !m.retained[i];
        switch (r % 8) {
        case 0:
        case 1:
        case 2:
            if (model_lowest_free(&m) < MODEL_SLOTS)
                model_reserve(&shared, &m, (r >> 40) & 1);
            break;
        case 3:
        case 4:
            if (owned)
                model_give_back(&shared, &m, i);
            break;
        case 5:
            if (owned && m.pins[i] < 3) {
                CHECK_STATUS(ng_qsbr_pin(m.slot[i]), NG_OK);
                m.pins[i]++;
            }
            break;
        default:
            if (m.slot[i] != NULL && m.pins[i] > 0)
                model_unpin(&shared, &m, i);
            break;
        }
    }
    for (uint32_t i = 0; i < MODEL_SLOTS; i++) {
        if (m.slot[i] != NULL && !m.retained[i])
            model_give_back(&shared, &m, i);
        while (m.slot[i] != NULL && m.pins[i] > 0)
            model_unpin(&shared, &m, i);
    }
    CHECK_EQ(scan_slots(&shared), 0);
    CHECK_STATUS(ng_qsbr_fini(&shared), NG_OK);
}

/* A retained slot at the top holds the mark up (and is not handed out); its last unpin lets
 * the mark drop past every free slot under it. A reserved, never registered slot holds it up
 * the same way. */
TEST(qsbr_compact_retained_top_slot_holds_the_mark)
{
    static ng_qsbr_shared shared;
    REQUIRE(CHECK_STATUS(ng_qsbr_init(&shared), NG_OK));
    ng_qsbr_slot *s[10];
    for (int i = 0; i < 10; i++) {
        REQUIRE(CHECK_STATUS(ng_qsbr_reserve(&shared, &s[i]), NG_OK));
        REQUIRE(CHECK_EQ(s[i]->index, i));
        REQUIRE(CHECK_STATUS(ng_qsbr_register(s[i], &owner), NG_OK));
    }
    CHECK_STATUS(ng_qsbr_pin(s[9]), NG_OK);
    CHECK_STATUS(ng_qsbr_pin(s[9]), NG_OK);
    CHECK_STATUS(ng_qsbr_unregister(s[9]), NG_OK);
    CHECK_EQ(s[9]->retained, 1);
    CHECK_EQ(scan_slots(&shared), 10);
    for (int i = 8; i >= 1; i--)
        CHECK_STATUS(ng_qsbr_unregister(s[i]), NG_OK);
    CHECK_EQ(scan_slots(&shared), 10); /* slots 1..8 free under the retained one */

    ng_qsbr_slot *r = NULL;
    REQUIRE(CHECK_STATUS(ng_qsbr_reserve(&shared, &r), NG_OK));
    CHECK_EQ(r->index, 1); /* the lowest free, not the retained one */
    CHECK_STATUS(ng_qsbr_unreserve(r), NG_OK);
    CHECK_EQ(scan_slots(&shared), 10);

    CHECK_STATUS(ng_qsbr_unpin(s[9]), NG_OK);
    CHECK_EQ(scan_slots(&shared), 10); /* one pin left */
    CHECK_STATUS(ng_qsbr_unpin(s[9]), NG_OK);
    CHECK_EQ(scan_slots(&shared), 1);

    /* A reserved slot at the top: the mark stays above it while the slots under it go. */
    ng_qsbr_slot *t[5];
    for (int i = 0; i < 5; i++) {
        REQUIRE(CHECK_STATUS(ng_qsbr_reserve(&shared, &t[i]), NG_OK));
        CHECK_EQ(t[i]->index, 1 + i);
    }
    for (int i = 0; i < 4; i++)
        CHECK_STATUS(ng_qsbr_unreserve(t[i]), NG_OK);
    CHECK_EQ(scan_slots(&shared), 6);
    CHECK_STATUS(ng_qsbr_unreserve(t[4]), NG_OK);
    CHECK_EQ(scan_slots(&shared), 1);
    CHECK_STATUS(ng_qsbr_unregister(s[0]), NG_OK);
    CHECK_EQ(scan_slots(&shared), 0);
    CHECK_STATUS(ng_qsbr_fini(&shared), NG_OK);
}

/* ---- Scans while the mark moves ---------------------------------------------------------- */

#define CHURNERS 3

struct churn {
    ng_qsbr_shared shared;
    uint32_t stop;
    uint64_t churns; /* completed reserve..unregister rounds, all churners */
    /* The reader side of the torture: the published object and its pool. */
    struct cobj *cur;
    uint64_t errors;
};

static struct churn C;

/* One round of a thread's life: reserve, register, attach, `work`, detach, unregister. */
static bool churn_once(uint64_t *rng, void (*work)(ng_qsbr_slot *, uint64_t *))
{
    ng_qsbr_slot *slot = NULL;
    if (!CHECK_STATUS(ng_qsbr_reserve(&C.shared, &slot), NG_OK))
        return false;
    if ((rng_next(rng) & 7) == 0) /* a creation that failed after reserving (spec R18) */
        return CHECK_STATUS(ng_qsbr_unreserve(slot), NG_OK);
    if (!CHECK_STATUS(ng_qsbr_register(slot, &owner), NG_OK))
        return false;
    ng_qsbr_attach(slot);
    if (work != NULL)
        work(slot, rng);
    ng_qsbr_quiescent_state(slot);
    if ((rng_next(rng) & 3) == 0)
        sched_yield(); /* let the mark move while we are online */
    ng_qsbr_detach(slot);
    return CHECK_STATUS(ng_qsbr_unregister(slot), NG_OK);
}

/* Churns until told to stop (or a check failed), running `work` while online. */
static void churn_until_stopped(uint64_t rng, void (*work)(ng_qsbr_slot *, uint64_t *))
{
    while (!ng_atomic_load(&C.stop, NG_ACQUIRE)) {
        if (!churn_once(&rng, work))
            break;
        ng_atomic_fetch_add(&C.churns, 1, NG_RELAXED);
    }
}

static void *plain_churner(void *arg)
{
    churn_until_stopped((uint64_t)(uintptr_t)arg * UINT64_C(0x9e3779b97f4a7c15) | 1, NULL);
    return NULL;
}

/* A thread online at an old sequence in a low slot holds every goal back, scan after scan,
 * while other threads register and unregister in the slots above it, so that the mark keeps
 * rising above it and falling back to it. */
TEST(qsbr_compact_scan_keeps_an_online_slot_under_churn)
{
    memset(&C, 0, sizeof C);
    REQUIRE(CHECK_STATUS(ng_qsbr_init(&C.shared), NG_OK));
    ng_qsbr_slot *poller = NULL, *a = NULL;
    REQUIRE(CHECK_STATUS(ng_qsbr_reserve(&C.shared, &poller), NG_OK)); /* slot 0, offline */
    REQUIRE(CHECK_STATUS(ng_qsbr_reserve(&C.shared, &a), NG_OK));
    REQUIRE(CHECK_EQ(a->index, 1));
    REQUIRE(CHECK_STATUS(ng_qsbr_register(a, &owner), NG_OK));
    ng_qsbr_attach(a);
    uint64_t a_seq = ng_atomic_load(&a->seq, NG_RELAXED);

    pthread_t t[CHURNERS];
    for (int i = 0; i < CHURNERS; i++)
        t[i] = spawn_thread(plain_churner, (void *)(uintptr_t)(i + 1));
    long want_churns = scaled(COMPACT_SLOW ? 20000 : 200000);
    long scans = 0;
    uint32_t max_mark = 0;
    /* Churners keep going until stop, so the scans also overlap churn at tiny scales. */
    while ((ng_atomic_load(&C.churns, NG_RELAXED) < (uint64_t)want_churns || scans < 1000) &&
           harness_failures() == 0) {
        uint64_t goal = ng_qsbr_advance(&C.shared);
        uint64_t rd = ng_qsbr_scan(&C.shared);
        if (!CHECK(NG_QSBR_LEQ(rd, a_seq))) {
            harness_fail(__FILE__, __LINE__, "scan %ld published rd_seq %llu past the online "
                         "slot's %llu", scans, (unsigned long long)rd, (unsigned long long)a_seq);
            break;
        }
        /* The poll too, without the hint that would spare it the scan. */
        ng_atomic_store(&C.shared.laggard, NULL, NG_RELAXED);
        CHECK(!ng_qsbr_poll(poller, goal));
        uint32_t mark = scan_slots(&C.shared);
        CHECK_GE(mark, 2); /* slot 1 is in use */
        if (mark > max_mark)
            max_mark = mark;
        scans++;
        if ((scans & 7) == 0)
            sched_yield();
    }
    ng_atomic_store(&C.stop, 1, NG_RELEASE);
    for (int i = 0; i < CHURNERS; i++)
        join_thread(t[i]);
    CHECK_GT(scans, 0);
    CHECK_GT(max_mark, 2); /* the churners did use slots above it */
    CHECK_EQ(scan_slots(&C.shared), 2);

    ng_qsbr_detach(a);
    uint64_t goal = ng_qsbr_advance(&C.shared);
    CHECK(ng_qsbr_poll(poller, goal));
    CHECK_STATUS(ng_qsbr_unregister(a), NG_OK);
    CHECK_STATUS(ng_qsbr_unreserve(poller), NG_OK);
    CHECK_EQ(scan_slots(&C.shared), 0);
    CHECK_STATUS(ng_qsbr_fini(&C.shared), NG_OK);
}

/* The torture: readers are threads that live for one read (reserve, register, attach, read
 * the published object, report, detach, unregister), so their slots come and go and the mark
 * with them; the checker replaces the object, waits for the goal with polls, and poisons the
 * old one. A scan that missed an online reader's slot lets the checker poison the object
 * under it. */

#define COBJ_MAGIC UINT64_C(0x636f6d7061637421) /* "compact!" */
#define COBJ_POISON UINT64_C(0x6b6b6b6b6b6b6b6b)
#define COBJ_POOL 64

struct cobj {
    uint64_t magic;
    uint64_t version;
};

static struct cobj pool[COBJ_POOL];

/* Relaxed: the checker writes an object only while no reader may hold it (the property under
 * test); a reader that sees other values reports it instead of racing silently. */
static bool cobj_intact(const struct cobj *o, uint64_t version)
{
    return ng_atomic_load(&o->magic, NG_RELAXED) == COBJ_MAGIC &&
           ng_atomic_load(&o->version, NG_RELAXED) == version;
}

static void read_object(ng_qsbr_slot *slot, uint64_t *rng)
{
    (void)slot;
    /* Acquire: the object's words, written before it was published. */
    struct cobj *o = ng_atomic_load(&C.cur, NG_ACQUIRE);
    uint64_t v = ng_atomic_load(&o->version, NG_RELAXED);
    for (int i = 0; i < 4; i++) {
        if (!cobj_intact(o, v)) {
            if (ng_atomic_fetch_add(&C.errors, 1, NG_RELAXED) < 3)
                harness_fail(__FILE__, __LINE__, "reader: object version %llu reclaimed "
                             "while held", (unsigned long long)v);
            return;
        }
        if (rng_next(rng) & 1)
            sched_yield();
    }
}

static void *reading_churner(void *arg)
{
    churn_until_stopped((uint64_t)(uintptr_t)arg * UINT64_C(0x2545f4914f6cdd1d) | 1, read_object);
    return NULL;
}

TEST(qsbr_compact_torture_churning_readers_never_see_reclaimed_objects)
{
    memset(&C, 0, sizeof C);
    memset(pool, 0, sizeof pool);
    REQUIRE(CHECK_STATUS(ng_qsbr_init(&C.shared), NG_OK));
    ng_qsbr_slot *poller = NULL;
    REQUIRE(CHECK_STATUS(ng_qsbr_reserve(&C.shared, &poller), NG_OK));
    pool[0].version = 1;
    pool[0].magic = COBJ_MAGIC;
    ng_atomic_store(&C.cur, &pool[0], NG_RELEASE);

    pthread_t t[CHURNERS];
    for (int i = 0; i < CHURNERS; i++)
        t[i] = spawn_thread(reading_churner, (void *)(uintptr_t)(i + 1));
    long rounds = scaled(COMPACT_SLOW ? 3000 : 30000);
    /* Also until the readers have lived a while, however small the scale. */
    for (long n = 1; (n <= rounds || ng_atomic_load(&C.churns, NG_RELAXED) < 1000) &&
                     ng_atomic_load(&C.errors, NG_RELAXED) == 0;
         n++) {
        /* The pool slot reused now was retired COBJ_POOL - 1 rounds ago and waited for. */
        struct cobj *next = &pool[n % COBJ_POOL];
        ng_atomic_store(&next->version, (uint64_t)n + 1, NG_RELAXED);
        ng_atomic_store(&next->magic, COBJ_MAGIC, NG_RELAXED);
        struct cobj *old = ng_atomic_exchange(&C.cur, next, NG_ACQ_REL);
        uint64_t goal = ng_qsbr_advance(&C.shared);
        while (!ng_qsbr_poll(poller, goal))
            sched_yield();
        ng_atomic_store(&old->magic, COBJ_POISON, NG_RELAXED);
        ng_atomic_store(&old->version, 0, NG_RELAXED);
    }
    ng_atomic_store(&C.stop, 1, NG_RELEASE);
    for (int i = 0; i < CHURNERS; i++)
        join_thread(t[i]);
    CHECK_EQ(ng_atomic_load(&C.errors, NG_RELAXED), 0);
    CHECK_EQ(scan_slots(&C.shared), 1); /* only the poller's slot is left */
    CHECK_STATUS(ng_qsbr_unreserve(poller), NG_OK);
    CHECK_STATUS(ng_qsbr_fini(&C.shared), NG_OK);
}

/* ---- Fork --------------------------------------------------------------------------------- */

#define FORK_SLOTS 100
#define FORK_SURVIVOR 3
#define FORK_PINNED 40

struct fork_scene {
    ng_qsbr_shared shared;
    ng_qsbr_slot *slot[FORK_SLOTS];
    uint32_t holder_ready, release_holder;
};

static struct fork_scene F;

/* A thread online in a high slot at fork time: dead in the child. */
static void *fork_holder(void *arg)
{
    ng_qsbr_slot *slot = arg;
    ng_qsbr_attach(slot);
    ng_atomic_store(&F.holder_ready, 1, NG_RELEASE);
    SPIN_UNTIL(ng_atomic_load(&F.release_holder, NG_ACQUIRE));
    ng_qsbr_detach(slot);
    return NULL;
}

enum {
    FORK_MARK = 1 << 0,
    FORK_LOWEST = 1 << 1,
    FORK_UNPIN = 1 << 2,
    FORK_SCAN = 1 << 3,
};
static const char *const fork_checks_names[] = {
    "the mark is one past the highest kept slot",
    "reservations take the lowest free slots",
    "the last unpin lowers the mark to the survivor's",
    "a scan still sees the survivor online",
    NULL,
};

static int fork_child(void *arg)
{
    (void)arg;
    int failed = 0;
    /* As if a thread had died in ng_qsbr_reserve between raising the mark and marking its
     * slot allocated: the mark is higher than any slot in use. */
    ng_atomic_store(&F.shared.high_water, F.shared.high_water + 7, NG_RELAXED);
    ng_qsbr_after_fork(&F.shared, F.slot[FORK_SURVIVOR]);
    ng_qsbr_stats st;
    ng_qsbr_get_stats(&F.shared, &st);
    if (st.scan_slots != FORK_PINNED + 1 || F.shared.high_water != FORK_PINNED + 1)
        failed |= FORK_MARK;

    ng_qsbr_slot *r[3];
    for (uint32_t i = 0; i < 3; i++)
        if (ng_qsbr_reserve(&F.shared, &r[i]) != NG_OK || r[i]->index != i)
            return failed | FORK_LOWEST;
    ng_qsbr_get_stats(&F.shared, &st);
    if (st.scan_slots != FORK_PINNED + 1)
        failed |= FORK_LOWEST;

    if (ng_qsbr_unpin(F.slot[FORK_PINNED]) != NG_OK)
        failed |= FORK_UNPIN;
    ng_qsbr_get_stats(&F.shared, &st);
    if (st.scan_slots != FORK_SURVIVOR + 1)
        failed |= FORK_UNPIN;

    /* The survivor was attached at fork time; its old seq holds a new goal back. */
    uint64_t goal = ng_qsbr_advance(&F.shared);
    ng_qsbr_slot *poller = r[0];
    if (ng_qsbr_poll(poller, goal))
        failed |= FORK_SCAN;
    ng_qsbr_quiescent_state(F.slot[FORK_SURVIVOR]);
    if (!ng_qsbr_poll(poller, goal))
        failed |= FORK_SCAN;
    return failed;
}

/* A child of fork whose parent had 100 slots in use (one of them online in a thread that does
 * not exist in the child, one pinned) keeps the survivor's and the retained slot, and its mark
 * comes down to one past the higher of them. */
TEST(qsbr_compact_fork_child_lowers_the_mark)
{
    memset(&F, 0, sizeof F);
    REQUIRE(CHECK_STATUS(ng_qsbr_init(&F.shared), NG_OK));
    for (int i = 0; i < FORK_SLOTS; i++) {
        REQUIRE(CHECK_STATUS(ng_qsbr_reserve(&F.shared, &F.slot[i]), NG_OK));
        REQUIRE(CHECK_STATUS(ng_qsbr_register(F.slot[i], &owner), NG_OK));
    }
    CHECK_STATUS(ng_qsbr_pin(F.slot[FORK_PINNED]), NG_OK);
    ng_qsbr_attach(F.slot[FORK_SURVIVOR]);
    pthread_t holder = spawn_thread(fork_holder, F.slot[FORK_SLOTS - 1]);
    SPIN_UNTIL(ng_atomic_load(&F.holder_ready, NG_ACQUIRE));
    CHECK_EQ(scan_slots(&F.shared), FORK_SLOTS);

    pid_t pid = fork_checks(fork_child, NULL);
    CHECK_GT(pid, 0);
    if (pid > 0)
        check_child(pid, fork_checks_names, "fork with 100 slots in use");
    ng_atomic_store(&F.release_holder, 1, NG_RELEASE);
    join_thread(holder);

    /* The parent is untouched by the child's reset. */
    CHECK_EQ(scan_slots(&F.shared), FORK_SLOTS);
    ng_qsbr_detach(F.slot[FORK_SURVIVOR]);
    CHECK_STATUS(ng_qsbr_unpin(F.slot[FORK_PINNED]), NG_OK);
    for (int i = FORK_SLOTS - 1; i >= 0; i--)
        CHECK_STATUS(ng_qsbr_unregister(F.slot[i]), NG_OK);
    CHECK_EQ(scan_slots(&F.shared), 0);
    CHECK_STATUS(ng_qsbr_fini(&F.shared), NG_OK);
}
