//go:build linux && cgo

#include "textflag.h"

// func current() (gp, tp uintptr)
TEXT ·current(SB),NOSPLIT,$0-16
	MOVD g, R0
	MOVD R0, gp+0(FP)
	MRS TPIDR_EL0, R0
	MOVD R0, tp+8(FP)
	RET
