/* Private to allocbench*.c: the measured loops, written once and compiled in each allocator's
 * file around that allocator's malloc and free (inline where the allocator has an inline fast
 * path), so no call through a pointer stands between the loop and the allocator.
 *
 * Before including it, define:
 *   AB_IMPL(x)                  the prefix of the generated names (ab_glibc_##x)
 *   AB_TLS                      the type of a thread's allocator state
 *   AB_THREAD_INIT(run, tls)    set up the calling thread: 0, an errno value or a nogil
 *                               status (negative)
 *   AB_THREAD_FINI(run, tls)    tear it down (after the thread's last free): the same
 *   AB_MALLOC(tls, n), AB_FREE(tls, p)
 *   AB_TICK(tls)                every AB_CLOCK_EVERY ops, and while waiting on the ring:
 *                               the page allocator's checkpoint; 0 or a nogil status
 * and optionally
 *   AB_SAMPLE(tls, thread)      the writer's statistics sample (every p->sample_every ops)
 */
#include "allocbench_common.h"

/* Every measured function and loop starts on a 64-byte boundary. With the compiler's default
 * alignment, where a loop fell depended on unrelated code before it, and that moved the
 * reference: 32 more bytes of code elsewhere in the binary took glibc's row from 20.4-20.9 to
 * 17.8-18.5 Mops/s (replace-in-window, 100,000 live blocks; the allocators' code unchanged),
 * and with it every "vs glibc" ratio by 12%. Aligned, four placements 64 bytes apart measure
 * 20.5-21.0. GCC only (the pragma); other compilers keep the function alignment. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("align-loops=64")
#endif
#define AB_MEASURED __attribute__((aligned(64)))

typedef struct AB_IMPL(thread) {
    ab_thread c; /* first: ab_drive sees only this */
    AB_TLS tls;
} AB_IMPL(thread);

/* Checks a slot's block and frees it. Always inlined, for every allocator alike: GCC's own
 * choice depended on the size of the allocator's inline free, and an out-of-line call in
 * the measured loop (with its register saves) would be charged to that allocator. */
static inline __attribute__((always_inline)) void AB_IMPL(release)(AB_IMPL(thread) *t, ab_slot *s)
{
    if (!ab_check(s->p, s->tag))
        t->c.corrupt++;
    AB_FREE(&t->tls, s->p);
}

AB_MEASURED static void *AB_IMPL(window_thread)(void *arg)
{
    AB_IMPL(thread) *t = arg;
    ab_run *run = t->c.run;
    const ab_params *p = run->p;
    const int64_t w = p->window;
    uint64_t rng = p->seed + (uint64_t)t->c.index * UINT64_C(0x632be59bd9b4e019);
    uint64_t serial = 0;
    bool publisher = p->readers > 0 && t->c.index == 0;
    ab_slot *slots = calloc((size_t)w, sizeof(*slots));
    int err = slots == NULL ? ENOMEM : AB_THREAD_INIT(run, &t->tls);
    bool inited = slots != NULL && err == 0;

    /* Fill the window (untimed). */
    int64_t filled = 0;
    for (; err == 0 && filled < w; filled++) {
        size_t n = ab_size(ab_rng(&rng));
        void *b = AB_MALLOC(&t->tls, n);
        if (b == NULL) {
            err = ENOMEM;
            break;
        }
        uint64_t tag = ab_tag(++serial, n);
        ab_write(b, tag);
        slots[filled].tag = tag;
        __atomic_store_n(&slots[filled].p, b, __ATOMIC_RELAXED);
    }
    if (publisher && err == 0) {
        run->published_n = w;
        __atomic_store_n(&run->published, slots, __ATOMIC_RELEASE);
    }

    int64_t ops = 0, end = 0, corrupt_after = t->c.index == 0 ? p->corrupt_after : 0;
    int64_t next_sample = p->sample_every;
    (void)next_sample;
    if (ab_arrive_and_wait(run, err)) {
        const int64_t deadline = run->deadline_ns;
        t->c.cpu_ns = -ab_cpu_ns();
        for (;;) {
            for (int i = 0; i < AB_CLOCK_EVERY; i++) {
                uint64_t r = ab_rng(&rng);
                ab_slot *s = &slots[ab_index(r, w)];
                AB_IMPL(release)(t, s);
                size_t n = ab_size(r);
                void *b = AB_MALLOC(&t->tls, n);
                if (b == NULL) {
                    __atomic_store_n(&s->p, NULL, __ATOMIC_RELAXED);
                    err = ENOMEM;
                    break;
                }
                uint64_t tag = ab_tag(++serial, n);
                ab_write(b, tag);
                s->tag = tag;
                __atomic_store_n(&s->p, b, __ATOMIC_RELAXED);
            }
            if (err != 0)
                break;
            ops += AB_CLOCK_EVERY;
            if (corrupt_after > 0 && ops >= corrupt_after) {
                ab_slot *s = &slots[ab_index(ab_rng(&rng), w)];
                ab_corrupt(s->p, s->tag);
                corrupt_after = 0;
            }
            int st = AB_TICK(&t->tls);
            if (st != 0) {
                err = st;
                break;
            }
#ifdef AB_SAMPLE
            if (p->sample_every > 0 && ops >= next_sample) {
                next_sample += p->sample_every;
                st = AB_SAMPLE(&t->tls, &t->c);
                if (st != 0) {
                    err = st;
                    break;
                }
            }
#endif
            end = ab_now_ns();
            if (end >= deadline)
                break;
        }
        if (end == 0)
            end = ab_now_ns();
        t->c.cpu_ns += ab_cpu_ns();
    }
    t->c.ops = ops;
    t->c.end_ns = end;
    if (publisher)
        ab_stop_readers(run); /* before the window's blocks go */
    for (int64_t i = 0; i < filled; i++)
        if (slots[i].p != NULL)
            AB_IMPL(release)(t, &slots[i]);
    if (inited) {
        int st = AB_THREAD_FINI(run, &t->tls);
        if (err == 0)
            err = st;
    }
    free(slots);
    ab_fail(run, err);
    return NULL;
}

