package main

// #cgo CFLAGS: -I${SRCDIR}/../../csrc/include -Wall
// #include "nogil.h"
// #include "qsbrbench.h"
import "C"

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"runtime"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/nogil-go/nogil"
)

func init() {
	register(&command{
		name:    "qsbrbench",
		summary: "QSBR against liburcu's QSBR flavour: quiescent state, grace period, delayed free, poll",
		run:     runQsbrbench,
	})
}

// Implementation names, as they appear in the table and in the JSON records' "impl".
const (
	implNogilC  = "nogil-c"
	implNogilGo = "nogil-go"
	// implNogilGoReporter is the same report through a QuiescentReporter taken before the loop.
	implNogilGoReporter = "nogil-go-reporter"
	// implNogilGoReport is the same report through QuiescentReporter.Report (a bool).
	implNogilGoReport = "nogil-go-report"
	implLiburcu       = "liburcu"
	// implGoFloor is a reference row, not an implementation: the Go loop of nogil-go with only
	// the two atomic loads and the compare of a report that has nothing to write.
	implGoFloor = "go-floor"
)

// liburcuNote tells how to get the liburcu rows when the tool was built without them.
const liburcuNote = "liburcu rows need: apt install liburcu-dev; go run -tags nogil_liburcu ./cmd/nogil qsbrbench"

// A qsbrImpl is one side of a comparison: the measurements that exist for both nogil (in C)
// and liburcu. liburcu's is built only with the nogil_liburcu tag (liburcuImplementation).
type qsbrImpl struct {
	name      string
	quiescent func(d time.Duration) (ops int64, elapsed time.Duration, err error)
	grace     func(readers, reportEvery int, d time.Duration, samples []int64) (int, error)
	delayed   func(reportEvery int, capBytes int64, d time.Duration) (delayedResult, error)
}

// delayedResult is qb_delayed_result.
type delayedResult struct {
	objects     int64
	elapsed     time.Duration
	peakPending int64
	readerReads int64
}

func (r delayedResult) objectsPerSec() float64 {
	if r.elapsed <= 0 {
		return 0
	}
	return float64(r.objects) / r.elapsed.Seconds()
}

// qbError converts a qb_* return value: 0, an errno value, or minus a nogil status.
func qbError(rc C.int) error {
	switch {
	case rc == 0:
		return nil
	case rc < 0:
		return fmt.Errorf("nogil: %s", C.GoString(C.ng_strerror(-rc)))
	default:
		return syscall.Errno(rc)
	}
}

var nogilCImpl = &qsbrImpl{
	name: implNogilC,
	quiescent: func(d time.Duration) (int64, time.Duration, error) {
		var ops, elapsed C.int64_t
		err := qbError(C.qb_quiescent_nogil(C.int64_t(d.Nanoseconds()), &ops, &elapsed))
		return int64(ops), time.Duration(elapsed), err
	},
	grace: func(readers, reportEvery int, d time.Duration, samples []int64) (int, error) {
		var n C.int64_t
		// samples is Go memory handed to C: allowed, the call keeps no pointer to it.
		err := qbError(C.qb_grace_nogil(C.int(readers), C.int(reportEvery), C.int64_t(d.Nanoseconds()),
			(*C.int64_t)(unsafe.Pointer(&samples[0])), C.int64_t(len(samples)), &n))
		return int(n), err
	},
	delayed: func(reportEvery int, capBytes int64, d time.Duration) (delayedResult, error) {
		var r C.qb_delayed_result
		err := qbError(C.qb_delayed_nogil(C.int(reportEvery), C.int64_t(d.Nanoseconds()), C.int64_t(capBytes), &r))
		return delayedFromC(&r), err
	},
}

func delayedFromC(r *C.qb_delayed_result) delayedResult {
	return delayedResult{
		objects:     int64(r.objects),
		elapsed:     time.Duration(r.elapsed_ns),
		peakPending: int64(r.peak_pending_bytes),
		readerReads: int64(r.reads),
	}
}

