//go:build !nogil_mimalloc

package main

// mimallocImplementation reports that this build has no libmimalloc side: allocbench prints
// the other rows and says how to get these.
func mimallocImplementation() (*allocImpl, string) { return nil, mimallocNote }
