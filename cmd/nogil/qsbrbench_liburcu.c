//go:build nogil_liburcu

/* liburcu's half of `nogil qsbrbench` (see qsbrbench.h): the loops of qsbrbench.c with
 * liburcu's QSBR flavour. Built only with the nogil_liburcu tag (Debian: liburcu-dev), so
 * that the tool builds without liburcu. _LGPL_SOURCE selects liburcu's inline read side and
 * quiescent state, the fastest spelling it offers. */
#define _GNU_SOURCE
#define _LGPL_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <urcu-qsbr.h>

#include "qsbrbench.h"

#define QB_OBJECT_BYTES 64
#define QB_CLOCK_EVERY 1024

static int64_t qbu_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* 64 bytes, like qsbrbench.c's objects; liburcu keeps its callback link inside the object. */
typedef struct qbu_object {
    struct rcu_head head;
    uint64_t payload[6];
} qbu_object;

_Static_assert(sizeof(qbu_object) == QB_OBJECT_BYTES, "qbu_object must be 64 bytes");

static uint64_t qbu_sink;

/* ---- Quiescent-state cost ---------------------------------------------------------------- */

struct qbu_quiescent {
    int64_t time_ns, ops, elapsed_ns;
};

/* On its own thread, so that registering with liburcu never touches a Go thread. */
static void *qbu_quiescent_thread(void *arg)
{
    struct qbu_quiescent *q = arg;
    rcu_register_thread();
    int64_t n = 0, start = qbu_now_ns(), end = start, deadline = start + q->time_ns;
    do {
        for (int i = 0; i < QB_CLOCK_EVERY; i++)
            rcu_quiescent_state();
        n += QB_CLOCK_EVERY;
        end = qbu_now_ns();
    } while (end < deadline);
    rcu_unregister_thread();
    q->ops = n;
    q->elapsed_ns = end - start;
    return NULL;
}

int qb_quiescent_liburcu(int64_t time_ns, int64_t *ops, int64_t *elapsed_ns)
{
    if (time_ns <= 0 || ops == NULL || elapsed_ns == NULL)
        return EINVAL;
    struct qbu_quiescent q = {.time_ns = time_ns};
    pthread_t t;
    int rc = pthread_create(&t, NULL, qbu_quiescent_thread, &q);
    if (rc != 0)
        return rc;
    pthread_join(t, NULL);
    *ops = q.ops;
    *elapsed_ns = q.elapsed_ns;
    return 0;
}

/* ---- Grace-period latency ------------------------------------------------------------- */

struct qbu_grace {
    qbu_object *current;
    int report_every;
    int stop;
    int ready;
};

static void *qbu_grace_reader(void *arg)
{
    struct qbu_grace *g = arg;
    rcu_register_thread();
    __atomic_fetch_add(&g->ready, 1, __ATOMIC_RELEASE);
    uint64_t sum = 0;
    while (!__atomic_load_n(&g->stop, __ATOMIC_RELAXED)) {
        for (int i = 0; i < g->report_every; i++) {
            rcu_read_lock();
            qbu_object *o = rcu_dereference(g->current);
            sum += o->payload[i % 6];
            rcu_read_unlock();
        }
        rcu_quiescent_state();
    }
    rcu_unregister_thread();
    __atomic_fetch_add(&qbu_sink, sum, __ATOMIC_RELAXED);
    return NULL;
}

struct qbu_grace_writer {
    struct qbu_grace *g;
    int64_t time_ns, cap, n;
    int64_t *samples_ns;
};

/* The writer is not registered: synchronize_rcu needs no registration (a registered, online
 * caller would have to go offline around it anyway). */
static void *qbu_grace_writer(void *arg)
{
    struct qbu_grace_writer *w = arg;
    int64_t count = 0, deadline = qbu_now_ns() + w->time_ns;
    do {
        int64_t t0 = qbu_now_ns();
        synchronize_rcu();
        int64_t t1 = qbu_now_ns();
        w->samples_ns[count++] = t1 - t0;
        if (t1 >= deadline)
            break;
    } while (count < w->cap);
    w->n = count;
    return NULL;
}

int qb_grace_liburcu(int readers, int report_every, int64_t time_ns, int64_t *samples_ns,
                     int64_t cap, int64_t *n)
{
    if (readers < 0 || readers > 1024 || report_every < 1 || time_ns <= 0 ||
        samples_ns == NULL || cap < 1 || n == NULL)
        return EINVAL;
    pthread_t *tids = calloc((size_t)readers + 1, sizeof(pthread_t));
    if (tids == NULL)
        return ENOMEM;
    static qbu_object object = {.payload = {1, 2, 3, 4, 5, 6}};
    struct qbu_grace g = {.current = &object, .report_every = report_every};
    int err = 0, started = 0;
    for (; started < readers; started++) {
        err = pthread_create(&tids[started], NULL, qbu_grace_reader, &g);
        if (err != 0)
            break;
    }
    while (__atomic_load_n(&g.ready, __ATOMIC_ACQUIRE) < started)
        sched_yield();
    struct qbu_grace_writer w = {.g = &g, .time_ns = time_ns, .cap = cap, .samples_ns = samples_ns};
    if (err == 0) {
        pthread_t writer;
        err = pthread_create(&writer, NULL, qbu_grace_writer, &w);
        if (err == 0)
            pthread_join(writer, NULL);
    }
    __atomic_store_n(&g.stop, 1, __ATOMIC_RELAXED);
    for (int i = 0; i < started; i++)
        pthread_join(tids[i], NULL);
    free(tids);
    *n = w.n;
    return err;
}

