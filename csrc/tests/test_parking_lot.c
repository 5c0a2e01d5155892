/* The parking lot: argument validation, compare-and-sleep, FIFO wake-ups, timeouts racing
 * with unparks, cancellation tokens and block hooks. */
#define _GNU_SOURCE
#include "harness.h"

#include <signal.h>
#include <string.h>

/* ---- Helpers ----------------------------------------------------------------------------- */

/* One park in its own thread, with the result and (optionally) its place in a wake order. */
struct park_job {
    const void *addr;
    const void *expected;
    size_t size;
    int64_t timeout_ns;
    void *park_arg;
    int flags;
    ng_cancel *cancel; /* installed around the park when not NULL */

    int result;
    int done;
    uint64_t thread_id;

    int id;          /* recorded into order[] when the park returns */
    int *order;
    int *order_len;
};

static void *park_job_main(void *p)
{
    struct park_job *job = p;
    ng_atomic_store(&job->thread_id, ng_thread_id(), NG_SEQ_CST);
    ng_cancel *previous = NULL;
    if (job->cancel != NULL)
        previous = ng_cancel_install(job->cancel);
    int rc = ng_park(job->addr, job->expected, job->size, job->timeout_ns, job->park_arg,
                     job->flags);
    if (job->cancel != NULL)
        ng_cancel_install(previous);
    if (job->order != NULL) {
        int slot = ng_atomic_fetch_add(job->order_len, 1, NG_SEQ_CST);
        ng_atomic_store(&job->order[slot], job->id, NG_SEQ_CST);
    }
    ng_atomic_store(&job->result, rc, NG_SEQ_CST);
    ng_atomic_store(&job->done, 1, NG_SEQ_CST);
    return NULL;
}

static bool job_done(struct park_job *job) { return ng_atomic_load(&job->done, NG_SEQ_CST) != 0; }

/* Everything one ng_unpark callback saw, call by call (only the unparking thread writes). */
#define MAX_RECORDED_UNPARKS 16
struct unpark_record {
    int calls;
    void *park_arg[MAX_RECORDED_UNPARKS];
    int has_more[MAX_RECORDED_UNPARKS];
};

static void record_unpark(void *arg, void *park_arg, int has_more_waiters)
{
    struct unpark_record *rec = arg;
    int i = rec->calls++;
    if (i < MAX_RECORDED_UNPARKS) {
        rec->park_arg[i] = park_arg;
        rec->has_more[i] = has_more_waiters;
    }
}

/* ---- Argument validation and value comparison -------------------------------------------- */

TEST(park_invalid_arguments)
{
    _Alignas(16) unsigned char buf[32];
    memset(buf, 0, sizeof buf);
    uint64_t zero = 0;

    CHECK_STATUS(ng_park(NULL, &zero, 4, 0, NULL, 0), NG_EINVAL);
    /* Unsupported sizes. The value matches, so an implementation that accepted them would
     * report NG_TIMEOUT (timeout 0), never hang. */
    CHECK_STATUS(ng_park(buf, &zero, 0, 0, NULL, 0), NG_EINVAL);
    CHECK_STATUS(ng_park(buf, &zero, 3, 0, NULL, 0), NG_EINVAL);
    CHECK_STATUS(ng_park(buf, &zero, 5, 0, NULL, 0), NG_EINVAL);
    CHECK_STATUS(ng_park(buf, &zero, 16, 0, NULL, 0), NG_EINVAL);
    /* Misaligned for the size. */
    CHECK_STATUS(ng_park(buf + 1, &zero, 4, 0, NULL, 0), NG_EINVAL);
    CHECK_STATUS(ng_park(buf + 1, &zero, 2, 0, NULL, 0), NG_EINVAL);
    CHECK_STATUS(ng_park(buf + 2, &zero, 4, 0, NULL, 0), NG_EINVAL);
    CHECK_STATUS(ng_park(buf + 4, &zero, 8, 0, NULL, 0), NG_EINVAL);
    /* A one-byte word has no alignment requirement. */
    CHECK_STATUS(ng_park(buf + 1, &zero, 1, 0, NULL, 0), NG_TIMEOUT);
    /* Flags other than NG_WAIT_DETACH | NG_WAIT_INTERRUPTIBLE. */
    CHECK_STATUS(ng_park(buf, &zero, 4, 0, NULL, 0x100), NG_EINVAL);

    CHECK_STATUS(ng_unpark(NULL, NULL, NULL), NG_EINVAL);
    CHECK_STATUS(ng_unpark_all(NULL), NG_EINVAL);
    CHECK_EQ(ng_parking_lot_waiters(buf), 0);
}

