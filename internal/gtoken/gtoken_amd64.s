//go:build linux && cgo

#include "textflag.h"

// func current() (gp, tp uintptr)
TEXT ·current(SB),NOSPLIT,$0-16
	MOVQ (TLS), AX
	MOVQ AX, gp+0(FP)
	MOVQ 0(FS), AX // mov rax, fs:[0]: the TCB's pointer to itself
	MOVQ AX, tp+8(FP)
	RET

// func isCurrent(t *Token) bool
TEXT ·isCurrent(SB),NOSPLIT,$0-9
	MOVQ t+0(FP), BX
	MOVQ (TLS), AX
	XORQ 0(BX), AX
	MOVQ 0(FS), CX
	XORQ 8(BX), CX
	ORQ CX, AX
	SETEQ ret+8(FP)
	RET
