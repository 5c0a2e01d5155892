/* The page allocator's contract at its edges (issue #4 follow-up): who may walk a stopped
 * world's heaps, frees by a detached owner, double frees of huge blocks whose segment is
 * gone, frees after the interpreter was deleted, and fork(3) during a critical section. Each test failed before its fix (or, for
 * behaviour that was already right, fails when the check it pins is taken out). */
#include <pthread.h>
#include <sched.h>
#include <sys/wait.h>
#include <unistd.h>

#include "alloc_helpers.h"

static bool count_one(void *block, size_t size, void *arg)
{
    (void)block;
    (void)size;
    (*(size_t *)arg)++;
    return true;
}

/* ---- Only the thread that stopped the world walks it ------------------------------------------ */

typedef struct walk_job {
    ng_interp *in;
    ng_mi_heap *heap;
    int rc_heap, rc_abandoned, stopped;
} walk_job;

/* A thread without a state: it runs while the world is stopped, and sees it stopped. */
static void *walk_while_another_stopped(void *arg)
{
    walk_job *j = arg;
    size_t n = 0;
    j->stopped = ng_world_stopped(j->in);
    j->rc_heap = ng_mi_heap_visit(j->heap, count_one, &n);
    j->rc_abandoned = ng_mi_abandoned_visit(j->in, NG_MI_HEAP_OBJECT, count_one, &n);
    return NULL;
}

typedef struct abandon_job {
    ng_interp *in;
    void *block;
} abandon_job;

/* Leaves one live OBJECT block in the abandoned pool. */
static void *allocate_and_leave(void *arg)
{
    abandon_job *j = arg;
    ng_tstate *ts = attached_state(j->in);
    if (ts == NULL)
        return NULL;
    ng_mi_heap *h = alloc_heap(ts, NG_MI_HEAP_OBJECT);
    if (h != NULL)
        j->block = ng_mi_heap_malloc(h, 64);
    CHECK_STATUS(ng_tstate_release(ts), NG_OK);
    return NULL;
}

/* ng_mi_abandoned_visit checked only ng_world_stopped, so any thread could walk the pool
 * (without its lock) while another thread held the world stopped, racing that thread's own
 * walk or the restart. Now only the stopper walks: the other thread gets NG_ESTATE (and
 * NG_EWRONGTHREAD for another thread's heap), while the stopper still walks both. */
TEST(alloc_contract_only_the_stopper_walks_a_stopped_world)
{
    ALLOC_SCENE(in, ts, obj, NG_MI_HEAP_OBJECT);
    void *mine = ng_mi_heap_malloc(obj, 64);
    REQUIRE(mine != NULL);
    abandon_job aj = {in, NULL};
    alloc_run_thread(allocate_and_leave, &aj);
    REQUIRE(aj.block != NULL);

    CHECK_STATUS(ng_stop_the_world(in, ts), NG_OK);
    walk_job j = {in, obj, -1, -1, 0};
    alloc_run_thread(walk_while_another_stopped, &j);
    size_t n_pool = 0, n_heap = 0;
    CHECK_STATUS(ng_mi_abandoned_visit(in, NG_MI_HEAP_OBJECT, count_one, &n_pool), NG_OK);
    CHECK_STATUS(ng_mi_heap_visit(obj, count_one, &n_heap), NG_OK);
    CHECK_STATUS(ng_start_the_world(in), NG_OK);

    CHECK(j.stopped);
    CHECK_STATUS(j.rc_heap, NG_EWRONGTHREAD);
    CHECK_STATUS(j.rc_abandoned, NG_ESTATE);
    CHECK_EQ(n_pool, 1);
    CHECK_EQ(n_heap, 1);
    CHECK_STATUS(ng_mi_free(aj.block), NG_OK);
    CHECK_STATUS(ng_mi_free(mine), NG_OK);
    end_scene(in, ts);
}

/* ---- fork(3) while a thread is inside the interpreter's critical section ------------------- */

#define HALF_DONE (UINT64_C(1) << 60)

typedef struct lock_holder {
    ng_mi_interp *mi;
    uint32_t holding;
} lock_holder;

/* A thread without a state (nothing stops it) halfway through an update under the
 * interpreter's allocator lock: a counter the lock protects is off by HALF_DONE until it
 * finishes. */
