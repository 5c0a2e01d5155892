//go:build linux && cgo

#include "textflag.h"

// func current() (gp, tp uintptr)
TEXT ·current(SB),NOSPLIT,$0-16
	MOVD g, R0
	MOVD R0, gp+0(FP)
	MRS TPIDR_EL0, R0
	MOVD R0, tp+8(FP)
	RET

// func isCurrent(t *Token) bool
TEXT ·isCurrent(SB),NOSPLIT,$0-9
	MOVD t+0(FP), R1
	LDP (R1), (R2, R3)
	MRS TPIDR_EL0, R0
	EOR g, R2, R2
	EOR R0, R3, R3
	ORR R2, R3, R3
	CMP $0, R3
	CSET EQ, R4
	MOVB R4, ret+8(FP)
	RET
