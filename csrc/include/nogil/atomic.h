/* Atomic operations with the memory order spelled out at every call site.
 *
 * These are thin names over the GCC/Clang __atomic builtins, which implement the C11 memory
 * model on plain (non-_Atomic) objects. Plain types matter here: cgo must be able to see the
 * structs that Go code also touches, and cgo cannot translate _Atomic members.
 *
 * Rule for words that Go code also accesses with sync/atomic (always sequentially
 * consistent): the C side may use weaker orders only where the protocol's correctness argument
 * needs nothing stronger than acquire/release, and the site says why.
 */
#ifndef NOGIL_ATOMIC_H
#define NOGIL_ATOMIC_H

#define NG_RELAXED __ATOMIC_RELAXED
#define NG_ACQUIRE __ATOMIC_ACQUIRE
#define NG_RELEASE __ATOMIC_RELEASE
#define NG_ACQ_REL __ATOMIC_ACQ_REL
#define NG_SEQ_CST __ATOMIC_SEQ_CST

#define ng_atomic_load(p, mo) __atomic_load_n((p), (mo))
#define ng_atomic_store(p, v, mo) __atomic_store_n((p), (v), (mo))
#define ng_atomic_exchange(p, v, mo) __atomic_exchange_n((p), (v), (mo))
#define ng_atomic_fetch_add(p, v, mo) __atomic_fetch_add((p), (v), (mo))
#define ng_atomic_fetch_sub(p, v, mo) __atomic_fetch_sub((p), (v), (mo))
#define ng_atomic_fetch_or(p, v, mo) __atomic_fetch_or((p), (v), (mo))
#define ng_atomic_fetch_and(p, v, mo) __atomic_fetch_and((p), (v), (mo))
/* gcc >= 12 warns (-Wtsan) that ThreadSanitizer does not model fences. Where we use one, the
 * data it orders is itself accessed with atomics, so TSan sees no race either way; silence the
 * warning so that C users can build with -fsanitize=thread -Werror. */
#if defined(__SANITIZE_THREAD__) && !defined(__clang__) && __GNUC__ >= 12
#define ng_atomic_fence(mo)                                                               \
    do {                                                                                  \
        _Pragma("GCC diagnostic push") _Pragma("GCC diagnostic ignored \"-Wtsan\"")       \
            __atomic_thread_fence(mo);                                                    \
        _Pragma("GCC diagnostic pop")                                                     \
    } while (0)
#else
#define ng_atomic_fence(mo) __atomic_thread_fence(mo)
#endif

/* Strong compare-exchange. On failure the observed value is written to *expected and the
 * failure order applies (it may not be stronger than the success order). */
#define ng_atomic_cas(p, expected, desired, success_mo, failure_mo) \
    __atomic_compare_exchange_n((p), (expected), (desired), 0, (success_mo), (failure_mo))

/* A hint to the CPU that this thread is busy-waiting. */
static inline void ng_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#else
    __asm__ __volatile__("" ::: "memory");
#endif
}

#endif /* NOGIL_ATOMIC_H */