static void *hold_lock_mid_update(void *arg)
{
    lock_holder *h = arg;
    ng_mi_interp_lock(h->mi);
    h->mi->dead.pages_deferred += HALF_DONE;
    ng_atomic_store(&h->holding, 1, NG_SEQ_CST);
    sleep_us(50 * 1000); /* the fork comes now: before the fix it did not wait */
    h->mi->dead.pages_deferred -= HALF_DONE;
    ng_mi_interp_unlock(h->mi);
    return NULL;
}

/* The child's bits: 1 the half-done update was seen, 2 an allocation or free failed. */
static int fork_child_checks(ng_mi_interp *mi, ng_mi_heap *h)
{
    int bad = 0;
    ng_mi_interp_lock(mi);
    if (mi->dead.pages_deferred >= HALF_DONE)
        bad |= 1;
    ng_mi_interp_unlock(mi);
    void *p = ng_mi_heap_malloc(h, NG_MI_LARGE_MAX + 1); /* the registry and the lock */
    if (p == NULL || ng_mi_free(p) != NG_OK)
        bad |= 2;
    return bad;
}

/* The child used to re-initialise the interpreter's allocator lock and carry on with whatever
 * the holder had half done (a counter here, a list in real life). The allocator's before_fork
 * hook now takes the lock (after the thread-state layer has stopped the worlds) so the
 * fork waits for the critical section to end. If the fork does not wait, the child sees the
 * half-done update whatever the timing; the sleep only gives the old code the chance to
 * show it. */
TEST(alloc_contract_fork_waits_for_the_allocator_lock)
{
    ALLOC_SCENE(in, ts, mem, NG_MI_HEAP_MEM);
    ng_mi_interp *mi = ng_mi_interp_of(in);
    REQUIRE(mi != NULL);
    lock_holder h = {mi, 0};
    pthread_t t = spawn_thread(hold_lock_mid_update, &h);
    SPIN_UNTIL(ng_atomic_load(&h.holding, NG_SEQ_CST) != 0);
    pid_t pid = fork();
    if (pid == 0) {
        alarm(20);
        _exit(fork_child_checks(mi, mem));
    }
    join_thread(t);
    REQUIRE(pid > 0);
    int raw = wait_child(pid, 30000);
    CHECK(raw != -1 && WIFEXITED(raw));
    int child_bits = raw != -1 && WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
    CHECK_EQ(child_bits, 0); /* 1: the half-done update, 2: the child could not allocate */
    end_scene(in, ts);
}

/* A freer that died between taking a full page's heap notification (DELAY_USE -> FREEING)
 * and ending it (FREEING -> NORMAL) leaves FREEING behind in the child of fork(), where nobody
 * would ever end it: the survivor's next change of that page's state would wait forever. The
 * fork hook resets such pages of the survivor. The dead freer is simulated by setting the
 * state on one of the survivor's pages just before the fork (and putting it back in the
 * parent right after). Failed (state still FREEING, bit 1) with the hook's loop taken out. */
static int freeing_child_checks(ng_mi_heap *h, ng_mi_page *page)
{
    int bad = 0;
    /* Relaxed: the child has one thread. */
    if ((ng_atomic_load(&page->thread_free, NG_RELAXED) & NG_MI_DELAY_MASK) ==
        NG_MI_DELAY_FREEING)
        bad |= 1;
    /* Walks every page's state (the abandon of a state would wait on FREEING too). */
    if (ng_mi_heap_collect(h, true) != NG_OK)
        bad |= 2;
    void *p = ng_mi_heap_malloc(h, 64);
    if (p == NULL || ng_mi_free(p) != NG_OK)
        bad |= 2;
    return bad;
}

