package main

// #cgo CFLAGS: -I${SRCDIR}/../../csrc/include -Wall
// #include "lockbench.h"
import "C"

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"
	"unsafe"

	"github.com/nogil-go/nogil"
)

func init() {
	register(&command{
		name:    "lockbench",
		summary: "lock throughput and fairness (CPython's lockbench method), park/unpark round trip",
		run:     runLockbench,
	})
}

// cpythonLock names the row measured by CPython itself (only with --python).
const cpythonLock = "cpython-pymutex"

// A lockImpl is one lock the tool can measure in-process.
type lockImpl struct {
	name string
	desc string
	run  func(threads, cs int, d time.Duration) (result, error)
}

// builtinLocks lists the in-process locks in table order. The C rows run on pthreads inside
// one cgo call so that the Go rows can be read against a scheduler-free baseline.
var builtinLocks = []lockImpl{
	{"nogil-c", "C pthreads, inline ng_mutex_lock/ng_mutex_unlock on an ng_mutex", runNogilC},
	{"nogil-go", "goroutines, nogil.Mutex", runNogilGo},
	{"sync", "goroutines, sync.Mutex", runSync},
	{"pthread", "C pthreads, pthread_mutex_t with default attributes", runPthread},
}

// lockNames returns every name --locks accepts, in table order.
func lockNames() []string {
	names := make([]string, 0, len(builtinLocks)+1)
	for _, l := range builtinLocks {
		names = append(names, l.name)
	}
	return append(names, cpythonLock)
}

// A cell is one (threads, critical-section length) combination.
type cell struct{ threads, cs int }

// A result is one measurement: per-thread acquisition counts and the aggregate rate.
type result struct {
	counts []int64
	khz    float64 // acquisitions per millisecond, all threads together
}

// resultOf applies CPython's formula, rate = total * 1e9 / elapsed_ns, and scales it to kHz.
func resultOf(counts []int64, elapsed time.Duration) result {
	var total int64
	for _, c := range counts {
		total += c
	}
	r := result{counts: counts}
	if elapsed > 0 {
		r.khz = float64(total) * 1e9 / float64(elapsed.Nanoseconds()) / 1000
	}
	return r
}

// jain returns Jain's fairness index (Σx)² / (n·Σx²) of xs: 1 when every thread got the same
// share, 1/n when one thread got everything. It returns 0 when there is nothing to judge (no
// threads, or no acquisitions at all).
func jain(xs []int64) float64 {
	var sum, sumSq float64
	for _, x := range xs {
		f := float64(x)
		sum += f
		sumSq += f * f
	}
	if len(xs) == 0 || sumSq == 0 {
		return 0
	}
	return sum * sum / (float64(len(xs)) * sumSq)
}

// ---- Configuration -----------------------------------------------------------------------

// lockbenchConfig is the parsed command line.
type lockbenchConfig struct {
	threads   []int
	cs        []int
	duration  time.Duration
	python    string
	format    string
	locks     []string // selected locks, in table order
	roundtrip bool
	pin       string // round-trip thread placement: a key of pinModes
}

// pinModes maps --pin values to lb_run_roundtrip's placements.
var pinModes = map[string]C.int{
	"cross": C.LB_PIN_CROSS,
	"same":  C.LB_PIN_SAME,
	"none":  C.LB_PIN_NONE,
}

// pinDescriptions say in the output where the round-trip threads ran.
var pinDescriptions = map[string]string{
	"cross": "pinned to two different CPUs",
	"same":  "both pinned to one CPU",
	"none":  "placed by the scheduler",
}

// wants reports whether the lock named name was selected.
func (c *lockbenchConfig) wants(name string) bool {
	for _, l := range c.locks {
		if l == name {
			return true
		}
	}
	return false
}

// cells lists the measured cells: critical-section length outermost, so that rows that are
// compared with each other (same threads and cs) end up next to each other.
func (c *lockbenchConfig) cells() []cell {
	var cells []cell
	for _, cs := range c.cs {
		for _, t := range c.threads {
			cells = append(cells, cell{threads: t, cs: cs})
		}
	}
	return cells
}

// parseIntList parses a comma-separated list of integers in [min, max], dropping duplicates.
func parseIntList(s string, min, max int) ([]int, error) {
	var out []int
	seen := map[int]bool{}
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		n, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("%q is not an integer", f)
		}
		if n < min || n > max {
			return nil, fmt.Errorf("%d is out of range [%d, %d]", n, min, max)
		}
		if !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	return out, nil
}

