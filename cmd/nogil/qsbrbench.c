/* nogil's half of `nogil qsbrbench`; see qsbrbench.h. The liburcu half
 * (qsbrbench_liburcu.c) runs the same loops with liburcu's QSBR flavour. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "nogil.h"
#include "qsbrbench.h"

#define QB_OBJECT_BYTES 64
/* Loops look at the clock once per this many iterations. */
#define QB_CLOCK_EVERY 1024
static int64_t qb_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Runs fn(arg) on a fresh pthread and waits for it: the measured loops run on threads of
 * their own, as liburcu's do (qsbrbench_liburcu.c), never on a Go thread. */
static int qb_run_on_thread(void *(*fn)(void *), void *arg)
{
    pthread_t t;
    int rc = pthread_create(&t, NULL, fn, arg);
    if (rc == 0)
        pthread_join(t, NULL);
    return rc;
}

/* The object readers read and writers replace: 64 bytes. */
typedef struct qb_object {
    uint64_t payload[QB_OBJECT_BYTES / sizeof(uint64_t)];
} qb_object;

/* Where readers put their sums, so that the compiler keeps their loads. */
static uint64_t qb_sink;

/* ---- Quiescent-state cost ---------------------------------------------------------------- */

struct qb_quiescent {
    int64_t time_ns, ops, elapsed_ns;
    int err;
};

static void *qb_quiescent_thread(void *arg)
{
    struct qb_quiescent *q = arg;
    ng_qsbr_shared *shared = aligned_alloc(NG_QSBR_SLOT_ALIGN, sizeof(*shared));
    if (shared == NULL) {
        q->err = ENOMEM;
        return NULL;
    }
    int st = ng_qsbr_init(shared);
    ng_qsbr_slot *reserved = NULL;
    if (st == NG_OK)
        st = ng_qsbr_reserve(shared, &reserved);
    if (st != NG_OK) {
        free(shared);
        q->err = -st;
        return NULL;
    }
    /* A copy whose address was never taken stays in a register, as a thread state's slot
     * pointer would in real code (`reserved` escaped into ng_qsbr_reserve, so the compiler
     * would reload it from the stack after every atomic). */
    ng_qsbr_slot *const slot = reserved;
    ng_qsbr_attach(slot);
    int64_t n = 0, start = qb_now_ns(), end = start, deadline = start + q->time_ns;
    do {
        for (int i = 0; i < QB_CLOCK_EVERY; i++)
            ng_qsbr_quiescent_state(slot);
        n += QB_CLOCK_EVERY;
        end = qb_now_ns();
    } while (end < deadline);
    ng_qsbr_detach(slot);
    ng_qsbr_unreserve(slot);
    ng_qsbr_fini(shared);
    free(shared);
    q->ops = n;
    q->elapsed_ns = end - start;
    return NULL;
}

int qb_quiescent_nogil(int64_t time_ns, int64_t *ops, int64_t *elapsed_ns)
{
    if (time_ns <= 0 || ops == NULL || elapsed_ns == NULL)
        return EINVAL;
    struct qb_quiescent q = {.time_ns = time_ns};
    int err = qb_run_on_thread(qb_quiescent_thread, &q);
    if (err == 0)
        err = q.err;
    *ops = q.ops;
    *elapsed_ns = q.elapsed_ns;
    return err;
}

struct qb_floor {
    ng_qsbr_shared shared; /* first: aligned to its padding */
    ng_qsbr_slot *slot;
};

int qb_floor_new(void **handle, uint64_t **slot_seq, uint64_t **wr_seq)
{
    if (handle == NULL || slot_seq == NULL || wr_seq == NULL)
        return EINVAL;
    struct qb_floor *f = aligned_alloc(NG_QSBR_SLOT_ALIGN, sizeof(*f));
    if (f == NULL)
        return ENOMEM;
    int st = ng_qsbr_init(&f->shared);
    if (st == NG_OK)
        st = ng_qsbr_reserve(&f->shared, &f->slot);
    if (st != NG_OK) {
        free(f);
        return -st;
    }
    ng_qsbr_attach(f->slot);
    *handle = f;
    *slot_seq = &f->slot->seq;
    *wr_seq = &f->shared.wr_seq;
    return 0;
}

void qb_floor_free(void *handle)
{
    struct qb_floor *f = handle;
    if (f == NULL)
        return;
    ng_qsbr_detach(f->slot);
    ng_qsbr_unreserve(f->slot);
    ng_qsbr_fini(&f->shared);
    free(f);
}

/* ---- Grace-period latency ------------------------------------------------------------- */

