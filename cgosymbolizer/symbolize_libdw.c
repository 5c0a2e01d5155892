//go:build cgo && linux && (amd64 || arm64) && nogil_libdw

// Build tag nogil_libdw: function, file and line (and inlined frames) from DWARF, read with
// elfutils libdw.
//
// libdw is neither thread-safe nor frugal with the stack: reading a compilation unit's line
// table puts tens of KiB of arrays on the stack, and the symbolizer may be called on a
// 32 KiB signal stack while the program crashes. So one worker thread, started at init,
// owns the Dwfl session and does every libdw call on its own (ordinary, large) stack.
// A caller hands it one pc at a time through a slot guarded by a futex and waits with a
// deadline. If the worker does not answer in time (it might be blocked on a lock that the
// crashing thread holds, malloc's for instance) the caller falls back to the glibc-only
// symbolizer of elfsym.c, and so do all later callers until the worker has caught up.
// The caller side uses only atomics, clock_gettime and futex system calls.

#define _GNU_SOURCE
#include <dwarf.h>
#include <elfutils/libdw.h>
#include <elfutils/libdwfl.h>
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "cgosymbolizer.h"

// How long one caller waits for the worker. The first question about a module can be slow
// (the worker may still be loading its DWARF at startup).
#define WAIT_NS (5 * 1000 * 1000 * 1000LL)

// Inlined frames reported for one pc at most.
enum { MAX_INLINE = 32 };

// slot.state values.
enum {
	IDLE,      // free
	CLAIMED,   // a caller is filling in a question
	QUESTION,  // the worker is answering
	ANSWERED,  // the caller may read the answer
	ABANDONED, // the caller gave up waiting; the worker frees the slot when it is done
};

static Dwfl *dwfl; // set up by nogilcsym_init, then used by the worker thread only
static int worker_ok; // atomic: 1 while callers should ask the worker

static struct {
	int state; // atomic; also the futex word everybody waits on
	// The question.
	uintptr_t pc;
	uintptr_t index; // which frame of pc's inline chain, innermost first
	// The answer.
	int found;
	const char *func;
	const char *file;
	int line;
	uintptr_t entry;
	int more;
} slot;

static long futex(int *addr, int op, int val, const struct timespec *timeout)
{
	int saved = errno;
	long r = syscall(SYS_futex, addr, op, val, timeout, NULL, 0);
	errno = saved;
	return r;
}

static int load(int *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }

static void store(int *p, int v)
{
	__atomic_store_n(p, v, __ATOMIC_RELEASE);
	futex(p, FUTEX_WAKE_PRIVATE, INT_MAX, NULL);
}

