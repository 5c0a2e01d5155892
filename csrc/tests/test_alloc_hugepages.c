/* The page allocator's huge-page advice (nogil/alloc.h, "Huge pages"): which segments get
 * MADV_HUGEPAGE under each policy, the segments_hugepage count, and both after a thread exit
 * and in a fork child.
 *
 * The kernel is the judge: a segment is advised when its mapping carries the `hg` flag in
 * /proc/self/smaps (VmFlags), and the allocator's own flag and count must agree with it. On a
 * kernel without transparent huge pages madvise fails, and every test expects no segment
 * advised and a count of 0 instead. Where madvise succeeds without effect (qemu-user accepts
 * the advice and drops it), only the allocator's record is checked. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "alloc_helpers.h"
#include "fork_helpers.h"

/* ---- Reading the kernel's view ----------------------------------------------------------- */

/* Whether madvise(MADV_HUGEPAGE) works here (a kernel built with THP). */
static bool thp_supported(void)
{
    size_t len = (size_t)2 << 20;
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return false;
    bool ok = madvise(p, len, MADV_HUGEPAGE) == 0;
    munmap(p, len);
    return ok;
}

/* A line reader over read(2): no stdio and no malloc, so a fork child may use it too. */
typedef struct line_reader {
    int fd;
    char buf[4096];
    size_t len, pos;
} line_reader;

/* The next line (without its newline) in `line` (truncated to `cap` - 1), false at the end. */
static bool read_line(line_reader *r, char *line, size_t cap)
{
    size_t n = 0;
    for (;;) {
        if (r->pos == r->len) {
            ssize_t got = read(r->fd, r->buf, sizeof r->buf);
            if (got <= 0) {
                line[n] = '\0';
                return n > 0;
            }
            r->len = (size_t)got;
            r->pos = 0;
        }
        char c = r->buf[r->pos++];
        if (c == '\n') {
            line[n] = '\0';
            return true;
        }
        if (n + 1 < cap)
            line[n++] = c;
    }
}

static uintptr_t parse_hex(const char **s)
{
    uintptr_t v = 0;
    for (;; (*s)++) {
        char c = **s;
        if (c >= '0' && c <= '9')
            v = v * 16 + (uintptr_t)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v = v * 16 + (uintptr_t)(c - 'a' + 10);
        else
            return v;
    }
}

/* 1 if the mapping holding `p` has the `hg` flag (MADV_HUGEPAGE), 0 if not, -1 if no mapping
 * holds it or smaps cannot be read. */
static int vma_advised(const void *p)
{
    line_reader r = {.fd = open("/proc/self/smaps", O_RDONLY | O_CLOEXEC)};
    if (r.fd < 0)
        return -1;
    char line[512];
    bool inside = false;
    int result = -1;
    while (read_line(&r, line, sizeof line)) {
        const char *s = line;
        uintptr_t lo = parse_hex(&s);
        if (*s == '-' && s > line) { /* a mapping's header: "lo-hi perms ..." */
            s++;
            uintptr_t hi = parse_hex(&s);
            inside = (uintptr_t)p >= lo && (uintptr_t)p < hi;
            continue;
        }
        if (inside && strncmp(line, "VmFlags:", 8) == 0) {
            result = strstr(line, " hg") != NULL ? 1 : 0;
            break;
        }
    }
    close(r.fd);
    return result;
}

/* Whether the kernel's view of the advice can be read here: a probe mapping, advised, shows
 * the `hg` flag. */
static bool advice_visible(void)
{
    size_t len = (size_t)4 << 20;
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return false;
    bool visible = madvise(p, len, MADV_HUGEPAGE) == 0 && vma_advised(p) == 1;
    munmap(p, len);
    return visible;
}

/* What a segment that the policy advises (or not) records: advised only where the kernel
 * accepts the advice. */
static int expect_advised(bool advised) { return advised && thp_supported() ? 1 : 0; }

/* Whether the segment of `p` is advised as `want` says, in the allocator's record and, where
 * it can be read, in the kernel's. */
static bool advised_as(const void *p, bool want)
{
    ng_mi_segment *s = ng_mi_segment_of(p);
    if (s->hugepages != expect_advised(want))
        return false;
    return !advice_visible() || vma_advised(s) == expect_advised(want);
}

/* The allocator's record agrees with the kernel and with itself: every mapped segment of the
 * interpreter is advised exactly when its flag says so, and the interpreter's count is the
 * number of flagged ones. Returns false (no test macros: fork children use it) otherwise. */
