package main

// #cgo CFLAGS: -I${SRCDIR}/../../csrc/include -Wall
// #include <stdlib.h>
// #include "nogil.h"
// #include "allocbench.h"
import "C"

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func init() {
	// A measuring child (see runChild) does its one measurement and exits before main runs.
	if spec, ok := os.LookupEnv(allocbenchChildEnv); ok {
		os.Exit(runChild(spec, os.Stdout))
	}
	register(&command{
		name:    "allocbench",
		summary: "the page allocator against libmimalloc and glibc malloc: window test, cross-thread frees, QSBR gating",
		run:     runAllocbench,
	})
}

// Allocator names, as they appear in the table and in the JSON records' "alloc".
const (
	allocNogil    = "nogil"
	allocMimalloc = "mimalloc"
	allocGlibc    = "glibc"
)

// Benchmark names (the JSON records' "bench").
const (
	benchWindow  = "window"
	benchXthread = "cross-thread"
	benchGating  = "qsbr-gating"
)

var allBenches = []string{benchWindow, benchXthread, benchGating}

// mimallocNote tells how to get the mimalloc rows when the tool was built without them.
const mimallocNote = "mimalloc rows need: apt install libmimalloc-dev; go run -tags nogil_mimalloc ./cmd/nogil allocbench"

// An allocImpl is one allocator. Its functions run in the measuring child only.
type allocImpl struct {
	name string
	// open prepares the process (mimalloc: loads the library); nil: nothing to do.
	open func() error
	run  func(p *C.ab_params, r *C.ab_result) C.int
	// version describes the allocator for the output header ("" for none); child side.
	version func() string
}

var glibcImpl = &allocImpl{
	name: allocGlibc,
	run:  func(p *C.ab_params, r *C.ab_result) C.int { return C.ab_run_glibc(p, r) },
	open: func() error {
		// The glibc rows must measure glibc: nothing may interpose malloc or free (LD_PRELOAD,
		// or a library linked with its own malloc, such as Debian's libmimalloc.so).
		for _, o := range []string{C.GoString(C.ab_malloc_origin()), C.GoString(C.ab_free_origin())} {
			if !strings.Contains(o, "libc.so") {
				return fmt.Errorf("malloc/free resolve to %q, not glibc's libc.so: the glibc rows would not measure glibc", o)
			}
		}
		return nil
	},
	version: func() string { return C.GoString(C.ab_malloc_origin()) },
}

// allocators returns the allocators built into this binary, in table order, and notes on the
// missing ones.
func allocators() (impls []*allocImpl, notes []string) {
	if n, note := nogilImplementation(); n != nil {
		impls = append(impls, n)
	} else {
		notes = append(notes, note)
	}
	if m, note := mimallocImplementation(); m != nil {
		impls = append(impls, m)
	} else {
		notes = append(notes, note)
	}
	return append(impls, glibcImpl), notes
}

// abError converts an ab_run_* return value: 0, an errno value, or a nogil status (negative).
func abError(rc C.int) error {
	switch {
	case rc == 0:
		return nil
	case rc < 0:
		return fmt.Errorf("nogil: %s", C.GoString(C.ng_strerror(rc)))
	case syscall.Errno(rc) == syscall.EPROTO:
		return errCorrupt
	default:
		return syscall.Errno(rc)
	}
}

var errCorrupt = errors.New("block pattern check failed: the allocator handed out a block that " +
	"overlaps another live block, or wrote into a live block")

// ---- The measuring child -------------------------------------------------------------------

// allocbenchChildEnv carries a childSpec (JSON) to a re-executed copy of the binary.
//
// Every measurement runs in a fresh child process so that its peak RSS is its own: the peak
// of a process only grows, and the memory an allocator keeps after a measurement (glibc's
// arenas and trimmed-only-at-the-top heaps, mimalloc's segment cache, the page allocator's
// segments) would stay resident and count in the next measurement. The child reports VmHWM
// from /proc/self/status, its own address space's high-water mark since execve. Not
// getrusage(RUSAGE_SELF).ru_maxrss: Linux carries the high-water mark of the address space
// that execve replaces over into it (exec_mmap: setmax_mm_hiwater_rss), and os/exec spawns
// with CLONE_VM|CLONE_VFORK, so a child's ru_maxrss starts at the parent's peak (checked by
// TestAllocbenchChildRSS). Resetting VmHWM in one process (writing 5 to /proc/self/clear_refs)
// would not help either: it resets to the current RSS, which includes what earlier
// measurements' allocators still hold.
const allocbenchChildEnv = "NOGIL_ALLOCBENCH_CHILD"

