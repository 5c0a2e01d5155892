/* fork() by a thread that holds a world stopped itself, while a thread that its stop
 * suspended holds a lock the prepare handler needs.
 *
 * The handler leaves a world the forking thread stopped itself stopped, so a thread that this
 * stop suspended stays suspended for the whole fork. If that thread holds a lock the handler
 * takes with a try-lock (the list of interpreters, a QSBR mutex, another world's stw.mutex;
 * an unlocker hands a mutex straight to a waiter that slept in it detached), a handler that
 * only backs off and tries again retries for ever. These scenes set that up and check that
 * the fork completes, in the parent and in the child, and that everyone carries on after the
 * restart. The suspended thread may also hold another world stopped outright (it was
 * suspended at a checkpoint after stopping it): that world stays stopped through the fork
 * too, and the handler must take it as stopped rather than wait for its restart.
 *
 * Each scene runs in a child process of the test (fork_checks), whose alarm turns a hang into
 * a failure. Under ThreadSanitizer the scene runs in the runner (see test_fork_order.c); a
 * hung fork is then rescued by the main thread, which restarts the forking thread's world
 * from outside, so the test fails instead of hanging the run.
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>

#include "fork_helpers.h"
#include "tstate_helpers.h"

/* How long the main thread lets the fork run before it calls it hung and rescues it. */
#define FORK_PATIENCE_MS 5000
/* How long the forking thread waits for its own child: with FORK_PATIENCE_MS, well within
 * the alarm of the scene's process, so that the child is killed before that process dies. */
#define GRANDCHILD_PATIENCE_MS 8000

enum {
    STOPPER_SETUP_FAILED = 1 << 0,
    STOPPER_FORK_HUNG = 1 << 1,
    STOPPER_CHILD_FAILED = 1 << 2,
    STOPPER_SLEEPER_FAILED = 1 << 3,
    STOPPER_RESTART_FAILED = 1 << 4,
    STOPPER_LOCK_LOST = 1 << 5,
};

static const char *const stopper_check_names[] = {
    "scene set-up failed",
    "fork() did not return: the prepare handler retried for ever",
    "the fork's child failed its checks",
    "the suspended thread's action failed after the restart",
    "the forking thread's restart or release failed",
    "the parent's fork handler unlocked or restarted what the suspended thread holds",
    NULL,
};

/* What the suspended thread holds when the fork comes. HOLDS_STW_MID: as HOLDS_STW, but the
 * world it is suspended in is stopped by the fork handler itself, not by the forking thread
 * beforehand, so the handler restarts it in the parent. */
enum stopper_lock { HOLDS_QSBR, HOLDS_LIST, HOLDS_STW, HOLDS_STOP, HOLDS_STW_MID };

struct stopper_scene {
    enum stopper_lock kind;
    ng_interp *in;    /* the world the forking thread stops */
    ng_interp *other; /* HOLDS_STW, HOLDS_STOP: the world whose stop the sleeper takes */
    ng_mutex *lock;   /* the lock the sleeper sleeps in (HOLDS_STOP: the other stw.mutex) */
    bool forker_holds; /* the forking thread stops `in` before it forks (all but _MID) */

    /* HOLDS_STW_MID: a world between `in` and `other` in the list of interpreters, whose one
     * attached thread (the staller) keeps the handler's stop waiting until it is told to
     * reach a checkpoint; meanwhile `in` is stopped by the handler. */
    ng_interp *mid;
    pthread_t staller;
    uint32_t staller_ready; /* 1: attached, 2: set-up failed */
    uint32_t staller_release, staller_done;
    int staller_failed;
    uint32_t in_restarted; /* the parent's handler restarted `in` (restart hook) */

    pthread_t sleeper;
    ng_tstate *sleeper_ts; /* published once attached */
    uint32_t sleeper_ready; /* 1: attached, 2: set-up failed */
    uint32_t sleeper_go;
    uint32_t sleeper_holding; /* HOLDS_STOP: the other world is stopped */
    uint32_t sleeper_release; /* HOLDS_STOP: may restart it */
    int sleeper_failed;