TEST(alloc_contract_fork_child_ends_a_dead_freers_transient_state)
{
    ALLOC_SCENE(in, ts, mem, NG_MI_HEAP_MEM);
    void *b = ng_mi_heap_malloc(mem, 64);
    REQUIRE(b != NULL);
    ng_mi_page *page = alloc_page_of(b);
    /* Seq-cst: plain bookkeeping of a simulated freer, no other thread touches the page. */
    uintptr_t before = ng_atomic_load(&page->thread_free, NG_SEQ_CST);
    ng_atomic_store(&page->thread_free, (before & ~NG_MI_DELAY_MASK) | NG_MI_DELAY_FREEING,
                    NG_SEQ_CST);
    pid_t pid = fork();
    if (pid == 0) {
        alarm(20);
        _exit(freeing_child_checks(mem, page));
    }
    ng_atomic_store(&page->thread_free, before, NG_SEQ_CST);
    REQUIRE(pid > 0);
    int raw = wait_child(pid, 30000);
    CHECK(raw != -1 && WIFEXITED(raw));
    int child_bits = raw != -1 && WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
    CHECK_EQ(child_bits, 0); /* 1: FREEING left behind, 2: the survivor's heap failed */
    CHECK_STATUS(ng_mi_free(b), NG_OK);
    end_scene(in, ts);
}

/* ---- Release beside another interpreter's attached state ------------------------------------ */

/* A thread whose state in interpreter A is detached releases it while its state in B is
 * attached, and while another thread holds A's world stopped (and may be walking the heaps of
 * A's states). The release used to hand over and clear right away, beside B's state: the
 * allocator's abandon rewrote the state's heaps and freed its heap set under the stopper's
 * walk. Now the release detaches B's state, waits for A's restart like any attach, and
 * attaches B's state again. The signal that the releaser is past the point where it used to
 * go on is its B state turning detached: from then on it must not finish while A is
 * stopped. */
typedef struct release_beside {
    ng_interp *a, *b;
    ng_tstate *in_b; /* published once attached */
    uint32_t go, done, attached_after;
    int rc;
} release_beside;

static void *release_beside_main(void *arg)
{
    release_beside *j = arg;
    ng_tstate *in_a = attached_state(j->a);
    ng_mi_heap *h = in_a != NULL ? alloc_heap(in_a, NG_MI_HEAP_OBJECT) : NULL;
    void *p = h != NULL ? ng_mi_heap_malloc(h, 64) : NULL;
    ng_tstate *in_b = NULL;
    if (p != NULL && CHECK_STATUS(ng_tstate_detach(in_a), NG_OK))
        in_b = attached_state(j->b);
    ng_atomic_store(&j->in_b, in_b, NG_SEQ_CST);
    if (in_b == NULL) {
        ng_atomic_store(&j->done, 2, NG_SEQ_CST);
        return NULL;
    }
    SPIN_UNTIL(ng_atomic_load(&j->go, NG_SEQ_CST));
    j->rc = ng_tstate_release(in_a);
    ng_atomic_store(&j->done, 1, NG_SEQ_CST);
    j->attached_after = ng_tstate_current() == in_b;
    CHECK_STATUS(ng_tstate_release(in_b), NG_OK);
    return NULL;
}

TEST(alloc_contract_release_beside_another_interpreter_waits_for_a_stop)
{
    release_beside j = {.a = new_interp(), .b = new_interp()};
    REQUIRE(j.a != NULL && j.b != NULL);
    pthread_t t = spawn_thread(release_beside_main, &j);
    SPIN_UNTIL(ng_atomic_load(&j.in_b, NG_SEQ_CST) != NULL ||
               ng_atomic_load(&j.done, NG_SEQ_CST) == 2);
    ng_tstate *b = ng_atomic_load(&j.in_b, NG_SEQ_CST);
    REQUIRE(b != NULL);
    ng_tstate *me = attached_state(j.a);
    REQUIRE(me != NULL);
    CHECK_STATUS(ng_stop_the_world(j.a, me), NG_OK);
    ng_atomic_store(&j.go, 1, NG_SEQ_CST);
    CHECK(WAIT_UNTIL(state_of(b) == NG_TSTATE_DETACHED || ng_atomic_load(&j.done, NG_SEQ_CST),
                     PATIENCE_MS));
    CHECK_EQ(ng_atomic_load(&j.done, NG_SEQ_CST), 0); /* not while A is stopped */
    CHECK_STATUS(ng_start_the_world(j.a), NG_OK);
    join_thread(t);
    CHECK_STATUS(j.rc, NG_OK);
    CHECK_EQ(j.attached_after, 1);
    end_scene(j.a, me);
    CHECK_STATUS(ng_interp_delete(j.b), NG_OK);
}

#ifdef NG_MI_DEBUG

