//go:build nogil_debug

package mimalloc_shim

// The nogil_debug build compiles the allocator with NG_MI_DEBUG: every free is checked
// (ng_mi_free_checked), and Free returns ErrNotAllocated or ErrDoubleFree instead of
// corrupting the heap. The Go fast path of Heap.Free is off in this build.

// #cgo CFLAGS: -DNG_MI_DEBUG
import "C"

const debugBuild = true
