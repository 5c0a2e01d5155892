//go:build nogil_mimalloc

/* libmimalloc's rows of `nogil allocbench` (allocbench.h): mi_malloc / mi_free, each thread on
 * mimalloc's per-thread default heap. Built only with the nogil_mimalloc tag (Debian:
 * libmimalloc-dev, for mimalloc.h).
 *
 * The library is loaded with dlopen(RTLD_LOCAL), and only in the child process that measures
 * it, instead of being linked: Debian's libmimalloc.so.2 is built with MI_OVERRIDE and exports
 * malloc, free, calloc, realloc, posix_memalign... itself, so a link-time dependency (a
 * DT_NEEDED entry, which comes before libc.so.6) would interpose them for the whole process:
 * the glibc rows would measure mimalloc, and so would every malloc of the Go runtime and of
 * the C core. A library loaded RTLD_LOCAL is not in the global lookup scope: malloc stays
 * glibc's (ab_mimalloc_open checks both ways). The calls go through pointers from dlsym,
 * which costs what the PLT's indirect jump costs a linked library. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <mimalloc.h>
#include <stdio.h>

#include "allocbench_common.h"

static __typeof__(mi_malloc) *ab_mi_malloc;
static __typeof__(mi_free) *ab_mi_free;
static __typeof__(mi_version) *ab_mi_version_fn;
static __typeof__(mi_is_in_heap_region) *ab_mi_in_heap;

int ab_mimalloc_open(char *err, int cap)
{
    if (ab_mi_malloc != NULL)
        return 0;
    static const char *const names[] = {"libmimalloc.so.2", "libmimalloc.so"};
    void *h = NULL;
    for (size_t i = 0; h == NULL && i < sizeof(names) / sizeof(names[0]); i++)
        h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) {
        snprintf(err, (size_t)cap, "dlopen libmimalloc.so.2: %s", dlerror());
        return ENOENT;
    }
    __typeof__(mi_malloc) *m = (__typeof__(mi_malloc) *)dlsym(h, "mi_malloc");
    __typeof__(mi_free) *f = (__typeof__(mi_free) *)dlsym(h, "mi_free");
    __typeof__(mi_version) *v = (__typeof__(mi_version) *)dlsym(h, "mi_version");
    __typeof__(mi_is_in_heap_region) *in =
        (__typeof__(mi_is_in_heap_region) *)dlsym(h, "mi_is_in_heap_region");
    if (m == NULL || f == NULL || v == NULL || in == NULL) {
        snprintf(err, (size_t)cap, "libmimalloc lacks mi_malloc, mi_free, mi_version or mi_is_in_heap_region");
        return ENOENT;
    }
    /* mi_malloc's blocks are mimalloc's; malloc's are not (no interposition). */
    void *mine = m(64), *libc = malloc(64);
    bool ok_mine = mine != NULL && in(mine), ok_libc = libc != NULL && !in(libc);
    f(mine);
    free(libc);
    if (!ok_mine || !ok_libc) {
        snprintf(err, (size_t)cap, "mimalloc check failed: mi_malloc block in mimalloc: %d, malloc block outside: %d",
                 ok_mine, ok_libc);
        return EPROTO;
    }
    ab_mi_free = f;
    ab_mi_version_fn = v;
    ab_mi_in_heap = in;
    __atomic_store_n(&ab_mi_malloc, m, __ATOMIC_RELEASE);
    return 0;
}

int ab_mimalloc_version(void)
{
    return ab_mi_version_fn != NULL ? ab_mi_version_fn() : 0;
}

typedef struct ab_mimalloc_tls {
    char unused;
} ab_mimalloc_tls;

#define AB_IMPL(x) ab_mimalloc_##x
#define AB_TLS ab_mimalloc_tls
#define AB_THREAD_INIT(run, tls) 0
#define AB_THREAD_FINI(run, tls) 0
#define AB_MALLOC(tls, n) ab_mi_malloc(n)
#define AB_FREE(tls, p) ab_mi_free(p)
#define AB_TICK(tls) 0
#include "allocbench_loop.h"

int ab_run_mimalloc(const ab_params *p, ab_result *out)
{
    if (ab_mi_malloc == NULL)
        return ENOENT;
    int err = ab_check_params(p, false);
    if (err != 0 || out == NULL)
        return err != 0 ? err : EINVAL;
    ab_run run = {.p = p};
    if (p->bench == AB_BENCH_WINDOW)
        return ab_drive(&run, ab_mimalloc_window_thread, NULL, NULL, sizeof(ab_mimalloc_thread),
                        out);
    return ab_drive(&run, ab_mimalloc_producer, ab_mimalloc_consumer, NULL,
                    sizeof(ab_mimalloc_thread), out);
}
