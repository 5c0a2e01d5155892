/* Thread-state edge cases: a checkpoint from the wrong thread, a stop-the-world requester
 * attaching a state it created while stopped, creation racing interpreter deletion. */
#include "harness.h"
#include "tstate_helpers.h"

/* ---- The inline checkpoint checks the owner -------------------------------------------- */

struct foreign_checkpoint {
    ng_tstate *ts;
    int status;
};

static void *checkpoint_from_another_thread(void *p)
{
    struct foreign_checkpoint *f = p;
    f->status = ng_tstate_checkpoint(f->ts);
    return NULL;
}

/* Another thread's checkpoint on an attached state would report a quiescent state for the
 * owner, which may still hold pointers: it must be refused, and the owner's seq untouched. */
TEST(tstate_checkpoint_of_an_attached_state_from_another_thread_is_refused)
{
    TSTATE_SCENE(in, ts);
    uint64_t before = ng_atomic_load(&ts->qsbr->seq, NG_SEQ_CST);
    ng_qsbr_advance(&in->qsbr); /* the owner is now behind */

    struct foreign_checkpoint f = {.ts = ts, .status = NG_OK};
    join_thread(spawn_thread(checkpoint_from_another_thread, &f));
    CHECK_STATUS(f.status, NG_EWRONGTHREAD);
    CHECK_EQ(ng_atomic_load(&ts->qsbr->seq, NG_SEQ_CST), before);

    CHECK_STATUS(ng_tstate_checkpoint(ts), NG_OK); /* the owner itself may */
    CHECK_EQ(ng_atomic_load(&ts->qsbr->seq, NG_SEQ_CST), ng_qsbr_shared_current(&in->qsbr));
    end_scene(in, ts);
}

/* ---- A stop-the-world requester may create and attach a state -------------------------- */

struct stopper {
    ng_interp *in;
    int stop, create, attach, detach, start, release;
    uint32_t state_at_creation;
    uint32_t done;
};

static void *stop_then_create(void *p)
{
    struct stopper *s = p;
    s->stop = ng_stop_the_world(s->in, NULL);
    ng_tstate *ts = NULL;
    s->create = ng_tstate_new(s->in, &ts);
    if (s->create == NG_OK) {
        s->state_at_creation = state_of(ts);
        s->attach = ng_tstate_attach(ts); /* hung forever: SUSPENDED by its own stop */
        if (s->attach == NG_OK)
            s->detach = ng_tstate_detach(ts);
    }
    s->start = ng_start_the_world(s->in);
    if (ts != NULL)
        s->release = ng_tstate_release(ts);
    ng_atomic_store(&s->done, 1, NG_SEQ_CST);
    return NULL;
}

TEST(stw_requester_can_attach_a_state_created_during_its_own_stop)
{
    struct stopper s = {.stop = -1, .create = -1, .attach = -1, .detach = -1};
    REQUIRE(CHECK_STATUS(ng_interp_new(&s.in), NG_OK));
    pthread_t t = spawn_thread(stop_then_create, &s);
    bool done = false;
    for (int i = 0; i < 2000 && !done; i++) {
        done = ng_atomic_load(&s.done, NG_SEQ_CST) != 0;
        if (!done)
            sleep_ms(1);
    }
    if (!CHECK(done)) {
        /* Unstick the thread: restart its world on its behalf, which resumes the state. */
        ng_start_the_world(s.in);
    }
    join_thread(t);
    CHECK_STATUS(s.stop, NG_OK);
    CHECK_STATUS(s.create, NG_OK);
    CHECK_EQ(s.state_at_creation, NG_TSTATE_DETACHED);
    CHECK_STATUS(s.attach, NG_OK);
    CHECK_STATUS(s.detach, NG_OK);
    CHECK_STATUS(s.release, NG_OK);
    CHECK_STATUS(ng_interp_delete(s.in), NG_OK);
}

/* ---- A creation that races with the deletion does not revive the interpreter ------------ */

#include "qsbr_internal.h"

static ng_interp *racing_interp;
static int racing_delete_status = -1;

static void *delete_racing_interp(void *p)
{
    (void)p;
    racing_delete_status = ng_interp_delete(racing_interp);
    return NULL;
}

/* Runs inside ng_tstate_new's reserve, i.e. after its liveness check: the whole deletion
 * happens there. */
static void delete_during_reserve(ng_qsbr_slot *slot)
{
    (void)slot;
    ng_test_qsbr_reserve_hook = NULL;
    join_thread(spawn_thread(delete_racing_interp, NULL));
}

TEST(tstate_creation_racing_the_deletion_does_not_revive_the_interpreter)
{
    REQUIRE(CHECK_STATUS(ng_interp_new(&racing_interp), NG_OK));
    uint64_t frees = ng_atomic_load(&ng_test_interp_frees, NG_SEQ_CST);
    ng_test_qsbr_reserve_hook = delete_during_reserve;
    ng_tstate *ts = NULL;
    int st = ng_tstate_new(racing_interp, &ts);
    ng_test_qsbr_reserve_hook = NULL;
    CHECK_STATUS(racing_delete_status, NG_OK);
    CHECK_STATUS(st, NG_ERELEASED);
    CHECK_PTR_EQ(ts, NULL);
    /* Torn down exactly once (a revived reference would quarantine it a second time). */
    CHECK_EQ(ng_atomic_load(&ng_test_interp_frees, NG_SEQ_CST), frees + 1);
    CHECK_STATUS(ng_interp_check_live(racing_interp), NG_ERELEASED);
}