TEST(park_value_mismatch_each_size)
{
    static const size_t sizes[] = {1, 2, 4, 8};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t size = sizes[i];
        _Alignas(8) unsigned char word[8], expected[8];
        memset(word, 0x5a, sizeof word);

        /* Differs in the first byte, then in the last byte of the compared width. */
        memcpy(expected, word, sizeof word);
        expected[0] ^= 1;
        CHECK_STATUS(ng_park(word, expected, size, -1, NULL, 0), NG_AGAIN);
        memcpy(expected, word, sizeof word);
        expected[size - 1] ^= 0x80;
        CHECK_STATUS(ng_park(word, expected, size, -1, NULL, 0), NG_AGAIN);

        /* Equal in `size` bytes but not beyond: only `size` bytes are compared, so this is a
         * match (timeout 0: NG_TIMEOUT without sleeping). */
        memcpy(expected, word, sizeof word);
        if (size < 8)
            expected[size] ^= 0xff;
        CHECK_STATUS(ng_park(word, expected, size, 0, NULL, 0), NG_TIMEOUT);
        CHECK_EQ(ng_parking_lot_waiters(word), 0);
    }
}

TEST(park_timeout_zero_does_not_sleep)
{
    uint32_t word = 7, expected = 7;
    int64_t start = now_ns();
    CHECK_STATUS(ng_park(&word, &expected, 4, 0, NULL, 0), NG_TIMEOUT);
    CHECK_LT(elapsed_ms_since(start), 100);
    CHECK_EQ(ng_parking_lot_waiters(&word), 0);
    /* Nobody is left queued for an unpark to find. */
    CHECK_EQ(ng_unpark(&word, NULL, NULL), 0);
}

TEST(park_timeout_honoured)
{
    uint32_t word = 7, expected = 7;
    int64_t start = now_ns();
    CHECK_STATUS(ng_park(&word, &expected, 4, 20 * NG_NS_PER_MS, NULL, 0), NG_TIMEOUT);
    int64_t waited = now_ns() - start;
    CHECK_GE(waited, 20 * NG_NS_PER_MS);
    CHECK_LT(waited, 520 * NG_NS_PER_MS);
    CHECK_EQ(ng_parking_lot_waiters(&word), 0);
    CHECK_EQ(ng_unpark(&word, NULL, NULL), 0);
}

TEST(park_each_size_sleeps_until_unparked)
{
    static const size_t sizes[] = {1, 2, 4, 8};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        _Alignas(8) unsigned char word[8], expected[8];
        memset(word, 0x33, sizeof word);
        memcpy(expected, word, sizeof word);
        struct park_job job = {.addr = word, .expected = expected, .size = sizes[i],
                               .timeout_ns = -1};
        pthread_t t = spawn_thread(park_job_main, &job);
        bool parked = WAIT_UNTIL(ng_parking_lot_waiters(word) == 1, PATIENCE_MS);
        CHECK(parked);
        CHECK(!job_done(&job));
        CHECK_EQ(ng_unpark(word, NULL, NULL), parked ? 1 : 0);
        if (!parked)
            ng_unpark_all(word);
        join_thread(t);
        CHECK_STATUS(job.result, NG_OK);
        CHECK_EQ(ng_parking_lot_waiters(word), 0);
    }
}

/* ---- Wake-up order and callbacks ---------------------------------------------------------- */

TEST(unpark_without_waiters_calls_callback_with_null)
{
    uint32_t word = 0;
    struct unpark_record rec = {0};
    rec.has_more[0] = -1;
    CHECK_EQ(ng_unpark(&word, record_unpark, &rec), 0);
    CHECK_EQ(rec.calls, 1);
    CHECK_PTR_EQ(rec.park_arg[0], NULL);
    CHECK_EQ(rec.has_more[0], 0);
    /* A NULL callback is allowed. */
    CHECK_EQ(ng_unpark(&word, NULL, NULL), 0);
    CHECK_EQ(ng_unpark_all(&word), 0);
}