// childSpec is one measurement.
type childSpec struct {
	Alloc        string `json:"alloc"`
	Bench        string `json:"bench"`
	Threads      int    `json:"threads"`
	Window       int64  `json:"window"`
	TimeNS       int64  `json:"time_ns"`
	Seed         uint64 `json:"seed"`
	Readers      int    `json:"readers"`
	ReportEvery  int    `json:"report_every"`
	SampleEvery  int64  `json:"sample_every"`
	CorruptAfter int64  `json:"corrupt_after"`
}

// childResult is what the child prints on stdout.
type childResult struct {
	Error            string  `json:"error,omitempty"`
	Version          string  `json:"version,omitempty"`
	Ops              int64   `json:"ops"`
	ElapsedNS        int64   `json:"elapsed_ns"`
	CPUNS            int64   `json:"cpu_ns"`
	BaseRSSKB        int64   `json:"base_rss_kb"` // VmHWM before the measurement
	PeakRSSKB        int64   `json:"peak_rss_kb"` // VmHWM after it
	MaxRSSKB         int64   `json:"maxrss_kb"`   // getrusage's ru_maxrss (for the test)
	Samples          int64   `json:"samples"`
	BytesWaitingPeak uint64  `json:"bytes_waiting_peak"`
	PagesWaitingPeak uint64  `json:"pages_waiting_peak"`
	BytesWaitingMean float64 `json:"bytes_waiting_mean"`
	PagesWaitingMean float64 `json:"pages_waiting_mean"`
	PagesDeferred    uint64  `json:"pages_deferred"`
	PagesReused      uint64  `json:"pages_reused_same_class"`
	PagesReleased    uint64  `json:"pages_released_after_goal"`
	ReaderReads      int64   `json:"reader_reads"`
}

// allocbenchCorruptAfter is the tests' fault injection: when positive, every measurement
// damages one live block's pattern after this many ops, and must fail.
var allocbenchCorruptAfter int64

// runChild performs the measurement in spec and prints a childResult; it returns the exit
// status.
func runChild(spec string, stdout io.Writer) int {
	res := measure(spec)
	if err := json.NewEncoder(stdout).Encode(res); err != nil || res.Error != "" {
		return 1
	}
	return 0
}

func measure(specJSON string) (res childResult) {
	var s childSpec
	if err := json.Unmarshal([]byte(specJSON), &s); err != nil {
		return childResult{Error: "bad child spec: " + err.Error()}
	}
	var impl *allocImpl
	impls, _ := allocators()
	for _, a := range impls {
		if a.name == s.Alloc {
			impl = a
		}
	}
	if impl == nil {
		return childResult{Error: fmt.Sprintf("allocator %q is not built in", s.Alloc)}
	}
	if impl.open != nil {
		if err := impl.open(); err != nil {
			return childResult{Error: err.Error()}
		}
	}
	if impl.version != nil {
		res.Version = impl.version()
	}
	p := C.ab_params{
		threads:       C.int(s.Threads),
		window:        C.int64_t(s.Window),
		time_ns:       C.int64_t(s.TimeNS),
		seed:          C.uint64_t(s.Seed),
		readers:       C.int(s.Readers),
		report_every:  C.int(s.ReportEvery),
		sample_every:  C.int64_t(s.SampleEvery),
		corrupt_after: C.int64_t(s.CorruptAfter),
	}
	switch s.Bench {
	case benchWindow, benchGating:
		p.bench = C.AB_BENCH_WINDOW
	case benchXthread:
		p.bench = C.AB_BENCH_XTHREAD
	default:
		return childResult{Error: fmt.Sprintf("unknown bench %q", s.Bench)}
	}
	res.BaseRSSKB = int64(C.ab_vm_kb(cVmHWM))
	var r C.ab_result
	err := abError(impl.run(&p, &r))
	res.PeakRSSKB = int64(C.ab_vm_kb(cVmHWM))
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		res.MaxRSSKB = ru.Maxrss
	}
	if err != nil {
		res.Error = err.Error()
		if r.corrupt > 0 {
			res.Error = fmt.Sprintf("%d blocks: %v", int64(r.corrupt), err)
		}
		return res
	}
	res.Ops, res.ElapsedNS, res.CPUNS = int64(r.ops), int64(r.elapsed_ns), int64(r.cpu_ns)
	res.Samples = int64(r.samples)
	res.BytesWaitingPeak, res.PagesWaitingPeak = uint64(r.bytes_waiting_peak), uint64(r.pages_waiting_peak)
	res.BytesWaitingMean, res.PagesWaitingMean = float64(r.bytes_waiting_mean), float64(r.pages_waiting_mean)
	res.PagesDeferred = uint64(r.pages_deferred)
	res.PagesReused = uint64(r.pages_reused_same_class)
	res.PagesReleased = uint64(r.pages_released_after_goal)
	res.ReaderReads = int64(r.reader_reads)
	if res.PeakRSSKB < 0 {
		res.Error = "cannot read VmHWM from /proc/self/status"
	}
	return res
}