struct qb_grace {
    ng_qsbr_shared shared; /* first: aligned to its padding */
    qb_object *current;
    int report_every;
    int stop;
    int ready;
    int err;
    /* The writer's side. */
    ng_qsbr_slot *writer; /* stays offline: it only polls, as a reclaimer waiting would */
    int64_t time_ns, cap, count;
    int64_t *samples_ns;
};

static void *qb_grace_reader(void *arg)
{
    struct qb_grace *g = arg;
    ng_qsbr_slot *slot = NULL;
    int st = ng_qsbr_reserve(&g->shared, &slot);
    if (st != NG_OK) {
        ng_atomic_store(&g->err, -st, NG_RELAXED);
        ng_atomic_fetch_add(&g->ready, 1, NG_RELEASE);
        return NULL;
    }
    ng_qsbr_attach(slot);
    ng_atomic_fetch_add(&g->ready, 1, NG_RELEASE);
    uint64_t sum = 0;
    /* Relaxed stop flag: it only has to be seen eventually. */
    while (!ng_atomic_load(&g->stop, NG_RELAXED)) {
        for (int i = 0; i < g->report_every; i++) {
            qb_object *o = ng_atomic_load(&g->current, NG_ACQUIRE);
            sum += o->payload[i & 7];
        }
        ng_qsbr_quiescent_state(slot);
    }
    ng_qsbr_detach(slot);
    ng_qsbr_unreserve(slot);
    ng_atomic_fetch_add(&qb_sink, sum, NG_RELAXED);
    return NULL;
}

/* Starts grace periods back to back and times each until it is over: ng_qsbr_wait polls for
 * a couple of microseconds, then sleeps until a reader's report wakes it, as liburcu's
 * synchronize_rcu does. */
static void *qb_grace_writer(void *arg)
{
    struct qb_grace *g = arg;
    int64_t count = 0, deadline = qb_now_ns() + g->time_ns;
    do {
        int64_t t0 = qb_now_ns();
        uint64_t goal = ng_qsbr_advance(&g->shared);
        int st = ng_qsbr_wait(g->writer, goal, -1);
        int64_t t1 = qb_now_ns();
        if (st != NG_OK) {
            g->err = -st;
            break;
        }
        g->samples_ns[count++] = t1 - t0;
        if (t1 >= deadline)
            break;
    } while (count < g->cap);
    g->count = count;
    return NULL;
}

int qb_grace_nogil(int readers, int report_every, int64_t time_ns, int64_t *samples_ns,
                   int64_t cap, int64_t *n)
{
    if (readers < 0 || readers > 1024 || report_every < 1 || time_ns <= 0 ||
        samples_ns == NULL || cap < 1 || n == NULL)
        return EINVAL;
    struct qb_grace *g = aligned_alloc(NG_QSBR_SLOT_ALIGN, sizeof(*g));
    pthread_t *tids = calloc((size_t)readers + 1, sizeof(pthread_t));
    if (g == NULL || tids == NULL) {
        free(g);
        free(tids);
        return ENOMEM;
    }
    memset(g, 0, sizeof(*g));
    static qb_object object = {{1, 2, 3, 4, 5, 6, 7, 8}};
    g->current = &object;
    g->report_every = report_every;
    g->time_ns = time_ns;
    g->samples_ns = samples_ns;
    g->cap = cap;
    int err = -ng_qsbr_init(&g->shared);
    if (err == 0)
        err = -ng_qsbr_reserve(&g->shared, &g->writer);
    int started = 0;
    while (err == 0 && started < readers) {
        err = pthread_create(&tids[started], NULL, qb_grace_reader, g);
        if (err == 0)
            started++;
    }
    while (ng_atomic_load(&g->ready, NG_ACQUIRE) < started)
        sched_yield();
    if (err == 0)
        err = ng_atomic_load(&g->err, NG_RELAXED);
    if (err == 0)
        err = qb_run_on_thread(qb_grace_writer, g);
    if (err == 0)
        err = g->err;
    ng_atomic_store(&g->stop, 1, NG_RELAXED);
    for (int i = 0; i < started; i++)
        pthread_join(tids[i], NULL);
    if (g->writer != NULL)
        ng_qsbr_unreserve(g->writer);
    ng_qsbr_fini(&g->shared);
    *n = g->count;
    free(g);
    free(tids);
    return err;
}

/* ---- Delayed-free throughput ---------------------------------------------------------- */

struct qb_delayed {
    qb_object *current;
    int report_every;
    int stop;
    int reader_ready;
    int reader_err;
    int writer_err;
    int64_t time_ns;
    int64_t reads;
    qb_delayed_result result;
    char pad[64];
    int64_t pending_bytes; /* retired, not yet freed: up in the writer, down in callbacks */
    ng_interp *interp;
};

