// Internal declarations shared by the C files of package cgosymbolizer.
// Nothing here is a public API; every symbol carries the nogilcsym_ prefix.

#ifndef NOGIL_CGOSYMBOLIZER_H
#define NOGIL_CGOSYMBOLIZER_H

#include <stdint.h>

// The argument of the traceback function, as runtime.SetCgoTraceback documents it
// (runtime.cgoTracebackArg, version 0).
struct nogilcsym_traceback_arg {
	uintptr_t context;
	uintptr_t sig_context;
	uintptr_t *buf;
	uintptr_t max;
};

// The argument of the symbolizer function (runtime.cgoSymbolizerArg, version 0).
struct nogilcsym_symbolizer_arg {
	uintptr_t pc;
	const char *file;
	uintptr_t lineno;
	const char *func;
	uintptr_t entry;
	uintptr_t more;
	uintptr_t data;
};

// The three functions handed to runtime.SetCgoTraceback (the context function is nil).
// Their parameters are void* because that is how the runtime calls them.
void nogilcsym_traceback(void *arg);
void nogilcsym_symbolizer(void *arg);

// Called once from the package's init, before SetCgoTraceback. Loads whatever the
// symbolizer needs so that nothing has to be loaded while the program is crashing.
void nogilcsym_init(void);

// ucontext_*.c: extracts pc, stack pointer and frame pointer from the ucontext_t that a
// signal handler received. Returns 0 when it cannot.
int nogilcsym_ucontext_regs(uintptr_t uc, uintptr_t *pc, uintptr_t *sp, uintptr_t *fp);
#if defined(__aarch64__)
// The link register (x30) of the interrupted thread. Returns 0 when it cannot.
int nogilcsym_ucontext_lr(uintptr_t uc, uintptr_t *lr);
#endif

// traceback.c: the return address into runtime.asmcgocall, where the walk ends (0: unknown).
void nogilcsym_set_cgo_return(uintptr_t ret);

// elfsym.c: a lock-free, allocation-free lookup in the main executable's own ELF
// symbol table (.symtab, which holds static functions too), mapped at init.
void nogilcsym_elfsym_init(void);
int nogilcsym_elfsym_lookup(uintptr_t pc, const char **name, uintptr_t *entry);
// Reports whether addr is in one of the executable's code segments (async-signal-safe).
int nogilcsym_in_exe_text(uintptr_t addr);
// Reports whether addr is in one of the executable's PLT sections (async-signal-safe).
int nogilcsym_in_exe_plt(uintptr_t addr);

// The symbolizer used when nothing better answers: the executable's .symtab, then
// dladdr(3) (exported symbols of the executable and of shared libraries).
// Clears file/lineno/more and fills func/entry when it can.
void nogilcsym_basic_symbolize(struct nogilcsym_symbolizer_arg *arg);

#endif
