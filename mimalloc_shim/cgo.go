package mimalloc_shim

// #cgo CFLAGS: -std=gnu11 -O2 -g -I${SRCDIR}/../csrc/include -I${SRCDIR}/../csrc -I${SRCDIR}
// #cgo CFLAGS: -fno-omit-frame-pointer
// #cgo LDFLAGS: -pthread
import "C"

// The ng_* symbols of the C core (thread states, QSBR, ng_thread_id) are compiled once, in
// the root package; importing it links them in. The allocator's own C files (this
// directory's *.c) are compiled by cgo into this package.
import _ "github.com/nogil-go/nogil"
