"""Resumable, parallel checkpoint training: ``make checkpoints`` (``python -m lfxai_utils.experiments.jobs``).

The book's pages (:data:`lfxai_utils.experiments.BOOK_CHAPTERS`) say which models they load; every claim module
lists them as :class:`TrainJob` s (``training_jobs``) and trains one job with ``train_job`` — the same
``Experiment.get_model`` calls, settings and seeds its notebook runs in ``-p mode train``. A job is **current** when
each checkpoint it writes exists with a manifest whose identity, training budget and data files (sha256) match
what train mode would produce now (:func:`~lfxai_utils.experiments.common.stale_reasons`); only the others run.

Jobs are independent of how they are executed: the runner submits them to any ``concurrent.futures``-style
executor (``submit(fn, *args)`` returning an object with ``done()`` and ``result()``):

* ``--executor local`` (default): a :class:`concurrent.futures.ProcessPoolExecutor` with ``--jobs`` worker
  processes, each limited to ``--threads`` intra-op threads (and one GPU each, round robin, where there are GPUs);
* ``--executor slurm``: `submitit <https://github.com/facebookincubator/submitit>`_'s ``AutoExecutor`` (Slurm
  when available, else its local fallback), one job per Slurm task; ``pip install submitit`` first.

Every model is saved atomically by its worker as soon as it is trained, so the command can be stopped at any point
and started again: finished models are kept, and the next run trains only what is still missing or stale. A job
whose dependencies (e.g. ROAR's base model) are not current yet waits for them. Progress: jobs done / total and an
ETA from each job's estimated cost; each job's output goes to ``_build/train-logs/<job>.log``.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

REPO_ROOT = Path(__file__).resolve().parents[2]
LOG_DIR = REPO_ROOT / "_build" / "train-logs"

#: Measured seconds per training image of one optimiser step, 1 thread, 2 processes at once, on this project's
#: 2-core CPU (``bench/results/training_throughput.csv``); only used to order jobs and estimate the ETA.
#: Training examples per dataset after the 10 % validation hold-out (for cost estimates only).
TRAIN_EXAMPLES = {"mnist": 54_000, "cifar10": 45_000, "cifar100": 45_000, "dsprites": 597_197}
SECONDS_PER_IMAGE = {"mnist_ae": 1.5e-4, "mnist_classifier": 6e-5, "vae": 6.6e-4, "cifar_ae": 2.7e-3,
                     "cifar_classifier": 1.7e-3, "ecg_ae": 5e-3, "simclr": 5e-2}


@dataclass(frozen=True)
class TrainJob:
    """One unit of training: the checkpoints ``names`` that ``<module>.train_job(exp, **selector)`` writes.

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


def page_jobs(pages) -> list[TrainJob]:
    """The training jobs of ``pages`` (book pages) in page order, each checkpoint once (pages share models).

    A page's train-mode ``n_epochs`` (a stated CPU budget, e.g. CIFAR-10) caps its jobs (:func:`with_epoch_cap`).
    """
    from . import module_for

    out: dict[tuple[str, ...], TrainJob] = {}
    seen: set[str] = set()
    for page in pages:
        mod = module_for(page.notebook)
        fn = getattr(mod, "training_jobs", None)
        if fn is None:
            continue
        params = {k: v for k, v in page.parameters("train").items() if k not in ("dataset", "model", "mode")}
        for job in fn(page.dataset, page.model, **params):
            new = tuple(n for n in job.names if n not in seen)
            if not new:
                continue
            seen.update(job.names)
            out[job.names] = with_epoch_cap(job, params.get("n_epochs"))
    return list(out.values())


