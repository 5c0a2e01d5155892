package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"math"
	"runtime"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"
)

func TestJain(t *testing.T) {
	for _, tc := range []struct {
		xs   []int64
		want float64
	}{
		{[]int64{1, 1}, 1},
		{[]int64{1, 0}, 0.5},
		{[]int64{7}, 1},
		{[]int64{5, 0, 0, 0}, 0.25},     // one thread got everything: 1/n
		{[]int64{1, 2, 3}, 36.0 / 42.0}, // (1+2+3)^2 / (3 * (1+4+9))
		{[]int64{1 << 40, 1 << 40}, 1},  // large counts must not overflow
		{nil, 0},                        // nothing to judge
		{[]int64{0, 0}, 0},              // no acquisitions at all
	} {
		if got := jain(tc.xs); math.Abs(got-tc.want) > 1e-12 {
			t.Errorf("jain(%v) = %v, want %v", tc.xs, got, tc.want)
		}
	}
}

func TestMedian(t *testing.T) {
	xs := []float64{5, 1, 3}
	if got := median(xs); got != 3 {
		t.Errorf("median(5,1,3) = %v, want 3", got)
	}
	if !slices.Equal(xs, []float64{5, 1, 3}) {
		t.Errorf("median reordered its argument: %v", xs)
	}
	if got := median([]float64{4, 1, 3, 2}); got != 2.5 {
		t.Errorf("median(4,1,3,2) = %v, want 2.5", got)
	}
	if got := median(nil); !math.IsNaN(got) {
		t.Errorf("median(nil) = %v, want NaN", got)
	}
}

func TestResultOf(t *testing.T) {
	// 3000 acquisitions in 1 ms are 3000 kHz.
	r := resultOf([]int64{1000, 2000}, time.Millisecond)
	if r.khz != 3000 {
		t.Errorf("khz = %v, want 3000", r.khz)
	}
}

func TestParseFlagsDefaults(t *testing.T) {
	cfg, err := parseLockbenchFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cfg.threads, []int{1, 2, 4}) || !slices.Equal(cfg.cs, []int{1, 10}) {
		t.Errorf("threads %v cs %v, want [1 2 4] [1 10]", cfg.threads, cfg.cs)
	}
	if cfg.duration != time.Second || cfg.format != "text" || !cfg.roundtrip || cfg.pin != "same" {
		t.Errorf("duration %v format %q roundtrip %v pin %q", cfg.duration, cfg.format, cfg.roundtrip, cfg.pin)
	}
	// Without --python there is no CPython row.
	if want := []string{"nogil-c", "nogil-go", "sync", "pthread"}; !slices.Equal(cfg.locks, want) {
		t.Errorf("locks %v, want %v", cfg.locks, want)
	}
	want := []cell{{1, 1}, {2, 1}, {4, 1}, {1, 10}, {2, 10}, {4, 10}}
	if got := cfg.cells(); !slices.Equal(got, want) {
		t.Errorf("cells %v, want %v", got, want)
	}
}

