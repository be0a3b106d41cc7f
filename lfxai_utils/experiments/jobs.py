"""Training jobs: what one unit of ``make checkpoints`` trains, whether it is current, and how a worker trains it.

The book's pages (:data:`lfxai_utils.book.registry.BOOK_CHAPTERS`) say which models they load; every claim module
lists them as :class:`TrainJob` s (its ``SPEC.training_jobs``) and trains one job with ``SPEC.train_job`` — the same
``Experiment.get_model`` calls, settings and seeds its notebook runs in ``-p mode train``. A job is **current** when
each checkpoint it writes exists with a manifest whose identity, training budget and data files (sha256) match
what train mode would produce now (:func:`~lfxai_utils.experiments.common.stale_reasons`); only the others run.

The runner that collects the book pages' jobs and executes them in parallel (``make checkpoints``,
``python -m lfxai_utils.book.train``) is :mod:`lfxai_utils.book.train`; this module is what its worker processes
import (:func:`run_job`, ``_init_worker``).
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

#: Training examples per dataset after the 10 % validation hold-out (for cost estimates only).
TRAIN_EXAMPLES = {"mnist": 54_000, "cifar10": 45_000, "cifar100": 45_000, "dsprites": 597_197}
#: Measured seconds per training image of one optimiser step, 1 thread, 2 processes at once, on this project's
#: 2-core CPU (``bench/results/training_throughput.csv``); only used to order jobs and estimate the ETA.
SECONDS_PER_IMAGE = {"mnist_ae": 1.5e-4, "mnist_classifier": 6e-5, "vae": 6.6e-4, "cifar_ae": 2.7e-3,
                     "cifar_classifier": 1.7e-3, "ecg_ae": 5e-3, "simclr": 5e-2}


@dataclass(frozen=True)
class TrainJob:
    """One unit of training: the checkpoints ``names`` that ``spec_for(notebook).train_job(exp, **selector)`` writes.

    ``data`` is the data requirement ``(dataset, load_dataset kwargs)`` and ``expect`` the budget settings each
    checkpoint must record (``n_epochs``, ``batch_size``, ...); a manifest that differs is stale. ``after`` are
    checkpoints that must be current before this job starts (they are loaded, not trained, by it). ``cost_s`` is a
    rough single-thread estimate, used for the order (longest first) and the ETA.
    """

    notebook: str
    dataset: str
    model: str | None
    names: tuple[str, ...]
    selector: Mapping[str, Any]
    data: tuple[str, Mapping[str, Any]]
    cost_s: float = 60.0
    after: tuple[str, ...] = ()
    expect: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    exp_params: Mapping[str, Any] = field(default_factory=dict)    # passed to ``common.setup`` (e.g. n_epochs)

    @property
    def key(self) -> str:
        return self.names[0]


def estimate_cost(arch: str, n_train: int, n_epochs: int) -> float:
    """Rough training seconds on one thread of this project's CPU (see :data:`SECONDS_PER_IMAGE`)."""
    return SECONDS_PER_IMAGE.get(arch, 1e-3) * int(n_train) * int(n_epochs)


# ------------------------------------------------------------------------------------------ job list
def with_epoch_cap(job: TrainJob, n_epochs: int | None) -> TrainJob:
    """``job`` trained under the page's ``n_epochs`` cap (its expected budget and TracIn interval follow)."""
    from dataclasses import replace

    from .common import capped_checkpoint_every

    if n_epochs is None:
        return job
    cap = int(n_epochs)
    expect = {}
    for name, e in job.expect.items():
        paper = int(e.get("n_epochs") or cap)
        e = {**e, "n_epochs": cap}
        if e.get("checkpoint_every"):
            e["checkpoint_every"] = capped_checkpoint_every(e["checkpoint_every"], paper, cap)
        expect[name] = e
    longest = max((int(e.get("n_epochs") or cap) for e in job.expect.values()), default=cap)
    return replace(job, expect=expect, exp_params={**job.exp_params, "n_epochs": cap},
                   cost_s=job.cost_s * min(1.0, cap / max(longest, 1)))


def data_key(data: tuple[str, Mapping[str, Any]]) -> str:
    """The key of a data requirement ``(dataset, load_dataset kwargs)`` in the ``memo`` of :func:`job_state` (a
    caller that has loaded the data already puts its :func:`~lfxai_utils.experiments.common.json_data_info` there)."""
    return json.dumps([data[0], dict(data[1])], sort_keys=True, default=str)


