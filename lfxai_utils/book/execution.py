"""Executing the book's pages: readiness, fingerprints, the incremental cache, papermill, parallel builds.

A page runs when everything it needs is here (:func:`check_page`: data loads without downloading, checkpoints and
their manifests present) and something it depends on changed since its last successful run (:func:`page_digest` of
the notebook, its parameters, the data and checkpoint fingerprints and the library code; ``book/_executed/state.json``
keeps them). Otherwise it keeps its executed copy, or gets a page saying why it cannot run here
(:func:`lfxai_utils.book.pages.render_not_run_page`).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from .._utils import atomic_write, md_escape
from .pages import brief, write_not_run_page
from .registry import ROOT, Layout, Page, Registry, default_registry, papermill_command

#: kernel options: no "running over TCP without encryption" warning in the middle of the progress lines
KERNEL_ARGS = ["--IPKernelApp.log_level=ERROR"]
#: library files that do not influence what a notebook computes: the book builder itself (this package, its Sphinx
#: extension, and ``book.py``, the builder's one file before it became a package)
_NOT_CODE = {"book.py", "book_sphinx.py"}
_BUILDER_PACKAGE = "book"


# ------------------------------------------------------------------------------------ notebook parameters
_PARAM_LINE = re.compile(r"^([A-Za-z_]\w*)\s*(?::[^=]*)?=\s*(.*?)\s*(?:#.*)?$")


def notebook_parameters(path: Path) -> dict[str, str]:
    """``{name: default source}`` of the cell tagged ``parameters`` (one assignment per line, as ours are)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            out = {}
            for line in cell.source.splitlines():
                m = _PARAM_LINE.match(line)
                if m:
                    out[m.group(1)] = m.group(2)
            return out
    raise ValueError(f"{path} has no cell tagged 'parameters'")


# -------------------------------------------------------------------------------- requirements
@dataclass
class Readiness:
    ready: bool
    reasons: list[str]
    fingerprint: dict[str, Any]


def _data_fingerprint(name: str, kwargs: Mapping[str, Any], layout: Layout, memo: dict) -> tuple[Any, str | None]:
    """(fingerprint of the files ``load_dataset`` verified, None) or (None, reason it cannot be loaded here)."""
    from ..data import ChecksumError, DatasetNotFoundError, load_dataset, search_dirs

    key = (name, json.dumps(dict(kwargs), sort_keys=True, default=str))
    if key not in memo:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                splits = load_dataset(name, data_dir=layout.data_dir, download=False, progress=False, **kwargs)
            files = [{k: f.get(k) for k in ("path", "size", "sha256")} for f in splits.info.get("files", [])]
            memo[key] = ({"files": files, "n_train": splits.info.get("n_train"),
                          "n_test": splits.info.get("n_test")}, None)
        except DatasetNotFoundError:
            where = ", ".join(f"`{layout.rel(d)}`" for d in search_dirs(layout.data_dir))
            memo[key] = (None, f"data: dataset `{name}` is not in any data folder searched here ({where}), "
                               "and the book does not download")
        except ChecksumError as err:
            memo[key] = (None, f"data: dataset `{name}` fails its checksum ({str(err).splitlines()[0]})")
    return memo[key]


def _checkpoint_fingerprint(pt: Path, manifest: Path) -> dict[str, Any]:
    """What identifies a shipped checkpoint for the page cache: its manifest's sha256 and the weights' size."""
    return {"manifest": hashlib.sha256(manifest.read_bytes()).hexdigest(), "size": pt.stat().st_size}


