package gtoken

import "testing"

// What a thread-state fast path pays for its goroutine check: one Current and one compare.
func BenchmarkCurrent(b *testing.B) {
	tok := Current()
	for i := 0; i < b.N; i++ {
		if Current() != tok {
			b.Fatal("token changed")
		}
	}
}