def _data_info(data: tuple[str, Mapping[str, Any]], data_dir: Path | None, memo: dict) -> dict | None:
    """The manifest-style data description (:func:`json_data_info`) of a requirement; None if the data is absent."""
    from ..data import DatasetNotFoundError, load_dataset
    from .common import json_data_info

    key = json.dumps([data[0], dict(data[1])], sort_keys=True, default=str)
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
            from . import module_for
            from .common import setup

            mod = module_for(job["notebook"])
            with tempfile.TemporaryDirectory(prefix="lfxai-job-") as tmp:
                exp = setup(job["notebook"], dataset=job["dataset"], model=job["model"], mode="train",
                            reuse_checkpoints=True, checkpoint_dir=checkpoint_dir, data_dir=data_dir,
                            output_dir=tmp, progress=True, datasets=mod.DATASETS, models=mod.MODELS,
                            n_epochs=(job.get("exp_params") or {}).get("n_epochs"))
                mod.train_job(exp, **job["selector"])
            out["trained"], out["loaded"] = list(exp.trained), list(exp.loaded)
        except BaseException as err:  # noqa: BLE001 - report, do not kill the pool
            traceback.print_exc()
            out["error"] = f"{type(err).__name__}: {err}"
    out["seconds"] = time.perf_counter() - t0
    return out


# ------------------------------------------------------------------------------------------ runner
def make_executor(kind: str, jobs: int, threads: int, log_dir: Path):
    """A ``concurrent.futures``-style executor: local processes, or submitit (Slurm) for a cluster."""
    if kind == "local":
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        n_gpus = 0
        with contextlib.suppress(Exception):
            import torch

            n_gpus = torch.cuda.device_count()
        ctx = mp.get_context("spawn")
        counter = ctx.Value("i", 0)
        return ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_init_worker,
                                   initargs=(threads, counter, n_gpus, os.getpid()))
    if kind == "slurm":
        try:
            import submitit
        except ImportError:
            raise SystemExit("--executor slurm needs submitit: .venv/bin/pip install submitit") from None
        ex = submitit.AutoExecutor(folder=str(log_dir / "submitit"))
        ex.update_parameters(timeout_min=24 * 60, cpus_per_task=max(threads, 1),
                             gpus_per_node=int(os.environ.get("LFXAI_SLURM_GPUS", "1")))
        return ex
    raise SystemExit(f"unknown executor {kind!r}; valid: local, slurm")


def run_jobs(jobs: Sequence[TrainJob], *, executor, checkpoint_dir: Path, data_dir: Path | None, log_dir: Path,
             threads: int = 1, max_parallel: int = 2, poll_s: float = 1.0, progress: bool = True,
             state_fn: Callable[[TrainJob], str] | None = None,
             on_done: Callable[[dict], None] | None = None) -> list[dict]:
    """Submit ``jobs`` in their order (the book's page order) and wait; returns each job's :func:`run_job` result.

    At most ``max_parallel`` jobs are in flight. A job starts once every checkpoint in its ``after`` is current
    (``state_fn``); a job whose dependency failed is skipped with that reason.
    """
    from tqdm.auto import tqdm

    pending = list(jobs)
    running: dict[Any, TrainJob] = {}
    results: list[dict] = []
    failed: set[str] = set()
    total = sum(j.cost_s for j in jobs) or 1.0
    bar = tqdm(total=round(total), unit="s-est", desc=f"training 0/{len(jobs)} jobs", disable=not progress,
               dynamic_ncols=True, smoothing=0)
    names_of = {n: j for j in jobs for n in j.names}

    def ready(j: TrainJob) -> bool | None:
        deps = [d for d in j.after]
        if any(names_of.get(d) is not None and names_of[d].key in failed for d in deps):
            return None
        waiting = [d for d in deps if names_of.get(d) in pending or names_of.get(d) in running.values()]
        return not waiting

    while pending or running:
        for j in list(pending):
            if len(running) >= max_parallel:
                break
            r = ready(j)
            if r is None:
                pending.remove(j)
                failed.add(j.key)
                results.append({"key": j.key, "trained": [], "loaded": [], "seconds": 0.0,
                                "error": "skipped: a checkpoint it needs failed to train"})
                bar.update(round(j.cost_s))
            elif r:
                pending.remove(j)
                fut = executor.submit(run_job, asdict(j), str(checkpoint_dir), None if data_dir is None
                                      else str(data_dir), str(log_dir), threads)
                running[fut] = j
        done = [f for f in running if f.done()]
        if not done:
            time.sleep(poll_s)
            continue
        for f in done:
            j = running.pop(f)
            try:
                res = f.result()
            except Exception as err:  # noqa: BLE001 - a worker that died
                res = {"key": j.key, "trained": [], "loaded": [], "seconds": 0.0, "error": f"{type(err).__name__}: {err}"}
            if res.get("error"):
                failed.add(j.key)
            results.append(res)
            if on_done:
                on_done(res)
            bar.update(round(j.cost_s))
            bar.set_description(f"training {len(results)}/{len(jobs)} jobs")
            status = "FAILED " + res["error"] if res.get("error") else f"trained {len(res['trained'])}"
            tqdm.write(f"[{len(results)}/{len(jobs)}] {j.key}: {status} ({res['seconds']:.0f} s)")
    bar.close()
    return results


