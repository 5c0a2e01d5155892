// Compiles csrc/ext.c into the root package (see csrc_tstate.c).
#include "csrc/ext.c"
