package gtoken

import (
	"runtime"
	"testing"
	"time"

	"github.com/nogil-go/nogil/internal/testutil"
	"golang.org/x/sys/unix"
)

func TestCurrentIsStablePerGoroutine(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	a := Current()
	runtime.Gosched()
	if b := Current(); a != b || a == (Token{}) || !a.IsCurrent() {
		t.Fatalf("two calls from one locked goroutine: %#x, %#x (IsCurrent %v)", a, b, a.IsCurrent())
	}
}

// IsCurrent compares both parts: a token with this goroutine's descriptor but another
// thread's pointer is not current, nor is one with this thread but another goroutine.
func TestIsCurrentComparesBothParts(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	other := make(chan Token)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		other <- Current()
	}()
	o, own := <-other, Current()
	for _, c := range []struct {
		name string
		tok  Token
		want bool
	}{
		{"own", own, true},
		{"other goroutine's", o, false},
		{"own goroutine, other thread", Token{own.g, o.tp}, false},
		{"other goroutine, own thread", Token{o.g, own.tp}, false},
		{"zero", Token{}, false},
	} {
		if own.g == 0 && c.tok.tp == own.tp {
			continue // the gettid fallback has no goroutine part
		}
		if got := c.tok.IsCurrent(); got != c.want {
			t.Errorf("%s token %#x: IsCurrent = %v, want %v (current %#x)", c.name, c.tok, got, c.want, own)
		}
	}
}

// Goroutines alive at the same time get different tokens, also when they are locked to
// their threads as thread-state owners are; and each thread has its own thread part, so that
// a goroutine descriptor reused while its old thread still exits is told apart.
func TestCurrentDiffersBetweenLiveGoroutines(t *testing.T) {
	const n = 16
	tokens := make(chan Token)
	release := make(chan struct{})
	for i := 0; i < n; i++ {
		go func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			tokens <- Current()
			<-release
		}()
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	own := Current()
	seen := map[Token]bool{own: true}
	threads := map[uintptr]bool{own.tp: true}
	for i := 0; i < n; i++ {
		tok := <-tokens
		if seen[tok] {
			t.Errorf("token %#x given to two live goroutines", tok)
		}
		if threads[tok.tp] {
			t.Errorf("thread part %#x seen on two locked threads", tok.tp)
		}
		seen[tok], threads[tok.tp] = true, true
	}
	close(release)
}

// A goroutine that unlocks its thread and runs on another one no longer matches the token
// it took before: a goroutine-only token would let a ThreadState misused this way pass its
// check on whatever thread the goroutine lands on.
func TestCurrentChangesWithTheThread(t *testing.T) {
	var before Token
	tid := make(chan int)
	wake := make(chan struct{})
	after := make(chan Token)
	isBefore := make(chan bool, 1)
	go func() {
		runtime.LockOSThread()
		before = Current()
		own := unix.Gettid() // read while locked: unlocked, a preemption may move it
		runtime.UnlockOSThread()
		tid <- own
		<-wake
		// Locked while it looks, so that the token is of the thread the id names.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if unix.Gettid() == <-tid {
			after <- Token{}
			return
		}
		isBefore <- before.IsCurrent()
		after <- Current()
	}()
	old := <-tid
	release, ok := testutil.OccupyThread(old, 10*time.Second, false)
	if !ok {
		t.Skip("no goroutine got onto the thread to keep it busy")
	}
	defer release()
	close(wake)
	tid <- old
	got := <-after
	if got == (Token{}) {
		t.Fatal("the goroutine ran on its old thread, which another goroutine holds locked")
	}
	if got == before {
		t.Fatalf("token %#x unchanged after the goroutine moved to another thread", before)
	}
	if moved := <-isBefore; moved {
		t.Errorf("IsCurrent true for token %#x after the goroutine moved to another thread", before)
	}
	if got.g != before.g {
		t.Errorf("goroutine part changed from %#x to %#x for one goroutine", before.g, got.g)
	}
}