def select_pages(pages, patterns: Sequence[str]) -> list:
    """Pages whose key contains a pattern (a pattern equal to a page key selects that page only), in the order
    of the patterns (the first pattern's pages train first); every page, in the book's order, without patterns."""
    if not patterns:
        return list(pages)
    keys = {p.key for p in pages}
    out: dict[str, Any] = {}
    for s in patterns:
        for p in pages:
            if (p.key == s if s in keys else s in p.key):
                out.setdefault(p.key, p)
    return list(out.values())


def main(argv: Sequence[str] | None = None) -> int:
    from . import BOOK_CHAPTERS

    ap = argparse.ArgumentParser(prog="python -m lfxai_utils.experiments.jobs", description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", action="append", default=[],
                    help="only pages whose key contains this (repeatable; pages train in the order of the patterns)")
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("JOBS", 2)), help="worker processes (default 2)")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per worker (default 1)")
    ap.add_argument("--executor", default="local", help="local (processes on this machine) or slurm (submitit)")
    ap.add_argument("--list", action="store_true", help="list the jobs and their state, then exit")
    ap.add_argument("--checkpoint-dir", default=str(REPO_ROOT / "checkpoints"))
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--log-dir", default=str(LOG_DIR), help="one log file per job (default _build/train-logs)")
    ap.add_argument("--max-jobs", type=int, default=None, help="start at most this many jobs (cheapest first)")
    args = ap.parse_args(argv)
    if args.jobs < 1 or args.threads < 1:
        ap.error("--jobs and --threads must be positive")
    pages = select_pages([p for c in BOOK_CHAPTERS for p in c.pages], args.only)
    if not pages:
        print(f"no page key contains {' or '.join(map(repr, args.only))}", file=sys.stderr)
        return 2
    ckpt = Path(args.checkpoint_dir)
    data_dir = Path(args.data_dir) if args.data_dir else None
    jobs = page_jobs(pages)
    memo: dict = {}
    states = {j.key: job_state(j, ckpt, data_dir, memo) for j in jobs}
    todo = [j for j in jobs if states[j.key][0] in ("missing", "stale")]
    nodata = [j for j in jobs if states[j.key][0] == "no-data"]
    if args.list:
        for j in jobs:
            st, why = states[j.key]
            print(f"{st:8s} {j.cost_s / 60:7.1f} min  {j.key}  ({len(j.names)} checkpoints){'  ' + why if why else ''}")
    print(f"{len(jobs)} jobs for {len(pages)} pages: {len(jobs) - len(todo) - len(nodata)} current, {len(todo)} to "
          f"train (~{sum(j.cost_s for j in todo) / 3600:.1f} h of one thread), {len(nodata)} without data here")
    if args.list or not todo:
        return 0
    if args.max_jobs is not None:
        todo = sorted(todo, key=lambda j: j.cost_s)[:args.max_jobs]
    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        ex = make_executor(args.executor, args.jobs, args.threads, log_dir)
        if hasattr(ex, "__exit__"):
            stack.enter_context(ex)
        results = run_jobs(todo, executor=ex, checkpoint_dir=ckpt, data_dir=data_dir, log_dir=log_dir,
                           threads=args.threads, max_parallel=args.jobs)
    bad = [r for r in results if r.get("error")]
    for r in bad:
        print(f"FAILED {r['key']}: {r['error']} (log: {r.get('log', log_dir)})", file=sys.stderr)
    print(f"{len(results) - len(bad)} jobs finished, {len(bad)} failed; `python -m lfxai_utils.checkpoints "
          "checkpoints/` refreshes checkpoints/README.md")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
