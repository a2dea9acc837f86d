# modalign: set-up, tests and the demo on a fresh Debian/Ubuntu machine.
#   make demo   - installs system packages (Tux Paint stamps) and Python packages, runs the demo
#   make test   - installs everything the tests need, then runs ruff, mypy and pytest
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# chromium + chromium-driver: the search page's browser tests (they skip without them);
# espeak-ng: synthesised speech for the speech_text encoder's tests (they skip without it)
APT_PACKAGES := tuxpaint-stamps-default chromium chromium-driver espeak-ng
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: system install test lint demo clean bench-cmg-setup bench-cmg

# System packages: the real data of the demo and of the real-data tests.
system:
	@if command -v apt-get >/dev/null 2>&1; then \
		( $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(APT_PACKAGES) >/dev/null ) \
		|| echo "warning: could not install $(APT_PACKAGES); the demo needs them, tests that do skip"; \
	else echo "apt-get not found: install $(APT_PACKAGES) by hand (tests that need them skip)"; fi

# torch first, pinned to the CPU wheel: letting another package pull torch brings a CUDA build.
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev,encoders,faiss,serve,speech]"
	# peers the tests compare against; --no-deps because their wheels ask for torchvision, which
	# does not fit this torch; the modules used (CLIP_benchmark's retrieval metric, open_clip's
	# losses) need only torch
	$(BIN)/pip install -q --no-deps clip-benchmark==1.6.2 open_clip_torch==3.3.0
	touch $@

install: $(BIN)/.installed

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

# pytest exits 5 when it collects nothing; that is a failure of the set-up, reported as such.
test: system install lint
	$(BIN)/python -m pytest -q -p no:cacheprovider; rc=$$?; \
		if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; fi; exit $$rc

demo: system install
	$(BIN)/modalign demo

# Speech synthesisers for benchmarks/bench_cmg.py (spoken digits in many voices); the tests
# do not need them. mbrola voices are not packaged on Debian main, so they are not installed.
BENCH_CMG_APT := espeak-ng flite festival
bench-cmg-setup: install
	( $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(BENCH_CMG_APT) >/dev/null ) \
		|| echo "warning: could not install $(BENCH_CMG_APT); bench_cmg uses the synthesisers it finds"

bench-cmg: bench-cmg-setup
	$(BIN)/python benchmarks/bench_cmg.py

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