def check_page(page: Page, mode: str = "inference", *, registry: Registry | None = None,
               layout: Layout | None = None, data_memo: dict | None = None) -> Readiness:
    """Is everything this page needs present here? Returns the reasons if not, and a fingerprint of the inputs.

    Data: every ``data_requirements`` entry must load with ``download=False``. Checkpoints (inference mode only):
    every ``required_checkpoints`` name needs its ``.pt`` and its ``.json`` manifest in ``checkpoints/``; the
    ``optional_checkpoints`` present join the fingerprint.
    """
    registry = registry or default_registry()
    layout = layout or Layout()
    memo = {} if data_memo is None else data_memo
    reasons: list[str] = []
    fp: dict[str, Any] = {"data": {}, "checkpoints": {}}
    for name, kwargs in registry.page_data(page):
        finger, reason = _data_fingerprint(name, kwargs or {}, layout, memo)
        if reason:
            reasons.append(reason)
        else:
            fp["data"][f"{name} {json.dumps(dict(kwargs or {}), sort_keys=True, default=str)}"] = finger
    if mode == "inference":
        absent, unlisted = [], []
        for name in registry.page_checkpoints(page, mode):
            pt, manifest = layout.checkpoints / f"{name}.pt", layout.checkpoints / f"{name}.json"
            if not pt.is_file():
                absent.append(f"`checkpoints/{name}.pt`")
            elif not manifest.is_file():
                unlisted.append(f"`checkpoints/{name}.json`")
            else:
                fp["checkpoints"][name] = _checkpoint_fingerprint(pt, manifest)
        for name in registry.page_optional_checkpoints(page, mode):   # fingerprinted when present, never required
            pt, manifest = layout.checkpoints / f"{name}.pt", layout.checkpoints / f"{name}.json"
            if pt.is_file() and manifest.is_file():
                fp["checkpoints"][name] = _checkpoint_fingerprint(pt, manifest)
        if absent:
            reasons.append(f"checkpoints not shipped ({len(absent)}): {', '.join(absent)}")
        if unlisted:
            reasons.append(f"checkpoint manifests missing ({len(unlisted)}): {', '.join(unlisted)}")
    return Readiness(not reasons, reasons, fp)


def code_hash(layout: Layout | None = None) -> str:
    """Hash of the library code the notebooks run (not the book builder) and of the key package versions."""
    from importlib.metadata import PackageNotFoundError, version

    layout = layout or Layout()
    h = hashlib.sha256()
    package = layout.root / "lfxai_utils"
    for f in sorted(package.rglob("*.py")):
        if (f.name in _NOT_CODE and f.parent == package) or f.relative_to(package).parts[0] == _BUILDER_PACKAGE:
            continue
        h.update(f.relative_to(layout.root).as_posix().encode())
        h.update(f.read_bytes())
    for dist in ("torch", "torchvision", "captum", "numpy", "scipy", "pandas", "matplotlib", "plotly"):
        try:
            h.update(f"{dist}=={version(dist)}".encode())
        except PackageNotFoundError:
            h.update(f"{dist} absent".encode())
    return h.hexdigest()


