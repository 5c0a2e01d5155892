package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// cpythonScript measures PyMutex with CPython's own benchmark (the function behind
// Tools/lockbench), so the comparison uses CPython's C loop rather than a re-creation of it.
// argv[1] is a JSON list of [threads, cs] pairs, argv[2] the time per cell in ms. It prints a
// single JSON object on its last line: {"version", "results"} or {"error"}.
//
// The GIL check comes after the import on purpose: in a free-threaded build, importing an
// extension that does not declare itself GIL-free turns the GIL back on.
const cpythonScript = `
import json, sys

def main():
    cells = json.loads(sys.argv[1])
    time_ms = int(sys.argv[2])
    try:
        import _testinternalcapi
    except ImportError as e:
        return {"error": "cannot import _testinternalcapi (%s)" % e}
    gil_enabled = getattr(sys, "_is_gil_enabled", None)
    if gil_enabled is None:
        return {"error": "not a free-threaded build (no sys._is_gil_enabled)"}
    if gil_enabled():
        return {"error": "the GIL is enabled (check PYTHON_GIL and -X gil)"}
    bench = getattr(_testinternalcapi, "benchmark_locks", None)
    if bench is None:
        return {"error": "_testinternalcapi has no benchmark_locks"}
    results = []
    for threads, cs in cells:
        rate, iters = bench(threads, True, cs, time_ms)
        results.append({"threads": threads, "cs": cs, "rate": rate, "iters": list(iters)})
    return {"version": sys.version.split()[0], "results": results}

print(json.dumps(main()))
`

// cpythonCell is one (threads, cs) measurement reported by the script.
type cpythonCell struct {
	Threads int     `json:"threads"`
	CS      int     `json:"cs"`
	Rate    float64 `json:"rate"`  // acquisitions per second, CPython's own figure
	Iters   []int64 `json:"iters"` // per-thread acquisitions
}

// cpythonOutput is the script's JSON line.
type cpythonOutput struct {
	Version string        `json:"version"`
	Error   string        `json:"error"`
	Results []cpythonCell `json:"results"`
}

// runCPython measures every cell with the interpreter at path in a single process (one
// start-up instead of one per cell). The map is keyed by cell. Any error means "no CPython
// rows": the caller reports it and carries on with the other locks.
func runCPython(path string, cells []cell, d time.Duration) (version string, res map[cell]result, err error) {
	pairs := make([][2]int, len(cells))
	for i, c := range cells {
		pairs[i] = [2]int{c.threads, c.cs}
	}
	arg, err := json.Marshal(pairs)
	if err != nil {
		return "", nil, err
	}
	ms := d.Milliseconds()
	if ms < 1 {
		ms = 1
	}
	// Generous: a hung interpreter should not hang the whole run forever, but a loaded
	// machine must not turn into a spurious failure either.
	limit := time.Duration(len(cells))*(time.Duration(ms)*time.Millisecond+5*time.Second) + 30*time.Second
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()

	cmd := exec.CommandContext(ctx, path, "-c", cpythonScript, string(arg), strconv.FormatInt(ms, 10))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if i := strings.LastIndexByte(msg, '\n'); i >= 0 {
			msg = msg[i+1:] // the exception line of a traceback says the most
		}
		if msg != "" {
			return "", nil, fmt.Errorf("%s: %v: %s", path, err, msg)
		}
		return "", nil, fmt.Errorf("%s: %v", path, err)
	}
	out, err := parseCPythonOutput(stdout.Bytes())
	if err != nil {
		return "", nil, fmt.Errorf("%s: %v", path, err)
	}
	res = make(map[cell]result, len(out.Results))
	for _, r := range out.Results {
		res[cell{threads: r.Threads, cs: r.CS}] = result{counts: r.Iters, khz: r.Rate / 1000}
	}
	return out.Version, res, nil
}

// parseCPythonOutput decodes the last non-empty line of the script's stdout (anything a site
// hook prints before it is ignored) and turns a reported error into a Go error.
func parseCPythonOutput(b []byte) (cpythonOutput, error) {
	var out cpythonOutput
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	last := strings.TrimSpace(lines[len(lines)-1])
	if last == "" {
		return out, errors.New("no output")
	}
	if err := json.Unmarshal([]byte(last), &out); err != nil {
		return out, fmt.Errorf("unexpected output %q: %v", last, err)
	}
	if out.Error != "" {
		return out, errors.New(out.Error)
	}
	for _, r := range out.Results {
		if len(r.Iters) != r.Threads {
			return out, fmt.Errorf("cell threads=%d cs=%d: %d per-thread counts", r.Threads, r.CS, len(r.Iters))
		}
	}
	return out, nil
}