/* Waits for the ring: spins a little, then yields; passes the checkpoint now and then so a
 * waiting thread does not hold up the other's page reuse. From the first yield on, the wait
 * is timed (*wait_from: the thread's CPU time then) so that its CPU time can be left out. */
static inline int AB_IMPL(ring_wait)(AB_IMPL(thread) *t, unsigned *spins, int64_t *wait_from)
{
    if (++*spins % 64 != 0) {
        ab_cpu_relax();
        return 0;
    }
    if (*wait_from == 0)
        *wait_from = ab_cpu_ns();
    sched_yield();
    return AB_TICK(&t->tls);
}

/* The end of a timed wait. */
static inline void AB_IMPL(wait_done)(AB_IMPL(thread) *t, int64_t *wait_from)
{
    if (*wait_from != 0) {
        t->c.wait_cpu_ns += ab_cpu_ns() - *wait_from;
        *wait_from = 0;
    }
}

AB_MEASURED static void *AB_IMPL(producer)(void *arg)
{
    AB_IMPL(thread) *t = arg;
    ab_run *run = t->c.run;
    ab_ring *ring = &run->ring;
    const ab_params *p = run->p;
    uint64_t rng = p->seed;
    int err = AB_THREAD_INIT(run, &t->tls);
    bool inited = err == 0;
    int64_t ops = 0, corrupt_after = p->corrupt_after;
    uint64_t head = 0, tail_seen = 0;
    bool stop = false;
    const uint64_t cap = ring->mask + 1;
    if (ab_arrive_and_wait(run, err)) {
        const int64_t deadline = run->deadline_ns;
        t->c.cpu_ns = -ab_cpu_ns();
        for (;;) {
            for (int i = 0; i < AB_CLOCK_EVERY; i++) {
                size_t n = ab_size(ab_rng(&rng));
                void *b = AB_MALLOC(&t->tls, n);
                if (b == NULL) {
                    err = ENOMEM;
                    stop = true;
                    break;
                }
                uint64_t tag = ab_tag(head + 1, n);
                ab_write(b, tag);
                if (corrupt_after > 0 && ops + i >= corrupt_after) {
                    ab_corrupt(b, tag);
                    corrupt_after = 0;
                }
                unsigned spins = 0;
                int64_t wait_from = 0;
                while (head - tail_seen >= cap) {
                    tail_seen = __atomic_load_n(&ring->tail, __ATOMIC_ACQUIRE);
                    if (head - tail_seen >= cap)
                        err = AB_IMPL(ring_wait)(t, &spins, &wait_from);
                    if (err != 0 || __atomic_load_n(&run->abort, __ATOMIC_RELAXED))
                        break;
                }
                AB_IMPL(wait_done)(t, &wait_from);
                if (head - tail_seen >= cap) { /* error or abort: the block is still ours */
                    AB_FREE(&t->tls, b);
                    stop = true;
                    break;
                }
                ring->buf[head & ring->mask] = b;
                __atomic_store_n(&ring->head, ++head, __ATOMIC_RELEASE);
            }
            if (stop)
                break;
            ops += AB_CLOCK_EVERY;
            int st = AB_TICK(&t->tls);
            if (st != 0) {
                err = st;
                break;
            }
            if (ab_now_ns() >= deadline)
                break;
        }
        t->c.cpu_ns += ab_cpu_ns();
    }
    if (err != 0) /* the consumer must not wait for blocks that will not come */
        __atomic_store_n(&run->abort, 1, __ATOMIC_RELAXED);
    __atomic_store_n(&ring->done, 1, __ATOMIC_RELEASE);
    /* The thread state stays until the consumer has freed every block (the page allocator:
     * other threads' frees of our blocks are then only pushes to live pages). */
    while (__atomic_load_n(&ring->tail, __ATOMIC_ACQUIRE) != head &&
           !__atomic_load_n(&run->abort, __ATOMIC_RELAXED)) {
        sched_yield();
        int st = AB_TICK(&t->tls);
        if (err == 0 && st != 0)
            err = st;
    }
    t->c.ops = (int64_t)head;
    if (inited) {
        int st = AB_THREAD_FINI(run, &t->tls);
        if (err == 0)
            err = st;
    }
    ab_fail(run, err);
    return NULL;
}

