package nogil

// plainStoreIsRelease: on x86-TSO every store is a release store, so the Go Mutex may unlock
// with a plain one, as the C core does (see Mutex.unlockOr).
const plainStoreIsRelease = true
