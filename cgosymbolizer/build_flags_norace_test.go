//go:build !race

package cgosymbolizer

const raceBuild = false
