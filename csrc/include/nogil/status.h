/* Status codes and wait flags shared by every nogil C function. */
#ifndef NOGIL_STATUS_H
#define NOGIL_STATUS_H

#ifdef __cplusplus
extern "C" {
#endif

/* Results of waiting operations (park, semaphore, timed locks, event waits). The first four
 * match CPython's Py_PARK_* values; a lock "acquired" is NG_OK. */
enum ng_status {
    NG_OK = 0,          /* woken by an unpark / lock acquired / event set */
    NG_AGAIN = -1,      /* park: the address did not hold the expected value */
    NG_TIMEOUT = -2,    /* the timeout expired (also: try-lock found the lock held) */
    NG_INTR = -3,       /* a signal interrupted the wait and NG_WAIT_INTERRUPTIBLE was set */
    NG_CANCELLED = -4,  /* the thread's cancellation token fired (see ng_cancel) */

    /* Misuse. The operation did nothing. */
    NG_EINVAL = -22,     /* NULL or misaligned address, unsupported size or flags */
    NG_ENOTLOCKED = -100, /* unlock of a lock (or read side) that is not held */
    NG_ENOTOWNER = -101,  /* recursive-mutex unlock by a thread that does not own it */
    NG_EWRONGTHREAD = -102, /* a thread state used from an OS thread it is not bound to */
    NG_ESTATE = -103,     /* wrong attachment state: attach when attached, detach when detached */
    NG_ERELEASED = -104,  /* the thread state or interpreter was already released */
    NG_EBUSY = -105,      /* still in use: an interpreter with thread states, a nested stop */
    NG_ENOMEM = -12,      /* out of memory; nothing was changed */
};

/* Flags for blocking operations. */
enum ng_wait_flags {
    NG_WAIT_DEFAULT = 0,
    /* Call the registered block hooks (ng_set_block_hooks) around the sleep: the thread-state
     * layer uses them to detach the caller while it is blocked. */
    NG_WAIT_DETACH = 1,
    /* Return NG_INTR when a signal interrupts the sleep instead of sleeping again. */
    NG_WAIT_INTERRUPTIBLE = 2,
};
#define NG_WAIT_FLAGS_ALL (NG_WAIT_DETACH | NG_WAIT_INTERRUPTIBLE)

/* A short English description of a status code ("unknown status" for others). */
const char *ng_strerror(int status);

#ifdef __cplusplus
}
#endif
#endif /* NOGIL_STATUS_H */
