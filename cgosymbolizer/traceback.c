//go:build cgo && linux && (amd64 || arm64)

// The traceback function: a frame-pointer walker.
//
// The runtime may call it from a signal handler (SIGPROF for profiles, SIGSEGV and friends
// when crashing, SIGURG for preemption), on any thread that is inside a cgo call. So it takes
// no lock, allocates nothing, calls no libc function that is not async-signal-safe, and never
// dereferences a word it has not first proven readable (a bad frame pointer must end the
// walk, not start a second crash).
//
// It relies on every C frame keeping the frame-pointer chain (gcc -fno-omit-frame-pointer;
// the layout is the same on amd64 and arm64: fp[0] is the caller's frame pointer, fp[1] the
// return address). What that cannot see is documented in doc.go.

#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "cgosymbolizer.h"

enum {
	// A caller's frame further than this above its callee's is taken as a switch to another
	// stack (the goroutine stack the cgo call came from) or as garbage, and ends the walk.
	MAX_FRAME_BYTES = 1 << 20,
	// The smallest page size of the supported platforms; readability is checked per page.
	PAGE_GRAIN = 4096,
	// Program counters below this are never valid (the zero page is never mapped).
	MIN_PC = 4096,
};

// The return address into runtime.asmcgocall from the C function it calls (the cgo
// wrapper), or 0 if unknown. On arm64 asmcgocall loads the system stack's saved frame pointer
// into x29 before the call, so the wrapper's frame record does not lead to the goroutine
// stack, as it does on amd64, but to a frame that looks valid (or ends the chain with 0),
// and the walk would record the return into asmcgocall. Set once by the package's init
// (nogilcsym_set_cgo_return), before the traceback function is registered.
static uintptr_t cgo_return;

void nogilcsym_set_cgo_return(uintptr_t ret)
{
	__atomic_store_n(&cgo_return, ret, __ATOMIC_RELAXED);
}

// A tiny cache of pages already proven readable during one walk.
struct page_cache {
	uintptr_t page[2];
	unsigned next;
};

// Reports whether the 8 bytes at page (page-aligned) can be read, without reading them.
// rt_sigprocmask copies the new mask from user memory before it validates `how`, so with
// an invalid `how` it fails with EFAULT for an unreadable address and EINVAL otherwise.
// It is a plain system call: async-signal-safe, allowed by the usual seccomp profiles.
static int page_readable(uintptr_t page)
{
	int saved = errno;
	long r = syscall(SYS_rt_sigprocmask, ~0L, (void *)page, (void *)0, (size_t)8);
	int err = errno;
	errno = saved;
	return r == -1 && err == EINVAL;
}

static int word_readable(struct page_cache *c, uintptr_t addr)
{
	uintptr_t page = addr & ~(uintptr_t)(PAGE_GRAIN - 1);
	if (page == 0)
		return 0;
	if (c->page[0] == page || c->page[1] == page)
		return 1;
	if (!page_readable(page))
		return 0;
	c->page[c->next] = page;
	c->next ^= 1;
	return 1;
}

// Follows the frame-pointer chain from fp, appending return addresses (minus one, so that
// they fall inside the call instruction as the runtime requires) to buf[n..max).
// low is the lowest address a frame may start at (the stack pointer of the innermost frame).
// A return address is kept only when the frame it leads to also looks valid; this drops
// the return into runtime.asmcgocall, whose caller is on the goroutine stack, and ends
// the list where the runtime's own Go traceback takes over.
static uintptr_t walk(struct page_cache *cache, uintptr_t *buf, uintptr_t n, uintptr_t max,
                      uintptr_t fp, uintptr_t low)
{
	uintptr_t boundary = __atomic_load_n(&cgo_return, __ATOMIC_RELAXED);

	if (fp == 0 || (fp & (sizeof(uintptr_t) - 1)) != 0 || fp < low || fp - low > MAX_FRAME_BYTES)
		return n;
	while (n < max) {
		uintptr_t next, ret;

		if (!word_readable(cache, fp) || !word_readable(cache, fp + sizeof(uintptr_t)))
			break;
		next = ((const uintptr_t *)fp)[0];
		ret = ((const uintptr_t *)fp)[1];
		if (ret < MIN_PC || ret == boundary)
			break;
		if (next == 0) {
			// The outermost frame of a thread (glibc zeroes the frame pointer at thread start).
			buf[n++] = ret - 1;
			break;
		}
		// The stack grows down, so each caller's frame is strictly above its callee's.
		if (next <= fp || next - fp > MAX_FRAME_BYTES || (next & (sizeof(uintptr_t) - 1)) != 0)
			break;
		buf[n++] = ret - 1;
		fp = next;
	}
	return n;
}