static bool advice_consistent(ng_interp *in, uint64_t *advised_out)
{
    ng_mi_interp *mi = ng_mi_interp_of(in);
    if (mi == NULL)
        return false;
    bool thp = thp_supported(), visible = advice_visible(), ok = true;
    uint64_t flagged = 0;
    ng_mi_interp_lock(mi);
    for (ng_mi_segment *s = mi->all; s != NULL; s = s->all_next) {
        flagged += s->hugepages;
        if (s->hugepages && !thp)
            ok = false;
        if (visible && vma_advised(s) != s->hugepages)
            ok = false;
    }
    ng_mi_interp_unlock(mi);
    ng_mi_stats st;
    if (ng_mi_interp_get_stats(in, &st) != NG_OK || st.segments_hugepage != flagged)
        ok = false;
    if (advised_out != NULL)
        *advised_out = flagged;
    return ok;
}

/* ---- Filling heaps -------------------------------------------------------------------------- */

#define HP_MAX_BLOCKS 20000
#define HP_MAX_SEGMENTS 8

typedef struct block_set {
    void *b[HP_MAX_BLOCKS];
    int n;
    ng_mi_segment *seg[HP_MAX_SEGMENTS]; /* the distinct segments of the blocks */
    int nseg;
} block_set;

/* Allocates `size`-byte blocks into set until one lands in a segment none of its blocks is
 * in: returns that segment (NULL when the set or the memory runs out). The set keeps every
 * block, so the earlier segments stay full. */
static ng_mi_segment *fill_until_new_segment(ng_mi_heap *h, block_set *set, size_t size)
{
    while (set->n < HP_MAX_BLOCKS && set->nseg < HP_MAX_SEGMENTS) {
        void *p = ng_mi_heap_malloc(h, size);
        if (p == NULL)
            return NULL;
        set->b[set->n++] = p;
        ng_mi_segment *s = ng_mi_segment_of(p);
        bool seen = false;
        for (int i = 0; i < set->nseg && !seen; i++)
            seen = set->seg[i] == s;
        if (!seen)
            return set->seg[set->nseg++] = s;
    }
    return NULL;
}

static void free_all(block_set *set)
{
    for (int i = 0; i < set->n; i++)
        ng_mi_free(set->b[i]);
    set->n = set->nseg = 0;
}

/* The policy for the length of a test, restored by its end. */
static ng_mi_hugepages use_policy(ng_mi_hugepages mode)
{
    ng_mi_hugepages before = ng_mi_get_hugepages();
    CHECK_STATUS(ng_mi_set_hugepages(mode), NG_OK);
    return before;
}

static block_set small_set, other_set;

/* ==== Policies ================================================================================== */

