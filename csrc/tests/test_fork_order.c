/* The lock order of the fork prepare handler against threads that hold a world stopped or
 * hold a lock the handler needs.
 *
 * The prepare handler must stop every interpreter's world and take the layer's locks. A
 * thread that holds a world stopped may go on to take some of those locks (ng_tstate_new and
 * ng_tstate_release take the interpreter's QSBR mutex, ng_interp_new and ng_interp_delete the
 * list of interpreters), so the handler must not hold them while it waits for that world. And
 * a lock may be held by a thread that the handler's own stop suspends (a mutex handed to a
 * thread that slept in it detached), so the handler must not wait for it while its stops
 * hold. Each scene runs in a child process of the test (fork_checks): a deadlock there ends
 * with the child's alarm and is reported as a hang, instead of hanging the runner (except
 * under ThreadSanitizer, see run_order_scene).
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include "fork_helpers.h"
#include "tstate_helpers.h"

/* How long a scene waits for the handler to reach the point where the old order deadlocked
 * (the QSBR mutex taken before the stops). The new order never gets there; the scene then
 * goes on after this wait, and whatever it does next must not deadlock either. */
#define ORDER_PRECONDITION_MS 1000

enum {
    ORDER_ACTION_FAILED = 1 << 0,  /* the stop holder's action returned an error */
    ORDER_FORK_FAILED = 1 << 1,    /* fork() failed, or its child did not exit with 0 */
    ORDER_SETUP_FAILED = 1 << 2,   /* interpreter, states, threads */
    ORDER_RESTART_FAILED = 1 << 3, /* the stop holder's restart or release failed */
};

static const char *const order_check_names[] = {
    "the stop holder's action failed",
    "fork() failed or its child failed",
    "scene set-up failed",
    "the stop holder's restart or release failed",
    NULL,
};

/* Runs a scene in a child process (fork_checks), whose alarm turns a deadlock into a reported
 * hang. ThreadSanitizer cannot run threads in a child of the multi-threaded runner (it
 * exits, "dup thread with used id"), so there the scene runs in the runner itself and a
 * deadlock is caught by the runner's watchdog, which fails the test and ends the run. */
static void run_order_scene(int (*scene)(void *), const char *what)
{
    if (THREAD_SANITIZER) {
        int failed = scene(NULL);
        for (int bit = 0; order_check_names[bit] != NULL; bit++)
            if (failed & (1 << bit))
                harness_fail(__FILE__, __LINE__, "%s: %s", what, order_check_names[bit]);
        return;
    }
    pid_t pid = fork_checks(scene, NULL);
    if (CHECK_GT(pid, 0))
        check_child(pid, order_check_names, what);
}

/* ---- The forking thread ------------------------------------------------------------------ */

struct order_forker {
    pthread_t thread;
    int failed; /* ORDER_FORK_FAILED bits */
};

static void *order_forker_main(void *arg)
{
    struct order_forker *f = arg;
    pid_t pid = fork();
    if (pid == 0)
        _exit(0);
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
        WEXITSTATUS(status) != 0)
        f->failed |= ORDER_FORK_FAILED;
    return NULL;
}

static bool order_forker_start(struct order_forker *f)
{
    memset(f, 0, sizeof(*f));
    return pthread_create(&f->thread, NULL, order_forker_main, f) == 0;
}

/* ---- A thread that holds its interpreter's world stopped ---------------------------------- */

enum { ORDER_NEW_STATE, ORDER_NEW_INTERP };

struct order_holder {
    ng_interp *in;
    int action;
    pthread_t thread;
    uint32_t stopped; /* 1: the world is stopped, 2: set-up failed */
    uint32_t go;
    int failed;
};

/* Creates and releases a state of the stopped interpreter (its QSBR mutex: reserve, then
 * unregister), or an interpreter (the list of interpreters), with the world still stopped. */
