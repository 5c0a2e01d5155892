/* The standalone C test runner: runs every registered test (or those whose names contain one
 * of the command-line arguments), prints one "ok"/"FAIL" line per test and a final
 * "N passed, N failed" line, and exits nonzero if anything failed.
 *
 *   build/ctest-opt                 run everything
 *   build/ctest-opt mutex fork      run tests whose names contain "mutex" or "fork"
 *   build/ctest-opt --list          print the test names
 *   NG_TEST_SCALE=0.1 build/...     shrink the stress loops (fractions allowed)
 *   NG_TEST_WATCHDOG_S=300 build/... per-test hang limit in seconds (default 60 x scale)
 */
#define _GNU_SOURCE
#include "harness.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- Registration ------------------------------------------------------------------------ */

#define MAX_TESTS 256

struct registered_test {
    const char *name;
    ng_test_body *body;
    const char *file;
    int line;
};

static struct registered_test tests[MAX_TESTS];
static int test_count;

void harness_register(const char *name, ng_test_body *body, const char *file, int line)
{
    if (test_count == MAX_TESTS) {
        fprintf(stderr, "harness: more than %d tests; raise MAX_TESTS\n", MAX_TESTS);
        abort();
    }
    tests[test_count++] = (struct registered_test){name, body, file, line};
}

/* Files run from the most basic layer up, so that when a primitive breaks its own tests fail
 * first and the failures of the layers built on it are easier to read. */
static const char *const file_order[] = {
    "test_time_sema.c", "test_parking_lot.c", "test_mutex.c", "test_locks.c", "test_fork.c",
    "test_qsbr.c", "test_tstate.c", "test_tstate_edge_cases.c", "test_stw_gil.c",
    "test_tstate_regressions.c", "test_fork_order.c", "test_fork_stopper.c", "test_delayed_free.c",
    "test_delayed_fork.c", "test_qsbr_torture.c",
    "test_qsbr_backpressure.c",
    "test_alloc.c", "test_alloc_qsbr.c", "test_alloc_threads.c",
};