TEST(park_fifo_order_and_has_more_waiters)
{
    enum { N = 4 };
    uint32_t word = 1, expected = 1;
    int ids[N], order[N] = {-1, -1, -1, -1}, order_len = 0;
    struct park_job jobs[N];
    pthread_t threads[N];
    int started = 0;

    /* Start the parkers one at a time, each only once the previous one is queued, so the
     * queue order is known. */
    for (int i = 0; i < N; i++) {
        ids[i] = i;
        jobs[i] = (struct park_job){.addr = &word, .expected = &expected, .size = 4,
                                    .timeout_ns = -1, .park_arg = &ids[i], .id = i,
                                    .order = order, .order_len = &order_len};
        threads[i] = spawn_thread(park_job_main, &jobs[i]);
        started++;
        if (!CHECK(WAIT_UNTIL(ng_parking_lot_waiters(&word) == i + 1, PATIENCE_MS)))
            break;
    }

    struct unpark_record rec = {0};
    if (started == N) {
        for (int k = 0; k < N; k++) {
            CHECK_EQ(ng_unpark(&word, record_unpark, &rec), 1);
            /* Let the woken thread record itself before waking the next, so the order array
             * reflects the dequeue order rather than scheduling luck. */
            CHECK(WAIT_UNTIL(ng_atomic_load(&order_len, NG_SEQ_CST) == k + 1, PATIENCE_MS));
            CHECK_EQ(ng_atomic_load(&order[k], NG_SEQ_CST), k);
            CHECK_PTR_EQ(rec.park_arg[k], &ids[k]);
            /* Waiters left after this one: 3, 2, 1, 0. */
            CHECK_EQ(rec.has_more[k] != 0, k < N - 1);
            CHECK_EQ(ng_parking_lot_waiters(&word), N - 1 - k);
        }
        /* Queue empty: the callback still runs, with NULL and "no more". */
        CHECK_EQ(ng_unpark(&word, record_unpark, &rec), 0);
        CHECK_EQ(rec.calls, N + 1);
        CHECK_PTR_EQ(rec.park_arg[N], NULL);
        CHECK_EQ(rec.has_more[N], 0);
    }
    ng_unpark_all(&word); /* only matters if something above failed */
    for (int i = 0; i < started; i++) {
        join_thread(threads[i]);
        CHECK_STATUS(jobs[i].result, NG_OK);
    }
}

TEST(unpark_all_wakes_every_waiter)
{
    enum { N = 8 };
    uint64_t word = 42, expected = 42;
    struct park_job jobs[N];
    pthread_t threads[N];
    for (int i = 0; i < N; i++) {
        jobs[i] = (struct park_job){.addr = &word, .expected = &expected, .size = 8,
                                    .timeout_ns = -1};
        threads[i] = spawn_thread(park_job_main, &jobs[i]);
    }
    bool all_parked = WAIT_UNTIL(ng_parking_lot_waiters(&word) == N, PATIENCE_MS);
    CHECK(all_parked);
    int woken = ng_unpark_all(&word);
    CHECK_EQ(woken, all_parked ? N : woken);
    int total = woken;
    /* If some thread had not parked yet, keep waking until everybody is out. */
    while (total < N && WAIT_UNTIL(ng_parking_lot_waiters(&word) > 0, 100))
        total += ng_unpark_all(&word);
    for (int i = 0; i < N; i++) {
        join_thread(threads[i]);
        CHECK_STATUS(jobs[i].result, NG_OK);
    }
    CHECK_EQ(ng_parking_lot_waiters(&word), 0);
    CHECK_EQ(ng_unpark_all(&word), 0);
}

