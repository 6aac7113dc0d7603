# SPDX-License-Identifier: MIT
#
# Entry points for a fresh clone: each target installs missing Debian
# packages (scripts/deps.sh), configures with a CMake preset (build/<preset>)
# and builds before it does its work. CMake and ctest do the real work; this
# file only strings them together.
#
#   make / make build   debug build (preset dev, -Werror)
#   make test           build and run every test (preset dev)
#   make test-asan      the same under AddressSanitizer + UBSan (clang)
#   make test-tsan      the same under ThreadSanitizer (clang)
#   make test-valgrind  every C test under valgrind memcheck
#   make fuzz           each libFuzzer target for FUZZ_SECONDS (20)
#   make coverage       run the tests with llvm-cov instrumentation, report
#   make demo           build and run scripts/demo.sh
#   make bench          release build, then bench/run.sh
#   make install        release build installed under $(PREFIX) (and $(DESTDIR))
#   make format / check-format / tidy / cppcheck / clean
#
# Variables: JOBS (build jobs, default 2), CTEST_ARGS (extra ctest arguments,
# e.g. CTEST_ARGS='-R wire -V'), PREFIX, DESTDIR, BENCH_DEPS (the Debian
# packages of the peers that make bench compares usps with; set it empty to
# compare with what is installed only).

JOBS ?= 2
PREFIX ?= /usr/local
DESTDIR ?=
CTEST_ARGS ?=
BENCH_DEPS ?= libzmq3-dev redis-server libhiredis-dev nats-server libnats-dev

MAKEFLAGS += --no-print-directory

DEPS := scripts/deps.sh
CONFIGURE = cmake --preset $(1) --log-level=WARNING
BUILD = cmake --build --preset $(1) -j$(JOBS)
SETARCH_NO_ASLR := $(if $(shell command -v setarch),setarch $(shell uname -m) -R)

# Our C sources and headers, for clang-format.
FORMAT_FILES := $(wildcard include/*.h src/*.c src/*.h tools/*.c tools/*.h \
	tests/*.c tests/*.h tests/*.cpp bench/*.c bench/*.h bench/peers/*.c \
	bench/peers/*.h fuzz/*.c fuzz/*.h \
	examples/*.c examples/*.h)

.PHONY: all build deps test test-asan test-tsan test-valgrind fuzz coverage \
	demo bench install format check-format tidy cppcheck clean help

all: build

deps:
	@$(DEPS)

build: deps
	$(call CONFIGURE,dev)
	$(call BUILD,dev)

test: deps
	$(call CONFIGURE,dev)
	$(call BUILD,dev)
	ctest --preset dev $(CTEST_ARGS)

test-asan: deps
	$(call CONFIGURE,asan)
	$(call BUILD,asan)
	ctest --preset asan $(CTEST_ARGS)

# ThreadSanitizer needs a memory layout that a high-entropy ASLR can break;
# setarch -R (inherited by the tests' children) rules that out.
test-tsan: deps
	$(call CONFIGURE,tsan)
	$(call BUILD,tsan)
	$(SETARCH_NO_ASLR) ctest --preset tsan $(CTEST_ARGS)

# Every C test under valgrind's memcheck (errors and definite leaks fail).
test-valgrind: deps
	@$(DEPS) valgrind
	$(call CONFIGURE,dev)
	$(call BUILD,dev)
	bash scripts/valgrind.sh build/dev

# Each libFuzzer target for FUZZ_SECONDS on a copy of its corpus.
FUZZ_SECONDS ?= 20
fuzz: deps
	$(call CONFIGURE,fuzz)
	$(call BUILD,fuzz)
	bash scripts/fuzz.sh build/fuzz $(FUZZ_SECONDS)

coverage: deps
	$(call CONFIGURE,coverage)
	$(call BUILD,coverage)
	rm -rf build/coverage/profiles
	ctest --preset coverage $(CTEST_ARGS)
	llvm-profdata merge -sparse -o build/coverage/usps.profdata \
		build/coverage/profiles/*.profraw
	@set -- $$(find build/coverage -maxdepth 1 -type f -perm -u+x \
		\( -name 'test_*' -o -name 'replay_*' -o -name usps \) | sort); \
	first=$$1; shift; \
	objs="$$first$$(printf ' -object %s' "$$@")"; \
	echo "llvm-cov report ... src/"; \
	llvm-cov report -instr-profile=build/coverage/usps.profdata \
		$$objs $(CURDIR)/src && \
	echo "HTML: llvm-cov show -format=html -output-dir=build/coverage/html" \
		"-instr-profile=build/coverage/usps.profdata $$objs $(CURDIR)/src"

demo: deps
	$(call CONFIGURE,dev)
	$(call BUILD,dev)
	@if [ ! -f scripts/demo.sh ]; then \
		echo "make demo: scripts/demo.sh does not exist yet" >&2; \
		exit 1; \
	fi
	USPS_BIN=$(CURDIR)/build/dev/usps USPS_BUILD_DIR=$(CURDIR)/build/dev \
		bash scripts/demo.sh

bench:
	@$(DEPS) $(BENCH_DEPS)
	$(call CONFIGURE,release)
	$(call BUILD,release)
	@if [ ! -f bench/run.sh ]; then \
		echo "make bench: bench/run.sh does not exist yet" >&2; \
		exit 1; \
	fi
	USPS_BIN=$(CURDIR)/build/release/usps \
		USPS_BUILD_DIR=$(CURDIR)/build/release bash bench/run.sh

# The prefix is set at configure time so that usps.pc names it.
install: deps
	$(call CONFIGURE,release) -DCMAKE_INSTALL_PREFIX=$(PREFIX)
	$(call BUILD,release)
	DESTDIR=$(DESTDIR) cmake --install build/release
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ] && \
		command -v ldconfig >/dev/null; then ldconfig; fi

format:
	@$(DEPS) clang-format
	clang-format -i $(FORMAT_FILES)

check-format:
	@$(DEPS) clang-format
	clang-format --dry-run --Werror $(FORMAT_FILES)

tidy: deps
	@$(DEPS) clang-tidy
	$(call CONFIGURE,dev)
	clang-tidy -p build/dev --quiet $(wildcard src/*.c)

cppcheck:
	@$(DEPS) cppcheck
	cppcheck --error-exitcode=1 --enable=warning,portability,performance \
		--inline-suppr --std=c11 --quiet -D_GNU_SOURCE -D__linux__ \
		--suppress=missingIncludeSystem -Iinclude -Isrc src/

clean:
	rm -rf build

help:
	@sed -n '/^#   make/s/^#   //p' Makefile
