# The README's two commands: `make demo` and `make test`. Both do all set-up
# on a fresh Debian machine: a venv, the package, and Fashion-MNIST.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FMNIST_DIR := /usr/share/datasets/fashion-mnist
WORKDIR ?= runs/byol_fashion_mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test test-fast test-slow test-torch setup data clean lock bench-input bench-step bench-device-augment bench-levers bench-conv bench-jpeg-crop bench-compile-cache bench-accelerator

demo: setup data
	$(PY) -m byol_jax.main --config=configs/byol_fashion_mnist.py --workdir=$(WORKDIR)

# Every test, the slow ones included (what CI runs), in TEST_WORKERS
# processes (pytest-xdist; 0: in this one). Most tests compile or start a
# process and leave a core idle part of the time: two workers on 2 cores.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS)
test: setup
	$(PYTEST) tests

# For iteration: all but the tests marked slow.
test-fast: setup
	$(PYTEST) -m 'not slow' tests

test-slow: setup
	$(PYTEST) -m slow tests

setup: $(VENV)/.installed

# The package with the exact versions CI used (requirements/lock.txt).
LOCK := requirements/lock.txt
$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c $(LOCK) -e '.[test]'
	touch $@

# Re-resolves the newest versions pyproject.toml's ranges allow into the
# lock file (in a scratch venv); then `make clean test` and commit both.
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q --upgrade pip
	.venv-lock/bin/python -m pip install -q -e '.[test]'
	{ sed -n '1,3p' $(LOCK); .venv-lock/bin/python -m pip freeze --exclude-editable; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf .venv-lock

data:
	@if [ ! -e $(FMNIST_DIR)/train-images-idx3-ubyte.gz ] && [ ! -e $(FMNIST_DIR)/train-images-idx3-ubyte ]; then \
	  echo "Installing Fashion-MNIST (Debian package dataset-fashion-mnist)"; \
	  $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q dataset-fashion-mnist; \
	fi

clean:
	rm -rf $(VENV) *.egg-info

# Benchmarks that compare with PyTorch need torch + torchvision, which are
# never dependencies of the package: they live in a separate venv.
# (torchvision from PyPI needs the torch release it was built for: 2.14.1.)
BENCH_VENV ?= .venv-bench
$(BENCH_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install -q -e '.[test]' torch==2.14.1 torchvision==0.29.1
	touch $@

# The tests that need torch (torchvision ResNet-50 loaded from our export
# gives our features); skipped by `make test`.
test-torch: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python -m pytest -q tests/test_export.py

bench-input: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python benchmarks/input_pipeline.py

# Step levers (donation, host syncs, conv_impl, one encoder call) toggled
# against the trainer's step, and XLA convolutions vs. matmul_conv per layer.
bench-levers: setup
	PYTHONPATH=. $(PY) benchmarks/step_levers.py

bench-conv: setup
	PYTHONPATH=. $(PY) benchmarks/conv_impl.py

# A short demo run's wall time with the persistent compilation cache off,
# empty and filled (what a resumed run's start saves).
bench-compile-cache: setup data
	PYTHONPATH=. $(PY) benchmarks/compile_cache.py

# The one-shot GPU/TPU host benchmark (a markdown table; --tiny on CPU).
bench-accelerator: setup
	bash benchmarks/accelerator.sh

# The official crop on JPEGs: decode each crop's window vs. decode once.
bench-jpeg-crop: setup
	PYTHONPATH=. $(PY) benchmarks/jpeg_crop.py

# On-device (JAX) augmentation vs. the tf.data path (no torch needed).
bench-device-augment: setup
	PYTHONPATH=. $(PY) benchmarks/device_augment.py

# Train-step images/s, byol_jax vs. the PyTorch reference of the same step.
bench-step: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python benchmarks/train_step.py