TEST(unpark_only_wakes_waiters_of_its_address)
{
    /* slots[0] and slots[257] are 257 * 8 bytes apart: the same bucket if buckets are chosen
     * by address modulo 257 (CPython's scheme), so the bucket's list holds both addresses.
     * slots[1] is a neighbouring address in whatever bucket. The next test covers bucket
     * sharing without assuming a hash function. */
    static uint64_t slots[2 * 257];
    uint64_t *a = &slots[0], *b = &slots[257], *c = &slots[1];
    uint64_t zero = 0;
    int tag_a1, tag_a2, tag_b, tag_c;
    struct park_job job_b = {.addr = b, .expected = &zero, .size = 8, .timeout_ns = -1,
                             .park_arg = &tag_b};
    struct park_job job_a1 = {.addr = a, .expected = &zero, .size = 8, .timeout_ns = -1,
                              .park_arg = &tag_a1};
    struct park_job job_c = {.addr = c, .expected = &zero, .size = 8, .timeout_ns = -1,
                             .park_arg = &tag_c};
    struct park_job job_a2 = {.addr = a, .expected = &zero, .size = 8, .timeout_ns = -1,
                              .park_arg = &tag_a2};

    /* Queue order: b, a1, c, a2 (the other addresses' waiters sit in front of and between
     * a's). */
    pthread_t tb = spawn_thread(park_job_main, &job_b);
    CHECK(WAIT_UNTIL(ng_parking_lot_waiters(b) == 1, PATIENCE_MS));
    pthread_t ta1 = spawn_thread(park_job_main, &job_a1);
    CHECK(WAIT_UNTIL(ng_parking_lot_waiters(a) == 1, PATIENCE_MS));
    pthread_t tc = spawn_thread(park_job_main, &job_c);
    CHECK(WAIT_UNTIL(ng_parking_lot_waiters(c) == 1, PATIENCE_MS));
    pthread_t ta2 = spawn_thread(park_job_main, &job_a2);
    CHECK(WAIT_UNTIL(ng_parking_lot_waiters(a) == 2, PATIENCE_MS));

    struct unpark_record rec = {0};
    CHECK_EQ(ng_unpark(a, record_unpark, &rec), 1);
    CHECK_PTR_EQ(rec.park_arg[0], &tag_a1);
    CHECK(rec.has_more[0]); /* a2 still waits: never a false negative */
    CHECK(WAIT_UNTIL(job_done(&job_a1), PATIENCE_MS));
    CHECK_EQ(ng_unpark_all(a), 1);
    CHECK(WAIT_UNTIL(job_done(&job_a2), PATIENCE_MS));
    CHECK_EQ(ng_unpark_all(a), 0);

    /* b and c were never woken. */
    sleep_ms(5);
    CHECK(!job_done(&job_b));
    CHECK(!job_done(&job_c));
    CHECK_EQ(ng_parking_lot_waiters(b), 1);
    CHECK_EQ(ng_parking_lot_waiters(c), 1);

    CHECK_EQ(ng_unpark(b, record_unpark, &rec), 1);
    CHECK_PTR_EQ(rec.park_arg[1], &tag_b);
    CHECK_EQ(ng_unpark(c, record_unpark, &rec), 1);
    CHECK_PTR_EQ(rec.park_arg[2], &tag_c);
    CHECK_EQ(rec.has_more[2], 0);

    ng_unpark_all(a);
    ng_unpark_all(b);
    ng_unpark_all(c);
    join_thread(tb);
    join_thread(ta1);
    join_thread(tc);
    join_thread(ta2);
    CHECK_STATUS(job_a1.result, NG_OK);
    CHECK_STATUS(job_a2.result, NG_OK);
    CHECK_STATUS(job_b.result, NG_OK);
    CHECK_STATUS(job_c.result, NG_OK);
}

static int total_waiters(const struct park_job *jobs, int n)
{
    int total = 0;
    for (int i = 0; i < n; i++)
        total += ng_parking_lot_waiters(jobs[i].addr);
    return total;
}

TEST(unpark_sweep_across_many_addresses)
{
    /* One waiter on each of many addresses. With N addresses spread over B buckets, some pair
     * shares a bucket unless the hash is very lucky (128 addresses over 1024 buckets: about
     * 8 colliding pairs expected), so this checks bucket sharing for any hash function: each
     * unpark must wake exactly the waiter of its own address and nobody else. */
    enum { N = 128, STRIDE = 37 };
    static uint64_t words[N * STRIDE];
    static struct park_job jobs[N];
    static int tags[N];
    pthread_t threads[N];
    uint64_t zero = 0;
    for (int i = 0; i < N; i++) {
        jobs[i] = (struct park_job){.addr = &words[i * STRIDE], .expected = &zero, .size = 8,
                                    .timeout_ns = -1, .park_arg = &tags[i]};
        threads[i] = spawn_thread(park_job_main, &jobs[i]);
    }
    WAIT_UNTIL(total_waiters(jobs, N) == N, PATIENCE_MS);
    CHECK_EQ(total_waiters(jobs, N), N);

    /* Wake them in a scrambled order (77 is coprime with N, so k * 77 % N visits all). */
    int woken = 0;
    for (int k = 0; k < N; k++) {
        int i = (k * 77) % N;
        struct unpark_record rec = {0};
        CHECK_EQ(ng_unpark(jobs[i].addr, record_unpark, &rec), 1);
        CHECK_PTR_EQ(rec.park_arg[0], &tags[i]);
        CHECK(WAIT_UNTIL(job_done(&jobs[i]), PATIENCE_MS));
        woken++;
        /* Nobody else woke up. */
        int done = 0;
        for (int j = 0; j < N; j++)
            done += job_done(&jobs[j]);
        if (!CHECK_EQ(done, woken))
            break;
    }
    for (int i = 0; i < N; i++)
        ng_unpark_all(jobs[i].addr); /* only matters after a failure */
    for (int i = 0; i < N; i++) {
        join_thread(threads[i]);
        CHECK_STATUS(jobs[i].result, NG_OK);
    }
}

