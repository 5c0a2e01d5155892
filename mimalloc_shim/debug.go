//go:build nogil_debug

package mimalloc_shim

// The nogil_debug build compiles the allocator with NG_MI_DEBUG: every free is checked
// (ng_mi_free_checked), and Free returns ErrNotAllocated or ErrDoubleFree instead of
// corrupting the heap, on any goroutine. The Go fast paths of Heap.Free and Heap.Malloc are
// off in this build (every allocation sets the block's live bit in C).

// #cgo CFLAGS: -DNG_MI_DEBUG
import "C"

const debugBuild = true

// checkedAlloc sends Heap.Malloc to C on every call (no Go fast path): the C allocation sets
// the block's live bit, which the checked free clears (a double free finds it clear).
const checkedAlloc = true
