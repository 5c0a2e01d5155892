/* Delayed frees (nogil/delayed_free.h; spec §2, R5, R6, R7): grace periods, order,
 * re-entrancy, memory-aware processing, hand-over at thread exit, the barrier, the
 * out-of-memory path and misuse. */
#define _GNU_SOURCE

#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "delayed_free_internal.h"
#include "tstate_helpers.h"

/* ==== Helpers ============================================================================= */

static uint64_t wr_seq(ng_interp *in) { return ng_atomic_load(&in->qsbr.wr_seq, NG_SEQ_CST); }
static uint64_t queue_items(const ng_delayed_queue *q)
{
    return ng_atomic_load(&q->items, NG_RELAXED);
}
static uint64_t queue_bytes(const ng_delayed_queue *q)
{
    return ng_atomic_load(&q->bytes, NG_RELAXED);
}
static bool delayed_pending(ng_tstate *ts)
{
    return (ng_atomic_load(&ts->pending, NG_RELAXED) & NG_PENDING_DELAYED) != 0;
}

/* Chunks in a queue (the interpreter's: call with its mutex held, or when nobody else uses
 * it). */
static long queue_chunks(const ng_delayed_queue *q)
{
    long n = 0;
    for (const ng_delayed_chunk *c = q->head; c != NULL; c = c->next)
        n++;
    return n;
}

/* Makes everything the calling thread queued due and runs it, assuming every other thread of
 * the interpreter is detached or quiescent: an advance, a quiescent state, processing. */
static void flush_own(ng_tstate *ts)
{
    ng_qsbr_advance(&ts->interp->qsbr);
    CHECK_STATUS(ng_tstate_checkpoint(ts), NG_OK);
    CHECK_GE(ng_process_delayed(ts), 0);
}

/* A callback that counts its runs (an atomic counter passed as the argument). */
static void count_run(void *arg) { ng_atomic_fetch_add((uint64_t *)arg, 1, NG_RELAXED); }

/* A callback that sets its flag byte; a second run of the same entry is recorded. */
static uint64_t flag_double_runs;
static void set_flag(void *arg)
{
    uint8_t *flag = arg;
    if (ng_atomic_exchange(flag, 1, NG_RELAXED) != 0)
        ng_atomic_fetch_add(&flag_double_runs, 1, NG_RELAXED);
}

/* ---- A peer thread with its own attached state, driven by commands -------------------- */

enum peer_mode {
    PEER_HOLD = 1,        /* attached, never reports a quiescent state */
    PEER_CHECKPOINTS = 2, /* attached, checkpoints in a loop */
    PEER_DETACHED = 3,    /* detached */
    PEER_EXIT = 4,        /* releases its state and ends */
    PEER_QUEUE = 5,       /* attached, queues `to_queue` counted calls once, then checkpoints */
};

typedef struct peer {
    ng_interp *interp;
    ng_tstate *ts;
    uint32_t cmd; /* (sequence << 8) | mode */
    uint32_t ack; /* the last command carried out at least once */
    pthread_t thread;
    uint64_t *counter; /* PEER_QUEUE's entries count their runs here */
    int to_queue;
} peer;

static void *peer_main(void *arg)
{
    peer *p = arg;
    if (ng_tstate_new(p->interp, &p->ts) != NG_OK || ng_tstate_attach(p->ts) != NG_OK) {
        harness_fail(__FILE__, __LINE__, "peer: could not create and attach its state");
        return NULL;
    }
    bool attached = true;
    for (;;) {
        uint32_t cmd = ng_atomic_load(&p->cmd, NG_ACQUIRE);
        uint32_t mode = cmd & 0xff;
        if (mode == PEER_EXIT)
            break;
        if (mode == PEER_DETACHED && attached) {
            CHECK_STATUS(ng_tstate_detach(p->ts), NG_OK);
            attached = false;
        }
        else if (mode != PEER_DETACHED && !attached) {
            CHECK_STATUS(ng_tstate_attach(p->ts), NG_OK);
            attached = true;
        }
        if (mode == PEER_QUEUE && ng_atomic_load(&p->ack, NG_RELAXED) != cmd) {
            for (int i = 0; i < p->to_queue; i++)
                CHECK_STATUS(ng_call_delayed(p->ts, count_run, p->counter, 8), NG_OK);
        }
        if (mode == PEER_CHECKPOINTS || mode == PEER_QUEUE)
            CHECK_STATUS(ng_tstate_checkpoint(p->ts), NG_OK);
        /* Release: the command's effect (a quiescent state, a detach) precedes the ack. */
        ng_atomic_store(&p->ack, cmd, NG_RELEASE);
        sched_yield();
    }
    CHECK_STATUS(ng_tstate_release(p->ts), NG_OK);
    return NULL;
}

/* Gives a command and waits until the peer carried it out once. */
static bool peer_command(peer *p, uint32_t mode)
{
    uint32_t cmd = (((ng_atomic_load(&p->cmd, NG_RELAXED) >> 8) + 1) << 8) | mode;
    ng_atomic_store(&p->cmd, cmd, NG_RELEASE);
    if (mode == PEER_EXIT)
        return true;
    return CHECK(WAIT_UNTIL(ng_atomic_load(&p->ack, NG_ACQUIRE) == cmd, PATIENCE_MS));
}

static bool peer_start(peer *p, ng_interp *in, uint32_t mode)
{
    memset(p, 0, sizeof *p);
    p->interp = in;
    p->cmd = (1u << 8) | mode;
    p->thread = spawn_thread(peer_main, p);
    return CHECK(WAIT_UNTIL(ng_atomic_load(&p->ack, NG_ACQUIRE) == p->cmd, PATIENCE_MS));
}

static void peer_stop(peer *p)
{
    peer_command(p, PEER_EXIT);
    join_thread(p->thread);
}

/* A scene (TSTATE_SCENE) with a peer started in the given mode, declared as `p`. */
#define PEER_SCENE(in, ts, p, mode)                                                     \
    TSTATE_SCENE(in, ts);                                                               \
    peer p;                                                                             \
    REQUIRE(peer_start(&p, in, mode))

/* The end of a PEER_SCENE: the peer stopped, then end_scene. */
static void end_peer_scene(ng_interp *in, ng_tstate *ts, peer *p)
{
    peer_stop(p);
    end_scene(in, ts);
}

/* ==== Grace periods and order ============================================================= */