// quiescentGo measures ThreadState.QuiescentState, the Go spelling of the same report, on a
// goroutine bound to an attached thread state of a fresh interpreter.
//
// It and the two loops below (and go-floor's) are written out rather than sharing a timing
// helper: a batch passed as a closure would load the handle's words from the closure's
// context on every call, which is the very cost these rows tell apart.
func quiescentGo(d time.Duration) (ops int64, elapsed time.Duration, err error) {
	return onAttachedState(func(ts *nogil.ThreadState) (ops int64, elapsed time.Duration, err error) {
		const batch = 1024
		start := time.Now()
		deadline := start.Add(d)
		for {
			for range batch {
				if err := ts.QuiescentState(); err != nil {
					return ops, 0, err
				}
			}
			ops += batch
			if now := time.Now(); !now.Before(deadline) {
				return ops, now.Sub(start), nil
			}
		}
	})
}

// quiescentGoReporter measures the same report through a QuiescentReporter taken before the
// loop, which keeps the words' addresses in registers as C code does.
func quiescentGoReporter(d time.Duration) (ops int64, elapsed time.Duration, err error) {
	return onAttachedState(func(ts *nogil.ThreadState) (ops int64, elapsed time.Duration, err error) {
		r := ts.QuiescentReporter()
		const batch = 1024
		start := time.Now()
		deadline := start.Add(d)
		for {
			for range batch {
				if err := r.QuiescentState(); err != nil {
					return ops, 0, err
				}
			}
			ops += batch
			if now := time.Now(); !now.Before(deadline) {
				return ops, now.Sub(start), nil
			}
		}
	})
}

// quiescentGoReport measures QuiescentReporter.Report, whose bool result the loop's test
// folds into the inlined branches.
func quiescentGoReport(d time.Duration) (ops int64, elapsed time.Duration, err error) {
	return onAttachedState(func(ts *nogil.ThreadState) (ops int64, elapsed time.Duration, err error) {
		r := ts.QuiescentReporter()
		const batch = 1024
		start := time.Now()
		deadline := start.Add(d)
		for {
			for range batch {
				if !r.Report() {
					return ops, 0, r.Err()
				}
			}
			ops += batch
			if now := time.Now(); !now.Before(deadline) {
				return ops, now.Sub(start), nil
			}
		}
	})
}

// onAttachedState runs measure on a goroutine bound to an attached thread state of a fresh
// interpreter, and releases the state and closes the interpreter after it.
func onAttachedState(measure func(ts *nogil.ThreadState) (int64, time.Duration, error)) (ops int64, elapsed time.Duration, err error) {
	in, err := nogil.NewInterpreter()
	if err != nil {
		return 0, 0, err
	}
	defer func() {
		if cerr := in.Close(); err == nil {
			err = cerr
		}
	}()
	done := make(chan error, 3)
	go func() {
		defer close(done)
		ts, err := in.Bind() // locks the goroutine to its thread until Release
		if err != nil {
			done <- err
			return
		}
		defer func() {
			if rerr := ts.Release(); rerr != nil {
				done <- rerr
			}
		}()
		if err := ts.Attach(); err != nil {
			done <- err
			return
		}
		var merr error
		ops, elapsed, merr = measure(ts)
		if merr != nil {
			done <- merr
		}
		if err := ts.Detach(); err != nil {
			done <- err
		}
	}()
	for e := range done {
		if err == nil {
			err = e
		}
	}
	return ops, elapsed, err
}

