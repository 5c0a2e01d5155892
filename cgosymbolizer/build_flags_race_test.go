//go:build race

package cgosymbolizer

// raceBuild reports whether the tests were built with -race; the test programs are then
// built with -race too.
const raceBuild = true
