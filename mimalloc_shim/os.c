/* The kernel side of the page allocator: segment-aligned mappings.
 *
 * mmap gives page alignment only, so a segment is mapped with one extra segment size of
 * slack and the misaligned head and tail are trimmed; the segment of any block is then found
 * by masking its address (nogil/alloc.h). Failure is reported, never fatal: the callers turn
 * it into NULL/ENOMEM. */
#define _GNU_SOURCE
#include <errno.h>
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