// quiescentFloor measures the floor under nogil-go: the same loop doing only what a report
// with nothing to write must do, the two sync/atomic loads of the C words (the slot's seq,
// the shared wr_seq) and their compare, with no API around it (no nil test, no error). The
// difference to nogil-go is the API's cost; the difference to liburcu is Go's. nogil-go-report
// differs from it only by the test of the reporter's zero value: the slot a ThreadState's
// reports read is pinned for it, so no liveness load is needed (see ThreadState.idleOr).
func quiescentFloor(d time.Duration) (ops int64, elapsed time.Duration, err error) {
	var handle unsafe.Pointer
	var seqC, wrC *C.uint64_t
	if err := qbError(C.qb_floor_new(&handle, &seqC, &wrC)); err != nil {
		return 0, 0, err
	}
	defer C.qb_floor_free(handle)
	seq, wr := (*uint64)(unsafe.Pointer(seqC)), (*uint64)(unsafe.Pointer(wrC))
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // as Bind does for nogil-go
		defer runtime.UnlockOSThread()
		const batch = 1024
		start := time.Now()
		deadline := start.Add(d)
		for {
			for range batch {
				if atomic.LoadUint64(seq) != atomic.LoadUint64(wr) {
					floorReport(seq, wr)
				}
			}
			ops += batch
			if now := time.Now(); !now.Before(deadline) {
				elapsed = now.Sub(start)
				break
			}
		}
	}()
	<-done
	return ops, elapsed, nil
}

// floorReport is the floor's report, never called while nobody advances.
//
//go:noinline
func floorReport(seq, wr *uint64) { atomic.StoreUint64(seq, atomic.LoadUint64(wr)) }

// pollCases are the poll measurements, by their JSON name, in table order.
var pollCases = []struct {
	name string
	kind C.int
	desc string
}{
	{"success-offline", C.QB_POLL_SUCCESS_OFFLINE, "successful poll (full scan), other slots offline"},
	{"success-online", C.QB_POLL_SUCCESS_ONLINE, "successful poll (full scan), every slot online at the current seq"},
	{"fail-laggard", C.QB_POLL_FAIL_LAGGARD, "failed poll, answered by the last poll's laggard (no scan)"},
	{"after-burst", C.QB_POLL_AFTER_BURST, "successful poll after all slots but two were given back (a burst of threads that exited)"},
}

func pollNogil(slots int, kind C.int, d time.Duration) (float64, error) {
	var ops, elapsed C.int64_t
	if err := qbError(C.qb_poll_nogil(C.int(slots), kind, C.int64_t(d.Nanoseconds()), &ops, &elapsed)); err != nil {
		return 0, err
	}
	if ops <= 0 {
		return 0, fmt.Errorf("no poll timed in %v", d)
	}
	return float64(elapsed) / float64(ops), nil
}

// ---- Configuration -----------------------------------------------------------------------

type qsbrbenchConfig struct {
	duration    time.Duration
	rounds      int
	readers     []int
	slots       []int
	reportEvery int
	delayedCap  int64
	format      string
}

// defaultDelayedCap is the back-pressure cap the delayed-free run gives nogil by default
// (the library's default is off).
const defaultDelayedCap = 256 << 10

const (
	maxQsbrReaders = 64
	maxQsbrSlots   = 1 << 20
)

