package ctest

/*
#cgo CFLAGS: -std=gnu11 -I${SRCDIR}/../../csrc/include
#include <pthread.h>
#include <stdint.h>
#include <sys/wait.h>
#include <unistd.h>
#include "nogil.h"

// Failure bits reported by a fork child through its exit status.
enum {
	FORK_LOT_REMEMBERS_DEAD_WAITER = 1,
	FORK_PARK_DID_NOT_TIME_OUT = 2,
	FORK_MUTEX_UNUSABLE = 4,
	FORK_CONTENDED_COUNT_WRONG = 8,
	FORK_THREADS_FAILED = 16,
	FORK_ANNOUNCEMENTS_LEFT = 32,
};

struct fork_contention {
	ng_mutex m;
	long counter;
};

static void *fork_contender(void *p)
{
	struct fork_contention *fc = p;
	for (int i = 0; i < 20000; i++) {
		ng_mutex_lock(&fc->m);
		fc->counter++;
		ng_mutex_unlock(&fc->m);
	}
	return NULL;
}

// The child runs only C (a Go child of a multi-threaded Go process may hang), then _exits.
static int fork_child_checks(const void *parked_on, ng_mutex *held)
{
	int failed = 0;
	if (ng_parking_lot_waiters(parked_on) != 0)
		failed |= FORK_LOT_REMEMBERS_DEAD_WAITER;
	uint32_t expected = __atomic_load_n((const uint32_t *)parked_on, __ATOMIC_SEQ_CST);
	if (ng_park(parked_on, &expected, 4, 1000000, NULL, 0) != NG_TIMEOUT)
		failed |= FORK_PARK_DID_NOT_TIME_OUT;
	if (ng_park_announced(parked_on) != 0)
		failed |= FORK_ANNOUNCEMENTS_LEFT;
	// The holder does not exist here: re-initialise, then the lock must work.
	ng_mutex_at_fork_reinit(held);
	if (ng_mutex_lock(held) != NG_OK || ng_mutex_unlock(held) != NG_OK || held->bits != 0)
		failed |= FORK_MUTEX_UNUSABLE;
	// New threads contend in the child: the park announcements' fence (or the CAS fallback)
	// must work in the child's address space.
	struct fork_contention fc = {NG_MUTEX_INIT, 0};
	pthread_t t[2];
	if (pthread_create(&t[0], NULL, fork_contender, &fc) != 0 ||
	    pthread_create(&t[1], NULL, fork_contender, &fc) != 0)
		return failed | FORK_THREADS_FAILED;
	pthread_join(t[0], NULL);
	pthread_join(t[1], NULL);
	if (fc.counter != 40000)
		failed |= FORK_CONTENDED_COUNT_WRONG;
	return failed;
}

// Forks; returns the child's failure bits, or -1 if fork/wait failed or the child crashed.
static int ctest_fork_check(const void *parked_on, ng_mutex *held)
{
	pid_t pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0)
		_exit(fork_child_checks(parked_on, held));
	int status;
	if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status))
		return -1;
	return WEXITSTATUS(status);
}
*/
import "C"

import "unsafe"

// ForkCheck forks the process from C. The child checks that the parking lot forgot the
// waiter parked on parkedOn (a 4-byte word), that a park there times out, that the mutex at
// held (locked by a thread that is gone in the child) works after ng_mutex_at_fork_reinit,
// and that two new threads can contend on a mutex. It returns the child's failure bits
// (0: all good; see ForkFailure) or -1 if the child could not be run or crashed.
func ForkCheck(parkedOn, held unsafe.Pointer) int {
	return int(C.ctest_fork_check(parkedOn, (*C.ng_mutex)(held)))
}

// ForkFailure names the bits ForkCheck returns.
var ForkFailure = map[int]string{
	C.FORK_LOT_REMEMBERS_DEAD_WAITER: "parking lot still lists a waiter of a dead thread",
	C.FORK_PARK_DID_NOT_TIME_OUT:     "a timed park in the child did not time out",
	C.FORK_MUTEX_UNUSABLE:            "mutex unusable after at-fork reinit",
	C.FORK_CONTENDED_COUNT_WRONG:     "contended counter wrong in the child",
	C.FORK_THREADS_FAILED:            "could not create threads in the child",
	C.FORK_ANNOUNCEMENTS_LEFT:        "park announcements of dead threads left in the child",
}