/* ---- Signals ------------------------------------------------------------------------------- */

TEST(park_interruptible_returns_intr)
{
    install_counting_handler(SIGUSR1);
    uint32_t word = 0, zero = 0;
    struct park_job job = {.addr = &word, .expected = &zero, .size = 4, .timeout_ns = -1,
                           .flags = NG_WAIT_INTERRUPTIBLE};
    pthread_t t = spawn_thread(park_job_main, &job);
    CHECK(WAIT_UNTIL(ng_parking_lot_waiters(&word) == 1, PATIENCE_MS));
    /* Repeat: a signal that lands just before the sleep starts is not an interruption. */
    int64_t start = now_ns();
    while (!job_done(&job) && elapsed_ms_since(start) < PATIENCE_MS) {
        pthread_kill(t, SIGUSR1);
        sleep_ms(5);
    }
    if (!CHECK(job_done(&job)))
        ng_unpark_all(&word);
    join_thread(t);
    CHECK_STATUS(job.result, NG_INTR);
    /* The interrupted waiter took itself off the queue. */
    CHECK_EQ(ng_parking_lot_waiters(&word), 0);
    CHECK_EQ(ng_unpark(&word, NULL, NULL), 0);
    restore_signal(SIGUSR1);
}

TEST(park_uninterruptible_absorbs_signals)
{
    install_counting_handler(SIGUSR1);
    uint32_t word = 0, zero = 0;
    struct park_job job = {.addr = &word, .expected = &zero, .size = 4, .timeout_ns = -1};
    pthread_t t = spawn_thread(park_job_main, &job);
    CHECK(WAIT_UNTIL(ng_parking_lot_waiters(&word) == 1, PATIENCE_MS));
    for (int i = 0; i < 10; i++) {
        pthread_kill(t, SIGUSR1);
        sleep_ms(3);
    }
    sleep_ms(10);
    CHECK(!job_done(&job));
    CHECK_EQ(ng_parking_lot_waiters(&word), 1);
    CHECK_EQ(ng_unpark(&word, NULL, NULL), 1);
    join_thread(t);
    CHECK_STATUS(job.result, NG_OK);
    CHECK_GE(counted_signals(), 1);
    restore_signal(SIGUSR1);
}

/* ---- Timeout racing with unpark (R15's parking-lot half) ----------------------------------- */

struct timeout_race {
    uint32_t word; /* never changes: every park matches */
    long rounds;
    int round;          /* published by the parker */
    int unparked_round; /* the unparker has finished its unpark for this round */
    void *delivered;    /* park_arg the unparker's callback saw this round (NULL: nobody) */
    int failures;
};

static void *round_tag(int round) { return (void *)(uintptr_t)((uintptr_t)round << 4); }

static void record_delivery(void *arg, void *park_arg, int has_more_waiters)
{
    struct timeout_race *race = arg;
    (void)has_more_waiters;
    ng_atomic_store(&race->delivered, park_arg, NG_RELAXED);
}

static void busy_wait_ns(int64_t ns)
{
    int64_t end = now_ns() + ns;
    while (now_ns() < end)
        ng_cpu_relax();
}

static void *timeout_race_unparker(void *p)
{
    struct timeout_race *race = p;
    uint64_t rng = 0x9e3779b97f4a7c15u;
    set_tight_timer_slack();
    for (int r = 1; r <= race->rounds; r++) {
        SPIN_UNTIL(ng_atomic_load(&race->round, NG_ACQUIRE) >= r);
        /* Land the unpark anywhere from "before the park" to "after the timeout". */
        busy_wait_ns((int64_t)(rng_next(&rng) % 60000));
        ng_unpark(&race->word, record_delivery, race);
        ng_atomic_store(&race->unparked_round, r, NG_RELEASE);
    }
    return NULL;
}