// Limits on the lists: far beyond anything useful, low enough that a typo cannot ask for a
// million threads.
const (
	maxThreads = 1024
	maxCS      = 1 << 20
)

// parseLockbenchFlags parses the arguments of `nogil lockbench`. Usage and flag errors are
// written to out.
func parseLockbenchFlags(args []string, out io.Writer) (*lockbenchConfig, error) {
	fs := flag.NewFlagSet("lockbench", flag.ContinueOnError)
	fs.SetOutput(out)
	threads := fs.String("threads", "1,2,4", "comma-separated `list` of thread counts")
	cs := fs.String("cs", "1,10", "comma-separated `list` of critical-section lengths")
	duration := fs.Duration("duration", time.Second, "measuring time per lock, thread count and critical-section length")
	python := fs.String("python", "", "`path` of a free-threaded CPython with _testinternalcapi: adds the "+cpythonLock+" row")
	format := fs.String("format", "text", "output `format`: text or json (one record per line)")
	locks := fs.String("locks", "", "comma-separated `list` of locks to measure (default: all)")
	roundtrip := fs.Bool("roundtrip", true, "also measure the park/unpark hand-off round trip")
	// One CPU by default: it gives the same figure run after run, and what it measures is
	// the software path (syscalls, the lot's bookkeeping, context switches) that the
	// parking lot adds to. Across CPUs the cost is mostly the wake-up of the other CPU: on a
	// VM ~10-20 µs when the scheduler chooses, 100+ µs when a pinned thread's CPU is busy
	// with another process. Unpinned, the scheduler picks one or the other per run.
	pin := fs.String("pin", "same", "round-trip thread `placement`: same (one CPU), cross (two CPUs) or none")
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprintf(w, "Usage: nogil lockbench [flags]\n\n")
		fmt.Fprintf(w, "Measures lock throughput with CPython's Tools/lockbench method: every thread\n")
		fmt.Fprintf(w, "repeatedly takes one shared lock, runs a critical section of `cs` dependent\n")
		fmt.Fprintf(w, "updates of a shared double, releases it and counts, until --duration is up.\n")
		fmt.Fprintf(w, "kHz is acquisitions per millisecond over all threads; fairness is Jain's index\n")
		fmt.Fprintf(w, "of the per-thread counts (1 = even, 1/threads = one thread got everything).\n")
		fmt.Fprintf(w, "Then two pthreads ping-pong a word, sleeping on a raw futex and on nogil's\n")
		fmt.Fprintf(w, "parking lot, and the cost of a hand-off round trip is reported for both.\n\n")
		fmt.Fprintf(w, "Locks:\n")
		for _, l := range builtinLocks {
			fmt.Fprintf(w, "  %-16s %s\n", l.name, l.desc)
		}
		fmt.Fprintf(w, "  %-16s %s\n\n", cpythonLock, "CPython's PyMutex via _testinternalcapi.benchmark_locks (needs --python)")
		fmt.Fprintf(w, "Flags:\n")
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

	cfg := &lockbenchConfig{duration: *duration, python: *python, format: *format, roundtrip: *roundtrip, pin: *pin}
	var err error
	if cfg.threads, err = parseIntList(*threads, 1, maxThreads); err != nil {
		return nil, usagef("--threads: %v", err)
	}
	if cfg.cs, err = parseIntList(*cs, 0, maxCS); err != nil {
		return nil, usagef("--cs: %v", err)
	}
	if cfg.duration <= 0 {
		return nil, usagef("--duration must be positive")
	}
	if cfg.format != "text" && cfg.format != "json" {
		return nil, usagef("--format must be text or json, not %q", cfg.format)
	}
	if _, ok := pinModes[cfg.pin]; !ok {
		return nil, usagef("--pin must be same, cross or none, not %q", cfg.pin)
	}
	if cfg.pin == "cross" && runtime.NumCPU() < 2 {
		return nil, usagef("--pin cross needs two CPUs; this process may use %d", runtime.NumCPU())
	}

	if *locks == "" {
		cfg.locks = lockNames()
		if cfg.python == "" {
			cfg.locks = cfg.locks[:len(cfg.locks)-1]
		}
	} else {
		picked := map[string]bool{}
		for _, n := range strings.Split(*locks, ",") {
			n = strings.TrimSpace(n)
			known := false
			for _, k := range lockNames() {
				known = known || k == n
			}
			if !known {
				return nil, usagef("--locks: unknown lock %q (known: %s)", n, strings.Join(lockNames(), ", "))
			}
			picked[n] = true
		}
		if picked[cpythonLock] && cfg.python == "" {
			return nil, usagef("--locks: %s needs --python", cpythonLock)
		}
		for _, k := range lockNames() { // table order, whatever the order on the command line
			if picked[k] {
				cfg.locks = append(cfg.locks, k)
			}
		}
	}
	return cfg, nil
}

