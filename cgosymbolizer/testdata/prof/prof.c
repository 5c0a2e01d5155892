// C code for the profiling test: a CPU hog two frames deep, and loops that keep taking the
// locks an unsafe traceback function could deadlock on when SIGPROF interrupts them
// (the dynamic loader's lock in dl_iterate_phdr, and malloc's arena locks).

#define _GNU_SOURCE
#include <link.h>
#include <stdint.h>
#include <stdlib.h>

static volatile uint64_t sink;

__attribute__((noinline, visibility("default"))) uint64_t prof_spin_inner(uint64_t n)
{
	uint64_t x = n;
	for (uint64_t i = 0; i < n; i++) {
		x = x * 6364136223846793005ULL + 1442695040888963407ULL; // line:prof_spin_inner
		__asm__ volatile("" : "+r"(x));
	}
	return x;
}

__attribute__((noinline, visibility("default"))) uint64_t prof_spin_outer(uint64_t n)
{
	uint64_t x = prof_spin_inner(n);
	sink = x;
	return x + 1;
}

static int count_cb(struct dl_phdr_info *info, size_t size, void *data)
{
	(void)info, (void)size;
	++*(int *)data;
	return 0;
}

__attribute__((noinline, visibility("default"))) int prof_phdr_loop(int n)
{
	int total = 0;
	for (int i = 0; i < n; i++)
		dl_iterate_phdr(count_cb, &total);
	return total;
}

__attribute__((noinline, visibility("default"))) uint64_t prof_malloc_loop(int n)
{
	uint64_t sum = 0;
	for (int i = 0; i < n; i++) {
		char *p = malloc(16 + (size_t)(i % 4096));
		if (p == NULL)
			abort();
		p[0] = (char)i;
		sum += (uint64_t)(uintptr_t)p[0];
		free(p);
	}
	return sum;
}