TEST(alloc_hugepages_auto_advises_a_heap_once_it_outgrows_its_first_segment)
{
    ng_mi_hugepages before = use_policy(NG_MI_HUGEPAGES_AUTO);
    ALLOC_SCENE(in, ts, obj, NG_MI_HEAP_OBJECT);
    free_all(&small_set);

    /* The heap's first small segment: ordinary pages. */
    ng_mi_segment *s1 = fill_until_new_segment(obj, &small_set, 1024);
    REQUIRE(s1 != NULL);
    CHECK(advised_as(s1, false));
    CHECK_EQ(alloc_heap_stats(obj).segments_hugepage, 0);

    /* Mapped once the first is full: both advised (the first one now, collapsed where the
     * kernel can). */
    ng_mi_segment *s2 = fill_until_new_segment(obj, &small_set, 1024);
    REQUIRE(s2 != NULL);
    CHECK_EQ(s1->pages_used, s1->page_count);
    CHECK(advised_as(s1, true));
    CHECK(advised_as(s2, true));
    CHECK_EQ(alloc_heap_stats(obj).segments_hugepage, (uint64_t)expect_advised(true) * 2);
    uint64_t flagged = 0;
    CHECK(advice_consistent(in, &flagged));
    CHECK_EQ(flagged, (uint64_t)expect_advised(true) * 2);

    /* Other kinds in the same heap: a first medium segment is not advised, large and huge
     * segments never are in this mode (the largest class fits once in a large segment, so
     * these two are in two). */
    void *medium = ng_mi_heap_malloc(obj, 64 * 1024);
    void *large1 = ng_mi_heap_malloc(obj, NG_MI_LARGE_MAX);
    void *large2 = ng_mi_heap_malloc(obj, NG_MI_LARGE_MAX);
    void *huge = ng_mi_heap_malloc(obj, NG_MI_LARGE_MAX + 1);
    REQUIRE(medium != NULL && large1 != NULL && large2 != NULL && huge != NULL);
    CHECK(ng_mi_segment_of(large1) != ng_mi_segment_of(large2));
    CHECK(advised_as(ng_mi_segment_of(medium), false));
    CHECK(advised_as(ng_mi_segment_of(large1), false));
    CHECK(advised_as(ng_mi_segment_of(large2), false));
    CHECK(advised_as(ng_mi_segment_of(huge), false));
    /* Medium pages follow the small pages' rule. */
    free_all(&other_set);
    other_set.b[other_set.n++] = medium;
    other_set.seg[other_set.nseg++] = ng_mi_segment_of(medium);
    ng_mi_segment *m2 = fill_until_new_segment(obj, &other_set, 64 * 1024);
    REQUIRE(m2 != NULL);
    CHECK(advised_as(ng_mi_segment_of(medium), true));
    CHECK(advised_as(m2, true));
    /* Usable as before. */
    memset(medium, 0x5a, 64 * 1024);
    memset(large2, 0x5a, NG_MI_LARGE_MAX);
    CHECK(advice_consistent(in, NULL));

    free_all(&other_set); /* medium too */
    ng_mi_free(large1);
    ng_mi_free(large2);
    ng_mi_free(huge);
    free_all(&small_set);
    CHECK_STATUS(ng_mi_heap_collect(obj, true), NG_OK);
    CHECK(advice_consistent(in, NULL));
    end_scene(in, ts);
    ng_mi_set_hugepages(before);
}

/* Pages of the segment at s that are resident (mincore), or -1. */
static long resident_pages(const ng_mi_segment *s)
{
    static unsigned char vec[NG_MI_SEGMENT_SIZE / 4096];
    long page = sysconf(_SC_PAGESIZE);
    if (page != 4096 || mincore((void *)s, NG_MI_SEGMENT_SIZE, vec) != 0)
        return -1;
    long n = 0;
    for (size_t i = 0; i < sizeof vec; i++)
        n += vec[i] & 1;
    return n;
}

TEST(alloc_hugepages_auto_leaves_sparse_segments_alone)
{
    /* One block of each medium size class, never written: every page of the first medium
     * segment is in use but little of it was touched. The second segment that follows is not
     * advised, and the first is not collapsed (which would make all 4 MiB resident). */
    ng_mi_hugepages before = use_policy(NG_MI_HUGEPAGES_AUTO);
    ALLOC_SCENE(in, ts, mem, NG_MI_HEAP_MEM);
    free_all(&other_set);
    ng_mi_segment *m1 = NULL, *m2 = NULL;
    long resident_before = -1;
    for (size_t size = NG_MI_SMALL_MAX + 1; size <= NG_MI_MEDIUM_MAX && m2 == NULL;
         size += 4096) {
        if (m1 != NULL)
            resident_before = resident_pages(m1);
        void *p = ng_mi_heap_malloc(mem, size);
        REQUIRE(p != NULL);
        other_set.b[other_set.n++] = p;
        if (m1 == NULL)
            m1 = ng_mi_segment_of(p);
        else if (ng_mi_segment_of(p) != m1)
            m2 = ng_mi_segment_of(p);
    }
    REQUIRE(m1 != NULL && m2 != NULL);
    CHECK(advised_as(m1, false));
    CHECK(advised_as(m2, false));
    long resident_after = resident_pages(m1);
    if (resident_before >= 0) /* 4 KiB pages: mincore is meaningful */
        CHECK_LE(resident_after, 2 * resident_before);
    CHECK(advice_consistent(in, NULL));
    free_all(&other_set);
    end_scene(in, ts);
    ng_mi_set_hugepages(before);
}

