//go:build cgo && linux && (amd64 || arm64)

package cgosymbolizer

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// ---- In-process tests: this test binary imports the package, so its init has run. ----

var (
	symbolsOnce         sync.Once
	hasSymtab, hasDWARF bool
)

// requireSymbols skips the test unless this test binary has a symbol table (and, for a
// nogil_libdw build, DWARF). Plain "go test" links test binaries with -s -w; "go test
// -ldflags='-s=false -w=false'" keeps both. The programs of TestCrashTraceback and
// TestProfileUnderSIGPROF are built with symbols either way.
func requireSymbols(t *testing.T) {
	t.Helper()
	symbolsOnce.Do(func() {
		exe, err := os.Executable()
		if err != nil {
			return
		}
		f, err := elf.Open(exe)
		if err != nil {
			return
		}
		defer f.Close()
		hasSymtab = f.Section(".symtab") != nil
		hasDWARF = f.Section(".debug_info") != nil
	})
	if !hasSymtab || (libdwBuild && !hasDWARF) {
		t.Skip("test binary linked without symbols or DWARF (plain go test uses -s -w); run go test -ldflags='-s=false -w=false' to include this test")
	}
}

func TestSymbolizeCFunction(t *testing.T) {
	requireSymbols(t)
	entry := tracebackEntry()
	for _, pc := range []uintptr{entry, entry + 1, entry + 8} {
		frames := symbolize(pc)
		if len(frames) == 0 {
			t.Fatalf("symbolize(%#x): no frames", pc)
		}
		f := frames[len(frames)-1]
		if f.Func != "nogilcsym_traceback" || f.Entry != entry {
			t.Errorf("symbolize(%#x) = %+v, want Func nogilcsym_traceback, Entry %#x", pc, f, entry)
		}
		if libdwBuild && (!strings.HasSuffix(f.File, "/traceback.c") || f.Line <= 0) {
			t.Errorf("symbolize(%#x) = %+v, want File .../traceback.c and a line (nogil_libdw build)", pc, f)
		}
	}
}

func TestRuntimeUsesSymbolizer(t *testing.T) {
	requireSymbols(t)
	// runtime.CallersFrames hands PCs that are not Go code to the registered symbolizer.
	entry := tracebackEntry()
	f, _ := runtime.CallersFrames([]uintptr{entry + 1}).Next()
	if f.Function != "nogilcsym_traceback" || f.Entry != entry {
		t.Fatalf("runtime.CallersFrames: Function %q, Entry %#x; want nogilcsym_traceback, %#x", f.Function, f.Entry, entry)
	}
}

func TestSymbolizeUnknownPC(t *testing.T) {
	for _, pc := range []uintptr{1, 4096, ^uintptr(0) - 16} {
		frames := symbolize(pc)
		if len(frames) != 1 || frames[0] != (frame{}) {
			t.Errorf("symbolize(%#x) = %+v, want one empty frame", pc, frames)
		}
	}
}

