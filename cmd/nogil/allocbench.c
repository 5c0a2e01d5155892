/* `nogil allocbench`: the glibc rows and what every allocator's loops share (allocbench.h).
 * The loops themselves are in allocbench_loop.h, compiled here around malloc and free. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>

#include "allocbench_common.h"

/* ---- Shared driver -------------------------------------------------------------------- */

int ab_check_params(const ab_params *p, bool gating_ok)
{
    if (p == NULL || p->time_ns <= 0 || p->corrupt_after < 0 || p->sample_every < 0 ||
        p->sample_every % AB_CLOCK_EVERY != 0)
        return EINVAL;
    switch (p->bench) {
    case AB_BENCH_WINDOW:
        if (p->threads < 1 || p->threads > AB_MAX_THREADS || p->window < 1 ||
            p->window > (INT64_C(1) << 28))
            return EINVAL;
        if (p->readers != 0 &&
            (!gating_ok || p->readers < 0 || p->readers > AB_MAX_THREADS || p->threads != 1 ||
             p->report_every < 1))
            return EINVAL;
        return 0;
    case AB_BENCH_XTHREAD:
        if (p->threads != 2 || p->readers != 0 || p->window < 2 || p->window > (1 << 24) ||
            (p->window & (p->window - 1)) != 0)
            return EINVAL;
        return 0;
    default:
        return EINVAL;
    }
}

int ab_drive(ab_run *run, void *(*worker)(void *), void *(*consumer)(void *),
             void *(*reader)(void *), size_t stride, ab_result *out)
{
    const ab_params *p = run->p;
    const int n = p->threads;
    const int readers = reader != NULL ? p->readers : 0;
    stride = (stride + 63) & ~(size_t)63;
    char *mem = aligned_alloc(64, stride * (size_t)(n + readers));
    pthread_t *tids = calloc((size_t)(n + readers), sizeof(pthread_t));
    if (mem == NULL || tids == NULL) {
        free(mem);
        free(tids);
        return ENOMEM;
    }
    memset(mem, 0, stride * (size_t)(n + readers));
#define AB_T(i) ((ab_thread *)(mem + stride * (size_t)(i)))
    for (int i = 0; i < n + readers; i++) {
        AB_T(i)->run = run;
        AB_T(i)->index = i < n ? i : i - n;
    }
    if (p->bench == AB_BENCH_XTHREAD) {
        run->ring.mask = (uint64_t)p->window - 1;
        run->ring.buf = calloc((size_t)p->window, sizeof(void *));
        if (run->ring.buf == NULL) {
            free(mem);
            free(tids);
            return ENOMEM;
        }
    }

    /* Readers first: they are attached before the writer fills its window. */
    int err = 0, rstarted = 0;
    for (; rstarted < readers; rstarted++) {
        err = pthread_create(&tids[n + rstarted], NULL, reader, AB_T(n + rstarted));
        if (err != 0)
            break;
    }
    if (err != 0) {
        ab_fail(run, err);
        __atomic_store_n(&run->abort, 1, __ATOMIC_RELAXED);
        /* The writer's ab_stop_readers counts the readers that never started as done. */
        __atomic_fetch_add(&run->readers_done, readers - rstarted, __ATOMIC_RELEASE);
        __atomic_fetch_add(&run->readers_ready, readers - rstarted, __ATOMIC_RELEASE);
    }
    while (__atomic_load_n(&run->readers_ready, __ATOMIC_ACQUIRE) < readers)
        sched_yield();

    int started = 0;
    for (; started < n; started++) {
        void *(*fn)(void *) = consumer != NULL && started == 1 ? consumer : worker;
        int rc = pthread_create(&tids[started], NULL, fn, AB_T(started));
        if (rc != 0) {
            ab_fail(run, rc);
            __atomic_store_n(&run->abort, 1, __ATOMIC_RELAXED);
            break;
        }
    }
    while (__atomic_load_n(&run->ready, __ATOMIC_ACQUIRE) < started)
        sched_yield();
    run->start_ns = ab_now_ns();
    run->deadline_ns = run->start_ns + p->time_ns;
    __atomic_store_n(&run->go, 1, __ATOMIC_RELEASE);
    for (int i = 0; i < started; i++)
        pthread_join(tids[i], NULL);
    __atomic_store_n(&run->reader_stop, 1, __ATOMIC_RELAXED);
    for (int i = 0; i < rstarted; i++)
        pthread_join(tids[n + i], NULL);

    memset(out, 0, sizeof(*out));
    int64_t end = run->start_ns;
    for (int i = 0; i < started; i++) {
        ab_thread *t = AB_T(i);
        out->corrupt += t->corrupt;
        if (p->bench == AB_BENCH_WINDOW)
            out->cpu_ns += t->cpu_ns / n;
        else if (t->cpu_ns - t->wait_cpu_ns > out->cpu_ns)
            out->cpu_ns = t->cpu_ns - t->wait_cpu_ns;
        if (p->bench == AB_BENCH_WINDOW || i == 1) {
            out->ops += t->ops;
            if (t->end_ns > end)
                end = t->end_ns;
        }
    }
    out->elapsed_ns = end - run->start_ns;
    for (int i = 0; i < rstarted; i++)
        out->reader_reads += AB_T(n + i)->reads;
    if (started > 0) {
        ab_thread *w = AB_T(0);
        out->samples = w->samples;
        out->bytes_waiting_peak = w->bw_peak;
        out->pages_waiting_peak = w->pw_peak;
        if (w->samples > 0) {
            out->bytes_waiting_mean = w->bw_sum / (double)w->samples;
            out->pages_waiting_mean = w->pw_sum / (double)w->samples;
        }
        out->pages_deferred = w->pages_deferred;
        out->pages_reused_same_class = w->pages_reused_same_class;
        out->pages_released_after_goal = w->pages_released_after_goal;
    }
    err = __atomic_load_n(&run->err, __ATOMIC_RELAXED);
    if (err == 0 && p->bench == AB_BENCH_XTHREAD && started == 2 && AB_T(0)->ops != AB_T(1)->ops)
        err = EPROTO; /* blocks pushed but never freed */
    if (err == 0 && out->corrupt > 0)
        err = EPROTO;
#undef AB_T
    free(run->ring.buf);
    free(mem);
    free(tids);
    return err;
}

