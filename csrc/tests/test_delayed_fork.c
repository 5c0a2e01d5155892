/* Delayed entries that fork() or queue more delayed work while they run.
 *
 * The fork prepare handler waits for every interpreter's delayed-queue mutex and head_lock,
 * so an entry that forks would deadlock if processing ran entries with either held, and its
 * child would find the queue half updated if processing kept pointers into it across a run.
 * Entries run with no lock held and the read index past them (delayed_free.c), which is also
 * what lets an entry queue and process more work. These scenes fork from an entry run from
 * the thread's own queue and from one run from the interpreter's queue, let the child carry on
 * from inside the entry (it returns into the processing loop that ran it), and check both
 * processes' queues; a third has entries of the interpreter's queue queue, process and hand
 * over more work from inside.
 *
 * Each scene runs in a child process of the test (fork_checks): a deadlock ends with its
 * alarm, reported as a hang. Under ThreadSanitizer the scene runs in the runner (see
 * test_fork_order.c), whose watchdog catches a hang. The processes that an entry forks check
 * themselves and report through their exit status (no stdio after a multi-threaded fork).
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>

#include "delayed_free_internal.h"
#include "fork_helpers.h"
#include "tstate_helpers.h"

/* How long the scene waits for the child of the entry's fork: well within the scene process's
 * alarm (CHILD_ALARM_S), so that a hung child is killed before that process dies. */
#define GRANDCHILD_PATIENCE_MS 8000

enum {
    DFORK_SETUP_FAILED = 1 << 0,
    DFORK_NO_FORK = 1 << 1,
    DFORK_CHILD_FAILED = 1 << 2,
    DFORK_PARENT_RUNS = 1 << 3,
    DFORK_PARENT_QUEUE = 1 << 4,
};

static const char *const dfork_check_names[] = {
    "scene set-up failed",
    "the forking entry did not run or fork() failed",
    "the child of the entry's fork failed its checks (or hung)",
    "the parent ran the wrong entries after the fork",
    "the parent's queues were not empty and consistent at the end",
    NULL,
};

/* Bits of the forked child's exit status. */
enum {
    CHILD_RUNS_AFTER = 1 << 0,  /* the entries behind the forking one ran, once */
    CHILD_DEAD_QUEUE = 1 << 1,  /* the dead peer's entries ran in the child */
    CHILD_NEW_WORK = 1 << 2,    /* work queued in the child ran */
    CHILD_QUEUES = 1 << 3,      /* the queues were empty and consistent at the end */
    CHILD_STATES = 1 << 4,      /* one state left; a new one could be made */
};

#define DFORK_BEFORE 3 /* counted entries queued before the forking one */
#define DFORK_AFTER 3  /* and after it */
#define DFORK_PEER_ENTRIES 4

struct dfork_scene {
    ng_interp *in;
    ng_tstate *ts;
    uint64_t runs;      /* the main thread's counted entries */
    uint64_t peer_runs; /* the peer's */
    uint64_t forks;     /* forking entries run */
    pid_t child;        /* 0 in the child, after the fork */
    pid_t parent_pid;
    int in_child;

    pthread_t peer;
    ng_tstate *peer_ts;
    uint32_t peer_ready; /* 1: queued and checkpointing, 2: set-up failed */
    uint32_t peer_stop;
};

static struct dfork_scene dfork;

static void dfork_count(void *arg) { ng_atomic_fetch_add((uint64_t *)arg, 1, NG_RELAXED); }

/* The entry that forks. The child gets an alarm and carries on from here, into the
 * processing loop that ran the entry. */
static void dfork_entry(void *arg)
{
    struct dfork_scene *s = arg;
    ng_atomic_fetch_add(&s->forks, 1, NG_RELAXED);
    pid_t pid = fork();
    if (pid == 0) {
        alarm(CHILD_ALARM_S);
        /* Dies with the forking thread (the scene's process ended by its alarm, or the
         * runner by its watchdog): no orphan keeps the run's output pipe open. */
        (void)prctl(PR_SET_PDEATHSIG, SIGKILL);
        s->in_child = 1;
        return;
    }
    s->child = pid;
}

