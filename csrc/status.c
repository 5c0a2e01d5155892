/* Human-readable status codes. */
#include "internal.h"

const char *ng_strerror(int status)
{
    switch (status) {
    case NG_OK: return "ok";
    case NG_AGAIN: return "value did not match (park)";
    case NG_TIMEOUT: return "timed out";
    case NG_INTR: return "interrupted by a signal";
    case NG_CANCELLED: return "cancelled";
    case NG_EINVAL: return "invalid argument (NULL or misaligned address, bad size or flags)";
    case NG_ENOTLOCKED: return "unlock of a lock that is not held";
    case NG_ENOTOWNER: return "unlock by a thread that does not own the lock";
    case NG_EWRONGTHREAD: return "thread state used from an OS thread it is not bound to";
    case NG_ESTATE: return "thread state is not in the state this call needs (attached/detached)";
    case NG_ERELEASED: return "thread state or interpreter already released";
    case NG_EBUSY: return "still in use";
    case NG_ENOMEM: return "out of memory";
    default: return "unknown status";
    }
}