// ---- Running -----------------------------------------------------------------------------

// A row is one line of the lock table.
type row struct {
	lock string
	cell
	result
}

// A roundtrip is one line of the park/unpark table.
type roundtrip struct {
	name       string
	roundtrips int64     // over all rounds
	perRound   []float64 // ns per round trip in each round
}

// nsPer is the median over the rounds of the ns per round trip. The median rather than the
// overall mean because on a busy machine a few rounds run an order of magnitude slower
// (a peer thread waits behind some other process), and those would dominate a mean.
func (r roundtrip) nsPer() float64 { return median(r.perRound) }

// khz is round trips per millisecond, at the median rate.
func (r roundtrip) khz() float64 { return 1e6 / r.nsPer() }

// median returns the median of xs (the mean of the middle two for an even count), without
// reordering xs. It returns NaN for an empty slice.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// The round-trip protocols, by their row and JSON names: FUTEX_WAIT/FUTEX_WAKE directly,
// and nogil's ng_park/ng_unpark_all.
var roundtripKinds = []struct {
	name string
	kind C.int
}{
	{"futex-roundtrip", C.LB_RT_FUTEX},
	{"park-roundtrip", C.LB_RT_PARK},
}

func runLockbench(args []string, stdout, stderr io.Writer) error {
	cfg, err := parseLockbenchFlags(args, stderr)
	if err != nil {
		return err
	}
	cells := cfg.cells()
	var impls []lockImpl
	for _, l := range builtinLocks {
		if cfg.wants(l.name) {
			impls = append(impls, l)
		}
	}
	steps := len(cells) * len(impls)
	if cfg.wants(cpythonLock) {
		steps++
	}
	if cfg.roundtrip {
		steps++
	}
	p := newProgress(stderr, steps)

	// CPython goes first so that a missing module or an enabled GIL is reported up front
	// rather than after the rest of the run.
	var rows []row
	var cpyVersion string
	if cfg.wants(cpythonLock) {
		p.step(fmt.Sprintf("%s (%d cells in one interpreter)", cpythonLock, len(cells)))
		version, res, err := runCPython(cfg.python, cells, cfg.duration)
		if err != nil {
			p.clear()
			fmt.Fprintf(stderr, "nogil lockbench: skipping %s: %v\n", cpythonLock, err)
		} else {
			cpyVersion = version
			for _, c := range cells {
				if r, ok := res[c]; ok {
					rows = append(rows, row{cpythonLock, c, r})
				}
			}
		}
	}
	for _, c := range cells {
		for _, l := range impls {
			p.step(fmt.Sprintf("%s threads=%d cs=%d", l.name, c.threads, c.cs))
			r, err := l.run(c.threads, c.cs, cfg.duration)
			if err != nil {
				p.clear()
				return fmt.Errorf("%s threads=%d cs=%d: %w", l.name, c.threads, c.cs, err)
			}
			rows = append(rows, row{l.name, c, r})
		}
	}
	var rts []roundtrip
	if cfg.roundtrip {
		p.step("park/unpark round trip")
		if rts, err = runRoundtrips(cfg.duration, pinModes[cfg.pin]); err != nil {
			p.clear()
			return err
		}
	}
	p.clear()

	if cfg.format == "json" {
		return writeJSON(stdout, cfg, rows, rts)
	}
	return writeText(stdout, cfg, cpyVersion, rows, rts)
}

// runC measures one of the C locks (see lb_run_locks).
func runC(kind C.int, threads, cs int, d time.Duration) (result, error) {
	counts := make([]int64, threads)
	var elapsed C.int64_t
	// counts is Go memory handed to C: allowed, because lb_run_locks joins its threads
	// before it returns and keeps no pointer.
	rc := C.lb_run_locks(kind, C.int(threads), C.int(cs), C.int64_t(d.Nanoseconds()),
		(*C.int64_t)(unsafe.Pointer(&counts[0])), &elapsed)
	if rc != 0 {
		return result{}, syscall.Errno(rc)
	}
	return resultOf(counts, time.Duration(elapsed)), nil
}

