// C halves of the Go callbacks declared in callbacks.go.
#include "_cgo_export.h"
#include "nogil.h"

static void unpark_trampoline(void *arg, void *park_arg, int woken, int has_more_waiters)
{
    nogilUnparkCallback((uintptr_t)arg, park_arg, woken, has_more_waiters);
}

int ng_go_unpark(const void *addr, uintptr_t handle)
{
    return ng_unpark_ex(addr, unpark_trampoline, (void *)handle);
}