#if defined(__x86_64__)
enum {
	LEAF_SCAN_WORDS = 64,      // how far above sp to look for a leaf's return address
	LEAF_MAX_BYTES = 64 << 10, // how far into its function pc may be
	LIB_SCAN_WORDS = 1024,     // how far above sp to look for the return into the executable
};

enum call_kind { NO_CALL, DIRECT_CALL, GOT_CALL, REGISTER_CALL };

// Decodes the instruction just before r, in the executable's code: e8 rel32 (direct;
// *target receives the callee), ff 15 disp32 (through the GOT, as -fno-plt compiles calls
// into shared libraries), [41] ff d0+r (through a register).
static enum call_kind call_before(uintptr_t r, uintptr_t *target)
{
	const unsigned char *p = (const unsigned char *)r;
	int32_t rel;

	*target = 0;
	// The executable's code segments stay mapped and readable for the life of the program.
	if (r < MIN_PC || !nogilcsym_in_exe_text(r - 1) || !nogilcsym_in_exe_text(r - 2))
		return NO_CALL;
	if (nogilcsym_in_exe_text(r - 5) && p[-5] == 0xe8) {
		__builtin_memcpy(&rel, p - 4, sizeof rel);
		*target = r + (uintptr_t)(intptr_t)rel;
		return DIRECT_CALL;
	}
	if (nogilcsym_in_exe_text(r - 6) && p[-6] == 0xff && p[-5] == 0x15)
		return GOT_CALL;
	if (p[-2] == 0xff && (p[-1] & 0xf8) == 0xd0)
		return REGISTER_CALL;
	return NO_CALL;
}

// Whether r can be the return address of the function that pc is in.
static int returns_from(uintptr_t r, uintptr_t pc, int pc_in_exe)
{
	uintptr_t target;
	enum call_kind k = call_before(r, &target);

	if (pc_in_exe) // a direct call to a function that starts shortly before pc
		return k == DIRECT_CALL && target <= pc && pc - target < LEAF_MAX_BYTES;
	// pc is in a shared library: a call from the executable into one
	return k == GOT_CALL || (k == DIRECT_CALL && nogilcsym_in_exe_plt(target));
}

// Finds the return address of the interrupted function when the frame walk cannot:
//
//  - pc in the executable: a function that has not set up its frame (a leaf, which gcc
//    builds without one even with -fno-omit-frame-pointer, or any function interrupted in
//    its prologue or epilogue) leaves rbp at its caller's frame, so the walk would skip the
//    caller. Its return address is then between sp and fp: the first word there that
//    follows a direct call to a function starting at most LEAF_MAX_BYTES before pc.
//  - pc elsewhere (libc and other shared libraries, usually built without frame pointers):
//    the return into the executable's C function that called the library follows a call
//    through the PLT or the GOT. If the library left rbp alone it is that function's frame,
//    and the return address is the nearest such word below it (searching down from fp
//    skips stale values in the library's uninitialised stack slots); otherwise take the
//    first one above sp.
//
// Returns 0 when there is none (the usual case for a function that has its frame).
static uintptr_t interrupted_return(struct page_cache *c, uintptr_t pc, uintptr_t sp, uintptr_t fp)
{
	int in_exe = nogilcsym_in_exe_text(pc);
	uintptr_t limit = sp + (in_exe ? LEAF_SCAN_WORDS : LIB_SCAN_WORDS) * sizeof(uintptr_t);
	uintptr_t target;

	if (!in_exe && fp > sp && fp < limit && (fp & 7) == 0 && word_readable(c, fp + 8) &&
	    call_before(((const uintptr_t *)fp)[1], &target) != NO_CALL) {
		for (uintptr_t a = fp - sizeof(uintptr_t); a >= sp; a -= sizeof(uintptr_t)) {
			if (!word_readable(c, a))
				return 0;
			if (returns_from(*(const uintptr_t *)a, pc, in_exe))
				return *(const uintptr_t *)a;
		}
		return 0;
	}
	if (fp >= sp && fp < limit)
		limit = fp;
	for (uintptr_t a = sp; a < limit; a += sizeof(uintptr_t)) {
		if (!word_readable(c, a))
			return 0;
		if (returns_from(*(const uintptr_t *)a, pc, in_exe))
			return *(const uintptr_t *)a;
	}
	return 0;
}
#elif defined(__aarch64__)
enum {
	LEAF_MAX_BYTES = 64 << 10, // how far into its function pc may be
};