func runNogilC(threads, cs int, d time.Duration) (result, error) {
	return runC(C.LB_LOCK_NG_MUTEX, threads, cs, d)
}

func runPthread(threads, cs int, d time.Duration) (result, error) {
	return runC(C.LB_LOCK_PTHREAD, threads, cs, d)
}

// Round-trip rounds: how long one round of one protocol lasts at least, and how many rounds
// the measuring time is split into at most.
const (
	minRoundtripRound  = 50 * time.Millisecond
	maxRoundtripRounds = 20
)

// runRoundtrips measures every protocol in roundtripKinds for about d each, with the
// threads placed as pin says.
//
// The figures are sensitive to what else the machine does: a round trip costs about three
// times more when the two threads sit on different CPUs than when they share one, and
// another process on a CPU the threads need can slow a stretch of rounds tenfold. One long
// run per protocol would compare two different conditions as often as two protocols.
// Instead the time is split into short rounds that alternate between the protocols (in
// alternating order), each round on fresh threads, so both protocols see the same mix of
// conditions (and, with --pin none, of placements); each protocol's figure is the median
// over its rounds.
func runRoundtrips(d time.Duration, pin C.int) ([]roundtrip, error) {
	rounds := int(min(max(d/minRoundtripRound, 1), maxRoundtripRounds))
	per := d / time.Duration(rounds)
	rts := make([]roundtrip, len(roundtripKinds))
	for i, k := range roundtripKinds {
		rts[i].name = k.name
	}
	for r := range rounds {
		for j := range roundtripKinds {
			i := j
			if r%2 == 1 {
				i = len(roundtripKinds) - 1 - j
			}
			n, elapsed, err := runRoundtrip(roundtripKinds[i].kind, pin, per)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", roundtripKinds[i].name, err)
			}
			rts[i].roundtrips += n
			rts[i].perRound = append(rts[i].perRound, float64(elapsed.Nanoseconds())/float64(n))
		}
	}
	return rts, nil
}

// runRoundtrip runs one round of one protocol (see lb_run_roundtrip).
func runRoundtrip(kind, pin C.int, d time.Duration) (int64, time.Duration, error) {
	var n, elapsed C.int64_t
	if rc := C.lb_run_roundtrip(kind, pin, C.int64_t(d.Nanoseconds()), &n, &elapsed); rc != 0 {
		return 0, 0, syscall.Errno(rc)
	}
	if n <= 0 || elapsed <= 0 {
		return 0, 0, fmt.Errorf("no round trip timed in %v", d)
	}
	return int64(n), time.Duration(elapsed), nil
}

// paddedCount gives each goroutine's result a cache line of its own, so that goroutines
// finishing at the same time do not bounce a shared line.
type paddedCount struct {
	n int64
	_ [56]byte
}

// runGoroutines is the Go counterpart of lb_run_locks' driver: it starts the clock, starts
// one goroutine per thread running loop (which returns its acquisition count once stop is
// set), sleeps for d, sets stop, and waits. GOMAXPROCS is left alone: the Go rows measure
// what a Go program gets by default.
func runGoroutines(threads int, d time.Duration, stop *atomic.Bool, loop func() int64) result {
	slots := make([]paddedCount, threads)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range slots {
		wg.Add(1)
		go func() {
			defer wg.Done()
			slots[i].n = loop()
		}()
	}
	time.Sleep(d)
	stop.Store(true)
	wg.Wait()
	elapsed := time.Since(start)
	counts := make([]int64, threads)
	for i := range slots {
		counts[i] = slots[i].n
	}
	return resultOf(counts, elapsed)
}

// syncShared mirrors the C struct lb_shared for sync.Mutex: the stop flag, 200 bytes of
// padding, then the lock with the protected double right behind it.
type syncShared struct {
	stop  atomic.Bool
	_     [200]byte
	mu    sync.Mutex
	value float64
}

// The Go loops are spelled out per lock type (rather than going through sync.Locker) so
// that the hot loop makes direct, inlinable calls, as the C loops do.
//
// Their critical section is written the way gcc compiles CPython's (and lb_lock_thread's)
// `value += my; my = value` loop: the shared double is loaded once, the cs dependent adds
// run in registers, and the result is stored once. Go's compiler would otherwise load and
// store the double on every step, which at cs=10 costs more than the lock itself and would
// make every Go-vs-C ratio a compiler comparison.
func runSync(threads, cs int, d time.Duration) (result, error) {
	s := new(syncShared)
	return runGoroutines(threads, d, &s.stop, func() int64 {
		my, n := 1.0, int64(0)
		for !s.stop.Load() {
			s.mu.Lock()
			v := s.value
			for range cs {
				v += my
				my = v
			}
			s.value = v
			s.mu.Unlock()
			n++
		}
		return n
	}), nil
}

