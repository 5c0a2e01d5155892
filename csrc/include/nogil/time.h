/* Monotonic clock and saturating deadline arithmetic.
 *
 * Deadlines are absolute CLOCK_MONOTONIC nanoseconds. NG_DEADLINE_NEVER stands for "no
 * deadline"; arithmetic saturates instead of overflowing so that huge timeouts mean "forever"
 * rather than a deadline in the past.
 */
#ifndef NOGIL_TIME_H
#define NOGIL_TIME_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define NG_DEADLINE_NEVER INT64_MAX
#define NG_NS_PER_MS INT64_C(1000000)
#define NG_NS_PER_SEC INT64_C(1000000000)

/* CLOCK_MONOTONIC in nanoseconds. */
int64_t ng_monotonic_ns(void);

/* a + b, clamped to [INT64_MIN, INT64_MAX]. */
static inline int64_t ng_add_sat(int64_t a, int64_t b)
{
    int64_t r;
    if (__builtin_add_overflow(a, b, &r))
        return b > 0 ? INT64_MAX : INT64_MIN;
    return r;
}

/* The deadline for a relative timeout: a negative timeout is NG_DEADLINE_NEVER, 0 is "now". */
int64_t ng_deadline_after(int64_t timeout_ns);

/* Nanoseconds left until `deadline` (0 once it has passed; INT64_MAX for NG_DEADLINE_NEVER). */
int64_t ng_deadline_remaining(int64_t deadline);

#ifdef __cplusplus
}
#endif
#endif /* NOGIL_TIME_H */
