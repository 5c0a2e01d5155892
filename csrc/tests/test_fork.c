/* fork() in a process whose threads are parked or hold locks.
 *
 * Only the forking thread exists in the child, so every waiter the parking lot knows about is
 * dead there. nogil registers ng_parking_lot_after_fork with pthread_atfork, so these tests do
 * NOT call it: they check that it ran. Children use no stdio and no test macros (not safe
 * after a multi-threaded fork); they report through their exit status, one bit per failed
 * group of checks, and an alarm() turns a hang into a signal death the parent reports.
 */
#define _GNU_SOURCE
#include "fork_helpers.h"
#include "harness.h"

/* ---- A child of a process with parked threads and held locks ------------------------------- */

struct fork_scene {
    uint32_t parked_word;        /* a helper thread sleeps on it */
    ng_mutex mutex;              /* held by the lock holder */
    ng_recursive_mutex own_rmutex;   /* held (nested) by the forking thread */
    ng_recursive_mutex other_rmutex; /* held by the lock holder */
    ng_once once;                /* "initialising" in the lock holder */
    ng_event release_holder;     /* the lock holder is parked on it */
    int holder_ready;
    int holder_errors;
    int parker_result;
    int parker_done;
    uint64_t forking_thread_id;
};

static void *fork_scene_parker(void *p)
{
    struct fork_scene *s = p;
    uint32_t zero = 0;
    ng_atomic_store(&s->parker_result, ng_park(&s->parked_word, &zero, 4, -1, NULL, 0),
                    NG_SEQ_CST);
    ng_atomic_store(&s->parker_done, 1, NG_SEQ_CST);
    return NULL;
}

static void *fork_scene_holder(void *p)
{
    struct fork_scene *s = p;
    int errors = 0;
    errors += ng_mutex_lock(&s->mutex) != NG_OK;
    errors += ng_recursive_mutex_lock(&s->other_rmutex) != NG_OK;
    errors += ng_once_begin(&s->once) != 1;
    ng_atomic_store(&s->holder_ready, 1, NG_SEQ_CST);
    errors += ng_event_wait(&s->release_holder) != NG_OK;
    errors += ng_once_end(&s->once, 1) != NG_OK;
    errors += ng_recursive_mutex_unlock(&s->other_rmutex) != NG_OK;
    errors += ng_mutex_unlock(&s->mutex) != NG_OK;
    ng_atomic_store(&s->holder_errors, errors, NG_SEQ_CST);
    return NULL;
}

static int once_ok_fn(void *arg)
{
    (void)arg;
    return 0;
}

enum {
    CHILD_LOT_NOT_RESET = 1 << 0,
    CHILD_UNPARK_FOUND_SOMEONE = 1 << 1,
    CHILD_TIMED_PARK = 1 << 2,
    CHILD_MUTEX = 1 << 3,
    CHILD_RECURSIVE_MUTEX = 1 << 4,
    CHILD_EVENT = 1 << 5,
    CHILD_ONCE = 1 << 6,
    CHILD_THREAD_ID = 1 << 7,
};

static const char *const scene_check_names[] = {
    "the parking lot still lists the parent's waiters (after-fork reset did not run)",
    "an unpark in the child found a (dead) waiter",
    "a timed park in the child did not return NG_TIMEOUT",
    "mutex held by a dead thread: at-fork reinit then lock/unlock failed",
    "recursive mutexes: the survivor's stayed its own, the dead thread's was reset",
    "event with dead waiters: reinit / timed wait / notify failed",
    "once flag left running by a dead thread: after-fork reset / call failed",
    "the forking thread's id changed in the child",
    NULL,
};

