// Package testutil holds the test helpers that nogil's packages share: a watchdog for tests
// whose threads may hang in C, polling with a timeout, and the checks of nogil's error
// conventions.
package testutil

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"
)

// Deadline is a watchdog: if the test is still running after d, the process panics with a
// dump of every goroutine. Threads asleep in C cannot be interrupted, so a hang would
// otherwise last until go test's own -timeout.
func Deadline(t testing.TB, d time.Duration) {
	t.Helper()
	name := t.Name()
	timer := time.AfterFunc(d, func() {
		buf := make([]byte, 4<<20)
		n := runtime.Stack(buf, true)
		panic(fmt.Sprintf("watchdog: %s still running after %v; goroutines:\n%s", name, d, buf[:n]))
	})
	t.Cleanup(func() { timer.Stop() })
}

// WaitFor polls cond every millisecond until it holds or timeout passes, and reports whether
// it held.
func WaitFor(timeout time.Duration, cond func() bool) bool {
	for end := time.Now().Add(timeout); ; time.Sleep(time.Millisecond) {
		if cond() {
			return true
		}
		if time.Now().After(end) {
			return false
		}
	}
}

// Must fails the test (from any goroutine) if err is not nil, and reports whether it was nil.
func Must(t testing.TB, what string, err error) bool {
	t.Helper()
	if err != nil {
		t.Errorf("%s: %v", what, err)
		return false
	}
	return true
}

// WantErr fails unless err matches target with errors.Is, its message starts with "nogil: "
// and it contains every hint.
func WantErr(t testing.TB, what string, err, target error, hints ...string) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Errorf("%s = %v, want %v", what, err, target)
		return
	}
	if !strings.HasPrefix(err.Error(), "nogil: ") {
		t.Errorf("%s: message %q does not start with \"nogil: \"", what, err)
	}
	for _, h := range hints {
		if !strings.Contains(err.Error(), h) {
			t.Errorf("%s: message %q does not say %q", what, err, h)
		}
	}
}
