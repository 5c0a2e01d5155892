//go:build !nogil_libdw

package cgosymbolizer

const libdwBuild = false
