//go:build cgo && linux && (amd64 || arm64)

// The symbolizer that needs nothing but glibc.
//
// 1. The main executable's own symbol table (.symtab). A Go program links its C code
//    statically, and .symtab names every C function in it, static ones included, which
//    dladdr cannot see (dladdr only knows .dynsym, i.e. exported symbols, and the
//    executable exports nothing unless linked with -rdynamic). The section is mapped
//    read-only at init; a lookup is then a linear scan with no lock and no allocation.
//    Stripped binaries (go build -ldflags=-s) have no .symtab; step 2 still works.
// 2. dladdr(3): exported functions of shared libraries, and of the executable when it was
//    linked with -rdynamic.
//
// Neither gives a file or a line number; that needs DWARF (build tag nogil_libdw).

#define _GNU_SOURCE
#include <dlfcn.h>
#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cgosymbolizer.h"

enum { MAX_TEXT = 8, MAX_PLT = 4 };

// Written once by nogilcsym_elfsym_init (before SetCgoTraceback publishes the
// symbolizer), read-only afterwards.
static struct {
	const Elf64_Sym *syms;
	size_t nsyms;
	const char *strs;
	size_t strsize;
	uintptr_t bias;                 // load bias of the executable (non-zero for PIE)
	uintptr_t lo[MAX_TEXT], hi[MAX_TEXT]; // its executable segments, run-time addresses
	int ntext;
	uintptr_t plt_lo[MAX_PLT], plt_hi[MAX_PLT]; // its PLT sections, run-time addresses
	int nplt;
} tab;

static int main_program_cb(struct dl_phdr_info *info, size_t size, void *data)
{
	int *found = data;
	(void)size;
	// glibc reports the main program first.
	tab.bias = (uintptr_t)info->dlpi_addr;
	for (int i = 0; i < info->dlpi_phnum && tab.ntext < MAX_TEXT; i++) {
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
		if (ph->p_type == PT_LOAD && (ph->p_flags & PF_X) != 0) {
			tab.lo[tab.ntext] = tab.bias + ph->p_vaddr;
			tab.hi[tab.ntext] = tab.bias + ph->p_vaddr + ph->p_memsz;
			tab.ntext++;
		}
	}
	*found = 1;
	return 1; // stop after the first object
}

static int read_at(int fd, void *buf, size_t n, off_t off)
{
	return pread(fd, buf, n, off) == (ssize_t)n;
}

static int read_shdr(int fd, const Elf64_Ehdr *eh, size_t i, Elf64_Shdr *sh)
{
	return read_at(fd, sh, sizeof *sh, (off_t)(eh->e_shoff + i * sizeof *sh));
}

// Records sh if it is one of the PLT sections (.plt, .plt.sec, .plt.got): the traceback
// uses them to recognise calls from the executable into shared libraries.
static void note_plt(int fd, const Elf64_Shdr *names, const Elf64_Shdr *sh)
{
	char name[10] = {0};

	if (tab.nplt == MAX_PLT || (sh->sh_flags & SHF_EXECINSTR) == 0 || sh->sh_addr == 0 ||
	    sh->sh_name >= names->sh_size)
		return;
	if (pread(fd, name, sizeof name - 1, (off_t)(names->sh_offset + sh->sh_name)) <= 0)
		return;
	if (strcmp(name, ".plt") != 0 && strcmp(name, ".plt.sec") != 0 && strcmp(name, ".plt.got") != 0)
		return;
	tab.plt_lo[tab.nplt] = tab.bias + sh->sh_addr;
	tab.plt_hi[tab.nplt] = tab.bias + sh->sh_addr + sh->sh_size;
	tab.nplt++;
}