    pthread_t forker;
    ng_tstate *forker_ts;
    ng_tstate *forker_other_ts; /* a detached state of the forker in `other` */
    uint32_t forker_ready; /* 1: attached, 2: set-up failed */
    uint32_t stop_go, stopped; /* stopped: 1 ok, 2 failed */
    uint32_t fork_go, forked;
    int forker_failed;
};

/* Attached in `in`; on the go, takes the scene's lock (waiting for it detached), then lets
 * it go. */
static void *stopper_sleeper_main(void *arg)
{
    struct stopper_scene *s = arg;
    ng_tstate *ts;
    if (!attach_or_report(s->in, &ts, &s->sleeper_ready, &s->sleeper_failed,
                          STOPPER_SETUP_FAILED))
        return NULL;
    ng_atomic_store(&s->sleeper_ts, ts, NG_RELEASE);
    ng_atomic_store(&s->sleeper_ready, 1, NG_RELEASE);
    SPIN_UNTIL(ng_atomic_load(&s->sleeper_go, NG_ACQUIRE));
    switch (s->kind) {
    case HOLDS_QSBR: { /* the QSBR mutex, through a new state's reserve */
        ng_tstate *extra = NULL;
        if (ng_tstate_new(s->in, &extra) != NG_OK || ng_tstate_release(extra) != NG_OK)
            s->sleeper_failed |= STOPPER_SLEEPER_FAILED;
        break;
    }
    case HOLDS_LIST: { /* the list of interpreters, through a new interpreter */
        ng_interp *extra = NULL;
        if (ng_interp_new(&extra) != NG_OK || ng_interp_delete(extra) != NG_OK)
            s->sleeper_failed |= STOPPER_SLEEPER_FAILED;
        break;
    }
    case HOLDS_STW: /* another world's stw.mutex, through its stop */
    case HOLDS_STW_MID:
        if (ng_stop_the_world(s->other, NULL) != NG_OK)
            s->sleeper_failed |= STOPPER_SLEEPER_FAILED;
        /* The stop is ours, and not restarted by the handler behind our back. */
        else if (!ng_stw_stopped_by_me(s->other) || !ng_world_stopped(s->other) ||
                 ng_start_the_world(s->other) != NG_OK)
            s->sleeper_failed |= STOPPER_SLEEPER_FAILED;
        break;
    case HOLDS_STOP: /* another world stopped, while it checkpoints in this one */
        if (ng_stop_the_world(s->other, NULL) != NG_OK) {
            s->sleeper_failed |= STOPPER_SLEEPER_FAILED;
            break;
        }
        ng_atomic_store(&s->sleeper_holding, 1, NG_RELEASE);
        while (!ng_atomic_load(&s->sleeper_release, NG_ACQUIRE)) {
            if (ng_tstate_checkpoint(ts) != NG_OK)
                s->sleeper_failed |= STOPPER_SLEEPER_FAILED;
            sched_yield();
        }
        if (ng_start_the_world(s->other) != NG_OK)
            s->sleeper_failed |= STOPPER_SLEEPER_FAILED;
        break;
    }
    if (ng_tstate_release(ts) != NG_OK)
        s->sleeper_failed |= STOPPER_SLEEPER_FAILED;
    return NULL;
}

/* The fork's child: the forking thread's world is still stopped by it, and every lock the
 * handler took over from the suspended thread works. Bits: 1 the world, 2 a new state (QSBR
 * mutex), 4 a new interpreter (the list), 8 the other world's stop, 16 the releases, 32 the
 * forking thread's state in the other world (suspended by a stop that is gone here). */
