"""Build the reproduction book: execute every (notebook, dataset) page with papermill, then run Jupyter Book.

Usage (the README's main command calls this through ``make book``)::

    python -m lfxai_utils.book                 # inference mode from the shipped checkpoints, then build the HTML
    python -m lfxai_utils.book --list          # every page, whether it can run here, and why not
    python -m lfxai_utils.book --only mnist    # only pages whose key contains "mnist" (others keep their state)
    python -m lfxai_utils.book --no-html       # execute/refresh pages only
    python -m lfxai_utils.book --jobs 2        # two independent pages at once, one kernel thread each on 2 cores
    python -m lfxai_utils.book --train-checkpoints --only claim1_feature   # retrain and save checkpoints

Every page of the registry (:data:`lfxai_utils.experiments.BOOK_CHAPTERS`) whose notebook exists ends up as
``book/_executed/<key>.ipynb`` (executed) or, when its data or checkpoints are absent here, as
``book/_executed/<key>.md`` explaining exactly why and how to run it. A notebook that raises is reported with
papermill's saved exception; the rest of the book is still built and the command exits non-zero.

Execution is incremental: a page whose notebook, parameters, library code, checkpoints and data did not change
since its last successful run is not executed again (``book/_executed/state.json`` keeps the fingerprints).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from ._utils import TIMINGS_TOTAL, VERDICTS, atomic_write

ROOT = Path(__file__).resolve().parents[1]
MODES = ("inference", "train")
#: library files that do not influence what a notebook computes (the book builder itself)
_NOT_CODE = {"book.py", "book_sphinx.py"}
DATASET_LABELS = {"mnist": "MNIST", "ecg5000": "ECG5000", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100",
                  "dsprites": "dSprites"}
#: sequential vs parallel builds (``--record-builds``; the Performance page reads it)
BUILDS_CSV = "bench/results/book_builds.csv"
BUILD_COLUMNS = ["selection", "jobs", "kernel_threads", "pages_executed", "pages_cached", "pages_not_run",
                 "pages_failed", "execute_s", "total_s", "html", "load_1min", "machine", "when"]
#: kernel options: no "running over TCP without encryption" warning in the middle of the progress lines
KERNEL_ARGS = ["--IPKernelApp.log_level=ERROR"]


# ------------------------------------------------------------------------------------------------ registry
@dataclass(frozen=True)
class Page:
    """One executed page of the book: a notebook run on one dataset (and model variant).

    ``params`` are papermill parameters used in both modes (e.g. reduced budgets for this machine);
    ``train_params`` are added in train mode only (e.g. an ``n_epochs`` cap for ``--train-checkpoints``).
    """

    notebook: str
    dataset: str
    title: str
    model: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    train_params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.notebook}__{self.dataset}" + (f"-{self.model}" if self.model else "")

    @property
    def label(self) -> str:
        """Dataset (and model) as shown in tables: ``MNIST``, ``CIFAR-10 (simclr)``."""
        return DATASET_LABELS.get(self.dataset, self.dataset) + (f" ({self.model})" if self.model else "")

    def parameters(self, mode: str = "inference") -> dict[str, Any]:
        """The papermill parameters of this page in ``mode`` (without the book's output/checkpoint folders)."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; valid values: {', '.join(MODES)}")
        p: dict[str, Any] = {"dataset": self.dataset}
        if self.model:
            p["model"] = self.model
        p["mode"] = mode
        p.update(self.params)
        if mode == "train":
            p.update(self.train_params)
        return p


@dataclass(frozen=True)
class Chapter:
    title: str
    intro: str  # markdown page in book/ (without extension)
    notebook: str
    pages: tuple[Page, ...]


@dataclass
class Registry:
    """What the book is made of and what each page needs (injectable for tests)."""

    chapters: Sequence[Chapter]
    data_requirements: Callable[[str, str, str | None], list]      # (notebook, dataset, model) -> [(name, kwargs)]
    required_checkpoints: Callable[..., list]   # (notebook, dataset, model[, params=page parameters]) -> [names]


def default_registry() -> Registry:
    from . import experiments

    return Registry(experiments.BOOK_CHAPTERS, experiments.data_requirements, experiments.required_checkpoints)


@dataclass
class Layout:
    """Where the book's inputs and outputs live (the repository by default; a temp folder in tests)."""

    root: Path = ROOT
    data_dir: Path | None = None   # None: $LFXAI_DATA_DIR, then <repo>/data (lfxai_utils.data's search order)

    @property
    def notebooks(self) -> Path:
        return self.root / "notebooks"

    @property
    def book(self) -> Path:
        return self.root / "book"

    @property
    def executed(self) -> Path:
        return self.book / "_executed"

    @property
    def generated(self) -> Path:
        return self.book / "_generated"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def state_file(self) -> Path:
        return self.executed / "state.json"

    @property
    def train_runs(self) -> Path:
        return self.root / "_build" / "train_runs"

    def notebook(self, page: Page) -> Path:
        return self.notebooks / f"{page.notebook}.ipynb"

    def output_dir(self, page: Page, mode: str = "inference") -> Path:
        return (self.executed if mode == "inference" else self.train_runs) / "results" / page.key

    def executed_nb(self, page: Page, mode: str = "inference") -> Path:
        return (self.executed if mode == "inference" else self.train_runs) / f"{page.key}.ipynb"

    def not_run_md(self, page: Page) -> Path:
        return self.executed / f"{page.key}.md"

    def rel(self, path: Path) -> str:
        try:
            return Path(path).resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return str(path)


def chapters(registry: Registry | None = None, layout: Layout | None = None) -> list[Chapter]:
    """The book's chapters whose notebook exists in ``notebooks/`` (the others are left out until written)."""
    registry = registry or default_registry()
    layout = layout or Layout()
    return [c for c in registry.chapters if (layout.notebooks / f"{c.notebook}.ipynb").exists()]


def all_pages(registry: Registry | None = None, layout: Layout | None = None) -> list[Page]:
    return [p for c in chapters(registry, layout) for p in c.pages]


# --------------------------------------------------------------------------------------------- toc
def render_toc(registry: Registry | None = None, layout: Layout | None = None) -> str:
    """The ``_toc.yml`` that lists every page (generated here; ``tests/test_book.py`` checks the committed copy)."""
    lines = [
        "# Generated by `python -m lfxai_utils.book --write-toc`; do not edit by hand.",
        "format: jb-book",
        "root: book/intro",
        "parts:",
        "  - caption: Overview",
        "    chapters:",
        "      - file: book/_generated/results",
        "      - file: book/methods",
        "      - file: book/_generated/not_run",
    ]
    chs = chapters(registry, layout)
    if chs:
        lines += ["  - caption: Claims and extensions", "    chapters:"]
    for c in chs:
        lines.append(f"      - file: book/{c.intro}")
        if c.pages:
            lines.append("        sections:")
            for p in c.pages:
                lines += [f"          - file: book/_executed/{p.key}", f"            title: {json.dumps(p.title)}"]
    lines += [
        "  - caption: Engineering",
        "    chapters:",
        "      - file: book/_generated/api",
        "      - file: book/_generated/performance",
    ]
    return "\n".join(lines) + "\n"


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


def _pm_arg(name: str, value: Any) -> str:
    """One papermill command-line parameter that round-trips ``value`` with its type."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, float)):
        return f"-p {name} {value}"
    if isinstance(value, str):
        try:   # papermill would turn "10", "True" or "None" into a number/bool/None: pass it raw
            json.loads(value.lower() if value in ("True", "False") else value)
            retyped = True
        except ValueError:
            retyped = value == "None"
        return f"{'-r' if retyped else '-p'} {name} {shlex.quote(value)}"
    return f"-y {shlex.quote(f'{name}: {json.dumps(value)}')}"


def papermill_command(page: Page, mode: str = "inference", out: str = "out.ipynb", **extra: Any) -> str:
    params = {**page.parameters(mode), **extra}
    args = " ".join(_pm_arg(k, v) for k, v in params.items())
    return f"papermill notebooks/{page.notebook}.ipynb {out} {args}"


# -------------------------------------------------------------------------------- requirements
@dataclass
class Readiness:
    ready: bool
    reasons: list[str]
    fingerprint: dict[str, Any]


def _data_fingerprint(name: str, kwargs: Mapping[str, Any], layout: Layout, memo: dict) -> tuple[Any, str | None]:
    """(fingerprint of the files ``load_dataset`` verified, None) or (None, reason it cannot be loaded here)."""
    from .data import ChecksumError, DatasetNotFoundError, load_dataset, search_dirs

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


def _required_checkpoints(registry: Registry, page: Page, mode: str) -> list[str]:
    """The registry's checkpoint list for this page, given the page's parameters when it takes them."""
    import inspect

    fn = registry.required_checkpoints
    try:
        takes_params = "params" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        takes_params = False
    if takes_params:
        return list(fn(page.notebook, page.dataset, page.model, params=page.parameters(mode)))
    return list(fn(page.notebook, page.dataset, page.model))


def check_page(page: Page, mode: str = "inference", *, registry: Registry | None = None,
               layout: Layout | None = None, data_memo: dict | None = None) -> Readiness:
    """Is everything this page needs present here? Returns the reasons if not, and a fingerprint of the inputs.

    Data: every ``data_requirements`` entry must load with ``download=False``. Checkpoints (inference mode only):
    every ``required_checkpoints`` name needs its ``.pt`` and its ``.json`` manifest in ``checkpoints/``.
    """
    registry = registry or default_registry()
    layout = layout or Layout()
    memo = {} if data_memo is None else data_memo
    reasons: list[str] = []
    fp: dict[str, Any] = {"data": {}, "checkpoints": {}}
    for name, kwargs in registry.data_requirements(page.notebook, page.dataset, page.model):
        finger, reason = _data_fingerprint(name, kwargs or {}, layout, memo)
        if reason:
            reasons.append(reason)
        else:
            fp["data"][f"{name} {json.dumps(dict(kwargs or {}), sort_keys=True, default=str)}"] = finger
    if mode == "inference":
        absent, unlisted = [], []
        for name in _required_checkpoints(registry, page, mode):
            pt, manifest = layout.checkpoints / f"{name}.pt", layout.checkpoints / f"{name}.json"
            if not pt.is_file():
                absent.append(f"`checkpoints/{name}.pt`")
            elif not manifest.is_file():
                unlisted.append(f"`checkpoints/{name}.json`")
            else:
                fp["checkpoints"][name] = {"manifest": hashlib.sha256(manifest.read_bytes()).hexdigest(),
                                           "size": pt.stat().st_size}
        if absent:
            reasons.append(f"checkpoints not shipped ({len(absent)}): {', '.join(absent)}")
        if unlisted:
            reasons.append(f"checkpoint manifests missing ({len(unlisted)}): {', '.join(unlisted)}")
    return Readiness(not reasons, reasons, fp)


def brief(reason: str, keep: int = 3) -> str:
    """``reason`` with a long list of `names` cut to the first ``keep`` (for tables)."""
    items = re.findall(r"`[^`]+`", reason)
    m = re.search(r"(`[^`]+`(?:, `[^`]+`)+)$", reason)
    if not m or len(items) <= keep + 1:
        return reason
    names = re.findall(r"`[^`]+`", m.group(1))
    if len(names) <= keep + 1:
        return reason
    return reason[:m.start()] + ", ".join(names[:keep]) + f" and {len(names) - keep} more"


def code_hash(layout: Layout | None = None) -> str:
    """Hash of the library code the notebooks run (not the book builder) and of the key package versions."""
    from importlib.metadata import PackageNotFoundError, version

    layout = layout or Layout()
    h = hashlib.sha256()
    for f in sorted((layout.root / "lfxai_utils").rglob("*.py")):
        if f.name in _NOT_CODE and f.parent.name == "lfxai_utils":
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


# ---------------------------------------------------------------------------------- not-run pages
def _md(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def run_instructions(page: Page) -> str:
    """The commands that execute this page, for the not-run page and the overview."""
    return (
        "```bash\n"
        "# with the data in a folder named by $LFXAI_DATA_DIR (or data/), from the shipped checkpoints:\n"
        f"{papermill_command(page, 'inference')}\n"
        "# or train every model the page needs first (GPU recommended; reuses matching checkpoints):\n"
        f"{papermill_command(page, 'train', reuse_checkpoints=True)}\n"
        "# then put the page into the book:\n"
        f"python -m lfxai_utils.book --only {page.key}\n"
        "```\n"
    )


def render_not_run_page(page: Page, reasons: Sequence[str]) -> str:
    """The page shown instead of an executed notebook: what is missing here (``reasons``), the standing reason the
    project's machines cannot run it (:func:`~lfxai_utils.experiments.not_run_note`, when there is one), and the
    commands that run it elsewhere."""
    from .experiments import not_run_note

    standing = not_run_note(page.notebook, page.dataset, page.model)
    return (
        f"# {page.title}\n\n"
        ":::{admonition} Not run here\n:class: warning\n"
        "This page could not be executed on the machine that built this book, so it shows **no results**.\n"
        ":::\n\n**Why:**\n\n" + "\n".join(f"- {r}" for r in reasons) + "\n\n"
        + (f"{standing}\n\n" if standing else "")
        + "**How to run it:**\n\n" + run_instructions(page)
    )


def _write_not_run_page(page: Page, reasons: Sequence[str], layout: Layout) -> None:
    layout.executed.mkdir(parents=True, exist_ok=True)
    layout.executed_nb(page).unlink(missing_ok=True)
    with atomic_write(layout.not_run_md(page), "w") as f:
        f.write(render_not_run_page(page, reasons))


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
             f"in {seconds:.0f} s on {_machine()}.", ""]
    if own:
        lines.append("The book sets these parameters (everything else keeps the notebook's default):")
        lines.append("")
        lines.append("| parameter | this run | notebook default |")
        lines.append("|---|---|---|")
        lines += [f"| `{k}` | `{_md(repr(v))}` | `{_md(defaults.get(k, '?'))}` |" for k, v in own]
    else:
        lines.append("Every parameter keeps the notebook's default (the paper's settings).")
    lines += ["", f"Run it yourself: `{papermill_command(page, mode)}`", ":::"]
    return "\n".join(lines)


def _machine() -> str:
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


def execute_page(page: Page, *, mode: str = "inference", force: bool = False, state: dict | None = None,
                 code: str | None = None, registry: Registry | None = None, layout: Layout | None = None,
                 data_memo: dict | None = None, progress: bool = False) -> Outcome:
    """Run one page with papermill (or write its not-run page, or keep the cached copy)."""
    import papermill as pm

    registry = registry or default_registry()
    layout = layout or Layout()
    state = {} if state is None else state
    when = _dt.datetime.now().isoformat(timespec="seconds")
    readiness = check_page(page, mode, registry=registry, layout=layout, data_memo=data_memo)
    if not readiness.ready:
        if mode == "inference":
            _write_not_run_page(page, readiness.reasons, layout)
            state[page.key] = {"status": "not-run", "reasons": readiness.reasons, "when": when}
        return Outcome(page, "not-run", reasons=readiness.reasons, when=when)

    source = layout.notebook(page)
    try:
        defaults = notebook_parameters(source)
    except Exception as err:  # noqa: BLE001 - unreadable notebook or no parameters cell
        reason = f"{layout.rel(source)}: {type(err).__name__}: {err}"
        if mode == "inference":
            state[page.key] = {"status": "failed", "reasons": [reason], "when": when}
        return Outcome(page, "failed", reasons=[reason], when=when)
    out_dir, out_nb = layout.output_dir(page, mode), layout.executed_nb(page, mode)
    params = page.parameters(mode)
    if mode == "train":
        params["reuse_checkpoints"] = True
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        reason = (f"the book passes parameters the notebook does not declare: {', '.join(unknown)} "
                  f"(its parameters: {', '.join(defaults)})")
        if mode == "inference":
            state[page.key] = {"status": "failed", "reasons": [reason], "when": when}
        return Outcome(page, "failed", reasons=[reason], when=when)
    params["output_dir"] = layout.rel(out_dir)
    if layout.checkpoints.resolve() != (ROOT / "checkpoints").resolve():
        params["checkpoint_dir"] = str(layout.checkpoints)
    if layout.data_dir is not None:
        params["data_dir"] = str(layout.data_dir)

    code = code_hash(layout) if code is None else code
    digest = page_digest(page, params, readiness, code, layout)
    prev = state.get(page.key, {})
    if (mode == "inference" and not force and prev.get("status") in ("executed", "cached")
            and prev.get("digest") == digest and out_nb.exists()):
        return Outcome(page, "cached", prev.get("seconds", 0.0), when=prev.get("when", ""))

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
            pm.execute_notebook(str(source), str(out_nb), parameters=params, kernel_name="python3",
                                cwd=str(layout.root), progress_bar=progress, log_output=False,
                                extra_arguments=KERNEL_ARGS)
    except pm.PapermillExecutionError as err:
        reason = f"cell [{err.exec_count}]: {err.ename}: {err.evalue}"
    except Exception as err:  # noqa: BLE001 - kernel died, missing kernel, ...
        reason = _papermill_error(out_nb) if out_nb.exists() else f"{type(err).__name__}: {err}"
    seconds = time.perf_counter() - t0
    if reason is not None:
        if mode == "inference":
            state[page.key] = {"status": "failed", "reasons": [reason], "seconds": seconds, "when": when}
        return Outcome(page, "failed", seconds, [reason], when)
    _postprocess(out_nb, _params_note(page, mode, params, defaults, seconds), page.label)
    if mode == "inference":
        state[page.key] = {"status": "executed", "digest": digest, "seconds": seconds, "when": when}
    return Outcome(page, "executed", seconds, when=when)


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


def execute_pages(pages: Sequence[Page], *, mode: str = "inference", jobs: int = 1, force: bool = False,
                  state: dict | None = None, code: str | None = None, registry: Registry | None = None,
                  layout: Layout | None = None, progress: bool | None = None,
                  threads: int | None = None) -> dict[str, Outcome]:
    """:func:`execute_page` for every page, up to ``jobs`` at once; returns ``{key: Outcome}`` in the order of ``pages``.

    The pages of an inference build are independent (each reads the shipped checkpoints and writes only its own
    executed copy and results folder), so running several at once gives the same pages as running them one by one.
    Each kernel is started with ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` = cpu_count // jobs (unless already set), so
    ``jobs`` kernels share the cores instead of oversubscribing them; the longest pages of the last build start
    first. ``state`` is updated and saved (inference mode) as each page finishes. ``threads`` sets the kernels' thread
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
    env = {"LFXAI_BOOK": "1", "LFXAI_NO_PROGRESS": "1"}
    how = ""
    if jobs > 1 or threads:
        n = str(threads or kernel_threads(jobs))
        env.update({var: (n if threads else os.environ.get(var) or n) for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")})
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
        detail = f" in {o.seconds:.1f} s" if o.status in ("executed", "failed") else ""
        line = f"{o.status}{detail}" + (f" ({'; '.join(brief(r) for r in o.reasons)})" if o.reasons else "")
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
            longest_first = sorted(range(len(pages)), key=lambda k: -float(state.get(pages[k].key, {})
                                                                          .get("seconds") or 0.0))
            with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="lfxai-page") as pool:
                futures = {pages[k].key: pool.submit(one, k + 1, pages[k]) for k in longest_first}
                results = {key: f.result() for key, f in futures.items()}
    return {p.key: results[p.key] for p in pages}


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
    _write_not_run_page(page, reasons, layout)
    return Outcome(page, "not-run", reasons=reasons)


# ------------------------------------------------------------------------------- generated pages
def read_summary(page: Page, layout: Layout) -> "Any":
    """The ``summary.csv`` an executed page wrote (a DataFrame of strings), or None."""
    import pandas as pd

    csv = layout.output_dir(page) / "summary.csv"
    if not csv.exists():
        return None
    return pd.read_csv(csv, dtype=str, keep_default_na=False)


def _page_link(o: Outcome, text: str | None = None, prefix: str = "../_executed/") -> str:
    suffix = ".md" if o.status == "not-run" else ".ipynb"
    return f"[{text or o.page.title}]({prefix}{o.page.key}{suffix})"


def _verdict_cell(df) -> str:
    if df is None or df.empty:
        return "no verdicts"
    counts = df["verdict"].value_counts()
    return ", ".join(f"{counts[v]} {v}" for v in VERDICTS if v in counts) or "no verdicts"


def render_results(outcomes: Sequence[Outcome], chapters_: Sequence[Chapter], layout: Layout) -> str:
    """The results overview: claims × datasets at a glance, then every verdict the notebooks wrote."""
    import pandas as pd

    by_key = {o.page.key: o for o in outcomes}
    summaries = {o.page.key: read_summary(o.page, layout) for o in outcomes if o.status in ("executed", "cached")}
    columns: list[tuple[str, str | None]] = []
    for c in chapters_:
        for p in c.pages:
            if (p.dataset, p.model) not in columns:
                columns.append((p.dataset, p.model))
    lines = [
        "# Results overview",
        "",
        "Every number below was read from the `summary.csv` that the notebook of a page wrote when it ran for this "
        "build; nothing here is typed by hand. *Anchor* is the number or statement of the paper or of a published "
        "reproduction (its source is named), and *verdict* applies the stated criterion to **our** numbers. "
        "Several pages run on reduced budgets on this CPU-only machine: each page states its parameters.",
        "",
        "## At a glance",
        "",
        "One row per claim, one column per dataset: how many of the page's verdicts hold. "
        "*not run* means the data or the checkpoints are not available where this book was built "
        "(see [What was not run here](not_run.md)); *—* means the claim is not tested on that dataset.",
        "",
        "| claim | " + " | ".join(Page("", d, "", m).label for d, m in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for c in chapters_:
        cells = []
        for d, m in columns:
            page = next((p for p in c.pages if (p.dataset, p.model) == (d, m)), None)
            o = by_key.get(page.key) if page else None
            if o is None:
                cells.append("—")
            elif o.status == "failed":
                cells.append(_page_link(o, "**failed**"))
            elif o.status == "not-run":
                cells.append(_page_link(o, "not run"))
            else:
                cells.append(_page_link(o, _verdict_cell(summaries.get(o.page.key))))
        lines.append(f"| [{c.title}](../{c.intro}.md) | " + " | ".join(cells) + " |")
    lines += ["", "## Every verdict", ""]
    any_rows = False
    for c in chapters_:
        frames = []
        for p in c.pages:
            df = summaries.get(p.key)
            if df is not None and not df.empty:
                df = df.copy()
                df.insert(0, "page", _page_link(by_key[p.key], p.label))
                frames.append(df)
        if not frames:
            continue
        any_rows = True
        table = pd.concat(frames, ignore_index=True)
        # The criterion and the anchor repeat across a claim's rows: each distinct (anchor, source, criterion) is
        # written once under the table and the rows point at it, so the table keeps readable column widths.
        notes: dict[tuple[str, str, str], int] = {}   # (anchor, source, criterion) -> its number, in first-seen order
        lines += [f"### {c.title}", "", "| dataset | quantity | ours | verdict | anchor & criterion |",
                  "|---|---|---|---|---|"]
        for r in table.to_dict("records"):
            note = (r.get("anchor", ""), r.get("anchor_source", ""), r.get("criterion", ""))
            number = notes.setdefault(note, len(notes) + 1)
            lines.append(f"| {r['page']} | {_md(r.get('quantity', ''))} | {_md(r.get('ours', ''))} | "
                         f"**{_md(r.get('verdict', ''))}** | [{number}] |")
        lines.append("")
        for (anchor, source, criterion), i in notes.items():
            lines.append(f"{i}. **Anchor:** {_md(anchor) or '—'}" + (f" (*{_md(source)}*)" if source else "")
                         + f". **Criterion:** {_md(criterion) or '—'}")
        lines.append("")
    if not any_rows:
        lines += ["No executed page wrote a verdict in this build.", ""]
    missing = [o for o in outcomes if o.status in ("not-run", "failed")]
    if missing:
        lines += ["## Pages without results in this build", ""]
        lines += [f"- {_page_link(o)}: {'; '.join(brief(r) for r in o.reasons) or o.status}" for o in missing]
        lines += [""]
    lines += ["## Execution times", "",
              "Wall time of each page's last execution on the machine that built this book "
              "(*cached*: unchanged since then, so not executed again).", "",
              "| page | status | seconds | executed |", "|---|---|---|---|"]
    for o in outcomes:
        secs = f"{o.seconds:.1f}" if o.seconds else ""
        lines.append(f"| {_page_link(o)} | {o.status} | {secs} | {o.when} |")
    return "\n".join(lines) + "\n"


def render_not_run(outcomes: Sequence[Outcome]) -> str:
    skipped = [o for o in outcomes if o.status == "not-run"]
    failed = [o for o in outcomes if o.status == "failed"]
    lines = [
        "# What was not run here",
        "",
        "This book was built on a machine without internet access and without a GPU, from the checkpoints shipped "
        "in `checkpoints/`. Datasets that are not available there (CIFAR-10, CIFAR-100 and dSprites; only part of "
        "MNIST and ECG5000) and models that were not trained there have no results in this build. Each page below "
        "says exactly why, and gives the papermill commands that run it for a user who has the data (it is "
        "downloaded and checksum-verified automatically on a machine with internet) or a GPU.",
        "",
    ]
    if not skipped and not failed:
        lines.append("Every page of the book was executed in this build.")
    if skipped:
        lines += ["Each page's own text has the full commands (inference from checkpoints, or training first).", ""]
        for o in skipped:
            lines += [f"- {_page_link(o)}: {'; '.join(brief(r) for r in o.reasons)}", "",
                      "  ```bash", f"  {papermill_command(o.page, 'train', reuse_checkpoints=True)}", "  ```", ""]
    if failed:
        lines += ["", "## Pages whose notebook raised an error", ""]
        lines += [f"- {_page_link(o)}: `{_md('; '.join(o.reasons))}`" for o in failed]
    return "\n".join(lines) + "\n"


#: API page order: the method first, then data and models, then what the notebooks and the book use
API_MODULES = ("features", "examples", "metrics", "data", "fixtures", "models", "training", "checkpoints",
               "experiments.common", "params", "report", "plotting", "visualisation", "book")
API_TITLES = {"features": "Label-free feature importance", "examples": "Label-free example importance",
              "metrics": "Metrics", "data": "Data", "fixtures": "Test fixtures", "models": "Models",
              "training": "Training", "checkpoints": "Checkpoints",
              "experiments.common": "Experiments: what every notebook shares",
              "params": "Notebook parameters: types and ranges", "report": "Verdicts and reports",
              "plotting": "Figures", "visualisation": "Feature visualisation", "book": "The book builder"}


def _fence(text: str, lang: str = "") -> str:
    ticks = "`" * max(3, max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    return f"{ticks}{lang}\n{text}\n{ticks}"


def _public_members(mod) -> list[tuple[str, Any]]:
    import inspect

    names = getattr(mod, "__all__", None)
    if names is None:
        names = [n for n, v in vars(mod).items() if not n.startswith("_")
                 and (inspect.isfunction(v) or inspect.isclass(v)) and getattr(v, "__module__", "") == mod.__name__]
    out = []
    for n in names:
        try:
            v = getattr(mod, n)
        except Exception:  # noqa: BLE001 - a lazy export that cannot load here
            continue
        if inspect.isfunction(v) or inspect.isclass(v):
            out.append((n, v))
    return out


def _signature(name: str, obj: Any) -> str:
    import inspect

    class _Raw(str):   # a string annotation shown without quotes (the package uses postponed annotations)
        def __repr__(self) -> str:
            return str(self)

    def raw(a):
        return _Raw(a) if isinstance(a, str) else a

    try:
        sig = inspect.signature(obj)
        sig = sig.replace(parameters=[q.replace(annotation=raw(q.annotation)) for q in sig.parameters.values()],
                          return_annotation=raw(sig.return_annotation))
        sig = str(sig)
    except (TypeError, ValueError):
        sig = "(...)"
    return f"{'class ' if inspect.isclass(obj) else 'def '}{name}{sig}"


def render_api(modules: Sequence[str] = API_MODULES, claim_modules: bool = True) -> str:
    """The API reference page, generated from the docstrings (shown verbatim: no docstring can break the build)."""
    import importlib
    import inspect

    names = list(modules)
    if claim_modules:
        from .experiments import _MODULES

        names += [f"experiments.{m}" for m in sorted(set(_MODULES.values()))
                  if (ROOT / "lfxai_utils" / "experiments" / f"{m}.py").exists()]
    lines = ["# API reference", "",
             "The notebooks are thin: everything they compute lives in the `lfxai_utils` package of this "
             "repository (installed into `.venv` by `make venv`). This page is generated from the package's "
             "docstrings by `python -m lfxai_utils.book`; read the source for the details.", ""]
    for short in names:
        try:
            mod = importlib.import_module(f"lfxai_utils.{short}")
        except Exception as err:  # noqa: BLE001 - a module that does not import is reported, not fatal here
            lines += [f"## `lfxai_utils.{short}`", "", f"(could not be imported: `{type(err).__name__}`)", ""]
            continue
        title = API_TITLES.get(short) or (f"Claim module `{short.split('.')[-1]}`" if short.startswith("experiments.")
                                          else short)
        lines += [f"## {title}", "", f"`lfxai_utils.{short}`", ""]
        doc = inspect.getdoc(mod)
        if doc:
            lines += [_fence(doc, "text"), ""]
        for name, obj in _public_members(mod):
            lines += [f"### `{name}`", "", _fence(_signature(name, obj), "python"), ""]
            doc = inspect.getdoc(obj)
            if doc and not (inspect.isclass(obj) and doc == inspect.getdoc(object)):
                lines += [_fence(doc, "text"), ""]
    return "\n".join(lines) + "\n"


def write_generated_pages(outcomes: Sequence[Outcome], chapters_: Sequence[Chapter], layout: Layout) -> None:
    from .report import render_performance

    layout.generated.mkdir(parents=True, exist_ok=True)
    for name, text in {
        "results.md": render_results(outcomes, chapters_, layout),
        "not_run.md": render_not_run(outcomes),
        "performance.md": render_performance(layout.root / "bench" / "results") + "\n"
                          + render_builds(layout.root / BUILDS_CSV),
        "api.md": render_api(),
    }.items():
        with atomic_write(layout.generated / name, "w") as f:
            f.write(text)


def build_html(layout: Layout | None = None, strict: bool = True) -> int:
    """Run Jupyter Book 1 on the repository root (``_config.yml``/``_toc.yml``); return its exit code."""
    layout = layout or Layout()
    exe = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(exe) if exe.exists() else "jupyter-book", "build", str(layout.root), "--builder", "html"]
    if strict:
        cmd += ["-W", "-n", "--keep-going", "-q"]   # -q: warnings and errors only
    print("$", " ".join(cmd), flush=True)
    # the book's Sphinx extension (lfxai_utils.book_sphinx) must import even without `pip install -e .`
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return subprocess.call(cmd, cwd=layout.root, env=env)