/* A second thread of the interpreter: queues entries, then waits detached (so it holds back
 * neither grace periods nor stops) until told to release its state. In the entry's child it
 * does not exist: its state and queue are the child handler's to clean up. */
static void *dfork_peer_main(void *arg)
{
    struct dfork_scene *s = arg;
    ng_tstate *ts;
    if (!attach_or_report(s->in, &ts, &s->peer_ready, NULL, 0))
        return NULL;
    int err = 0;
    for (int i = 0; i < DFORK_PEER_ENTRIES; i++)
        err |= ng_call_delayed(ts, dfork_count, &s->peer_runs, 8);
    err |= ng_tstate_detach(ts);
    ng_atomic_store(&s->peer_ts, ts, NG_RELEASE);
    ng_atomic_store(&s->peer_ready, err == NG_OK ? 1 : 2, NG_RELEASE);
    SPIN_UNTIL(ng_atomic_load(&s->peer_stop, NG_ACQUIRE));
    /* Its entries run now: the release processes them or hands them over. */
    ng_tstate_release(ts);
    return NULL;
}

static int dfork_setup(struct dfork_scene *s)
{
    memset(s, 0, sizeof *s);
    s->parent_pid = getpid();
    if (ng_interp_new(&s->in) != NG_OK)
        return DFORK_SETUP_FAILED;
    if (ng_tstate_new(s->in, &s->ts) != NG_OK || ng_tstate_attach(s->ts) != NG_OK)
        return DFORK_SETUP_FAILED;
    s->peer = spawn_thread(dfork_peer_main, s);
    SPIN_UNTIL(ng_atomic_load(&s->peer_ready, NG_ACQUIRE) != 0);
    if (ng_atomic_load(&s->peer_ready, NG_ACQUIRE) != 1)
        return DFORK_SETUP_FAILED;
    int err = 0;
    for (int i = 0; i < DFORK_BEFORE; i++)
        err |= ng_call_delayed(s->ts, dfork_count, &s->runs, 8);
    err |= ng_call_delayed(s->ts, dfork_entry, s, 8);
    for (int i = 0; i < DFORK_AFTER; i++)
        err |= ng_call_delayed(s->ts, dfork_count, &s->runs, 8);
    return err == NG_OK ? 0 : DFORK_SETUP_FAILED;
}

/* Whether every queue of the interpreter is empty, with counters that say so. */
static bool dfork_queues_empty(ng_interp *in)
{
    ng_interp_stats st;
    ng_interp_get_stats(in, &st);
    return st.delayed_items == 0 && st.delayed_bytes == 0 &&
           !ng_atomic_load(&in->delayed.has_work, NG_RELAXED);
}

/* Everything queued so far made due and run: an advance, a quiescent state, processing. */
static void dfork_flush(ng_tstate *ts)
{
    ng_qsbr_advance(&ts->interp->qsbr);
    ng_tstate_checkpoint(ts);
    ng_process_delayed(ts);
}

/* The entry's child, back from the processing that ran the entry: the entries behind it ran
 * (once); the dead peer's entries went to the interpreter's queue and run here; new work
 * runs; the queues end empty. No stdio, no test macros. */