static int stopper_child_checks(struct stopper_scene *s)
{
    int bits = 0;
    if (s->forker_holds ? !ng_world_stopped(s->in) || ng_start_the_world(s->in) != NG_OK
                        : ng_world_stopped(s->in))
        bits |= 1;
    ng_tstate *extra = NULL;
    if (ng_tstate_new(s->in, &extra) != NG_OK || ng_tstate_release(extra) != NG_OK)
        bits |= 2;
    ng_interp *fresh = NULL;
    if (ng_interp_new(&fresh) != NG_OK || ng_interp_delete(fresh) != NG_OK)
        bits |= 4;
    if (s->other != NULL &&
        (ng_stop_the_world(s->other, NULL) != NG_OK || ng_start_the_world(s->other) != NG_OK))
        bits |= 8;
    if (s->forker_other_ts != NULL &&
        (state_of(s->forker_other_ts) != NG_TSTATE_DETACHED ||
         ng_tstate_release(s->forker_other_ts) != NG_OK))
        bits |= 32;
    if (ng_tstate_release(s->forker_ts) != NG_OK)
        bits |= 16;
    return bits;
}

/* Attached in `in`; stops its world on the go, forks on the next, then restarts it. */
static void *stopper_forker_main(void *arg)
{
    struct stopper_scene *s = arg;
    if ((s->other != NULL && ng_tstate_new(s->other, &s->forker_other_ts) != NG_OK) ||
        create_attached(s->in, &s->forker_ts) != NG_OK) {
        s->forker_failed |= STOPPER_SETUP_FAILED;
        if (s->forker_ts != NULL)
            ng_tstate_release(s->forker_ts);
        if (s->forker_other_ts != NULL)
            ng_tstate_release(s->forker_other_ts);
        ng_atomic_store(&s->forker_ready, 2, NG_RELEASE);
        return NULL;
    }
    ng_atomic_store(&s->forker_ready, 1, NG_RELEASE);
    SPIN_UNTIL(ng_atomic_load(&s->stop_go, NG_ACQUIRE));
    if (s->forker_holds && ng_stop_the_world(s->in, s->forker_ts) != NG_OK) {
        s->forker_failed |= STOPPER_SETUP_FAILED;
        ng_atomic_store(&s->stopped, 2, NG_RELEASE);
        ng_tstate_release(s->forker_ts);
        if (s->forker_other_ts != NULL)
            ng_tstate_release(s->forker_other_ts);
        return NULL;
    }
    ng_atomic_store(&s->stopped, 1, NG_RELEASE);
    SPIN_UNTIL(ng_atomic_load(&s->fork_go, NG_ACQUIRE));
    pid_t pid = fork();
    if (pid == 0) {
        /* The child hangs if its handler broke a lock: the alarm ends it, and so does this
         * thread's end (the scene's process died of its own alarm, or the runner of its
         * watchdog), so no orphan outlives the run holding its output pipe open. */
        alarm(CHILD_ALARM_S);
        (void)prctl(PR_SET_PDEATHSIG, SIGKILL);
        _exit(stopper_child_checks(s));
    }
    ng_atomic_store(&s->forked, 1, NG_RELEASE);
    /* The sleeper, still suspended, holds its lock (the list: it let it go) or its stop.
     * (_MID: the handler restarted the sleeper's world, which then goes on.) */
    if (s->forker_holds && s->kind != HOLDS_LIST && !ng_mutex_is_locked(s->lock))
        s->forker_failed |= STOPPER_LOCK_LOST;
    if (s->kind == HOLDS_STOP && !ng_world_stopped(s->other))
        s->forker_failed |= STOPPER_LOCK_LOST;
    /* Killed when late: a child that hangs in the fork's child handlers, before its alarm is
     * set, would otherwise outlive this process (whose own alarm comes first). */
    int status = pid < 0 ? -1 : wait_child(pid, GRANDCHILD_PATIENCE_MS);
    if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        s->forker_failed |= STOPPER_CHILD_FAILED;
    /* NG_EINVAL when the main thread had to rescue a hung fork (it restarted the world);
     * that failure is reported as the hang. */
    int restart = s->forker_holds ? ng_start_the_world(s->in) : NG_OK;
    if (restart != NG_OK && restart != NG_EINVAL)
        s->forker_failed |= STOPPER_RESTART_FAILED;
    if (ng_tstate_release(s->forker_ts) != NG_OK)
        s->forker_failed |= STOPPER_RESTART_FAILED;
    /* Waits, if need be, for the sleeper to restart the other world. */
    if (s->forker_other_ts != NULL && ng_tstate_release(s->forker_other_ts) != NG_OK)
        s->forker_failed |= STOPPER_RESTART_FAILED;
    return NULL;
}

