package gtoken

import (
	"runtime"
	"testing"
	"time"

	"github.com/nogil-go/nogil/internal/testutil"
	"golang.org/x/sys/unix"
)

// IsCurrentGoroutine follows the goroutine across threads and refuses other goroutines.
func TestIsCurrentGoroutine(t *testing.T) {
	if !NamesGoroutine {
		t.Skip("tokens name only the thread here")
	}
	type result struct {
		moved, same bool
		tok         Token
	}
	res := make(chan result)
	go func() {
		runtime.LockOSThread()
		tok := Current()
		runtime.UnlockOSThread()
		tid := unix.Gettid()
		release, ok := testutil.OccupyThread(tid, time.Second, false)
		if ok {
			defer release()
		}
		res <- result{unix.Gettid() != tid, tok.IsCurrentGoroutine(), tok}
	}()
	r := <-res
	if r.tok.IsCurrentGoroutine() {
		t.Errorf("another goroutine's token %#x is IsCurrentGoroutine", r.tok)
	}
	if !r.moved {
		t.Skip("the goroutine did not move to another thread")
	}
	if !r.same {
		t.Errorf("token %#x not IsCurrentGoroutine for its own goroutine on another thread", r.tok)
	}
}
