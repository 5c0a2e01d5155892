/* The delayed-free back-pressure cap (ng_delayed_set_cap): a checkpoint whose thread's queue
 * is over the cap waits, detached, until its queue can run. Checked here: the setting, that
 * off means off, that the bound holds while a reader reports, and that the waiting thread is
 * detached (a barrier, i.e. a stop-the-world plus a grace period, completes while it waits,
 * and the waiter copes with its queue having been taken meanwhile). */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include "harness.h"

enum { BP_ENTRY_BYTES = 100, BP_CAP = 1000, BP_ENTRIES = 200 };

static void bp_count(void *arg) { ng_atomic_fetch_add((uint64_t *)arg, 1, NG_RELAXED); }

static uint64_t bp_bytes(ng_tstate *ts) { return ng_atomic_load(&ts->delayed.bytes, NG_RELAXED); }

static uint32_t bp_state(ng_tstate *ts) { return ng_atomic_load(&ts->state, NG_SEQ_CST); }

/* An interpreter whose memory-aware thresholds never ask for processing, so that only the
 * cap (and a full chunk) makes a checkpoint run entries. */
static ng_interp *bp_interp(void)
{
    ng_interp *in = NULL;
    if (ng_interp_new(&in) != NG_OK)
        return NULL;
    ng_qsbr_set_limits(&in->qsbr, UINT32_MAX, UINT64_C(1) << 40, 0);
    return in;
}

static ng_tstate *bp_attached(ng_interp *in)
{
    ng_tstate *ts = NULL;
    if (ng_tstate_new(in, &ts) != NG_OK)
        return NULL;
    if (ng_tstate_attach(ts) != NG_OK) {
        ng_tstate_release(ts);
        return NULL;
    }
    return ts;
}

TEST(delayed_cap_is_off_by_default_and_settable)
{
    ng_interp *in = bp_interp();
    REQUIRE(in != NULL);
    CHECK_EQ(ng_delayed_cap(in), 0);
    CHECK_STATUS(ng_delayed_set_cap(in, BP_CAP), NG_OK);
    CHECK_EQ(ng_delayed_cap(in), BP_CAP);
    CHECK_STATUS(ng_delayed_set_cap(in, 0), NG_OK);
    CHECK_EQ(ng_delayed_cap(in), 0);
    CHECK_STATUS(ng_delayed_set_cap(NULL, BP_CAP), NG_EINVAL);
    CHECK_EQ(ng_delayed_cap(NULL), 0);
    CHECK_EQ(ng_delayed_cap_waits(NULL), 0);
    CHECK_EQ(ng_delayed_cap_waits(in), 0);
    CHECK_STATUS(ng_interp_delete(in), NG_OK);
}

/* A reader that is attached from start to stop: it reports at each checkpoint (mode REPORT)
 * or holds every goal back until told to stop (mode HOLD). */
enum { BP_REPORT = 1, BP_HOLD = 2 };

typedef struct bp_reader {
    ng_interp *in;
    int mode;
    uint32_t ready, stop;
    int err;
    pthread_t thread;
} bp_reader;

static void *bp_reader_main(void *arg)
{
    bp_reader *r = arg;
    ng_tstate *ts = bp_attached(r->in);
    if (ts == NULL) {
        r->err = 1;
        ng_atomic_store(&r->ready, 1, NG_RELEASE);
        return NULL;
    }
    ng_atomic_store(&r->ready, 1, NG_RELEASE);
    while (!ng_atomic_load(&r->stop, NG_ACQUIRE)) {
        if (r->mode == BP_REPORT) {
            if (ng_tstate_checkpoint(ts) != NG_OK)
                r->err = 2;
        }
        sched_yield();
    }
    if (ng_tstate_release(ts) != NG_OK)
        r->err = 3;
    return NULL;
}

static bool bp_reader_start(bp_reader *r, ng_interp *in, int mode)
{
    memset(r, 0, sizeof(*r));
    r->in = in;
    r->mode = mode;
    if (pthread_create(&r->thread, NULL, bp_reader_main, r) != 0)
        return false;
    SPIN_UNTIL(ng_atomic_load(&r->ready, NG_ACQUIRE));
    return r->err == 0;
}