/* The lock the sleeper will sleep in. */
static ng_mutex *stopper_lock_of(struct stopper_scene *s)
{
    switch (s->kind) {
    case HOLDS_QSBR:
        return &s->in->qsbr.mutex;
    case HOLDS_LIST:
        return ng_test_interp_list_lock();
    default: /* HOLDS_STW, HOLDS_STOP, HOLDS_STW_MID */
        return &s->other->stw.mutex;
    }
}

/* HOLDS_STW_MID: attached in `mid`, reaches no checkpoint until released (the handler's stop
 * of `mid` waits for it), then checkpoints until done. */
static void *stopper_staller_main(void *arg)
{
    struct stopper_scene *s = arg;
    ng_tstate *ts;
    if (!attach_or_report(s->mid, &ts, &s->staller_ready, &s->staller_failed,
                          STOPPER_SETUP_FAILED))
        return NULL;
    ng_atomic_store(&s->staller_ready, 1, NG_RELEASE);
    SPIN_UNTIL(ng_atomic_load(&s->staller_release, NG_ACQUIRE));
    while (!ng_atomic_load(&s->staller_done, NG_ACQUIRE)) {
        if (ng_tstate_checkpoint(ts) != NG_OK)
            s->staller_failed |= STOPPER_SETUP_FAILED;
        sched_yield();
    }
    if (ng_tstate_release(ts) != NG_OK)
        s->staller_failed |= STOPPER_SETUP_FAILED;
    return NULL;
}

/* HOLDS_STW_MID: the parent's handler is about to restart `in`'s world (which lets the
 * sleeper go on into its stop of `other`) or `other`'s. If `in` went first, give the sleeper
 * the time to begin that stop before `other` is restarted, so that a late restart of the
 * borrowed world collides with it every time rather than once in a while. */
static struct stopper_scene *restart_hook_scene;

static void stopper_restart_hook(ng_interp *interp)
{
    struct stopper_scene *s = restart_hook_scene;
    if (s == NULL || !ng_atomic_load(&s->fork_go, NG_ACQUIRE))
        return;
    if (interp == s->in)
        ng_atomic_store(&s->in_restarted, 1, NG_RELAXED);
    else if (interp == s->other && ng_atomic_load(&s->in_restarted, NG_RELAXED)) {
        uint64_t sleeper_id = ng_atomic_load(&s->sleeper_ts->thread_id, NG_RELAXED);
        (void)WAIT_UNTIL(ng_atomic_load(&NG_INTERP_IMPL(s->other)->stw_owner, NG_RELAXED) ==
                             sleeper_id,
                         1000);
    }
}

/* The main thread takes the lock (HOLDS_STW: stops the other world), lets the sleeper sleep
 * in it detached, has the forker stop the sleeper's world (suspending it), and releases the
 * lock, which goes straight to the sleeper (hand-off threshold 0): the sleeper then waits,
 * suspended, for the restart, holding the lock (or, for the list, having let it go).
 * HOLDS_STOP: the sleeper stops the other world itself and is suspended at a checkpoint.
 * Then the forker forks. HOLDS_STW_MID: the forker forks at once; the handler's stop of `in`
 * suspends the sleeper, and its stop of `mid` waits for the staller while the main thread
 * hands the other stw.mutex to the sleeper; then the staller lets the handler on. */