// cVmHWM is the /proc/self/status field of the peak RSS (allocated once, never freed).
var cVmHWM = C.CString("VmHWM")

// runChildProcess runs one measurement in a fresh copy of this binary.
func runChildProcess(ctx context.Context, s childSpec) (childResult, error) {
	exe, err := os.Executable()
	if err != nil {
		return childResult{}, err
	}
	spec, err := json.Marshal(s)
	if err != nil {
		return childResult{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, time.Duration(s.TimeNS)+2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe)
	// atexit_sleep_ms: a race-enabled binary (the tests under -race) otherwise sleeps a second
	// on every exit; ignored by other builds.
	cmd.Env = append(os.Environ(), allocbenchChildEnv+"="+string(spec),
		"GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()
	var res childResult
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		if runErr == nil {
			runErr = fmt.Errorf("bad output %q: %v", stdout.String(), err)
		}
		if msg := strings.TrimSpace(stderr.String()); msg != "" {
			runErr = fmt.Errorf("%v\n%s", runErr, msg)
		}
		return res, fmt.Errorf("measuring process: %w", runErr)
	}
	if res.Error != "" {
		return res, errors.New(res.Error)
	}
	if runErr != nil {
		return res, fmt.Errorf("measuring process: %w", runErr)
	}
	if res.Ops <= 0 || res.ElapsedNS <= 0 {
		return res, fmt.Errorf("no op timed in %v", time.Duration(s.TimeNS))
	}
	return res, nil
}

// ---- Configuration -------------------------------------------------------------------------

type allocbenchConfig struct {
	duration    time.Duration
	rounds      int
	threads     []int
	windows     []int
	ring        int
	reportEvery int
	sampleEvery int
	benches     []string
	allocs      []string // selected allocators ("" entries never)
	seed        uint64
	format      string
}

func (c *allocbenchConfig) wantsBench(b string) bool { return slices.Contains(c.benches, b) }

const (
	maxAllocThreads = 64
	maxAllocWindow  = 1 << 26
	maxAllocRing    = 1 << 24
)

func parseAllocbenchFlags(args []string, out io.Writer) (*allocbenchConfig, error) {
	fs := flag.NewFlagSet("allocbench", flag.ContinueOnError)
	fs.SetOutput(out)
	// Many short rounds: the ratios pair each round's allocators (pairedRatio), and more pairs
	// average out more of a VM's drifting memory speed than a few long rounds.
	duration := fs.Duration("duration", 4*time.Second, "measuring time per allocator and measurement, split into the rounds")
	rounds := fs.Int("rounds", 20, "split each measurement into this many `rounds`, each in a fresh process, alternating the allocators")
	threads := fs.String("threads", "1,2", "comma-separated `list` of thread counts for the window test (each thread its own window)")
	windows := fs.String("windows", "1024,100000", "comma-separated `list` of window sizes (live blocks per thread)")
	ring := fs.Int("ring", 1024, "cross-thread ring `entries` (a power of two)")
	every := fs.Int("report-every", 1000, "the gating reader passes a checkpoint every `n` reads")
	sample := fs.Int("sample-every", 16384, "the gating writer samples its heap statistics every `n` ops (a multiple of 1024)")
	benches := fs.String("bench", strings.Join(allBenches, ","), "comma-separated `list` of measurements: "+strings.Join(allBenches, ", "))
	allocs := fs.String("alloc", "", "comma-separated `list` of allocators (nogil, mimalloc, glibc; default: every one built in)")
	seed := fs.Uint64("seed", 1, "random `seed` (the same sequence for every allocator)")
	format := fs.String("format", "text", "output `format`: text or json (one record per line)")
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprintf(w, "Usage: nogil allocbench [flags]\n\n")
		fmt.Fprintf(w, "Compares the page allocator (OBJECT heap, inline ng_mi_heap_malloc / ng_mi_free) with\n")
		fmt.Fprintf(w, "libmimalloc (mi_malloc / mi_free) and glibc malloc in one run, blocks of 16-256 bytes:\n")
		fmt.Fprintf(w, "  window        each thread keeps W live blocks; an op frees a random one and allocates a new one\n")
		fmt.Fprintf(w, "  cross-thread  one thread allocates, passes the blocks through a ring, another frees them\n")
		fmt.Fprintf(w, "  qsbr-gating   page allocator only: the window test with and without a reader thread that\n")
		fmt.Fprintf(w, "                reads the writer's blocks and reports a quiescent state every n reads:\n")
		fmt.Fprintf(w, "                bytes and pages waiting for their QSBR goal, peak RSS\n")
		fmt.Fprintf(w, "Every measurement runs in a fresh process (peak RSS: its VmHWM). The mimalloc rows need the\n")
		fmt.Fprintf(w, "nogil_mimalloc build tag and libmimalloc-dev.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return nil, err
		}
		return nil, errFlagsReported
	}
	if fs.NArg() > 0 {
		return nil, usagef("unexpected argument %q", fs.Arg(0))
	}
	cfg := &allocbenchConfig{duration: *duration, rounds: *rounds, ring: *ring, reportEvery: *every,
		sampleEvery: *sample, seed: *seed, format: *format}
	var err error
	if cfg.threads, err = parseIntList(*threads, 1, maxAllocThreads); err != nil {
		return nil, usagef("--threads: %v", err)
	}
	if cfg.windows, err = parseIntList(*windows, 1, maxAllocWindow); err != nil {
		return nil, usagef("--windows: %v", err)
	}
	for _, b := range strings.Split(*benches, ",") {
		b = strings.TrimSpace(b)
		if !slices.Contains(allBenches, b) {
			return nil, usagef("--bench: unknown measurement %q", b)
		}
		if !slices.Contains(cfg.benches, b) {
			cfg.benches = append(cfg.benches, b)
		}
	}
	if *allocs != "" {
		for _, a := range strings.Split(*allocs, ",") {
			a = strings.TrimSpace(a)
			if a != allocNogil && a != allocMimalloc && a != allocGlibc {
				return nil, usagef("--alloc: unknown allocator %q", a)
			}
			if !slices.Contains(cfg.allocs, a) {
				cfg.allocs = append(cfg.allocs, a)
			}
		}
	}
	switch {
	case cfg.duration <= 0:
		return nil, usagef("--duration must be positive")
	case cfg.rounds < 1 || cfg.rounds > 1000:
		return nil, usagef("--rounds must be in [1, 1000]")
	case cfg.ring < 2 || cfg.ring > maxAllocRing || cfg.ring&(cfg.ring-1) != 0:
		return nil, usagef("--ring must be a power of two in [2, %d]", maxAllocRing)
	case cfg.reportEvery < 1:
		return nil, usagef("--report-every must be positive")
	case cfg.sampleEvery < 1024 || cfg.sampleEvery%1024 != 0:
		return nil, usagef("--sample-every must be a positive multiple of 1024")
	case cfg.format != "text" && cfg.format != "json":
		return nil, usagef("--format must be text or json, not %q", cfg.format)
	}
	return cfg, nil
}