static void bp_reader_stop(bp_reader *r)
{
    ng_atomic_store(&r->stop, 1, NG_RELEASE);
    join_thread(r->thread);
    CHECK_EQ(r->err, 0);
}

/* Off: the queue grows past any would-be cap while a reader holds the goals back, and no
 * checkpoint waits (were it to wait, it would wait for ever: the reader never reports). */
TEST(delayed_cap_off_never_waits)
{
    ng_interp *in = bp_interp();
    REQUIRE(in != NULL);
    bp_reader r;
    REQUIRE(bp_reader_start(&r, in, BP_HOLD));
    ng_tstate *ts = bp_attached(in);
    REQUIRE(ts != NULL);
    uint64_t runs = 0;
    for (int i = 0; i < 20; i++) {
        CHECK_STATUS(ng_call_delayed(ts, bp_count, &runs, BP_ENTRY_BYTES), NG_OK);
        CHECK_STATUS(ng_tstate_checkpoint(ts), NG_OK);
    }
    CHECK_EQ(bp_bytes(ts), 20 * BP_ENTRY_BYTES);
    CHECK_EQ(ng_atomic_load(&runs, NG_RELAXED), 0);
    CHECK_EQ(ng_delayed_cap_waits(in), 0);
    bp_reader_stop(&r);
    CHECK_STATUS(ng_qsbr_barrier(ts), NG_OK);
    CHECK_EQ(ng_atomic_load(&runs, NG_RELAXED), 20);
    CHECK_STATUS(ng_tstate_release(ts), NG_OK);
    CHECK_STATUS(ng_interp_delete(in), NG_OK);
}

/* On: after every checkpoint the writer's queue holds at most the cap, although nothing
 * else would process it (the thresholds are out of reach), and every entry runs. */
TEST(delayed_cap_bounds_the_queue_at_each_checkpoint)
{
    ng_interp *in = bp_interp();
    REQUIRE(in != NULL);
    CHECK_STATUS(ng_delayed_set_cap(in, BP_CAP), NG_OK);
    bp_reader r;
    REQUIRE(bp_reader_start(&r, in, BP_REPORT));
    ng_tstate *ts = bp_attached(in);
    REQUIRE(ts != NULL);
    uint64_t runs = 0, peak = 0;
    for (int i = 0; i < BP_ENTRIES; i++) {
        CHECK_STATUS(ng_call_delayed(ts, bp_count, &runs, BP_ENTRY_BYTES), NG_OK);
        CHECK_STATUS(ng_tstate_checkpoint(ts), NG_OK);
        CHECK_EQ(bp_state(ts), NG_TSTATE_ATTACHED);
        uint64_t b = bp_bytes(ts);
        peak = b > peak ? b : peak;
    }
    CHECK_LE(peak, BP_CAP);
    CHECK_GT(ng_delayed_cap_waits(in), 0);
    /* Over the cap means a wait that ran the whole queue: at most every 11th entry waits. */
    CHECK_LE(ng_delayed_cap_waits(in), BP_ENTRIES / (BP_CAP / BP_ENTRY_BYTES + 1));
    bp_reader_stop(&r);
    CHECK_STATUS(ng_qsbr_barrier(ts), NG_OK);
    CHECK_EQ(ng_atomic_load(&runs, NG_RELAXED), BP_ENTRIES);
    CHECK_STATUS(ng_tstate_release(ts), NG_OK);
    CHECK_STATUS(ng_interp_delete(in), NG_OK);
}

/* A writer thread that goes over the cap while the main thread holds every goal back. */
typedef struct bp_writer {
    ng_interp *in;
    ng_tstate *ts;
    uint64_t runs;
    uint32_t queued; /* entries queued before the checkpoint that waits */
    int checkpoint_status;
    uint64_t bytes_after;
    uint32_t state_after;
    uint32_t done;
    uint32_t published; /* ts written (1) or failed (2) */
} bp_writer;