static int cas(int *p, int old, int new)
{
	if (!__atomic_compare_exchange_n(p, &old, new, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
		return 0;
	futex(p, FUTEX_WAKE_PRIVATE, INT_MAX, NULL);
	return 1;
}

static long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

// Waits while *p == v, until the deadline. Returns 0 once the deadline has passed.
static int wait_while(int *p, int v, long long deadline)
{
	long long left = deadline - now_ns();
	struct timespec ts;

	if (left <= 0)
		return 0;
	ts.tv_sec = left / 1000000000LL;
	ts.tv_nsec = left % 1000000000LL;
	futex(p, FUTEX_WAIT_PRIVATE, v, &ts);
	return 1;
}

// ---- The worker side: everything that touches libdw. ----

static const char *die_name(Dwarf_Die *die)
{
	Dwarf_Attribute attr;
	// _integrate follows DW_AT_abstract_origin, where inlined instances keep their name.
	const char *name = dwarf_formstring(dwarf_attr_integrate(die, DW_AT_linkage_name, &attr));
	if (name == NULL)
		name = dwarf_formstring(dwarf_attr_integrate(die, DW_AT_name, &attr));
	return name;
}

// The call site (DW_AT_call_file, DW_AT_call_line) of an inlined instance.
static void call_site(Dwarf_Die *cudie, Dwarf_Die *inl, const char **file, int *line)
{
	Dwarf_Attribute attr;
	Dwarf_Word v;
	Dwarf_Files *files;
	size_t nfiles;

	*file = NULL;
	*line = 0;
	if (dwarf_formudata(dwarf_attr(inl, DW_AT_call_line, &attr), &v) == 0)
		*line = (int)v;
	if (dwarf_formudata(dwarf_attr(inl, DW_AT_call_file, &attr), &v) == 0 &&
	    dwarf_getsrcfiles(cudie, &files, &nfiles) == 0 && v < nfiles)
		*file = dwarf_filesrc(files, v, NULL, NULL);
}

// Answers the question in slot. For a pc inside code inlined into other code, frame 0 is
// the innermost inlined function at the line-table position of pc, and frame i+1 is the
// function that frame i was inlined into, at the call site recorded for frame i.
static void answer(void)
{
	uintptr_t pc = slot.pc, index = slot.index;
	Dwfl_Module *mod = dwfl_addrmodule(dwfl, pc);
	const char *symname = NULL, *file = NULL;
	GElf_Off off = 0;
	GElf_Sym sym;
	int line = 0;
	Dwarf_Addr bias = 0;
	Dwarf_Die *cudie, *scopes = NULL, *parents = NULL, *chain[MAX_INLINE];
	int nscopes = 0, nparents = 0, nchain = 0;
	Dwfl_Line *lt;

	slot.found = 0;
	slot.func = slot.file = NULL;
	slot.line = 0;
	slot.entry = 0;
	slot.more = 0;
	if (mod == NULL)
		return;
	symname = dwfl_module_addrinfo(mod, pc, &off, &sym, NULL, NULL, NULL);
	if (symname != NULL)
		slot.entry = pc - off;
	lt = dwfl_module_getsrc(mod, pc);
	if (lt != NULL)
		file = dwfl_lineinfo(lt, NULL, &line, NULL, NULL, NULL);

	// dwarf_getscopes gives the innermost function at pc, but past an inlined instance it
	// continues with the scopes of the inlined function's definition; the functions it was
	// inlined into are the parents of the instance's DIE (dwarf_getscopes_die).
	cudie = dwfl_module_addrdie(mod, pc, &bias);
	if (cudie != NULL)
		nscopes = dwarf_getscopes(cudie, pc - bias, &scopes);
	for (int i = 0; i < nscopes; i++) {
		int tag = dwarf_tag(&scopes[i]);
		if (tag == DW_TAG_inlined_subroutine)
			nparents = dwarf_getscopes_die(&scopes[i], &parents);
		if (tag == DW_TAG_inlined_subroutine || tag == DW_TAG_subprogram) {
			if (nparents <= 0)
				chain[nchain++] = &scopes[i];
			break;
		}
	}
	for (int i = 0; i < nparents && nchain < MAX_INLINE; i++) {
		int tag = dwarf_tag(&parents[i]);
		if (tag == DW_TAG_inlined_subroutine) {
			chain[nchain++] = &parents[i];
		} else if (tag == DW_TAG_subprogram) {
			chain[nchain++] = &parents[i];
			break;
		}
	}

	if (nchain <= 1 || index == 0) {
		// Not inlined, or the innermost frame: position from the line table.
		slot.func = symname;
		if (nchain > 1 || (symname == NULL && nchain == 1))
			slot.func = die_name(chain[0]);
		slot.file = file;
		slot.line = line;
	} else if (index < (uintptr_t)nchain) {
		// An outer frame: where the inner one was inlined.
		slot.func = die_name(chain[index]);
		if (index == (uintptr_t)nchain - 1 && symname != NULL)
			slot.func = symname; // the real function: its ELF name is the authoritative one
		call_site(cudie, chain[index - 1], &slot.file, &slot.line);
	}
	slot.more = nchain > 1 && index + 1 < (uintptr_t)nchain;
	slot.found = slot.func != NULL || slot.file != NULL;
	free(scopes);
	free(parents);
}

static int warm_module(Dwfl_Module *mod, void **userdata, const char *name, Dwarf_Addr start, void *arg)
{
	Dwarf_Addr bias;
	(void)userdata, (void)name, (void)start, (void)arg;
	dwfl_module_getsymtab(mod);
	dwfl_module_getdwarf(mod, &bias);
	return DWARF_CB_OK;
}

static void *worker(void *unused)
{
	(void)unused;
	// Load every module's symbol table and DWARF now, not on a crash.
	dwfl_getmodules(dwfl, warm_module, NULL, 0);
	for (;;) {
		int s = load(&slot.state);
		if (s != QUESTION && s != ABANDONED) {
			futex(&slot.state, FUTEX_WAIT_PRIVATE, s, NULL);
			continue;
		}
		answer();
		if (!cas(&slot.state, QUESTION, ANSWERED)) {
			// The caller gave up: free the slot and take questions again.
			store(&slot.state, IDLE);
			store(&worker_ok, 1);
		}
	}
	return NULL;
}

static void after_fork_child(void)
{
	// The worker thread does not exist in the child.
	__atomic_store_n(&worker_ok, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&slot.state, IDLE, __ATOMIC_RELAXED);
}

static char *debuginfo_path;

static const Dwfl_Callbacks callbacks = {
	.find_elf = dwfl_linux_proc_find_elf,
	.find_debuginfo = dwfl_standard_find_debuginfo,
	.debuginfo_path = &debuginfo_path,
};

void nogilcsym_init(void)
{
	pthread_t t;
	pthread_attr_t attr;
	sigset_t all, old;
	int err;

	nogilcsym_elfsym_init(); // the fallback
	dwfl = dwfl_begin(&callbacks);
	if (dwfl == NULL)
		return;
	dwfl_report_begin(dwfl);
	if (dwfl_linux_proc_report(dwfl, getpid()) != 0 || dwfl_report_end(dwfl, NULL, NULL) != 0) {
		dwfl_end(dwfl);
		dwfl = NULL;
		return;
	}

	// The worker blocks every signal, so that process-directed signals go to Go's threads
	// and profiling signals do not interrupt libdw.
	if (pthread_attr_init(&attr) != 0)
		return;
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	pthread_attr_setstacksize(&attr, 4 << 20);
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	err = pthread_create(&t, &attr, worker, NULL);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	pthread_attr_destroy(&attr);
	if (err != 0)
		return;
	pthread_setname_np(t, "nogil-csym");
	pthread_atfork(NULL, NULL, after_fork_child);
	__atomic_store_n(&worker_ok, 1, __ATOMIC_RELEASE);
}

// ---- The caller side: may run in a crashing thread's signal handler. ----

// Asks the worker about frame index of pc. Returns 0 if the worker could not answer in time.
static int ask(struct nogilcsym_symbolizer_arg *arg, uintptr_t index)
{
	long long deadline = now_ns() + WAIT_NS;
	int s, found;

	for (;;) {
		if (!load(&worker_ok))
			return 0;
		s = load(&slot.state);
		if (s == IDLE && cas(&slot.state, IDLE, CLAIMED))
			break;
		if (s != IDLE && !wait_while(&slot.state, s, deadline))
			return 0;
	}
	slot.pc = arg->pc;
	slot.index = index;
	store(&slot.state, QUESTION);
	while (load(&slot.state) == QUESTION) {
		if (wait_while(&slot.state, QUESTION, deadline))
			continue;
		// Too slow, perhaps stuck: nobody asks it again until it is done (the worker
		// sets worker_ok again when it finds the question abandoned).
		__atomic_store_n(&worker_ok, 0, __ATOMIC_RELEASE);
		if (cas(&slot.state, QUESTION, ABANDONED))
			return 0;
		__atomic_store_n(&worker_ok, 1, __ATOMIC_RELEASE); // answered just in time
	}
	found = slot.found;
	if (found) {
		arg->func = slot.func;
		arg->file = slot.file;
		arg->lineno = (uintptr_t)(slot.line > 0 ? slot.line : 0);
		arg->entry = slot.entry;
		arg->more = (uintptr_t)slot.more;
		arg->data = slot.more ? index + 1 : 0;
	}
	store(&slot.state, IDLE);
	return found;
}

void nogilcsym_symbolizer(void *p)
{
	struct nogilcsym_symbolizer_arg *arg = p;
	// More set by the previous call means: same pc, next inlined frame (index in Data).
	uintptr_t index = arg->more ? arg->data : 0;

	if (arg->pc != 0 && ask(arg, index))
		return;
	nogilcsym_basic_symbolize(arg);
	arg->data = 0;
}
