//go:build cgo

// Registers of the interrupted thread on linux/amd64.

#define _GNU_SOURCE
#include <stdint.h>
#include <ucontext.h>

#include "cgosymbolizer.h"

int nogilcsym_ucontext_regs(uintptr_t uc, uintptr_t *pc, uintptr_t *sp, uintptr_t *fp)
{
	const ucontext_t *u = (const ucontext_t *)uc;

	*pc = (uintptr_t)u->uc_mcontext.gregs[REG_RIP];
	*sp = (uintptr_t)u->uc_mcontext.gregs[REG_RSP];
	*fp = (uintptr_t)u->uc_mcontext.gregs[REG_RBP];
	return 1;
}