// ---- Running -------------------------------------------------------------------------------

// An allocRecord is one measurement; its JSON form is the --format json output line.
type allocRecord struct {
	Bench   string  `json:"bench"`
	Alloc   string  `json:"alloc"`
	Threads int     `json:"threads"`
	Window  int     `json:"window"` // cross-thread: the ring's entries
	Mops    float64 `json:"mops"`   // median of the rounds
	// ops / the CPU time per measured thread (ab_result.cpu_ns): the rate while they ran
	// (median).
	CPUMops   float64 `json:"cpu_mops"`
	PeakRSSKB int64   `json:"peak_rss_kb"`
	// The measuring process's VmHWM before the measurement (its start-up), median of rounds.
	BaseRSSKB int64 `json:"base_rss_kb"`
	Rounds    int   `json:"rounds"`
	// Each round's Mops/s and CPU Mops, in round order: round r of every allocator of a
	// measurement ran back to back, so their ratio is the one least moved by the machine's
	// drift (pairedRatio).
	RoundMops    []float64 `json:"round_mops"`
	RoundCPUMops []float64 `json:"round_cpu_mops"`
	*GatingFields
}

// pairedRatio is the median over the rounds of a's rate over b's in the same round. The
// rounds of one measurement alternate the allocators (a fresh process each), so a round's
// allocators ran within a second of each other; on a VM whose memory latency drifts by 2x
// within seconds (a pointer chase over 16 MiB here: 90-180 ns per load), the ratio of two
// medians taken over the whole run mixes unrelated moments, while per-round pairs do not.
// Falls back to the ratio of the medians when the rounds do not pair up.
func pairedRatio(a, b []float64, medA, medB float64) float64 {
	if len(a) == 0 || len(a) != len(b) {
		return medA / medB
	}
	rs := make([]float64, len(a))
	for i := range a {
		rs[i] = a[i] / b[i]
	}
	return median(rs)
}

