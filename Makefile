# nogil: the Makefile wraps `go` and the standalone C test runner; plain `go build ./...` and
# `go test ./...` work without it.

GO      ?= go
CC      ?= gcc
BUILD   ?= build

CORE_SRC  := $(wildcard csrc/*.c) $(wildcard mimalloc_shim/*.c)
CORE_HDR  := $(wildcard csrc/*.h csrc/include/*.h csrc/include/nogil/*.h mimalloc_shim/*.h)
CTEST_SRC := $(wildcard csrc/tests/*.c)
CTEST_HDR := $(wildcard csrc/tests/*.h)

CWARN   := -std=gnu11 -Wall -Wextra -Werror -Wno-unused-parameter
CINC    := -Icsrc/include -Icsrc -Imimalloc_shim
CBASE   := $(CWARN) $(CINC) -g -pthread -fno-omit-frame-pointer
TSAN    := -O1 -fsanitize=thread -DNG_MI_DEBUG
ASAN    := -O1 -fsanitize=address,undefined -fno-sanitize-recover=all -DNG_MI_DEBUG
OPT     := -O2

# Scale factor for the C stress tests (1 = the sizes the issue asks for).
NG_TEST_SCALE ?= 1

.PHONY: all build test vet gotest gotest-race gotest-cgocheck2 gotest-libdw gotest-torture gotest-liburcu \
        gotest-mimalloc ctest ctest-opt ctest-cas ctest-tsan ctest-asan ctest-torture docker-test bench bench-qsbr bench-alloc lib clean

all: build

build:
	$(GO) build ./...

## test: everything CI runs (README's test command).
test: vet gotest-race gotest-cgocheck2 gotest-libdw gotest-torture gotest-liburcu gotest-mimalloc ctest docker-test

vet:
	$(GO) vet ./...

gotest:
	$(GO) test ./...

gotest-race:
	$(GO) test -race -count=1 ./...

gotest-cgocheck2:
	GOEXPERIMENT=cgocheck2 $(GO) test -count=1 ./...

# The precise (file:line) C symbolizer needs elfutils' libdw (Debian: libdw-dev); the
# unstripped run lets the in-process symbol tests run instead of skipping.
gotest-libdw:
	@if [ -f /usr/include/elfutils/libdwfl.h ]; then \
		echo "$(GO) test -tags nogil_libdw -ldflags='-s=false -w=false' ./cgosymbolizer/..."; \
		$(GO) test -count=1 -tags nogil_libdw -ldflags='-s=false -w=false' ./cgosymbolizer/...; \
	else echo "gotest-libdw: libdw-dev not installed, skipping the nogil_libdw build"; fi

# The forcing knobs (nogil_torture): sequences that wrap during the run, an advance per
# delayed free, 4-entry chunks, random yields at the racy steps.
gotest-torture:
	$(GO) test -race -count=1 -tags nogil_torture .

# qsbrbench's liburcu rows link liburcu-qsbr (Debian: liburcu-dev); the benchmark's own test
# runs them when the library is there.
HAVE_LIBURCU := $(shell pkg-config --exists liburcu-qsbr 2>/dev/null && echo yes)
gotest-liburcu:
ifeq ($(HAVE_LIBURCU),yes)
	$(GO) vet -tags nogil_liburcu ./cmd/nogil
	$(GO) test -count=1 -tags nogil_liburcu ./cmd/nogil
else
	@echo "gotest-liburcu: liburcu-dev not installed, skipping the nogil_liburcu build"
endif

# allocbench's mimalloc rows need mimalloc.h (Debian: libmimalloc-dev, which ships no .pc file);
# the library itself is loaded with dlopen by the measuring process, never linked.
HAVE_MIMALLOC := $(shell (pkg-config --exists mimalloc 2>/dev/null || test -f /usr/include/mimalloc.h) && echo yes)
gotest-mimalloc:
ifeq ($(HAVE_MIMALLOC),yes)
	$(GO) vet -tags nogil_mimalloc ./cmd/nogil
	$(GO) test -count=1 -tags nogil_mimalloc ./cmd/nogil
else
	@echo "gotest-mimalloc: libmimalloc-dev not installed, skipping the nogil_mimalloc build"
endif

## ctest: the standalone C runner, optimised, under both sanitizers and with the forcing knobs.
ctest: ctest-opt ctest-cas ctest-tsan ctest-asan ctest-torture

$(BUILD)/ctest-opt: $(CORE_SRC) $(CORE_HDR) $(CTEST_SRC) $(CTEST_HDR)
	@mkdir -p $(BUILD)
	$(CC) $(CBASE) $(OPT) -o $@ $(CORE_SRC) $(CTEST_SRC)

$(BUILD)/ctest-tsan: $(CORE_SRC) $(CORE_HDR) $(CTEST_SRC) $(CTEST_HDR)
	@mkdir -p $(BUILD)
	$(CC) $(CBASE) $(TSAN) -o $@ $(CORE_SRC) $(CTEST_SRC)

$(BUILD)/ctest-asan: $(CORE_SRC) $(CORE_HDR) $(CTEST_SRC) $(CTEST_HDR)
	@mkdir -p $(BUILD)
	$(CC) $(CBASE) $(ASAN) -o $@ $(CORE_SRC) $(CTEST_SRC)

$(BUILD)/ctest-torture: $(CORE_SRC) $(CORE_HDR) $(CTEST_SRC) $(CTEST_HDR)
	@mkdir -p $(BUILD)
	$(CC) $(CBASE) $(OPT) -DNOGIL_TORTURE -o $@ $(CORE_SRC) $(CTEST_SRC)

ctest-opt: $(BUILD)/ctest-opt
	NG_TEST_SCALE=$(NG_TEST_SCALE) ./$<

# The same tests with every unlock a compare-and-swap (the mode used when membarrier(2) is
# unavailable, see csrc/include/nogil/park_announce.h).
ctest-cas: $(BUILD)/ctest-opt
	NOGIL_CAS_UNLOCK=1 NG_TEST_SCALE=$(NG_TEST_SCALE) ./$<

# halt_on_error: a report is a failure, not a warning.
ctest-tsan: $(BUILD)/ctest-tsan
	TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 NG_TEST_SCALE=$(NG_TEST_SCALE) ./$<

ctest-asan: $(BUILD)/ctest-asan
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	NG_TEST_SCALE=$(NG_TEST_SCALE) ./$<

ctest-torture: $(BUILD)/ctest-torture
	NG_TEST_SCALE=$(NG_TEST_SCALE) ./$<

## docker-test: the fork and thread-exit tests as PID 1's child in an empty container.
# The engine may have no images and no registry, so the image is FROM scratch with static
# binaries built here; --init gives the tests a reaping PID 1 (tini), as a real deployment has.
DOCKER_DIR := $(BUILD)/docker
docker-test:
	@if ! docker info >/dev/null 2>&1; then echo "docker-test: no Docker engine, skipping"; exit 0; fi; \
	set -e; mkdir -p $(DOCKER_DIR)/tmp; \
	$(CC) $(CBASE) $(OPT) -static -o $(DOCKER_DIR)/ctest $(CORE_SRC) $(CTEST_SRC); \
	$(GO) test -c -o $(DOCKER_DIR)/nogil.test -ldflags '-linkmode external -extldflags -static' .; \
	docker build -q -t nogil-test -f Dockerfile $(DOCKER_DIR) >/dev/null; \
	docker run --rm --init nogil-test /ctest; \
	docker run --rm --init nogil-test /nogil.test -test.count=1 -test.run '$(DOCKER_GO_TESTS)'

DOCKER_GO_TESTS := Fork|ThreadExit|Bind|Release

## bench: the main job for now, CPython's lockbench method against our peers.
bench:
	$(GO) run ./cmd/nogil lockbench

## bench-qsbr: QSBR and delayed frees against liburcu's QSBR flavour (needs liburcu-dev).
bench-qsbr:
	$(GO) run -tags nogil_liburcu ./cmd/nogil qsbrbench

## bench-alloc: the page allocator against libmimalloc and glibc malloc (needs libmimalloc-dev).
bench-alloc:
	$(GO) run -tags nogil_mimalloc ./cmd/nogil allocbench

## lib: libnogil.a and a pkg-config file for C users.
lib: $(BUILD)/libnogil.a $(BUILD)/nogil.pc

# The core and the page allocator (mimalloc_shim/*.c), each object under its source's path.
$(BUILD)/obj/%.o: %.c $(CORE_HDR)
	@mkdir -p $(dir $@)
	$(CC) $(CWARN) $(CINC) $(OPT) -g -pthread -fPIC -c -o $@ $<

$(BUILD)/libnogil.a: $(patsubst %.c,$(BUILD)/obj/%.o,$(CORE_SRC))
	ar rcs $@ $^

$(BUILD)/nogil.pc: nogil.pc.in
	@mkdir -p $(BUILD)
	sed -e 's|@PREFIX@|$(abspath .)|' -e 's|@LIBDIR@|$(abspath $(BUILD))|' $< > $@

clean:
	rm -rf $(BUILD)
