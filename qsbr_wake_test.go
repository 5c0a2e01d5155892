package nogil_test

import (
	"testing"
	"time"

	"github.com/nogil-go/nogil"
)

// A quiescent report made by the Go fast path wakes the threads sleeping in ng_qsbr_wait, as
// the C report does (qsbr.h: code that writes a slot's seq itself must wake them).
func TestGoQuiescentReportWakesQSBRWaiters(t *testing.T) {
	deadline(t, 30*time.Second)
	in := newInterp(t)
	<-goLocked(func() {
		ts, err := in.Bind()
		if err != nil {
			t.Error(err)
			return
		}
		defer ts.Release()
		if err := ts.Attach(); err != nil {
			t.Error(err)
			return
		}
		nogil.QSBRAddWaitersForTest(ts, 1) // as a thread asleep in ng_qsbr_wait would
		defer nogil.QSBRAddWaitersForTest(ts, -1)
		for _, report := range []func() error{ts.QuiescentState, ts.Checkpoint} {
			if _, err := ts.Advance(); err != nil {
				t.Error(err)
				return
			}
			before := nogil.QSBRWakeSeqForTest(ts)
			if err := report(); err != nil {
				t.Error(err)
			}
			if nogil.QSBRWakeSeqForTest(ts) == before {
				t.Error("a quiescent report from Go did not wake the QSBR waiters")
			}
		}
	})
}
