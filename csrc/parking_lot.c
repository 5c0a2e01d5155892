/* The parking lot (API and guarantees in nogil/parking_lot.h).
 *
 * A fixed table of buckets, each a raw mutex and a FIFO list of wait entries. An address maps
 * to one bucket; a parker checks the address's value and enqueues itself under the bucket
 * lock, and unparkers dequeue under the same lock, which makes "check then sleep" atomic with
 * respect to wake-ups.
 *
 * Invariant for wait entries (which live on the parked thread's stack): an entry is in a
 * bucket list iff `is_unparking` is 0. Whoever dequeues it (unparker, canceller) sets
 * `is_unparking` under the bucket lock and then posts the entry's semaphore exactly once,
 * after dropping the lock. A parker that gives up (timeout, signal) re-takes the bucket lock:
 * if it is still queued it unlinks itself; if `is_unparking` is set, a post is on its way and
 * the parker must wait for it before its stack frame may disappear, and it reports NG_OK
 * (the wake-up wins over the timeout).
 */
#include <string.h>

#include "internal.h"

/* More buckets than CPython's 257 so unrelated locks rarely share one. */
#define NUM_BUCKETS NG_LOT_BUCKETS

typedef struct wait_entry {
    struct wait_entry *next;
    struct wait_entry *prev;
    const void *addr;
    void *park_arg;
    ng_semaphore sema;
    /* Both written by the thread that dequeues the entry, under the bucket lock. */
    int is_unparking;
    int cancelled;
} wait_entry;

typedef struct bucket {
    ng_raw_mutex lock;
    wait_entry *first;
    wait_entry *last;
} __attribute__((aligned(64))) bucket;

static bucket buckets[NUM_BUCKETS];

static NG_THREAD_LOCAL ng_cancel *current_cancel;
static const ng_block_hooks *block_hooks;

static bucket *bucket_for(const void *addr)
{
    return &buckets[ng_lot_bucket_index(addr)];
}

static void enqueue(bucket *b, wait_entry *e)
{
    e->next = NULL;
    e->prev = b->last;
    if (b->last)
        b->last->next = e;
    else
        b->first = e;
    b->last = e;
}

static void dequeue(bucket *b, wait_entry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        b->first = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        b->last = e->prev;
    e->next = e->prev = NULL;
}

static wait_entry *find(wait_entry *from, const void *addr)
{
    while (from && from->addr != addr)
        from = from->next;
    return from;
}

/* Seq-cst loads: the value at `addr` may be written by Go's sequentially consistent atomics,
 * and the comparison must not be satisfied from a stale value ordered before the lock. */
static int value_matches(const void *addr, const void *expected, size_t size)
{
    switch (size) {
    case 1: {
        uint8_t want;
        memcpy(&want, expected, 1);
        return ng_atomic_load((const uint8_t *)addr, NG_SEQ_CST) == want;
    }
    case 2: {
        uint16_t want;
        memcpy(&want, expected, 2);
        return ng_atomic_load((const uint16_t *)addr, NG_SEQ_CST) == want;
    }
    case 4: {
        uint32_t want;
        memcpy(&want, expected, 4);
        return ng_atomic_load((const uint32_t *)addr, NG_SEQ_CST) == want;
    }
    default: {
        uint64_t want;
        memcpy(&want, expected, 8);
        return ng_atomic_load((const uint64_t *)addr, NG_SEQ_CST) == want;
    }
    }
}

static int valid_park_args(const void *addr, const void *expected, size_t size, int flags)
{
    if (addr == NULL || expected == NULL || (flags & ~NG_WAIT_FLAGS_ALL))
        return 0;
    if (size != 1 && size != 2 && size != 4 && size != 8)
        return 0;
    return ((uintptr_t)addr & (size - 1)) == 0;
}

/* Detaches a cancellation token from the entry it points at. Caller holds b->lock. */
static void cancel_forget(ng_cancel *c)
{
    ng_atomic_store(&c->waiter, NULL, NG_RELAXED);
    ng_atomic_store(&c->addr, NULL, NG_SEQ_CST);
}

int ng_park(const void *addr, const void *expected, size_t size, int64_t timeout_ns,
            void *park_arg, int flags)
{
    if (!valid_park_args(addr, expected, size, flags))
        return NG_EINVAL;
    ng_cancel *cancel = current_cancel;
    if (cancel && ng_atomic_load(&cancel->fired, NG_ACQUIRE))
        return NG_CANCELLED;

    /* The timeout counts from the call, not from after the block hooks ran. */
    int64_t deadline = ng_deadline_after(timeout_ns);
    bucket *b = bucket_for(addr);
    wait_entry e = {.addr = addr, .park_arg = park_arg};

    ng_raw_mutex_lock(&b->lock);
    if (!value_matches(addr, expected, size)) {
        ng_raw_mutex_unlock(&b->lock);
        return NG_AGAIN;
    }
    if (timeout_ns == 0) {
        ng_raw_mutex_unlock(&b->lock);
        return NG_TIMEOUT;
    }
    enqueue(b, &e);
    if (cancel) {
        /* Publish where we sleep, then look at the token; ng_cancel_fire sets the token, then
         * looks where we sleep. Seq-cst on both sides: at least one of us sees the other. */
        ng_atomic_store(&cancel->waiter, &e, NG_RELAXED);
        ng_atomic_store(&cancel->addr, addr, NG_SEQ_CST);
        if (ng_atomic_load(&cancel->fired, NG_SEQ_CST)) {
            dequeue(b, &e);
            cancel_forget(cancel);
            ng_raw_mutex_unlock(&b->lock);
            return NG_CANCELLED;
        }
    }
    ng_raw_mutex_unlock(&b->lock);

    const ng_block_hooks *hooks = NULL;
    void *cookie = NULL;
    if (flags & NG_WAIT_DETACH) {
        hooks = ng_atomic_load(&block_hooks, NG_ACQUIRE);
        if (hooks && hooks->before_block)
            cookie = hooks->before_block();
    }

    int result = ng_semaphore_wait_until(&e.sema, deadline, flags & NG_WAIT_INTERRUPTIBLE);
    if (result != NG_OK || cancel) {
        ng_raw_mutex_lock(&b->lock);
        int woken = e.is_unparking;
        if (!woken)
            dequeue(b, &e);
        if (cancel)
            cancel_forget(cancel);
        ng_raw_mutex_unlock(&b->lock);
        if (woken && result != NG_OK) {
            /* Dequeued by an unparker that has not posted yet: it still holds a pointer to
             * `e`, and it may have handed us ownership of something. Wait for it. */
            while (ng_semaphore_wait_until(&e.sema, NG_DEADLINE_NEVER, 0) != NG_OK) {
            }
            result = NG_OK;
        }
    }
    /* e.cancelled was written before the post that our semaphore wait acquired. */
    if (result == NG_OK && e.cancelled)
        result = NG_CANCELLED;

    if (hooks && hooks->after_block)
        hooks->after_block(cookie);
    return result;
}

/* Dequeues the first waiter on `addr` and runs the callback (either kind) under the lock. */
static int unpark_one(const void *addr, ng_unpark_fn *fn, ng_unpark_ex_fn *fn_ex, void *arg)
{
    if (addr == NULL)
        return NG_EINVAL;
    bucket *b = bucket_for(addr);
    ng_raw_mutex_lock(&b->lock);
    wait_entry *e = find(b->first, addr);
    int more = 0;
    if (e) {
        more = find(e->next, addr) != NULL;
        dequeue(b, e);
        e->is_unparking = 1;
    }
    void *park_arg = e ? e->park_arg : NULL;
    if (fn)
        fn(arg, park_arg, more);
    else if (fn_ex)
        fn_ex(arg, park_arg, e != NULL, more);
    ng_raw_mutex_unlock(&b->lock);
    if (e)
        ng_semaphore_post(&e->sema);
    return e != NULL;
}

int ng_unpark(const void *addr, ng_unpark_fn *fn, void *arg)
{
    return unpark_one(addr, fn, NULL, arg);
}