// GatingFields are the extra fields of the qsbr-gating records: the writer's OBJECT heap
// statistics, sampled every SampleEvery ops (peaks: the largest of the rounds; means and
// counters: averaged over the rounds). Exported because encoding/json fills embedded pointers
// only to exported types.
type GatingFields struct {
	Readers          int     `json:"readers"`
	ReportEvery      int     `json:"report_every"`
	SampleEvery      int     `json:"sample_every"`
	Samples          int64   `json:"samples"`
	BytesWaitingPeak uint64  `json:"bytes_waiting_peak"`
	BytesWaitingMean float64 `json:"bytes_waiting_mean"`
	PagesWaitingPeak uint64  `json:"pages_waiting_peak"`
	PagesWaitingMean float64 `json:"pages_waiting_mean"`
	PagesDeferred    float64 `json:"pages_deferred"`
	PagesReused      float64 `json:"pages_reused_same_class"`
	PagesReleased    float64 `json:"pages_released_after_goal"`
	ReaderReads      int64   `json:"reader_reads"`
}

// A measurement is one row group: the same parameters for every allocator in allocs.
type measurement struct {
	bench   string
	threads int
	window  int
	readers int // gating
	allocs  []*allocImpl
}

func (m measurement) String() string {
	s := fmt.Sprintf("%s, %d thread(s), window %d", m.bench, m.threads, m.window)
	if m.bench == benchXthread {
		s = fmt.Sprintf("%s, ring %d", m.bench, m.window)
	}
	if m.bench == benchGating {
		s += fmt.Sprintf(", %d reader(s)", m.readers)
	}
	return s
}

