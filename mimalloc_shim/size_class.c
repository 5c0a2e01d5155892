/* Size classes.
 *
 * Up to 64 bytes every word size is a class (8, 16, ..., 64); above, each doubling is split
 * into four classes that are multiples of 16 bytes (80, 96, 112, 128, 160, 192, ...), so a
 * block wastes at most a quarter of its size, up to NG_MI_LARGE_MAX (bin 68). A block is
 * aligned to the largest power of two dividing its size, up to 16: pages start 64-byte
 * aligned and blocks are laid out back to back.
 *
 * Object heaps never hand out blocks smaller than their prefix plus a link word. */
#include "alloc_internal.h"

size_t ng_mi_bin_of_size(size_t size)
{
    if (size <= 64) {
        size_t w = (size + 7) >> 3;
        return w == 0 ? 1 : w;
    }
    size_t u = (size + 15) >> 4; /* 16-byte units, > 4 */
    size_t v = u - 1;
    unsigned b = 63u - (unsigned)__builtin_clzll((unsigned long long)v); /* >= 2 */
    return 8 + (size_t)(b - 2) * 4 + ((v >> (b - 2)) & 3) + 1;
}

size_t ng_mi_bin_size(size_t bin)
{
    if (bin <= 8)
        return bin * 8;
    size_t i = bin - 9;
    unsigned b = (unsigned)(i / 4) + 2;
    size_t idx = i % 4;
    size_t step = (size_t)1 << (b - 2);
    return (((size_t)1 << b) + (idx + 1) * step) * 16;
}

uint16_t ng_mi_kind_prefix(int heap_kind)
{
    switch (heap_kind) {
    case NG_MI_HEAP_OBJECT:
    case NG_MI_HEAP_GC:
        return NG_MI_OBJECT_PREFIX;
    case NG_MI_HEAP_GC_PRE:
        return NG_MI_GC_PRE_PREFIX;
    default:
        return 0;
    }
}

size_t ng_mi_kind_min_size(int heap_kind) { return (size_t)ng_mi_kind_prefix(heap_kind) + 8; }

size_t ng_mi_heap_bin(int heap_kind, size_t size)
{
    size_t min = ng_mi_kind_min_size(heap_kind);
    return ng_mi_bin_of_size(size < min ? min : size);
}

bool ng_mi_bin_wsize_range(int heap_kind, size_t bin, size_t *lo, size_t *hi)
{
    if (bin > ng_mi_heap_bin(heap_kind, NG_MI_DIRECT_MAX))
        return false;
    /* Word sizes map to bins monotonically, so a bin's word sizes are contiguous. */
    size_t w = 0;
    while (w <= NG_MI_DIRECT_WSIZE && ng_mi_heap_bin(heap_kind, w * 8) < bin)
        w++;
    size_t first = w;
    while (w <= NG_MI_DIRECT_WSIZE && ng_mi_heap_bin(heap_kind, w * 8) == bin)
        w++;
    if (w == first)
        return false;
    *lo = first;
    *hi = w - 1;
    return true;
}

uint8_t ng_mi_direct_lo[NG_MI_HEAP_COUNT][NG_MI_BIN_COUNT];
uint8_t ng_mi_direct_hi[NG_MI_HEAP_COUNT][NG_MI_BIN_COUNT];
uint8_t ng_mi_direct_bin[NG_MI_HEAP_COUNT][NG_MI_DIRECT_WSIZE + 1];

void ng_mi_size_init(void)
{
    for (int k = 0; k < NG_MI_HEAP_COUNT; k++) {
        /* Classes are multiples of 8 bytes, so a size and its word size share a bin. */
        for (size_t w = 0; w <= NG_MI_DIRECT_WSIZE; w++)
            ng_mi_direct_bin[k][w] = (uint8_t)ng_mi_heap_bin(k, w * 8);
        for (size_t b = 0; b < NG_MI_BIN_COUNT; b++) {
            size_t lo, hi;
            if (ng_mi_bin_wsize_range(k, b, &lo, &hi)) {
                ng_mi_direct_lo[k][b] = (uint8_t)lo;
                ng_mi_direct_hi[k][b] = (uint8_t)hi;
            }
            else {
                ng_mi_direct_lo[k][b] = 1;
                ng_mi_direct_hi[k][b] = 0;
            }
        }
    }
}
