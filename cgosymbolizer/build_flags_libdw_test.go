//go:build nogil_libdw

package cgosymbolizer

// libdwBuild reports whether this package was built with the nogil_libdw tag, so that its
// symbolizer reports file:line.
const libdwBuild = true
