# Two entry points: `make demo` (the whole pipeline on the quick preset) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install clean bench

$(STAMP): requirements.txt setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

# The demo runs under torchrun, one process per core (NPROC): Stage 1 and Stage 2 split each batch over the
# processes (PyTorch DDP, gloo), and the evaluation games are split between them. NPROC=1 runs one process.
NPROC ?= 2
demo: $(STAMP)
	$(PY) -m torch.distributed.run --standalone --nproc_per_node=$(NPROC) run.py demo --preset quick

# The suite runs in TEST_WORKERS pytest-xdist processes (one per core of the 2-core CI machine; each test's torch
# uses one thread); --dist loadscope keeps a module's tests, and so its shared fixtures, in one process.
TEST_WORKERS ?= 2
test: $(STAMP)
	@# The dashboard test renders HTML in headless Chromium: install it where apt-get runs as root (CI).
	@if [ "$$(id -u)" = 0 ] && ! command -v chromium >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; fi
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadscope

bench: $(STAMP)
	$(PY) benchmarks/bench_collect.py

clean:
	rm -rf $(VENV) *.egg-info