/* ---- Delayed-free throughput ---------------------------------------------------------- */

struct qbu_delayed {
    qbu_object *current;
    int report_every;
    int stop;
    int reader_ready;
    int64_t reads;
    int64_t time_ns;
    qb_delayed_result result;
    int err;
    char pad[64];
    int64_t pending_bytes; /* retired, not yet freed: up in the writer, down in callbacks */
};

/* The run in progress, for the callbacks (one run at a time). */
static struct qbu_delayed *qbu_delayed_current;

static void qbu_free_object(struct rcu_head *head)
{
    qbu_object *o = caa_container_of(head, qbu_object, head);
    __atomic_fetch_sub(&qbu_delayed_current->pending_bytes, QB_OBJECT_BYTES, __ATOMIC_RELAXED);
    free(o);
}

static void *qbu_delayed_reader(void *arg)
{
    struct qbu_delayed *d = arg;
    rcu_register_thread();
    __atomic_store_n(&d->reader_ready, 1, __ATOMIC_RELEASE);
    uint64_t sum = 0;
    int64_t reads = 0;
    while (!__atomic_load_n(&d->stop, __ATOMIC_RELAXED)) {
        for (int i = 0; i < d->report_every; i++) {
            rcu_read_lock();
            qbu_object *o = rcu_dereference(d->current);
            sum += o->payload[i % 6];
            rcu_read_unlock();
        }
        reads += d->report_every;
        rcu_quiescent_state();
    }
    rcu_unregister_thread();
    __atomic_fetch_add(&qbu_sink, sum, __ATOMIC_RELAXED);
    d->reads = reads;
    return NULL;
}

static qbu_object *qbu_new_object(int64_t serial)
{
    qbu_object *o = malloc(sizeof(*o));
    if (o != NULL)
        for (int i = 0; i < 6; i++)
            o->payload[i] = (uint64_t)serial + (uint64_t)i;
    return o;
}

static void *qbu_delayed_writer(void *arg)
{
    struct qbu_delayed *d = arg;
    rcu_register_thread();
    int64_t objects = 0, peak = 0, start = qbu_now_ns(), deadline = start + d->time_ns;
    for (;;) {
        qbu_object *fresh = qbu_new_object(objects + 1);
        if (fresh == NULL) {
            d->err = ENOMEM;
            break;
        }
        qbu_object *old = rcu_xchg_pointer(&d->current, fresh);
        int64_t pending =
            __atomic_add_fetch(&d->pending_bytes, QB_OBJECT_BYTES, __ATOMIC_RELAXED);
        if (pending > peak)
            peak = pending;
        call_rcu(&old->head, qbu_free_object);
        rcu_quiescent_state();
        objects++;
        if (objects % QB_CLOCK_EVERY == 0 && qbu_now_ns() >= deadline)
            break;
    }
    /* rcu_barrier refuses to run from an online QSBR thread. */
    rcu_thread_offline();
    rcu_barrier();
    int64_t end = qbu_now_ns();
    rcu_thread_online();
    rcu_unregister_thread();
    if (d->err == 0 && __atomic_load_n(&d->pending_bytes, __ATOMIC_RELAXED) != 0)
        d->err = EPROTO;
    d->result.objects = objects;
    d->result.elapsed_ns = end - start;
    d->result.peak_pending_bytes = peak;
    return NULL;
}

int qb_delayed_liburcu(int report_every, int64_t time_ns, qb_delayed_result *out)
{
    if (report_every < 1 || time_ns <= 0 || out == NULL)
        return EINVAL;
    if (qbu_delayed_current != NULL)
        return EBUSY;
    struct qbu_delayed *d = calloc(1, sizeof(*d));
    if (d == NULL)
        return ENOMEM;
    d->report_every = report_every;
    d->time_ns = time_ns;
    d->current = qbu_new_object(0);
    qbu_delayed_current = d;
    int err = d->current == NULL ? ENOMEM : 0;
    pthread_t reader, writer;
    bool reader_started = false;
    if (err == 0) {
        err = pthread_create(&reader, NULL, qbu_delayed_reader, d);
        reader_started = err == 0;
    }
    if (reader_started) {
        while (!__atomic_load_n(&d->reader_ready, __ATOMIC_ACQUIRE))
            sched_yield();
        err = pthread_create(&writer, NULL, qbu_delayed_writer, d);
        if (err == 0) {
            pthread_join(writer, NULL);
            err = d->err;
        }
    }
    __atomic_store_n(&d->stop, 1, __ATOMIC_RELAXED);
    if (reader_started)
        pthread_join(reader, NULL);
    d->result.reads = d->reads;
    *out = d->result;
    qbu_delayed_current = NULL;
    free(d->current);
    free(d);
    return err;
}