// Finds the return address of an interrupted function that has not saved its frame record:
// a leaf (gcc omits the record in leaves on arm64 even at -O0 with -fno-omit-frame-pointer)
// or a function in its prologue or epilogue. Its return address is still in the link
// register, and x29 is still its caller's frame, so the walk would skip the caller. The link
// register is taken when the instruction before it is a direct call (BL) to a function that
// starts at most LEAF_MAX_BYTES before pc, and it does not lie between that function's start
// and pc: a function that has its frame and has made calls holds in lr a return into itself,
// after a call to some other function. Returns 0 when lr does not qualify.
static uintptr_t interrupted_return(uintptr_t pc, uintptr_t lr)
{
	uint32_t insn;
	uintptr_t target;
	int64_t imm;

	if (lr < MIN_PC || (lr & 3) != 0 || !nogilcsym_in_exe_text(pc) || !nogilcsym_in_exe_text(lr - 4))
		return 0;
	__builtin_memcpy(&insn, (const void *)(lr - 4), sizeof insn);
	if ((insn & 0xfc000000u) != 0x94000000u) // BL imm26
		return 0;
	imm = (int64_t)((uint64_t)(insn & 0x03ffffffu) << 38) >> 36; // sign-extended, times 4
	target = lr - 4 + (uintptr_t)imm;
	if (target > pc || pc - target >= LEAF_MAX_BYTES || (lr >= target && lr <= pc))
		return 0;
	return lr;
}
#endif

void nogilcsym_traceback(void *p)
{
	struct nogilcsym_traceback_arg *arg = p;
	uintptr_t *buf = arg->buf;
	uintptr_t max = arg->max;
	uintptr_t n = 0;
	struct page_cache cache = {{0, 0}, 0};

	if (buf == NULL || max == 0)
		return;
	if (arg->context != 0) {
		// Only a context function creates contexts, and this package registers none.
		buf[0] = 0;
		return;
	}
	if (arg->sig_context != 0) {
		uintptr_t pc, sp, fp;

		// Start where the signal interrupted the thread. The interrupted pc itself is
		// exact (not a return address), so it is stored as is.
		if (nogilcsym_ucontext_regs(arg->sig_context, &pc, &sp, &fp) && pc >= MIN_PC) {
			buf[n++] = pc;
#if defined(__x86_64__)
			uintptr_t r = interrupted_return(&cache, pc, sp, fp);
			// Skip it if the frame walk is going to find it anyway.
			if (r != 0 && n < max &&
			    !(fp >= sp && (fp & 7) == 0 && word_readable(&cache, fp + 8) && ((const uintptr_t *)fp)[1] == r))
				buf[n++] = r - 1;
#elif defined(__aarch64__)
			uintptr_t lr, r = 0;
			if (nogilcsym_ucontext_lr(arg->sig_context, &lr))
				r = interrupted_return(pc, lr);
			// Skip it if the frame walk is going to find it anyway (the function saved its
			// frame record and has called nothing since: lr is still its return address).
			if (r != 0 && n < max &&
			    !(fp >= sp && (fp & 7) == 0 && word_readable(&cache, fp + 8) && ((const uintptr_t *)fp)[1] == r))
				buf[n++] = r - 1;
#endif
			n = walk(&cache, buf, n, max, fp, sp);
		}
	} else {
		// Called from C, not from a signal handler: start with our own caller.
		uintptr_t fp = (uintptr_t)__builtin_frame_address(0);
		n = walk(&cache, buf, n, max, fp, fp);
	}
	if (n < max)
		buf[n] = 0;
}
