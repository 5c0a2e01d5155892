//go:build !nogil_debug

package mimalloc_shim

// debugBuild is true in the nogil_debug build (see debug.go).
const debugBuild = false

// checkedAlloc is true in the nogil_debug build (see debug.go).
const checkedAlloc = false
