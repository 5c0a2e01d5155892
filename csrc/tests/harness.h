/* A deliberately small test framework for the standalone C runner.
 *
 * Tests register themselves with TEST(name) (a constructor adds them to a table), so adding a
 * test never means editing a list. Checks record the failure with file:line and carry on, so
 * one run reports every broken property, not just the first; REQUIRE additionally returns
 * from the test when going on would only hang or cascade. Checks may be used from any thread
 * of the test process, but never in the child of fork() (printing is not safe there: children
 * report through their exit status instead).
 *
 * A watchdog thread (runner.c) ends the whole process with status 2 if one test runs longer
 * than its time limit, so a hang is reported as a failure of that test rather than a stuck CI.
 */
#ifndef NG_TEST_HARNESS_H
#define NG_TEST_HARNESS_H

#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "nogil.h"

/* ---- Registration ------------------------------------------------------------------------ */

typedef void ng_test_body(void);

void harness_register(const char *name, ng_test_body *body, const char *file, int line);

#define TEST(name)                                                                      \
    static void test_body_##name(void);                                                 \
    __attribute__((constructor)) static void test_register_##name(void)                 \
    {                                                                                   \
        harness_register(#name, test_body_##name, __FILE__, __LINE__);                  \
    }                                                                                   \
    static void test_body_##name(void)

/* ---- Checks ------------------------------------------------------------------------------ */

/* Records a failure of the running test (thread-safe) and prints "file:line: message". */
void harness_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Number of failures recorded so far in the running test. */
int harness_failures(void);

/* Each check is an expression whose value is whether it held, so a test can react to a
 * failure (e.g. skip steps that would only hang) without losing the report. */
#define CHECK(cond)                                                                     \
    __extension__({                                                                     \
        bool check_ok_ = (cond);                                                        \
        if (!check_ok_)                                                                 \
            harness_fail(__FILE__, __LINE__, "CHECK(%s) failed", #cond);                \
        check_ok_;                                                                      \
    })

/* Integer comparison; both sides are evaluated once and printed on failure. The text is
 * stringified here, before macro expansion, so messages show the expressions as written. */
#define CHECK_CMP(a, op, b) CHECK_CMP_TEXT(a, op, b, #a, #op, #b)
#define CHECK_EQ(a, b) CHECK_CMP_TEXT(a, ==, b, #a, "==", #b)
#define CHECK_NE(a, b) CHECK_CMP_TEXT(a, !=, b, #a, "!=", #b)
#define CHECK_LT(a, b) CHECK_CMP_TEXT(a, <, b, #a, "<", #b)
#define CHECK_LE(a, b) CHECK_CMP_TEXT(a, <=, b, #a, "<=", #b)
#define CHECK_GT(a, b) CHECK_CMP_TEXT(a, >, b, #a, ">", #b)
#define CHECK_GE(a, b) CHECK_CMP_TEXT(a, >=, b, #a, ">=", #b)

#define CHECK_CMP_TEXT(a, op, b, a_text, op_text, b_text)                               \
    __extension__({                                                                     \
        long long check_a_ = (long long)(a), check_b_ = (long long)(b);                 \
        bool check_ok_ = check_a_ op check_b_;                                          \
        if (!check_ok_)                                                                 \
            harness_fail(__FILE__, __LINE__, "CHECK(%s %s %s) failed: %lld vs %lld",     \
                         a_text, op_text, b_text, check_a_, check_b_);                  \
        check_ok_;                                                                      \
    })

/* A nogil status code; the failure message names both codes (ng_strerror). */
#define CHECK_STATUS(expr, expected)                                                    \
    __extension__({                                                                     \
        int check_got_ = (int)(expr), check_want_ = (int)(expected);                    \
        bool check_ok_ = check_got_ == check_want_;                                     \
        if (!check_ok_)                                                                 \
            harness_fail(__FILE__, __LINE__, "%s returned %d (%s), expected %d (%s)",    \
                         #expr, check_got_, ng_strerror(check_got_), check_want_,        \
                         ng_strerror(check_want_));                                      \
        check_ok_;                                                                      \
    })

#define CHECK_PTR_EQ(a, b)                                                              \
    __extension__({                                                                     \
        const void *check_a_ = (a), *check_b_ = (b);                                    \
        bool check_ok_ = check_a_ == check_b_;                                          \
        if (!check_ok_)                                                                 \
            harness_fail(__FILE__, __LINE__, "CHECK(%s == %s) failed: %p vs %p", #a, #b, \
                         check_a_, check_b_);                                           \
        check_ok_;                                                                      \
    })

/* Like CHECK, but leaves the test (only usable in the test body itself). */
#define REQUIRE(cond)                                                                   \
    do {                                                                                \
        if (!CHECK(cond))                                                               \
            return;                                                                     \
    } while (0)

/* ---- Time, sleeping, polling ----------------------------------------------------------- */

/* CLOCK_MONOTONIC in ns, read directly (not through nogil, so time tests are independent). */
int64_t now_ns(void);
static inline int64_t elapsed_ms_since(int64_t start_ns) { return (now_ns() - start_ns) / 1000000; }

void sleep_ms(int64_t ms);
void sleep_us(int64_t us);

/* Lowers the calling thread's timer slack to 1 us, so that short sleeps and timeouts are
 * not stretched by the kernel's default 50 us slack (stress loops rely on tight timing). */
void set_tight_timer_slack(void);

/* Polls `cond` every 1 ms until it holds or `timeout_ms` passes; the value is whether it
 * held. */
#define WAIT_UNTIL(cond, timeout_ms)                                                    \
    __extension__({                                                                     \
        int64_t wait_deadline_ = now_ns() + (int64_t)(timeout_ms) * 1000000;            \
        bool wait_ok_;                                                                  \
        while (!(wait_ok_ = (cond)) && now_ns() < wait_deadline_)                       \
            sleep_ms(1);                                                                \
        wait_ok_;                                                                       \
    })

/* Default patience for "this must happen soon" waits: long, because sanitizers are slow. */
#define PATIENCE_MS 10000

/* Spins (with sched_yield) until `cond` holds; for tight per-round hand-shakes in stress
 * loops where 1 ms polling would dominate. No timeout: the watchdog catches a hang. */
#define SPIN_UNTIL(cond)                                                                \
    do {                                                                                \
        while (!(cond))                                                                 \
            sched_yield();                                                              \
    } while (0)

/* ---- Stress sizes ----------------------------------------------------------------------- */

/* NG_TEST_SCALE (default 1; fractions allowed, e.g. 0.1 for a quick run). */
double test_scale(void);
/* n * scale, at least 1. */
long scaled(long n);

/* ---- Threads and processes -------------------------------------------------------------- */

pthread_t spawn_thread(void *(*fn)(void *), void *arg);
void *join_thread(pthread_t t);

/* Waits for a child process for up to timeout_ms; kills it (SIGKILL) if it is still running
 * then. Returns the raw waitpid status, or -1 if it had to be killed. */
int wait_child(pid_t pid, int64_t timeout_ms);

/* A fast per-thread pseudo-random generator (xorshift64*); the state must be nonzero. */
static inline uint64_t rng_next(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * UINT64_C(2685821657736338717);
}

/* ---- Signals ---------------------------------------------------------------------------- */

/* Installs a handler for `sig` that only counts deliveries, WITHOUT SA_RESTART, so a signal
 * interrupts a blocking system call with EINTR. Restore with restore_signal(). */
void install_counting_handler(int sig);
void restore_signal(int sig);
/* Deliveries seen by the counting handler since it was installed. */
int counted_signals(void);

#endif /* NG_TEST_HARNESS_H */