static void *timeout_race_parker(void *p)
{
    struct timeout_race *race = p;
    uint64_t rng = 0x2545f4914f6cdd1du;
    uint32_t expected = 0;
    long ok = 0, timeouts = 0;
    set_tight_timer_slack();
    for (int r = 1; r <= race->rounds; r++) {
        ng_atomic_store(&race->delivered, (void *)-1, NG_RELAXED);
        ng_atomic_store(&race->round, r, NG_RELEASE);
        int64_t timeout = (int64_t)(rng_next(&rng) % 50001); /* 0 .. 50 us */
        int rc = ng_park(&race->word, &expected, 4, timeout, round_tag(r), 0);
        SPIN_UNTIL(ng_atomic_load(&race->unparked_round, NG_ACQUIRE) >= r);
        void *delivered = ng_atomic_load(&race->delivered, NG_RELAXED);
        /* The unpark reached us exactly when the park says it did: no lost wake-up (the
         * callback saw us but we report a timeout), no phantom one (NG_OK without an unpark
         * that chose us, e.g. a post left over from an earlier round). */
        bool consistent = (rc == NG_OK && delivered == round_tag(r)) ||
                          (rc == NG_TIMEOUT && delivered == NULL);
        if (!consistent) {
            harness_fail(__FILE__, __LINE__, "round %d: park returned %d (%s), callback saw %p",
                         r, rc, ng_strerror(rc), delivered);
            ng_atomic_fetch_add(&race->failures, 1, NG_RELAXED);
            if (ng_atomic_load(&race->failures, NG_RELAXED) > 5)
                break;
        }
        if (rc == NG_OK)
            ok++;
        else
            timeouts++;
    }
    /* Make the unparker finish if we stopped early. */
    ng_atomic_store(&race->round, (int)race->rounds, NG_RELEASE);
    /* Both outcomes must have occurred, or the race was never exercised (an implementation
     * that never sleeps, or never honours an unpark, would otherwise pass). */
    if (race->rounds >= 1000 && race->failures == 0) {
        CHECK_GT(ok, 0);
        CHECK_GT(timeouts, 0);
    }
    return NULL;
}

TEST(park_timeout_races_with_unpark)
{
    /* 1e5 rounds in all, shared by independent parker/unparker pairs on separate words:
     * a round mostly waits for timers and wake-ups, so pairs overlap well even on few CPUs. */
    enum { PAIRS = 2 };
    static struct timeout_race races[PAIRS];
    pthread_t unparkers[PAIRS], parkers[PAIRS];
    for (int i = 0; i < PAIRS; i++) {
        races[i] = (struct timeout_race){.rounds = (scaled(100000) + PAIRS - 1) / PAIRS};
        unparkers[i] = spawn_thread(timeout_race_unparker, &races[i]);
        parkers[i] = spawn_thread(timeout_race_parker, &races[i]);
    }
    for (int i = 0; i < PAIRS; i++) {
        join_thread(parkers[i]);
        join_thread(unparkers[i]);
        CHECK_EQ(ng_parking_lot_waiters(&races[i].word), 0);
    }
}

/* ---- Cancellation -------------------------------------------------------------------------- */

TEST(cancel_wakes_a_parked_thread)
{
    uint32_t word = 0, zero = 0;
    ng_cancel token;
    ng_cancel_init(&token);
    CHECK_EQ(ng_cancel_fired(&token), 0);
    struct park_job job = {.addr = &word, .expected = &zero, .size = 4, .timeout_ns = -1,
                           .cancel = &token};
    pthread_t t = spawn_thread(park_job_main, &job);
    bool parked = WAIT_UNTIL(ng_parking_lot_waiters(&word) == 1, PATIENCE_MS);
    CHECK(parked);
    CHECK_EQ(ng_cancel_fire(&token), parked ? 1 : 0);
    CHECK(WAIT_UNTIL(job_done(&job), PATIENCE_MS));
    if (!job_done(&job))
        ng_unpark_all(&word);
    join_thread(t);
    CHECK_STATUS(job.result, NG_CANCELLED);
    CHECK_EQ(ng_parking_lot_waiters(&word), 0);
    CHECK_EQ(ng_cancel_fired(&token), 1);
    /* Firing again wakes nobody. */
    CHECK_EQ(ng_cancel_fire(&token), 0);
    CHECK_EQ(ng_unpark(&word, NULL, NULL), 0);
}

