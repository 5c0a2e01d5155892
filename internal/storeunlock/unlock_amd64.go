package storeunlock

// Supported: a plain store is a release store on this architecture (x86-TSO).
const Supported = true

// Unlock stores 0 into lockByte if it holds exactly LOCKED (1), then reads *parkers.
// Implemented in unlock_amd64.s.
//
//go:noescape
func Unlock(lockByte *uint8, parkers *uint32) int32