func runAllocbench(args []string, stdout, stderr io.Writer) error {
	cfg, err := parseAllocbenchFlags(args, stderr)
	if err != nil {
		return err
	}
	built, notes := allocators()
	var impls []*allocImpl
	for _, a := range built {
		if len(cfg.allocs) == 0 || slices.Contains(cfg.allocs, a.name) {
			impls = append(impls, a)
		}
	}
	for _, want := range cfg.allocs {
		if !slices.ContainsFunc(impls, func(a *allocImpl) bool { return a.name == want }) {
			return usagef("--alloc %s: not built in (%s)", want, strings.Join(notes, "; "))
		}
	}
	var nogil *allocImpl
	for _, a := range impls {
		if a.name == allocNogil {
			nogil = a
		}
	}

	var ms []measurement
	if cfg.wantsBench(benchWindow) {
		for _, w := range cfg.windows {
			for _, t := range cfg.threads {
				ms = append(ms, measurement{bench: benchWindow, threads: t, window: w, allocs: impls})
			}
		}
	}
	if cfg.wantsBench(benchXthread) {
		ms = append(ms, measurement{bench: benchXthread, threads: 2, window: cfg.ring, allocs: impls})
	}
	if cfg.wantsBench(benchGating) && nogil != nil {
		for _, w := range cfg.windows {
			for _, readers := range []int{0, 1} {
				ms = append(ms, measurement{bench: benchGating, threads: 1, window: w, readers: readers,
					allocs: []*allocImpl{nogil}})
			}
		}
	}

	perRound := max(cfg.duration/time.Duration(cfg.rounds), time.Millisecond)
	p := newProgress(stderr, len(ms))
	var recs []allocRecord
	versions := map[string]string{}
	for _, m := range ms {
		p.step(m.String())
		rs := map[string][]childResult{}
		for r := range cfg.rounds {
			for j := range m.allocs {
				i := j
				if r%2 == 1 {
					i = len(m.allocs) - 1 - j
				}
				a := m.allocs[i]
				spec := childSpec{Alloc: a.name, Bench: m.bench, Threads: m.threads, Window: int64(m.window),
					TimeNS: perRound.Nanoseconds(), Seed: cfg.seed, CorruptAfter: allocbenchCorruptAfter}
				if m.bench == benchGating {
					spec.Readers, spec.ReportEvery, spec.SampleEvery = m.readers, cfg.reportEvery, int64(cfg.sampleEvery)
				}
				res, err := runChildProcess(context.Background(), spec)
				if err != nil {
					p.clear()
					return fmt.Errorf("%s: %s: %w", m, a.name, err)
				}
				versions[a.name] = res.Version
				rs[a.name] = append(rs[a.name], res)
			}
		}
		for _, a := range m.allocs {
			recs = append(recs, summarize(m, a.name, rs[a.name], cfg))
		}
	}
	p.clear()

	if cfg.format == "json" {
		enc := json.NewEncoder(stdout)
		for _, rec := range recs {
			if err := enc.Encode(rec); err != nil {
				return err
			}
		}
		return nil
	}
	return writeAllocText(stdout, cfg, recs, impls, versions, notes)
}

// summarize turns one allocator's rounds of a measurement into its record: the median Mops/s,
// the largest peak RSS.
func summarize(m measurement, alloc string, rs []childResult, cfg *allocbenchConfig) allocRecord {
	rec := allocRecord{Bench: m.bench, Alloc: alloc, Threads: m.threads, Window: m.window, Rounds: len(rs)}
	var mops, cpu, base []float64
	for _, r := range rs {
		mops = append(mops, float64(r.Ops)/float64(r.ElapsedNS)*1e3)
		if r.CPUNS > 0 {
			cpu = append(cpu, float64(r.Ops)/float64(r.CPUNS)*1e3)
		}
		base = append(base, float64(r.BaseRSSKB))
		rec.PeakRSSKB = max(rec.PeakRSSKB, r.PeakRSSKB)
	}
	rec.Mops, rec.RoundMops = median(mops), mops
	if len(cpu) > 0 {
		rec.CPUMops = median(cpu)
		if len(cpu) == len(mops) {
			rec.RoundCPUMops = cpu
		}
	}
	rec.BaseRSSKB = int64(median(base))
	if m.bench == benchGating {
		g := &GatingFields{Readers: m.readers, ReportEvery: cfg.reportEvery, SampleEvery: cfg.sampleEvery}
		n := float64(len(rs))
		for _, r := range rs {
			g.Samples += r.Samples
			g.BytesWaitingPeak = max(g.BytesWaitingPeak, r.BytesWaitingPeak)
			g.PagesWaitingPeak = max(g.PagesWaitingPeak, r.PagesWaitingPeak)
			g.BytesWaitingMean += r.BytesWaitingMean / n
			g.PagesWaitingMean += r.PagesWaitingMean / n
			g.PagesDeferred += float64(r.PagesDeferred) / n
			g.PagesReused += float64(r.PagesReused) / n
			g.PagesReleased += float64(r.PagesReleased) / n
			g.ReaderReads += r.ReaderReads
		}
		rec.GatingFields = g
	}
	return rec
}

// ---- Text output ---------------------------------------------------------------------------

