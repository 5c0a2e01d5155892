/* QSBR torture in the style of liburcu's rcutorture: readers check every object they can
 * reach for poison and for age while writers replace it and retire the old one with a
 * delayed call that poisons, publishes "freed" and frees it. A goal computed one step too
 * early, processing that ignores the poll, a missing fence or a lost quiescent state shows up
 * as a reader seeing poison, a torn payload, a version going backwards, or a version that was
 * already freed. The nogil_torture build (NOGIL_TORTURE) adds sequences that wrap during the
 * run, an advance per retirement, 4-entry chunks and random yields inside the library. */
#define _GNU_SOURCE

#include <stdlib.h>
#include <string.h>

#include "harness.h"

#if defined(__SANITIZE_THREAD__)
#define TORTURE_SLOW 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TORTURE_SLOW 1
#endif
#endif
#ifndef TORTURE_SLOW
#define TORTURE_SLOW 0
#endif

#define OBJ_MAGIC UINT64_C(0x746f727475726521)  /* "torture!" */
#define OBJ_POISON UINT64_C(0x6b6b6b6b6b6b6b6b)
#define OBJ_WORDS 14

typedef struct tobj {
    uint64_t magic;
    uint64_t version;
    uint64_t payload[OBJ_WORDS];
} tobj;

static inline uint64_t pattern(uint64_t version, int i)
{
    return (version * UINT64_C(0x9e3779b97f4a7c15)) ^ (uint64_t)(i + 1);
}

enum { TORTURE_READERS = 2, TORTURE_WRITERS = 2, MAX_REPORTS = 5 };

typedef struct torture {
    ng_interp *in;
    tobj *current;            /* the shared pointer */
    uint64_t freed_upto;      /* highest version whose object was retired and poisoned */
    uint32_t stop;
    uint64_t allocated, released;
    uint64_t reads[TORTURE_READERS];
    uint64_t replaced[TORTURE_WRITERS];
    uint64_t barriers;
    uint64_t errors;          /* every detected violation */
    uint64_t poisoned, torn, backwards, stale;
} torture;

static torture T;

/* Reads a word of an object the reader may hold: volatile, so each check really loads again
 * (the compiler may not reuse an earlier value). Plain memory on purpose: if the algorithm
 * freed the object too early, the thread sanitizer reports the race with the poisoner. */
static inline uint64_t peek(const uint64_t *p) { return *(const volatile uint64_t *)p; }

static void report(uint64_t *counter, const char *what, uint64_t version, uint64_t extra)
{
    ng_atomic_fetch_add(counter, 1, NG_RELAXED);
    if (ng_atomic_fetch_add(&T.errors, 1, NG_RELAXED) < MAX_REPORTS)
        harness_fail(__FILE__, __LINE__, "reader: %s (version %llu, %llu)", what,
                     (unsigned long long)version, (unsigned long long)extra);
}

/* Checks an object the reader holds; `expect` is the version read first (0: none yet). */
static uint64_t check_object(const tobj *o, uint64_t expect)
{
    uint64_t magic = peek(&o->magic), version = peek(&o->version);
    if (magic != OBJ_MAGIC) {
        report(magic == OBJ_POISON ? &T.poisoned : &T.torn, "bad magic", version, magic);
        return 0;
    }
    if (expect != 0 && version != expect) {
        report(&T.torn, "object changed under the reader", expect, version);
        return 0;
    }
    for (int i = 0; i < OBJ_WORDS; i++) {
        if (peek(&o->payload[i]) != pattern(version, i)) {
            report(&T.torn, "payload damaged", version, (uint64_t)i);
            return 0;
        }
    }
    return version;
}

static void *reader_main(void *arg)
{
    int id = (int)(intptr_t)arg;
    uint64_t rng = (uint64_t)(id + 1) * UINT64_C(0x2545f4914f6cdd1d);
    ng_tstate *ts = NULL;
    if (ng_tstate_new(T.in, &ts) != NG_OK || ng_tstate_attach(ts) != NG_OK) {
        harness_fail(__FILE__, __LINE__, "reader: no state");
        return NULL;
    }
    uint64_t last_version = 0, reads = 0;
    unsigned until_checkpoint = 1;
    while (!ng_atomic_load(&T.stop, NG_ACQUIRE)) {
        /* Acquire: the object's contents, written before it was published, are visible. */
        const tobj *o = ng_atomic_load(&T.current, NG_ACQUIRE);
        uint64_t v = check_object(o, 0);
        if (v != 0) {
            if (v < last_version)
                report(&T.backwards, "version went backwards", v, last_version);
            last_version = v;
            /* Age: nothing at or past what we hold may have been freed while we hold it. */
            uint64_t freed = ng_atomic_load(&T.freed_upto, NG_ACQUIRE);
            if (freed >= v)
                report(&T.stale, "holding a version already freed", v, freed);
            /* Hold it a little longer now and then, to be preempted while holding it. */
            uint64_t r = rng_next(&rng);
            if ((r & 15) == 0)
                sched_yield();
            else if ((r & 15) == 1)
                for (volatile int spin = 0; spin < 200; spin++)
                    ;
            check_object(o, v);
        }
        reads++;
        if (--until_checkpoint == 0) {
            uint64_t r = rng_next(&rng);
            if ((r & 255) == 0) {
                /* Go offline for a moment, as a thread blocking in a call would. */
                CHECK_STATUS(ng_tstate_detach(ts), NG_OK);
                sched_yield();
                CHECK_STATUS(ng_tstate_attach(ts), NG_OK);
            }
            else {
                CHECK_STATUS(ng_tstate_checkpoint(ts), NG_OK);
            }
            until_checkpoint = 1 + (unsigned)(r >> 32) % 32;
        }
    }
    ng_atomic_store(&T.reads[id], reads, NG_RELAXED);
    CHECK_STATUS(ng_tstate_release(ts), NG_OK);
    return NULL;
}

