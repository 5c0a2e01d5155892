//go:build !nogil_liburcu

package main

// liburcuImplementation reports that this build has no liburcu side: qsbrbench prints the
// nogil rows and says how to get the others.
func liburcuImplementation() (*qsbrImpl, string) { return nil, liburcuNote }
