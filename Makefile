# One command each: `make run` (set up, then pretrain a small MixMIM on Fashion-MNIST
# on this CPU) and `make test` (set up, then the whole test suite). Both install
# what they need: Debian packages when run as root (or with sudo), and a virtual
# environment with the pinned requirements.
PYTHON ?= python3
VENV ?= $(HOME)/.venvs/mixmim_jax
WORKDIR ?= runs/fashion_mnist
PY := $(VENV)/bin/python
APT_PACKAGES := dataset-fashion-mnist shellcheck libtcmalloc-minimal4
# The run preloads tcmalloc, a malloc that keeps freed large blocks for reuse:
# XLA:CPU allocates each step's working buffers afresh and glibc hands them back
# to the kernel, so every step page-faults them in again (base on CPU: 13.1 ->
# 11.1 s per step, system time 2.9 -> 0.7 s; BENCHMARKS.md). Set for this command
# only: the library itself changes nothing process-wide. Found when the recipe
# runs, after system-packages may have installed it.
WITH_TCMALLOC := LD_PRELOAD="$$(ls /usr/lib/*/libtcmalloc_minimal.so.4 2>/dev/null | head -n 1)" \
  TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD=1099511627776
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test test-all setup setup-test system-packages

run: setup
	$(WITH_TCMALLOC) $(PY) -m mixmim_jax.main --config=configs/fashion_mnist_pretrain.py --workdir=$(WORKDIR)

# Two pytest workers: most of the suite's time is XLA compiling, one core each.
PYTEST := $(PY) -m pytest -q -n 2 --dist worksteal

test: setup-test
	$(PYTEST)

# Also the slow tests (pytest.ini keeps them out of `make test`; each has a faster
# test in the default run that covers the same behaviour).
test-all: setup-test
	$(PYTEST) -m "slow or not slow"

system-packages:
	@if ! dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(APT_PACKAGES); \
	fi

$(PY):
	$(PYTHON) -m venv $(VENV)

setup: system-packages $(PY)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt

# timm 0.4.12 runs the authors' code in tests/test_authors.py (given a checkout of
# Sense-X/MixMIM, see tests/authors_reference.py); --no-deps, as its requirements
# would replace the CPU torch with a CUDA build.
setup-test: system-packages $(PY)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-test.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps timm==0.4.12

# The mutation check (tests/mutants.py, docs/MUTANTS.md): each hand-picked wrong
# constant or formula, applied alone to a copy of the repository, must make the
# tests that guard it fail. About 25 min on 2 cores; not part of `make test`.
.PHONY: mutants
mutants: setup-test
	nice -n 10 $(PY) tests/mutants.py
