//go:build !allocbench_nogil

package main

// nogilImplementation: this build has no page allocator rows yet.
func nogilImplementation() (*allocImpl, string) {
	return nil, "nogil rows need the page allocator (mimalloc_shim): go run -tags allocbench_nogil ./cmd/nogil allocbench"
}
