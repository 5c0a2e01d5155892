/* ng_event: a one-shot event (CPython's PyEvent).
 *
 * Byte `v`: 0 not set; NG_LOCKED (1) set; NG_HAS_PARKED (2) not set and threads may be parked.
 * Once set it stays set; to reuse an event, re-initialise it when no thread can be waiting.
 * Fork: a child may re-initialise events that dead threads waited on (ng_event_at_fork_reinit
 * keeps "set" and drops the waiter bit). Thread exit: nothing to clean up.
 */
#ifndef NOGIL_EVENT_H
#define NOGIL_EVENT_H

#include <stdbool.h>
#include <stdint.h>
#include "status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ng_event {
    uint8_t v;
} ng_event;

#define NG_EVENT_INIT {0}

/* Sets the event and wakes every waiter. Idempotent. NG_OK or NG_EINVAL. */
int ng_event_notify(ng_event *e);

/* True once the event is set (false for NULL). */
bool ng_event_is_set(const ng_event *e);

/* Waits until the event is set or the timeout expires (negative: forever; 0: just check).
 * Spurious wake-ups are absorbed. Returns NG_OK (set), NG_TIMEOUT, NG_INTR, NG_CANCELLED or
 * NG_EINVAL. */
int ng_event_wait_timed(ng_event *e, int64_t timeout_ns, int flags);

/* Waits (detached) until the event is set. NG_OK, NG_CANCELLED or NG_EINVAL. */
int ng_event_wait(ng_event *e);

void ng_event_at_fork_reinit(ng_event *e);

#ifdef __cplusplus
}
#endif
#endif /* NOGIL_EVENT_H */
