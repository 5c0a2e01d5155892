package nogil_test

import (
	"testing"
	"time"
	"unsafe"

	"github.com/nogil-go/nogil"
	"github.com/nogil-go/nogil/internal/ctest"
)

// The interleaving that park announcements exist for, from Go: a goroutine sleeps in Lock with
// HAS_PARKED set, then the bit is wiped (as a plain-store unlock that read the byte just before
// the waiter set it would wipe it). Go's plain-store Unlock must still wake the sleeper: it is
// announced. A CAS unlock (CAS mode, other architectures, race builds) owes no such wake: the
// unlocker that wiped the bit wakes the sleeper, so there the test does not apply. The lock is
// a borrowed byte with a neighbour in use, which must not change the path Unlock takes.
func TestMutexStoreUnlockWakesAnnouncedSleeper(t *testing.T) {
	if !ctest.PlainUnlock() || !nogil.PlainStoreUnlock || nogil.RaceEnabled {
		t.Skip("Go unlocks with a CAS here: nothing it does can wipe the parked bit")
	}
	deadline(t, 30*time.Second)
	mem := ctest.Alloc(8)
	defer ctest.Free(mem)
	ctest.Fill(mem, 0, 8)
	ctest.Store8(unsafe.Add(mem, 1), 0xa5) // a neighbour in use: Unlock takes the store path
	m := nogil.MutexAt(mem)
	m.Lock()
	acquired := goLocked(func() {
		m.Lock()
		m.Unlock()
	})
	if !waitFor(10*time.Second, func() bool { return nogil.ParkedWaiters(m.CPtr()) == 1 }) {
		t.Fatal("the second locker never parked")
	}
	if b := ctest.Load8(m.CPtr()); b != 3 {
		t.Fatalf("lock byte with a parked waiter = %d, want 3", b)
	}
	ctest.Store8(m.CPtr(), 1) // the bit a racing plain store would wipe
	m.Unlock()
	if !within(acquired, 10*time.Second) {
		nogil.UnparkAll(m.CPtr()) // rescue the sleeper so that the test reports, not hangs
		<-acquired
		t.Fatal("lost wake-up: Unlock did not wake the announced sleeper")
	}
	if err := m.Close(); err != nil { // before the deferred Free
		t.Errorf("Close: %v", err)
	}
}
