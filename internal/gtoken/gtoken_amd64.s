//go:build linux && cgo

#include "textflag.h"

// func current() (gp, tp uintptr)
TEXT ·current(SB),NOSPLIT,$0-16
	MOVQ (TLS), AX
	MOVQ AX, gp+0(FP)
	MOVQ 0(FS), AX // mov rax, fs:[0]: the TCB's pointer to itself
	MOVQ AX, tp+8(FP)
	RET
