package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestAllocbenchFlags(t *testing.T) {
	cfg, err := parseAllocbenchFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.duration != 4*time.Second || cfg.rounds != 20 || cfg.ring != 1024 || cfg.reportEvery != 1000 ||
		cfg.format != "text" || !slices.Equal(cfg.threads, []int{1, 2}) ||
		!slices.Equal(cfg.windows, []int{1024, 100000}) || !slices.Equal(cfg.benches, allBenches) || cfg.allocs != nil {
		t.Errorf("defaults %+v", cfg)
	}
	for _, args := range [][]string{
		{"--duration", "0s"},
		{"--rounds", "0"},
		{"--threads", "0"},
		{"--windows", "x"},
		{"--ring", "1000"},
		{"--report-every", "0"},
		{"--sample-every", "1000"},
		{"--bench", "window,nope"},
		{"--alloc", "jemalloc"},
		{"--format", "xml"},
		{"extra"},
	} {
		var ue usageError
		if _, err := parseAllocbenchFlags(args, io.Discard); !errors.As(err, &ue) {
			t.Errorf("%q: got %v, want a usage error", args, err)
		}
	}
	if _, err := parseAllocbenchFlags([]string{"-h"}, io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h: got %v, want flag.ErrHelp", err)
	}
}

// builtAllocs lists the allocators of this build (mimalloc only with the nogil_mimalloc tag).
func builtAllocs() map[string]bool {
	impls, _ := allocators()
	m := map[string]bool{}
	for _, a := range impls {
		m[a.name] = true
	}
	return m
}

// TestPairedRatio: the median of the rounds' ratios, not the ratio of the two medians.
func TestPairedRatio(t *testing.T) {
	a := []float64{1, 2, 3}
	b := []float64{3, 1, 2} // ratios 1/3, 2, 1.5; the medians are both 2
	if got := pairedRatio(a, b, median(a), median(b)); got != 1.5 {
		t.Errorf("pairedRatio = %v, want 1.5", got)
	}
	if got := pairedRatio(a, b[:2], 3, 1.5); got != 2 {
		t.Errorf("unpaired rounds: %v, want the ratio of the medians, 2", got)
	}
}

