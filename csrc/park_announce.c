/* Park announcements and the asymmetric fence (protocol in nogil/park_announce.h). */
#include <linux/membarrier.h>
#include <stdio.h>
#include <stdlib.h>

#include "internal.h"

ng_park_announce_slot ng_park_announce_slots[NG_LOT_BUCKETS];
int ng_plain_unlock;

static long membarrier(int cmd)
{
    return syscall(SYS_membarrier, cmd, 0, 0);
}

/* Decides, before any lock is used, whether unlocks may be plain stores. Registration is per
 * process (per address space), so the child of fork() repeats it. */
void ng_park_announce_init(void)
{
    long supported = membarrier(MEMBARRIER_CMD_QUERY);
    int ok = supported > 0 && (supported & MEMBARRIER_CMD_PRIVATE_EXPEDITED) &&
             membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) == 0;
    if (getenv("NOGIL_CAS_UNLOCK") != NULL) /* for comparisons and for tests of both modes */
        ok = 0;
    ng_atomic_store(&ng_plain_unlock, ok, NG_RELAXED);
}

void ng_park_announce(const void *addr)
{
    uint32_t *count = &ng_park_announce_slots[ng_lot_bucket_index(addr)].parkers;
    /* Seq-cst RMW: the increment is globally visible before the fence below returns. */
    ng_atomic_fetch_add(count, 1, NG_SEQ_CST);
    if (!ng_atomic_load(&ng_plain_unlock, NG_RELAXED))
        return; /* every unlock is a CAS: nothing to fence against */
    if (membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) != 0) {
        /* Registered at start-up in this address space, so this cannot fail; if it did, a
         * plain-store unlock could strand us asleep. */
        perror("nogil: membarrier");
        abort();
    }
}

void ng_park_withdraw(const void *addr)
{
    ng_atomic_fetch_sub(&ng_park_announce_slots[ng_lot_bucket_index(addr)].parkers, 1,
                        NG_RELEASE);
}
