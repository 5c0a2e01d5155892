/* The C half of `nogil qsbrbench`: QSBR measured on plain pthreads, nogil's and liburcu's
 * QSBR flavour side by side (the liburcu functions exist only in builds with the
 * nogil_liburcu tag, qsbrbench_liburcu.c).
 *
 * Every function runs its threads to completion before it returns, so Go memory passed in is
 * never touched after the cgo call ends. Each returns 0, an errno value (EINVAL for bad
 * arguments, pthread_create's error, ENOMEM, EPROTO when the measured code misbehaved), or
 * minus a nogil status (nogil/status.h) that a nogil call returned.
 */
#ifndef NOGIL_CMD_QSBRBENCH_H
#define NOGIL_CMD_QSBRBENCH_H

#include <stdint.h>

/* Reader threads report a quiescent state after this many reads, unless told otherwise. */
#define QB_DEFAULT_REPORT_EVERY 1000

/* Quiescent-state cost: one thread, online, reports a quiescent state in a loop for about
 * `time_ns` while nobody advances. Stores the number of reports and the time they took. */
int qb_quiescent_nogil(int64_t time_ns, int64_t *ops, int64_t *elapsed_ns);
int qb_quiescent_liburcu(int64_t time_ns, int64_t *ops, int64_t *elapsed_ns);

/* The two words a quiescent-state report reads, for the Go floor row: a fresh shared state
 * with one reserved slot, attached at the current sequence. Stores their addresses and a
 * handle for qb_floor_free, which releases both. */
int qb_floor_new(void **handle, uint64_t **slot_seq, uint64_t **wr_seq);
void qb_floor_free(void *handle);

/* Grace-period latency: `readers` threads each read a shared object in a loop and report a
 * quiescent state every `report_every` reads; a writer starts grace periods back to back for
 * about `time_ns` and times each from its start to the moment it is known to be over: nogil:
 * ng_qsbr_advance, then ng_qsbr_wait (polls until true, sleeping until a report wakes it; the
 * writer's own slot offline); liburcu: synchronize_rcu. Stores up to `cap` latencies in
 * samples_ns and their count in *n. */
int qb_grace_nogil(int readers, int report_every, int64_t time_ns, int64_t *samples_ns,
                   int64_t cap, int64_t *n);
int qb_grace_liburcu(int readers, int report_every, int64_t time_ns, int64_t *samples_ns,
                     int64_t cap, int64_t *n);

/* The outcome of one delayed-free run. */
typedef struct qb_delayed_result {
    int64_t objects;            /* objects retired, and freed before the run ended */
    int64_t elapsed_ns;         /* from the first retirement until the last one was freed */
    int64_t peak_pending_bytes; /* most bytes retired but not yet freed at any time */
    int64_t reads;              /* the reader's object reads (a sanity figure) */
} qb_delayed_result;

/* Delayed-free throughput: one writer replaces a shared 64-byte object as fast as it can and
 * retires the old one (nogil: ng_call_delayed from an attached thread state that passes a
 * checkpoint after each retirement; liburcu: call_rcu from an online thread that reports a
 * quiescent state after each one), while one reader reads the current object and reports
 * every `report_every` reads. Runs for about `time_ns`, then waits for every retired object
 * to be freed (ng_qsbr_barrier / rcu_barrier). nogil's interpreter gets the back-pressure
 * cap `cap_bytes` (ng_delayed_set_cap; 0: off, the library's default). */
int qb_delayed_nogil(int report_every, int64_t time_ns, int64_t cap_bytes,
                     qb_delayed_result *out);
int qb_delayed_liburcu(int report_every, int64_t time_ns, qb_delayed_result *out);

/* What qb_poll_nogil measures. */
enum qb_poll_case {
    QB_POLL_SUCCESS_OFFLINE = 1, /* a successful poll that scans; the other slots offline */
    QB_POLL_SUCCESS_ONLINE = 2,  /* the same with every slot online at the current seq */
    QB_POLL_FAIL_LAGGARD = 3,    /* a failed poll answered by the laggard of the last one */
    /* A successful poll after every slot but the first two (online) was given back, as after
     * a burst of threads that exited: the scan walks what is in use, not what once was. */
    QB_POLL_AFTER_BURST = 4,
};

/* Poll cost with `slots` registered slots (the poller's included), one thread acting for all
 * of them, for about `time_ns`. A successful poll is ng_qsbr_poll_slow on a goal that rd_seq
 * does not show yet, as right after an advance: the full scan. */
int qb_poll_nogil(int slots, int poll_case, int64_t time_ns, int64_t *ops, int64_t *elapsed_ns);

#endif /* NOGIL_CMD_QSBRBENCH_H */
