/* Extension hooks (ng_ext_register in nogil/tstate.h): when a registered component hears that
 * a thread state goes away (release, thread exit, dead thread in a fork child), that a fork
 * is coming, that a fork child needs its data adopted, and that an interpreter's memory goes. */
#define _GNU_SOURCE

#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fork_helpers.h"
#include "harness.h"
#include "tstate_helpers.h"

/* What the probe's hooks saw, for the interpreter under test only (other tests' interpreters
 * pass through the same hooks). Seq-cst: read by the test thread after joins. */
static ng_interp *watched;
static int probe_index = -1;
static int clears, fork_children, interp_frees;
static uint64_t clear_thread;       /* ng_thread_id() of the thread that ran the last clear */
static int clear_saw_slot;          /* ts->qsbr was non-NULL in the last clear */
static ng_tstate *fork_survivor;

static void probe_clear(ng_tstate *ts, int index)
{
    if (ts->interp != ng_atomic_load(&watched, NG_SEQ_CST) || index != probe_index)
        return;
    ng_atomic_fetch_add(&clears, 1, NG_SEQ_CST);
    ng_atomic_store(&clear_thread, ng_thread_id(), NG_SEQ_CST);
    ng_atomic_store(&clear_saw_slot, ts->qsbr != NULL, NG_SEQ_CST);
    ts->ext[index] = NULL;
}

static void probe_fork_child(ng_interp *interp, ng_tstate *survivor, int index)
{
    if (interp != watched || index != probe_index)
        return;
    fork_children++;
    fork_survivor = survivor;
}

static void probe_interp_free(ng_interp *interp, int index)
{
    if (interp == ng_atomic_load(&watched, NG_SEQ_CST) && index == probe_index)
        ng_atomic_fetch_add(&interp_frees, 1, NG_SEQ_CST);
}

static const ng_ext_hooks probe_hooks = {
    .tstate_clear = probe_clear,
    .after_fork_child = probe_fork_child,
    .interp_free = probe_interp_free,
};

static ng_interp *watch_new_interp(void)
{
    if (probe_index < 0)
        probe_index = ng_ext_register(&probe_hooks);
    if (!CHECK(probe_index >= 0 && probe_index < NG_EXT_MAX))
        return NULL;
    ng_interp *in = new_interp();
    ng_atomic_store(&watched, in, NG_SEQ_CST);
    ng_atomic_store(&clears, 0, NG_SEQ_CST);
    ng_atomic_store(&interp_frees, 0, NG_SEQ_CST);
    return in;
}

TEST(ext_register_returns_one_index_per_hooks)
{
    int first = ng_ext_register(&probe_hooks);
    CHECK(first >= 0 && first < NG_EXT_MAX);
    CHECK_CMP(ng_ext_register(&probe_hooks), ==, first);
    CHECK_STATUS(ng_ext_register(NULL), NG_EINVAL);
    probe_index = first;
}

static void *exit_with_state(void *arg)
{
    ng_tstate *ts = NULL;
    if (CHECK_STATUS(ng_tstate_new(arg, &ts), NG_OK))
        ts->ext[probe_index] = ts; /* any non-NULL marker */
    return (void *)(uintptr_t)ng_thread_id();
}

TEST(ext_clear_runs_once_on_the_owner_at_release_and_at_thread_exit)
{
    ng_interp *in = watch_new_interp();
    REQUIRE(in != NULL);

    /* No data, no call. */
    ng_tstate *plain = NULL;
    REQUIRE(CHECK_STATUS(ng_tstate_new(in, &plain), NG_OK));
    CHECK_STATUS(ng_tstate_release(plain), NG_OK);
    CHECK_CMP(ng_atomic_load(&clears, NG_SEQ_CST), ==, 0);

    /* Explicit release: on this thread, with the QSBR slot still registered. */
    ng_tstate *ts = NULL;
    REQUIRE(CHECK_STATUS(ng_tstate_new(in, &ts), NG_OK));
    ts->ext[probe_index] = ts;
    CHECK_STATUS(ng_tstate_release(ts), NG_OK);
    CHECK_CMP(ng_atomic_load(&clears, NG_SEQ_CST), ==, 1);
    CHECK_CMP(ng_atomic_load(&clear_thread, NG_SEQ_CST), ==, ng_thread_id());
    CHECK(ng_atomic_load(&clear_saw_slot, NG_SEQ_CST));

    /* Thread exit without a release: the key destructor runs it on the exiting thread. */
    uint64_t exited = (uint64_t)(uintptr_t)join_thread(spawn_thread(exit_with_state, in));
    CHECK_CMP(ng_atomic_load(&clears, NG_SEQ_CST), ==, 2);
    CHECK_CMP(ng_atomic_load(&clear_thread, NG_SEQ_CST), ==, exited);

    CHECK_CMP(ng_atomic_load(&interp_frees, NG_SEQ_CST), ==, 0);
    CHECK_STATUS(ng_interp_delete(in), NG_OK);
    CHECK_CMP(ng_atomic_load(&interp_frees, NG_SEQ_CST), ==, 1);
    CHECK_CMP(ng_atomic_load(&clears, NG_SEQ_CST), ==, 2);
    ng_atomic_store(&watched, NULL, NG_SEQ_CST);
}

