package nogil

// #cgo CFLAGS: -std=gnu11 -O2 -g -I${SRCDIR}/csrc/include -I${SRCDIR}/csrc
// #cgo CFLAGS: -Wall -Wno-unused-parameter -fno-omit-frame-pointer
// #cgo LDFLAGS: -pthread
import "C"