func parseQsbrbenchFlags(args []string, out io.Writer) (*qsbrbenchConfig, error) {
	fs := flag.NewFlagSet("qsbrbench", flag.ContinueOnError)
	fs.SetOutput(out)
	duration := fs.Duration("duration", 500*time.Millisecond, "measuring time per implementation and measurement (poll: per cell, a quarter of it)")
	rounds := fs.Int("rounds", 5, "split each measurement into this many `rounds`, alternating the implementations")
	readers := fs.String("readers", "1,2", "comma-separated `list` of reader counts for the grace-period latency")
	slots := fs.String("slots", "1,64,1024,4096", "comma-separated `list` of registered slot counts for the poll cost")
	every := fs.Int("report-every", C.QB_DEFAULT_REPORT_EVERY, "readers report a quiescent state every `n` reads")
	delayedCap := fs.Int64("delayed-cap", defaultDelayedCap, "nogil's back-pressure cap (ng_delayed_set_cap) in `bytes` for the delayed-free run; 0: off")
	format := fs.String("format", "text", "output `format`: text or json (one record per line)")
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprintf(w, "Usage: nogil qsbrbench [flags]\n\n")
		fmt.Fprintf(w, "Compares nogil's QSBR with liburcu's QSBR flavour in one run, each on plain pthreads:\n")
		fmt.Fprintf(w, "  quiescent-state   cost of one quiescent-state report (C inline, Go, liburcu inline)\n")
		fmt.Fprintf(w, "  grace-period      advance + wait until over (ng_qsbr_wait), vs synchronize_rcu, with readers\n")
		fmt.Fprintf(w, "  delayed-free      1 writer retiring 64-byte objects (ng_call_delayed vs call_rcu),\n")
		fmt.Fprintf(w, "                    1 reader: objects/s and peak retired-but-not-freed bytes\n")
		fmt.Fprintf(w, "  poll              poll cost with many registered slots (nogil only)\n")
		fmt.Fprintf(w, "The liburcu rows need the nogil_liburcu build tag and liburcu-dev.\n\nFlags:\n")
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
	cfg := &qsbrbenchConfig{duration: *duration, rounds: *rounds, reportEvery: *every, delayedCap: *delayedCap,
		format: *format}
	var err error
	if cfg.readers, err = parseIntList(*readers, 0, maxQsbrReaders); err != nil {
		return nil, usagef("--readers: %v", err)
	}
	if cfg.slots, err = parseIntList(*slots, 1, maxQsbrSlots); err != nil {
		return nil, usagef("--slots: %v", err)
	}
	if cfg.duration <= 0 {
		return nil, usagef("--duration must be positive")
	}
	if cfg.rounds < 1 || cfg.rounds > 1000 {
		return nil, usagef("--rounds must be in [1, 1000]")
	}
	if cfg.reportEvery < 1 {
		return nil, usagef("--report-every must be positive")
	}
	if cfg.delayedCap < 0 {
		return nil, usagef("--delayed-cap must not be negative")
	}
	if cfg.format != "text" && cfg.format != "json" {
		return nil, usagef("--format must be text or json, not %q", cfg.format)
	}
	return cfg, nil
}

// ---- Running -----------------------------------------------------------------------------

// A qsbrRecord is one measurement; its JSON form is the --format json output line.
type qsbrRecord struct {
	Bench  string         `json:"bench"`
	Impl   string         `json:"impl"`
	Params map[string]any `json:"params"`
	Value  float64        `json:"value"`
	Unit   string         `json:"unit"`
}

// qsbrResults collects the records of one run, in output order.
type qsbrResults struct {
	records []qsbrRecord
}

func (r *qsbrResults) add(bench, impl string, params map[string]any, value float64, unit string) {
	r.records = append(r.records, qsbrRecord{bench, impl, params, value, unit})
}

// find returns the value of the record with these fields and the given params (compared
// as printed), if any.
func (r *qsbrResults) find(bench, impl string, match map[string]any) (float64, bool) {
	for _, rec := range r.records {
		if rec.Bench != bench || rec.Impl != impl {
			continue
		}
		ok := true
		for k, v := range match {
			if fmt.Sprint(rec.Params[k]) != fmt.Sprint(v) {
				ok = false
			}
		}
		if ok {
			return rec.Value, true
		}
	}
	return 0, false
}

// alternate runs one round of each impl rounds times, reversing the order every other round,
// so that every impl sees the same mix of machine conditions.
func alternate(impls []*qsbrImpl, rounds int, run func(impl *qsbrImpl) error) error {
	for r := range rounds {
		for j := range impls {
			i := j
			if r%2 == 1 {
				i = len(impls) - 1 - j
			}
			if err := run(impls[i]); err != nil {
				return fmt.Errorf("%s: %w", impls[i].name, err)
			}
		}
	}
	return nil
}

// maxGraceSamples bounds the latencies kept per call (8 MiB of int64).
const maxGraceSamples = 1 << 20

