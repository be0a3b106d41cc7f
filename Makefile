# Everything runs inside .venv, created and filled from the pinned requirements on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv test test-fast book notebooks bench checkpoints clean help

help:
	@echo "make book         set up .venv, execute every notebook from the shipped checkpoints, build the HTML book"
	@echo "make test         set up .venv and run the test suite"
	@echo "make test-fast    the test suite without the slow notebook/browser tests"
	@echo "make bench        benchmarks against the authors' lfxai package"
	@echo "make checkpoints  retrain the shipped checkpoints (mode=train)"

$(STAMP): requirements.txt requirements-lock.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -c requirements-lock.txt
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

book: $(STAMP)
	$(PY) -m lfxai_utils.book

bench: $(STAMP)
	$(PY) -m pip install -q -r bench/requirements.txt
	$(PY) bench/run_benchmarks.py

checkpoints: $(STAMP)
	$(PY) -m lfxai_utils.book --train-checkpoints

clean:
	rm -rf _build book/_executed