/* ---- Object frees by a detached owner --------------------------------------------------------- */

/* The owner's free is the unsynchronised local path; a detached state counts as stopped, so a
 * stop-the-world walker may be reading the same page. The checked free refuses it (NG_ESTATE,
 * block left live) for object heaps, lets MEM frees and huge object frees through, and the
 * refused block is freed normally once attached. Before, all three frees returned NG_OK. */
TEST(alloc_contract_detached_owner_object_free_is_refused)
{
    ALLOC_SCENE(in, ts, obj, NG_MI_HEAP_OBJECT);
    ng_mi_heap *gc = alloc_heap(ts, NG_MI_HEAP_GC_PRE);
    ng_mi_heap *mem = alloc_heap(ts, NG_MI_HEAP_MEM);
    REQUIRE(gc != NULL && mem != NULL);
    void *o = ng_mi_heap_malloc(obj, 64);
    void *g = ng_mi_heap_malloc(gc, 200 * 1024); /* a large page */
    void *m = ng_mi_heap_malloc(mem, 64);
    void *huge = ng_mi_heap_malloc(obj, NG_MI_LARGE_MAX + 1);
    REQUIRE(o != NULL && g != NULL && m != NULL && huge != NULL);

    CHECK_STATUS(ng_tstate_detach(ts), NG_OK);
    CHECK_STATUS(ng_mi_free(o), NG_ESTATE);
    CHECK_STATUS(ng_mi_free(g), NG_ESTATE);
    CHECK_STATUS(ng_mi_free(m), NG_OK);
    CHECK_STATUS(ng_mi_free(huge), NG_OK);
    CHECK_STATUS(ng_tstate_attach(ts), NG_OK);

    /* The refused blocks are still live: one valid free each, then a double free. */
    CHECK_STATUS(ng_mi_free(o), NG_OK);
    CHECK_STATUS(ng_mi_free(g), NG_OK);
    CHECK_STATUS(ng_mi_free(o), NG_ESTATE);
    CHECK_STATUS(ng_mi_free(g), NG_ESTATE);
    end_scene(in, ts);
}

/* The race itself, for ThreadSanitizer: a thread's state is detached, another thread stops
 * the world and walks that thread's object heap, then the owner frees a block of it. The two
 * only signal each other with relaxed atomics, so nothing orders the free after the walk:
 * before the refusal, TSan reported the owner's write of page->local_free against the
 * walker's read. Deterministic: the accesses are unordered whatever the timing. */
typedef struct detached_owner {
    ng_interp *in;
    ng_mi_heap *heap;
    uint32_t detached, walked, freed;
    int rc_free, rc_later;
} detached_owner;

static void *detached_owner_main(void *arg)
{
    detached_owner *d = arg;
    ng_tstate *ts = attached_state(d->in);
    if (ts == NULL) {
        ng_atomic_store(&d->detached, 2, NG_SEQ_CST);
        return NULL;
    }
    ng_mi_heap *h = alloc_heap(ts, NG_MI_HEAP_OBJECT);
    void *keep = h != NULL ? ng_mi_heap_malloc(h, 48) : NULL;
    void *p = h != NULL ? ng_mi_heap_malloc(h, 48) : NULL;
    d->heap = h;
    CHECK_STATUS(ng_tstate_detach(ts), NG_OK);
    /* Seq-cst: the walker may start only now (the detach is ordered before its stop anyway). */
    ng_atomic_store(&d->detached, p != NULL && keep != NULL ? 1 : 2, NG_SEQ_CST);
    if (p == NULL || keep == NULL) {
        CHECK_STATUS(ng_tstate_release(ts), NG_OK);
        return NULL;
    }
    /* Relaxed on purpose: no happens-before from the walk to the free below. */
    while (ng_atomic_load(&d->walked, NG_RELAXED) == 0)
        sched_yield();
    d->rc_free = ng_mi_free(p);
    ng_atomic_store(&d->freed, 1, NG_RELAXED);
    /* Waits for the restart (the stopper suspended the state). */
    CHECK_STATUS(ng_tstate_attach(ts), NG_OK);
    d->rc_later = ng_mi_free(p);
    CHECK_STATUS(ng_mi_free(keep), NG_OK);
    CHECK_STATUS(ng_tstate_release(ts), NG_OK);
    return NULL;
}