/* Entries wait for a thread that does not report; its report releases them (spec D1). */
TEST(delayed_entries_wait_for_a_quiescent_peer)
{
    PEER_SCENE(in, ts, p, PEER_HOLD);

    uint64_t runs = 0;
    void *block = malloc(64);
    CHECK_STATUS(ng_free_delayed(ts, block, 64), NG_OK);
    for (int i = 0; i < 3; i++)
        CHECK_STATUS(ng_call_delayed(ts, count_run, &runs, 0), NG_OK);
    /* A big entry forces an advance and asks for processing: the goal is then due as soon as
     * every attached thread reports once more. */
    uint64_t seq = wr_seq(in);
    CHECK_STATUS(ng_call_delayed(ts, count_run, &runs, 2 * 1024 * 1024), NG_OK);
    CHECK_EQ(wr_seq(in), seq + NG_QSBR_INCR);
    CHECK(delayed_pending(ts));
    CHECK_EQ(queue_items(&ts->delayed), 5);

    for (int i = 0; i < 5; i++) {
        CHECK_STATUS(ng_tstate_checkpoint(ts), NG_OK);
        CHECK_EQ(ng_process_delayed(ts), 0);
    }
    CHECK_EQ(ng_atomic_load(&runs, NG_RELAXED), 0);
    CHECK_EQ(queue_items(&ts->delayed), 5);
    /* The goal is already passed by the write sequence: the checkpoint keeps asking. */
    CHECK(delayed_pending(ts));

    REQUIRE(peer_command(&p, PEER_CHECKPOINTS));
    CHECK_STATUS(ng_tstate_checkpoint(ts), NG_OK); /* processes: the peer has reported */
    CHECK_EQ(ng_atomic_load(&runs, NG_RELAXED), 4);
    CHECK_EQ(queue_items(&ts->delayed), 0);
    CHECK_EQ(queue_bytes(&ts->delayed), 0);
    CHECK(!delayed_pending(ts));

    end_peer_scene(in, ts, &p);
}

/* A checkpoint keeps retrying a goal that only a peer's report holds back, however many
 * times it finds it unmet (the retry path that answers without processing, R5), drops the
 * retry for a goal no advance has passed yet, and still drains the interpreter's queue while
 * its own entries wait. The request bit is read after each checkpoint: a retry that forgot
 * to ask again would leave the entries for the next threshold. */
TEST(delayed_checkpoint_retries_an_unmet_goal_until_the_peer_reports)
{
    PEER_SCENE(in, ts, h, PEER_HOLD);
    peer a;
    REQUIRE(peer_start(&a, in, PEER_DETACHED));
    uint64_t runs = 0, abandoned_runs = 0;
    /* `a` queues entries (goals not advanced yet) and stays detached with them; an advance
     * and one report of `h` pass their goals, then `h` holds again. */
    a.counter = &abandoned_runs;
    a.to_queue = 3;
    REQUIRE(peer_command(&a, PEER_QUEUE));
    REQUIRE(peer_command(&a, PEER_DETACHED));
    CHECK_EQ(queue_items(&a.ts->delayed), 3);
    ng_qsbr_advance(&in->qsbr);
    REQUIRE(peer_command(&h, PEER_CHECKPOINTS));
    REQUIRE(peer_command(&h, PEER_HOLD));

    /* Our entry advances and asks for processing; `h` holds its goal back. */
    CHECK_STATUS(ng_call_delayed(ts, count_run, &runs, 2 * 1024 * 1024), NG_OK);
    CHECK(ng_atomic_load(&ts->qsbr->should_process, NG_RELAXED));
    for (int i = 0; i < 4; i++) {
        CHECK_STATUS(ng_tstate_checkpoint(ts), NG_OK);
        CHECK(!ng_atomic_load(&ts->qsbr->should_process, NG_RELAXED));
        CHECK(delayed_pending(ts));
        CHECK_EQ(ng_atomic_load(&runs, NG_RELAXED), 0);
    }

    /* `a`'s work moves to the interpreter's queue; its goals are reached, ours is not. */
    ng_delayed_abandon(a.ts, NULL);
    CHECK(ng_atomic_load(&in->delayed.has_work, NG_RELAXED));
    CHECK_STATUS(ng_tstate_checkpoint(ts), NG_OK);
    CHECK_EQ(ng_atomic_load(&abandoned_runs, NG_RELAXED), 3);
    CHECK_EQ(ng_atomic_load(&runs, NG_RELAXED), 0);
    CHECK(delayed_pending(ts));

    REQUIRE(peer_command(&h, PEER_CHECKPOINTS));
    CHECK_STATUS(ng_tstate_checkpoint(ts), NG_OK);
    CHECK_EQ(ng_atomic_load(&runs, NG_RELAXED), 1);
    CHECK_EQ(queue_items(&ts->delayed), 0);
    CHECK(!delayed_pending(ts));

    /* A goal ahead of the write sequence waits for an advance, not for reports: a request
     * found set at the checkpoint (one that leaves the bit to this layer) is dropped, and it
     * is kept for a goal that only reports hold back. ng_delayed_checkpoint is what the
     * checkpoint calls. */
    REQUIRE(peer_command(&h, PEER_HOLD));
    CHECK_STATUS(ng_call_delayed(ts, count_run, &runs, 8), NG_OK);
    CHECK(!delayed_pending(ts));
    ng_tstate_set_pending(ts, NG_PENDING_DELAYED);
    CHECK_EQ(ng_delayed_checkpoint(ts), 0);
    CHECK(!delayed_pending(ts));
    ng_qsbr_advance(&in->qsbr);
    ng_tstate_set_pending(ts, NG_PENDING_DELAYED);
    CHECK_EQ(ng_delayed_checkpoint(ts), 0);
    CHECK(delayed_pending(ts));
    CHECK_EQ(ng_atomic_load(&runs, NG_RELAXED), 1);

    REQUIRE(peer_command(&h, PEER_CHECKPOINTS));
    CHECK_STATUS(ng_tstate_checkpoint(ts), NG_OK);
    CHECK_EQ(ng_atomic_load(&runs, NG_RELAXED), 2);
    CHECK(!delayed_pending(ts));
    peer_stop(&a);
    end_peer_scene(in, ts, &h);
}

/* A detached thread never holds a goal back. */
TEST(delayed_detached_peer_does_not_hold_back)
{
    PEER_SCENE(in, ts, p, PEER_DETACHED);
    uint64_t runs = 0;
    CHECK_STATUS(ng_call_delayed(ts, count_run, &runs, 2 * 1024 * 1024), NG_OK);
    CHECK_STATUS(ng_tstate_checkpoint(ts), NG_OK);
    CHECK_EQ(ng_atomic_load(&runs, NG_RELAXED), 1);
    end_peer_scene(in, ts, &p);
}

#define ORDER_ENTRIES 700
static uint32_t order_log[ORDER_ENTRIES];
static uint32_t order_count;

static void log_order(void *arg)
{
    uint32_t i = ng_atomic_fetch_add(&order_count, 1, NG_RELAXED);
    if (i < ORDER_ENTRIES)
        order_log[i] = (uint32_t)(uintptr_t)arg;
}

/* Entries of one thread run in the order they were queued, across chunk boundaries and the
 * full-chunk safety valve. */
TEST(delayed_calls_run_in_fifo_order)
{
    TSTATE_SCENE(in, ts);
    order_count = 0;
    for (uint32_t i = 0; i < ORDER_ENTRIES; i++) {
        CHECK_STATUS(ng_call_delayed(ts, log_order, (void *)(uintptr_t)i, 16), NG_OK);
        if (i % 50 == 49)
            CHECK_STATUS(ng_tstate_checkpoint(ts), NG_OK);
    }
    flush_own(ts);
    CHECK_EQ(ng_atomic_load(&order_count, NG_RELAXED), ORDER_ENTRIES);
    int misplaced = 0;
    for (uint32_t i = 0; i < ORDER_ENTRIES; i++)
        misplaced += order_log[i] != i;
    CHECK_EQ(misplaced, 0);
    CHECK_EQ(queue_items(&ts->delayed), 0);
    /* One drained chunk stays cached for the next entry. */
    CHECK_EQ(queue_chunks(&ts->delayed), 1);
    end_scene(in, ts);
}

