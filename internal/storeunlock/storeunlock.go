// Package storeunlock is the plain-store unlock of a nogil mutex byte for Go callers (see
// csrc/include/nogil/park_announce.h). It lives apart from package nogil because a cgo
// package may not contain Go assembly.
package storeunlock

// Results of Unlock.
const (
	Unlocked  = 0 // stored; nobody announced parking
	Announced = 1 // stored; parkers are announced in the bucket and may need a wake-up
	NotPlain  = 2 // the byte was not plain LOCKED; nothing stored
)