// nogilShared is syncShared for nogil.Mutex. The lock byte itself lives wherever NewMutex
// puts it; only the handle sits next to the protected double.
type nogilShared struct {
	stop  atomic.Bool
	_     [200]byte
	mu    *nogil.Mutex
	value float64
}

func runNogilGo(threads, cs int, d time.Duration) (res result, err error) {
	s := &nogilShared{mu: nogil.NewMutex()}
	defer func() {
		if cerr := s.mu.Close(); err == nil && cerr != nil {
			err = cerr
		}
	}()
	return runGoroutines(threads, d, &s.stop, func() int64 {
		my, n := 1.0, int64(0)
		for !s.stop.Load() {
			s.mu.Lock()
			v := s.value
			for range cs {
				v += my
				my = v
			}
			s.value = v
			s.mu.Unlock()
			n++
		}
		return n
	}), nil
}

// ---- Output ------------------------------------------------------------------------------

// lockRecord is the JSON form of a lock-table row. Consumers rely on exactly these names.
type lockRecord struct {
	Lock     string  `json:"lock"`
	Threads  int     `json:"threads"`
	CS       int     `json:"cs"`
	KHz      float64 `json:"khz"`
	Fairness float64 `json:"fairness"`
}

// roundtripRecord is the JSON form of a round-trip row: khz is round trips per millisecond,
// pin the --pin placement. Two strictly alternating threads have no fairness to speak of,
// so that field is absent.
type roundtripRecord struct {
	Lock           string  `json:"lock"`
	Threads        int     `json:"threads"`
	CS             int     `json:"cs"`
	KHz            float64 `json:"khz"`
	NsPerRoundtrip float64 `json:"ns_per_roundtrip"`
	Pin            string  `json:"pin"`
}

// ordered returns rows in output order: grouped by cell (in cfg.cells order) so that the
// locks being compared sit next to each other, locks in table order within a cell.
func ordered(cfg *lockbenchConfig, rows []row) []row {
	rank := map[string]int{}
	for i, n := range lockNames() {
		rank[n] = i
	}
	cellRank := map[cell]int{}
	for i, c := range cfg.cells() {
		cellRank[c] = i
	}
	out := slices.Clone(rows)
	slices.SortStableFunc(out, func(a, b row) int {
		if d := cellRank[a.cell] - cellRank[b.cell]; d != 0 {
			return d
		}
		return rank[a.lock] - rank[b.lock]
	})
	return out
}

// writeJSON prints one record per line (JSON Lines), lock rows first.
func writeJSON(w io.Writer, cfg *lockbenchConfig, rows []row, rts []roundtrip) error {
	enc := json.NewEncoder(w)
	for _, r := range ordered(cfg, rows) {
		if err := enc.Encode(lockRecord{r.lock, r.threads, r.cs, r.khz, jain(r.counts)}); err != nil {
			return err
		}
	}
	for _, rt := range rts {
		if err := enc.Encode(roundtripRecord{rt.name, 2, 0, rt.khz(), rt.nsPer(), cfg.pin}); err != nil {
			return err
		}
	}
	return nil
}

// ratio formats a/b, or "-" when there is nothing to compare with.
func ratio(a float64, b float64, ok bool) string {
	if !ok || b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fx", a/b)
}

// newTable returns a tabwriter for tableRow: right-aligned columns, no automatic padding.
func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 0, 0, ' ', tabwriter.AlignRight)
}

// tableRow writes one line: a name padded to width (so it stays left-aligned even though
// the tabwriter right-aligns, which is what the numbers need), then the other cells, each
// behind a two-space gap. The gap is part of the cell because tabwriter's own padding would
// also go in front of the name.
func tableRow(tw *tabwriter.Writer, width int, name string, cells ...string) {
	fmt.Fprintf(tw, "%-*s\t", width, name)
	for _, c := range cells {
		fmt.Fprintf(tw, "  %s\t", c)
	}
	fmt.Fprintln(tw)
}

