//go:build nogil_liburcu

package main

// The liburcu side of qsbrbench (qsbrbench_liburcu.c), built only with the nogil_liburcu
// tag so that the tool builds where liburcu-dev is not installed.

// #cgo pkg-config: liburcu-qsbr
// #include "qsbrbench.h"
import "C"

import (
	"time"
	"unsafe"
)

// liburcuImplementation returns liburcu's side of the comparisons.
func liburcuImplementation() (*qsbrImpl, string) { return liburcuImpl, "" }

var liburcuImpl = &qsbrImpl{
	name: implLiburcu,
	quiescent: func(d time.Duration) (int64, time.Duration, error) {
		var ops, elapsed C.int64_t
		err := qbError(C.qb_quiescent_liburcu(C.int64_t(d.Nanoseconds()), &ops, &elapsed))
		return int64(ops), time.Duration(elapsed), err
	},
	grace: func(readers, reportEvery int, d time.Duration, samples []int64) (int, error) {
		var n C.int64_t
		// samples is Go memory handed to C: allowed, the call keeps no pointer to it.
		err := qbError(C.qb_grace_liburcu(C.int(readers), C.int(reportEvery), C.int64_t(d.Nanoseconds()),
			(*C.int64_t)(unsafe.Pointer(&samples[0])), C.int64_t(len(samples)), &n))
		return int(n), err
	},
	delayed: func(reportEvery int, _ int64, d time.Duration) (delayedResult, error) {
		var r C.qb_delayed_result
		err := qbError(C.qb_delayed_liburcu(C.int(reportEvery), C.int64_t(d.Nanoseconds()), &r))
		return delayedFromC(&r), err
	},
}