AB_MEASURED static void *AB_IMPL(consumer)(void *arg)
{
    AB_IMPL(thread) *t = arg;
    ab_run *run = t->c.run;
    ab_ring *ring = &run->ring;
    int err = AB_THREAD_INIT(run, &t->tls);
    bool inited = err == 0;
    uint64_t tail = 0, head_seen = 0;
    int64_t end = 0;
    if (ab_arrive_and_wait(run, err)) {
        t->c.cpu_ns = -ab_cpu_ns();
        unsigned spins = 0;
        int64_t wait_from = 0;
        for (;;) {
            if (tail == head_seen) {
                head_seen = __atomic_load_n(&ring->head, __ATOMIC_ACQUIRE);
                if (tail == head_seen) {
                    if (__atomic_load_n(&ring->done, __ATOMIC_ACQUIRE)) {
                        head_seen = __atomic_load_n(&ring->head, __ATOMIC_ACQUIRE);
                        if (tail == head_seen)
                            break;
                        continue;
                    }
                    if (__atomic_load_n(&run->abort, __ATOMIC_RELAXED))
                        break;
                    err = AB_IMPL(ring_wait)(t, &spins, &wait_from);
                    if (err != 0)
                        break;
                    continue;
                }
            }
            AB_IMPL(wait_done)(t, &wait_from);
            void *b = ring->buf[tail & ring->mask];
            if (!ab_check_serial(b, tail + 1))
                t->c.corrupt++;
            AB_FREE(&t->tls, b);
            __atomic_store_n(&ring->tail, ++tail, __ATOMIC_RELEASE);
            if (tail % AB_CLOCK_EVERY == 0) {
                err = AB_TICK(&t->tls);
                if (err != 0)
                    break;
            }
        }
        AB_IMPL(wait_done)(t, &wait_from);
        end = ab_now_ns();
        t->c.cpu_ns += ab_cpu_ns();
    }
    if (err != 0)
        __atomic_store_n(&run->abort, 1, __ATOMIC_RELAXED);
    /* Blocks left in the ring after a failure: free them so the producer's state can go. */
    uint64_t head = __atomic_load_n(&ring->head, __ATOMIC_ACQUIRE);
    while (err != 0 && tail != head) {
        AB_FREE(&t->tls, ring->buf[tail & ring->mask]);
        __atomic_store_n(&ring->tail, ++tail, __ATOMIC_RELEASE);
    }
    t->c.ops = (int64_t)tail;
    t->c.end_ns = end;
    if (inited) {
        int st = AB_THREAD_FINI(run, &t->tls);
        if (err == 0)
            err = st;
    }
    ab_fail(run, err);
    return NULL;
}

#undef AB_MEASURED
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif
