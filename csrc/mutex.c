/* Slow paths of ng_mutex (bits and fast paths in nogil/mutex.h). */
#include <limits.h>
#include <sched.h>

#include "internal.h"

/* How long a contended locker spins (yielding the CPU) before it parks. The bound is time, not
 * a count of yields as in CPython: when two threads contend, the waiter's spin ends with it
 * taking the lock (its look at the byte before parking meets one of the owner's unlocks), so
 * the length of the spin is the length of the other thread's turn. Counted in yields, that
 * length followed each CPU's sched_yield cost, which on the 2-vCPU VM we measure on differed
 * 3x between the vCPUs at the same moment (4 vs 12 us) and reached milliseconds per yield when
 * another task shared the CPU; one thread's turns were then 3x the other's, and lockbench's
 * Jain index fell to 0.59-0.87 at 2 threads (100 yields).
 * A fixed time gives both threads the same turn. 300 us: well under the 1 ms hand-off (which
 * stays the backstop for parked waiters), and long turns keep the owner on its fast path; 100
 * us was as fair and 10-20% slower at cs 1. */
#define SPIN_NS INT64_C(300000)

/* With the time bound doing the work, the count limit only serves ng_mutex_set_spin_limit. */
#define DEFAULT_SPINS INT_MAX

/* A yield that took longer than this gave our CPU to another runnable task: on an otherwise
 * idle CPU one costs 4-12 us on the VM we measure on, and with a CPU-bound task beside us it
 * costs that task's whole time slice (3-4 ms with the kernel's EEVDF scheduler). */
#define DEFAULT_LONG_YIELD_NS INT64_C(100000)

/* How long a thread whose yield was long sleeps through its spin instead of yielding.
 * Yielding on a shared CPU lets the other task run a full slice before we look at the byte
 * again, so the lock owner on the other CPU gets turns ten times longer than ours (measured:
 * 3.6 ms against 0.33 ms); at 2 threads with one busy process beside them Jain fell to
 * 0.80-0.90 in 3 of 8 one-second runs. A sleeper, unlike a yielder, keeps its claim on the
 * CPU (EEVDF lag) and is back when its timer fires: in the same setting the worst of 5
 * lockbench runs went from 0.894 to 0.953 (cs 1) and from 0.853 to 0.907 (cs 10), no cure
 * but better than CPython's 0.900-0.907 there. Parking at once instead was as fair, but at 4
 * threads on 2 CPUs (where every yield runs another of the lock's threads) the park/wake
 * churn cut throughput by half or more; a sleep leaves the owner's unlocks on their fast
 * path. 10 ms: a few slices, so a busy neighbour keeps the hint alive through the turns it
 * causes, and a thread that was unlucky once is back to yielding soon. */
#define SHARED_CPU_HINT_NS INT64_C(10000000)

static int64_t handoff_ns = NG_MUTEX_HANDOFF_NS;
static int64_t long_yield_ns = DEFAULT_LONG_YIELD_NS;
static int spin_limit = -1; /* -1: decide from the CPU count on first use */

/* Until when this thread sleeps rather than yields in its spin (monotonic ns; 0: never set).
 * Per thread, because it describes the CPU the thread runs on, which another thread need not
 * share. A fork child inherits the forking thread's value, which only changes how it waits
 * for the next 10 ms. */
static NG_THREAD_LOCAL int64_t sleep_spin_until;

/* A contended lock taken back from us this soon after our wait ended it was not a turn: the
 * previous owner's first lock call after its unlock (one CAS, before it would spin) met the
 * lock free in our unlock-to-relock window. Measured at 2 threads on the 2-vCPU VM, that
 * happened within 10 iterations after 40-60% of one thread's waits and fewer of the other's;
 * each time the loser paid a second blind 300 us spin while the winner ran, so the shares
 * went as 1/(1 - p) and Jain fell to 0.7-0.9. In the wait that follows a lost turn the
 * spinner looks at the byte after each yield, as the thief did: the race that took the turn
 * can give it back, and the blind spin stays the rule for every other wait. */
#define LOST_TURN_NS INT64_C(20000)

/* When this thread last took the lock at the end of a contended wait (monotonic ns). Per
 * thread, like the hint above, and gone with the thread; a fork child inherits it, which can
 * only make its first wait within 20 us look at the byte. */
static NG_THREAD_LOCAL int64_t won_after_wait_at;

/* What a parked locker shares with the unlocker that wakes it (through park_arg). */
typedef struct mutex_waiter {
    int64_t fair_at;  /* once the clock passes this, the unlocker hands the lock over */
    int handed_off;   /* set by the unlocker: the byte is already LOCKED on our behalf */
} mutex_waiter;

int64_t ng_mutex_set_handoff_ns(int64_t ns)
{
    return ng_atomic_exchange(&handoff_ns, ns, NG_RELAXED);
}

int64_t ng_mutex_set_long_yield_ns(int64_t ns)
{
    return ng_atomic_exchange(&long_yield_ns, ns < 0 ? 0 : ns, NG_RELAXED);
}

int64_t ng_mutex_sleep_spin_until(void)
{
    return sleep_spin_until;
}

int ng_mutex_set_spin_limit(int spins)
{
    int previous = ng_atomic_exchange(&spin_limit, spins < 0 ? 0 : spins, NG_RELAXED);
    return previous < 0 ? (ng_cpu_count() > 1 ? DEFAULT_SPINS : 0) : previous;
}

static int spins_allowed(void)
{
    int n = ng_atomic_load(&spin_limit, NG_RELAXED);
    if (n < 0) {
        /* On one CPU the holder cannot run while we spin: park at once. */
        n = ng_cpu_count() > 1 ? DEFAULT_SPINS : 0;
        ng_atomic_store(&spin_limit, n, NG_RELAXED);
    }
    return n;
}

void ng_mutex_at_fork_reinit(ng_mutex *m)
{
    if (m)
        ng_atomic_store(&m->bits, NG_UNLOCKED, NG_RELAXED);
}

int ng_mutex_lock_timed(ng_mutex *m, int64_t timeout_ns, int flags)
{
    if (m == NULL || (flags & ~NG_WAIT_FLAGS_ALL))
        return NG_EINVAL;

    uint8_t v = ng_atomic_load(&m->bits, NG_RELAXED);
    if ((v & NG_LOCKED) == 0) {
        /* Keep HAS_PARKED: barging past parked waiters is allowed and keeps throughput. */
        if (ng_atomic_cas(&m->bits, &v, (uint8_t)(v | NG_LOCKED), NG_ACQUIRE, NG_RELAXED))
            return NG_OK;
    }
    else if (timeout_ns == 0) {
        return NG_TIMEOUT;
    }

    int64_t now = ng_monotonic_ns();
    int64_t deadline = timeout_ns < 0 ? NG_DEADLINE_NEVER : ng_add_sat(now, timeout_ns);
    int64_t handoff = ng_atomic_load(&handoff_ns, NG_RELAXED);
    mutex_waiter w = {
        .fair_at = handoff < 0 ? NG_DEADLINE_NEVER : ng_add_sat(now, handoff),
        .handed_off = 0,
    };
    /* The spin budget is per call, so fork() (the child has only this thread) and the exit of
     * an owner leave nothing behind; only this thread's shared-CPU hint outlives the call. */
    int64_t spin_until = ng_add_sat(now, SPIN_NS);
    if (spin_until > deadline)
        spin_until = deadline; /* a short timed lock must not spin past its own deadline */
    int spins = 0, max_spins = spins_allowed();
    int lost_turn = now - won_after_wait_at < LOST_TURN_NS;
    int64_t long_yield = ng_atomic_load(&long_yield_ns, NG_RELAXED);
    int64_t yield_began = now;

    for (;;) {
        if ((v & NG_LOCKED) == 0) {
            if (ng_atomic_cas(&m->bits, &v, (uint8_t)(v | NG_LOCKED), NG_ACQUIRE, NG_RELAXED)) {
                won_after_wait_at = ng_monotonic_ns();
                return NG_OK;
            }
            continue;
        }
        if ((v & NG_HAS_PARKED) == 0 && spins < max_spins) {
            /* Nobody sleeps yet, so the holder is probably running: give it the CPU.
             * Like CPython 3.13, do not look at the byte while spinning. A spinner that
             * grabbed the lock in the owner's few-cycle unlock-to-relock window would turn
             * contention into long solo bursts whose lengths depend on each CPU's yield
             * latency; measured, that skewed the threads' shares for whole runs. The clock,
             * not the count, ends the blind spin (see SPIN_NS), so every waiter gives the
             * owner the same time. After a long yield (another task had our CPU) this
             * thread sleeps through the rest of its spins for a while (SHARED_CPU_HINT_NS). */
            spins++;
            int64_t left = spin_until - yield_began;
            int slept = yield_began < sleep_spin_until && left > 0;
            if (slept) {
                struct timespec ts = {.tv_sec = left / NG_NS_PER_SEC,
                                      .tv_nsec = left % NG_NS_PER_SEC};
                nanosleep(&ts, NULL); /* EINTR: the clock below decides whether to go on */
            }
            else {
                sched_yield();
            }
            int64_t t = ng_monotonic_ns();
            /* Only a yield tells about the CPU: a sleep is long by design. */
            if (!slept && t - yield_began > long_yield)
                sleep_spin_until = ng_add_sat(t, SHARED_CPU_HINT_NS);
            if (t >= spin_until)
                spins = max_spins;
            yield_began = t;
            if (lost_turn)
                v = ng_atomic_load(&m->bits, NG_RELAXED); /* take a lost turn back */
            continue;
        }
        int64_t remaining = timeout_ns < 0 ? -1 : ng_deadline_remaining(deadline);
        if (remaining == 0) {
            /* The blind spin did not look at the byte: a lock freed meanwhile is taken, not
             * reported as timed out. */
            v = ng_atomic_load(&m->bits, NG_RELAXED);
            if ((v & NG_LOCKED) == 0)
                continue;
            return NG_TIMEOUT;
        }
        /* Announce before making the byte say HAS_PARKED, and look at the byte again after
         * the announcement's fence: a plain-store unlock either sees us or we see it. */
        ng_park_announce(&m->bits);
        v = ng_atomic_load(&m->bits, NG_RELAXED);
        int r = NG_AGAIN;
        if (v & NG_LOCKED) {
            /* Relaxed: the flag only routes unlockers to the parking lot; the bucket lock
             * orders our enqueue against their unpark. */
            if ((v & NG_HAS_PARKED) ||
                ng_atomic_cas(&m->bits, &v, (uint8_t)(v | NG_HAS_PARKED), NG_RELAXED, NG_RELAXED)) {
                v |= NG_HAS_PARKED;
                r = ng_park(&m->bits, &v, 1, remaining, &w, flags);
            }
        }
        ng_park_withdraw(&m->bits);
        if (r == NG_OK && w.handed_off) {
            /* The unlocker set LOCKED for us; its release reached us through the
             * semaphore post/wait, so its critical section happens-before ours. */
            won_after_wait_at = ng_monotonic_ns();
            return NG_OK;
        }
        if (r == NG_CANCELLED)
            return NG_CANCELLED;
        if (r == NG_INTR && (flags & NG_WAIT_INTERRUPTIBLE))
            return NG_INTR;
        /* NG_OK without hand-off, NG_AGAIN, NG_TIMEOUT: look at the byte again; a timeout
         * is reported above once no time remains and the lock is still held. */
        v = ng_atomic_load(&m->bits, NG_RELAXED);
    }
}

/* Runs under the bucket lock, so no parker can enqueue between our decision and the store. */
static void mutex_unpark(void *arg, void *park_arg, int has_more_waiters)
{
    ng_mutex *m = arg;
    mutex_waiter *w = park_arg;
    uint8_t v = NG_UNLOCKED;
    if (w) {
        int fair = ng_monotonic_ns() >= w->fair_at;
        w->handed_off = fair;
        v = (uint8_t)((fair ? NG_LOCKED : 0) | (has_more_waiters ? NG_HAS_PARKED : 0));
    }
    /* Release: publishes the critical section to the next owner, be it the woken waiter
     * (hand-off) or a barging locker (acquiring CAS). While the byte reads LOCKED|HAS_PARKED
     * nobody else modifies it, so a plain store cannot lose an update. */
    ng_atomic_store(&m->bits, v, NG_RELEASE);
}

/* Runs under the bucket lock after a plain-store unlock saw announced parkers. The mutex is
 * already released (and may be held by someone else by now), so there is no hand-off; the
 * parked bit is restored, atomically, if waiters remain. */
static void wake_after_release(void *arg, void *park_arg, int woken, int has_more_waiters)
{
    ng_mutex *m = arg;
    if (woken && has_more_waiters)
        ng_atomic_fetch_or(&m->bits, NG_HAS_PARKED, NG_RELAXED);
}

int ng_mutex_unlock_wake(ng_mutex *m)
{
    /* If the announcer has not enqueued yet, it will find the byte changed and not sleep. */
    ng_unpark_ex(&m->bits, wake_after_release, m);
    return NG_OK;
}

int ng_mutex_unlock_slow(ng_mutex *m)
{
    if (m == NULL)
        return NG_EINVAL;
    uint8_t v = ng_atomic_load(&m->bits, NG_RELAXED);
    for (;;) {
        if ((v & NG_LOCKED) == 0)
            return NG_ENOTLOCKED;
        if (v & NG_HAS_PARKED) {
            ng_unpark(&m->bits, mutex_unpark, m);
            return NG_OK;
        }
        if (ng_atomic_cas(&m->bits, &v, NG_UNLOCKED, NG_RELEASE, NG_RELAXED))
            return NG_OK;
    }
}