def page_digest(page: Page, params: Mapping[str, Any], readiness: Readiness, code: str,
                layout: Layout | None = None) -> str:
    """What decides whether a page must run again: notebook bytes, parameters, data, checkpoints, code."""
    layout = layout or Layout()
    nb = layout.notebook(page).read_bytes()
    blob = json.dumps({"nb": hashlib.sha256(nb).hexdigest(), "params": dict(params),
                       "inputs": readiness.fingerprint, "code": code}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


# ---------------------------------------------------------------------------------------- state
@dataclass
class Outcome:
    page: Page
    status: str  # "executed" | "cached" | "not-run" | "failed"
    seconds: float = 0.0
    reasons: list[str] = field(default_factory=list)
    when: str = ""


def load_state(layout: Layout) -> dict[str, dict]:
    try:
        state = json.loads(layout.state_file.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return {k: v for k, v in state.items() if isinstance(v, dict)}


def save_state(layout: Layout, state: Mapping[str, dict]) -> None:
    layout.executed.mkdir(parents=True, exist_ok=True)
    with atomic_write(layout.state_file, "w") as f:
        json.dump(state, f, indent=1, sort_keys=True)


# ---------------------------------------------------------------------------------- execution
@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _papermill_error(nb_path: Path) -> str:
    """The exception papermill saved in an executed notebook (``ename: evalue`` of the first error output)."""
    import nbformat

    try:
        nb = nbformat.read(nb_path, as_version=4)
    except Exception as err:  # noqa: BLE001 - unreadable output
        return f"(could not read {nb_path}: {err})"
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                count = cell.get("execution_count")
                return (f"cell [{count}]: " if count else "") + f"{out.get('ename')}: {out.get('evalue')}"
    return "unknown error (see the executed notebook)"


def _params_note(page: Page, mode: str, params: Mapping[str, Any], defaults: Mapping[str, str],
                 seconds: float) -> str:
    """The 'parameters of this run' note inserted after papermill's injected-parameters cell."""
    how = {"inference": "in **inference** mode (every model loaded from the shipped checkpoints)",
           "train": "in **train** mode (every model trained, then saved)"}[mode]
    own = [(k, v) for k, v in page.parameters(mode).items() if k not in ("dataset", "model", "mode")]
    lines = [":::{admonition} Parameters of this run", ":class: note",
             f"Executed by `python -m lfxai_utils.book` {how} on {_dt.date.today().isoformat()}, "
             f"in {seconds:.0f} s on {machine_summary()}.", ""]
    if own:
        lines.append("The book sets these parameters (everything else keeps the notebook's default):")
        lines.append("")
        lines.append("| parameter | this run | notebook default |")
        lines.append("|---|---|---|")
        lines += [f"| `{k}` | `{md_escape(repr(v))}` | `{md_escape(defaults.get(k, '?'))}` |" for k, v in own]
    else:
        lines.append("Every parameter keeps the notebook's default (the paper's settings).")
    lines += ["", f"Run it yourself: `{papermill_command(page, mode)}`", ":::"]
    return "\n".join(lines)


def machine_summary() -> str:
    """``"2 CPU cores, no GPU"``: the machine a page or a build ran on (for the pages' notes)."""
    import torch

    gpu = f" and a GPU ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ", no GPU"
    return f"{os.cpu_count()} CPU cores{gpu}"


def _postprocess(nb_path: Path, note: str, label: str) -> None:
    """Name the dataset in the page's title and insert the parameters note after the injected parameters."""
    import nbformat

    nb = nbformat.read(nb_path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            lines = cell.source.split("\n")
            i = next((k for k, line in enumerate(lines) if line.startswith("# ")), None)
            if i is not None and label not in lines[i]:
                lines[i] = f"{lines[i].rstrip()} ({label})"
                cell.source = "\n".join(lines)
            break
    at = next((i + 1 for i, c in enumerate(nb.cells) if "injected-parameters" in c.get("metadata", {}).get("tags", [])),
              next((i + 1 for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])),
                   0))
    cell = nbformat.v4.new_markdown_cell(note)
    cell.metadata["tags"] = ["lfxai-book-params"]
    nb.cells.insert(at, cell)
    with atomic_write(nb_path, "w") as f:
        nbformat.write(nb, f)


# ------------------------------------------------------------------------------------------ one page
class _PageError(Exception):
    """A page that cannot be handed to papermill (its reason is the message)."""


def _papermill_parameters(page: Page, mode: str, layout: Layout) -> tuple[dict[str, Any], dict[str, str]]:
    """``(parameters papermill passes, the notebook's defaults)``: the page's parameters (``reuse_checkpoints`` in
    train mode), checked against the notebook's ``parameters`` cell, plus the output, checkpoint and data folders."""
    source = layout.notebook(page)
    try:
        defaults = notebook_parameters(source)
    except Exception as err:  # noqa: BLE001 - unreadable notebook or no parameters cell
        raise _PageError(f"{layout.rel(source)}: {type(err).__name__}: {err}") from None
    params = page.parameters(mode)
    if mode == "train":
        params["reuse_checkpoints"] = True
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise _PageError(f"the book passes parameters the notebook does not declare: {', '.join(unknown)} "
                         f"(its parameters: {', '.join(defaults)})")
    params["output_dir"] = layout.rel(layout.output_dir(page, mode))
    if layout.checkpoints.resolve() != (ROOT / "checkpoints").resolve():
        params["checkpoint_dir"] = str(layout.checkpoints)
    if layout.data_dir is not None:
        params["data_dir"] = str(layout.data_dir)
    return params, defaults


def _run_papermill(page: Page, mode: str, params: Mapping[str, Any], layout: Layout,
                   progress: bool) -> tuple[float, str | None]:
    """Execute the page's notebook into a fresh results folder; ``(seconds, None)`` or ``(seconds, why it failed)``."""
    import papermill as pm

    out_dir, out_nb = layout.output_dir(page, mode), layout.executed_nb(page, mode)
    if mode == "inference":
        layout.not_run_md(page).unlink(missing_ok=True)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    reason = None
    # the book validates the parameters itself; papermill's parser warns about comments containing "="
    logging.getLogger("papermill").setLevel(logging.ERROR)
    try:
        with _environ(LFXAI_BOOK="1", LFXAI_NO_PROGRESS="1"):
            pm.execute_notebook(str(layout.notebook(page)), str(out_nb), parameters=dict(params),
                                kernel_name="python3", cwd=str(layout.root), progress_bar=progress, log_output=False,
                                extra_arguments=KERNEL_ARGS)
    except pm.PapermillExecutionError as err:
        reason = f"cell [{err.exec_count}]: {err.ename}: {err.evalue}"
    except Exception as err:  # noqa: BLE001 - kernel died, missing kernel, ...
        reason = _papermill_error(out_nb) if out_nb.exists() else f"{type(err).__name__}: {err}"
    return time.perf_counter() - t0, reason


def _record(state: dict, page: Page, mode: str, outcome: Outcome, **extra: Any) -> Outcome:
    """Keep ``outcome`` in the book's state (inference mode only: train runs leave the book's cache alone)."""
    if mode == "inference":
        entry: dict[str, Any] = {"status": outcome.status}
        if outcome.reasons:
            entry["reasons"] = list(outcome.reasons)
        entry.update(extra)
        entry["when"] = outcome.when
        state[page.key] = entry
    return outcome


def execute_page(page: Page, *, mode: str = "inference", force: bool = False, state: dict | None = None,
                 code: str | None = None, registry: Registry | None = None, layout: Layout | None = None,
                 data_memo: dict | None = None, progress: bool = False) -> Outcome:
    """Run one page with papermill (or write its not-run page, or keep the cached copy).

    ``state`` (the book's ``state.json``, updated in inference mode) holds each page's last outcome and digest;
    ``code`` is :func:`code_hash` (computed when not given).
    """
    registry = registry or default_registry()
    layout = layout or Layout()
    state = {} if state is None else state
    when = _dt.datetime.now().isoformat(timespec="seconds")
    readiness = check_page(page, mode, registry=registry, layout=layout, data_memo=data_memo)
    if not readiness.ready:
        if mode == "inference":
            write_not_run_page(page, readiness.reasons, layout)
        return _record(state, page, mode, Outcome(page, "not-run", reasons=readiness.reasons, when=when))
    try:
        params, defaults = _papermill_parameters(page, mode, layout)
    except _PageError as err:
        return _record(state, page, mode, Outcome(page, "failed", reasons=[str(err)], when=when))

    code = code_hash(layout) if code is None else code
    digest = page_digest(page, params, readiness, code, layout)
    prev = state.get(page.key, {})
    if (mode == "inference" and not force and prev.get("status") in ("executed", "cached")
            and prev.get("digest") == digest and layout.executed_nb(page, mode).exists()):
        return Outcome(page, "cached", prev.get("seconds", 0.0), when=prev.get("when", ""))

    seconds, reason = _run_papermill(page, mode, params, layout, progress)
    if reason is not None:
        return _record(state, page, mode, Outcome(page, "failed", seconds, [reason], when), seconds=seconds)
    _postprocess(layout.executed_nb(page, mode), _params_note(page, mode, params, defaults, seconds), page.label)
    return _record(state, page, mode, Outcome(page, "executed", seconds, when=when), digest=digest, seconds=seconds)


# ------------------------------------------------------------------------------------------ many pages
def kernel_threads(jobs: int, cpus: int | None = None) -> int:
    """Threads for each page's kernel when ``jobs`` pages run at once on ``cpus`` cores (at least 1)."""
    return max(1, (cpus or os.cpu_count() or 1) // max(1, jobs))


def _close_thread_loop() -> None:
    """Close the event loop papermill (jupyter_core) opened in this worker thread; the next page opens a new one."""
    import asyncio

    try:
        loop = asyncio.get_event_loop()
    except RuntimeError:   # this thread has none
        return
    if not loop.is_running() and not loop.is_closed():
        loop.close()
    asyncio.set_event_loop(None)


def kernel_environment(jobs: int, threads: int | None = None) -> dict[str, str]:
    """The environment every page's kernel starts with: the book's flags and, when ``jobs`` pages run at once or
    ``threads`` is given, ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` (``threads``, else cpu_count // jobs unless the caller
    set them)."""
    env = {"LFXAI_BOOK": "1", "LFXAI_NO_PROGRESS": "1"}
    if jobs > 1 or threads:
        n = str(threads or kernel_threads(jobs))
        env.update({var: (n if threads else os.environ.get(var) or n)
                    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")})
    return env


def execute_pages(pages: Sequence[Page], *, mode: str = "inference", jobs: int = 1, force: bool = False,
                  state: dict | None = None, code: str | None = None, registry: Registry | None = None,
                  layout: Layout | None = None, progress: bool | None = None,
                  threads: int | None = None) -> dict[str, Outcome]:
    """:func:`execute_page` for every page, up to ``jobs`` at once; returns ``{key: Outcome}`` in the order of ``pages``.

    The pages of an inference build are independent (each reads the shipped checkpoints and writes only its own
    executed copy and results folder), so running several at once gives the same pages as running them one by one.
    Each kernel is started with ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` = cpu_count // jobs (unless already set), so
    ``jobs`` kernels share the cores instead of oversubscribing them; the longest pages start first (their time in
    the last build, else in the committed ``bench/results/book_timings.csv``, which a fresh clone has). ``state``
    is updated and saved (inference mode) as each page finishes. ``threads`` sets the kernels' thread
    count whatever ``jobs`` is: the same count gives bit-identical numbers (a different one can change the last digits
    where float sums are reordered, e.g. over the feature-visualisation page's 1,000 Adam steps).
    """
    import threading
    from concurrent.futures import ThreadPoolExecutor

    registry = registry or default_registry()
    layout = layout or Layout()
    state = {} if state is None else state
    code = code_hash(layout) if code is None else code
    jobs = max(1, min(int(jobs), len(pages) or 1))
    progress = (sys.stderr.isatty() and jobs == 1) if progress is None else progress
    env = kernel_environment(jobs, threads)
    how = ""
    if jobs > 1 or threads:
        how = (f", {jobs} at once" if jobs > 1 else "") + f" ({env['OMP_NUM_THREADS']} thread(s) per kernel)"
    print(f"{len(pages)} page(s) in {mode} mode{how}", flush=True)
    lock = threading.Lock()
    memo: dict = {}
    done = [0]

    def one(i: int, page: Page) -> Outcome:
        if jobs == 1:
            print(f"[{i}/{len(pages)}] {page.key} ...", end=" " if not progress else "\n", flush=True)
        with lock:
            mine = {page.key: state[page.key]} if page.key in state else {}   # a page writes only its own entry
        try:
            o = execute_page(page, mode=mode, force=force, state=mine, code=code, registry=registry,
                             layout=layout, data_memo=memo, progress=progress)
        finally:
            if threading.current_thread() is not threading.main_thread():
                _close_thread_loop()
        line = _progress_line(o)
        with lock:
            done[0] += 1
            print(line if jobs == 1 else f"[{done[0]}/{len(pages)}] {page.key} ... {line}", flush=True)
            if mode == "inference":
                state.update(mine)
                save_state(layout, state)
        return o

    # the environment is set once around every kernel start: a page restoring it must not unset it for another
    with _environ(**env):
        if jobs == 1:
            results = {p.key: one(i, p) for i, p in enumerate(pages, 1)}
        else:
            with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="lfxai-page") as pool:
                order = _longest_first(pages, state, recorded_seconds(layout.timings_file))
                futures = {pages[k].key: pool.submit(one, k + 1, pages[k]) for k in order}
                results = {key: f.result() for key, f in futures.items()}
    return {p.key: results[p.key] for p in pages}


def _progress_line(o: Outcome) -> str:
    """``executed in 12.3 s``, ``not-run (data: ...)``: how a page ended, for the build's progress lines."""
    detail = f" in {o.seconds:.1f} s" if o.status in ("executed", "failed") else ""
    return f"{o.status}{detail}" + (f" ({'; '.join(brief(r) for r in o.reasons)})" if o.reasons else "")


def recorded_seconds(path: Path) -> dict[str, float]:
    """``{page key: seconds}`` of the executed pages in a timings CSV
    (:func:`lfxai_utils.book.performance.write_timings`); ``{}`` when the file is missing or unreadable (it only
    orders a build)."""
    import csv

    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError):
        return {}
    out = {}
    for r in rows:
        try:
            if r.get("status") == "executed":
                out[r["page"]] = float(r["seconds"])
        except (KeyError, TypeError, ValueError):
            continue
    return out


def _longest_first(pages: Sequence[Page], state: Mapping[str, dict],
                   recorded: Mapping[str, float] | None = None) -> list[int]:
    """Indices of ``pages``, the longest first (a parallel build then ends soonest): each page's time in the last
    build (``state``), else in the committed timings (``recorded``: a fresh clone has no state), else 0."""
    recorded = recorded or {}

    def seconds(k: int) -> float:
        key = pages[k].key
        return float(state.get(key, {}).get("seconds") or recorded.get(key) or 0.0)

    return sorted(range(len(pages)), key=lambda k: -seconds(k))


def outcome_from_state(page: Page, state: Mapping[str, dict], layout: Layout) -> Outcome:
    """A page not selected in this build keeps its previous state (read back from ``state.json``)."""
    prev = state.get(page.key)
    if prev and prev.get("status") in ("executed", "cached") and layout.executed_nb(page).exists():
        return Outcome(page, "cached", prev.get("seconds", 0.0), when=prev.get("when", ""))
    if prev and prev.get("status") == "failed" and layout.executed_nb(page).exists():
        return Outcome(page, "failed", prev.get("seconds", 0.0), list(prev.get("reasons", [])), prev.get("when", ""))
    if prev and prev.get("status") == "not-run" and layout.not_run_md(page).exists():
        return Outcome(page, "not-run", reasons=list(prev.get("reasons", [])), when=prev.get("when", ""))
    if not prev and layout.executed_nb(page).exists():   # state lost: trust papermill's own record
        import nbformat

        meta = nbformat.read(layout.executed_nb(page), as_version=4).metadata.get("papermill", {})
        if meta.get("end_time") and not meta.get("exception"):     # finished without error
            return Outcome(page, "cached", float(meta.get("duration") or 0.0), when=str(meta.get("end_time", "")))
    reasons = [f"not executed yet: run `python -m lfxai_utils.book --only {page.key}`"]
    write_not_run_page(page, reasons, layout)
    return Outcome(page, "not-run", reasons=reasons)

