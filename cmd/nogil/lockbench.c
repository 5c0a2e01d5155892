/* C harness for `nogil lockbench`; see lockbench.h.
 *
 * The lock loop follows CPython's Tools/lockbench method (Modules/_testinternalcapi/
 * test_lock.c, benchmark_locks) so our numbers can be put next to CPython's own: same shared
 * layout, same critical section, same relaxed stop-flag check, same rate formula.
 */
#define _GNU_SOURCE /* pthread_attr_setaffinity_np, CPU_* */
#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "nogil.h"
#include "lockbench.h"

#define LB_CACHE_LINE 64

static int64_t lb_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Sleeps until the monotonic clock reaches `deadline`. The calling thread is a cgo thread, so
 * Go may direct signals at it; an interrupted sleep simply resumes. */
static void lb_sleep_until(int64_t deadline)
{
    struct timespec ts = {
        .tv_sec = deadline / 1000000000,
        .tv_nsec = deadline % 1000000000,
    };
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

static void *lb_aligned_calloc(size_t n, size_t size)
{
    void *p = NULL;
    if (posix_memalign(&p, LB_CACHE_LINE, n * size) != 0)
        return NULL;
    memset(p, 0, n * size);
    return p;
}

/* ---- Lock throughput -------------------------------------------------------------------- */

/* The data every benchmark thread touches, laid out like CPython's bench_data_locks: the
 * read-mostly configuration and stop flag first, then 200 bytes of padding, then the locks
 * with the protected double right behind them. The padding keeps the stop flag (read on
 * every iteration by every thread) off the cache line that the lock owner keeps writing;
 * lock and data share a line on purpose, as they do for a lock embedded in an object. */
struct lb_shared {
    _Alignas(LB_CACHE_LINE) int stop;
    int kind;
    int cs_len;
    char padding[200];
    pthread_mutex_t pmutex;
    ng_mutex mutex;
    double value;
};

/* One per thread, each on its own cache line(s) so that publishing results does not bounce a
 * neighbour's line. */
struct lb_thread {
    _Alignas(LB_CACHE_LINE) struct lb_shared *shared;
    pthread_t tid;
    int64_t count;
    int err;
};

/* The two loops are written out separately rather than branching on the lock kind inside one
 * loop, so each measures nothing but its own lock calls. The critical section is CPython's:
 * a chain of dependent floating-point adds through the shared double, `cs_len` long. The
 * iteration count lives in a local and is published once at the end, as CPython does. */
static void *lb_lock_thread(void *arg)
{
    struct lb_thread *t = arg;
    struct lb_shared *s = t->shared;
    const int cs_len = s->cs_len;
    double my = 1.0;
    int64_t n = 0;
    int err = 0;

    if (s->kind == LB_LOCK_NG_MUTEX) {
        /* Relaxed: the flag only has to become visible eventually; nothing is published
         * through it (CPython's loop uses the same relaxed load). */
        while (!ng_atomic_load(&s->stop, NG_RELAXED)) {
            int st = ng_mutex_lock(&s->mutex);
            if (st != NG_OK) {
                err = EPROTO;
                break;
            }
            for (int i = 0; i < cs_len; i++) {
                s->value += my;
                my = s->value;
            }
            if (ng_mutex_unlock(&s->mutex) != NG_OK) {
                err = EPROTO;
                break;
            }
            n++;
        }
    } else {
        while (!ng_atomic_load(&s->stop, NG_RELAXED)) {
            int st = pthread_mutex_lock(&s->pmutex);
            if (st != 0) {
                err = st;
                break;
            }
            for (int i = 0; i < cs_len; i++) {
                s->value += my;
                my = s->value;
            }
            st = pthread_mutex_unlock(&s->pmutex);
            if (st != 0) {
                err = st;
                break;
            }
            n++;
        }
    }
    t->count = n;
    t->err = err;
    return NULL;
}

int lb_run_locks(int kind, int nthreads, int cs_len, int64_t time_ns, int64_t *counts,
                 int64_t *elapsed_ns)
{
    if ((kind != LB_LOCK_NG_MUTEX && kind != LB_LOCK_PTHREAD) || nthreads < 1 || cs_len < 0 ||
        time_ns < 0 || counts == NULL || elapsed_ns == NULL)
        return EINVAL;

    struct lb_shared *s = lb_aligned_calloc(1, sizeof *s);
    struct lb_thread *th = lb_aligned_calloc((size_t)nthreads, sizeof *th);
    if (s == NULL || th == NULL) {
        free(s);
        free(th);
        return ENOMEM;
    }
    s->kind = kind;
    s->cs_len = cs_len;
    int err = pthread_mutex_init(&s->pmutex, NULL);
    if (err != 0) {
        free(s);
        free(th);
        return err;
    }

    /* Like CPython, the clock starts before the threads do: thread start-up is part of the
     * run, which is negligible at the default one second per cell. */
    int64_t start = lb_now_ns();
    int created = 0;
    for (; created < nthreads; created++) {
        th[created].shared = s;
        err = pthread_create(&th[created].tid, NULL, lb_lock_thread, &th[created]);
        if (err != 0)
            break;
    }
    if (err == 0)
        lb_sleep_until(start + time_ns);
    ng_atomic_store(&s->stop, 1, NG_RELEASE);
    for (int i = 0; i < created; i++)
        pthread_join(th[i].tid, NULL);
    int64_t end = lb_now_ns();

    for (int i = 0; i < created && err == 0; i++)
        err = th[i].err;
    if (err == 0) {
        for (int i = 0; i < nthreads; i++)
            counts[i] = th[i].count;
        *elapsed_ns = end - start;
    }
    pthread_mutex_destroy(&s->pmutex);
    free(s);
    free(th);
    return err;
}

/* ---- Park/unpark round trip ------------------------------------------------------------- */

enum {
    LB_TURN_A = 0, /* the pinging thread may go */
    LB_TURN_B = 1, /* the ponging thread may go */
    LB_DONE = 2,   /* both threads exit */
};

struct lb_roundtrip {
    /* The turn word gets a line of its own: it is the only thing the two threads exchange. */
    _Alignas(LB_CACHE_LINE) uint32_t word;
    _Alignas(LB_CACHE_LINE) int kind;
    int stop;
    int err;
    int64_t roundtrips;
    int64_t elapsed_ns;
};

/* Sleeps while the turn word still holds `v`. Returns 0 when the caller should look at the
 * word again (woken, the value already changed, or a signal), or an errno value. */
static int lb_rt_wait(struct lb_roundtrip *rt, uint32_t v)
{
    if (rt->kind == LB_RT_FUTEX) {
        if (syscall(SYS_futex, &rt->word, FUTEX_WAIT_PRIVATE, v, NULL, NULL, 0) == 0)
            return 0;
        return (errno == EAGAIN || errno == EINTR) ? 0 : errno;
    }
    int st = ng_park(&rt->word, &v, sizeof v, -1, NULL, 0);
    return (st == NG_OK || st == NG_AGAIN || st == NG_INTR) ? 0 : EPROTO;
}

/* Wakes the other thread. Deliberately unconditional on both sides: the futex variant pays a
 * FUTEX_WAKE syscall per hand-off whether or not the peer sleeps, and the parking-lot variant
 * pays whatever ng_unpark_all costs when nobody is parked. */
static int lb_rt_wake(struct lb_roundtrip *rt)
{
    if (rt->kind == LB_RT_FUTEX) {
        if (syscall(SYS_futex, &rt->word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0) < 0)
            return errno;
        return 0;
    }
    return ng_unpark_all(&rt->word) >= 0 ? 0 : EPROTO;
}

/* On an unexpected error both threads must still get out: record the error and end the
 * game, which the peer notices however it is waiting. */
static void lb_rt_fail(struct lb_roundtrip *rt, int err)
{
    int none = 0;
    ng_atomic_cas(&rt->err, &none, err, NG_RELAXED, NG_RELAXED);
    ng_atomic_store(&rt->word, LB_DONE, NG_RELEASE);
    lb_rt_wake(rt);
}

/* Thread A: waits for its turn, hands the turn to B, counts a round trip each time the turn
 * comes back, and ends the game once the stop flag is set. */
static void *lb_rt_ping(void *arg)
{
    struct lb_roundtrip *rt = arg;
    int64_t n = 0, t0 = 0;
    for (;;) {
        uint32_t v;
        /* Acquire pairs with B's release store: whatever B did before handing over is
         * visible (the same contract a lock hand-off has). */
        while ((v = ng_atomic_load(&rt->word, NG_ACQUIRE)) == LB_TURN_B) {
            int err = lb_rt_wait(rt, LB_TURN_B);
            if (err != 0)
                lb_rt_fail(rt, err);
        }
        if (v == LB_DONE)
            break;
        /* The clock starts after the first round trip, once B is known to be running, so
         * thread start-up is not billed to the hand-off. */
        if (n == 1)
            t0 = lb_now_ns();
        /* At least one timed round trip, however late: on a busy machine a round may run
         * over its time rather than come back with nothing. */
        if (n >= 2 && ng_atomic_load(&rt->stop, NG_RELAXED)) {
            rt->elapsed_ns = lb_now_ns() - t0;
            rt->roundtrips = n - 1;
            ng_atomic_store(&rt->word, LB_DONE, NG_RELEASE);
            int err = lb_rt_wake(rt);
            if (err != 0)
                lb_rt_fail(rt, err);
            break;
        }
        ng_atomic_store(&rt->word, LB_TURN_B, NG_RELEASE);
        int err = lb_rt_wake(rt);
        if (err != 0)
            lb_rt_fail(rt, err);
        n++;
    }
    return NULL;
}

/* Thread B: the mirror image, until A ends the game. */
static void *lb_rt_pong(void *arg)
{
    struct lb_roundtrip *rt = arg;
    for (;;) {
        uint32_t v;
        while ((v = ng_atomic_load(&rt->word, NG_ACQUIRE)) == LB_TURN_A) {
            int err = lb_rt_wait(rt, LB_TURN_A);
            if (err != 0)
                lb_rt_fail(rt, err);
        }
        if (v == LB_DONE)
            break;
        ng_atomic_store(&rt->word, LB_TURN_A, NG_RELEASE);
        int err = lb_rt_wake(rt);
        if (err != 0)
            lb_rt_fail(rt, err);
    }
    return NULL;
}

/* Fills the thread attributes for `pin`: attr_a for the pinging thread, attr_b for the
 * ponging one. Uses the calling thread's affinity mask, which is the process's unless
 * somebody narrowed it for this thread. Returns 0 or an errno value. */
static int lb_rt_pin(int pin, pthread_attr_t *attr_a, pthread_attr_t *attr_b)
{
    if (pin == LB_PIN_NONE)
        return 0;
    cpu_set_t allowed;
    if (sched_getaffinity(0, sizeof allowed, &allowed) != 0)
        return errno;
    int cpus[2], found = 0;
    for (int c = 0; c < CPU_SETSIZE && found < 2; c++) {
        if (CPU_ISSET(c, &allowed))
            cpus[found++] = c;
    }
    if (found < (pin == LB_PIN_CROSS ? 2 : 1))
        return EINVAL;
    cpu_set_t a, b;
    CPU_ZERO(&a);
    CPU_ZERO(&b);
    CPU_SET(cpus[0], &a);
    CPU_SET(pin == LB_PIN_CROSS ? cpus[1] : cpus[0], &b);
    int err = pthread_attr_setaffinity_np(attr_a, sizeof a, &a);
    if (err == 0)
        err = pthread_attr_setaffinity_np(attr_b, sizeof b, &b);
    return err;
}

int lb_run_roundtrip(int kind, int pin, int64_t time_ns, int64_t *roundtrips,
                     int64_t *elapsed_ns)
{
    if ((kind != LB_RT_FUTEX && kind != LB_RT_PARK) ||
        (pin != LB_PIN_NONE && pin != LB_PIN_SAME && pin != LB_PIN_CROSS) || time_ns < 0 ||
        roundtrips == NULL || elapsed_ns == NULL)
        return EINVAL;

    pthread_attr_t attr_a, attr_b;
    pthread_attr_init(&attr_a);
    pthread_attr_init(&attr_b);
    int err = lb_rt_pin(pin, &attr_a, &attr_b);
    if (err != 0)
        goto out_attr;

    struct lb_roundtrip *rt = lb_aligned_calloc(1, sizeof *rt);
    if (rt == NULL) {
        err = ENOMEM;
        goto out_attr;
    }
    rt->kind = kind;
    rt->word = LB_TURN_A;

    pthread_t a, b;
    err = pthread_create(&b, &attr_b, lb_rt_pong, rt);
    if (err != 0) {
        free(rt);
        goto out_attr;
    }
    err = pthread_create(&a, &attr_a, lb_rt_ping, rt);
    if (err != 0) {
        /* Without A nobody ends the game: do it here so B can be joined. */
        lb_rt_fail(rt, err);
        pthread_join(b, NULL);
        free(rt);
        goto out_attr;
    }
    lb_sleep_until(lb_now_ns() + time_ns);
    ng_atomic_store(&rt->stop, 1, NG_RELEASE);
    pthread_join(a, NULL);
    pthread_join(b, NULL);

    err = rt->err;
    if (err == 0) {
        *roundtrips = rt->roundtrips;
        *elapsed_ns = rt->elapsed_ns;
    }
    free(rt);
out_attr:
    pthread_attr_destroy(&attr_a);
    pthread_attr_destroy(&attr_b);
    return err;
}
