//go:build cgo && linux && (amd64 || arm64) && !nogil_libdw

// Default build: the glibc-only symbolizer of elfsym.c (function names, no file:line).

#include "cgosymbolizer.h"

void nogilcsym_init(void)
{
	nogilcsym_elfsym_init();
}

void nogilcsym_symbolizer(void *arg)
{
	nogilcsym_basic_symbolize(arg);
}
