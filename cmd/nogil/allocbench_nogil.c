/* The page allocator's rows of `nogil allocbench` (allocbench.h): the inline fast paths
 * ng_mi_heap_malloc / ng_mi_free on the OBJECT heap (QSBR-gated page reuse, the heap CPython
 * allocates objects from), each thread with its own thread state of one interpreter, created
 * and attached on that thread. Threads pass a checkpoint (ng_tstate_checkpoint: a quiescent
 * state) every AB_CLOCK_EVERY ops, as an interpreter's eval breaker would: without one, the
 * thread's own slot would hold every QSBR goal back and no emptied page could ever be reused
 * by another size class.
 *
 * The allocator's C sources are compiled in package mimalloc_shim (allocbench_nogil.go
 * imports it); this file only uses its header. */
#include "nogil.h"

#include "allocbench_common.h"

typedef struct ab_nogil_tls {
    ng_tstate *ts;
    ng_mi_heap *heap;
} ab_nogil_tls;

/* A thread state of the calling thread, attached, and its OBJECT heap. */
static int ab_nogil_init(ng_interp *interp, ab_nogil_tls *t)
{
    int st = ng_tstate_new(interp, &t->ts);
    if (st != NG_OK)
        return st;
    st = ng_tstate_attach(t->ts);
    if (st == NG_OK)
        st = ng_mi_heap_of(t->ts, NG_MI_HEAP_OBJECT, &t->heap);
    if (st != NG_OK) {
        ng_tstate_release(t->ts);
        t->ts = NULL;
    }
    return st;
}

static int ab_nogil_fini(ab_nogil_tls *t)
{
    int st = ng_tstate_release(t->ts);
    t->ts = NULL;
    t->heap = NULL;
    return st;
}

/* The writer's sample of its heap's statistics. */
static int ab_nogil_sample(ab_nogil_tls *t, ab_thread *c)
{
    ng_mi_stats s;
    int st = ng_mi_heap_get_stats(t->heap, &s);
    if (st != NG_OK)
        return st;
    c->samples++;
    if (s.bytes_waiting > c->bw_peak)
        c->bw_peak = s.bytes_waiting;
    if (s.pages_waiting > c->pw_peak)
        c->pw_peak = s.pages_waiting;
    c->bw_sum += (double)s.bytes_waiting;
    c->pw_sum += (double)s.pages_waiting;
    c->pages_deferred = s.pages_deferred;
    c->pages_reused_same_class = s.pages_reused_same_class;
    c->pages_released_after_goal = s.pages_released_after_goal;
    return 0;
}

#define AB_IMPL(x) ab_nogil_##x
#define AB_TLS ab_nogil_tls
#define AB_THREAD_INIT(run, tls) ab_nogil_init((ng_interp *)(run)->shared, (tls))
#define AB_THREAD_FINI(run, tls) ab_nogil_fini(tls)
#define AB_MALLOC(tls, n) ng_mi_heap_malloc((tls)->heap, (n))
#define AB_FREE(tls, p) ((void)ng_mi_free(p))
#define AB_TICK(tls) ng_tstate_checkpoint((tls)->ts)
#define AB_SAMPLE(tls, c) ab_nogil_sample((tls), (c))
#include "allocbench_loop.h"

/* The gating reader: its own attached thread state; loads the block pointer of a random slot
 * of the writer's window and the block's first word (inside the prefix the object heaps never
 * write, like ob_tid of a CPython object a lock-free reader loads), and passes a checkpoint
 * every report_every reads. The block may have been freed since: QSBR keeps its page from
 * going to another size class, another thread or the kernel until this reader's next report. */
static uint64_t ab_nogil_sink;

static void *ab_nogil_reader(void *arg)
{
    ab_thread *c = arg;
    ab_run *run = c->run;
    const ab_params *p = run->p;
    ab_nogil_tls t = {0};
    int err = ab_nogil_init((ng_interp *)run->shared, &t);
    if (err != 0) {
        ab_fail(run, err);
        __atomic_store_n(&run->abort, 1, __ATOMIC_RELAXED);
    }
    __atomic_fetch_add(&run->readers_ready, 1, __ATOMIC_RELEASE);
    uint64_t rng = p->seed ^ (UINT64_C(0xa5a5a5a5a5a5a5a5) + (uint64_t)c->index);
    uint64_t sum = 0;
    int64_t reads = 0;
    while (err == 0 && !__atomic_load_n(&run->reader_stop, __ATOMIC_RELAXED)) {
        ab_slot *slots = __atomic_load_n(&run->published, __ATOMIC_ACQUIRE);
        if (slots != NULL) {
            const int64_t n = run->published_n;
            for (int i = 0; i < p->report_every; i++) {
                void *b = __atomic_load_n(&slots[ab_index(ab_rng(&rng), n)].p, __ATOMIC_RELAXED);
                if (b != NULL)
                    sum += __atomic_load_n((uint64_t *)b, __ATOMIC_RELAXED);
            }
            reads += p->report_every;
        } else {
            sched_yield();
        }
        int st = ng_tstate_checkpoint(t.ts);
        if (st != NG_OK) {
            ab_fail(run, st);
            break;
        }
    }
    if (t.ts != NULL) {
        int st = ab_nogil_fini(&t);
        if (st != NG_OK)
            ab_fail(run, st);
    }
    c->reads = reads;
    __atomic_fetch_add(&ab_nogil_sink, sum, __ATOMIC_RELAXED); /* keeps the loads */
    __atomic_fetch_add(&run->readers_done, 1, __ATOMIC_RELEASE);
    return NULL;
}

int ab_run_nogil(const ab_params *p, ab_result *out)
{
    int err = ab_check_params(p, true);
    if (err != 0 || out == NULL)
        return err != 0 ? err : EINVAL;
    ng_interp *interp = NULL;
    int st = ng_interp_new(&interp);
    if (st != NG_OK)
        return st;
    ab_run run = {.p = p, .shared = interp};
    if (p->bench == AB_BENCH_WINDOW)
        err = ab_drive(&run, ab_nogil_window_thread, NULL, p->readers > 0 ? ab_nogil_reader : NULL,
                       sizeof(ab_nogil_thread), out);
    else
        err = ab_drive(&run, ab_nogil_producer, ab_nogil_consumer, NULL, sizeof(ab_nogil_thread),
                       out);
    st = ng_interp_delete(interp);
    if (err == 0 && st != NG_OK)
        err = st;
    return err;
}