static const char *base_name(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

static int file_rank(const char *path)
{
    const char *base = base_name(path);
    int n = (int)(sizeof file_order / sizeof file_order[0]);
    for (int i = 0; i < n; i++)
        if (strcmp(base, file_order[i]) == 0)
            return i;
    return n;
}

static int compare_tests(const void *pa, const void *pb)
{
    const struct registered_test *a = pa, *b = pb;
    int ra = file_rank(a->file), rb = file_rank(b->file);
    if (ra != rb)
        return ra - rb;
    int c = strcmp(base_name(a->file), base_name(b->file));
    if (c != 0)
        return c;
    return a->line - b->line;
}

/* ---- Failure recording ------------------------------------------------------------------- */

/* Printing is capped per test so a stress loop that fails every round stays readable. */
#define MAX_PRINTED_FAILURES 20

static int failures_in_test;

void harness_fail(const char *file, int line, const char *fmt, ...)
{
    int n = ng_atomic_fetch_add(&failures_in_test, 1, NG_SEQ_CST);
    if (n >= MAX_PRINTED_FAILURES) {
        if (n == MAX_PRINTED_FAILURES)
            printf("    (further failures of this test not printed)\n");
        return;
    }
    char message[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    /* One printf per line: stdio locks the stream, so lines from threads do not interleave. */
    printf("    %s:%d: %s\n", base_name(file), line, message);
}

int harness_failures(void) { return ng_atomic_load(&failures_in_test, NG_SEQ_CST); }

/* ---- Time -------------------------------------------------------------------------------- */

int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void sleep_ns(int64_t ns)
{
    struct timespec ts = {(time_t)(ns / 1000000000), (long)(ns % 1000000000)};
    /* Signals used by some tests interrupt nanosleep; finish the sleep anyway. */
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

void sleep_ms(int64_t ms) { sleep_ns(ms * 1000000); }
void sleep_us(int64_t us) { sleep_ns(us * 1000); }

void set_tight_timer_slack(void) { prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL); }

/* ---- Scale ------------------------------------------------------------------------------- */

static double scale_factor = -1;

double test_scale(void)
{
    /* Read once, before any test thread exists (main calls this first). */
    if (scale_factor < 0) {
        const char *env = getenv("NG_TEST_SCALE");
        double value = 1;
        if (env != NULL && *env != '\0') {
            char *end;
            value = strtod(env, &end);
            if (*end != '\0' || !(value > 0)) {
                fprintf(stderr, "harness: bad NG_TEST_SCALE=%s, using 1\n", env);
                value = 1;
            }
        }
        scale_factor = value;
    }
    return scale_factor;
}

long scaled(long n)
{
    double v = (double)n * test_scale();
    return v < 1 ? 1 : (long)v;
}

/* ---- Threads and processes --------------------------------------------------------------- */

pthread_t spawn_thread(void *(*fn)(void *), void *arg)
{
    pthread_t t;
    int err = pthread_create(&t, NULL, fn, arg);
    if (err != 0) {
        /* Nothing sensible can follow: the test's waits would just time out. */
        fprintf(stderr, "harness: pthread_create: %s\n", strerror(err));
        _exit(3);
    }
    return t;
}

void *join_thread(pthread_t t)
{
    void *result = NULL;
    int err = pthread_join(t, &result);
    if (err != 0) {
        fprintf(stderr, "harness: pthread_join: %s\n", strerror(err));
        _exit(3);
    }
    return result;
}

int wait_child(pid_t pid, int64_t timeout_ms)
{
    int64_t deadline = now_ns() + timeout_ms * 1000000;
    for (;;) {
        int status;
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            return status;
        if (r < 0 && errno != EINTR)
            return -1;
        if (now_ns() >= deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            return -1;
        }
        sleep_ms(1);
    }
}

/* ---- Signals ----------------------------------------------------------------------------- */

static int signal_count;
static struct sigaction saved_actions[NSIG];

static void counting_handler(int sig)
{
    (void)sig;
    ng_atomic_fetch_add(&signal_count, 1, NG_SEQ_CST);
}

void install_counting_handler(int sig)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = counting_handler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0; /* no SA_RESTART: the point is to interrupt blocking calls */
    ng_atomic_store(&signal_count, 0, NG_SEQ_CST);
    sigaction(sig, &sa, &saved_actions[sig]);
}

void restore_signal(int sig) { sigaction(sig, &saved_actions[sig], NULL); }

int counted_signals(void) { return ng_atomic_load(&signal_count, NG_SEQ_CST); }

/* ---- Watchdog ---------------------------------------------------------------------------- */

static pthread_mutex_t watchdog_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t watchdog_cond = PTHREAD_COND_INITIALIZER;
static const char *watched_test;   /* NULL between tests */
static int64_t watched_deadline_ns;
static int64_t watchdog_limit_s;
/* Tallies, shared with the watchdog so an aborted run still ends with its summary line. */
static int tests_passed, tests_failed;
/* Set by the watchdog once it runs: its start-up allocates (the sanitizers' thread set-up
 * does), and a test that forked meanwhile would leave its child an allocator lock that no
 * thread there will ever release. */
static bool watchdog_started;

static void *watchdog_main(void *unused)
{
    (void)unused;
    pthread_mutex_lock(&watchdog_lock);
    watchdog_started = true;
    pthread_cond_broadcast(&watchdog_cond);
    for (;;) {
        if (watched_test != NULL && now_ns() >= watched_deadline_ns) {
            printf("FAIL %s\n", watched_test);
            printf("    watchdog: the test ran longer than %lld s (hung?); aborting the run\n",
                   (long long)watchdog_limit_s);
            printf("%d passed, %d failed\n", ng_atomic_load(&tests_passed, NG_SEQ_CST),
                   ng_atomic_load(&tests_failed, NG_SEQ_CST) + 1);
            fflush(stdout);
            _exit(2);
        }
        /* Wake at least once a second; the condition variable uses CLOCK_REALTIME, so this
         * only bounds the sleep, the decision above uses the monotonic clock. */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 1;
        pthread_cond_timedwait(&watchdog_cond, &watchdog_lock, &ts);
    }
    return NULL;
}

static void watch(const char *name)
{
    pthread_mutex_lock(&watchdog_lock);
    watched_test = name;
    watched_deadline_ns = now_ns() + watchdog_limit_s * 1000000000;
    pthread_mutex_unlock(&watchdog_lock);
}

/* ---- main -------------------------------------------------------------------------------- */

static bool selected(const char *name, int argc, char **argv)
{
    if (argc <= 1)
        return true;
    for (int i = 1; i < argc; i++)
        if (strstr(name, argv[i]) != NULL)
            return true;
    return false;
}

int main(int argc, char **argv)
{
    /* Line buffering: output survives a watchdog _exit, and a forked child inherits no
     * half-written buffer. */
    setvbuf(stdout, NULL, _IOLBF, 0);
    qsort(tests, (size_t)test_count, sizeof tests[0], compare_tests);

    if (argc == 2 && (strcmp(argv[1], "--list") == 0 || strcmp(argv[1], "-l") == 0)) {
        for (int i = 0; i < test_count; i++)
            printf("%s\n", tests[i].name);
        return 0;
    }

    /* Bigger scales make stress loops longer; the hang limit grows with them.
     * NG_TEST_WATCHDOG_S overrides it (slow machines, debugging a hang). */
    double scale = test_scale();
    watchdog_limit_s = (int64_t)(60 * (scale > 1 ? scale : 1));
    const char *limit_env = getenv("NG_TEST_WATCHDOG_S");
    if (limit_env != NULL && atoll(limit_env) > 0)
        watchdog_limit_s = atoll(limit_env);
    spawn_thread(watchdog_main, NULL);
    pthread_mutex_lock(&watchdog_lock);
    while (!watchdog_started)
        pthread_cond_wait(&watchdog_cond, &watchdog_lock);
    pthread_mutex_unlock(&watchdog_lock);

    for (int i = 0; i < test_count; i++) {
        if (!selected(tests[i].name, argc, argv))
            continue;
        ng_atomic_store(&failures_in_test, 0, NG_SEQ_CST);
        watch(tests[i].name);
        int64_t start = now_ns();
        tests[i].body();
        int64_t ms = elapsed_ms_since(start);
        watch(NULL);
        if (harness_failures() == 0) {
            printf("ok %s (%lld ms)\n", tests[i].name, (long long)ms);
            ng_atomic_fetch_add(&tests_passed, 1, NG_SEQ_CST);
        } else {
            printf("FAIL %s\n", tests[i].name);
            ng_atomic_fetch_add(&tests_failed, 1, NG_SEQ_CST);
        }
    }
    int passed = tests_passed, failed = tests_failed;
    printf("%d passed, %d failed\n", passed, failed);
    if (passed + failed == 0) {
        /* A misspelt filter must not look like a green run. */
        fprintf(stderr, "no test matched\n");
        return 1;
    }
    return failed == 0 ? 0 : 1;
}