TEST(alloc_hugepages_auto_collapses_two_dense_segments_per_new_one)
{
    /* Three dense segments filled while the policy was `never`; under `auto` the next
     * mapping advises itself and two of them, the one after that the third. */
    ng_mi_hugepages before = use_policy(NG_MI_HUGEPAGES_NEVER);
    ALLOC_SCENE(in, ts, mem, NG_MI_HEAP_MEM);
    free_all(&small_set);
    ng_mi_segment *s[5];
    for (int i = 0; i < 3; i++) {
        s[i] = fill_until_new_segment(mem, &small_set, 1024);
        REQUIRE(s[i] != NULL);
    }
    CHECK_STATUS(ng_mi_set_hugepages(NG_MI_HUGEPAGES_AUTO), NG_OK);
    s[3] = fill_until_new_segment(mem, &small_set, 1024);
    REQUIRE(s[3] != NULL);
    int advised = 0;
    for (int i = 0; i < 3; i++)
        advised += s[i]->hugepages;
    CHECK_EQ(advised, expect_advised(true) * 2);
    CHECK(advised_as(s[3], true));
    s[4] = fill_until_new_segment(mem, &small_set, 1024);
    REQUIRE(s[4] != NULL);
    for (int i = 0; i < 5; i++)
        CHECK(advised_as(s[i], true));
    CHECK(advice_consistent(in, NULL));
    free_all(&small_set);
    end_scene(in, ts);
    ng_mi_set_hugepages(before);
}

TEST(alloc_hugepages_never_and_always)
{
    ng_mi_hugepages before = use_policy(NG_MI_HUGEPAGES_NEVER);
    {
        ALLOC_SCENE(in, ts, mem, NG_MI_HEAP_MEM);
        free_all(&small_set);
        ng_mi_segment *s1 = fill_until_new_segment(mem, &small_set, 2048);
        ng_mi_segment *s2 = fill_until_new_segment(mem, &small_set, 2048);
        REQUIRE(s1 != NULL && s2 != NULL && s1 != s2);
        CHECK(advised_as(s1, false));
        CHECK(advised_as(s2, false));
        uint64_t flagged = 1;
        CHECK(advice_consistent(in, &flagged));
        CHECK_EQ(flagged, 0);
        free_all(&small_set);
        end_scene(in, ts);
    }
    CHECK_STATUS(ng_mi_set_hugepages(NG_MI_HUGEPAGES_ALWAYS), NG_OK);
    {
        ALLOC_SCENE(in, ts, gc, NG_MI_HEAP_GC);
        void *small = ng_mi_heap_malloc(gc, 100);
        void *medium = ng_mi_heap_malloc(gc, 64 * 1024);
        void *large = ng_mi_heap_malloc(gc, 1024 * 1024);
        void *huge = ng_mi_heap_malloc(gc, NG_MI_LARGE_MAX + 1);
        REQUIRE(small != NULL && medium != NULL && large != NULL && huge != NULL);
        CHECK(advised_as(ng_mi_segment_of(small), true));
        CHECK(advised_as(ng_mi_segment_of(medium), true));
        CHECK(advised_as(ng_mi_segment_of(large), true));
        CHECK(advised_as(ng_mi_segment_of(huge), false));
        uint64_t flagged = 0;
        CHECK(advice_consistent(in, &flagged));
        CHECK_EQ(flagged, (uint64_t)expect_advised(true) * 3);
        CHECK_EQ(alloc_heap_stats(gc).segments_hugepage, flagged);
        ng_mi_free(small);
        ng_mi_free(medium);
        ng_mi_free(large);
        ng_mi_free(huge);
        end_scene(in, ts);
    }
    ng_mi_set_hugepages(before);
}

TEST(alloc_hugepages_policy_rejects_unknown_values)
{
    ng_mi_hugepages before = ng_mi_get_hugepages();
    CHECK_STATUS(ng_mi_set_hugepages((ng_mi_hugepages)3), NG_EINVAL);
    CHECK_STATUS(ng_mi_set_hugepages((ng_mi_hugepages)-1), NG_EINVAL);
    CHECK_EQ(ng_mi_get_hugepages(), before);
    CHECK_STATUS(ng_mi_set_hugepages(NG_MI_HUGEPAGES_NEVER), NG_OK);
    CHECK_EQ(ng_mi_get_hugepages(), NG_MI_HUGEPAGES_NEVER);
    ng_mi_set_hugepages(before);
}

/* ==== Thread exit and fork ======================================================================= */

typedef struct exiting_filler {
    ng_interp *in;
    ng_mi_segment *s1, *s2;
} exiting_filler;

/* Fills two small segments of its OBJECT heap, keeps the blocks and exits: its segments go to
 * the abandoned pool with their advice. */