// TestAllocbenchJSON runs every measurement briefly for every allocator built in: every record
// has the documented fields and a positive rate and RSS, and every expected record is there.
func TestAllocbenchJSON(t *testing.T) {
	var stdout, stderr bytes.Buffer
	args := []string{"allocbench", "--duration", "20ms", "--rounds", "1", "--threads", "1,2",
		"--windows", "64,2000", "--ring", "64", "--sample-every", "1024", "--format", "json"}
	if code := run(args, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d, stderr:\n%s", code, stderr.String())
	}
	built := builtAllocs()
	baseKeys := []string{"alloc", "base_rss_kb", "bench", "cpu_mops", "mops", "peak_rss_kb", "round_cpu_mops",
		"round_mops", "rounds", "threads", "window"}
	gatingKeys := append(slices.Clone(baseKeys), "bytes_waiting_mean", "bytes_waiting_peak", "pages_deferred",
		"pages_released_after_goal", "pages_reused_same_class", "pages_waiting_mean", "pages_waiting_peak",
		"reader_reads", "readers", "report_every", "sample_every", "samples")
	slices.Sort(gatingKeys)
	seen := map[string]int{}
	sc := bufio.NewScanner(&stdout)
	for sc.Scan() {
		line := sc.Bytes()
		var m map[string]json.RawMessage
		if err := json.Unmarshal(line, &m); err != nil {
			t.Fatalf("%s: %v", line, err)
		}
		var keys []string
		for k := range m {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		var rec allocRecord
		if err := json.Unmarshal(line, &rec); err != nil {
			t.Fatalf("%s: %v", line, err)
		}
		want := baseKeys
		if rec.Bench == benchGating {
			want = gatingKeys
		}
		if !slices.Equal(keys, want) {
			t.Errorf("%s: keys %v, want %v", line, keys, want)
		}
		if !built[rec.Alloc] {
			t.Errorf("%s: unexpected alloc %q", line, rec.Alloc)
		}
		if !(rec.Mops > 0) || !(rec.CPUMops > 0) || rec.PeakRSSKB <= 0 || rec.BaseRSSKB <= 0 || rec.PeakRSSKB < rec.BaseRSSKB || rec.Rounds != 1 {
			t.Errorf("%s: non-positive rate or RSS, or wrong rounds", line)
		}
		if len(rec.RoundMops) != rec.Rounds || len(rec.RoundCPUMops) != rec.Rounds || rec.RoundMops[0] != rec.Mops {
			t.Errorf("%s: per-round rates do not match the rounds", line)
		}
		key := fmt.Sprintf("%s/%s/%d/%d", rec.Bench, rec.Alloc, rec.Threads, rec.Window)
		if rec.GatingFields != nil {
			key += fmt.Sprintf("/r%d", rec.Readers)
			if rec.Samples <= 0 || rec.ReportEvery != 1000 || rec.SampleEvery != 1024 {
				t.Errorf("%s: gating fields", line)
			}
			if (rec.Readers > 0) != (rec.ReaderReads > 0) {
				t.Errorf("%s: %d readers made %d reads", line, rec.Readers, rec.ReaderReads)
			}
		}
		seen[key]++
	}
	want := map[string]int{}
	for a := range built {
		for _, w := range []int{64, 2000} {
			for _, th := range []int{1, 2} {
				want[fmt.Sprintf("%s/%s/%d/%d", benchWindow, a, th, w)] = 1
			}
			if a == allocNogil {
				want[fmt.Sprintf("%s/%s/1/%d/r0", benchGating, a, w)] = 1
				want[fmt.Sprintf("%s/%s/1/%d/r1", benchGating, a, w)] = 1
			}
		}
		want[fmt.Sprintf("%s/%s/2/64", benchXthread, a)] = 1
	}
	wantRecordCounts(t, seen, want)
}

// TestAllocbenchText checks the table output, including the notes of a build without some
// allocators.
func TestAllocbenchText(t *testing.T) {
	var stdout, stderr bytes.Buffer
	args := []string{"allocbench", "--duration", "10ms", "--rounds", "2", "--threads", "1",
		"--windows", "100", "--ring", "16"}
	if code := run(args, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d, stderr:\n%s", code, stderr.String())
	}
	out := stdout.String()
	for _, s := range []string{"replace-in-window", "cross-thread frees", "glibc", "CPU Mops", "peak RSS MiB"} {
		if !strings.Contains(out, s) {
			t.Errorf("output lacks %q:\n%s", s, out)
		}
	}
	built := builtAllocs()
	if hasNote := strings.Contains(out, mimallocNote); hasNote == built[allocMimalloc] {
		t.Errorf("mimalloc built in: %v, note printed: %v:\n%s", built[allocMimalloc], hasNote, out)
	}
	if built[allocNogil] && !strings.Contains(out, "QSBR gating") {
		t.Errorf("no gating table:\n%s", out)
	}
	if built[allocMimalloc] && !strings.Contains(out, "libmimalloc 2.") {
		t.Errorf("no mimalloc version:\n%s", out)
	}
}

// TestAllocbenchCorruption injects a damaged block into each allocator's window and
// cross-thread loops: the pattern checks must turn it into a failed run.
func TestAllocbenchCorruption(t *testing.T) {
	defer func(v int64) { allocbenchCorruptAfter = v }(allocbenchCorruptAfter)
	allocbenchCorruptAfter = 1
	for a := range builtAllocs() {
		for _, bench := range []string{benchWindow, benchXthread} {
			t.Run(a+"/"+bench, func(t *testing.T) {
				var stdout, stderr bytes.Buffer
				args := []string{"allocbench", "--duration", "20ms", "--rounds", "1", "--threads", "1",
					"--windows", "128", "--ring", "64", "--bench", bench, "--alloc", a}
				code := run(args, &stdout, &stderr)
				if code != 1 || !strings.Contains(stderr.String(), "pattern check failed") {
					t.Errorf("exit %d, want 1 with a pattern check failure; stderr:\n%s", code, stderr.String())
				}
			})
		}
	}
	// Without the knob the same runs pass (the failure above is the injected one).
	allocbenchCorruptAfter = 0
	var stdout, stderr bytes.Buffer
	args := []string{"allocbench", "--duration", "20ms", "--rounds", "1", "--threads", "1",
		"--windows", "128", "--ring", "64", "--bench", "window,cross-thread"}
	if code := run(args, &stdout, &stderr); code != 0 {
		t.Errorf("exit %d without fault injection, stderr:\n%s", code, stderr.String())
	}
}

// TestAllocbenchChildRSS backs the choice of VmHWM over ru_maxrss (allocbenchChildEnv): with
// a parent whose peak RSS is large, the measuring child's VmHWM is its own, small one.
func TestAllocbenchChildRSS(t *testing.T) {
	const parentMiB = 128
	ballast := make([]byte, parentMiB<<20)
	for i := 0; i < len(ballast); i += 4096 {
		ballast[i] = 1
	}
	res, err := runChildProcess(context.Background(), childSpec{Alloc: allocGlibc, Bench: benchWindow,
		Threads: 1, Window: 1024, TimeNS: int64(10 * time.Millisecond), Seed: 1})
	runtime.KeepAlive(ballast)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("child: VmHWM before %d KiB, after %d KiB; ru_maxrss %d KiB (parent touched %d MiB)",
		res.BaseRSSKB, res.PeakRSSKB, res.MaxRSSKB, parentMiB)
	if res.PeakRSSKB <= 0 || res.PeakRSSKB >= parentMiB/2*1024 {
		t.Errorf("child VmHWM %d KiB: not the child's own peak", res.PeakRSSKB)
	}
	if res.MaxRSSKB < parentMiB*1024 {
		t.Logf("ru_maxrss did not inherit the parent's peak on this kernel")
	}
}

// TestAllocbenchGlibcCheck: a malloc interposed with LD_PRELOAD (here Debian's libmimalloc,
// which exports malloc and free) makes the glibc rows fail instead of measuring it.
func TestAllocbenchGlibcCheck(t *testing.T) {
	// The library of this binary's architecture: one of another (an amd64 host's, when this
	// arm64 binary runs under qemu-user) would not load, and the row would measure glibc.
	multiarch := map[string]string{"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu"}[runtime.GOARCH]
	lib := "/usr/lib/" + multiarch + "/libmimalloc.so.2"
	if _, err := os.Stat(lib); multiarch == "" || err != nil {
		t.Skipf("no %s libmimalloc.so.2 to preload", runtime.GOARCH)
	}
	t.Setenv("LD_PRELOAD", lib)
	_, err := runChildProcess(context.Background(), childSpec{Alloc: allocGlibc, Bench: benchWindow,
		Threads: 1, Window: 16, TimeNS: int64(time.Millisecond), Seed: 1})
	if err == nil || !strings.Contains(err.Error(), "not glibc") {
		t.Errorf("glibc row under LD_PRELOAD=%s: got %v, want the not-glibc error", lib, err)
	}
}