/* A thread that retires steadily reuses its chunks: a drained chunk in front of others
 * becomes the queue's spare, and the next chunk the tail needs is that spare (the most
 * recently drained one), not a new allocation. The release hands the spare back (ASan's
 * leak check sees it otherwise). */
TEST(delayed_drained_chunk_becomes_the_spare_and_is_reused)
{
    TSTATE_SCENE(in, ts);
    uint64_t runs = 0;
    /* Two chunks' worth minus one: the first chunk full (its safety valve finds nothing due:
     * no advance yet), the second partly used. */
    for (int i = 0; i < 2 * NG_DELAYED_CHUNK_ENTRIES - 1; i++)
        CHECK_STATUS(ng_call_delayed(ts, count_run, &runs, 0), NG_OK);
    CHECK_EQ(queue_chunks(&ts->delayed), 2);
    CHECK(ts->delayed.spare == NULL);
    ng_delayed_chunk *first = ts->delayed.head;
    flush_own(ts);
    CHECK_EQ(ng_atomic_load(&runs, NG_RELAXED), (uint64_t)(2 * NG_DELAYED_CHUNK_ENTRIES - 1));
    /* The first chunk drained in front of the second: kept as the spare; the second stays,
     * reset, as the cache. */
    CHECK(ts->delayed.spare == first);
    CHECK_EQ(queue_chunks(&ts->delayed), 1);
    CHECK(ts->delayed.head != first);
    /* Once the cached chunk is full, the next chunk is the spare. */
    for (int i = 0; i < NG_DELAYED_CHUNK_ENTRIES - 1; i++)
        CHECK_STATUS(ng_call_delayed(ts, count_run, &runs, 0), NG_OK);
    CHECK(ts->delayed.tail->wr_idx == NG_DELAYED_CHUNK_ENTRIES - 1);
    CHECK_STATUS(ng_call_delayed(ts, count_run, &runs, 0), NG_OK); /* fills it: valve */
    CHECK_STATUS(ng_call_delayed(ts, count_run, &runs, 0), NG_OK); /* needs a chunk */
    CHECK(ts->delayed.tail == first);
    CHECK(ts->delayed.spare == NULL);
    CHECK_EQ(ts->delayed.tail->rd_idx, 0);
    CHECK_EQ(ts->delayed.tail->wr_idx, 1);
    CHECK(ts->delayed.tail->next == NULL);
    flush_own(ts);
    CHECK_EQ(ng_atomic_load(&runs, NG_RELAXED), (uint64_t)(3 * NG_DELAYED_CHUNK_ENTRIES));
    CHECK_EQ(queue_items(&ts->delayed), 0);
    end_scene(in, ts);
}

/* ---- Re-entrancy (spec 2.8) ---------------------------------------------------------- */

typedef struct chain {
    ng_tstate *ts;
    uint32_t next;      /* next link to queue */
    uint32_t last;      /* links in all */
    uint32_t ran;       /* links run so far */
    uint32_t out_of_order;
    uint32_t errors;
} chain;

static chain the_chain;

/* Each link queues the next two ways (a call and a plain free), fills chunks, and sometimes
 * processes the queue it is being run from. */
static void chain_link(void *arg)
{
    chain *c = &the_chain;
    uint32_t me = (uint32_t)(uintptr_t)arg;
    if (me != c->ran)
        c->out_of_order++;
    c->ran++;
    if (c->next < c->last) {
        uint32_t n = c->next++;
        if (ng_call_delayed(c->ts, chain_link, (void *)(uintptr_t)n, 32) != NG_OK)
            c->errors++;
        if (ng_free_delayed(c->ts, malloc(24), 24) != NG_OK)
            c->errors++;
    }
    if (me % 7 == 3 && ng_process_delayed(c->ts) < 0)
        c->errors++;
    /* A barrier from inside an entry would wait for itself. */
    if (me == 5 && ng_qsbr_barrier(c->ts) != NG_EBUSY)
        c->errors++;
}

TEST(delayed_entries_may_queue_and_process_from_inside)
{
    TSTATE_SCENE(in, ts);
    the_chain = (chain){.ts = ts, .next = 1, .last = 600};
    CHECK_STATUS(ng_call_delayed(ts, chain_link, (void *)(uintptr_t)0, 32), NG_OK);
    for (int round = 0; round < 5000 && the_chain.ran < the_chain.last; round++)
        flush_own(ts);
    CHECK_EQ(the_chain.ran, the_chain.last);
    CHECK_EQ(the_chain.out_of_order, 0);
    CHECK_EQ(the_chain.errors, 0);
    flush_own(ts);
    CHECK_EQ(queue_items(&ts->delayed), 0);
    CHECK_EQ(queue_bytes(&ts->delayed), 0);
    end_scene(in, ts);
}

/* ==== Objects, statistics, stopped world ================================================== */

static uint64_t objects_released;
static void release_object(void *obj)
{
    ng_atomic_fetch_add(&objects_released, 1, NG_RELAXED);
    free(obj);
}

TEST(delayed_objects_use_the_interpreter_release_function)
{
    TSTATE_SCENE(in, ts);
    objects_released = 0;
    CHECK_STATUS(ng_object_free_delayed(ts, malloc(40), 40), NG_OK); /* default: free */
    flush_own(ts);
    ng_interp_set_object_free(in, release_object);
    for (int i = 0; i < 3; i++)
        CHECK_STATUS(ng_object_free_delayed(ts, malloc(40), 40), NG_OK);
    CHECK_EQ(ng_atomic_load(&objects_released, NG_RELAXED), 0);
    flush_own(ts);
    CHECK_EQ(ng_atomic_load(&objects_released, NG_RELAXED), 3);
    end_scene(in, ts);
}

TEST(delayed_queue_statistics)
{
    PEER_SCENE(in, ts, p, PEER_HOLD);
    int64_t before = ng_monotonic_ns();
    uint64_t runs = 0, first_goal = ng_qsbr_shared_next(&in->qsbr);
    CHECK_STATUS(ng_call_delayed(ts, count_run, &runs, 100), NG_OK);
    CHECK_STATUS(ng_call_delayed(ts, count_run, &runs, 200), NG_OK);
    CHECK_STATUS(ng_call_delayed(ts, count_run, &runs, (size_t)UINT32_MAX + 5), NG_OK);
    CHECK_EQ(queue_items(&ts->delayed), 3);
    CHECK_EQ(queue_bytes(&ts->delayed), 300 + (uint64_t)UINT32_MAX); /* saturated size */
    CHECK_EQ(ng_atomic_load(&ts->delayed.oldest_goal, NG_RELAXED), first_goal);
    CHECK_GE(ng_atomic_load(&ts->delayed.oldest_ns, NG_RELAXED), before);
    CHECK_LE(ng_atomic_load(&ts->delayed.oldest_ns, NG_RELAXED), ng_monotonic_ns());

    REQUIRE(peer_command(&p, PEER_DETACHED));
    flush_own(ts);
    CHECK_EQ(ng_atomic_load(&runs, NG_RELAXED), 3);
    CHECK_EQ(queue_items(&ts->delayed), 0);
    CHECK_EQ(queue_bytes(&ts->delayed), 0);
    CHECK_EQ(ng_atomic_load(&ts->delayed.oldest_goal, NG_RELAXED), 0);
    CHECK_EQ(ng_atomic_load(&ts->delayed.oldest_ns, NG_RELAXED), 0);
    end_peer_scene(in, ts, &p);
}

