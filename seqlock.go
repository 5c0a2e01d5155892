package nogil

// #include "nogil.h"
import "C"

import (
	"runtime"
	"sync/atomic"
	"unsafe"
)

// A SeqLock protects data that is read much more often than written (CPython's _PySeqLock).
// Readers never block writers: a reader takes a sequence number, reads the data with
// sync/atomic loads, and retries if Retry says a writer interfered. Writers exclude each
// other. The sequence is one word of C memory shared with C code (CPtr); every operation is
// Go atomics, no cgo. A writer must not block while holding it: readers spin until it ends.
//
//	for {
//		seq := s.BeginRead()
//		x, y := atomic.LoadInt64(&p.x), atomic.LoadInt64(&p.y)
//		if !s.Retry(seq) {
//			return x, y
//		}
//	}
type SeqLock struct {
	_   noCopy
	seq *uint32
	c   *C.ng_seqlock
	mem cMemory
}

// NewSeqLock returns a SeqLock in freshly allocated C memory.
func NewSeqLock() *SeqLock {
	s := &SeqLock{}
	s.init(allocFor(s, "SeqLock"))
	return s
}

// SeqLockAt wraps the ng_seqlock at p in C memory; Close does not free it.
func SeqLockAt(p unsafe.Pointer) *SeqLock {
	s := &SeqLock{}
	s.init(borrow(p, "SeqLock"))
	return s
}

func (s *SeqLock) init(mem cMemory) {
	s.mem, s.c = mem, (*C.ng_seqlock)(mem.p)
	s.seq = (*uint32)(unsafe.Pointer(&s.c.sequence))
}

// CPtr returns the ng_seqlock* for C code.
func (s *SeqLock) CPtr() unsafe.Pointer { return unsafe.Pointer(s.c) }

// BeginWrite makes the caller the only writer; readers that overlap will retry.
func (s *SeqLock) BeginWrite() {
	s.mem.mustOpen("SeqLock")
	for {
		seq := atomic.LoadUint32(s.seq)
		if seq&1 == 0 && atomic.CompareAndSwapUint32(s.seq, seq, seq+1) {
			return
		}
		runtime.Gosched()
	}
}

// EndWrite publishes the write. It panics if no write is in progress.
func (s *SeqLock) EndWrite() { s.endWrite(1, "EndWrite") }

// AbandonWrite ends a write that changed nothing: overlapping readers need not retry.
func (s *SeqLock) AbandonWrite() { s.endWrite(^uint32(0), "AbandonWrite") }

func (s *SeqLock) endWrite(delta uint32, op string) {
	s.mem.mustOpen("SeqLock")
	if atomic.LoadUint32(s.seq)&1 == 0 {
		panic("nogil: SeqLock." + op + " without BeginWrite")
	}
	atomic.AddUint32(s.seq, delta)
}

// BeginRead waits until no write is in progress and returns the sequence for Retry.
func (s *SeqLock) BeginRead() uint32 {
	s.mem.mustOpen("SeqLock")
	for {
		if seq := atomic.LoadUint32(s.seq); seq&1 == 0 {
			return seq
		}
		runtime.Gosched()
	}
}

// Retry reports whether a write overlapped the read that began with seq, so that what was
// read may be torn and must be read again. (Go atomics are sequentially consistent, so the
// data loads cannot move past this load.)
func (s *SeqLock) Retry(seq uint32) bool {
	return atomic.LoadUint32(s.seq) != seq
}

// Close frees the memory of a SeqLock made by NewSeqLock.
func (s *SeqLock) Close() error {
	if err := s.mem.close(); err != nil {
		return err
	}
	s.c, s.seq = nil, nil
	return nil
}