static int fork_scene_child(void *arg)
{
    struct fork_scene *s = arg;
    int failed = 0;
    uint32_t zero = 0;

    if (ng_parking_lot_waiters(&s->parked_word) != 0 ||
        ng_parking_lot_waiters(&s->release_holder.v) != 0)
        failed |= CHILD_LOT_NOT_RESET;

    if (ng_unpark_all(&s->parked_word) != 0 || ng_unpark(&s->parked_word, NULL, NULL) != 0 ||
        ng_unpark_all(&s->release_holder.v) != 0)
        failed |= CHILD_UNPARK_FOUND_SOMEONE;

    if (ng_park(&s->parked_word, &zero, 4, 10 * NG_NS_PER_MS, NULL, 0) != NG_TIMEOUT ||
        ng_parking_lot_waiters(&s->parked_word) != 0)
        failed |= CHILD_TIMED_PARK;

    /* Inherited locked on behalf of a thread that does not exist here. */
    if (!ng_mutex_is_locked(&s->mutex))
        failed |= CHILD_MUTEX;
    ng_mutex_at_fork_reinit(&s->mutex);
    if (ng_atomic_load(&s->mutex.bits, NG_SEQ_CST) != 0 || ng_mutex_lock(&s->mutex) != NG_OK ||
        ng_atomic_load(&s->mutex.bits, NG_SEQ_CST) != NG_LOCKED ||
        ng_mutex_unlock(&s->mutex) != NG_OK || ng_atomic_load(&s->mutex.bits, NG_SEQ_CST) != 0)
        failed |= CHILD_MUTEX;

    /* Ours stays ours (nested level kept); the dead holder's is released. */
    ng_recursive_mutex_at_fork_reinit(&s->own_rmutex);
    if (!ng_recursive_mutex_is_owned(&s->own_rmutex) || s->own_rmutex.level != 1 ||
        ng_recursive_mutex_unlock(&s->own_rmutex) != NG_OK ||
        ng_recursive_mutex_unlock(&s->own_rmutex) != NG_OK ||
        ng_mutex_is_locked(&s->own_rmutex.mutex))
        failed |= CHILD_RECURSIVE_MUTEX;
    ng_recursive_mutex_at_fork_reinit(&s->other_rmutex);
    if (s->other_rmutex.thread != 0 || s->other_rmutex.level != 0 ||
        ng_recursive_mutex_lock_timed(&s->other_rmutex, 10 * NG_NS_PER_MS, 0) != NG_OK ||
        ng_recursive_mutex_unlock(&s->other_rmutex) != NG_OK)
        failed |= CHILD_RECURSIVE_MUTEX;

    ng_event_at_fork_reinit(&s->release_holder);
    if (ng_atomic_load(&s->release_holder.v, NG_SEQ_CST) != 0 ||
        ng_event_wait_timed(&s->release_holder, NG_NS_PER_MS, 0) != NG_TIMEOUT ||
        ng_event_notify(&s->release_holder) != NG_OK ||
        ng_event_wait_timed(&s->release_holder, 0, 0) != NG_OK)
        failed |= CHILD_EVENT;

    if (ng_once_after_fork(&s->once) != 1 || ng_once_call(&s->once, once_ok_fn, NULL) != 0 ||
        !ng_once_is_done(&s->once))
        failed |= CHILD_ONCE;

    if (ng_thread_id() != s->forking_thread_id)
        failed |= CHILD_THREAD_ID;
    return failed;
}

TEST(fork_child_forgets_dead_waiters_and_reinits_locks)
{
    static struct fork_scene s;
    s = (struct fork_scene){0};
    s.forking_thread_id = ng_thread_id();
    CHECK_STATUS(ng_recursive_mutex_lock(&s.own_rmutex), NG_OK);
    CHECK_STATUS(ng_recursive_mutex_lock(&s.own_rmutex), NG_OK);

    pthread_t parker = spawn_thread(fork_scene_parker, &s);
    pthread_t holder = spawn_thread(fork_scene_holder, &s);
    bool settled = WAIT_UNTIL(ng_atomic_load(&s.holder_ready, NG_SEQ_CST) &&
                                  ng_parking_lot_waiters(&s.parked_word) == 1 &&
                                  ng_parking_lot_waiters(&s.release_holder.v) == 1,
                              PATIENCE_MS);
    CHECK(settled);

    if (settled) {
        pid_t pid = fork_checks(fork_scene_child, &s);
        if (CHECK_GT(pid, 0))
            check_child(pid, scene_check_names, "fork with parked threads");

        /* The parent's lot was not touched by the child's reset. */
        CHECK_EQ(ng_parking_lot_waiters(&s.parked_word), 1);
        CHECK_EQ(ng_parking_lot_waiters(&s.release_holder.v), 1);
        CHECK(ng_mutex_is_locked(&s.mutex));
    }

    int woken = ng_unpark_all(&s.parked_word);
    if (settled)
        CHECK_EQ(woken, 1);
    /* After a failed set-up the parker may only now be parking: wake until it is out. */
    while (!ng_atomic_load(&s.parker_done, NG_SEQ_CST)) {
        ng_unpark_all(&s.parked_word);
        sleep_ms(1);
    }
    ng_event_notify(&s.release_holder);
    join_thread(parker);
    join_thread(holder);
    CHECK_STATUS(s.parker_result, NG_OK);
    CHECK_EQ(s.holder_errors, 0);
    CHECK_STATUS(ng_recursive_mutex_unlock(&s.own_rmutex), NG_OK);
    CHECK_STATUS(ng_recursive_mutex_unlock(&s.own_rmutex), NG_OK);
    CHECK_EQ(ng_atomic_load(&s.mutex.bits, NG_SEQ_CST), 0);
}

