"""Resumable, parallel checkpoint training: ``make checkpoints`` (``python -m lfxai_utils.book.train``).

The book's pages (:data:`lfxai_utils.book.registry.BOOK_CHAPTERS`) say which models they load; every claim module
lists them as :class:`~lfxai_utils.experiments.jobs.TrainJob` s (its ``SPEC.training_jobs``) and trains one job with
``SPEC.train_job`` — the same ``Experiment.get_model`` calls, settings and seeds its notebook runs in
``-p mode train``. A job is **current** when each checkpoint it writes exists with a manifest whose identity,
training budget and data files (sha256) match what train mode would produce now
(:func:`~lfxai_utils.experiments.common.stale_reasons`); only the others run.

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
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

from .._utils import REPO_ROOT
from ..experiments import spec_for
from ..experiments.jobs import TrainJob, _init_worker, job_state, run_job, with_epoch_cap
from .registry import BOOK_CHAPTERS, Page

LOG_DIR = REPO_ROOT / "_build" / "train-logs"


# ------------------------------------------------------------------------------------------ job list
def page_jobs(pages: Sequence[Page]) -> list[TrainJob]:
    """The training jobs of ``pages`` (book pages) in page order, each checkpoint once (pages share models).

    A page's train-mode ``n_epochs`` (a stated CPU budget, e.g. CIFAR-10) caps its jobs (:func:`~lfxai_utils.experiments.jobs.with_epoch_cap`).
    """
    out: dict[tuple[str, ...], TrainJob] = {}
    seen: set[str] = set()
    for page in pages:
        params = page.parameters("train")
        for job in spec_for(page.notebook).training_jobs(page.dataset, page.model, params):
            new = tuple(n for n in job.names if n not in seen)
            if not new:
                continue
            seen.update(job.names)
            out[job.names] = with_epoch_cap(job, params.get("n_epochs"))
    return list(out.values())


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
    """Submit ``jobs`` in their order (the book's page order) and wait; returns each job's
    :func:`~lfxai_utils.experiments.jobs.run_job` result.

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


def select_jobs(jobs: Sequence[TrainJob], patterns: Sequence[str]) -> list[TrainJob]:
    """The jobs whose key contains a pattern, with the jobs they depend on (``after``, transitively), in the
    order of the patterns (the first pattern's jobs train first; within one pattern, and for the jobs of several,
    the order of ``jobs``); a job's dependencies come before it. A dependency that is current is skipped later
    like any current job."""
    by_name = {n: j for j in jobs for n in j.names}
    out: dict[str, TrainJob] = {}

    def add(j: TrainJob) -> None:
        if j.key in out:
            return
        for d in j.after:
            if d in by_name:
                add(by_name[d])
        out[j.key] = j

    for s in patterns:
        for j in jobs:
            if s in j.key:
                add(j)
    return list(out.values())


def main(argv: Sequence[str] | None = None) -> int:
    """``make checkpoints`` / ``make checkpoints-list``: ``python -m lfxai_utils.book.train [options]``."""
    ap = argparse.ArgumentParser(prog="python -m lfxai_utils.book.train", description=__doc__.split("\n\n")[0])
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
    ap.add_argument("--job", action="append", default=[],
                    help="of the selected pages' jobs, only those whose key contains this (repeatable; jobs train in "
                         "the order of the patterns), e.g. --job beta5_run3; a chosen job's missing or stale "
                         "dependencies are trained with it (first)")
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
    if args.job:
        jobs = select_jobs(jobs, args.job)
        if not jobs:
            print(f"no job key contains {' or '.join(map(repr, args.job))} (see --list)", file=sys.stderr)
            return 2
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