int ng_unpark_ex(const void *addr, ng_unpark_ex_fn *fn, void *arg)
{
    return unpark_one(addr, NULL, fn, arg);
}

int ng_unpark_all(const void *addr)
{
    if (addr == NULL)
        return NG_EINVAL;
    bucket *b = bucket_for(addr);
    wait_entry *woken = NULL; /* private list through `next`, in FIFO order reversed */
    int n = 0;
    ng_raw_mutex_lock(&b->lock);
    for (wait_entry *e = find(b->first, addr), *next; e; e = next) {
        next = find(e->next, addr);
        dequeue(b, e);
        e->is_unparking = 1;
        e->next = woken;
        woken = e;
        n++;
    }
    ng_raw_mutex_unlock(&b->lock);
    while (woken) {
        wait_entry *next = woken->next; /* read before the post: the entry dies after it */
        ng_semaphore_post(&woken->sema);
        woken = next;
    }
    return n;
}

int ng_parking_lot_waiters(const void *addr)
{
    if (addr == NULL)
        return NG_EINVAL;
    bucket *b = bucket_for(addr);
    int n = 0;
    ng_raw_mutex_lock(&b->lock);
    for (wait_entry *e = find(b->first, addr); e; e = find(e->next, addr))
        n++;
    ng_raw_mutex_unlock(&b->lock);
    return n;
}

void ng_parking_lot_after_fork(void)
{
    /* Every entry belongs to a thread that does not exist in the child, and a bucket lock may
     * have been held by one: start from the zero state. */
    memset(buckets, 0, sizeof buckets);
    /* Announcements of threads that do not exist in the child would only cost slow unlocks,
     * but they would never be withdrawn. */
    memset(ng_park_announce_slots, 0, sizeof ng_park_announce_slots);
    /* The surviving thread's installed token (if any) stays: it is not parked, so the token
     * points at no entry, and its owner still expects it to work. */
}

/* ---- Cancellation ---------------------------------------------------------------------- */

void ng_cancel_init(ng_cancel *c)
{
    if (c)
        memset(c, 0, sizeof *c);
}

int ng_cancel_fired(const ng_cancel *c)
{
    return c != NULL && ng_atomic_load(&c->fired, NG_ACQUIRE) != 0;
}

int ng_cancel_fire(ng_cancel *c)
{
    if (c == NULL)
        return 0;
    /* Seq-cst: pairs with the parker's publish-then-check in ng_park. */
    if (ng_atomic_exchange(&c->fired, 1, NG_SEQ_CST))
        return 0;
    for (;;) {
        const void *addr = ng_atomic_load(&c->addr, NG_SEQ_CST);
        if (addr == NULL)
            return 0; /* not parked; its next park sees `fired` */
        bucket *b = bucket_for(addr);
        ng_raw_mutex_lock(&b->lock);
        if (ng_atomic_load(&c->addr, NG_RELAXED) != addr) {
            /* It left that bucket (and maybe parked elsewhere) before we got the lock. */
            ng_raw_mutex_unlock(&b->lock);
            continue;
        }
        wait_entry *e = ng_atomic_load(&c->waiter, NG_RELAXED);
        int woke = 0;
        if (e && !e->is_unparking) {
            dequeue(b, e);
            e->is_unparking = 1;
            e->cancelled = 1;
            woke = 1;
        }
        ng_raw_mutex_unlock(&b->lock);
        if (woke)
            ng_semaphore_post(&e->sema);
        return woke;
    }
}

ng_cancel *ng_cancel_install(ng_cancel *c)
{
    ng_cancel *previous = current_cancel;
    current_cancel = c;
    return previous;
}

/* ---- Block hooks ----------------------------------------------------------------------- */

const ng_block_hooks *ng_set_block_hooks(const ng_block_hooks *hooks)
{
    /* Acq/rel: a parker that loads the new pointer sees the struct's contents. */
    return ng_atomic_exchange(&block_hooks, hooks, NG_ACQ_REL);
}