func runQsbrbench(args []string, stdout, stderr io.Writer) error {
	cfg, err := parseQsbrbenchFlags(args, stderr)
	if err != nil {
		return err
	}
	impls := []*qsbrImpl{nogilCImpl}
	urcu, missing := liburcuImplementation()
	if urcu != nil {
		impls = append(impls, urcu)
	}
	perRound := max(cfg.duration/time.Duration(cfg.rounds), time.Millisecond)
	p := newProgress(stderr, 4)
	res := &qsbrResults{}

	// 1. Quiescent-state cost: C rows (nogil and liburcu) and the Go row, alternating.
	p.step("quiescent-state cost")
	goImpl := &qsbrImpl{name: implNogilGo, quiescent: quiescentGo}
	reporter := &qsbrImpl{name: implNogilGoReporter, quiescent: quiescentGoReporter}
	report := &qsbrImpl{name: implNogilGoReport, quiescent: quiescentGoReport}
	floor := &qsbrImpl{name: implGoFloor, quiescent: quiescentFloor}
	qImpls := append([]*qsbrImpl{nogilCImpl, goImpl, reporter, report, floor}, impls[1:]...)
	perOp := map[string][]float64{}
	err = alternate(qImpls, cfg.rounds, func(impl *qsbrImpl) error {
		ops, elapsed, err := impl.quiescent(perRound)
		if err == nil && ops <= 0 {
			err = fmt.Errorf("no report timed in %v", perRound)
		}
		if err == nil {
			perOp[impl.name] = append(perOp[impl.name], float64(elapsed.Nanoseconds())/float64(ops))
		}
		return err
	})
	if err != nil {
		p.clear()
		return fmt.Errorf("quiescent-state: %w", err)
	}
	for _, impl := range qImpls {
		res.add("quiescent-state", impl.name, map[string]any{"rounds": cfg.rounds, "stat": "median"},
			median(perOp[impl.name]), "ns/op")
	}

	// 2. Grace-period latency.
	p.step("grace-period latency")
	samples := make([]int64, maxGraceSamples)
	for _, readers := range cfg.readers {
		lat := map[string][]float64{}
		err = alternate(impls, cfg.rounds, func(impl *qsbrImpl) error {
			n, err := impl.grace(readers, cfg.reportEvery, perRound, samples)
			if err == nil && n <= 0 {
				err = fmt.Errorf("no grace period timed in %v", perRound)
			}
			for _, s := range samples[:max(n, 0)] {
				lat[impl.name] = append(lat[impl.name], float64(s)/1e3)
			}
			return err
		})
		if err != nil {
			p.clear()
			return fmt.Errorf("grace-period with %d readers: %w", readers, err)
		}
		for _, impl := range impls {
			l := lat[impl.name]
			params := func(stat string) map[string]any {
				return map[string]any{"readers": readers, "report_every": cfg.reportEvery,
					"periods": len(l), "stat": stat}
			}
			res.add("grace-period", impl.name, params("mean"), mean(l), "us")
			res.add("grace-period", impl.name, params("median"), median(l), "us")
		}
	}

	// 3. Delayed-free throughput and peak pending bytes.
	p.step("delayed-free throughput")
	rates := map[string][]float64{}
	peaks := map[string]int64{}
	err = alternate(impls, cfg.rounds, func(impl *qsbrImpl) error {
		r, err := impl.delayed(cfg.reportEvery, cfg.delayedCap, perRound)
		if err == nil && r.objects <= 0 {
			err = fmt.Errorf("no object retired in %v", perRound)
		}
		if err == nil {
			rates[impl.name] = append(rates[impl.name], r.objectsPerSec())
			peaks[impl.name] = max(peaks[impl.name], r.peakPending)
		}
		return err
	})
	if err != nil {
		p.clear()
		return fmt.Errorf("delayed-free: %w", err)
	}
	for _, impl := range impls {
		params := map[string]any{"writers": 1, "readers": 1, "object_bytes": 64,
			"report_every": cfg.reportEvery, "rounds": cfg.rounds}
		if impl.name == implNogilC {
			params["cap_bytes"] = cfg.delayedCap // the back-pressure setting; 0: off
		}
		res.add("delayed-free-throughput", impl.name, params, median(rates[impl.name]), "objects/s")
		res.add("delayed-free-peak-pending", impl.name, params, float64(peaks[impl.name]), "bytes")
	}

	// 4. Poll cost (nogil only: liburcu has no poll).
	p.step("poll cost")
	pollTime := max(cfg.duration/4, time.Millisecond)
	for _, slots := range cfg.slots {
		for _, pc := range pollCases {
			ns, err := pollNogil(slots, pc.kind, pollTime)
			if err != nil {
				p.clear()
				return fmt.Errorf("poll with %d slots (%s): %w", slots, pc.name, err)
			}
			res.add("poll", implNogilC, map[string]any{"slots": slots, "case": pc.name}, ns, "ns/op")
		}
	}
	p.clear()

	if cfg.format == "json" {
		enc := json.NewEncoder(stdout)
		for _, rec := range res.records {
			if err := enc.Encode(rec); err != nil {
				return err
			}
		}
		return nil
	}
	return writeQsbrText(stdout, cfg, res, urcu != nil, missing)
}

