# Everything runs inside .venv, created and filled from the pinned requirements on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# parallel test workers (pytest-xdist); the notebook smoke runs dominate the suite
JOBS   ?= 2
# extra arguments for the book builder, e.g. make book BOOK_ARGS="--only mnist"
BOOK_ARGS ?=

.PHONY: venv test test-fast book book-timings book-list notebooks bench bench-train if-budget checkpoints checkpoints-list clean help lab

help:
	@echo "make book         set up .venv, execute every notebook from the shipped checkpoints, build the HTML book"
	@echo "                  (_build/html/index.html; incremental: unchanged pages are not executed again)"
	@echo "make test         set up .venv and run the test suite (the browser test checks the last built book)"
	@echo "make test-fast    the test suite without the slow notebook/browser tests"
	@echo "make book-list    which pages of the book can run on this machine, and why the others cannot"
	@echo "make lab          JupyterLab in .venv with the notebooks folder open (LAB_ARGS=\"--port=8899\" etc. are passed on)"
	@echo "make notebooks    sync each pair notebooks/X.py (py:percent source) <-> notebooks/X.ipynb (jupytext --sync)"
	@echo "make bench        benchmarks against the authors' lfxai package"
	@echo "make if-budget    influence functions at the book's reduced LiSSA budget vs the paper's (Performance page)"
	@echo "make book-timings a full book build (every page re-executed) that records its times for the Performance page"
	@echo "make checkpoints  train every checkpoint the book needs that is missing or stale, JOBS=2 processes at once"
	@echo "                  (resumable: stop and restart at any time; BOOK_ARGS=\"--only KEY\" for one page's models)"
	@echo "make checkpoints-list  which checkpoints are current, stale or missing, with estimated training times"
	@echo "make bench-train  training throughput per architecture (eager / channels_last / compile, threads, processes)"

$(STAMP): requirements.txt requirements-lock.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -c requirements-lock.txt
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -n $(JOBS)

test-fast: $(STAMP)
	$(PY) -m pytest -n $(JOBS) -m "not slow"

book: $(STAMP)
	$(PY) -m lfxai_utils.book --jobs $(JOBS) $(BOOK_ARGS)

book-timings: $(STAMP)
	$(PY) -m lfxai_utils.book --force --jobs $(JOBS) --record-timings bench/results/book_timings.csv --record-builds bench/results/book_builds.csv $(BOOK_ARGS)

book-list: $(STAMP)
	$(PY) -m lfxai_utils.book --list $(BOOK_ARGS)

# JupyterLab from the project's venv (its python3 kernel is the venv's), rooted at the repository, the notebooks open
lab: $(STAMP)
	$(PY) -m jupyterlab --ServerApp.root_dir=. --LabApp.default_url=/lab/tree/notebooks $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

bench: $(STAMP)
	$(PY) -m pip install -q --no-deps -r bench/requirements.txt
	$(PY) bench/run_benchmarks.py

# each notebook is a jupytext pair (jupytext.toml): the side edited last updates the other
notebooks: $(STAMP)
	$(VENV)/bin/jupytext --sync notebooks/*.ipynb

if-budget: $(STAMP)
	$(PY) bench/if_budget.py

checkpoints: $(STAMP)
	$(PY) -m lfxai_utils.book.train --jobs $(JOBS) $(BOOK_ARGS)

checkpoints-list: $(STAMP)
	$(PY) -m lfxai_utils.book.train --list $(BOOK_ARGS)

bench-train: $(STAMP)
	$(PY) bench/training_throughput.py

clean:
	rm -rf _build book/_executed book/_generated book/_static/plotly.min.js book/_static/mathjax
