#include "textflag.h"

// func Unlock(lockByte *uint8, parkers *uint32) int32
//
// The plain-store unlock of csrc/include/nogil/park_announce.h, for Go callers: sync/atomic
// can only store with XCHG (a locked instruction, as costly as the CAS it would replace),
// while a MOVB is already a release store under x86-TSO. A function call is also a compiler
// barrier, so the critical section's stores stay before it. Returns 0 when unlocked,
// 1 when unlocked but announced parkers may need a wake-up, 2 when the byte was not plain
// LOCKED (nothing stored; take the slow path).
TEXT ·Unlock(SB), NOSPLIT, $0-20
	MOVQ	lockByte+0(FP), AX
	MOVQ	parkers+8(FP), BX
	CMPB	(AX), $1
	JNE	notplain
	MOVB	$0, (AX)
	// No fence: a parker's membarrier orders our store before this load.
	MOVL	(BX), CX
	TESTL	CX, CX
	JNE	announced
	MOVL	$0, ret+16(FP)
	RET
announced:
	MOVL	$1, ret+16(FP)
	RET
notplain:
	MOVL	$2, ret+16(FP)
	RET