static int dfork_child_checks(struct dfork_scene *s)
{
    int bits = 0;
    if (ng_atomic_load(&s->runs, NG_RELAXED) != DFORK_BEFORE + DFORK_AFTER ||
        ng_atomic_load(&s->forks, NG_RELAXED) != 1)
        bits |= CHILD_RUNS_AFTER;
    uint64_t more = 0;
    if (ng_call_delayed(s->ts, dfork_count, &more, 8) != NG_OK ||
        ng_free_delayed(s->ts, malloc(32), 32) != NG_OK)
        bits |= CHILD_NEW_WORK;
    for (int i = 0; i < 3; i++)
        dfork_flush(s->ts);
    if (ng_atomic_load(&more, NG_RELAXED) != 1)
        bits |= CHILD_NEW_WORK;
    if (ng_atomic_load(&s->peer_runs, NG_RELAXED) != DFORK_PEER_ENTRIES)
        bits |= CHILD_DEAD_QUEUE;
    if (!dfork_queues_empty(s->in) || ng_qsbr_barrier(s->ts) != NG_OK ||
        !dfork_queues_empty(s->in))
        bits |= CHILD_QUEUES;
    ng_interp_stats st;
    ng_interp_get_stats(s->in, &st);
    ng_tstate *extra = NULL;
    if (st.threads != 1 || ng_tstate_new(s->in, &extra) != NG_OK ||
        ng_tstate_release(extra) != NG_OK || ng_tstate_release(s->ts) != NG_OK ||
        ng_interp_delete(s->in) != NG_OK)
        bits |= CHILD_STATES;
    return bits;
}

/* The parent, after the processing that ran the forking entry: its child's report, the same
 * entries run here, and the peer's left for its own release. */
static int dfork_parent_checks(struct dfork_scene *s)
{
    int failed = 0;
    if (ng_atomic_load(&s->forks, NG_RELAXED) != 1 || s->child <= 0)
        return DFORK_NO_FORK;
    /* Well within the alarm of the scene's process: a child that hangs in the fork's child
     * handlers (before its own alarm is set) is killed here, not left orphaned. */
    int status = wait_child(s->child, GRANDCHILD_PATIENCE_MS);
    if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        failed |= DFORK_CHILD_FAILED;
    if (ng_atomic_load(&s->runs, NG_RELAXED) != DFORK_BEFORE + DFORK_AFTER ||
        ng_atomic_load(&s->peer_runs, NG_RELAXED) != 0)
        failed |= DFORK_PARENT_RUNS;
    ng_atomic_store(&s->peer_stop, 1, NG_RELEASE);
    join_thread(s->peer);
    for (int i = 0; i < 3; i++)
        dfork_flush(s->ts);
    if (ng_atomic_load(&s->peer_runs, NG_RELAXED) != DFORK_PEER_ENTRIES ||
        ng_atomic_load(&s->forks, NG_RELAXED) != 1)
        failed |= DFORK_PARENT_RUNS;
    if (!dfork_queues_empty(s->in))
        failed |= DFORK_PARENT_QUEUE;
    if (ng_tstate_release(s->ts) != NG_OK || ng_interp_delete(s->in) != NG_OK)
        failed |= DFORK_SETUP_FAILED;
    return failed;
}

/* The forking entry runs from the thread's own queue (a checkpoint's processing), or, with
 * `interp_queue`, from the interpreter's queue: the thread hands its queue over and processes
 * it at once, as a release does (ng_delayed_abandon with itself as the caller). */
static int dfork_scene_run(bool interp_queue)
{
    struct dfork_scene *s = &dfork;
    int failed = dfork_setup(s);
    if (failed) {
        ng_atomic_store(&s->peer_stop, 1, NG_RELEASE);
        return failed;
    }
    if (interp_queue)
        ng_delayed_abandon(s->ts, s->ts);
    for (int i = 0; i < 3 && ng_atomic_load(&s->runs, NG_RELAXED) < DFORK_BEFORE + DFORK_AFTER;
         i++)
        dfork_flush(s->ts);
    if (s->in_child)
        _exit(dfork_child_checks(s));
    return dfork_parent_checks(s);
}

static int dfork_own_queue_scene(void *arg)
{
    (void)arg;
    return dfork_scene_run(false);
}

static int dfork_interp_queue_scene(void *arg)
{
    (void)arg;
    return dfork_scene_run(true);
}

