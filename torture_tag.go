//go:build nogil_torture

package nogil

// The nogil_torture build tag turns on the C core's forcing knobs (NOGIL_TORTURE): QSBR
// sequences that start near 2^64 and wrap during a run, 4-entry delayed-free chunks, random
// yields at the racy steps. cgo flags apply to the whole package, so this one preamble
// compiles every C file of the core with them.

// #cgo CFLAGS: -DNOGIL_TORTURE
import "C"
