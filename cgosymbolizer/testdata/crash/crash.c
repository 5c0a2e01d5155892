// level1 -> level2 -> level3 -> poke, and poke dereferences NULL. poke is always inlined
// into level3 (only DWARF knows it is there); the level functions cannot be inlined and do
// some work after each call so that no call becomes a tail call. They are global with
// default visibility so that dladdr can name them in a -rdynamic build.
// The test finds the expected line numbers through the "line:" markers.

static inline __attribute__((always_inline)) void poke(int *p)
{
	*(volatile int *)p = 42; // line:poke
}

__attribute__((noinline, visibility("default"))) int level3(int *p)
{
	poke(p); // line:level3
	return *p + 3;
}

__attribute__((noinline, visibility("default"))) int level2(int *p)
{
	int r = level3(p); // line:level2
	return r + 2;
}

__attribute__((noinline, visibility("default"))) int level1(int *p)
{
	int r = level2(p); // line:level1
	return r + 1;
}
