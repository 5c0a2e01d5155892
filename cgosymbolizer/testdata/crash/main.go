// Command crash is run by the cgosymbolizer tests: it blank-imports the package and then
// dereferences NULL three C frames deep (level1 -> level2 -> level3, and an inlined
// function in level3; see crash.c). The test
// reads the crash trace from stderr.
package main

/*
#cgo CFLAGS: -g -fno-omit-frame-pointer
int level1(int *p);
*/
import "C"

import (
	"fmt"
	"os"

	_ "github.com/nogil-go/nogil/cgosymbolizer"
)

func main() {
	fmt.Fprintln(os.Stderr, "crash: calling level1")
	C.level1(nil)
	fmt.Fprintln(os.Stderr, "crash: level1 returned")
	os.Exit(3)
}
