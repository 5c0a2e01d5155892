package ctest

/*
#cgo CFLAGS: -std=gnu11 -I${SRCDIR}/../../csrc/include
#include "nogil.h"

static uint32_t ctest_qsbr_retained(ng_interp *interp)
{
	ng_interp_stats st;
	ng_interp_get_stats(interp, &st);
	return st.qsbr.retained;
}
*/
import "C"

import "unsafe"

// QSBRRetained returns the interpreter's QSBR slots given back while pinned (the slots of
// released thread states whose Go wrapper is not yet garbage collected); 0 once it is closed.
func QSBRRetained(interp unsafe.Pointer) uint32 {
	return uint32(C.ctest_qsbr_retained((*C.ng_interp)(interp)))
}