/* The run in progress: the free callback gets one argument, the object, and finds the
 * pending counter here (as liburcu's callback does through a global). */
static struct qb_delayed *qb_delayed_current;

static void qb_delayed_free_object(void *arg)
{
    /* Relaxed: a statistic; the writer's samples only need to be close to the truth. */
    ng_atomic_fetch_sub(&qb_delayed_current->pending_bytes, QB_OBJECT_BYTES, NG_RELAXED);
    free(arg);
}

/* Creates and attaches a thread state of the calling thread; minus a status on failure. */
static int qb_attach_new(ng_interp *interp, ng_tstate **out)
{
    int st = ng_tstate_new(interp, out);
    if (st != NG_OK)
        return -st;
    st = ng_tstate_attach(*out);
    if (st != NG_OK) {
        ng_tstate_release(*out);
        return -st;
    }
    return 0;
}

static void *qb_delayed_reader(void *arg)
{
    struct qb_delayed *d = arg;
    ng_tstate *ts = NULL;
    int err = qb_attach_new(d->interp, &ts);
    ng_atomic_store(&d->reader_err, err, NG_RELAXED);
    ng_atomic_store(&d->reader_ready, 1, NG_RELEASE);
    if (err != 0)
        return NULL;
    uint64_t sum = 0;
    int64_t reads = 0;
    while (!ng_atomic_load(&d->stop, NG_RELAXED)) {
        for (int i = 0; i < d->report_every; i++) {
            qb_object *o = ng_atomic_load(&d->current, NG_ACQUIRE);
            sum += o->payload[i & 7];
        }
        reads += d->report_every;
        int st = ng_tstate_checkpoint(ts);
        if (st != NG_OK) {
            ng_atomic_store(&d->reader_err, -st, NG_RELAXED);
            break;
        }
    }
    ng_tstate_release(ts);
    ng_atomic_fetch_add(&qb_sink, sum, NG_RELAXED);
    d->reads = reads;
    return NULL;
}

static qb_object *qb_new_object(int64_t serial)
{
    qb_object *o = malloc(sizeof(*o));
    if (o != NULL)
        for (int i = 0; i < 8; i++)
            o->payload[i] = (uint64_t)serial + (uint64_t)i;
    return o;
}

/* The writer: replaces and retires objects for time_ns, then waits for the last free. */
static void *qb_delayed_writer(void *arg)
{
    struct qb_delayed *d = arg;
    ng_tstate *ts = NULL;
    int err = qb_attach_new(d->interp, &ts);
    if (err != 0) {
        d->writer_err = err;
        return NULL;
    }
    int64_t objects = 0, peak = 0, start = qb_now_ns(), deadline = start + d->time_ns;
    for (;;) {
        qb_object *fresh = qb_new_object(objects + 1);
        if (fresh == NULL) {
            err = ENOMEM;
            break;
        }
        qb_object *old = ng_atomic_exchange(&d->current, fresh, NG_ACQ_REL);
        int64_t pending =
            ng_atomic_fetch_add(&d->pending_bytes, QB_OBJECT_BYTES, NG_RELAXED) + QB_OBJECT_BYTES;
        if (pending > peak)
            peak = pending;
        int st = ng_call_delayed(ts, qb_delayed_free_object, old, QB_OBJECT_BYTES);
        if (st == NG_OK)
            st = ng_tstate_checkpoint(ts);
        if (st != NG_OK) {
            err = -st;
            break;
        }
        objects++;
        if (objects % QB_CLOCK_EVERY == 0 && qb_now_ns() >= deadline)
            break;
    }
    int st = ng_qsbr_barrier(ts);
    if (err == 0 && st != NG_OK)
        err = -st;
    int64_t end = qb_now_ns();
    if (err == 0 && ng_atomic_load(&d->pending_bytes, NG_RELAXED) != 0)
        err = EPROTO; /* the barrier returned with objects still waiting */
    st = ng_tstate_release(ts);
    if (err == 0 && st != NG_OK)
        err = -st;
    d->writer_err = err;
    d->result.objects = objects;
    d->result.elapsed_ns = end - start;
    d->result.peak_pending_bytes = peak;
    return NULL;
}