// mean returns the arithmetic mean of xs, NaN for none.
func mean(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	var s float64
	for _, x := range xs {
		s += x
	}
	return s / float64(len(xs))
}

// ---- Text output -------------------------------------------------------------------------

func writeQsbrText(w io.Writer, cfg *qsbrbenchConfig, res *qsbrResults, haveURCU bool, missing string) error {
	fmt.Fprintf(w, "nogil qsbrbench: %v per implementation and measurement, in %d alternating rounds\n",
		cfg.duration, cfg.rounds)
	fmt.Fprintf(w, "%s %s/%s, GOMAXPROCS=%d, NumCPU=%d\n", runtime.Version(), runtime.GOOS, runtime.GOARCH,
		runtime.GOMAXPROCS(0), runtime.NumCPU())
	if !haveURCU {
		fmt.Fprintf(w, "note: %s\n", missing)
	}
	fmt.Fprintln(w)

	f2 := func(v float64) string { return strconv.FormatFloat(v, 'f', 2, 64) }
	f1 := func(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) }
	vsURCU := func(bench, impl string, v float64, match map[string]any, show bool) string {
		base, ok := res.find(bench, implLiburcu, match)
		return ratio(v, base, ok && show && impl != implLiburcu)
	}

	// Quiescent state.
	fmt.Fprintf(w, "quiescent-state cost: one online thread reports in a loop, nobody advances (median of rounds)\n\n")
	tw := newTable(w)
	const implWidth = len(implNogilGoReporter)
	tableRow(tw, implWidth, "impl", "ns/op", "vs liburcu", "target")
	for _, impl := range []string{implNogilC, implNogilGo, implNogilGoReporter, implNogilGoReport, implGoFloor, implLiburcu} {
		v, ok := res.find("quiescent-state", impl, nil)
		if !ok {
			continue
		}
		target := "<= 1.2x" // the target for every report of ours, C and Go
		if impl == implGoFloor || impl == implLiburcu {
			target = ""
		}
		tableRow(tw, implWidth, impl, f2(v), vsURCU("quiescent-state", impl, v, nil, impl != implLiburcu), target)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "\nnogil-c: inline ng_qsbr_quiescent_state; nogil-go: ThreadState.QuiescentState (sync/atomic,\n")
	fmt.Fprintf(w, "reloads the word addresses from the ThreadState every call); nogil-go-reporter: the same through\n")
	fmt.Fprintf(w, "a QuiescentReporter taken before the loop (addresses in registers, as C keeps its slot pointer),\n")
	fmt.Fprintf(w, "its error tested; nogil-go-report: QuiescentReporter.Report, a bool whose test folds into the\n")
	fmt.Fprintf(w, "inlined branches; go-floor: reference, the loop with only the two sync/atomic loads of the same\n")
	fmt.Fprintf(w, "C words and their compare (no API: no nil test, no error); liburcu: inline urcu_qsbr_quiescent_state\n")
	fmt.Fprintf(w, "(_LGPL_SOURCE).\n\n")

	// Grace periods.
	fmt.Fprintf(w, "grace-period latency: back-to-back grace periods, readers report every %d reads\n", cfg.reportEvery)
	fmt.Fprintf(w, "(nogil: ng_qsbr_advance, then ng_qsbr_wait: polls until true, after 2 us sleeping until a\n")
	fmt.Fprintf(w, "report wakes it; liburcu: synchronize_rcu)\n\n")
	tw = newTable(w)
	tableRow(tw, 10, "impl", "readers", "periods", "mean us", "median us", "vs liburcu (median)", "target")
	for _, readers := range cfg.readers {
		for _, impl := range []string{implNogilC, implLiburcu} {
			med, ok := res.find("grace-period", impl, map[string]any{"readers": readers, "stat": "median"})
			if !ok {
				continue
			}
			mn, _ := res.find("grace-period", impl, map[string]any{"readers": readers, "stat": "mean"})
			periods := ""
			for _, rec := range res.records {
				if rec.Bench == "grace-period" && rec.Impl == impl && fmt.Sprint(rec.Params["readers"]) == strconv.Itoa(readers) {
					periods = fmt.Sprint(rec.Params["periods"])
				}
			}
			target := ""
			if impl == implNogilC {
				target = "<= 1x"
			}
			tableRow(tw, 10, impl, strconv.Itoa(readers), periods, f2(mn), f2(med),
				vsURCU("grace-period", impl, med, map[string]any{"readers": readers, "stat": "median"}, true), target)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	// Delayed free.
	fmt.Fprintf(w, "\ndelayed-free: 1 writer replaces a shared 64-byte object and retires the old one, 1 reader\n")
	fmt.Fprintf(w, "reports every %d reads; until every retired object is freed (nogil: ng_call_delayed +\n", cfg.reportEvery)
	fmt.Fprintf(w, "checkpoint per object; liburcu: call_rcu + quiescent state per object, its call_rcu thread frees)\n")
	if cfg.delayedCap > 0 {
		fmt.Fprintf(w, "nogil back-pressure cap: %d bytes (ng_delayed_set_cap: a checkpoint over it waits for its\n", cfg.delayedCap)
		fmt.Fprintf(w, "queue's grace period; --delayed-cap 0 turns it off; liburcu has no such bound)\n\n")
	} else {
		fmt.Fprintf(w, "nogil back-pressure cap: off (--delayed-cap 0)\n\n")
	}
	tw = newTable(w)
	tableRow(tw, 10, "impl", "objects/s", "vs liburcu", "target", "peak pending B", "vs liburcu", "target")
	for _, impl := range []string{implNogilC, implLiburcu} {
		rate, ok := res.find("delayed-free-throughput", impl, nil)
		if !ok {
			continue
		}
		peak, _ := res.find("delayed-free-peak-pending", impl, nil)
		t1, t2 := "", ""
		if impl == implNogilC {
			t1, t2 = ">= 1.5x", "<= 0.25x"
		}
		tableRow(tw, 10, impl, fmt.Sprintf("%.0f", rate), vsURCU("delayed-free-throughput", impl, rate, nil, true), t1,
			fmt.Sprintf("%.0f", peak), vsURCU("delayed-free-peak-pending", impl, peak, nil, true), t2)
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	// Poll.
	fmt.Fprintf(w, "\npoll cost (nogil-c, one thread acting for every slot, so the slots it reads sit in its own\n")
	fmt.Fprintf(w, "cache: no coherence misses; a real scan after other threads reported pays one per slot)\n\n")
	tw = newTable(w)
	tableRow(tw, 10, "slots", "success, others offline", "success, all online", "fail (laggard hint)",
		"success, 2 left after the burst")
	for _, slots := range cfg.slots {
		cells := []string{}
		for _, pc := range pollCases {
			v, _ := res.find("poll", implNogilC, map[string]any{"slots": slots, "case": pc.name})
			cells = append(cells, f1(v)+" ns")
		}
		tableRow(tw, 10, strconv.Itoa(slots), cells...)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "\nvs liburcu: ours / liburcu's (lower is better, except objects/s).\n")
	if !haveURCU {
		fmt.Fprintf(w, "%s\n", missing)
	}
	return nil
}
