/* Helpers shared by the tests that fork (test_fork.c, test_tstate_regressions.c).
 *
 * Children use no stdio and no test macros (not safe after a multi-threaded fork); they report
 * through their exit status, one bit per failed group of checks, and an alarm() turns a hang
 * into a signal death the parent reports. */
#ifndef NG_TEST_FORK_HELPERS_H
#define NG_TEST_FORK_HELPERS_H

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

/* Child checks time out themselves well before the parent gives up on them. */
#define CHILD_ALARM_S 20
#define CHILD_PATIENCE_MS ((CHILD_ALARM_S + 10) * 1000)

/* Forks a child that runs child(arg) under the alarm and exits with its value, the bit set of
 * its failed check groups. The parent gets the child's pid (-1 if fork failed). */
static inline pid_t fork_checks(int (*child)(void *), void *arg)
{
    pid_t pid = fork();
    if (pid == 0) {
        alarm(CHILD_ALARM_S);
        _exit(child(arg));
    }
    return pid;
}

/* Waits for a child of fork_checks (killed after CHILD_PATIENCE_MS) and records a failure for
 * each group it reports: bit i of its exit status is check_names[i], a list that ends with
 * NULL. `what` names the scene in the messages. */
static inline void check_child(pid_t pid, const char *const check_names[], const char *what)
{
    int status = wait_child(pid, CHILD_PATIENCE_MS);
    if (status == -1) {
        harness_fail(__FILE__, __LINE__, "%s: child hung and was killed", what);
        return;
    }
    if (WIFSIGNALED(status)) {
        harness_fail(__FILE__, __LINE__, "%s: child died of signal %d%s", what,
                     WTERMSIG(status), WTERMSIG(status) == SIGALRM ? " (it hung)" : "");
        return;
    }
    if (!WIFEXITED(status)) {
        harness_fail(__FILE__, __LINE__, "%s: child ended with status %d", what, status);
        return;
    }
    int code = WEXITSTATUS(status);
    if (code == 0)
        return;
    int bits = 0;
    for (; check_names[bits] != NULL; bits++)
        if (code & (1 << bits))
            harness_fail(__FILE__, __LINE__, "%s: child check failed: %s", what,
                         check_names[bits]);
    if (code >> bits)
        harness_fail(__FILE__, __LINE__, "%s: child exited with %d", what, code);
}

#endif /* NG_TEST_FORK_HELPERS_H */