func TestParseFlags(t *testing.T) {
	cfg, err := parseLockbenchFlags([]string{
		"--threads", " 8, 2,8", "--cs=0,100", "--duration", "250ms", "--format", "json",
		"--locks", "pthread, cpython-pymutex,sync", "--python", "/x/python3.13t",
		"--roundtrip=false", "--pin", "none",
	}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cfg.threads, []int{8, 2}) || !slices.Equal(cfg.cs, []int{0, 100}) {
		t.Errorf("threads %v cs %v", cfg.threads, cfg.cs)
	}
	if cfg.duration != 250*time.Millisecond || cfg.format != "json" || cfg.python != "/x/python3.13t" ||
		cfg.roundtrip || cfg.pin != "none" {
		t.Errorf("parsed %+v", cfg)
	}
	// Table order, not command-line order.
	if want := []string{"sync", "pthread", "cpython-pymutex"}; !slices.Equal(cfg.locks, want) {
		t.Errorf("locks %v, want %v", cfg.locks, want)
	}

	// With --python and no --locks, every lock is measured.
	cfg, err = parseLockbenchFlags([]string{"--python", "py"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cfg.locks, lockNames()) {
		t.Errorf("locks %v, want %v", cfg.locks, lockNames())
	}
}

func TestParseFlagsErrors(t *testing.T) {
	for _, args := range [][]string{
		{"--threads", "0"},
		{"--threads", "1,x"},
		{"--threads", ""},
		{"--threads", "100000"},
		{"--cs", "-1"},
		{"--duration", "0s"},
		{"--duration", "-1s"},
		{"--format", "xml"},
		{"--locks", "sync,spinlock"},
		{"--locks", "cpython-pymutex"}, // needs --python
		{"--pin", "somewhere"},
		{"--no-such-flag"},
		{"extra"},
	} {
		_, err := parseLockbenchFlags(args, io.Discard)
		var ue usageError
		if !errors.As(err, &ue) {
			t.Errorf("%q: got %v, want a usage error", args, err)
		}
	}
	if _, err := parseLockbenchFlags([]string{"-h"}, io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h: got %v, want flag.ErrHelp", err)
	}
}

func TestParseCPythonOutput(t *testing.T) {
	out, err := parseCPythonOutput([]byte("some site hook chatter\n" +
		`{"version": "3.13.5", "results": [{"threads": 2, "cs": 1, "rate": 5e6, "iters": [3, 4]}]}` + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	if out.Version != "3.13.5" || len(out.Results) != 1 || out.Results[0].Rate != 5e6 ||
		!slices.Equal(out.Results[0].Iters, []int64{3, 4}) {
		t.Errorf("parsed %+v", out)
	}
	for _, bad := range []string{
		``,
		"\n\n",
		`not json`,
		`{"error": "the GIL is enabled"}`,
		`{"results": [{"threads": 2, "cs": 1, "rate": 1, "iters": [3]}]}`, // counts missing
	} {
		if _, err := parseCPythonOutput([]byte(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

// jsonKeys returns the sorted keys of one JSON object.
func jsonKeys(t *testing.T, line []byte) []string {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(line, &m); err != nil {
		t.Fatalf("%s: %v", line, err)
	}
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

var (
	lockRecordKeys      = []string{"cs", "fairness", "khz", "lock", "threads"}
	roundtripRecordKeys = []string{"cs", "khz", "lock", "ns_per_roundtrip", "pin", "threads"}
)

func TestJSONRecordShape(t *testing.T) {
	cfg := &lockbenchConfig{threads: []int{1, 2}, cs: []int{1}, locks: lockNames(), pin: "same"}
	rows := []row{
		{"sync", cell{2, 1}, result{[]int64{10, 30}, 40}},
		{"nogil-c", cell{2, 1}, result{[]int64{20, 20}, 40}},
		{"cpython-pymutex", cell{1, 1}, result{[]int64{5}, 5}},
	}
	rts := []roundtrip{{name: "futex-roundtrip", roundtrips: 3, perRound: []float64{2000, 1000, 3000}}}
	var buf bytes.Buffer
	if err := writeJSON(&buf, cfg, rows, rts); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 4 {
		t.Fatalf("%d lines, want 4:\n%s", len(lines), buf.String())
	}
	var got []string
	for i, line := range lines {
		want := lockRecordKeys
		if i == 3 {
			want = roundtripRecordKeys
		}
		if keys := jsonKeys(t, []byte(line)); !slices.Equal(keys, want) {
			t.Errorf("line %d keys %v, want %v", i, keys, want)
		}
		var r struct {
			Lock     string
			Threads  int
			CS       int
			KHz      float64
			Fairness float64
			NsPer    float64 `json:"ns_per_roundtrip"`
		}
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatal(err)
		}
		got = append(got, r.Lock)
		switch r.Lock {
		case "sync":
			if r.Threads != 2 || r.CS != 1 || r.KHz != 40 || r.Fairness != 0.8 {
				t.Errorf("sync record %+v", r)
			}
		case "futex-roundtrip":
			if r.Threads != 2 || r.CS != 0 || r.NsPer != 2000 || r.KHz != 500 {
				t.Errorf("round-trip record %+v", r)
			}
		}
	}
	// Grouped by cell (1 thread first), table order within a cell.
	if want := []string{"cpython-pymutex", "nogil-c", "sync", "futex-roundtrip"}; !slices.Equal(got, want) {
		t.Errorf("record order %v, want %v", got, want)
	}
}

// TestBuiltinLocksRun runs every in-process lock very briefly. Timing is not checked: only
// that the harness counts and that the fairness index is in range.
func TestBuiltinLocksRun(t *testing.T) {
	for _, l := range builtinLocks {
		for _, threads := range []int{1, 2} {
			r, err := l.run(threads, 1, 50*time.Millisecond)
			if err != nil {
				t.Errorf("%s threads=%d: %v", l.name, threads, err)
				continue
			}
			if len(r.counts) != threads {
				t.Errorf("%s threads=%d: %d counts", l.name, threads, len(r.counts))
			}
			var total int64
			for _, c := range r.counts {
				if c < 0 {
					t.Errorf("%s threads=%d: negative count %d", l.name, threads, c)
				}
				total += c
			}
			if total <= 0 || r.khz <= 0 {
				t.Errorf("%s threads=%d: counts %v, %v kHz", l.name, threads, r.counts, r.khz)
			}
			if f := jain(r.counts); !(f > 0 && f <= 1) {
				t.Errorf("%s threads=%d: fairness %v out of (0, 1]", l.name, threads, f)
			}
		}
	}
}

func TestRoundtripsRun(t *testing.T) {
	pins := []string{"same", "none"}
	if runtime.NumCPU() >= 2 {
		pins = append(pins, "cross")
	}
	for _, pin := range pins {
		rts, err := runRoundtrips(50*time.Millisecond, pinModes[pin])
		if err != nil {
			t.Errorf("pin %s: %v", pin, err)
			continue
		}
		if len(rts) != len(roundtripKinds) {
			t.Fatalf("pin %s: %d results", pin, len(rts))
		}
		for _, rt := range rts {
			if rt.roundtrips <= 0 || !(rt.nsPer() > 0) {
				t.Errorf("pin %s: %s: %d round trips, %v ns each", pin, rt.name, rt.roundtrips, rt.nsPer())
			}
		}
	}
}

// TestCommand runs the whole command through the dispatcher in both output formats.
func TestCommand(t *testing.T) {
	var stdout, stderr bytes.Buffer
	args := []string{"lockbench", "--duration", "10ms", "--threads", "1,2", "--cs", "0", "--format", "json"}
	if code := run(args, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d, stderr:\n%s", code, stderr.String())
	}
	sc := bufio.NewScanner(&stdout)
	n := 0
	for sc.Scan() {
		n++
		keys := jsonKeys(t, sc.Bytes())
		if !slices.Equal(keys, lockRecordKeys) && !slices.Equal(keys, roundtripRecordKeys) {
			t.Errorf("record keys %v", keys)
		}
	}
	if want := 2*len(builtinLocks) + len(roundtripKinds); n != want {
		t.Errorf("%d records, want %d:\n%s", n, want, stdout.String())
	}

	stdout.Reset()
	args = []string{"lockbench", "--duration", "10ms", "--threads", "2", "--cs", "1"}
	if code := run(args, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d, stderr:\n%s", code, stderr.String())
	}
	for _, want := range []string{"vs sync", "vs pthread", "nogil-go", "park-roundtrip", "vs futex"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("text output lacks %q:\n%s", want, stdout.String())
		}
	}
}

func TestDispatch(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
	}{
		{nil, 2},
		{[]string{"frobnicate"}, 2},
		{[]string{"help"}, 0},
		{[]string{"--help"}, 0},
		{[]string{"help", "lockbench"}, 0},
		{[]string{"help", "frobnicate"}, 2},
		{[]string{"lockbench", "-h"}, 0},
		{[]string{"lockbench", "--threads", "x"}, 2},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(tc.args, &stdout, &stderr); code != tc.code {
			t.Errorf("%q: exit %d, want %d; stderr:\n%s", tc.args, code, tc.code, stderr.String())
		}
	}
	var stdout bytes.Buffer
	run([]string{"help"}, &stdout, io.Discard)
	if !strings.Contains(stdout.String(), "lockbench") {
		t.Errorf("usage does not list lockbench:\n%s", stdout.String())
	}
}