/* ---- glibc ---------------------------------------------------------------------------- */

typedef struct ab_glibc_tls {
    char unused;
} ab_glibc_tls;

#define AB_IMPL(x) ab_glibc_##x
#define AB_TLS ab_glibc_tls
#define AB_THREAD_INIT(run, tls) 0
#define AB_THREAD_FINI(run, tls) 0
#define AB_MALLOC(tls, n) malloc(n)
#define AB_FREE(tls, p) free(p)
#define AB_TICK(tls) 0
#include "allocbench_loop.h"

int ab_run_glibc(const ab_params *p, ab_result *out)
{
    int err = ab_check_params(p, false);
    if (err != 0 || out == NULL)
        return err != 0 ? err : EINVAL;
    ab_run run = {.p = p};
    if (p->bench == AB_BENCH_WINDOW)
        return ab_drive(&run, ab_glibc_window_thread, NULL, NULL, sizeof(ab_glibc_thread), out);
    return ab_drive(&run, ab_glibc_producer, ab_glibc_consumer, NULL, sizeof(ab_glibc_thread), out);
}

/* ---- Process checks ------------------------------------------------------------------- */

static const char *ab_origin(const char *sym)
{
    Dl_info info;
    void *addr = dlsym(RTLD_DEFAULT, sym);
    if (addr == NULL || dladdr(addr, &info) == 0 || info.dli_fname == NULL)
        return "";
    return info.dli_fname;
}

const char *ab_malloc_origin(void)
{
    return ab_origin("malloc");
}

const char *ab_free_origin(void)
{
    return ab_origin("free");
}

int64_t ab_vm_kb(const char *field)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (f == NULL)
        return -1;
    char line[256];
    size_t len = strlen(field);
    int64_t kb = -1;
    while (fgets(line, sizeof(line), f) != NULL) {
        if (strncmp(line, field, len) == 0 && line[len] == ':') {
            kb = strtoll(line + len + 1, NULL, 10);
            break;
        }
    }
    fclose(f);
    return kb;
}
