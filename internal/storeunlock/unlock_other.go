//go:build !amd64

package storeunlock

// Supported is false: elsewhere a plain store is not a release store, so Go keeps the CAS.
const Supported = false

// Unlock is never used where Supported is false.
func Unlock(lockByte *uint8, parkers *uint32) int32 { return NotPlain }