TEST(alloc_contract_detached_owner_free_does_not_race_a_walk)
{
    INTERP_SCENE(in);
    detached_owner d = {in, NULL, 0, 0, 0, -1, -1};
    pthread_t t = spawn_thread(detached_owner_main, &d);
    SPIN_UNTIL(ng_atomic_load(&d.detached, NG_SEQ_CST) != 0);
    if (ng_atomic_load(&d.detached, NG_SEQ_CST) == 1) {
        CHECK_STATUS(ng_stop_the_world(in, NULL), NG_OK);
        size_t n = 0;
        CHECK_STATUS(ng_mi_heap_visit(d.heap, count_one, &n), NG_OK);
        CHECK_EQ(n, 2);
        ng_atomic_store(&d.walked, 1, NG_RELAXED);
        while (ng_atomic_load(&d.freed, NG_RELAXED) == 0)
            sched_yield();
        CHECK_STATUS(ng_start_the_world(in), NG_OK);
    }
    join_thread(t);
    CHECK_STATUS(d.rc_free, NG_ESTATE);
    CHECK_STATUS(d.rc_later, NG_OK);
    CHECK_STATUS(ng_interp_delete(in), NG_OK);
}

/* A thread may have several states of one interpreter, one attached at a time. The library
 * itself runs one detached state's delayed frees on its thread while another state of the
 * same interpreter is attached there: a barrier hands the detached state's queue to the
 * interpreter queue, which the attached state runs. No walker can be reading the heap then
 * (a stop-the-world of this interpreter waits for the attached state), so the free must
 * pass. The refusal looked only at the heap's own state and returned NG_ESTATE: the delayed
 * free left the block live for ever (and a direct free on that thread was refused too). */
static int other_state_free_status = 1;

static void free_recording_status(void *p) { other_state_free_status = ng_mi_free(p); }

TEST(alloc_contract_owner_free_with_another_attached_state_of_the_interpreter)
{
    ALLOC_SCENE(in, owner, obj, NG_MI_HEAP_OBJECT);
    ng_interp_set_object_free(in, free_recording_status);
    void *queued = ng_mi_heap_malloc(obj, 64);
    void *direct = ng_mi_heap_malloc(obj, 64);
    REQUIRE(queued != NULL && direct != NULL);
    CHECK_STATUS(ng_object_free_delayed(owner, queued, 64), NG_OK);
    CHECK_STATUS(ng_tstate_detach(owner), NG_OK);
    ng_tstate *other = attached_state(in);
    REQUIRE(other != NULL);
    CHECK_STATUS(ng_qsbr_barrier(other), NG_OK); /* runs the owner's queue here */
    CHECK_STATUS(other_state_free_status, NG_OK);
    CHECK_STATUS(ng_mi_free(queued), NG_ESTATE); /* it was freed: a double free now */
    CHECK_STATUS(ng_mi_free(direct), NG_OK);
    /* Attached in another interpreter only: a stop-the-world of ours may be walking. */
    ng_interp *in2 = new_interp();
    REQUIRE(in2 != NULL);
    void *late = NULL;
    CHECK_STATUS(ng_tstate_detach(other), NG_OK);
    CHECK_STATUS(ng_tstate_attach(owner), NG_OK);
    late = ng_mi_heap_malloc(obj, 64);
    REQUIRE(late != NULL);
    CHECK_STATUS(ng_tstate_detach(owner), NG_OK);
    ng_tstate *elsewhere = attached_state(in2);
    REQUIRE(elsewhere != NULL);
    CHECK_STATUS(ng_mi_free(late), NG_ESTATE);
    end_scene(in2, elsewhere);
    CHECK_STATUS(ng_tstate_attach(other), NG_OK);
    CHECK_STATUS(ng_mi_free(late), NG_OK);
    CHECK_STATUS(ng_tstate_release(other), NG_OK);
    CHECK_STATUS(ng_tstate_attach(owner), NG_OK);
    end_scene(in, owner);
}

/* ---- Huge double frees after the unmap -------------------------------------------------------- */

/* A MEM huge block's segment is unmapped by its free, so its second free found no segment
 * and returned NG_EINVAL (foreign pointer). The registry now remembers the last
 * NG_MI_GONE_HUGE_MAX of them: NG_ESTATE. The record is bounded: after that many more, the
 * first one is forgotten (NG_EINVAL), and a segment mapped over an address drops it. */