TEST(cancel_fired_before_park)
{
    uint32_t word = 0, zero = 0;
    ng_cancel token = NG_CANCEL_INIT;
    CHECK_EQ(ng_cancel_fire(&token), 0); /* nobody parked */
    CHECK_EQ(ng_cancel_fired(&token), 1);

    ng_cancel *previous = ng_cancel_install(&token);
    CHECK_PTR_EQ(previous, NULL);
    int64_t start = now_ns();
    /* Run in this thread: a park that ignored the fired token would hang (watchdog). The
     * timed variant bounds the damage for the second check. */
    CHECK_STATUS(ng_park(&word, &zero, 4, -1, NULL, 0), NG_CANCELLED);
    CHECK_STATUS(ng_park(&word, &zero, 4, 10 * NG_NS_PER_SEC, NULL, NG_WAIT_DETACH),
                 NG_CANCELLED);
    CHECK_LT(elapsed_ms_since(start), 1000);
    CHECK_EQ(ng_parking_lot_waiters(&word), 0);
    CHECK_PTR_EQ(ng_cancel_install(previous), &token);

    /* Uninstalled, the fired token no longer affects this thread. */
    CHECK_STATUS(ng_park(&word, &zero, 4, 0, NULL, 0), NG_TIMEOUT);
    CHECK_STATUS(ng_park(&word, &zero, 4, NG_NS_PER_MS, NULL, 0), NG_TIMEOUT);
}

struct cancel_race {
    uint32_t word;
    long rounds;
    ng_cancel token;
    int round;       /* published by the coordinator when the token is fresh */
    int fire_round;  /* the canceller may fire now */
    int parked_done; /* the parker returned in this round */
    int fired_done;
    int result;
    void *delivered;
    int stop;
};

static void *cancel_race_parker(void *p)
{
    struct cancel_race *race = p;
    uint32_t zero = 0;
    for (int r = 1; r <= race->rounds; r++) {
        SPIN_UNTIL(ng_atomic_load(&race->round, NG_ACQUIRE) >= r ||
                   ng_atomic_load(&race->stop, NG_ACQUIRE));
        if (ng_atomic_load(&race->stop, NG_ACQUIRE))
            break;
        ng_cancel *previous = ng_cancel_install(&race->token);
        int rc = ng_park(&race->word, &zero, 4, -1, round_tag(r), 0);
        ng_cancel_install(previous);
        ng_atomic_store(&race->result, rc, NG_RELAXED);
        ng_atomic_store(&race->parked_done, r, NG_RELEASE);
    }
    return NULL;
}

static void *cancel_race_canceller(void *p)
{
    struct cancel_race *race = p;
    uint64_t rng = 0x1234567887654321u;
    for (int r = 1; r <= race->rounds; r++) {
        SPIN_UNTIL(ng_atomic_load(&race->fire_round, NG_ACQUIRE) >= r ||
                   ng_atomic_load(&race->stop, NG_ACQUIRE));
        if (ng_atomic_load(&race->stop, NG_ACQUIRE))
            break;
        busy_wait_ns((int64_t)(rng_next(&rng) % 5000));
        ng_cancel_fire(&race->token);
        ng_atomic_store(&race->fired_done, r, NG_RELEASE);
    }
    return NULL;
}

static void record_cancel_race_delivery(void *arg, void *park_arg, int has_more_waiters)
{
    struct cancel_race *race = arg;
    (void)has_more_waiters;
    ng_atomic_store(&race->delivered, park_arg, NG_RELAXED);
}

TEST(cancel_races_with_unpark)
{
    struct cancel_race race = {.rounds = scaled(20000)};
    uint64_t rng = 0xdeadbeefcafef00du;
    pthread_t parker = spawn_thread(cancel_race_parker, &race);
    pthread_t canceller = spawn_thread(cancel_race_canceller, &race);
    for (int r = 1; r <= race.rounds; r++) {
        ng_cancel_init(&race.token);
        ng_atomic_store(&race.delivered, (void *)-1, NG_RELAXED);
        ng_atomic_store(&race.round, r, NG_RELEASE);
        /* Fire and unpark only once the parker sleeps, so the two really compete for a
         * parked thread (a fire before the park is the other test). */
        SPIN_UNTIL(ng_parking_lot_waiters(&race.word) == 1);
        ng_atomic_store(&race.fire_round, r, NG_RELEASE);
        busy_wait_ns((int64_t)(rng_next(&rng) % 5000));
        int unparked = ng_unpark(&race.word, record_cancel_race_delivery, &race);
        SPIN_UNTIL(ng_atomic_load(&race.parked_done, NG_ACQUIRE) >= r &&
                   ng_atomic_load(&race.fired_done, NG_ACQUIRE) >= r);
        int rc = ng_atomic_load(&race.result, NG_RELAXED);
        void *delivered = ng_atomic_load(&race.delivered, NG_RELAXED);
        /* Exactly one of the two wins: woken with the callback having seen us, or cancelled
         * and the unpark found nobody. */
        bool consistent = (rc == NG_OK && delivered == round_tag(r) && unparked == 1) ||
                          (rc == NG_CANCELLED && delivered == NULL && unparked == 0);
        if (!consistent) {
            harness_fail(__FILE__, __LINE__,
                         "round %d: park returned %d (%s), unpark returned %d, callback saw %p",
                         r, rc, ng_strerror(rc), unparked, delivered);
            if (harness_failures() > 5)
                break;
        }
    }
    ng_atomic_store(&race.stop, 1, NG_RELEASE);
    ng_unpark_all(&race.word); /* only matters after a failure */
    join_thread(parker);
    join_thread(canceller);
    CHECK_EQ(ng_parking_lot_waiters(&race.word), 0);
}

