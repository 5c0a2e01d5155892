package gtoken

import (
	"runtime"
	"testing"
)

// What a thread-state fast path pays for its goroutine check: one Current and one compare,
// on a locked goroutine as the fast paths' callers are.
func BenchmarkCurrent(b *testing.B) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	tok := Current()
	for i := 0; i < b.N; i++ {
		if Current() != tok {
			b.Fatal("token changed")
		}
	}
}

func BenchmarkIsCurrent(b *testing.B) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	tok := Current()
	for i := 0; i < b.N; i++ {
		if !tok.IsCurrent() {
			b.Fatal("token changed")
		}
	}
}
