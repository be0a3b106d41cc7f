"""``python -m lfxai_utils.book``: execute the book's pages, write the generated pages, build the HTML.

See :mod:`lfxai_utils.book` for the options; :func:`run` takes the registry, layout and HTML builder as arguments so
that tests run it on a temporary repository.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from .._utils import atomic_write
from .execution import Outcome, check_page, code_hash, execute_pages, load_state, outcome_from_state
from .pages import brief, build_html, render_toc, write_generated_pages
from .performance import BUILDS_CSV, record_build, write_timings
from .registry import Layout, Page, Registry, chapters, default_registry


def _write_toc_if_changed(registry: Registry, layout: Layout) -> bool:
    toc = render_toc(registry, layout)
    path = layout.root / "_toc.yml"
    if path.exists() and path.read_text() == toc:
        return False
    with atomic_write(path, "w") as f:
        f.write(toc)
    return True


def _parser() -> argparse.ArgumentParser:
    from . import __doc__ as doc

    ap = argparse.ArgumentParser(prog="python -m lfxai_utils.book", description=doc.split("\n\n")[0])
    ap.add_argument("--only", action="append", default=[], help="run only pages whose key contains this (repeatable)")
    ap.add_argument("--force", action="store_true", help="re-execute pages even if nothing changed")
    ap.add_argument("--no-html", action="store_true", help="execute pages but do not build the HTML")
    ap.add_argument("--html-only", action="store_true", help="build the HTML from what is already executed")
    ap.add_argument("--list", action="store_true", help="list the pages and whether each can run here, then exit")
    ap.add_argument("--write-toc", action="store_true", help="write _toc.yml and exit")
    ap.add_argument("--train-checkpoints", action="store_true",
                    help="execute the pages in mode=train (with reuse_checkpoints=True and each page's train_params), "
                         "writing checkpoints into checkpoints/; no HTML")
    ap.add_argument("--jobs", type=int, default=1, metavar="N",
                    help="execute up to N independent pages at once (inference mode; each page's kernel gets "
                         "cpu_count // N threads through OMP_NUM_THREADS/MKL_NUM_THREADS); the pages and the book are "
                         "the same as with --jobs 1")
    ap.add_argument("--threads", type=int, default=None, metavar="N",
                    help="threads of each page's kernel (default: all cores with --jobs 1, cores // N with --jobs N); "
                         "builds with the same --threads give bit-identical numbers")
    ap.add_argument("--record-timings", metavar="CSV", default=None,
                    help="write each page's status and wall time, and the build's total, to this CSV (the "
                         "Performance page reads bench/results/book_timings.csv; use with --force for a full build)")
    ap.add_argument("--record-builds", metavar="CSV", default=None,
                    help="keep this build's wall time (inference mode), keyed by --jobs and the pages "
                         "selected, in this CSV (the Performance page compares sequential and parallel builds from "
                         f"{BUILDS_CSV})")
    return ap


def _list_pages(pages: Sequence[Page], mode: str, registry: Registry, layout: Layout) -> None:
    """``--list``: each page and whether it can run here, or why not."""
    memo: dict = {}
    for p in pages:
        r = check_page(p, mode, registry=registry, layout=layout, data_memo=memo)
        print(f"{p.key:50s} {'ready' if r.ready else 'NOT READY: ' + '; '.join(brief(x) for x in r.reasons)}")


def _report(outcomes: dict[str, Outcome], failed: Sequence[Outcome], rc: int, mode: str, no_html: bool,
            layout: Layout) -> None:
    """The build's closing lines: every executed page's status and time, the failures, where the book is."""
    print("\n" + "-" * 100)
    for o in outcomes.values():
        secs = f"{o.seconds:7.1f} s" if o.status in ("executed", "failed") else " " * 9
        if o.status == "cached" and o.seconds:
            secs = f"({o.seconds:.0f} s when last executed)"
        print(f"{o.status:9s} {secs}  {o.page.key}")
    for o in failed:
        nb = layout.executed_nb(o.page, mode)
        where = f" (executed copy with the traceback: {layout.rel(nb)})" if nb.exists() else ""
        print(f"FAILED: {o.page.key}: {'; '.join(o.reasons)}{where}", file=sys.stderr)
    if rc:
        print(f"jupyter-book build failed (exit code {rc}); the warnings above say why", file=sys.stderr)
    elif mode == "inference" and not no_html:
        print(f"book built: {layout.rel(layout.root / '_build' / 'html' / 'index.html')}")
    if mode == "train" and not failed:
        print("checkpoints written; `make book` now executes the pages from them")


def run(argv: Sequence[str] | None = None, *, registry: Registry | None = None, layout: Layout | None = None,
        html: Callable[[Layout], int] | None = None) -> int:
    """The command line (``argv``: its arguments); returns the exit code: 0, 1 when a page or the HTML failed,
    2 when ``--only`` selects no page."""
    ap = _parser()
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error(f"--jobs must be a positive integer; got {args.jobs}")
    if args.threads is not None and args.threads < 1:
        ap.error(f"--threads must be a positive integer; got {args.threads}")
    registry = registry or default_registry()
    layout = layout or Layout()
    html = html or build_html
    t_start = time.perf_counter()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None

    if _write_toc_if_changed(registry, layout) or args.write_toc:
        print("wrote _toc.yml")
    if args.write_toc:
        return 0
    chapters_ = chapters(registry, layout)
    pages = [p for c in chapters_ for p in c.pages]
    mode = "train" if args.train_checkpoints else "inference"
    selected = [p for p in pages if not args.only or any(s in p.key for s in args.only)]
    if args.only and not selected:
        print(f"no page key contains {' or '.join(map(repr, args.only))}; keys: {', '.join(p.key for p in pages)}",
              file=sys.stderr)
        return 2
    if args.list:
        _list_pages(selected, mode, registry, layout)
        return 0

    state = load_state(layout)
    outcomes: dict[str, Outcome] = {}
    jobs = args.jobs if mode == "inference" else 1   # train-mode pages share checkpoints they write: one at a time
    if args.jobs > 1 and mode == "train":
        print("--train-checkpoints executes the pages one at a time (they reuse each other's checkpoints)")
    exec_seconds = 0.0
    if not args.html_only:
        code = code_hash(layout)
        t_exec = time.perf_counter()
        outcomes = execute_pages(selected, mode=mode, jobs=jobs, force=args.force, state=state, code=code,
                                 registry=registry, layout=layout, threads=args.threads)
        exec_seconds = time.perf_counter() - t_exec
    failed = [o for o in outcomes.values() if o.status == "failed"]
    rc = 0
    if mode == "inference":
        all_outcomes = [outcomes.get(p.key) or outcome_from_state(p, state, layout) for p in pages]
        failed = [o for o in all_outcomes if o.status == "failed"]
        write_generated_pages(all_outcomes, chapters_, layout)
        if not args.no_html:
            rc = html(layout)
    _report(outcomes, failed, rc, mode, args.no_html, layout)
    total = time.perf_counter() - t_start
    print(f"total wall time {total:.1f} s", flush=True)
    this_build = [outcomes[p.key] for p in selected if p.key in outcomes]
    if args.record_timings and mode == "inference":
        write_timings(Path(args.record_timings), this_build, total, html_rc=None if args.no_html else rc, jobs=jobs)
        print(f"timings written to {args.record_timings}")
    if args.record_builds and mode == "inference" and not args.html_only:
        record_build(Path(args.record_builds), this_build, jobs=jobs, exec_seconds=exec_seconds, total=total,
                     only=args.only, html_rc=None if args.no_html else rc, load=load, threads=args.threads)
        print(f"build time (--jobs {jobs}) written to {args.record_builds}")
    return 1 if (failed or rc) else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lfxai_utils.book [options]``."""
    return run(argv)