/* ---- Block hooks ----------------------------------------------------------------------------- */

static int hook_before_calls, hook_after_calls, hook_bad_cookies, hook_out_of_order;
static uint64_t hook_last_thread;
static char hook_cookie;

static void *counting_before_block(void)
{
    ng_atomic_fetch_add(&hook_before_calls, 1, NG_SEQ_CST);
    ng_atomic_store(&hook_last_thread, ng_thread_id(), NG_SEQ_CST);
    return &hook_cookie;
}

static void counting_after_block(void *cookie)
{
    if (cookie != &hook_cookie)
        ng_atomic_fetch_add(&hook_bad_cookies, 1, NG_SEQ_CST);
    /* The matching "before" must already have run. */
    int after = ng_atomic_fetch_add(&hook_after_calls, 1, NG_SEQ_CST) + 1;
    if (after > ng_atomic_load(&hook_before_calls, NG_SEQ_CST))
        ng_atomic_fetch_add(&hook_out_of_order, 1, NG_SEQ_CST);
}

static const ng_block_hooks counting_hooks = {counting_before_block, counting_after_block};

TEST(block_hooks_run_around_detached_sleeps_only)
{
    uint32_t word = 0, zero = 0, one = 1;
    hook_before_calls = hook_after_calls = hook_bad_cookies = hook_out_of_order = 0;
    const ng_block_hooks *previous = ng_set_block_hooks(&counting_hooks);
    CHECK_PTR_EQ(previous, NULL); /* the default is "no hooks" */

    /* A detached park that sleeps and times out: once each, on the parking thread. */
    CHECK_STATUS(ng_park(&word, &zero, 4, 5 * NG_NS_PER_MS, NULL, NG_WAIT_DETACH), NG_TIMEOUT);
    CHECK_EQ(hook_before_calls, 1);
    CHECK_EQ(hook_after_calls, 1);
    CHECK_EQ(hook_last_thread, ng_thread_id());

    /* Without the flag: no hooks. */
    CHECK_STATUS(ng_park(&word, &zero, 4, 5 * NG_NS_PER_MS, NULL, 0), NG_TIMEOUT);
    CHECK_EQ(hook_before_calls, 1);
    CHECK_EQ(hook_after_calls, 1);

    /* A park that does not sleep because the value differs: no hooks. */
    CHECK_STATUS(ng_park(&word, &one, 4, -1, NULL, NG_WAIT_DETACH), NG_AGAIN);
    CHECK_EQ(hook_before_calls, 1);
    CHECK_EQ(hook_after_calls, 1);

    /* A detached park in another thread that an unpark ends. */
    struct park_job job = {.addr = &word, .expected = &zero, .size = 4, .timeout_ns = -1,
                           .flags = NG_WAIT_DETACH};
    pthread_t t = spawn_thread(park_job_main, &job);
    CHECK(WAIT_UNTIL(ng_parking_lot_waiters(&word) == 1, PATIENCE_MS));
    CHECK(WAIT_UNTIL(ng_atomic_load(&hook_before_calls, NG_SEQ_CST) == 2, PATIENCE_MS));
    CHECK_EQ(ng_atomic_load(&hook_after_calls, NG_SEQ_CST), 1); /* still asleep */
    CHECK_EQ(ng_unpark(&word, NULL, NULL), 1);
    join_thread(t);
    CHECK_STATUS(job.result, NG_OK);
    CHECK_EQ(hook_before_calls, 2);
    CHECK_EQ(hook_after_calls, 2);
    CHECK_EQ(hook_last_thread, job.thread_id);

    CHECK_EQ(hook_bad_cookies, 0);
    CHECK_EQ(hook_out_of_order, 0);
    CHECK_PTR_EQ(ng_set_block_hooks(previous), &counting_hooks);
}