/* While the caller has stopped the world, a plain free runs at once (everybody else is
 * suspended); calls still queue, and nothing user-supplied runs until the restart. */
TEST(delayed_free_while_the_world_is_stopped)
{
    PEER_SCENE(in, ts, p, PEER_CHECKPOINTS);
    uint64_t runs = 0;
    REQUIRE(CHECK_STATUS(ng_stop_the_world(in, ts), NG_OK));
    CHECK_STATUS(ng_free_delayed(ts, malloc(100), 100), NG_OK); /* ASan: freed, not leaked */
    CHECK_EQ(queue_items(&ts->delayed), 0);
    CHECK_STATUS(ng_call_delayed(ts, count_run, &runs, 2 * 1024 * 1024), NG_OK);
    CHECK_EQ(queue_items(&ts->delayed), 1);
    ng_qsbr_quiescent_state(ts->qsbr); /* the goal is reached: only the stop holds it */
    ng_tstate_clear_pending(ts, NG_PENDING_DELAYED);
    CHECK_EQ(ng_process_delayed(ts), 0);
    CHECK(delayed_pending(ts)); /* asks again for after the restart */
    CHECK_STATUS(ng_qsbr_barrier(ts), NG_EBUSY);
    CHECK_EQ(ng_atomic_load(&runs, NG_RELAXED), 0);
    CHECK_STATUS(ng_start_the_world(in), NG_OK);
    CHECK(WAIT_UNTIL((ng_tstate_checkpoint(ts), ng_atomic_load(&runs, NG_RELAXED) == 1),
                     PATIENCE_MS));
    end_peer_scene(in, ts, &p);
}

/* ==== Out of memory ======================================================================= */

typedef struct oom_reader {
    uint32_t in_read;       /* the peer holds the object */
    uint32_t stop;
    uint64_t *object;       /* a shared pointer, 0 = none */
    uint64_t poisoned_seen; /* the peer read freed memory */
    uint64_t ran_during_read;
} oom_reader;

static oom_reader oom;

static void *oom_reader_main(void *arg)
{
    ng_interp *in = arg;
    ng_tstate *ts = attached_state(in);
    if (ts == NULL)
        return NULL;
    while (!ng_atomic_load(&oom.stop, NG_ACQUIRE)) {
        uint64_t *obj = ng_atomic_load(&oom.object, NG_ACQUIRE);
        if (obj != NULL) {
            ng_atomic_store(&oom.in_read, 1, NG_SEQ_CST);
            /* Hold it for a while without a quiescent state, looking at it. */
            int64_t until = now_ns() + 20 * NG_NS_PER_MS;
            while (now_ns() < until) {
                if (ng_atomic_load(obj, NG_RELAXED) != 42)
                    ng_atomic_fetch_add(&oom.poisoned_seen, 1, NG_RELAXED);
                sched_yield();
            }
            ng_atomic_store(&oom.in_read, 0, NG_SEQ_CST);
        }
        CHECK_STATUS(ng_tstate_checkpoint(ts), NG_OK);
        sched_yield();
    }
    CHECK_STATUS(ng_tstate_release(ts), NG_OK);
    return NULL;
}

static void oom_poison_and_free(void *arg)
{
    uint64_t *obj = arg;
    if (ng_atomic_load(&oom.in_read, NG_SEQ_CST))
        ng_atomic_fetch_add(&oom.ran_during_read, 1, NG_RELAXED);
    ng_atomic_store(obj, 0xdead, NG_RELAXED);
    free(obj);
}

/* With no memory for a chunk the call still never loses the entry: it waits for a grace
 * period (a stop-the-world) and runs it, after the reader let go. */
TEST(delayed_out_of_memory_runs_after_a_grace_period)
{
    TSTATE_SCENE(in, ts);
    memset(&oom, 0, sizeof oom);
    pthread_t reader = spawn_thread(oom_reader_main, in);
    ng_interp_stats stats;

    for (int round = 0; round < 3; round++) {
        uint64_t *obj = malloc(sizeof *obj);
        *obj = 42;
        ng_atomic_store(&oom.object, obj, NG_RELEASE);
        CHECK(WAIT_UNTIL(ng_atomic_load(&oom.in_read, NG_SEQ_CST) == 1, PATIENCE_MS));
        ng_atomic_store(&oom.object, NULL, NG_RELEASE); /* unlink */
        /* Fill the current chunk so the next entry needs a new one, which then fails. */
        while (ts->delayed.tail == NULL || ts->delayed.tail->wr_idx < NG_DELAYED_CHUNK_ENTRIES)
            CHECK_STATUS(ng_free_delayed(ts, malloc(8), 8), NG_OK);
        ng_interp_get_stats(in, &stats);
        uint64_t stops = stats.stops;
        uint64_t items = queue_items(&ts->delayed);
        ng_atomic_store(&ng_test_fail_delayed_chunk_alloc, 1, NG_RELAXED);
        if (round == 2) {
            /* Kind FREE too; freeing while the reader still looks would be an ASan report. */
            CHECK_STATUS(ng_free_delayed(ts, obj, sizeof *obj), NG_OK);
        }
        else {
            CHECK_STATUS(ng_call_delayed(ts, oom_poison_and_free, obj, sizeof *obj), NG_OK);
        }
        CHECK_EQ(ng_atomic_load(&ng_test_fail_delayed_chunk_alloc, NG_RELAXED), 0);
        /* It ran synchronously: nothing new queued, one stop-the-world more. */
        CHECK_LE(queue_items(&ts->delayed), items);
        ng_interp_get_stats(in, &stats);
        CHECK_EQ(stats.stops, stops + 1);
        CHECK_EQ(ng_atomic_load(&oom.ran_during_read, NG_RELAXED), 0);
        CHECK_EQ(ng_atomic_load(&oom.poisoned_seen, NG_RELAXED), 0);
        flush_own(ts);
    }
    ng_atomic_store(&oom.stop, 1, NG_RELEASE);
    join_thread(reader);
    flush_own(ts);
    end_scene(in, ts);
}

/* ==== Memory-aware processing (R5) ======================================================== */

/* One block above the memory threshold forces an advance and asks the next checkpoint to
 * process; the checkpoint frees it once the others are quiescent. Small entries advance only
 * past the item threshold. */