static void *bp_writer_main(void *arg)
{
    bp_writer *w = arg;
    w->ts = bp_attached(w->in);
    ng_atomic_store(&w->published, w->ts != NULL ? 1 : 2, NG_RELEASE);
    if (w->ts == NULL) {
        w->checkpoint_status = 1;
        ng_atomic_store(&w->done, 1, NG_RELEASE);
        return NULL;
    }
    int st = NG_OK;
    for (int i = 0; i <= BP_CAP / BP_ENTRY_BYTES && st == NG_OK; i++) {
        st = ng_call_delayed(w->ts, bp_count, &w->runs, BP_ENTRY_BYTES);
        ng_atomic_fetch_add(&w->queued, 1, NG_RELEASE);
    }
    if (st == NG_OK)
        st = ng_tstate_checkpoint(w->ts); /* over the cap: waits */
    w->checkpoint_status = st;
    w->bytes_after = bp_bytes(w->ts);
    w->state_after = bp_state(w->ts);
    ng_atomic_store(&w->done, 1, NG_RELEASE);
    if (st == NG_OK)
        st = ng_tstate_release(w->ts);
    return NULL;
}

/* While the writer waits it is detached: a barrier (a stop-the-world, which suspends it, and
 * a grace period, which its slot would otherwise hold back) completes, takes the writer's
 * queue and runs it; the writer then resumes attached with an empty queue. */
TEST(delayed_cap_waiter_is_detached_for_barrier_and_stop_the_world)
{
    ng_interp *in = bp_interp();
    REQUIRE(in != NULL);
    CHECK_STATUS(ng_delayed_set_cap(in, BP_CAP), NG_OK);
    ng_tstate *me = bp_attached(in); /* holds every goal back: never reports until the barrier */
    REQUIRE(me != NULL);
    bp_writer w = {.in = in};
    pthread_t t;
    REQUIRE(pthread_create(&t, NULL, bp_writer_main, &w) == 0);
    SPIN_UNTIL(ng_atomic_load(&w.published, NG_ACQUIRE) != 0);
    REQUIRE(w.ts != NULL);
    /* The writer counts its wait before it detaches. */
    CHECK(WAIT_UNTIL(ng_delayed_cap_waits(in) == 1 && bp_state(w.ts) == NG_TSTATE_DETACHED,
                     PATIENCE_MS));
    CHECK_EQ(ng_atomic_load(&w.done, NG_ACQUIRE), 0);
    CHECK_EQ(ng_atomic_load(&w.runs, NG_RELAXED), 0);

    CHECK_STATUS(ng_qsbr_barrier(me), NG_OK);
    CHECK_EQ(ng_atomic_load(&w.runs, NG_RELAXED), BP_CAP / BP_ENTRY_BYTES + 1);
    /* The barrier reported for us: the writer's goal is reached and it returns. */
    join_thread(t);
    CHECK_STATUS(w.checkpoint_status, NG_OK);
    CHECK_EQ(w.bytes_after, 0);
    CHECK_EQ(w.state_after, NG_TSTATE_ATTACHED);
    CHECK_EQ(ng_atomic_load(&w.runs, NG_RELAXED), BP_CAP / BP_ENTRY_BYTES + 1);
    CHECK_STATUS(ng_tstate_release(me), NG_OK);
    CHECK_STATUS(ng_interp_delete(in), NG_OK);
}

/* The wait is the checkpoint's: a direct ng_process_delayed (whose caller may hold
 * references) never waits, however far over the cap. */
TEST(delayed_cap_process_delayed_never_waits)
{
    ng_interp *in = bp_interp();
    REQUIRE(in != NULL);
    CHECK_STATUS(ng_delayed_set_cap(in, BP_CAP), NG_OK);
    bp_reader r;
    REQUIRE(bp_reader_start(&r, in, BP_HOLD));
    ng_tstate *ts = bp_attached(in);
    REQUIRE(ts != NULL);
    uint64_t runs = 0;
    for (int i = 0; i < 20; i++) {
        CHECK_STATUS(ng_call_delayed(ts, bp_count, &runs, BP_ENTRY_BYTES), NG_OK);
        CHECK_EQ(ng_process_delayed(ts), 0);
    }
    CHECK_EQ(bp_bytes(ts), 20 * BP_ENTRY_BYTES);
    CHECK_EQ(ng_delayed_cap_waits(in), 0);
    bp_reader_stop(&r);
    CHECK_STATUS(ng_tstate_checkpoint(ts), NG_OK); /* over the cap, the reader gone: runs all */
    CHECK_EQ(ng_atomic_load(&runs, NG_RELAXED), 20);
    CHECK_EQ(bp_bytes(ts), 0);
    CHECK_STATUS(ng_tstate_release(ts), NG_OK);
    CHECK_STATUS(ng_interp_delete(in), NG_OK);
}

