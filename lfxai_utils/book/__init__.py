"""Build the reproduction book: execute every (notebook, dataset) page with papermill, then run Jupyter Book.

Usage (the README's main command calls this through ``make book``)::

    python -m lfxai_utils.book                 # inference mode from the shipped checkpoints, then build the HTML
    python -m lfxai_utils.book --list          # every page, whether it can run here, and why not
    python -m lfxai_utils.book --only mnist    # only pages whose key contains "mnist" (others keep their state)
    python -m lfxai_utils.book --no-html       # execute/refresh pages only
    python -m lfxai_utils.book --jobs 2        # two independent pages at once, one kernel thread each on 2 cores
    python -m lfxai_utils.book --train-checkpoints --only claim1_feature   # retrain and save checkpoints
    python -m lfxai_utils.book.train --list    # make checkpoints-list: the models the pages need, and their state

Every page of the registry (:data:`lfxai_utils.book.registry.BOOK_CHAPTERS`) whose notebook exists ends up as
``book/_executed/<key>.ipynb`` (executed) or, when its data or checkpoints are absent here, as
``book/_executed/<key>.md`` explaining exactly why and how to run it. A notebook that raises is reported with
papermill's saved exception; the rest of the book is still built and the command exits non-zero.

Execution is incremental: a page whose notebook, parameters, library code, checkpoints and data did not change
since its last successful run is not executed again (``book/_executed/state.json`` keeps the fingerprints).

The package: :mod:`~lfxai_utils.book.registry` (the pages and what each needs), :mod:`~lfxai_utils.book.execution`
(readiness, fingerprints, state, papermill), :mod:`~lfxai_utils.book.pages` (the generated pages),
:mod:`~lfxai_utils.book.performance` (the Performance page and build times), :mod:`~lfxai_utils.book.cli` (this
command) and :mod:`~lfxai_utils.book.train` (``make checkpoints``). Their public names are importable from here.
"""
from __future__ import annotations

from .registry import (BOOK_CHAPTERS, CPU_BUDGETS, NOT_RUN_NOTES, ROOT, TRAIN_PARAMS, Chapter, Layout, Page,
                       Registry, all_pages, chapters, checkpoint_users, default_registry, not_run_note,
                       papermill_command)
from .pages import (brief, build_html, read_summary, render_api, render_not_run, render_not_run_page,
                    render_results, render_toc, run_instructions, write_generated_pages, write_not_run_page)
from .execution import (Outcome, Readiness, check_page, code_hash, execute_page, execute_pages, kernel_threads,
                        load_state, notebook_parameters, outcome_from_state, page_digest, save_state)
from .performance import BUILD_COLUMNS, BUILDS_CSV, record_build, render_builds, render_performance, write_timings
from .cli import main, run

__all__ = [
    "BOOK_CHAPTERS", "CPU_BUDGETS", "NOT_RUN_NOTES", "ROOT", "TRAIN_PARAMS", "Chapter", "Layout", "Page", "Registry",
    "all_pages", "chapters", "checkpoint_users", "default_registry", "not_run_note", "papermill_command",
    "brief", "build_html", "read_summary", "render_api", "render_not_run", "render_not_run_page", "render_results",
    "render_toc", "run_instructions", "write_generated_pages", "write_not_run_page",
    "Outcome", "Readiness", "check_page", "code_hash", "execute_page", "execute_pages", "kernel_threads",
    "load_state", "notebook_parameters", "outcome_from_state", "page_digest", "save_state",
    "BUILD_COLUMNS", "BUILDS_CSV", "record_build", "render_builds", "render_performance", "write_timings",
    "main", "run",
]