TEST(delayed_large_block_is_processed_at_the_next_checkpoint)
{
    TSTATE_SCENE(in, ts);
    uint64_t mem_limit = in->qsbr.mem_limit, item_limit = in->qsbr.item_limit;

    uint64_t seq = wr_seq(in);
    CHECK_STATUS(ng_free_delayed(ts, malloc(100), 100), NG_OK);
    CHECK_EQ(wr_seq(in), seq);
    CHECK(!delayed_pending(ts));
    flush_own(ts);

    seq = wr_seq(in);
    size_t big = (size_t)mem_limit + 1;
    CHECK_STATUS(ng_free_delayed(ts, malloc(big), big), NG_OK);
    CHECK_EQ(wr_seq(in), seq + NG_QSBR_INCR);
    CHECK(delayed_pending(ts));
    CHECK_EQ(queue_bytes(&ts->delayed), big);
    CHECK_STATUS(ng_tstate_checkpoint(ts), NG_OK);
    CHECK_EQ(queue_items(&ts->delayed), 0);
    CHECK_EQ(queue_bytes(&ts->delayed), 0);
    CHECK(!delayed_pending(ts));

    /* item_limit small entries do not advance; the next one does. A fresh state starts with
     * zeroed counters. */
    CHECK_STATUS(ng_tstate_detach(ts), NG_OK);
    ng_tstate *fresh = attached_state(in);
    REQUIRE(fresh != NULL);
    seq = wr_seq(in);
    for (uint64_t i = 0; i < item_limit; i++)
        CHECK_STATUS(ng_free_delayed(fresh, malloc(8), 8), NG_OK);
    CHECK_EQ(wr_seq(in), seq);
    CHECK_STATUS(ng_free_delayed(fresh, malloc(8), 8), NG_OK);
    CHECK_EQ(wr_seq(in), seq + NG_QSBR_INCR);
    CHECK(delayed_pending(fresh));
    CHECK_STATUS(ng_tstate_checkpoint(fresh), NG_OK);
    CHECK_EQ(queue_items(&fresh->delayed), 0);
    CHECK_STATUS(ng_tstate_release(fresh), NG_OK);
    CHECK_STATUS(ng_tstate_attach(ts), NG_OK);
    end_scene(in, ts);
}

/* A thread that frees medium blocks and checkpoints after each never holds more than the
 * memory threshold (the "memory bound"): crossing it advances, and the checkpoint
 * runs everything up to that advance. */
TEST(delayed_held_memory_stays_under_the_thresholds)
{
    PEER_SCENE(in, ts, p, PEER_DETACHED);
    uint64_t mem_limit = in->qsbr.mem_limit, item_limit = in->qsbr.item_limit;
    const size_t block = 64 * 1024;
    long n = scaled(THREAD_SANITIZER ? 500 : 3000);
    uint64_t peak = 0, peak_items = 0, seq = wr_seq(in);
    for (long i = 0; i < n; i++) {
        CHECK_STATUS(ng_free_delayed(ts, malloc(block), block), NG_OK);
        CHECK_STATUS(ng_tstate_checkpoint(ts), NG_OK);
        uint64_t held = queue_bytes(&ts->delayed), items = queue_items(&ts->delayed);
        peak = held > peak ? held : peak;
        peak_items = items > peak_items ? items : peak_items;
    }
    CHECK_LE(peak, mem_limit);
    CHECK_LE(peak_items, item_limit);
    /* It advanced about once per mem_limit bytes, not once per block. */
    uint64_t advances = (wr_seq(in) - seq) / NG_QSBR_INCR;
    CHECK_GE(advances, (uint64_t)n * block / (mem_limit + block));
    if (item_limit * block > mem_limit)
        CHECK_LE(advances, (uint64_t)n * block / mem_limit + 1);
    end_peer_scene(in, ts, &p);
}

/* R5's scenario: big buffers pass from a producer to a consumer that retires the previous
 * one each time; both checkpoint once per iteration. */
typedef struct r5_run {
    ng_interp *in;
    size_t block;
    long iterations;
    void *ring[2];
    uint64_t head, tail;      /* ring indices (single producer, single consumer) */
    uint64_t arrived;         /* two-party rendezvous */
    uint64_t peak_bytes;      /* consumer's queue, after each retire */
    uint64_t left_items[2];   /* each side's queue after the final checkpoints */
    uint64_t left_bytes[2];
} r5_run;

static void r5_rendezvous(r5_run *r, uint64_t round)
{
    ng_atomic_fetch_add(&r->arrived, 1, NG_ACQ_REL);
    SPIN_UNTIL(ng_atomic_load(&r->arrived, NG_ACQUIRE) >= 2 * round);
}

/* Waits detached, as a blocking wait must (DESIGN §3). */
#define WAIT_DETACHED(ts, cond)                                                         \
    do {                                                                                \
        if (!(cond)) {                                                                  \
            CHECK_STATUS(ng_tstate_detach(ts), NG_OK);                                  \
            SPIN_UNTIL(cond);                                                           \
            CHECK_STATUS(ng_tstate_attach(ts), NG_OK);                                  \
        }                                                                               \
    } while (0)

static void r5_finish(r5_run *r, ng_tstate *ts, int side)
{
    r5_rendezvous(r, 1);
    CHECK_STATUS(ng_tstate_checkpoint(ts), NG_OK);
    r5_rendezvous(r, 2);
    CHECK_STATUS(ng_tstate_checkpoint(ts), NG_OK);
    r5_rendezvous(r, 3);
    r->left_items[side] = queue_items(&ts->delayed);
    r->left_bytes[side] = queue_bytes(&ts->delayed);
    r5_rendezvous(r, 4);
    CHECK_STATUS(ng_tstate_release(ts), NG_OK);
}

static void *r5_producer(void *arg)
{
    r5_run *r = arg;
    ng_tstate *ts = attached_state(r->in);
    if (ts == NULL)
        return NULL;
    for (long i = 0; i < r->iterations; i++) {
        char *buf = malloc(r->block);
        if (buf == NULL) {
            harness_fail(__FILE__, __LINE__, "malloc(%zu) failed", r->block);
            break;
        }
        buf[0] = (char)i; /* touch one page only */
        WAIT_DETACHED(ts, ng_atomic_load(&r->tail, NG_RELAXED) -
                              ng_atomic_load(&r->head, NG_ACQUIRE) < 2);
        r->ring[r->tail % 2] = buf;
        ng_atomic_store(&r->tail, r->tail + 1, NG_RELEASE);
        CHECK_STATUS(ng_tstate_checkpoint(ts), NG_OK);
    }
    r5_finish(r, ts, 0);
    return NULL;
}

static void *r5_consumer(void *arg)
{
    r5_run *r = arg;
    ng_tstate *ts = attached_state(r->in);
    if (ts == NULL)
        return NULL;
    char *held = NULL;
    for (long i = 0; i < r->iterations; i++) {
        WAIT_DETACHED(ts, ng_atomic_load(&r->tail, NG_ACQUIRE) !=
                              ng_atomic_load(&r->head, NG_RELAXED));
        char *buf = r->ring[r->head % 2];
        ng_atomic_store(&r->head, r->head + 1, NG_RELEASE);
        if (buf[0] != (char)i)
            harness_fail(__FILE__, __LINE__, "buffer %ld out of order", i);
        if (held != NULL)
            CHECK_STATUS(ng_free_delayed(ts, held, r->block), NG_OK);
        held = buf;
        uint64_t bytes = queue_bytes(&ts->delayed);
        if (bytes > r->peak_bytes)
            r->peak_bytes = bytes;
        CHECK_STATUS(ng_tstate_checkpoint(ts), NG_OK);
    }
    free(held);
    r5_finish(r, ts, 1);
    return NULL;
}