/* ---- fork() -------------------------------------------------------------------------- */

struct holder {
    ng_interp *in;
    ng_event ready, done;
};

static void *hold_state(void *arg)
{
    struct holder *h = arg;
    ng_tstate *ts = NULL;
    if (CHECK_STATUS(ng_tstate_new(h->in, &ts), NG_OK))
        ts->ext[probe_index] = ts;
    ng_event_notify(&h->ready);
    ng_event_wait(&h->done);
    if (ts != NULL) {
        ts->ext[probe_index] = NULL; /* the parent's release: no clear expected here */
        ng_tstate_release(ts);
    }
    return NULL;
}

/* Exit status bits of the child (no printing after fork). */
enum {
    CHILD_CLEAR_COUNT = 1 << 0,   /* the dead thread's state was cleared once */
    CHILD_CLEAR_THREAD = 1 << 1,  /* ... on the surviving thread */
    CHILD_CLEAR_SLOT = 1 << 2,    /* ... with its recycled slot already NULL */
    CHILD_FORK_HOOK = 1 << 3,     /* after_fork_child ran once, with our state */
    CHILD_REGISTER_FULL = 1 << 4, /* registration stops at NG_EXT_MAX with NG_EBUSY */
};

static int fork_child_checks(ng_tstate *me)
{
    int bad = 0;
    if (ng_atomic_load(&clears, NG_SEQ_CST) != 1)
        bad |= CHILD_CLEAR_COUNT;
    if (ng_atomic_load(&clear_thread, NG_SEQ_CST) != ng_thread_id())
        bad |= CHILD_CLEAR_THREAD;
    if (ng_atomic_load(&clear_saw_slot, NG_SEQ_CST))
        bad |= CHILD_CLEAR_SLOT;
    if (fork_children != 1 || fork_survivor != me)
        bad |= CHILD_FORK_HOOK;
    /* Fill the table: distinct hooks until the limit, then NG_EBUSY. */
    static ng_ext_hooks fillers[NG_EXT_MAX];
    int got = 0, status = 0;
    for (int i = 0; i < NG_EXT_MAX && status >= 0; i++) {
        status = ng_ext_register(&fillers[i]);
        got += status >= 0;
    }
    if (status != NG_EBUSY || got >= NG_EXT_MAX || ng_ext_register(&probe_hooks) != probe_index)
        bad |= CHILD_REGISTER_FULL;
    return bad;
}

TEST(ext_fork_child_clears_dead_threads_states_and_calls_the_fork_hook)
{
    ng_interp *in = watch_new_interp();
    REQUIRE(in != NULL);
    ng_tstate *me = NULL;
    REQUIRE(CHECK_STATUS(ng_tstate_new(in, &me), NG_OK));
    struct holder h = {.in = in};
    pthread_t t = spawn_thread(hold_state, &h);
    ng_event_wait(&h.ready);
    fork_children = 0;

    pid_t pid = fork();
    if (pid == 0) {
        alarm(20);
        _exit(fork_child_checks(me));
    }
    REQUIRE(pid > 0);
    int raw = wait_child(pid, 30000);
    CHECK(raw != -1 && WIFEXITED(raw));
    int status = raw != -1 && WIFEXITED(raw) ? WEXITSTATUS(raw) : 0;
    CHECK_CMP(status, ==, 0);
    if (status > 0) {
        static const char *const names[] = {
            "dead thread's state cleared once", "cleared on the surviving thread",
            "cleared with its slot NULL", "after_fork_child ran with the survivor",
            "registration stops at NG_EXT_MAX",
        };
        for (int bit = 0; bit < 5; bit++)
            if (status & (1 << bit))
                harness_fail(__FILE__, __LINE__, "child: %s failed", names[bit]);
    }
    /* The parent saw no clear and no fork hook. */
    CHECK_CMP(ng_atomic_load(&clears, NG_SEQ_CST), ==, 0);
    CHECK_CMP(fork_children, ==, 0);

    ng_event_notify(&h.done);
    join_thread(t);
    CHECK_STATUS(ng_tstate_release(me), NG_OK);
    CHECK_STATUS(ng_interp_delete(in), NG_OK);
    ng_atomic_store(&watched, NULL, NG_SEQ_CST);
}

/* ---- The process-wide fork hooks: order ------------------------------------------------ */

/* Two more extensions, registered one after the other, and a log they write at fork: two
 * characters per call, the hook (B before_fork, P after_fork_parent, R after_fork_child_reset,
 * X tstate_clear, C after_fork_child; b/p when the watched world was not stopped) and which
 * extension (1 the early one, 2 the late one). Only the forking thread writes it, while
 * fork_logging is set (other tests fork too). */
