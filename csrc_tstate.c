// Compiles csrc/tstate.c into the root package (cgo only compiles .c files in the package
// directory); csrc_deps.go embeds csrc/ so that edits there invalidate the build cache.
#include "csrc/tstate.c"