/* ---- Forking again and again while other threads park and unpark --------------------------- */

struct fork_hammer {
    uint32_t busy_word;  /* hammered by the parent's threads */
    uint32_t quiet_word; /* nobody uses it in the parent */
    int stop;
    long parks;
    long unparks;
};

static void *hammer_parker(void *p)
{
    struct fork_hammer *h = p;
    uint32_t zero = 0;
    long n = 0;
    while (!ng_atomic_load(&h->stop, NG_ACQUIRE)) {
        ng_park(&h->busy_word, &zero, 4, 100000, NULL, 0); /* 100 us */
        n++;
    }
    h->parks = n;
    return NULL;
}

static void *hammer_unparker(void *p)
{
    struct fork_hammer *h = p;
    long n = 0;
    while (!ng_atomic_load(&h->stop, NG_ACQUIRE)) {
        /* Both wake paths, so forks land in the middle of either. */
        if (n & 1)
            ng_unpark(&h->busy_word, NULL, NULL);
        else
            ng_unpark_all(&h->busy_word);
        n++;
        if ((n & 15) == 0)
            sched_yield(); /* let the parent's main thread get on with forking */
    }
    h->unparks = n;
    return NULL;
}

static const char *const hammer_check_names[] = {
    "the busy address still lists the parent's waiter",
    "a timed park on the busy address did not return NG_TIMEOUT",
    "a timed park on a quiet address did not return NG_TIMEOUT",
    "an unpark in the child found a (dead) waiter",
    NULL,
};

static int hammer_child(void *arg)
{
    struct fork_hammer *h = arg;
    int failed = 0;
    uint32_t zero = 0;
    if (ng_parking_lot_waiters(&h->busy_word) != 0)
        failed |= 1;
    /* The bucket lock may have been held by a parent thread at the fork: the reset must
     * have released it, or these hang (and the alarm reports it). */
    if (ng_park(&h->busy_word, &zero, 4, NG_NS_PER_MS, NULL, 0) != NG_TIMEOUT)
        failed |= 2;
    if (ng_park(&h->quiet_word, &zero, 4, NG_NS_PER_MS, NULL, 0) != NG_TIMEOUT)
        failed |= 4;
    if (ng_unpark(&h->busy_word, NULL, NULL) != 0 || ng_unpark_all(&h->busy_word) != 0)
        failed |= 8;
    return failed;
}

TEST(fork_repeatedly_while_threads_park_and_unpark)
{
    static struct fork_hammer h;
    h = (struct fork_hammer){0};
    pthread_t parker = spawn_thread(hammer_parker, &h);
    pthread_t unparker = spawn_thread(hammer_unparker, &h);
    long forks = scaled(50);
    int failed_children = 0;
    for (long i = 0; i < forks; i++) {
        pid_t pid = fork_checks(hammer_child, &h);
        if (!CHECK_GT(pid, 0))
            break;
        int before = harness_failures();
        check_child(pid, hammer_check_names, "fork during park/unpark");
        if (harness_failures() > before && ++failed_children == 3)
            break; /* enough evidence; keep the report short */
    }
    ng_atomic_store(&h.stop, 1, NG_RELEASE);
    join_thread(parker);
    join_thread(unparker);
    CHECK_GT(h.parks, 0);
    CHECK_GT(h.unparks, 0);
    CHECK_EQ(ng_parking_lot_waiters(&h.busy_word), 0);
}
