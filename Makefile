# ncsn_jax: `make demo` trains and samples the digits model, `make test` runs
# the test suite. Both create .venv and install what they need first.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
WORKDIR ?= runs/digits
PYTEST_ARGS ?=

.PHONY: install install-test demo test clean

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

demo: install
	$(BIN)/python run.py --config=configs/digits.py --workdir=$(WORKDIR) --mode=train
	$(BIN)/python run.py --config=configs/digits.py --workdir=$(WORKDIR) --mode=sample
	$(BIN)/python run.py --config=configs/digits.py --workdir=$(WORKDIR) --mode=eval

test: install-test
	TF_CPP_MIN_LOG_LEVEL=2 $(BIN)/python -m pytest tests -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