static void run_dfork_scene(int (*scene)(void *), const char *what)
{
    if (THREAD_SANITIZER) {
        int failed = scene(NULL);
        for (int bit = 0; dfork_check_names[bit] != NULL; bit++)
            if (failed & (1 << bit))
                harness_fail(__FILE__, __LINE__, "%s: %s", what, dfork_check_names[bit]);
        return;
    }
    pid_t pid = fork_checks(scene, NULL);
    if (CHECK_GT(pid, 0))
        check_child(pid, dfork_check_names, what);
}

TEST(delayed_fork_from_an_entry_of_the_own_queue)
{
    run_dfork_scene(dfork_own_queue_scene, "fork() from an entry of the thread's own queue");
}

TEST(delayed_fork_from_an_entry_of_the_interpreter_queue)
{
    run_dfork_scene(dfork_interp_queue_scene, "fork() from an entry of the interpreter queue");
}

/* ---- Re-entrancy from the interpreter's queue --------------------------------------------- */

enum { REENTER_LINKS = 200 };

struct reenter {
    ng_tstate *ts;
    uint32_t next;  /* the next link to queue */
    uint32_t ran;   /* links run */
    uint32_t twice; /* links run more than once */
    uint32_t errors;
    uint8_t seen[REENTER_LINKS];
};

static struct reenter reenter;

/* Each link queues the next one into the thread's own queue; some process from inside (a
 * nested drain of the interpreter's queue, whose mutex the outer drain does not hold while
 * the entry runs), and some hand the own queue over to the interpreter's and process it
 * there, from inside an entry of that very queue. */
static void reenter_link(void *arg)
{
    struct reenter *r = &reenter;
    uint32_t me = (uint32_t)(uintptr_t)arg;
    if (r->seen[me]++)
        r->twice++;
    r->ran++;
    if (r->next < REENTER_LINKS) {
        uint32_t n = r->next++;
        if (ng_call_delayed(r->ts, reenter_link, (void *)(uintptr_t)n, 16) != NG_OK ||
            ng_free_delayed(r->ts, malloc(16), 16) != NG_OK)
            r->errors++;
    }
    if (me % 5 == 1 && ng_process_delayed(r->ts) < 0)
        r->errors++;
    if (me % 5 == 3)
        ng_delayed_abandon(r->ts, r->ts);
}

static int reenter_scene(void *arg)
{
    (void)arg;
    struct reenter *r = &reenter;
    memset(r, 0, sizeof *r);
    ng_interp *in = NULL;
    if (ng_interp_new(&in) != NG_OK || ng_tstate_new(in, &r->ts) != NG_OK ||
        ng_tstate_attach(r->ts) != NG_OK)
        return DFORK_SETUP_FAILED;
    int failed = 0;
    r->next = 4;
    for (uint32_t i = 0; i < 4; i++)
        if (ng_call_delayed(r->ts, reenter_link, (void *)(uintptr_t)i, 16) != NG_OK)
            failed |= DFORK_SETUP_FAILED;
    /* Into the interpreter's queue, run from there. */
    ng_delayed_abandon(r->ts, r->ts);
    for (int round = 0; round < 1000 && r->ran < REENTER_LINKS; round++)
        dfork_flush(r->ts);
    dfork_flush(r->ts);
    if (r->ran != REENTER_LINKS || r->twice != 0 || r->errors != 0)
        failed |= DFORK_PARENT_RUNS;
    for (uint32_t i = 0; i < REENTER_LINKS; i++)
        if (r->seen[i] != 1)
            failed |= DFORK_PARENT_RUNS;
    if (!dfork_queues_empty(in))
        failed |= DFORK_PARENT_QUEUE;
    if (ng_tstate_release(r->ts) != NG_OK || ng_interp_delete(in) != NG_OK)
        failed |= DFORK_SETUP_FAILED;
    return failed;
}

TEST(delayed_interpreter_queue_entries_may_queue_process_and_hand_over_from_inside)
{
    run_dfork_scene(reenter_scene, "entries of the interpreter queue that queue more");
}