void nogilcsym_elfsym_init(void)
{
	Elf64_Ehdr eh;
	Elf64_Shdr sh, strsh, names;
	int have_names;
	struct stat st;
	size_t shnum, i;
	int fd, found = 0;
	uint64_t lo, hi, pagesz;
	const char *map;

	if (tab.syms != NULL)
		return;
	dl_iterate_phdr(main_program_cb, &found);
	if (!found || tab.ntext == 0)
		return;

	fd = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	if (fstat(fd, &st) != 0 || !read_at(fd, &eh, sizeof eh, 0))
		goto out;
	if (eh.e_ident[EI_MAG0] != ELFMAG0 || eh.e_ident[EI_MAG1] != ELFMAG1 ||
	    eh.e_ident[EI_MAG2] != ELFMAG2 || eh.e_ident[EI_MAG3] != ELFMAG3 ||
	    eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_shentsize != sizeof(Elf64_Shdr) ||
	    eh.e_shoff == 0 || eh.e_shoff >= (uint64_t)st.st_size)
		goto out;
	shnum = eh.e_shnum;
	if (shnum == 0) { // extended numbering: the count is in section 0
		if (!read_shdr(fd, &eh, 0, &sh))
			goto out;
		shnum = sh.sh_size;
	}
	if (shnum > ((uint64_t)st.st_size - eh.e_shoff) / sizeof(Elf64_Shdr))
		goto out;
	have_names = eh.e_shstrndx != SHN_UNDEF && eh.e_shstrndx < shnum &&
	             read_shdr(fd, &eh, eh.e_shstrndx, &names) && names.sh_type == SHT_STRTAB;
	for (i = 0; i < shnum; i++) {
		if (!read_shdr(fd, &eh, i, &sh))
			goto out;
		if (have_names)
			note_plt(fd, &names, &sh);
	}
	// Find the symbol table (a second pass: the first one had to see every section).
	for (i = 0; i < shnum; i++) {
		if (!read_shdr(fd, &eh, i, &sh))
			goto out;
		if (sh.sh_type == SHT_SYMTAB)
			break;
	}
	if (i == shnum || sh.sh_entsize != sizeof(Elf64_Sym) || sh.sh_link == 0 || sh.sh_link >= shnum)
		goto out;
	if (!read_shdr(fd, &eh, sh.sh_link, &strsh) || strsh.sh_type != SHT_STRTAB || strsh.sh_size == 0)
		goto out;
	if (sh.sh_offset > (uint64_t)st.st_size || sh.sh_size > (uint64_t)st.st_size - sh.sh_offset ||
	    strsh.sh_offset > (uint64_t)st.st_size || strsh.sh_size > (uint64_t)st.st_size - strsh.sh_offset)
		goto out;

	// Map just the two sections (usually adjacent, at the end of the file).
	pagesz = (uint64_t)sysconf(_SC_PAGESIZE);
	lo = sh.sh_offset < strsh.sh_offset ? sh.sh_offset : strsh.sh_offset;
	hi = sh.sh_offset + sh.sh_size > strsh.sh_offset + strsh.sh_size ? sh.sh_offset + sh.sh_size
	                                                                  : strsh.sh_offset + strsh.sh_size;
	lo &= ~(pagesz - 1);
	map = mmap(NULL, hi - lo, PROT_READ, MAP_PRIVATE, fd, (off_t)lo);
	if (map == MAP_FAILED)
		goto out;
	// Names are used as C strings: the table must end in a NUL so none can run past it.
	if (map[strsh.sh_offset - lo + strsh.sh_size - 1] != '\0') {
		munmap((void *)map, hi - lo);
		goto out;
	}
	tab.strs = map + (strsh.sh_offset - lo);
	tab.strsize = strsh.sh_size;
	tab.nsyms = sh.sh_size / sizeof(Elf64_Sym);
	tab.syms = (const Elf64_Sym *)(map + (sh.sh_offset - lo));
out:
	close(fd);
}

int nogilcsym_in_exe_text(uintptr_t pc)
{
	for (int i = 0; i < tab.ntext; i++)
		if (pc >= tab.lo[i] && pc < tab.hi[i])
			return 1;
	return 0;
}

int nogilcsym_in_exe_plt(uintptr_t pc)
{
	for (int i = 0; i < tab.nplt; i++)
		if (pc >= tab.plt_lo[i] && pc < tab.plt_hi[i])
			return 1;
	return 0;
}

int nogilcsym_elfsym_lookup(uintptr_t pc, const char **name, uintptr_t *entry)
{
	const Elf64_Sym *best = NULL;
	uintptr_t addr;

	if (tab.syms == NULL || !nogilcsym_in_exe_text(pc))
		return 0;
	addr = pc - tab.bias;
	for (size_t i = 0; i < tab.nsyms; i++) {
		const Elf64_Sym *s = &tab.syms[i];
		unsigned type = ELF64_ST_TYPE(s->st_info);

		if (type != STT_FUNC && type != STT_GNU_IFUNC)
			continue;
		if (s->st_shndx == SHN_UNDEF || s->st_size == 0 || addr - s->st_value >= s->st_size)
			continue;
		if (s->st_name == 0 || s->st_name >= tab.strsize)
			continue;
		// Of overlapping symbols prefer the innermost, then a global name over a local alias.
		if (best == NULL || s->st_size < best->st_size ||
		    (s->st_size == best->st_size && ELF64_ST_BIND(s->st_info) == STB_GLOBAL &&
		     ELF64_ST_BIND(best->st_info) != STB_GLOBAL))
			best = s;
	}
	if (best == NULL)
		return 0;
	*name = tab.strs + best->st_name;
	*entry = (uintptr_t)best->st_value + tab.bias;
	return 1;
}

void nogilcsym_basic_symbolize(struct nogilcsym_symbolizer_arg *arg)
{
	const char *name = NULL;
	uintptr_t entry = 0;
	Dl_info info;

	arg->file = NULL;
	arg->lineno = 0;
	arg->more = 0;
	arg->func = NULL;
	arg->entry = 0;
	if (arg->pc == 0)
		return; // end of a traceback: nothing to release
	if (!nogilcsym_elfsym_lookup(arg->pc, &name, &entry) &&
	    dladdr((void *)arg->pc, &info) != 0 && info.dli_sname != NULL && info.dli_saddr != NULL) {
		name = info.dli_sname;
		entry = (uintptr_t)info.dli_saddr;
	}
	arg->func = name;
	arg->entry = entry;
}