static int stopper_scene_run(enum stopper_lock kind)
{
    struct stopper_scene s = {.kind = kind, .forker_holds = kind != HOLDS_STW_MID};
    bool mid = kind == HOLDS_STW_MID;
    /* The list is newest first: _MID wants in, mid, other in that order. */
    if ((kind == HOLDS_STW || kind == HOLDS_STOP || mid) && ng_interp_new(&s.other) != NG_OK)
        return STOPPER_SETUP_FAILED;
    if (mid && ng_interp_new(&s.mid) != NG_OK) {
        ng_interp_delete(s.other);
        return STOPPER_SETUP_FAILED;
    }
    if (ng_interp_new(&s.in) != NG_OK) {
        if (s.mid != NULL)
            ng_interp_delete(s.mid);
        if (s.other != NULL)
            ng_interp_delete(s.other);
        return STOPPER_SETUP_FAILED;
    }
    int64_t handoff_ns = ng_mutex_set_handoff_ns(0);
    int failed = 0;
    s.sleeper = spawn_thread(stopper_sleeper_main, &s);
    s.forker = spawn_thread(stopper_forker_main, &s);
    if (mid) {
        s.staller = spawn_thread(stopper_staller_main, &s);
        restart_hook_scene = &s;
        ng_atomic_store(&ng_test_fork_restart_hook, stopper_restart_hook, NG_RELAXED);
    }
    else
        s.staller_ready = 1;
    SPIN_UNTIL(ng_atomic_load(&s.sleeper_ready, NG_ACQUIRE) != 0 &&
               ng_atomic_load(&s.forker_ready, NG_ACQUIRE) != 0 &&
               ng_atomic_load(&s.staller_ready, NG_ACQUIRE) != 0);
    bool ready = ng_atomic_load(&s.sleeper_ready, NG_ACQUIRE) == 1 &&
                 ng_atomic_load(&s.forker_ready, NG_ACQUIRE) == 1 &&
                 ng_atomic_load(&s.staller_ready, NG_ACQUIRE) == 1;
    ng_mutex *lock = s.lock = stopper_lock_of(&s);
    bool holds_stw = kind == HOLDS_STW || mid;
    if (holds_stw)
        ready = ready && ng_stop_the_world(s.other, NULL) == NG_OK;
    else if (kind != HOLDS_STOP)
        ng_mutex_lock(lock);
    ng_atomic_store(&s.sleeper_go, 1, NG_RELEASE);
    ng_tstate *sleeper_ts = ng_atomic_load(&s.sleeper_ts, NG_ACQUIRE);
    if (kind == HOLDS_STOP)
        ready = ready && WAIT_UNTIL(ng_atomic_load(&s.sleeper_holding, NG_ACQUIRE), PATIENCE_MS);
    else
        ready = ready && WAIT_UNTIL(ng_parking_lot_waiters(lock) == 1 &&
                                        state_of(sleeper_ts) == NG_TSTATE_DETACHED,
                                    PATIENCE_MS);
    ng_atomic_store(&s.stop_go, 1, NG_RELEASE);
    SPIN_UNTIL(ng_atomic_load(&s.stopped, NG_ACQUIRE) != 0 ||
               ng_atomic_load(&s.forker_ready, NG_ACQUIRE) == 2);
    ready = ready && ng_atomic_load(&s.stopped, NG_ACQUIRE) == 1;
    if (mid) {
        /* The handler stops `in` (the sleeper is suspended), then waits in `mid`'s stop. */
        ng_atomic_store(&s.fork_go, 1, NG_RELEASE);
        ready = ready && WAIT_UNTIL(state_of(sleeper_ts) == NG_TSTATE_SUSPENDED, PATIENCE_MS);
    }
    else
        ready = ready && state_of(sleeper_ts) == NG_TSTATE_SUSPENDED;
    if (holds_stw)
        ready = ng_start_the_world(s.other) == NG_OK && ready;
    else if (kind != HOLDS_STOP)
        ng_mutex_unlock(lock);
    /* The sleeper woke (owning the lock), found its state suspended and parked on it. */
    ready = ready && WAIT_UNTIL(ng_parking_lot_waiters(lock) == 0 &&
                                    ng_parking_lot_waiters(&sleeper_ts->state) == 1,
                                PATIENCE_MS);
    if (kind != HOLDS_LIST)
        ready = ready && ng_mutex_is_locked(lock);
    if (!ready)
        failed |= STOPPER_SETUP_FAILED;
    ng_atomic_store(&s.fork_go, 1, NG_RELEASE);
    ng_atomic_store(&s.staller_release, 1, NG_RELEASE);
    if (ng_atomic_load(&s.stopped, NG_ACQUIRE) == 1 &&
        !WAIT_UNTIL(ng_atomic_load(&s.forked, NG_ACQUIRE), FORK_PATIENCE_MS)) {
        /* Rescue: restart the world from here, so the sleeper goes on, lets the lock go, and
         * the handler can get it. */
        failed |= STOPPER_FORK_HUNG;
        if (s.forker_holds)
            ng_start_the_world(s.in);
    }
    ng_atomic_store(&s.sleeper_release, 1, NG_RELEASE);
    join_thread(s.forker);
    join_thread(s.sleeper);
    ng_atomic_store(&s.staller_done, 1, NG_RELEASE);
    if (mid) {
        join_thread(s.staller);
        ng_atomic_store(&ng_test_fork_restart_hook, NULL, NG_RELAXED);
        restart_hook_scene = NULL;
    }
    failed |= s.forker_failed | s.sleeper_failed | s.staller_failed;
    ng_mutex_set_handoff_ns(handoff_ns);
    if (ng_interp_delete(s.in) != NG_OK || (s.mid != NULL && ng_interp_delete(s.mid) != NG_OK) ||
        (s.other != NULL && ng_interp_delete(s.other) != NG_OK))
        failed |= STOPPER_SETUP_FAILED;
    return failed;
}

