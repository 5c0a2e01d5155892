/* nogil: the runtime machinery of CPython's free-threaded build as a standalone C library.
 *
 * This is the only header C users include. Every function returns a documented status code
 * (nogil/status.h) instead of aborting; see docs/cpython-map.md for the CPython names.
 */
#ifndef NOGIL_H
#define NOGIL_H

#include "nogil/atomic.h"
#include "nogil/status.h"
#include "nogil/time.h"
#include "nogil/thread_id.h"
#include "nogil/semaphore.h"
#include "nogil/raw_mutex.h"
#include "nogil/parking_lot.h"
#include "nogil/park_announce.h"
#include "nogil/mutex.h"
#include "nogil/event.h"
#include "nogil/once.h"
#include "nogil/rwmutex.h"
#include "nogil/seqlock.h"
#include "nogil/recursive_mutex.h"
#include "nogil/qsbr.h"
#include "nogil/delayed_free.h"
#include "nogil/tstate.h"
#include "nogil/alloc.h"

#endif /* NOGIL_H */