TEST(delayed_r5_producer_consumer_memory_stays_bounded)
{
    r5_run r;
    memset(&r, 0, sizeof r);
    r.in = new_interp();
    REQUIRE(r.in != NULL);
    /* Sanitizers keep shadow memory for every block: smaller blocks, same rule. */
    r.block = SANITIZED ? 2 * 1024 * 1024 : 16 * 1024 * 1024;
    r.iterations = scaled(THREAD_SANITIZER ? 200 : 500);
    pthread_t producer = spawn_thread(r5_producer, &r);
    pthread_t consumer = spawn_thread(r5_consumer, &r);
    join_thread(producer);
    join_thread(consumer);
    const uint64_t capacity = 2, threads = 2;
    CHECK_LT(r.peak_bytes, (capacity + threads + 2) * r.block);
    CHECK_GT(r.peak_bytes, 0);
    for (int side = 0; side < 2; side++) {
        CHECK_EQ(r.left_items[side], 0);
        CHECK_EQ(r.left_bytes[side], 0);
    }
    CHECK_STATUS(ng_interp_delete(r.in), NG_OK);
}

/* ==== Hand-over at thread exit (R6) ======================================================= */

typedef struct churn {
    ng_interp *in;
    uint64_t queued, ran;
    uint64_t seed;
    bool detach_first; /* threads end detached (blocked in I/O, say) rather than attached */
} churn;

static void churn_free(void *arg)
{
    churn *c = *(churn **)arg;
    free(arg);
    ng_atomic_fetch_add(&c->ran, 1, NG_RELAXED);
}

static void *churn_thread(void *arg)
{
    churn *c = arg;
    uint64_t rng = ng_atomic_fetch_add(&c->seed, UINT64_C(0x9e3779b97f4a7c15), NG_RELAXED) | 1;
    ng_tstate *ts = attached_state(c->in);
    if (ts == NULL)
        return NULL;
    int blocks = 1 + (int)(rng_next(&rng) % 3);
    for (int i = 0; i < blocks; i++) {
        churn **block = malloc(64);
        *block = c;
        CHECK_STATUS(ng_call_delayed(ts, churn_free, block, 64), NG_OK);
        ng_atomic_fetch_add(&c->queued, 1, NG_RELAXED);
    }
    if (c->detach_first)
        CHECK_STATUS(ng_tstate_detach(ts), NG_OK);
    /* Half release explicitly; the other half leave it to thread exit. */
    if (rng_next(&rng) & 1)
        CHECK_STATUS(ng_tstate_release(ts), NG_OK);
    return NULL;
}

static void run_churn(bool detach_first)
{
    churn c = {.seed = 1, .detach_first = detach_first};
    c.in = new_interp();
    REQUIRE(c.in != NULL);
    long batches = scaled(THREAD_SANITIZER ? 100 : 1000);
    long max_chunks = 0;
    uint64_t max_items = 0;
    for (long b = 0; b < batches; b++) {
        pthread_t t[10];
        for (int i = 0; i < 10; i++)
            t[i] = spawn_thread(churn_thread, &c);
        for (int i = 0; i < 10; i++)
            join_thread(t[i]);
        ng_mutex_lock(&c.in->delayed.mutex);
        long chunks = queue_chunks(&c.in->delayed.queue);
        uint64_t items = queue_items(&c.in->delayed.queue);
        ng_mutex_unlock(&c.in->delayed.mutex);
        max_chunks = chunks > max_chunks ? chunks : max_chunks;
        max_items = items > max_items ? items : max_items;
        if (harness_failures() > 0)
            break;
    }
    CHECK_LT(max_chunks, 10);
    /* Without processing at hand-over every entry would still be there. */
    CHECK_LT(max_items, 10 * 3 * 2);
    /* Whatever the last threads left runs at the next processing. */
    ng_tstate *ts = attached_state(c.in);
    REQUIRE(ts != NULL);
    CHECK_STATUS(ng_qsbr_barrier(ts), NG_OK);
    CHECK_EQ(ng_atomic_load(&c.ran, NG_RELAXED), ng_atomic_load(&c.queued, NG_RELAXED));
    CHECK_EQ(queue_items(&c.in->delayed.queue), 0);
    CHECK_STATUS(ng_tstate_release(ts), NG_OK);
    CHECK_STATUS(ng_interp_delete(c.in), NG_OK);
}

TEST(delayed_r6_thread_churn_keeps_the_interpreter_queue_bounded)
{
    run_churn(false);
}

/* A state released (or whose thread exits) while detached attaches for the hand-over, so its
 * work is processed too, not just parked in the interpreter queue. */
TEST(delayed_r6_churn_of_detached_threads_keeps_the_interpreter_queue_bounded)
{
    run_churn(true);
}

/* Abandon without a caller only moves the work; any thread's processing then drains the
 * interpreter's queue. Small queues are packed into the interpreter's last chunk. */
TEST(delayed_abandoned_work_is_drained_by_other_threads)
{
    TSTATE_SCENE(in, ts);
    enum { N_PEERS = 6, PER_PEER = 3 };
    peer peers[N_PEERS];
    uint64_t runs = 0;
    for (int i = 0; i < N_PEERS; i++) {
        REQUIRE(peer_start(&peers[i], in, PEER_DETACHED));
        peers[i].counter = &runs;
        peers[i].to_queue = PER_PEER;
        REQUIRE(peer_command(&peers[i], PEER_QUEUE));
        REQUIRE(peer_command(&peers[i], PEER_DETACHED));
        CHECK_EQ(queue_items(&peers[i].ts->delayed), PER_PEER);
    }
    /* The peers are detached and idle, so their queues may be moved, as the thread-state
     * layer does for a released state. */
    uint64_t seq = wr_seq(in);
    for (int i = 0; i < N_PEERS; i++) {
        ng_delayed_abandon(peers[i].ts, NULL);
        CHECK_EQ(queue_items(&peers[i].ts->delayed), 0);
        CHECK(peers[i].ts->delayed.head == NULL);
    }
    CHECK_EQ(queue_items(&in->delayed.queue), N_PEERS * PER_PEER);
    if (NG_DELAYED_CHUNK_ENTRIES >= N_PEERS * PER_PEER)
        CHECK_EQ(queue_chunks(&in->delayed.queue), 1);
    else
        CHECK_LE(queue_chunks(&in->delayed.queue), N_PEERS);
    CHECK(ng_atomic_load(&in->delayed.has_work, NG_RELAXED));
    /* The abandoned goals were made due by an advance, so quiescent states suffice. */
    CHECK_GT(wr_seq(in), seq);
    CHECK_EQ(ng_atomic_load(&runs, NG_RELAXED), 0);
    CHECK_STATUS(ng_tstate_checkpoint(ts), NG_OK);
    CHECK_EQ(ng_process_delayed(ts), N_PEERS * PER_PEER);
    CHECK_EQ(ng_atomic_load(&runs, NG_RELAXED), N_PEERS * PER_PEER);
    CHECK(!ng_atomic_load(&in->delayed.has_work, NG_RELAXED));
    CHECK(in->delayed.queue.head == NULL);
    for (int i = 0; i < N_PEERS; i++)
        peer_stop(&peers[i]);
    end_scene(in, ts);
}

/* What a release does (spec R6): abandoning its own queue with itself as the caller moves the
 * work and runs it at once, although its goals were not due: the hand-over advances, and the
 * releasing thread's own report no longer holds them back. */
