package mimalloc_shim

import (
	"errors"
	"os"
	"os/exec"
	"testing"
	"unsafe"

	"github.com/nogil-go/nogil"
	"golang.org/x/sys/unix"
)

// thpSupported reports whether the kernel accepts MADV_HUGEPAGE (built with transparent
// huge pages); where it does not, no segment is ever advised.
func thpSupported(t *testing.T) bool {
	t.Helper()
	m, err := unix.Mmap(-1, 0, 2<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANON)
	if err != nil {
		t.Fatalf("mmap: %v", err)
	}
	defer unix.Munmap(m)
	return unix.Madvise(m, unix.MADV_HUGEPAGE) == nil
}

func TestSetHugepagesRejectsUnknownPolicies(t *testing.T) {
	before := CurrentHugepages()
	for _, m := range []Hugepages{-1, 3, 1 << 32, 1<<32 + 1} {
		if err := SetHugepages(m); !errors.Is(err, nogil.ErrInvalid) {
			t.Errorf("SetHugepages(%v) = %v, want an error matching nogil.ErrInvalid", m, err)
		}
	}
	if got := CurrentHugepages(); got != before {
		t.Errorf("policy after refused sets: %v, want %v", got, before)
	}
}

// The auto policy through the Go API: a heap's first small segment stays on ordinary pages,
// and filling it (densely: one size class) gets that one and the next advised, as Stats
// reports.
func TestHugepagesAutoCountsInStats(t *testing.T) {
	before := CurrentHugepages()
	must(t, "SetHugepages", SetHugepages(HugepagesAuto))
	defer SetHugepages(before)
	want := uint64(0)
	if thpSupported(t) {
		want = 2
	}
	g := startBound(t, newInterp(t), true)
	g.run(func(ts *nogil.ThreadState) {
		h := heap(t, ts, Object)
		var blocks []unsafe.Pointer
		defer func() {
			for _, p := range blocks {
				must(t, "Free", h.Free(p))
			}
		}()
		for stats(t, h).Segments < 2 {
			p, err := h.Malloc(1024)
			if !must(t, "Malloc", err) {
				return
			}
			blocks = append(blocks, p)
			if s := stats(t, h); s.Segments == 1 && s.SegmentsHugepage != 0 {
				t.Fatalf("one segment, %d advised: want 0", s.SegmentsHugepage)
			}
		}
		if got := stats(t, h).SegmentsHugepage; got != want {
			t.Errorf("two segments, %d advised: want %d", got, want)
		}
	})
}

// NOGIL_HUGEPAGES sets the initial policy: checked in fresh processes (the variable is read
// once).
func TestHugepagesEnvironment(t *testing.T) {
	if v, ok := os.LookupEnv("NOGIL_TEST_HUGEPAGES_CHILD"); ok {
		if got := CurrentHugepages().String(); got != v {
			t.Fatalf("NOGIL_HUGEPAGES=%q: policy %s, want %s", os.Getenv("NOGIL_HUGEPAGES"), got, v)
		}
		return
	}
	for env, want := range map[string]string{"never": "never", "always": "always", "huge": "auto"} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHugepagesEnvironment$", "-test.count=1")
		cmd.Env = append(os.Environ(), "NOGIL_HUGEPAGES="+env, "NOGIL_TEST_HUGEPAGES_CHILD="+want)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("NOGIL_HUGEPAGES=%q: %v\n%s", env, err, out)
		}
	}
}