func findAlloc(recs []allocRecord, bench, alloc string, threads, window, readers int) (allocRecord, bool) {
	for _, r := range recs {
		if r.Bench == bench && r.Alloc == alloc && r.Threads == threads && r.Window == window &&
			(r.GatingFields == nil || r.Readers == readers) {
			return r, true
		}
	}
	return allocRecord{}, false
}

func mib(kb int64) string { return strconv.FormatFloat(float64(kb)/1024, 'f', 1, 64) }

func writeAllocText(w io.Writer, cfg *allocbenchConfig, recs []allocRecord, impls []*allocImpl,
	versions map[string]string, notes []string) error {
	fmt.Fprintf(w, "nogil allocbench: %v per allocator and measurement, in %d alternating rounds (a fresh process each)\n",
		cfg.duration, cfg.rounds)
	fmt.Fprintf(w, "%s %s/%s, NumCPU=%d", runtime.Version(), runtime.GOOS, runtime.GOARCH, runtime.NumCPU())
	for _, a := range impls {
		if v := versions[a.name]; v != "" {
			fmt.Fprintf(w, "; %s: %s", a.name, v)
		}
	}
	fmt.Fprintln(w)
	for _, n := range notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
	fmt.Fprintln(w)
	f2 := func(v float64) string { return strconv.FormatFloat(v, 'f', 2, 64) }
	vs := func(r, base allocRecord, ok bool) string {
		return ratio(pairedRatio(r.RoundMops, base.RoundMops, r.Mops, base.Mops), 1,
			ok && r.Alloc != base.Alloc && base.Mops > 0)
	}
	vsCPU := func(r, base allocRecord, ok bool) string {
		return ratio(pairedRatio(r.RoundCPUMops, base.RoundCPUMops, r.CPUMops, base.CPUMops), 1,
			ok && r.Alloc != base.Alloc && base.CPUMops > 0)
	}
	rssVs := func(r, base allocRecord, ok bool) string {
		return ratio(float64(r.PeakRSSKB), float64(base.PeakRSSKB), ok && r.Alloc != base.Alloc)
	}
	growthVs := func(r, base allocRecord, ok bool) string {
		return ratio(float64(r.PeakRSSKB-r.BaseRSSKB), float64(base.PeakRSSKB-base.BaseRSSKB), ok && r.Alloc != base.Alloc)
	}
	names := []string{allocNogil, allocMimalloc, allocGlibc}

	if cfg.wantsBench(benchWindow) {
		fmt.Fprintf(w, "replace-in-window: each thread keeps W live blocks of 16-256 B; an op checks and frees the block\n")
		fmt.Fprintf(w, "of a random slot and allocates a new one (nogil: OBJECT heap). Mops/s: median of the rounds;\n")
		fmt.Fprintf(w, "vs: median of the per-round ratios (a round's allocators run back to back);\n")
		fmt.Fprintf(w, "CPU Mops: ops / the threads' mean CPU time (the rate while they ran: steadier on a busy\n")
		fmt.Fprintf(w, "machine); peak RSS: largest VmHWM of the rounds, growth: peak minus the process's start-up.\n\n")
		tw := newTable(w)
		tableRow(tw, 9, "alloc", "threads", "window", "Mops/s", "vs mi", "vs glibc", "CPU Mops", "vs mi", "vs glibc",
			"target", "peak RSS MiB", "growth MiB", "vs mi", "target")
		for _, win := range cfg.windows {
			for _, t := range cfg.threads {
				mi, okMi := findAlloc(recs, benchWindow, allocMimalloc, t, win, 0)
				gl, okGl := findAlloc(recs, benchWindow, allocGlibc, t, win, 0)
				for _, name := range names {
					r, ok := findAlloc(recs, benchWindow, name, t, win, 0)
					if !ok {
						continue
					}
					t1, t2 := "", ""
					if name == allocNogil {
						t1, t2 = ">= 0.9x mi, 2x glibc", "<= 1.2x"
					}
					tableRow(tw, 9, name, strconv.Itoa(t), strconv.Itoa(win), f2(r.Mops), vs(r, mi, okMi),
						vs(r, gl, okGl), f2(r.CPUMops), vsCPU(r, mi, okMi),
						vsCPU(r, gl, okGl), t1, mib(r.PeakRSSKB), mib(r.PeakRSSKB-r.BaseRSSKB),
						rssVs(r, mi, okMi)+" / "+growthVs(r, mi, okMi), t2)
				}
			}
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		fmt.Fprintf(w, "(mi: mimalloc; RSS vs mi: peak / growth)\n\n")
	}

	if cfg.wantsBench(benchXthread) {
		fmt.Fprintf(w, "cross-thread frees: a producer allocates 16-256 B blocks and passes them through a ring of %d\n", cfg.ring)
		fmt.Fprintf(w, "entries to a consumer that checks and frees them (Mops/s: blocks per second, median; vs: median\n")
		fmt.Fprintf(w, "of the per-round ratios; CPU Mops: blocks / the CPU time of the busier thread outside its waits\n")
		fmt.Fprintf(w, "on the ring, the bottleneck stage).\n\n")
		tw := newTable(w)
		tableRow(tw, 9, "alloc", "Mops/s", "vs mi", "vs glibc", "CPU Mops", "vs mi", "vs glibc", "target", "peak RSS MiB", "vs mi")
		mi, okMi := findAlloc(recs, benchXthread, allocMimalloc, 2, cfg.ring, 0)
		gl, okGl := findAlloc(recs, benchXthread, allocGlibc, 2, cfg.ring, 0)
		for _, name := range names {
			r, ok := findAlloc(recs, benchXthread, name, 2, cfg.ring, 0)
			if !ok {
				continue
			}
			target := ""
			if name == allocNogil {
				target = ">= 1.0x mi"
			}
			tableRow(tw, 9, name, f2(r.Mops), vs(r, mi, okMi), vs(r, gl, okGl),
				f2(r.CPUMops), vsCPU(r, mi, okMi), vsCPU(r, gl, okGl), target,
				mib(r.PeakRSSKB), rssVs(r, mi, okMi))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		fmt.Fprintln(w)
	}

	if cfg.wantsBench(benchGating) {
		if _, ok := findAlloc(recs, benchGating, allocNogil, 1, cfg.windows[0], 0); !ok {
			fmt.Fprintf(w, "qsbr-gating: not measured (the page allocator is not in this run)\n")
			return nil
		}
		fmt.Fprintf(w, "QSBR gating: the page allocator's OBJECT heap, 1 writer runs the window test; with a reader\n")
		fmt.Fprintf(w, "(own attached thread state) that loads the first word of random blocks of the writer's window\n")
		fmt.Fprintf(w, "and passes a checkpoint every %d reads. Waiting: emptied pages held for their QSBR goal\n", cfg.reportEvery)
		fmt.Fprintf(w, "(ng_mi_heap_get_stats of the writer's heap every %d ops; peak of the rounds, mean over samples).\n\n", cfg.sampleEvery)
		tw := newTable(w)
		tableRow(tw, 7, "window", "readers", "Mops/s", "peak RSS MiB", "vs no reader", "KiB waiting peak", "mean",
			"pages waiting peak", "mean", "deferred", "reused", "released")
		for _, win := range cfg.windows {
			base, okBase := findAlloc(recs, benchGating, allocNogil, 1, win, 0)
			for _, readers := range []int{0, 1} {
				r, ok := findAlloc(recs, benchGating, allocNogil, 1, win, readers)
				if !ok {
					continue
				}
				g := r.GatingFields
				tableRow(tw, 7, strconv.Itoa(win), strconv.Itoa(readers), f2(r.Mops), mib(r.PeakRSSKB),
					ratio(float64(r.PeakRSSKB), float64(base.PeakRSSKB), okBase && readers > 0),
					strconv.FormatFloat(float64(g.BytesWaitingPeak)/1024, 'f', 0, 64),
					strconv.FormatFloat(g.BytesWaitingMean/1024, 'f', 1, 64),
					strconv.FormatUint(g.PagesWaitingPeak, 10), strconv.FormatFloat(g.PagesWaitingMean, 'f', 2, 64),
					strconv.FormatFloat(g.PagesDeferred, 'f', 0, 64), strconv.FormatFloat(g.PagesReused, 'f', 0, 64),
					strconv.FormatFloat(g.PagesReleased, 'f', 0, 64))
			}
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		fmt.Fprintf(w, "(deferred / reused / released: pages that started waiting, were allocated from again in\n")
		fmt.Fprintf(w, "their size class, went back after their goal; counters per round, averaged)\n")
	}
	return nil
}