static int order_holder_action(struct order_holder *h)
{
    if (h->action == ORDER_NEW_STATE) {
        ng_tstate *extra = NULL;
        if (ng_tstate_new(h->in, &extra) != NG_OK)
            return ORDER_ACTION_FAILED;
        return ng_tstate_release(extra) == NG_OK ? 0 : ORDER_ACTION_FAILED;
    }
    ng_interp *other = NULL;
    if (ng_interp_new(&other) != NG_OK)
        return ORDER_ACTION_FAILED;
    return ng_interp_delete(other) == NG_OK ? 0 : ORDER_ACTION_FAILED;
}

static void *order_holder_main(void *arg)
{
    struct order_holder *h = arg;
    ng_tstate *ts = NULL;
    if (create_attached(h->in, &ts) != NG_OK || ng_stop_the_world(h->in, ts) != NG_OK) {
        h->failed |= ORDER_SETUP_FAILED;
        if (ts != NULL)
            ng_tstate_release(ts);
        ng_atomic_store(&h->stopped, 2, NG_RELEASE);
        return NULL;
    }
    ng_atomic_store(&h->stopped, 1, NG_RELEASE);
    SPIN_UNTIL(ng_atomic_load(&h->go, NG_ACQUIRE));
    h->failed |= order_holder_action(h);
    if (ng_start_the_world(h->in) != NG_OK || ng_tstate_release(ts) != NG_OK)
        h->failed |= ORDER_RESTART_FAILED;
    return NULL;
}

/* A thread holds the world stopped; another forks (its handler must stop that world too);
 * once the handler is waiting for that stop, the holder takes a lock the handler takes as
 * well. Both must finish. */
static int order_stop_holder_scene(int action)
{
    ng_interp *in = NULL;
    if (ng_interp_new(&in) != NG_OK)
        return ORDER_SETUP_FAILED;
    struct order_holder h = {.in = in, .action = action};
    if (pthread_create(&h.thread, NULL, order_holder_main, &h) != 0)
        return ORDER_SETUP_FAILED;
    SPIN_UNTIL(ng_atomic_load(&h.stopped, NG_ACQUIRE) != 0);
    int failed = 0;
    struct order_forker f;
    if (ng_atomic_load(&h.stopped, NG_ACQUIRE) == 1 && order_forker_start(&f)) {
        /* The old order: the handler holds the QSBR mutex (taken after the list's lock) and
         * sleeps in the stop, on the world's stw.mutex, which the holder has. */
        WAIT_UNTIL(ng_mutex_is_locked(&in->qsbr.mutex) &&
                       ng_parking_lot_waiters(&in->stw.mutex) > 0,
                   ORDER_PRECONDITION_MS);
        ng_atomic_store(&h.go, 1, NG_RELEASE);
        join_thread(h.thread);
        join_thread(f.thread);
        failed |= f.failed;
    }
    else {
        failed |= ORDER_SETUP_FAILED;
        ng_atomic_store(&h.go, 1, NG_RELEASE);
        join_thread(h.thread);
    }
    failed |= h.failed;
    if (ng_interp_delete(in) != NG_OK)
        failed |= ORDER_SETUP_FAILED;
    return failed;
}

static int order_new_state_child(void *arg)
{
    (void)arg;
    return order_stop_holder_scene(ORDER_NEW_STATE);
}

static int order_new_interp_child(void *arg)
{
    (void)arg;
    return order_stop_holder_scene(ORDER_NEW_INTERP);
}

/* The holder of a stop creates a state of its interpreter (QSBR reserve and unregister)
 * while a fork waits to stop that world. */
TEST(fork_prepare_waits_for_a_stop_whose_holder_creates_a_state)
{
    run_order_scene(order_new_state_child, "stop holder creates a state during a fork");
}

/* The holder of a stop creates and deletes an interpreter (the list of interpreters) while a
 * fork waits to stop its world. */
TEST(fork_prepare_waits_for_a_stop_whose_holder_creates_an_interpreter)
{
    run_order_scene(order_new_interp_child, "stop holder creates an interpreter during a fork");
}