TEST(alloc_contract_huge_double_free_after_unmap_is_a_double_free)
{
    ALLOC_SCENE(in, ts, mem, NG_MI_HEAP_MEM);
    void *first = ng_mi_heap_malloc(mem, NG_MI_LARGE_MAX + 1);
    REQUIRE(first != NULL);
    CHECK_STATUS(ng_mi_free(first), NG_OK);
    CHECK_STATUS(ng_mi_free(first), NG_ESTATE);
    CHECK_STATUS(ng_mi_free(first), NG_ESTATE);
    CHECK_STATUS(ng_mi_free((char *)first + 64), NG_EINVAL); /* not a block start */
    /* Push it out of the ring. Sizes differ from the first one's, so that a segment mapped
     * at its address (which would drop it too) is a different block. */
    size_t fresh_at_first = 0;
    for (size_t i = 0; i < NG_MI_GONE_HUGE_MAX; i++) {
        void *p = ng_mi_heap_malloc(mem, NG_MI_LARGE_MAX + 4096 * (i + 2));
        REQUIRE(p != NULL);
        fresh_at_first += p == first;
        CHECK_STATUS(ng_mi_free(p), NG_OK);
        CHECK_STATUS(ng_mi_free(p), NG_ESTATE);
    }
    CHECK_STATUS(ng_mi_free(first), fresh_at_first ? NG_ESTATE : NG_EINVAL);
    /* A block mapped over a remembered address is judged as the new block. */
    void *a = ng_mi_heap_malloc(mem, NG_MI_LARGE_MAX + 1);
    REQUIRE(a != NULL);
    CHECK_STATUS(ng_mi_free(a), NG_OK);
    void *b = ng_mi_heap_malloc(mem, NG_MI_LARGE_MAX + 1);
    REQUIRE(b != NULL);
    if (b == a) {
        /* Same address, live again: one valid free, then a double free again. */
        CHECK_STATUS(ng_mi_free(b), NG_OK);
        CHECK_STATUS(ng_mi_free(b), NG_ESTATE);
    }
    else {
        CHECK_STATUS(ng_mi_free(b), NG_OK);
    }
    end_scene(in, ts);
}

/* ---- Frees after the interpreter is gone ----------------------------------------------------- */

/* Interpreter deletion unmaps every segment, live blocks included. A later free is undefined
 * in release builds (like free after munmap); the checked free finds no segment in the
 * registry before it reads anything: NG_EINVAL for the live ones, NG_ESTATE for a huge object
 * block freed before the deletion (unmapped while waiting for its goal). ASan would report a
 * read of the unmapped header if the check read it first. */
TEST(alloc_contract_free_after_interpreter_deletion_is_einval)
{
    ALLOC_SCENE(in, ts, obj, NG_MI_HEAP_OBJECT);
    ng_mi_heap *mem = alloc_heap(ts, NG_MI_HEAP_MEM);
    REQUIRE(mem != NULL);
    void *blocks[] = {
        ng_mi_heap_malloc(obj, 64),
        ng_mi_heap_malloc(obj, 100 * 1024),
        ng_mi_heap_malloc(obj, NG_MI_LARGE_MAX + 1),
        ng_mi_heap_malloc(mem, 64),
        ng_mi_heap_malloc(mem, NG_MI_LARGE_MAX + 1),
    };
    enum { NB = sizeof blocks / sizeof blocks[0] };
    for (size_t i = 0; i < NB; i++)
        REQUIRE(blocks[i] != NULL);
    /* Freed before the deletion: unmapped once its goal is reached, by the deletion at the
     * latest. */
    void *waiting = ng_mi_heap_malloc(obj, NG_MI_LARGE_MAX + 8192);
    REQUIRE(waiting != NULL);
    CHECK_STATUS(ng_mi_free(waiting), NG_OK);
    end_scene(in, ts);
    for (size_t i = 0; i < NB; i++)
        CHECK_STATUS(ng_mi_free(blocks[i]), NG_EINVAL);
    CHECK_STATUS(ng_mi_free(waiting), NG_ESTATE);
}

#endif /* NG_MI_DEBUG */
