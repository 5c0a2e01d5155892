// Package cgosymbolizer makes Go crash tracebacks and CPU profiles show the C frames of
// cgo calls, with no dependency beyond Go, gcc and glibc.
//
// # Use
//
// Import it for its side effect, once, in the main package:
//
//	import _ "github.com/nogil-go/nogil/cgosymbolizer"
//
// Its init calls [runtime.SetCgoTraceback] (with no context function). After that, a
// program that crashes inside C code prints the C functions between the fault and the cgo
// call, innermost first, before the Go frames:
//
//	SIGSEGV: segmentation violation
//	signal arrived during cgo execution
//
//	goroutine 1 [syscall]:
//	level3
//		pc=0x4a06a0
//	level2
//		pc=0x4a06b8
//	level1
//		pc=0x4a06c8
//	_cgo_f48ec6ad72ae_Cfunc_level1
//		pc=0x4a067f
//	runtime.cgocall(0x4a0660, 0xc000069f00)
//	...
//
// and CPU profiles taken with runtime/pprof attribute time spent in C to C functions and
// their C callers instead of stopping at runtime.cgocall.
//
// The runtime accepts only one set of traceback functions per program: this package must
// be the program's only user of runtime.SetCgoTraceback. Importing it together with
// another package that calls SetCgoTraceback (github.com/ianlancetaylor/cgosymbolizer,
// for instance) makes the program panic during initialization.
//
// The package does something only on linux/amd64 and linux/arm64 with cgo enabled; on
// other platforms, and with CGO_ENABLED=0, importing it has no effect. The package's tests
// pass on linux/arm64 too (cross-compiled, run under qemu-user).
//
// # Build tag nogil_libdw: file and line numbers
//
// By default C frames are shown by function name only. Building with
//
//	go build -tags nogil_libdw
//
// adds file:line and the frames of inlined C functions, read from DWARF with elfutils
// libdw. It needs libdw's headers and libraries at build time (Debian and Ubuntu:
// apt-get install libdw-dev, which brings libelf-dev) and libdw1 and libelf1 at run time;
// the package links with -ldw -lelf. It also needs the DWARF itself: C code compiled with
// -g (cgo's default) and a binary not linked with -ldflags=-w (nor stripped; go test
// links test binaries with -s -w unless told otherwise).
//
// At init the nogil_libdw symbolizer reports the modules loaded at that time (the
// executable and its shared libraries; libraries loaded later by dlopen are not known to
// it) and starts a thread, named nogil-csym, that loads their symbol tables and DWARF in
// the background and then answers symbolization requests. All libdw calls run on that
// thread: libdw is not thread-safe, and parsing DWARF needs far more stack than the 32 KiB
// signal stack on which the runtime symbolizes a crash. The DWARF is kept in memory for
// the life of the process (a size comparable to the binary's debug sections). If the
// thread does not answer within 5 seconds (for example because the crashing thread holds
// a lock it needs, such as malloc's) the symbolizer falls back to the default one. When
// DEBUGINFOD_URLS is set, libdw may fetch separate debug information over the network,
// on that thread.
//
// # How it works, and what it cannot see
//
// The traceback function walks the chain of frame pointers, starting, in a signal
// handler, from the registers of the interrupted thread. It takes no lock, allocates
// nothing and calls nothing but system calls, so it is safe in the SIGPROF handler: it
// cannot deadlock the way unwinders built on _Unwind_Backtrace or dl_iterate_phdr can
// (ianlancetaylor/cgosymbolizer#15 and #16). Every word is proven readable before it is
// read, and the walk ends at the first frame that does not look right: a null or
// misaligned frame pointer, a caller frame that is not above its callee or is more than
// 1 MiB away (which is also where the C stack gives way to the goroutine stack), or 32
// frames (the runtime's buffer). In consequence:
//
//   - C code must keep frame pointers. gcc omits them at -O1 and above on amd64 unless
//     told -fno-omit-frame-pointer, and cgo's default flags do not say so: add
//     "#cgo CFLAGS: -fno-omit-frame-pointer" to every package with C code (the nogil
//     package does) or put it in CGO_CFLAGS. A function without a frame pointer hides
//     its caller, and code that reuses the frame-pointer register ends the walk.
//   - Leaf functions, which gcc builds without a frame even with -fno-omit-frame-pointer,
//     and functions interrupted in their prologue or epilogue: on amd64 the walk finds
//     their caller by looking above the stack pointer for the return address of a direct
//     call to them; on arm64 (where gcc gives leaves no frame record even at -O0) it takes
//     the link register when the instruction before it is a direct call to them.
//   - Shared libraries such as libc are usually built without frame pointers. When the
//     thread is interrupted in one, the walk (amd64) looks for the return address into the
//     executable after a call through the PLT or GOT, so "malloc" is followed by the C
//     function that called it, and continues from there if the library left the frame
//     pointer alone. Frames inside the library are not shown, and a C callback called by
//     a library (qsort's comparison function, say) does not show the library's caller.
//   - These heuristics can, rarely, skip a frame or add a wrong one.
//   - With no context function registered, the C frames between a Go→C→Go callback and
//     the outer cgo call are not shown (the runtime shows the Go frames).
//
// The default symbolizer names functions from the executable's own ELF symbol table
// (.symtab, which has static functions too; it is mapped at init and searched without
// locks or allocation) and, for other addresses, with dladdr(3), which knows only exported
// symbols of shared libraries (and of the executable when linked with -rdynamic). It
// reports no file or line, no inlined frames, and nothing for a binary linked with
// -ldflags=-s unless it was also linked with -extldflags=-rdynamic. dladdr takes the
// dynamic loader's lock; the symbolizer is never called from the SIGPROF handler (the
// profile is symbolized when it is written) but is called while the program crashes.
package cgosymbolizer