// writeText prints the lock table and the round-trip table.
func writeText(w io.Writer, cfg *lockbenchConfig, cpyVersion string, rows []row, rts []roundtrip) error {
	fmt.Fprintf(w, "nogil lockbench: CPython's Tools/lockbench method, %v per cell\n", cfg.duration)
	fmt.Fprintf(w, "%s %s/%s, GOMAXPROCS=%d, NumCPU=%d", runtime.Version(), runtime.GOOS, runtime.GOARCH,
		runtime.GOMAXPROCS(0), runtime.NumCPU())
	if cpyVersion != "" {
		fmt.Fprintf(w, ", CPython %s (%s)", cpyVersion, cfg.python)
	}
	fmt.Fprintf(w, "\n\n")

	type key struct {
		lock string
		cell
	}
	byKey := map[key]row{}
	have := map[string]bool{}
	for _, r := range rows {
		byKey[key{r.lock, r.cell}] = r
		have[r.lock] = true
	}
	// khzOf returns the rate of lock in cell c, if it was measured.
	khzOf := func(lock string, c cell) (float64, bool) {
		r, ok := byKey[key{lock, c}]
		return r.khz, ok
	}
	// A comparison column appears only when both of its sides were measured.
	showCPy := have[cpythonLock]
	showSync := have["nogil-go"] && have["sync"]
	showPthread := have["nogil-c"] && have["pthread"]

	nameWidth := len("lock")
	for _, r := range rows {
		nameWidth = max(nameWidth, len(r.lock))
	}
	tw := newTable(w)
	header := []string{"threads", "cs", "kHz", "fairness"}
	if showCPy {
		header = append(header, "vs cpython")
	}
	if showSync {
		header = append(header, "vs sync")
	}
	if showPthread {
		header = append(header, "vs pthread")
	}
	tableRow(tw, nameWidth, "lock", header...)
	for _, r := range ordered(cfg, rows) {
		c := r.cell
		cells := []string{strconv.Itoa(c.threads), strconv.Itoa(c.cs),
			fmt.Sprintf("%.0f", r.khz), fmt.Sprintf("%.3f", jain(r.counts))}
		if showCPy {
			base, ok := khzOf(cpythonLock, c)
			cells = append(cells, ratio(r.khz, base, ok && r.lock != cpythonLock))
		}
		if showSync {
			base, ok := khzOf("sync", c)
			cells = append(cells, ratio(r.khz, base, ok && r.lock == "nogil-go"))
		}
		if showPthread {
			base, ok := khzOf("pthread", c)
			cells = append(cells, ratio(r.khz, base, ok && r.lock == "nogil-c"))
		}
		tableRow(tw, nameWidth, r.lock, cells...)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "\nkHz: acquisitions per ms, all threads together. fairness: Jain's index of per-thread\n")
	fmt.Fprintf(w, "counts (1 = even, 1/threads = one thread got everything). vs X: kHz / X's kHz.\n")

	if len(rts) == 0 {
		return nil
	}
	fmt.Fprintf(w, "\npark/unpark hand-off round trip: 2 pthreads %s ping-pong a 32-bit word,\n", pinDescriptions[cfg.pin])
	fmt.Fprintf(w, "%v per method in alternating rounds; ns/round trip is the median over the rounds\n\n", cfg.duration)
	nameWidth = len("method")
	for _, rt := range rts {
		nameWidth = max(nameWidth, len(rt.name))
	}
	var futexNs float64
	for _, rt := range rts {
		if rt.name == "futex-roundtrip" {
			futexNs = rt.nsPer()
		}
	}
	tw = newTable(w)
	tableRow(tw, nameWidth, "method", "round trips", "ns/round trip", "vs futex")
	for _, rt := range rts {
		tableRow(tw, nameWidth, rt.name, strconv.FormatInt(rt.roundtrips, 10), fmt.Sprintf("%.0f", rt.nsPer()),
			ratio(rt.nsPer(), futexNs, futexNs > 0 && rt.name != "futex-roundtrip"))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "\nvs futex: ns per round trip / the raw futex's (target <= 1.3).\n")
	return nil
}

// progress shows which cell is running, on stderr and only when stderr is a terminal: a
// default run takes about half a minute, and the output itself is often redirected.
type progress struct {
	w        io.Writer // nil: disabled
	done, of int
}

func newProgress(w io.Writer, total int) *progress {
	p := &progress{of: total}
	if f, ok := w.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			p.w = w
		}
	}
	return p
}

func (p *progress) step(what string) {
	if p.w == nil {
		return
	}
	p.done++
	fmt.Fprintf(p.w, "\r\033[K[%d/%d] %s", min(p.done, p.of), p.of, what)
}

func (p *progress) clear() {
	if p.w != nil {
		fmt.Fprint(p.w, "\r\033[K")
	}
}
