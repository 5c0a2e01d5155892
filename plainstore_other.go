//go:build !amd64

package nogil

// plainStoreIsRelease: elsewhere a plain store may become visible before the critical
// section's stores, so the Go Mutex unlocks with a CAS.
const plainStoreIsRelease = false