def _data_info(data: tuple[str, Mapping[str, Any]], data_dir: Path | None, memo: dict) -> dict | None:
    """The manifest-style data description (:func:`json_data_info`) of a requirement; None if the data is absent."""
    from ..data import DatasetNotFoundError, load_dataset
    from .common import json_data_info

    key = data_key(data)
    if key not in memo:
        try:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                memo[key] = json_data_info(load_dataset(data[0], data_dir=data_dir, download=False, progress=False,
                                                        **dict(data[1])))
        except DatasetNotFoundError:
            memo[key] = None
    return memo[key]


def job_state(job: TrainJob, checkpoint_dir: Path, data_dir: Path | None, memo: dict) -> tuple[str, str]:
    """``("current" | "stale" | "missing" | "no-data", reason)`` of a job's checkpoints against the data here.

    Quick check on the manifests only; the worker's ``get_model`` makes the same decision with the full settings.
    """
    from ..checkpoints import CheckpointNotFoundError, read_manifest
    from .common import data_files

    info = _data_info(job.data, data_dir, memo)
    if info is None:
        return "no-data", f"dataset {job.data[0]!r} not found"
    for name in job.names:
        try:
            m = read_manifest(checkpoint_dir, name)
        except CheckpointNotFoundError:
            return "missing", f"{name} not trained"
        except Exception as err:  # noqa: BLE001 - a corrupt manifest is retrained
            return "stale", f"{name}: {err}"
        if data_files(m.get("data", {})) != data_files(info):
            return "stale", f"{name}: trained on other data files"
        want = job.expect.get(name, {})
        saved = m.get("settings", {})
        diff = [k for k, v in want.items() if saved.get(k) != json.loads(json.dumps(v))]
        if diff:
            return "stale", f"{name}: settings differ ({', '.join(diff)})"
    return "current", ""


# ------------------------------------------------------------------------------------------ worker
def _die_with_parent(parent_pid: int | None = None) -> None:
    """Linux: this process gets SIGTERM when the process that started it ends (even by SIGKILL), so that stopping
    ``make checkpoints`` stops its workers instead of leaving them training (and writing the same checkpoints as
    the next run's). Elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if parent_pid is not None and os.getppid() != parent_pid:     # it died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)


def _init_worker(threads: int, counter, n_gpus: int, parent_pid: int | None = None) -> None:
    """Executor initializer: the worker dies with the runner; intra-op threads, and one GPU per worker (round
    robin) where there are GPUs."""
    _die_with_parent(parent_pid)
    if counter is not None and n_gpus:
        with counter.get_lock():
            idx = counter.value
            counter.value += 1
        os.environ["CUDA_VISIBLE_DEVICES"] = str(idx % n_gpus)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    os.environ["LFXAI_TRAIN_THREADS"] = str(threads)


def run_job(job: dict, checkpoint_dir: str, data_dir: str | None, log_dir: str, threads: int) -> dict:
    """Train one job in this process (the executor's task); output goes to ``<log_dir>/<job>.log``.

    Returns ``{"key", "trained", "loaded", "seconds", "error"}``; never raises (the error text is returned).
    """
    import tempfile

    t0 = time.perf_counter()
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    log = Path(log_dir) / f"{job['names'][0]}.log"
    out = {"key": job["names"][0], "trained": [], "loaded": [], "seconds": 0.0, "error": None, "log": str(log)}
    with open(log, "w") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        try:
            import torch

            torch.set_num_threads(int(os.environ.get("LFXAI_TRAIN_THREADS", threads)))
            os.environ.setdefault("TQDM_MININTERVAL", "15")     # epoch progress in the log, not every batch
            from . import spec_for
            from .common import setup

            spec = spec_for(job["notebook"])
            with tempfile.TemporaryDirectory(prefix="lfxai-job-") as tmp:
                exp = setup(job["notebook"], dataset=job["dataset"], model=job["model"], mode="train",
                            reuse_checkpoints=True, checkpoint_dir=checkpoint_dir, data_dir=data_dir,
                            output_dir=tmp, progress=True, datasets=spec.datasets, models=spec.models,
                            n_epochs=(job.get("exp_params") or {}).get("n_epochs"))
                spec.train_job(exp, **job["selector"])
            out["trained"], out["loaded"] = list(exp.trained), list(exp.loaded)
        except BaseException as err:  # noqa: BLE001 - report, do not kill the pool
            traceback.print_exc()
            out["error"] = f"{type(err).__name__}: {err}"
    out["seconds"] = time.perf_counter() - t0
    return out