/* ---- Stall reports during the wait ------------------------------------------------------- */

#define BP_STALL_NS (20 * NG_NS_PER_MS)

/* What the stall handler saw: every report, and the thread it ran on with that thread's
 * attachment at the time. */
typedef struct bp_stall_log {
    ng_tstate *writer;       /* the cap waiter, once published */
    uint32_t calls;
    ng_qsbr_stall first;
    uint64_t first_thread;   /* ng_thread_id() of the thread the first call ran on */
    ng_tstate *first_current; /* ng_tstate_current() there */
    uint32_t writer_state;   /* the writer's state word during the first call */
    uint32_t recorded;       /* the fields above are written */
} bp_stall_log;

static void bp_record_stall(void *arg, const ng_qsbr_stall *stall)
{
    bp_stall_log *log = arg;
    if (ng_atomic_fetch_add(&log->calls, 1, NG_SEQ_CST) == 0) {
        log->first = *stall;
        log->first_thread = ng_thread_id();
        log->first_current = ng_tstate_current();
        ng_tstate *w = ng_atomic_load(&log->writer, NG_ACQUIRE);
        log->writer_state = w != NULL ? bp_state(w) : UINT32_MAX;
        ng_atomic_store(&log->recorded, 1, NG_RELEASE);
    }
}

/* A reader holds every goal back while the writer waits over the cap: the writer's wait
 * reports the reader (never itself), once for the stall however long it lasts, from the
 * waiting thread, detached. */
TEST(delayed_cap_wait_reports_the_reader_once)
{
    ng_interp *in = bp_interp();
    REQUIRE(in != NULL);
    CHECK_STATUS(ng_delayed_set_cap(in, BP_CAP), NG_OK);
    ng_tstate *reader = bp_attached(in); /* holds every goal back until released */
    REQUIRE(reader != NULL);
    static bp_stall_log log;
    memset(&log, 0, sizeof(log));
    ng_qsbr_set_stall_handler(&in->qsbr, BP_STALL_NS, bp_record_stall, &log);

    bp_writer w = {.in = in};
    pthread_t t;
    REQUIRE(pthread_create(&t, NULL, bp_writer_main, &w) == 0);
    SPIN_UNTIL(ng_atomic_load(&w.published, NG_ACQUIRE) != 0);
    REQUIRE(w.ts != NULL);
    ng_atomic_store(&log.writer, w.ts, NG_RELEASE);
    CHECK(WAIT_UNTIL(ng_delayed_cap_waits(in) == 1 && bp_state(w.ts) == NG_TSTATE_DETACHED,
                     PATIENCE_MS));
    bool reported = CHECK(WAIT_UNTIL(ng_atomic_load(&log.recorded, NG_ACQUIRE), PATIENCE_MS));
    /* The writer keeps polling (every wake-up slice) while the reader stays put. */
    sleep_ms(10 * BP_STALL_NS / NG_NS_PER_MS);
    CHECK_EQ(ng_atomic_load(&log.calls, NG_SEQ_CST), 1);
    CHECK_EQ(ng_atomic_load(&w.done, NG_ACQUIRE), 0);
    if (reported) {
        CHECK(log.first.thread_id == reader->thread_id);
        CHECK(log.first.tstate_id == reader->id);
        CHECK_EQ(log.first.slot_index, reader->qsbr->index);
        CHECK(log.first.attached);
        CHECK(log.first.thread_id != w.ts->thread_id);
        CHECK(log.first_thread == w.ts->thread_id);
        CHECK_PTR_EQ(log.first_current, NULL);
        CHECK_EQ(log.writer_state, NG_TSTATE_DETACHED);
    }

    /* The reader goes: the writer's goal is reached. */
    CHECK_STATUS(ng_tstate_release(reader), NG_OK);
    join_thread(t);
    CHECK_STATUS(w.checkpoint_status, NG_OK);
    CHECK_EQ(w.bytes_after, 0);
    CHECK_EQ(ng_atomic_load(&log.calls, NG_SEQ_CST), 1);
    ng_qsbr_set_stall_handler(&in->qsbr, 0, NULL, NULL);
    CHECK_STATUS(ng_interp_delete(in), NG_OK);
}