# ------------------------------------------------------------------------------------------ main
def _write_toc_if_changed(registry: Registry, layout: Layout) -> bool:
    toc = render_toc(registry, layout)
    path = layout.root / "_toc.yml"
    if path.exists() and path.read_text() == toc:
        return False
    with atomic_write(path, "w") as f:
        f.write(toc)
    return True


def run(argv: Sequence[str] | None = None, *, registry: Registry | None = None, layout: Layout | None = None,
        html: Callable[[Layout], int] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lfxai_utils.book", description=__doc__.split("\n\n")[0])
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
        memo: dict = {}
        for p in selected:
            r = check_page(p, mode, registry=registry, layout=layout, data_memo=memo)
            print(f"{p.key:50s} {'ready' if r.ready else 'NOT READY: ' + '; '.join(brief(x) for x in r.reasons)}")
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
    elif mode == "inference" and not args.no_html:
        print(f"book built: {layout.rel(layout.root / '_build' / 'html' / 'index.html')}")
    if mode == "train" and not failed:
        print("checkpoints written; `make book` now executes the pages from them")
    total = time.perf_counter() - t_start
    print(f"total wall time {total:.1f} s", flush=True)
    if args.record_timings and mode == "inference":
        write_timings(Path(args.record_timings), [outcomes[p.key] for p in selected if p.key in outcomes], total,
                      html_rc=None if args.no_html else rc, jobs=jobs)
        print(f"timings written to {args.record_timings}")
    if args.record_builds and mode == "inference" and not args.html_only:
        record_build(Path(args.record_builds), [outcomes[p.key] for p in selected if p.key in outcomes],
                     jobs=jobs, exec_seconds=exec_seconds, total=total, only=args.only,
                     html_rc=None if args.no_html else rc, load=load, threads=args.threads)
        print(f"build time (--jobs {jobs}) written to {args.record_builds}")
    return 1 if (failed or rc) else 0


def write_timings(path: Path, outcomes: Sequence[Outcome], total: float, *, html_rc: int | None,
                  jobs: int = 1) -> None:
    """One row per page (status, seconds, when) and a last row with the whole command's wall time, atomically.

    ``seconds`` of a cached page is the time it took when it was last executed, not in this build: the ``status``
    column says which, and the ``total`` row is this build's own wall time (page execution + HTML).
    """
    import pandas as pd

    rows = [{"page": o.page.key, "status": o.status, "seconds": round(o.seconds, 1) if o.seconds else None,
             "when": o.when} for o in outcomes]
    html = "" if html_rc is None else (" + HTML" if html_rc == 0 else " + HTML (failed)")
    at_once = f", {jobs} pages at once" if jobs > 1 else ""
    rows.append({"page": f"{TIMINGS_TOTAL}: this build ({len(outcomes)} pages{html}{at_once}, {_machine()})",
                 "status": "",
                 "seconds": round(total, 1), "when": _dt.datetime.now().isoformat(timespec="seconds")})
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as f:
        pd.DataFrame(rows).to_csv(f, index=False)


def record_build(path: Path, outcomes: Sequence[Outcome], *, jobs: int, exec_seconds: float, total: float,
                 only: Sequence[str] = (), html_rc: int | None = None, load: float | None = None,
                 threads: int | None = None) -> None:
    """Keep this build's wall time in ``path``: one row per (selection, jobs, kernel threads), replaced by the next
    such build.

    ``execute_s`` is the wall time of executing the pages (what ``--jobs`` changes), ``total_s`` the whole command's;
    ``load_1min`` the machine's 1-minute load average when the build started (other work slows both).
    """
    import pandas as pd

    counts = {s: sum(o.status == s for o in outcomes) for s in ("executed", "cached", "not-run", "failed")}
    row = {"selection": " ".join(sorted(only)) or "all pages", "jobs": int(jobs),
           "kernel_threads": threads or (kernel_threads(jobs) if jobs > 1 else os.cpu_count() or 1),
           "pages_executed": counts["executed"], "pages_cached": counts["cached"],
           "pages_not_run": counts["not-run"], "pages_failed": counts["failed"],
           "execute_s": round(exec_seconds, 1), "total_s": round(total, 1),
           "html": "" if html_rc is None else ("yes" if html_rc == 0 else "failed"),
           "load_1min": "" if load is None else round(load, 2), "machine": _machine(),
           "when": _dt.datetime.now().isoformat(timespec="seconds")}
    old = pd.read_csv(path, dtype=str, keep_default_na=False) if Path(path).exists() else pd.DataFrame(
        columns=BUILD_COLUMNS)
    same = ((old["selection"] == row["selection"]) & (old["jobs"].astype(str) == str(row["jobs"]))
            & (old["kernel_threads"].astype(str) == str(row["kernel_threads"])))
    keep = old[~same]
    df = pd.concat([keep, pd.DataFrame([{k: str(v) for k, v in row.items()}])], ignore_index=True)
    df = df.reindex(columns=BUILD_COLUMNS).fillna("")
    order = sorted(range(len(df)), key=lambda i: (df["selection"].iloc[i], int(df["jobs"].iloc[i] or 0),
                                                  -int(df["kernel_threads"].iloc[i] or 0)))
    df = df.iloc[order]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as f:
        df.to_csv(f, index=False)


def render_builds(csv: Path) -> str:
    """The Performance page's "Sequential and parallel builds" section, from :data:`BUILDS_CSV`."""
    import pandas as pd

    lines = ["(book-builds)=", "### Sequential and parallel builds", ""]
    if not Path(csv).exists():
        return "\n".join(lines + [f"No build times are recorded here (`{BUILDS_CSV}`): "
                                  "`make book-timings JOBS=1` and `make book-timings JOBS=2` record them.", ""])
    df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    lines += [f"`python -m lfxai_utils.book --jobs N` executes up to N pages at once (`make book JOBS=N`; the pages "
              "of an inference build are independent), each page's kernel limited to cores / N threads "
              "(`OMP_NUM_THREADS`; `--threads` sets it), and produces the same pages as a sequential build "
              "(`tests/test_book.py::test_parallel_build_gives_the_same_pages_as_a_sequential_one`). Kernels with "
              "the same thread count compute the same numbers; a different count can change the last digits where "
              "floating-point sums are reordered (e.g. over the feature-visualisation page's 1,000 Adam steps), so "
              "`--jobs 1 --threads 1` is the sequential build to compare `--jobs 2` with on two cores. Wall times "
              f"below are from `{BUILDS_CSV}` (written by `--record-builds`): *execute* is the time spent executing "
              "the pages, *total* the whole command (checks, pages and HTML). *load* is the machine's 1-minute load "
              "average when the build started: other work running at the same time (e.g. `make checkpoints`) slows "
              "both builds.", ""]
    shown = df.rename(columns={"execute_s": "execute (s)", "total_s": "total (s)", "load_1min": "load",
                               "kernel_threads": "threads/kernel", "pages_executed": "executed",
                               "pages_cached": "cached", "pages_not_run": "not run", "pages_failed": "failed"})
    header = "| " + " | ".join(shown.columns) + " |"
    lines += [header, "|" + "---|" * len(shown.columns)]
    lines += ["| " + " | ".join(_md(v) for v in r) + " |" for r in shown.itertuples(index=False)]
    lines.append("")
    for sel, g in df.groupby("selection", sort=False):
        for _, seq in g[g["jobs"] == "1"].iterrows():
            for _, par in g[g["jobs"] != "1"].iterrows():
                s, q = float(seq["execute_s"] or 0), float(par["execute_s"] or 0)
                if s <= 0 or q <= 0:
                    continue
                line = (f"- {_md(sel)}: executing the pages took {s:,.0f} s one at a time "
                        f"({seq['kernel_threads']} thread(s) per kernel) and {q:,.0f} s with {par['jobs']} at once "
                        f"({par['kernel_threads']} thread(s) per kernel): {s / q:.2f}× faster")
                if seq["pages_executed"] != par["pages_executed"]:
                    line += " — not the same number of executed pages, so not comparable"
                lines.append(line)
    lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