TEST(delayed_abandon_by_the_releasing_thread_runs_the_work)
{
    PEER_SCENE(in, ts, p, PEER_DETACHED);
    uint64_t runs = 0;
    for (int i = 0; i < 5; i++)
        CHECK_STATUS(ng_call_delayed(ts, count_run, &runs, 8), NG_OK);
    CHECK_EQ(ng_process_delayed(ts), 0); /* nothing due: no advance yet */
    ng_delayed_abandon(ts, ts);
    CHECK_EQ(ng_atomic_load(&runs, NG_RELAXED), 5);
    CHECK_EQ(queue_items(&in->delayed.queue), 0);
    CHECK(!ng_atomic_load(&in->delayed.has_work, NG_RELAXED));
    CHECK(ts->delayed.head == NULL);
    /* The state goes on working normally. */
    CHECK_STATUS(ng_call_delayed(ts, count_run, &runs, 8), NG_OK);
    flush_own(ts);
    CHECK_EQ(ng_atomic_load(&runs, NG_RELAXED), 6);
    end_peer_scene(in, ts, &p);
}

/* Interpreter deletion runs what is left, even with goals nobody reached. */
TEST(delayed_interpreter_deletion_runs_the_rest)
{
    PEER_SCENE(in, ts, p, PEER_HOLD);
    uint64_t runs = 0;
    for (int i = 0; i < 300; i++)
        CHECK_STATUS(ng_call_delayed(ts, count_run, &runs, 8), NG_OK);
    CHECK_EQ(ng_atomic_load(&runs, NG_RELAXED), 0); /* the peer holds every goal back */
    CHECK_STATUS(ng_tstate_release(ts), NG_OK);
    peer_stop(&p);
    CHECK_STATUS(ng_interp_delete(in), NG_OK);
    CHECK_EQ(ng_atomic_load(&runs, NG_RELAXED), 300);
}

/* ==== Barrier ============================================================================= */

enum { BARRIER_WORKERS = 5, BARRIER_BEFORE = 40, BARRIER_MAX = 1 << 16 };

typedef struct barrier_worker {
    ng_interp *in;
    int index;
    uint32_t phase;     /* 0 queue the first entries, 1 idle (as told), 2 queue more, 3 exit */
    uint32_t done;      /* phases finished */
    uint32_t queued;    /* entries whose ng_call_delayed returned */
    uint8_t *ran;       /* one flag per entry */
    pthread_t thread;
} barrier_worker;

/* Queues the worker's next entry, which sets its flag in `ran`. */
static void barrier_queue_one(barrier_worker *w, ng_tstate *ts)
{
    CHECK_STATUS(ng_call_delayed(ts, set_flag, &w->ran[w->queued], 8), NG_OK);
    ng_atomic_store(&w->queued, w->queued + 1, NG_RELEASE);
}

static void *barrier_worker_main(void *arg)
{
    barrier_worker *w = arg;
    ng_tstate *ts = attached_state(w->in);
    if (ts == NULL)
        return NULL;
    for (int i = 0; i < BARRIER_BEFORE; i++)
        barrier_queue_one(w, ts);
    if (w->index == 4) {
        /* Leaves: its work goes to the interpreter's queue (the waiting main thread holds
         * it back there), from where the barrier must collect it. */
        CHECK_STATUS(ng_tstate_release(ts), NG_OK);
        ng_atomic_store(&w->done, 2, NG_RELEASE);
        return NULL;
    }
    ng_atomic_store(&w->done, 1, NG_RELEASE);
    /* Workers 0 and 1 wait detached; 2 idles attached (checkpoints); 3 keeps queueing. */
    bool detached = w->index < 2;
    if (detached)
        CHECK_STATUS(ng_tstate_detach(ts), NG_OK);
    while (ng_atomic_load(&w->phase, NG_ACQUIRE) < 2) {
        if (!detached) {
            if (w->index == 3 && w->queued < BARRIER_MAX)
                barrier_queue_one(w, ts);
            CHECK_STATUS(ng_tstate_checkpoint(ts), NG_OK);
        }
        sched_yield();
    }
    if (detached)
        CHECK_STATUS(ng_tstate_attach(ts), NG_OK);
    for (int i = 0; i < 5 && w->queued < BARRIER_MAX; i++)
        barrier_queue_one(w, ts);
    ng_atomic_store(&w->done, 2, NG_RELEASE);
    while (ng_atomic_load(&w->phase, NG_ACQUIRE) < 3) {
        CHECK_STATUS(ng_tstate_checkpoint(ts), NG_OK);
        sched_yield();
    }
    CHECK_STATUS(ng_tstate_release(ts), NG_OK);
    return NULL;
}

/* Tells every worker to go on to `phase`. */
static void barrier_workers_to(barrier_worker *w, uint32_t phase)
{
    for (int i = 0; i < BARRIER_WORKERS; i++)
        ng_atomic_store(&w[i].phase, phase, NG_RELEASE);
}

/* Waits until every worker has finished `phases` phases. */
static void barrier_workers_wait(barrier_worker *w, uint32_t phases)
{
    for (int i = 0; i < BARRIER_WORKERS; i++)
        CHECK(WAIT_UNTIL(ng_atomic_load(&w[i].done, NG_ACQUIRE) >= phases, PATIENCE_MS));
}

/* Each worker's count of queued entries, now. */
static void barrier_queued(barrier_worker *w, uint32_t *queued)
{
    for (int i = 0; i < BARRIER_WORKERS; i++)
        queued[i] = ng_atomic_load(&w[i].queued, NG_ACQUIRE);
}

/* How many of the first queued[i] entries of each worker have not run. */
static int barrier_not_run(barrier_worker *w, const uint32_t *queued)
{
    int missing = 0;
    for (int i = 0; i < BARRIER_WORKERS; i++)
        for (uint32_t k = 0; k < queued[i]; k++)
            missing += ng_atomic_load(&w[i].ran[k], NG_RELAXED) == 0;
    return missing;
}

TEST(delayed_barrier_waits_for_everything_queued_before)
{
    TSTATE_SCENE(in, ts);
    flag_double_runs = 0;
    barrier_worker w[BARRIER_WORKERS];
    for (int i = 0; i < BARRIER_WORKERS; i++) {
        w[i] = (barrier_worker){.in = in, .index = i, .ran = calloc(BARRIER_MAX, 1)};
        w[i].thread = spawn_thread(barrier_worker_main, &w[i]);
    }
    barrier_workers_wait(w, 1);
    CHECK_GT(queue_items(&in->delayed.queue), 0); /* worker 4's */
    /* Our own entries and a plain free count too. */
    uint8_t mine[3] = {0};
    for (int i = 0; i < 3; i++)
        CHECK_STATUS(ng_call_delayed(ts, set_flag, &mine[i], 8), NG_OK);
    CHECK_STATUS(ng_free_delayed(ts, malloc(32), 32), NG_OK);

    uint32_t queued[BARRIER_WORKERS];
    barrier_queued(w, queued);
    CHECK_STATUS(ng_qsbr_barrier(ts), NG_OK);
    int missing = barrier_not_run(w, queued);
    for (int i = 0; i < 3; i++)
        missing += mine[i] == 0;
    CHECK_EQ(missing, 0);
    CHECK_EQ(ng_atomic_load(&ts->state, NG_RELAXED), NG_TSTATE_ATTACHED);

    /* Later entries are unaffected: they run normally, once. */
    barrier_workers_to(w, 2);
    barrier_workers_wait(w, 2);
    CHECK_STATUS(ng_qsbr_barrier(ts), NG_OK);
    barrier_queued(w, queued);
    CHECK_EQ(barrier_not_run(w, queued), 0);
    CHECK_EQ(ng_atomic_load(&flag_double_runs, NG_RELAXED), 0);

    barrier_workers_to(w, 3);
    for (int i = 0; i < BARRIER_WORKERS; i++)
        join_thread(w[i].thread);
    CHECK_STATUS(ng_tstate_release(ts), NG_OK);
    CHECK_STATUS(ng_interp_delete(in), NG_OK); /* runs leftovers, which point into `ran` */
    for (int i = 0; i < BARRIER_WORKERS; i++)
        free(w[i].ran);
}