func TestSymbolizeConcurrently(t *testing.T) {
	pcs := []uintptr{tracebackEntry() + 1, testTracebackEntry() + 1, 1}
	want := make([]string, len(pcs))
	for i, pc := range pcs {
		want[i] = fmt.Sprint(symbolize(pc))
	}
	var wg sync.WaitGroup
	errs := make(chan string, 8)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 300; i++ {
				j := (g + i) % len(pcs)
				if got := fmt.Sprint(symbolize(pcs[j])); got != want[j] {
					errs <- fmt.Sprintf("symbolize(%#x) = %s, want %s", pcs[j], got, want[j])
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

func TestTracebackOutsideSignalHandler(t *testing.T) {
	// Called from C (not from a signal handler) the traceback starts at its caller,
	// nogilcsym_test_traceback, then the cgo wrapper that Go called; it must stop there,
	// where the stack switches back to the goroutine's.
	pcs := testTraceback()
	if len(pcs) != 2 {
		t.Fatalf("traceback from C has %d frames (%#x), want 2", len(pcs), pcs)
	}
	if start := testTracebackEntry(); pcs[0] <= start || pcs[0]-start > 256 {
		t.Errorf("first frame %#x is not in nogilcsym_test_traceback (at %#x)", pcs[0], start)
	}
	requireSymbols(t)
	var names []string
	for _, pc := range pcs {
		names = append(names, symbolize(pc)[0].Func)
	}
	if !strings.HasPrefix(names[0], "nogilcsym_test_traceback") ||
		!strings.HasPrefix(names[1], "_cgo_") || !strings.HasSuffix(names[1], "_Cfunc_nogilcsym_test_traceback") {
		t.Fatalf("traceback from C = %q, want [nogilcsym_test_traceback _cgo_*_Cfunc_nogilcsym_test_traceback]", names)
	}
}

// ---- Test programs (testdata/): built with go build, run, and their output checked. ----

type variant struct {
	name    string
	tags    string   // -tags for the program
	ldflags string   // -ldflags for the program
	env     []string // extra environment for go build
}

var (
	defaultVariant = variant{name: "glibc"}
	libdwVariant   = variant{name: "libdw", tags: "nogil_libdw"}
)

func goCommand(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	p := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(p); err != nil {
		t.Skip("go command not found")
	}
	return p
}

var (
	libdwOnce sync.Once
	libdwErr  error
)

// requireLibdw skips the test unless a C program can be linked against libdw.
func requireLibdw(t *testing.T) {
	t.Helper()
	if libdwBuild {
		return // this very test binary links it
	}
	libdwOnce.Do(func() {
		cc := []string{"gcc"}
		if out, err := exec.Command(goCommand(t), "env", "CC").Output(); err == nil && len(strings.Fields(string(out))) > 0 {
			cc = strings.Fields(string(out))
		}
		dir, err := os.MkdirTemp("", "libdw-probe")
		if err != nil {
			libdwErr = err
			return
		}
		defer os.RemoveAll(dir)
		src := filepath.Join(dir, "probe.c")
		prog := "#include <elfutils/libdwfl.h>\nint main(void) { return dwfl_begin(0) != 0; }\n"
		if err := os.WriteFile(src, []byte(prog), 0o644); err != nil {
			libdwErr = err
			return
		}
		args := append(cc[1:], "-o", filepath.Join(dir, "probe"), src, "-ldw", "-lelf")
		if out, err := exec.Command(cc[0], args...).CombinedOutput(); err != nil {
			libdwErr = fmt.Errorf("%v: %s", err, bytes.TrimSpace(out))
		}
	})
	if libdwErr != nil {
		t.Skipf("libdw is not available (Debian: apt-get install libdw-dev): %v", libdwErr)
	}
}

// build builds testdata/<prog> as v says and returns the executable's path.
func build(t *testing.T, prog string, v variant) string {
	t.Helper()
	if v.tags == "nogil_libdw" {
		requireLibdw(t)
	}
	exe := filepath.Join(t.TempDir(), prog)
	args := []string{"build", "-o", exe}
	if raceBuild {
		args = append(args, "-race")
	}
	if v.tags != "" {
		args = append(args, "-tags", v.tags)
	}
	if v.ldflags != "" {
		args = append(args, "-ldflags="+v.ldflags)
	}
	args = append(args, "./testdata/"+prog)
	cmd := exec.Command(goCommand(t), args...)
	cmd.Env = append(os.Environ(), v.env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return exe
}

// run runs exe with a deadline, returning its combined output and whether it timed out.
func run(t *testing.T, timeout time.Duration, exe string, args ...string) (out string, timedOut bool, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe, args...)
	cmd.Env = append(os.Environ(), "GOTRACEBACK=single")
	b, err := cmd.CombinedOutput()
	return string(b), ctx.Err() != nil, err
}

// markerLines maps each "line:NAME" marker in a testdata file to its line number.
func markerLines(t *testing.T, path string) map[string]int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m := map[string]int{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		if _, name, ok := strings.Cut(sc.Text(), "// line:"); ok {
			m[strings.TrimSpace(name)] = n
		}
	}
	return m
}

type cFrame struct {
	Func string
	Loc  string // "file:line", or "" when the symbolizer had none
}

// crashCFrames returns the non-Go frames that the runtime printed, innermost first, for
// the goroutine that crashed in C (they come before its runtime.cgocall frame).
func crashCFrames(out string) []cFrame {
	lines := strings.Split(out, "\n")
	i := 0
	for i < len(lines) && !strings.HasPrefix(lines[i], "signal arrived during cgo execution") {
		i++
	}
	for i < len(lines) && !strings.HasPrefix(lines[i], "goroutine ") {
		i++
	}
	var frames []cFrame
	for i++; i+1 < len(lines); i += 2 {
		fn, loc := lines[i], lines[i+1]
		if strings.HasPrefix(fn, "runtime.cgocall(") || !strings.HasPrefix(loc, "\t") {
			break
		}
		loc = strings.TrimSpace(loc)
		if j := strings.LastIndex(loc, "pc="); j >= 0 {
			loc = strings.TrimSpace(loc[:j])
		}
		frames = append(frames, cFrame{fn, loc})
	}
	return frames
}

func TestCrashTraceback(t *testing.T) {
	lines := markerLines(t, filepath.Join("testdata", "crash", "crash.c"))
	variants := []variant{
		defaultVariant,
		// The C code at -O0: level3 sets up its own frame (at -O2 it is a leaf without one).
		{name: "glibc-O0", env: []string{"CGO_CFLAGS=-O0 -g"}},
		// No .symtab: the names must come from dladdr, which needs them in .dynsym.
		{name: "dladdr", ldflags: "-s -extldflags=-rdynamic"},
		libdwVariant,
		{name: "libdw-O0", tags: "nogil_libdw", env: []string{"CGO_CFLAGS=-O0 -g"}},
	}
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			t.Parallel()
			exe := build(t, "crash", v)
			out, timedOut, err := run(t, time.Minute, exe)
			if timedOut {
				t.Fatalf("the crashing program did not exit; output:\n%s", out)
			}
			if err == nil || !strings.Contains(out, "SIGSEGV") {
				t.Fatalf("want a SIGSEGV crash, got err=%v; output:\n%s", err, out)
			}
			frames := crashCFrames(out)
			want := []string{"level3", "level2", "level1"}
			if v.tags == "nogil_libdw" {
				// DWARF also knows about poke, inlined into level3.
				want = append([]string{"poke"}, want...)
			}
			if len(frames) < len(want) {
				t.Fatalf("C frames %+v, want at least %q; output:\n%s", frames, want, out)
			}
			for i, name := range want {
				if frames[i].Func != name {
					t.Fatalf("C frame %d is %+v, want %s (frames %+v); output:\n%s", i, frames[i], name, frames, out)
				}
				if v.tags == "nogil_libdw" {
					wantLoc := fmt.Sprintf("crash.c:%d", lines[name])
					if !strings.HasSuffix(frames[i].Loc, "/"+wantLoc) {
						t.Errorf("C frame %d (%s) at %q, want .../%s", i, name, frames[i].Loc, wantLoc)
					}
				}
			}
		})
	}
}

