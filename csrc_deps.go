package nogil

import "embed"

// The C core lives in csrc/ and is compiled through the csrc_*.c wrappers in this directory.
// The go command does not look at files #included from another directory when it decides
// whether a cached build is stale; embedding them makes their contents part of the package's
// inputs, so an edit under csrc/ rebuilds the package, and `go mod vendor` keeps csrc/.
//
//go:embed csrc/*.c csrc/*.h csrc/include/*.h csrc/include/nogil/*.h
var _ embed.FS
