package nogil

import (
	"sync/atomic"
	"unsafe"
)

// Go's sync/atomic has no 8-bit compare-and-swap, but the C locks keep their state in one
// byte. A byteCell drives such a byte from Go with 32-bit atomics on the aligned word that
// contains it: a CAS succeeds only if the whole word is unchanged, so the three neighbouring
// bytes are written back exactly as they were, and a concurrent change to them only makes the
// CAS retry. On the CPUs Go supports with cgo, a word-sized locked RMW and a byte-sized one on
// the same cache line are atomic with respect to each other, so C's byte CAS and our word CAS
// implement one protocol. The alternative, a per-architecture assembly CMPXCHGB, would be a
// non-inlinable call on the fast path; this stays inlinable Go.
type byteCell struct {
	word  *uint32 // the aligned word holding the byte
	alone *uint32 // word where casAlone may try it, else nil (see casAlone)
	shift uint32  // bit offset of the byte inside *word
	unit  uint32  // 1 << shift: a byte value times unit is its word (casAlone needs no shift)
}

var littleEndian = func() bool {
	x := uint16(1)
	return *(*byte)(unsafe.Pointer(&x)) == 1
}()

func newByteCell(p unsafe.Pointer) byteCell {
	addr := uintptr(p)
	index := uint32(addr & 3)
	if !littleEndian {
		index = 3 - index
	}
	return byteCell{
		word:  (*uint32)(unsafe.Add(p, -int(addr&3))),
		shift: index * 8,
		unit:  1 << (index * 8),
	}
}

func (c byteCell) load() uint8 {
	return uint8(atomic.LoadUint32(c.word) >> c.shift)
}

// cas sets the byte from old to new if it holds old.
func (c byteCell) cas(old, new uint8) bool {
	for {
		w := atomic.LoadUint32(c.word)
		if uint8(w>>c.shift) != old {
			return false
		}
		if atomic.CompareAndSwapUint32(c.word, w, w&^(0xff<<c.shift)|uint32(new)<<c.shift) {
			return true
		}
	}
}

// casAlone sets the byte from old to new if it holds old and the rest of its word is zero,
// as it is in the cells NewMutex and its kin allocate (one zeroed cache line per lock);
// false, with nothing written, when anything else differs (the caller's slow path then uses
// cas or casOnce) or at once when c.alone is nil: a failed CAS costs a locked instruction
// like a successful one, so a borrowed byte whose neighbours were in use when it was
// wrapped does not try (see aloneIfQuiet). It is the fast paths' CAS because it does not load
// the word first: that load often comes right after an unlock's one-byte store into the same
// word (C's plain-store unlock), and a wider load cannot take its value from a narrower
// pending store, so it waits until the store reaches the cache. In lockbench (1 thread,
// cs 1), a Go Mutex that loaded first and unlocked with a byte store ran at 0.31x
// sync.Mutex; with casAlone on both sides, 0.6-0.7x, and inlined 0.92-1.08x. Mutex.Unlock
// now stores plainly on amd64 (where C does) and uses casAlone only where a plain store is
// not a release store; Lock's casAlone is what keeps that store from stalling it.
func (c byteCell) casAlone(old, new uint8) bool {
	return c.alone != nil && atomic.CompareAndSwapUint32(c.alone, uint32(old)*c.unit, uint32(new)*c.unit)
}

// aloneIfQuiet lets casAlone try the word if the byte's neighbours are zero now, or always if
// owned (our own zeroed cell, whose other bytes nobody writes). For borrowed memory the
// neighbours may change later; that only sends casAlone to the slow path.
func (c *byteCell) aloneIfQuiet(owned bool) {
	if owned || atomic.LoadUint32(c.word)&^(0xff*c.unit) == 0 {
		c.alone = c.word
	}
}

// casOnce is cas without the retry, for fast paths that fall back to a slow path anyway
// (it stays small enough for the caller to be inlined).
func (c byteCell) casOnce(old, new uint8) bool {
	w := atomic.LoadUint32(c.word)
	return uint8(w>>c.shift) == old &&
		atomic.CompareAndSwapUint32(c.word, w, w&^(0xff<<c.shift)|uint32(new)<<c.shift)
}
