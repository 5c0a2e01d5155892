package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestQsbrbenchFlags(t *testing.T) {
	cfg, err := parseQsbrbenchFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.duration != 500*time.Millisecond || cfg.rounds != 5 || cfg.reportEvery != 1000 || cfg.format != "text" ||
		cfg.delayedCap != defaultDelayedCap ||
		!slices.Equal(cfg.readers, []int{1, 2}) || !slices.Equal(cfg.slots, []int{1, 64, 1024, 4096}) {
		t.Errorf("defaults %+v", cfg)
	}
	for _, args := range [][]string{
		{"--duration", "0s"},
		{"--rounds", "0"},
		{"--readers", "x"},
		{"--readers", "100"},
		{"--slots", "0"},
		{"--report-every", "0"},
		{"--delayed-cap", "-1"},
		{"--format", "xml"},
		{"extra"},
	} {
		var ue usageError
		if _, err := parseQsbrbenchFlags(args, io.Discard); !errors.As(err, &ue) {
			t.Errorf("%q: got %v, want a usage error", args, err)
		}
	}
	if _, err := parseQsbrbenchFlags([]string{"-h"}, io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h: got %v, want flag.ErrHelp", err)
	}
}

// TestQsbrbenchJSON runs the whole command briefly: every record has exactly the documented
// fields, a known implementation and a positive value, and every measurement is there.
func TestQsbrbenchJSON(t *testing.T) {
	var stdout, stderr bytes.Buffer
	args := []string{"qsbrbench", "--duration", "20ms", "--rounds", "2", "--readers", "1",
		"--slots", "1,64", "--format", "json"}
	if code := run(args, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d, stderr:\n%s", code, stderr.String())
	}
	urcu, _ := liburcuImplementation()
	impls := map[string]bool{implNogilC: true, implNogilGo: true, implNogilGoReporter: true, implNogilGoReport: true, implGoFloor: true, implLiburcu: urcu != nil}
	seen := map[string]int{} // bench/impl -> records
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
		if want := []string{"bench", "impl", "params", "unit", "value"}; !slices.Equal(keys, want) {
			t.Errorf("%s: keys %v, want %v", line, keys, want)
		}
		var rec qsbrRecord
		if err := json.Unmarshal(line, &rec); err != nil {
			t.Fatalf("%s: %v", line, err)
		}
		if !impls[rec.Impl] {
			t.Errorf("%s: unexpected impl %q", line, rec.Impl)
		}
		if rec.Bench == "" || rec.Unit == "" || rec.Params == nil || !(rec.Value > 0) {
			t.Errorf("%s: empty field or non-positive value", line)
		}
		seen[rec.Bench+"/"+rec.Impl]++
	}
	want := map[string]int{
		"quiescent-state/nogil-c":           1,
		"quiescent-state/nogil-go":          1,
		"quiescent-state/nogil-go-reporter": 1,
		"quiescent-state/nogil-go-report":   1,
		"quiescent-state/go-floor":          1,
		"grace-period/nogil-c":              2, // mean and median
		"delayed-free-throughput/nogil-c":   1,
		"delayed-free-peak-pending/nogil-c": 1,
		"poll/nogil-c":                      2 * len(pollCases),
	}
	if urcu != nil {
		for _, b := range []string{"quiescent-state", "delayed-free-throughput", "delayed-free-peak-pending"} {
			want[b+"/liburcu"] = 1
		}
		want["grace-period/liburcu"] = 2
	}
	wantRecordCounts(t, seen, want)
}

// TestQsbrbenchText checks the table output, including the note of a build without liburcu.
func TestQsbrbenchText(t *testing.T) {
	var stdout, stderr bytes.Buffer
	args := []string{"qsbrbench", "--duration", "10ms", "--rounds", "1", "--readers", "1", "--slots", "4"}
	if code := run(args, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d, stderr:\n%s", code, stderr.String())
	}
	out := stdout.String()
	for _, s := range []string{"quiescent-state cost", "nogil-go", "nogil-go-reporter", "nogil-go-report", "go-floor", "grace-period latency", "delayed-free",
		"back-pressure cap: 262144 bytes",
		"poll cost", "fail (laggard hint)"} {
		if !strings.Contains(out, s) {
			t.Errorf("output lacks %q:\n%s", s, out)
		}
	}
	urcu, _ := liburcuImplementation()
	if hasNote := strings.Contains(out, liburcuNote); hasNote != (urcu == nil) {
		t.Errorf("liburcu built in: %v, note printed: %v:\n%s", urcu != nil, hasNote, out)
	}
	if urcu != nil && !strings.Contains(out, "vs liburcu") {
		t.Errorf("no comparison column:\n%s", out)
	}
}

// wantRecordCounts fails unless the JSON records seen (by key) are exactly the wanted ones,
// each as many times as wanted.
func wantRecordCounts(t *testing.T, seen, want map[string]int) {
	t.Helper()
	for k, n := range want {
		if seen[k] != n {
			t.Errorf("%s: %d records, want %d", k, seen[k], n)
		}
	}
	if len(seen) != len(want) {
		t.Errorf("records for %v, want only %v", seen, want)
	}
}