/* ==== Misuse ============================================================================== */

static void never_run(void *arg)
{
    harness_fail(__FILE__, __LINE__, "an invalid call ran (%p)", arg);
}

typedef struct foreign_call {
    ng_tstate *ts;
    int rc[5];
} foreign_call;

static void *call_from_other_thread(void *arg)
{
    foreign_call *f = arg;
    f->rc[0] = ng_free_delayed(f->ts, (void *)f, 8);
    f->rc[1] = ng_object_free_delayed(f->ts, (void *)f, 8);
    f->rc[2] = ng_call_delayed(f->ts, never_run, f, 8);
    f->rc[3] = ng_process_delayed(f->ts);
    f->rc[4] = ng_qsbr_barrier(f->ts);
    return NULL;
}

static void check_all_rejected(ng_tstate *ts, int want)
{
    static uint64_t dummy;
    CHECK_STATUS(ng_free_delayed(ts, &dummy, 8), want);
    CHECK_STATUS(ng_object_free_delayed(ts, &dummy, 8), want);
    CHECK_STATUS(ng_call_delayed(ts, never_run, &dummy, 8), want);
    CHECK_STATUS(ng_process_delayed(ts), want);
    CHECK_STATUS(ng_qsbr_barrier(ts), want);
}

TEST(delayed_misuse_is_reported)
{
    check_all_rejected(NULL, NG_EINVAL);
    ng_delayed_abandon(NULL, NULL);
    ng_delayed_queue_run_all(NULL, NULL);

    TSTATE_SCENE(in, ts);

    /* NULL work is accepted and ignored. */
    CHECK_STATUS(ng_free_delayed(ts, NULL, 100), NG_OK);
    CHECK_STATUS(ng_object_free_delayed(ts, NULL, 100), NG_OK);
    CHECK_STATUS(ng_call_delayed(ts, NULL, ts, 100), NG_OK);
    CHECK_EQ(queue_items(&ts->delayed), 0);

    foreign_call f = {.ts = ts};
    join_thread(spawn_thread(call_from_other_thread, &f));
    for (int i = 0; i < 5; i++)
        CHECK_STATUS(f.rc[i], NG_EWRONGTHREAD);
    CHECK_EQ(queue_items(&ts->delayed), 0);

    CHECK_STATUS(ng_tstate_detach(ts), NG_OK);
    check_all_rejected(ts, NG_ESTATE);
    CHECK_EQ(queue_items(&ts->delayed), 0);
    CHECK_STATUS(ng_tstate_attach(ts), NG_OK);

    CHECK_STATUS(ng_tstate_release(ts), NG_OK);
    /* Released states stay in a quarantine pool with a dead magic. */
    check_all_rejected(ts, NG_ERELEASED);
    ng_delayed_abandon(ts, NULL); /* ignored */
    CHECK_STATUS(ng_interp_delete(in), NG_OK);
}

/* ---- Stall reports of the interpreter's queue --------------------------------------------- */

#define IQ_STALL_NS (20 * NG_NS_PER_MS)

typedef struct iq_stall_scene {
    ng_interp *in;
    uint32_t calls;
    int mutex_held;  /* the interpreter queue's mutex was held during the first report */
    uint64_t reader_thread;
    uint64_t reported_thread;
    uint32_t recorded; /* the two fields above are written */
    int runs;
    int err;
    uint32_t done;
} iq_stall_scene;

static void iq_record_stall(void *arg, const ng_qsbr_stall *stall)
{
    iq_stall_scene *s = arg;
    if (ng_atomic_fetch_add(&s->calls, 1, NG_SEQ_CST) == 0) {
        s->mutex_held = ng_mutex_is_locked(&s->in->delayed.mutex);
        s->reported_thread = stall->thread_id;
        ng_atomic_store(&s->recorded, 1, NG_RELEASE);
    }
}

/* Hands one call to the interpreter's queue (by releasing the state that queued it), then
 * processes with a second state until the stall handler has been called. */
static void *iq_stall_processor(void *arg)
{
    iq_stall_scene *s = arg;
    ng_tstate *ts = NULL;
    int err = create_attached(s->in, &ts);
    if (err == NG_OK)
        err = ng_call_delayed(ts, count_call, &s->runs, 64);
    err = release_keeping_error(ts, err);
    ts = NULL;
    if (err == NG_OK)
        err = create_attached(s->in, &ts);
    int64_t give_up = now_ns() + (int64_t)PATIENCE_MS * 1000000;
    while (err == NG_OK && !ng_atomic_load(&s->recorded, NG_ACQUIRE) && now_ns() < give_up) {
        if (ng_process_delayed(ts) < 0)
            err = NG_ESTATE;
        sleep_ms(1);
    }
    s->err = release_keeping_error(ts, err);
    ng_atomic_store(&s->done, 1, NG_RELEASE);
    return NULL;
}

/* The interpreter's queue is processed under its mutex; a stall noticed there is reported
 * after the mutex is released (the stall callback runs with no lock of the core held: it may
 * block, and a thread suspended while holding that mutex would stop the fork handler). */
TEST(delayed_interp_queue_stall_reported_without_its_mutex)
{
    static iq_stall_scene s;
    memset(&s, 0, sizeof(s));
    TSTATE_SCENE(in, reader); /* attached and never reporting: holds every goal back */
    s.in = in;
    s.reader_thread = reader->thread_id;
    ng_qsbr_set_stall_handler(&in->qsbr, IQ_STALL_NS, iq_record_stall, &s);
    pthread_t t = spawn_thread(iq_stall_processor, &s);
    SPIN_UNTIL(ng_atomic_load(&s.done, NG_ACQUIRE));
    join_thread(t);
    CHECK_STATUS(s.err, NG_OK);
    if (CHECK(ng_atomic_load(&s.recorded, NG_ACQUIRE))) {
        CHECK_EQ(s.mutex_held, 0);
        CHECK(s.reported_thread == s.reader_thread);
    }
    ng_qsbr_set_stall_handler(&in->qsbr, 0, NULL, NULL);
    CHECK_EQ(ng_atomic_load(&s.runs, NG_SEQ_CST), 0);
    end_scene(in, reader); /* the deletion runs the interpreter's queue */
    CHECK_EQ(ng_atomic_load(&s.runs, NG_SEQ_CST), 1);
}