static tobj *object_new(uint64_t version)
{
    tobj *o = malloc(sizeof *o);
    if (o == NULL)
        abort();
    o->magic = OBJ_MAGIC;
    o->version = version;
    for (int i = 0; i < OBJ_WORDS; i++)
        o->payload[i] = pattern(version, i);
    ng_atomic_fetch_add(&T.allocated, 1, NG_RELAXED);
    return o;
}

/* The delayed call: poison, publish "freed up to this version", free. */
static void poison_and_free(void *arg)
{
    tobj *o = arg;
    uint64_t v = o->version;
    memset(o, 0x6b, sizeof *o);
    /* Release: a reader that sees the new maximum also sees the poison. Versions from two
     * writers' queues may run in any order: keep the maximum. */
    uint64_t seen = ng_atomic_load(&T.freed_upto, NG_RELAXED);
    while (seen < v &&
           !ng_atomic_cas(&T.freed_upto, &seen, v, NG_RELEASE, NG_RELAXED))
        ;
    ng_atomic_fetch_add(&T.released, 1, NG_RELAXED);
    free(o);
}

static void *writer_main(void *arg)
{
    int id = (int)(intptr_t)arg;
    uint64_t rng = (uint64_t)(id + 7) * UINT64_C(0x9e3779b97f4a7c15);
    ng_tstate *ts = NULL;
    if (ng_tstate_new(T.in, &ts) != NG_OK || ng_tstate_attach(ts) != NG_OK) {
        harness_fail(__FILE__, __LINE__, "writer: no state");
        return NULL;
    }
    uint64_t replaced = 0;
    while (!ng_atomic_load(&T.stop, NG_ACQUIRE)) {
        /* The writer is attached, so the current object cannot be freed while it reads the
         * version; a CAS keeps publication order equal to version order. */
        tobj *cur = ng_atomic_load(&T.current, NG_ACQUIRE);
        tobj *next = object_new(cur->version + 1);
        if (ng_atomic_cas(&T.current, &cur, next, NG_ACQ_REL, NG_ACQUIRE)) {
            CHECK_STATUS(ng_call_delayed(ts, poison_and_free, cur, sizeof *cur), NG_OK);
            replaced++;
        }
        else {
            ng_atomic_fetch_sub(&T.allocated, 1, NG_RELAXED);
            free(next); /* never published */
        }
        uint64_t r = rng_next(&rng);
        if (id == 1 && (r & 1023) == 0) {
            /* A full barrier now and then: it collects the other writer's queue too. */
            CHECK_STATUS(ng_qsbr_barrier(ts), NG_OK);
            ng_atomic_fetch_add(&T.barriers, 1, NG_RELAXED);
        }
        CHECK_STATUS(ng_tstate_checkpoint(ts), NG_OK);
        if ((r & 7) == 0)
            sched_yield();
    }
    ng_atomic_store(&T.replaced[id], replaced, NG_RELAXED);
    CHECK_STATUS(ng_tstate_release(ts), NG_OK);
    return NULL;
}

TEST(qsbr_torture_readers_never_see_freed_objects)
{
    memset(&T, 0, sizeof T);
    REQUIRE(CHECK_STATUS(ng_interp_new(&T.in), NG_OK));
    T.current = object_new(1);
    pthread_t readers[TORTURE_READERS], writers[TORTURE_WRITERS];
    for (int i = 0; i < TORTURE_READERS; i++)
        readers[i] = spawn_thread(reader_main, (void *)(intptr_t)i);
    for (int i = 0; i < TORTURE_WRITERS; i++)
        writers[i] = spawn_thread(writer_main, (void *)(intptr_t)i);

    double seconds = 2.0 * test_scale() * (TORTURE_SLOW ? 0.25 : 1.0);
    int64_t until = now_ns() + (int64_t)(seconds * 1e9);
    while (now_ns() < until && ng_atomic_load(&T.errors, NG_RELAXED) == 0)
        sleep_ms(10);
    ng_atomic_store(&T.stop, 1, NG_RELEASE);
    for (int i = 0; i < TORTURE_WRITERS; i++)
        join_thread(writers[i]);
    for (int i = 0; i < TORTURE_READERS; i++)
        join_thread(readers[i]);

    CHECK_EQ(ng_atomic_load(&T.poisoned, NG_RELAXED), 0);
    CHECK_EQ(ng_atomic_load(&T.torn, NG_RELAXED), 0);
    CHECK_EQ(ng_atomic_load(&T.backwards, NG_RELAXED), 0);
    CHECK_EQ(ng_atomic_load(&T.stale, NG_RELAXED), 0);
    /* The run did something: both sides made progress and memory was reclaimed during it. */
    for (int i = 0; i < TORTURE_READERS; i++)
        CHECK_GT(T.reads[i], 1000);
    for (int i = 0; i < TORTURE_WRITERS; i++)
        CHECK_GT(T.replaced[i], 100);
    CHECK_GT(ng_atomic_load(&T.released, NG_RELAXED), 100);

    /* Everything retired is released by the time the interpreter is gone. */
    CHECK_STATUS(ng_interp_delete(T.in), NG_OK);
    CHECK_EQ(ng_atomic_load(&T.released, NG_RELAXED) + 1, ng_atomic_load(&T.allocated, NG_RELAXED));
    CHECK_EQ(T.current->version, ng_atomic_load(&T.freed_upto, NG_RELAXED) + 1);
    free(T.current);
}
