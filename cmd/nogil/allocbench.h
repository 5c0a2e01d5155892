/* The C half of `nogil allocbench`: the page allocator (csrc/include/nogil/alloc.h, OBJECT
 * heap, inline ng_mi_heap_malloc / ng_mi_free), Debian's libmimalloc (mi_malloc / mi_free,
 * loaded with dlopen(RTLD_LOCAL) only in the process that measures it: see
 * allocbench_mimalloc.c) and glibc malloc, with the same loops on plain pthreads.
 *
 * Every ab_run_* function runs its threads to completion before it returns. Each returns 0,
 * an errno value (EINVAL for bad parameters, pthread_create's error, ENOMEM when an allocation
 * failed, EPROTO when the measured allocator misbehaved: see ab_result.corrupt), or a nogil
 * status (nogil/status.h, negative) that a nogil call returned.
 */
#ifndef NOGIL_CMD_ALLOCBENCH_H
#define NOGIL_CMD_ALLOCBENCH_H

#include <stdint.h>

/* Block sizes: uniform in [AB_MIN_SIZE, AB_MAX_SIZE] bytes. */
#define AB_MIN_SIZE 16
#define AB_MAX_SIZE 256

enum ab_bench {
    /* Replace in window: every thread keeps `window` live blocks; each op frees the block of
     * a random slot (after checking its pattern) and puts a new block of random size there
     * (writing its pattern). */
    AB_BENCH_WINDOW = 1,
    /* Producer -> consumer: thread 0 allocates blocks and passes them through a ring of
     * `window` entries to thread 1, which checks and frees them. */
    AB_BENCH_XTHREAD = 2,
};

typedef struct ab_params {
    int bench;            /* ab_bench */
    int threads;          /* window: threads, each with its own window; xthread: 2 */
    int64_t window;       /* live blocks per thread (window), ring entries (xthread, a power of 2) */
    int64_t time_ns;      /* timed phase, after the windows are filled */
    uint64_t seed;
    /* QSBR gating (page allocator only, window bench, threads == 1): `readers` threads with
     * their own attached thread states read the first word of random blocks of the writer's
     * window and pass a checkpoint every `report_every` reads. */
    int readers;
    int report_every;
    /* The writer samples its OBJECT heap's statistics every this many ops (a multiple of
     * 1024; 0: never). Page allocator only. */
    int64_t sample_every;
    /* Fault injection for the tests: after this many ops (0: never), thread 0 damages the
     * pattern of one live block, which the checks must then report (EPROTO). */
    int64_t corrupt_after;
} ab_params;

typedef struct ab_result {
    int64_t ops;          /* window: frees+allocations; xthread: blocks passed and freed */
    int64_t elapsed_ns;   /* from the start signal to the last thread's end of the timed phase */
    int64_t corrupt;      /* blocks whose pattern did not survive (non-zero: EPROTO) */
    /* CPU time (CLOCK_THREAD_CPUTIME_ID) per measured thread in the timed phase, so that
     * ops / cpu_ns is the rate the threads had while they ran, less sensitive to other
     * processes on a busy machine than ops / elapsed_ns. Window: the mean of the threads';
     * xthread: the busier thread's, without its waits on the ring (the pipeline's bottleneck
     * stage). */
    int64_t cpu_ns;
    /* Page allocator only: the writer's OBJECT heap statistics (ng_mi_heap_get_stats). */
    int64_t samples;
    uint64_t bytes_waiting_peak, pages_waiting_peak;
    double bytes_waiting_mean, pages_waiting_mean;
    uint64_t pages_deferred, pages_reused_same_class, pages_released_after_goal;
    int64_t reader_reads; /* gating: the readers' block reads (a sanity figure) */
} ab_result;

int ab_run_glibc(const ab_params *p, ab_result *out);
/* allocbench_mimalloc.c (nogil_mimalloc tag). ab_mimalloc_open loads the library (RTLD_LOCAL)
 * and returns 0, or ENOENT with a message in err (of size cap). */
int ab_mimalloc_open(char *err, int cap);
int ab_mimalloc_version(void);
int ab_run_mimalloc(const ab_params *p, ab_result *out);
/* allocbench_nogil.c: the page allocator's OBJECT heap. */
int ab_run_nogil(const ab_params *p, ab_result *out);

/* The file the process's malloc and free resolve to (dladdr), for the check that the glibc
 * rows measure glibc; "" when unknown. */
const char *ab_malloc_origin(void);
const char *ab_free_origin(void);

/* Peak and current resident set of this process in KiB (VmHWM, VmRSS of /proc/self/status),
 * -1 when unreadable. */
int64_t ab_vm_kb(const char *field);

#endif /* NOGIL_CMD_ALLOCBENCH_H */
