/* Process-unique thread identifiers.
 *
 * ng_thread_id() is nonzero, constant for the life of the calling thread and never reused by
 * another thread of the process (a 64-bit counter, assigned on first use). Unlike a TLS address
 * or a kernel tid, an id of an exited thread can therefore never be mistaken for a live one.
 * In the child of fork() the surviving thread keeps its id.
 *
 * The id is cached in a thread-local variable so the hot paths that compare owners (the page
 * allocator's free, thread-state checks) pay one TLS load, not a call.
 */
#ifndef NOGIL_THREAD_ID_H
#define NOGIL_THREAD_ID_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Thread-local storage of the C core, in the initial-exec model: one %fs-relative load.
 * Compiled with -fPIC (as cgo compiles C), the default model is a __tls_get_addr call,
 * which the linker rewrites into a load for an executable, but around which the compiler
 * has already saved and restored every caller-saved register: in the page allocator's
 * inline free that was three spills and reloads per call. A shared library built from
 * these sources and loaded with dlopen takes these few bytes from glibc's static TLS
 * reserve. */
#if defined(__GNUC__)
#define NG_THREAD_LOCAL __thread __attribute__((tls_model("initial-exec")))
#else
#define NG_THREAD_LOCAL _Thread_local
#endif

/* 0 until the thread's first ng_thread_id(); written only by its own thread. */
extern NG_THREAD_LOCAL uint64_t ng_thread_id_cached;

/* Assigns the calling thread's id (first call) and returns it. */
uint64_t ng_thread_id_assign(void);

static inline uint64_t ng_thread_id(void)
{
    uint64_t id = ng_thread_id_cached;
    return id != 0 ? id : ng_thread_id_assign();
}

#ifdef __cplusplus
}
#endif
#endif /* NOGIL_THREAD_ID_H */