// gunzip returns the profile.proto inside a gzipped profile.
func gunzip(t *testing.T, data []byte) []byte {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("profile: %v", err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatalf("profile: %v", err)
	}
	return raw
}

// hasString reports whether s is an entry of the string table of profile.proto raw
// (function and file names live there). Matching the encoded entry (field 6,
// length-delimited) rather than a substring keeps "f" from matching "_Cfunc_f".
func hasString(raw []byte, s string) bool {
	if len(s) >= 128 {
		panic("hasString: string too long")
	}
	return bytes.Contains(raw, append([]byte{6<<3 | 2, byte(len(s))}, s...))
}

func TestProfileUnderSIGPROF(t *testing.T) {
	for _, v := range []variant{defaultVariant, libdwVariant} {
		t.Run(v.name, func(t *testing.T) {
			t.Parallel()
			exe := build(t, "prof", v)
			prof := filepath.Join(t.TempDir(), "cpu.pprof")
			out, timedOut, err := run(t, time.Minute, exe, prof)
			if timedOut {
				t.Fatalf("profiled program did not finish (deadlock in a signal handler?); output:\n%s", out)
			}
			if err != nil || !strings.Contains(out, "prof: ok") {
				t.Fatalf("profiled program failed: %v; output:\n%s", err, out)
			}
			data, err := os.ReadFile(prof)
			if err != nil {
				t.Fatal(err)
			}
			raw := gunzip(t, data)
			// prof_spin_inner is where the time goes; prof_spin_outer is its caller, which
			// only the traceback can add (the leaf has no frame of its own at -O1).
			for _, s := range []string{"prof_spin_inner", "prof_spin_outer"} {
				if !hasString(raw, s) {
					t.Errorf("profile does not name %q", s)
				}
			}
			if v.tags == "nogil_libdw" && !bytes.Contains(raw, []byte("/testdata/prof/prof.c")) {
				t.Errorf("profile does not name the file .../testdata/prof/prof.c")
			}
		})
	}
}