int qb_delayed_nogil(int report_every, int64_t time_ns, int64_t cap_bytes,
                     qb_delayed_result *out)
{
    if (report_every < 1 || time_ns <= 0 || cap_bytes < 0 || out == NULL)
        return EINVAL;
    if (qb_delayed_current != NULL)
        return EBUSY; /* one run at a time: the free callback finds its run through a global */
    struct qb_delayed *d = calloc(1, sizeof(*d));
    if (d == NULL)
        return ENOMEM;
    d->report_every = report_every;
    d->time_ns = time_ns;
    d->current = qb_new_object(0);
    qb_delayed_current = d;
    int err = d->current == NULL ? ENOMEM : -ng_interp_new(&d->interp);
    if (err == 0)
        err = -ng_delayed_set_cap(d->interp, (uint64_t)cap_bytes);
    pthread_t reader;
    bool reader_started = false;
    if (err == 0) {
        err = pthread_create(&reader, NULL, qb_delayed_reader, d);
        reader_started = err == 0;
    }
    if (reader_started) {
        while (!ng_atomic_load(&d->reader_ready, NG_ACQUIRE))
            sched_yield();
        err = ng_atomic_load(&d->reader_err, NG_RELAXED);
    }
    if (err == 0)
        err = qb_run_on_thread(qb_delayed_writer, d);
    if (err == 0)
        err = d->writer_err;
    ng_atomic_store(&d->stop, 1, NG_RELAXED);
    if (reader_started)
        pthread_join(reader, NULL);
    if (err == 0)
        err = ng_atomic_load(&d->reader_err, NG_RELAXED);
    if (d->interp != NULL) {
        int st = ng_interp_delete(d->interp);
        if (err == 0 && st != NG_OK)
            err = -st;
    }
    qb_delayed_current = NULL;
    free(d->current);
    d->result.reads = d->reads;
    *out = d->result;
    free(d);
    return err;
}

/* ---- Poll cost ------------------------------------------------------------------------- */

int qb_poll_nogil(int slots, int poll_case, int64_t time_ns, int64_t *ops, int64_t *elapsed_ns)
{
    if (slots < 1 || slots > (1 << 20) || time_ns <= 0 || ops == NULL || elapsed_ns == NULL ||
        (poll_case != QB_POLL_SUCCESS_OFFLINE && poll_case != QB_POLL_SUCCESS_ONLINE &&
         poll_case != QB_POLL_FAIL_LAGGARD && poll_case != QB_POLL_AFTER_BURST))
        return EINVAL;
    ng_qsbr_shared *shared = aligned_alloc(NG_QSBR_SLOT_ALIGN, sizeof(*shared));
    ng_qsbr_slot **all = calloc((size_t)slots, sizeof(*all));
    if (shared == NULL || all == NULL) {
        free(shared);
        free(all);
        return ENOMEM;
    }
    int err = -ng_qsbr_init(shared);
    int reserved = 0;
    while (err == 0 && reserved < slots) {
        err = -ng_qsbr_reserve(shared, &all[reserved]);
        if (err == 0)
            reserved++;
    }
    ng_qsbr_slot *poller = all[0];
    /* The burst is over: every slot but the first two goes back, oldest first (the top one
     * last, so the scan bound can drop only then). */
    if (err == 0 && poll_case == QB_POLL_AFTER_BURST && reserved > 2) {
        for (int i = 2; err == 0 && i < reserved; i++) {
            err = -ng_qsbr_unreserve(all[i]);
            all[i] = NULL;
        }
        slots = reserved = 2;
    }

    int64_t n = 0, start = 0, end = 0;
    if (err == 0) {
        if (poll_case != QB_POLL_SUCCESS_OFFLINE)
            for (int i = 0; i < slots; i++)
                ng_qsbr_attach(all[i]);
        uint64_t goal = ng_qsbr_shared_current(shared);
        bool want = true;
        if (poll_case == QB_POLL_FAIL_LAGGARD) {
            /* Every slot is now behind; the first poll scans and remembers one of them. */
            goal = ng_qsbr_advance(shared);
            want = false;
            if (ng_qsbr_poll(poller, goal))
                err = EPROTO;
        }
        start = qb_now_ns();
        int64_t deadline = start + time_ns;
        end = start;
        while (err == 0 && end < deadline) {
            for (int i = 0; i < QB_CLOCK_EVERY; i++) {
                bool got = poll_case == QB_POLL_FAIL_LAGGARD ? ng_qsbr_poll(poller, goal)
                                                             : ng_qsbr_poll_slow(poller, goal);
                if (got != want) {
                    err = EPROTO;
                    break;
                }
            }
            n += QB_CLOCK_EVERY;
            end = qb_now_ns();
        }
        for (int i = 0; i < slots; i++)
            if (ng_atomic_load(&all[i]->seq, NG_RELAXED) != NG_QSBR_OFFLINE)
                ng_qsbr_detach(all[i]);
    }
    for (int i = 0; i < reserved; i++)
        ng_qsbr_unreserve(all[i]);
    ng_qsbr_fini(shared);
    free(shared);
    free(all);
    *ops = n;
    *elapsed_ns = end - start;
    return err;
}
