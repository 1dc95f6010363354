# synguard — see scripts/setup.sh for what `setup` does (root, Debian 12).
SHELL  := /bin/bash
VENV   := .venv
PY     := $(VENV)/bin/python

# pytest reads extra options from the environment, e.g.
#   PYTEST_ADDOPTS="-m slow" make test    or    make test PYTEST_ADDOPTS="-k cookie"
export PYTEST_ADDOPTS

.PHONY: all setup test test-kernels demo bench deb ebpf clean

all: test

setup:
	@if [ "$$(id -u)" -ne 0 ]; then echo "synguard: 'make setup' must run as root (apt, bpffs, XDP); try: sudo make $(or $(MAKECMDGOALS),test)" >&2; exit 1; fi
	@bash scripts/setup.sh

test: setup
	$(PY) -m pytest -q -ra tests

# The kernel matrix: tests/test_kernel_matrix.py (marker `kernel`) on each kernel, Debian's
# booted in QEMU guests from their own packages (scripts/kernels.sh: fetched and extracted into
# a cache, never installed); "host" = the running kernel, no guest. Results: build/kernels/.
KERNELS ?= 6.1.0-50-amd64 6.12.118+deb12-amd64 host
test-kernels: setup
	@bash scripts/kernels.sh matrix $(KERNELS)

demo: setup
	$(PY) -m synguard_lab.demo $(ARGS)

bench: setup
	$(PY) -m synguard_lab.benchreport $(ARGS)

# The Debian package (debian/, scripts/build-deb.sh): ./synguard_<version>_<arch>.deb.
deb: setup
	@bash scripts/build-deb.sh

# eBPF objects compiled ahead of time with clang (BCC compiles synguard.bpf.c at start).
# Only ebpf/synguard_tc.bpf.c, when it exists: without it this target does nothing.
# -target bpf is the host's byte order and asm/ comes from the host's multiarch include
# dir: the object is architecture-dependent (the package ships it in /usr/lib/synguard).
CLANG ?= $(firstword $(shell command -v clang clang-14 2>/dev/null) clang)
MULTIARCH := $(shell dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null)
EBPF_CFLAGS := -O2 -g -target bpf -Wall -Wno-unused-function -I ebpf $(if $(MULTIARCH),-I/usr/include/$(MULTIARCH))
EBPF_OBJS := $(patsubst %.c,%.o,$(wildcard ebpf/synguard_tc.bpf.c))

ebpf: $(EBPF_OBJS)

ebpf/%.bpf.o: ebpf/%.bpf.c ebpf/synguard_abi.h ebpf/synguard_siphash.h ebpf/synguard_parse.h ebpf/synguard_scope.h
	$(CLANG) $(EBPF_CFLAGS) -c $< -o $@

clean:
	rm -rf $(VENV) build/kernels .pytest_cache .hypothesis build dist *.egg-info synguard_*.deb ebpf/*.bpf.o
	find . -path ./.git -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
