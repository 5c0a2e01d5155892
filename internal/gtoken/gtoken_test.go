package gtoken

import (
	"runtime"
	"testing"
)

func TestCurrentIsStablePerGoroutine(t *testing.T) {
	a := Current()
	runtime.Gosched()
	if b := Current(); a != b || a == 0 {
		t.Fatalf("two calls from one goroutine: %#x, %#x", a, b)
	}
}

// Goroutines alive at the same time get different tokens, also when they are locked to
// their threads as thread-state owners are.
func TestCurrentDiffersBetweenLiveGoroutines(t *testing.T) {
	const n = 16
	tokens := make(chan uintptr)
	release := make(chan struct{})
	for i := 0; i < n; i++ {
		go func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			tokens <- Current()
			<-release
		}()
	}
	seen := map[uintptr]bool{Current(): true}
	for i := 0; i < n; i++ {
		tok := <-tokens
		if seen[tok] {
			t.Errorf("token %#x given to two live goroutines", tok)
		}
		seen[tok] = true
	}
	close(release)
}