static void *exiting_filler_main(void *arg)
{
    exiting_filler *f = arg;
    ng_tstate *ts = attached_state(f->in);
    if (ts == NULL)
        return NULL;
    ng_mi_heap *h = alloc_heap(ts, NG_MI_HEAP_OBJECT);
    if (h != NULL) {
        f->s1 = fill_until_new_segment(h, &other_set, 1024);
        f->s2 = fill_until_new_segment(h, &other_set, 1024);
    }
    CHECK_STATUS(ng_tstate_release(ts), NG_OK);
    return NULL;
}

TEST(alloc_hugepages_survive_the_owners_exit_and_count_until_unmapped)
{
    ng_mi_hugepages before = use_policy(NG_MI_HUGEPAGES_AUTO);
    ALLOC_SCENE(in, ts, obj, NG_MI_HEAP_OBJECT);
    free_all(&other_set);
    exiting_filler f = {.in = in};
    join_thread(spawn_thread(exiting_filler_main, &f));
    REQUIRE(f.s1 != NULL && f.s2 != NULL && f.s1 != f.s2);
    CHECK(advised_as(f.s1, true));
    CHECK(advised_as(f.s2, true));
    uint64_t flagged = 0;
    CHECK(advice_consistent(in, &flagged));
    CHECK_EQ(flagged, (uint64_t)expect_advised(true) * 2);
    CHECK_GT(alloc_interp_stats(in).pages_abandoned, 0);

    /* Freed from here and reclaimed; once their pages' QSBR goals are reached the empty
     * segments go back to the kernel (or this thread's one-segment cache), and the count
     * follows. */
    free_all(&other_set);
    CHECK_STATUS(ng_mi_heap_collect(obj, true), NG_OK);
    CHECK_EQ(alloc_interp_stats(in).pages_abandoned, 0);
    CHECK(advice_consistent(in, &flagged));
    alloc_quiesce(ts);
    CHECK_STATUS(ng_mi_heap_collect(obj, true), NG_OK);
    CHECK(advice_consistent(in, &flagged));
    CHECK_LE(flagged, (uint64_t)expect_advised(true));
    end_scene(in, ts);
    ng_mi_set_hugepages(before);
}

enum {
    HP_FORK_INHERITED = 1 << 0, /* the parent's advice and count, as the kernel sees them */
    HP_FORK_GROWS = 1 << 1,     /* the child's next segment is advised too */
    HP_FORK_FREED = 1 << 2,     /* and everything adds up once freed */
};

typedef struct hp_fork {
    ng_interp *in;
    ng_mi_heap *heap;
} hp_fork;

static int hp_fork_child(void *arg)
{
    hp_fork *c = arg;
    int bad = 0;
    uint64_t flagged = 0;
    if (!advice_consistent(c->in, &flagged) || flagged != (uint64_t)expect_advised(true) * 2)
        bad |= HP_FORK_INHERITED;
    ng_mi_segment *s3 = fill_until_new_segment(c->heap, &small_set, 1024);
    if (s3 == NULL || !advised_as(s3, true) ||
        !advice_consistent(c->in, &flagged) || flagged != (uint64_t)expect_advised(true) * 3)
        bad |= HP_FORK_GROWS;
    free_all(&small_set);
    if (ng_mi_heap_collect(c->heap, true) != NG_OK || !advice_consistent(c->in, NULL))
        bad |= HP_FORK_FREED;
    return bad;
}

TEST(alloc_hugepages_fork_child_keeps_the_advice_and_the_count)
{
    ng_mi_hugepages before = use_policy(NG_MI_HUGEPAGES_AUTO);
    ALLOC_SCENE(in, ts, obj, NG_MI_HEAP_OBJECT);
    free_all(&small_set);
    ng_mi_segment *s1 = fill_until_new_segment(obj, &small_set, 1024);
    ng_mi_segment *s2 = fill_until_new_segment(obj, &small_set, 1024);
    REQUIRE(s1 != NULL && s2 != NULL && s1 != s2);
    CHECK(advice_consistent(in, NULL));

    hp_fork c = {.in = in, .heap = obj};
    pid_t pid = fork_checks(hp_fork_child, &c);
    REQUIRE(pid > 0);
    static const char *const names[] = {"inherited", "grows", "freed", NULL};
    check_child(pid, names, "huge pages in the fork child");

    free_all(&small_set);
    CHECK_STATUS(ng_mi_heap_collect(obj, true), NG_OK);
    CHECK(advice_consistent(in, NULL));
    end_scene(in, ts);
    ng_mi_set_hugepages(before);
}