/* ---- A QSBR mutex handed to a thread that the fork's stop suspends ------------------------- */

struct order_sleeper {
    ng_interp *in;
    pthread_t thread;
    ng_tstate *ts; /* published once attached */
    uint32_t ready; /* 1: attached, 2: set-up failed */
    uint32_t locked; /* the main thread holds the QSBR mutex */
    int failed;
};

/* Attached, creates a second state: its reserve sleeps, detached, on the QSBR mutex the main
 * thread holds. */
static void *order_sleeper_main(void *arg)
{
    struct order_sleeper *s = arg;
    ng_tstate *ts;
    if (!attach_or_report(s->in, &ts, &s->ready, &s->failed, ORDER_SETUP_FAILED))
        return NULL;
    ng_atomic_store(&s->ts, ts, NG_RELEASE);
    ng_atomic_store(&s->ready, 1, NG_RELEASE);
    SPIN_UNTIL(ng_atomic_load(&s->locked, NG_ACQUIRE));
    ng_tstate *extra = NULL;
    if (ng_tstate_new(s->in, &extra) != NG_OK || ng_tstate_release(extra) != NG_OK)
        s->failed |= ORDER_ACTION_FAILED;
    if (ng_tstate_release(ts) != NG_OK)
        s->failed |= ORDER_RESTART_FAILED;
    return NULL;
}

/* The main thread holds the QSBR mutex; an attached thread sleeps on it (detached); a fork
 * begins. Once the fork's stop has suspended the sleeper, the main thread unlocks, and the
 * mutex is handed straight to the sleeper (hand-off threshold 0), which then stays suspended
 * while it owns the mutex: a handler that waited for the mutex with its stops in force would
 * wait for ever. */
static int order_handoff_child(void *arg)
{
    (void)arg;
    ng_interp *in = NULL;
    if (ng_interp_new(&in) != NG_OK)
        return ORDER_SETUP_FAILED;
    int64_t handoff_ns = ng_mutex_set_handoff_ns(0);
    int failed = 0;
    struct order_sleeper s = {.in = in};
    if (pthread_create(&s.thread, NULL, order_sleeper_main, &s) != 0) {
        ng_mutex_set_handoff_ns(handoff_ns);
        return ORDER_SETUP_FAILED;
    }
    SPIN_UNTIL(ng_atomic_load(&s.ready, NG_ACQUIRE) != 0);
    ng_mutex_lock(&in->qsbr.mutex);
    ng_atomic_store(&s.locked, 1, NG_RELEASE);
    bool sleeping = ng_atomic_load(&s.ready, NG_ACQUIRE) == 1 &&
                    WAIT_UNTIL(ng_parking_lot_waiters(&in->qsbr.mutex) == 1 &&
                                   state_of(s.ts) == NG_TSTATE_DETACHED,
                               PATIENCE_MS);
    struct order_forker f;
    bool forking = sleeping && order_forker_start(&f);
    if (forking) {
        /* The new order stops the world first (suspending the sleeper). The old one waits
         * for the mutex first and never stops it while we hold the mutex. */
        WAIT_UNTIL(ng_atomic_load(&in->stw.world_stopped, NG_RELAXED) &&
                       state_of(s.ts) == NG_TSTATE_SUSPENDED,
                   ORDER_PRECONDITION_MS);
    }
    else {
        failed |= ORDER_SETUP_FAILED;
    }
    ng_mutex_unlock(&in->qsbr.mutex);
    join_thread(s.thread);
    if (forking) {
        join_thread(f.thread);
        failed |= f.failed;
    }
    failed |= s.failed;
    ng_mutex_set_handoff_ns(handoff_ns);
    if (ng_interp_delete(in) != NG_OK)
        failed |= ORDER_SETUP_FAILED;
    return failed;
}

TEST(fork_prepare_survives_a_qsbr_mutex_handed_to_a_suspended_thread)
{
    run_order_scene(order_handoff_child, "QSBR mutex handed to a thread the fork suspends");
}
