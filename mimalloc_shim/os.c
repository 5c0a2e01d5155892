/* The kernel side of the page allocator: segment-aligned mappings and their huge-page advice.
 *
 * mmap gives page alignment only, so a segment is mapped with one extra segment size of
 * slack and the misaligned head and tail are trimmed; the segment of any block is then found
 * by masking its address (nogil/alloc.h). Failure is reported, never fatal: the callers turn
 * it into NULL/ENOMEM. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "alloc_internal.h"

int ng_mi_test_fail_mmap;
uint64_t ng_mi_os_mapped_bytes;

/* Consumes one injected failure. Relaxed CAS: the counter orders nothing else. */
static bool injected_failure(void)
{
    int n = ng_atomic_load(&ng_mi_test_fail_mmap, NG_RELAXED);
    while (n > 0) {
        if (ng_atomic_cas(&ng_mi_test_fail_mmap, &n, n - 1, NG_RELAXED, NG_RELAXED))
            return true;
    }
    return false;
}

void *ng_mi_os_map(size_t size)
{
    if (injected_failure()) {
        errno = ENOMEM;
        return NULL;
    }
    size_t slack = NG_MI_SEGMENT_SIZE;
    if (size > SIZE_MAX - slack) {
        errno = ENOMEM;
        return NULL;
    }
    size_t total = size + slack;
    void *p = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        errno = ENOMEM;
        return NULL;
    }
    uintptr_t start = (uintptr_t)p;
    uintptr_t aligned = (start + NG_MI_SEGMENT_MASK) & ~(uintptr_t)NG_MI_SEGMENT_MASK;
    size_t head = aligned - start;
    size_t tail = total - head - size;
    if (head > 0)
        munmap(p, head);
    if (tail > 0)
        munmap((void *)(aligned + size), tail);
    ng_atomic_fetch_add(&ng_mi_os_mapped_bytes, size, NG_RELAXED); /* statistics */
    return (void *)aligned;
}

void ng_mi_os_unmap(void *p, size_t size)
{
    if (p == NULL)
        return;
    munmap(p, size);
    ng_atomic_fetch_sub(&ng_mi_os_mapped_bytes, size, NG_RELAXED); /* statistics */
}

/* ---- Transparent huge pages ------------------------------------------------------------------ */

/* The policy (ng_mi_hugepages), or -1 until NOGIL_HUGEPAGES has been read. */
static int hugepage_mode = -1;

static int mode_from_env(void)
{
    const char *v = getenv("NOGIL_HUGEPAGES");
    if (v != NULL && strcmp(v, "never") == 0)
        return NG_MI_HUGEPAGES_NEVER;
    if (v != NULL && strcmp(v, "always") == 0)
        return NG_MI_HUGEPAGES_ALWAYS;
    return NG_MI_HUGEPAGES_AUTO;
}

ng_mi_hugepages ng_mi_get_hugepages(void)
{
    /* Relaxed: the mode is a standalone setting that orders nothing else. Racing first
     * readers compute the same value; a setter that came first wins the CAS. */
    int mode = ng_atomic_load(&hugepage_mode, NG_RELAXED);
    if (mode < 0) {
        int unset = -1;
        mode = mode_from_env();
        if (!ng_atomic_cas(&hugepage_mode, &unset, mode, NG_RELAXED, NG_RELAXED))
            mode = unset;
    }
    return (ng_mi_hugepages)mode;
}

int ng_mi_set_hugepages(ng_mi_hugepages mode)
{
    if ((int)mode < NG_MI_HUGEPAGES_NEVER || (int)mode > NG_MI_HUGEPAGES_ALWAYS)
        return NG_EINVAL;
    ng_atomic_store(&hugepage_mode, (int)mode, NG_RELAXED); /* as in ng_mi_get_hugepages */
    return NG_OK;
}

/* Linux 6.1's synchronous collapse (uapi asm-generic/mman-common.h); glibc 2.36 lacks it. */
#if defined(__linux__) && !defined(MADV_COLLAPSE)
#define MADV_COLLAPSE 25
#endif

/* Set once madvise(MADV_HUGEPAGE) has failed with EINVAL: a kernel built without
 * transparent huge pages (or one that has them switched off for good), which later calls
 * would only ask again. */
static int thp_unavailable;

bool ng_mi_os_advise_hugepages(void *p, size_t size, bool collapse)
{
#ifdef MADV_HUGEPAGE
    /* Relaxed: a hint that saves system calls; a stale 0 only costs one more. */
    if (ng_atomic_load(&thp_unavailable, NG_RELAXED))
        return false;
    /* Faults after the advice map 2 MiB pages (segments are 4 MiB aligned). A failure leaves
     * ordinary pages: nothing else changes. */
    if (madvise(p, size, MADV_HUGEPAGE) != 0) {
        if (errno == EINVAL)
            ng_atomic_store(&thp_unavailable, 1, NG_RELAXED);
        return false;
    }
    /* Memory already touched keeps its 4 KiB pages until khugepaged merges them, which takes
     * seconds to minutes; the collapse does it now (copying, at most 4 MiB, once per
     * segment). An older kernel's EINVAL, or EAGAIN/ENOMEM when no huge page can be had,
     * leave that to khugepaged. */
    if (collapse)
        (void)madvise(p, size, MADV_COLLAPSE);
    return true;
#else
    (void)p;
    (void)size;
    (void)collapse;
    return false;
#endif
}