static int early_index = -1, late_index = -1;
static ng_interp *fork_watched;
static int fork_logging;
static char fork_log[64];
static size_t fork_log_len;

static void note(char hook, int index)
{
    if (!ng_atomic_load(&fork_logging, NG_SEQ_CST) || fork_log_len + 2 >= sizeof fork_log)
        return;
    char who = index == early_index ? '1' : index == late_index ? '2' : 0;
    if (who == 0)
        return;
    fork_log[fork_log_len++] = hook;
    fork_log[fork_log_len++] = who;
    fork_log[fork_log_len] = 0;
}

/* Upper case when the watched interpreter's world is stopped (documented for both hooks). */
static char stopped_or_not(char hook)
{
    /* The hooks stay registered after the test: a later test's fork calls them with no
     * interpreter watched (note() ignores that call). */
    ng_interp *in = ng_atomic_load(&fork_watched, NG_SEQ_CST);
    if (in == NULL)
        return hook;
    return ng_world_stopped(in) ? hook : (char)(hook - 'A' + 'a');
}

static void log_before_fork(int index) { note(stopped_or_not('B'), index); }
static void log_after_fork_parent(int index) { note(stopped_or_not('P'), index); }
static void log_after_fork_child_reset(int index) { note('R', index); }

static void log_clear(ng_tstate *ts, int index)
{
    note('X', index);
    ts->ext[index] = NULL;
}

static void log_fork_child(ng_interp *interp, ng_tstate *survivor, int index)
{
    if (interp == fork_watched)
        note('C', index);
}

/* Two objects with the same hooks: registration is by pointer. */
#define LOGGING_HOOKS                                                                   \
    {                                                                                   \
        .tstate_clear = log_clear, .after_fork_child = log_fork_child,                  \
        .before_fork = log_before_fork, .after_fork_parent = log_after_fork_parent,     \
        .after_fork_child_reset = log_after_fork_child_reset,                           \
    }
static const ng_ext_hooks early_hooks = LOGGING_HOOKS;
static const ng_ext_hooks late_hooks = LOGGING_HOOKS;

/* A thread whose state carries data of both extensions until `done`. */
static void *hold_logged_state(void *arg)
{
    struct holder *h = arg;
    ng_tstate *ts = NULL;
    if (CHECK_STATUS(ng_tstate_new(h->in, &ts), NG_OK))
        ts->ext[early_index] = ts->ext[late_index] = ts;
    ng_event_notify(&h->ready);
    ng_event_wait(&h->done);
    if (ts != NULL) {
        ts->ext[early_index] = ts->ext[late_index] = NULL; /* no clear expected in the parent */
        ng_tstate_release(ts);
    }
    return NULL;
}

/* The child sends its log through the pipe (write(2): no stdio after fork). */
static int send_fork_log(void *fd)
{
    return write(*(int *)fd, fork_log, fork_log_len) == (ssize_t)fork_log_len ? 0 : 1;
}

static void check_log(const char *what, const char *got, const char *want)
{
    if (strcmp(got, want) != 0)
        harness_fail(__FILE__, __LINE__, "%s: hooks ran as %s, want %s", what, got, want);
}

/* Registered 1 then 2: before_fork in that order once the world is stopped, the parent hooks
 * in the reverse order before it restarts; in the child the resets in the reverse order
 * before the dead thread's state is cleared, after_fork_child last, in registration order. */
TEST(ext_fork_hooks_run_in_the_documented_order)
{
    if (early_index < 0) {
        early_index = ng_ext_register(&early_hooks);
        late_index = ng_ext_register(&late_hooks);
    }
    REQUIRE(early_index >= 0 && late_index > early_index);
    TSTATE_SCENE(in, me);
    struct holder h = {.in = in};
    pthread_t t = spawn_thread(hold_logged_state, &h);
    ng_event_wait(&h.ready);

    int fds[2];
    REQUIRE(pipe(fds) == 0);
    fork_watched = in;
    fork_log_len = 0;
    fork_log[0] = 0;
    ng_atomic_store(&fork_logging, 1, NG_SEQ_CST);
    pid_t pid = fork_checks(send_fork_log, &fds[1]);
    ng_atomic_store(&fork_logging, 0, NG_SEQ_CST);
    close(fds[1]);
    char child_log[sizeof fork_log] = {0};
    size_t got = 0;
    ssize_t r;
    while (pid > 0 && got + 1 < sizeof child_log &&
           (r = read(fds[0], child_log + got, sizeof child_log - 1 - got)) > 0)
        got += (size_t)r;
    close(fds[0]);
    REQUIRE(pid > 0);
    check_child(pid, (const char *const[]){"the log reached the parent", NULL}, "fork hooks");

    check_log("parent", fork_log, "B1B2P2P1");
    check_log("child", child_log, "B1B2R2R1X1X2C1C2");

    ng_event_notify(&h.done);
    join_thread(t);
    end_scene(in, me);
    fork_watched = NULL;
}
