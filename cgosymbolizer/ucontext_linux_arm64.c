//go:build cgo

// Registers of the interrupted thread on linux/arm64 (x29 is the frame pointer; the frame
// record it points at holds the caller's x29 and the return address, as on amd64).

#define _GNU_SOURCE
#include <stdint.h>
#include <ucontext.h>

#include "cgosymbolizer.h"

int nogilcsym_ucontext_regs(uintptr_t uc, uintptr_t *pc, uintptr_t *sp, uintptr_t *fp)
{
	const ucontext_t *u = (const ucontext_t *)uc;

	*pc = (uintptr_t)u->uc_mcontext.pc;
	*sp = (uintptr_t)u->uc_mcontext.sp;
	*fp = (uintptr_t)u->uc_mcontext.regs[29];
	return 1;
}

int nogilcsym_ucontext_lr(uintptr_t uc, uintptr_t *lr)
{
	const ucontext_t *u = (const ucontext_t *)uc;

	*lr = (uintptr_t)u->uc_mcontext.regs[30];
	return 1;
}
