/* Private to allocbench*.c: the pieces every allocator's loops share (clock, random numbers,
 * block patterns, the ring, the run's shared state). Everything is static inline, so each
 * allocator's file compiles its own copy next to its inline malloc and free. */
#ifndef NOGIL_CMD_ALLOCBENCH_COMMON_H
#define NOGIL_CMD_ALLOCBENCH_COMMON_H

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "allocbench.h"

/* Loops look at the clock (and pass their allocator's checkpoint) once per this many ops. */
#define AB_CLOCK_EVERY 1024
#define AB_MAX_THREADS 64

static inline int64_t ab_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* The calling thread's CPU time. */
static inline int64_t ab_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* splitmix64: cheap, and every allocator sees the same sequence for the same seed. */
static inline uint64_t ab_rng(uint64_t *s)
{
    uint64_t z = (*s += UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

/* A slot index from the low half of r, a size from the high half (multiply-shift: no
 * division in the loop). */
static inline int64_t ab_index(uint64_t r, int64_t n)
{
    return (int64_t)(((r & 0xffffffffu) * (uint64_t)n) >> 32);
}

static inline size_t ab_size(uint64_t r)
{
    return AB_MIN_SIZE + (size_t)(((r >> 32) * (uint64_t)(AB_MAX_SIZE - AB_MIN_SIZE + 1)) >> 32);
}

/* A block's pattern: its tag (a serial number above the size in the low 16 bits) in its first
 * word, the tag's complement in its last 8 bytes. The first word is written and read with
 * relaxed atomics: in the gating run a reader loads it from blocks the writer may be
 * replacing (as a lock-free reader loads an object header). */
static inline uint64_t ab_tag(uint64_t serial, size_t size)
{
    return (serial << 16) | (uint64_t)size;
}

static inline void ab_write(void *p, uint64_t tag)
{
    uint64_t end = ~tag;
    __atomic_store_n((uint64_t *)p, tag, __ATOMIC_RELAXED);
    memcpy((char *)p + (tag & 0xffff) - 8, &end, 8);
}

/* Whether p still holds tag's pattern. */
static inline bool ab_check(const void *p, uint64_t tag)
{
    uint64_t first = __atomic_load_n((const uint64_t *)p, __ATOMIC_RELAXED), end;
    memcpy(&end, (const char *)p + (tag & 0xffff) - 8, 8);
    return first == tag && end == ~tag;
}

/* The consumer's check: the tag comes from the block, its serial must be the one expected. */
static inline bool ab_check_serial(const void *p, uint64_t serial)
{
    uint64_t tag = __atomic_load_n((const uint64_t *)p, __ATOMIC_RELAXED);
    size_t size = (size_t)(tag & 0xffff);
    if ((tag >> 16) != serial || size < AB_MIN_SIZE || size > AB_MAX_SIZE)
        return false;
    return ab_check(p, tag);
}

/* Fault injection: damages the last byte of a block's pattern. */
static inline void ab_corrupt(void *p, uint64_t tag)
{
    ((volatile unsigned char *)p)[(tag & 0xffff) - 1] ^= 0x5a;
}

static inline void ab_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* The live blocks of a window. */
typedef struct ab_slot {
    void *p;      /* atomic (relaxed): the gating readers load it */
    uint64_t tag;
} ab_slot;

/* The producer -> consumer ring (single producer, single consumer). */
typedef struct ab_ring {
    _Alignas(64) uint64_t head;   /* written by the producer (release) */
    int done;                     /* the producer has pushed its last block */
    _Alignas(64) uint64_t tail;   /* written by the consumer (release) */
    _Alignas(64) uint64_t mask;
    void **buf;
} ab_ring;

/* What a run's threads share. */
typedef struct ab_run {
    const ab_params *p;
    void *shared;            /* the allocator's (the page allocator: its interpreter) */
    int ready;               /* threads past their setup (window filled) */
    int go;                  /* set by the driver once every thread is ready */
    int abort;               /* a thread failed its setup: nobody measures */
    int64_t start_ns, deadline_ns;
    ab_ring ring;
    /* Gating: the writer's window, published for the readers. */
    ab_slot *published;
    int64_t published_n;
    int readers_ready, readers_done, reader_stop;
    int err;                 /* the first error (CAS from 0) */
} ab_run;

/* One thread's outcome. */
typedef struct ab_thread {
    ab_run *run;
    int index;
    int64_t ops, end_ns, corrupt, reads;
    int64_t cpu_ns;          /* the thread's CPU time in the timed phase */
    int64_t wait_cpu_ns;     /* the part of it spent waiting on the ring (after a first yield) */
    int64_t samples;
    uint64_t bw_peak, pw_peak;
    double bw_sum, pw_sum;
    uint64_t pages_deferred, pages_reused_same_class, pages_released_after_goal;
    char pad[64];
} ab_thread;

static inline void ab_fail(ab_run *run, int err)
{
    if (err != 0) {
        int zero = 0;
        __atomic_compare_exchange_n(&run->err, &zero, err, false, __ATOMIC_RELAXED,
                                    __ATOMIC_RELAXED);
    }
}

/* A thread's setup is over (err != 0: it failed); then it waits for the start signal.
 * Returns false when the run was aborted. */
static inline bool ab_arrive_and_wait(ab_run *run, int err)
{
    if (err != 0) {
        ab_fail(run, err);
        __atomic_store_n(&run->abort, 1, __ATOMIC_RELAXED);
    }
    __atomic_fetch_add(&run->ready, 1, __ATOMIC_RELEASE);
    while (!__atomic_load_n(&run->go, __ATOMIC_ACQUIRE))
        sched_yield();
    return err == 0 && !__atomic_load_n(&run->abort, __ATOMIC_RELAXED);
}

/* Gating: the writer stops the readers and waits until they have let go of its window. */
static inline void ab_stop_readers(ab_run *run)
{
    __atomic_store_n(&run->reader_stop, 1, __ATOMIC_RELAXED);
    while (__atomic_load_n(&run->readers_done, __ATOMIC_ACQUIRE) < run->p->readers)
        sched_yield();
}

/* Shared by every allocator: parameter checks, thread start and join, the totals. Defined in
 * allocbench.c. `worker(i)` is the function of thread i; `reader` (may be NULL) runs
 * p->readers times. ts has room for threads + readers entries, each `stride` bytes, the
 * ab_thread first. */
int ab_check_params(const ab_params *p, bool gating_ok);
int ab_drive(ab_run *run, void *(*worker)(void *), void *(*consumer)(void *),
             void *(*reader)(void *), size_t stride, ab_result *out);

#endif /* NOGIL_CMD_ALLOCBENCH_COMMON_H */
