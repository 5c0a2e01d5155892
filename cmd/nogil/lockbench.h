/* The C half of `nogil lockbench`: lock throughput and park/unpark round trips measured on
 * plain pthreads, so that neither the Go scheduler nor a cgo call sits inside the timed loop.
 *
 * Every function here runs its threads to completion before it returns, so Go memory passed
 * in is never touched after the cgo call ends.
 */
#ifndef NOGIL_CMD_LOCKBENCH_H
#define NOGIL_CMD_LOCKBENCH_H

#include <stdint.h>

/* Which lock lb_run_locks measures. */
enum lb_lock_kind {
    LB_LOCK_NG_MUTEX = 1, /* ng_mutex through the inline ng_mutex_lock/ng_mutex_unlock */
    LB_LOCK_PTHREAD = 2,  /* pthread_mutex_t with default attributes */
};

/* Runs CPython's lockbench loop with `nthreads` pthreads for `time_ns`: each thread takes the
 * lock, does `cs_len` dependent read-modify-writes of a shared double, releases it and counts
 * one acquisition, until the stop flag is set. On success stores thread i's count in
 * counts[i] and the wall time from before the first thread started until the last one
 * finished in *elapsed_ns, and returns 0. Otherwise returns an errno value (EINVAL for bad
 * arguments, or pthread_create's error) and the outputs are unspecified. */
int lb_run_locks(int kind, int nthreads, int cs_len, int64_t time_ns, int64_t *counts,
                 int64_t *elapsed_ns);

/* How the two ping-pong threads of lb_run_roundtrip sleep and wake. */
enum lb_roundtrip_kind {
    LB_RT_FUTEX = 1, /* FUTEX_WAIT_PRIVATE / FUTEX_WAKE_PRIVATE directly */
    LB_RT_PARK = 2,  /* ng_park / ng_unpark_all */
};

/* Where lb_run_roundtrip puts its two threads. */
enum lb_pin {
    LB_PIN_NONE = 0,  /* wherever the scheduler likes */
    LB_PIN_SAME = 1,  /* both on the first CPU the process may use */
    LB_PIN_CROSS = 2, /* on the first two CPUs the process may use */
};

/* Two pthreads hand a 32-bit turn word back and forth for about `time_ns`, each sleeping
 * until the word says it is its turn, placed as `pin` says. The first round trip is a
 * warm-up and is not timed; the run lasts longer than `time_ns` if needed to time at least
 * one more. Stores the number of timed round trips (>= 1) and the time they took; returns 0
 * or an errno value as lb_run_locks does
 * (EINVAL also when the process may not use enough CPUs for `pin`). */
int lb_run_roundtrip(int kind, int pin, int64_t time_ns, int64_t *roundtrips,
                     int64_t *elapsed_ns);

#endif /* NOGIL_CMD_LOCKBENCH_H */
