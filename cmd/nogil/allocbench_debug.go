//go:build nogil_debug

package main

// The nogil_debug build compiles the page allocator with NG_MI_DEBUG (mimalloc_shim/debug.go);
// allocbench_nogil.c's inline ng_mi_free must then be the checked one too.

// #cgo CFLAGS: -DNG_MI_DEBUG
import "C"