/* The child's entry: the scene whose lock kind `arg` points to. */
static int stopper_scene_entry(void *arg)
{
    return stopper_scene_run(*(const enum stopper_lock *)arg);
}

static void run_stopper_scene(enum stopper_lock kind, const char *what)
{
    if (THREAD_SANITIZER) {
        int failed = stopper_scene_entry(&kind);
        for (int bit = 0; stopper_check_names[bit] != NULL; bit++)
            if (failed & (1 << bit))
                harness_fail(__FILE__, __LINE__, "%s: %s", what, stopper_check_names[bit]);
        return;
    }
    pid_t pid = fork_checks(stopper_scene_entry, &kind);
    if (CHECK_GT(pid, 0))
        check_child(pid, stopper_check_names, what);
}

TEST(fork_stopper_qsbr_mutex_handed_to_a_thread_it_suspended)
{
    run_stopper_scene(HOLDS_QSBR,
                      "QSBR mutex handed to a thread the forking thread's own stop suspended");
}

TEST(fork_stopper_list_lock_handed_to_a_thread_it_suspended)
{
    run_stopper_scene(HOLDS_LIST,
                      "interpreter list handed to a thread the forking thread's own stop "
                      "suspended");
}

TEST(fork_stopper_other_worlds_stop_handed_to_a_thread_it_suspended)
{
    run_stopper_scene(HOLDS_STW,
                      "another world's stw.mutex handed to a thread the forking thread's own "
                      "stop suspended");
}

/* The suspended thread holds another world stopped: neither stop can end before the fork,
 * so the handler must take that world as stopped. */
TEST(fork_stopper_other_world_held_stopped_by_a_thread_it_suspended)
{
    run_stopper_scene(HOLDS_STOP,
                      "another world held stopped by a thread the forking thread's own stop "
                      "suspended");
}

/* As above with another world's stw.mutex, but the world the thread is suspended in is
 * stopped by the fork handler itself, which restarts it in the parent: the borrowed world
 * must be restarted first, or the thread, let go, begins its stop of it and the handler's
 * late restart undoes that stop. */
TEST(fork_stopper_other_worlds_stop_handed_to_a_thread_the_handler_suspended)
{
    run_stopper_scene(HOLDS_STW_MID,
                      "another world's stw.mutex handed to a thread that the fork handler's "
                      "own stop suspended");
}
