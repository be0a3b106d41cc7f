"""The book's Performance page, and the build times it shows.

:func:`render_performance` turns what ``make bench`` (``bench/run_benchmarks.py``), ``make if-budget`` and
``make bench-train`` wrote into ``bench/results`` into the page; :func:`write_timings` and :func:`record_build`
(``python -m lfxai_utils.book --record-timings/--record-builds``) keep the book's own build times, which
:func:`render_performance` and :func:`render_builds` show.
"""
from __future__ import annotations

import datetime as _dt
import os
import re
from pathlib import Path
from typing import Sequence

import pandas as pd

from .._utils import REPO_ROOT, TIMINGS_TOTAL, atomic_write, md_escape
from .execution import Outcome, kernel_threads, machine_summary

#: sequential vs parallel builds (``--record-builds``; the Performance page reads it)
BUILDS_CSV = "bench/results/book_builds.csv"
BUILD_COLUMNS = ["selection", "jobs", "kernel_threads", "pages_executed", "pages_cached", "pages_not_run",
                 "pages_failed", "execute_s", "total_s", "html", "load_1min", "machine", "when"]


# ------------------------------------------------------------------------------------------ benchmarks
def _md_table(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    rows = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    rows += ["| " + " | ".join(md_escape(v) for v in r) + " |" for r in df.itertuples(index=False)]
    return "\n".join(rows)


def _perf_num(v, fmt: str = "{:.3g}") -> str:
    """A number for the performance table; blank for NaN / missing."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "" if v is None else str(v)
    return "" if f != f else fmt.format(f)


def _perf_bool(v) -> bool | None:
    s = str(v).strip().lower()
    return True if s == "true" else False if s == "false" else None


def _perf_ratio(v) -> str:
    try:
        big = float(v or "nan") >= 100
    except (TypeError, ValueError):
        big = False
    return _perf_num(v, "{:,.0f}×" if big else "{:,.1f}×")


def _perf_speedup(row) -> str:
    sp = _perf_ratio(row["speedup"])
    if not sp:
        return "—"
    lo, hi = (_perf_ratio(row.get(c, "")) for c in ("speedup_min", "speedup_max"))
    if lo and hi:
        sp += f", runs {lo}–{hi}"
    target, meets = _perf_num(row["target"], "{:g}×"), _perf_bool(row["meets_target"])
    if target and meets is not None:
        sp += f" (target ≥ {target}: {'met' if meets else '**not met**'})"
    return sp


def _perf_agreement(row) -> str:
    value, tol, agrees = _perf_num(row["agreement_value"], "{:.1e}"), _perf_num(row["tolerance"], "{:g}"), \
        _perf_bool(row["agrees"])
    if not value:
        return "—"
    verdict = "" if agrees is None else (" — **agrees**" if agrees else " — **differs**")
    return f"{row['agreement_metric']} = {value} (tolerance {tol}){verdict}"


def _perf_time(seconds, runs, timing) -> str:
    t = _perf_num(seconds)
    if not t:
        return "—"
    extrapolated = "extrapolat" in str(timing).lower()
    n = _perf_num(runs, "{:.0f}")
    return (f"≈ {t} ¹" if extrapolated else t) + (f" (median of {n})" if n and n != "1" else "")


def _perf_load_warning(machine: str) -> str | None:
    """A warning when the load average during the run exceeded the number of cores (shared machine)."""
    import re

    cores = re.search(r"^cores:\s*(\d+)", machine, re.M)
    loads = [float(m.group(1)) for m in re.finditer(r"^load average at (?:start|end)[^:]*:\s*([\d.]+)", machine, re.M)]
    if not cores or not loads or max(loads) <= int(cores.group(1)):
        return None
    return (f"The 1-minute load average reached {max(loads):.1f} on {cores.group(1)} cores while the benchmark ran: "
            "other work shared the CPU, so absolute times are inflated and noisier than on an idle machine. Where a "
            "row gives the range of its runs, the two implementations alternated run by run in the same process, "
            "so their ratios are less affected.")


def render_performance(results_dir: Path, page_dir: Path | None = None) -> str:
    """The book's Performance page, from what ``make bench`` (``bench/run_benchmarks.py``) wrote in ``results_dir``.

    Reads ``benchmarks.csv`` (one row per benchmark: times, speed-up, agreement), ``machine.txt``, ``speedups.png``
    and, when present, ``book_timings.csv`` (written by the book build; any columns, rendered as they are, with a
    total of a ``seconds`` column). The figure is referenced relative to ``page_dir``, the folder the page is
    written to (default ``<repo>/book/_generated``), so Sphinx copies it from ``bench/results``.
    """
    results_dir = Path(results_dir)
    page_dir = Path(page_dir) if page_dir is not None else REPO_ROOT / "book" / "_generated"
    lines = ["# Performance", ""]
    csv = results_dir / "benchmarks.csv"
    if not csv.exists():
        lines += [
            "No benchmark results are present in this build. Run `make bench` to time this implementation "
            "against the authors' `lfxai` package on the same weights and inputs; the results land in "
            "`bench/results/benchmarks.csv` and this page shows them.", "",
        ]
    else:
        df = pd.read_csv(csv, dtype=str, keep_default_na=False)
        machine = (results_dir / "machine.txt").read_text().strip() if (results_dir / "machine.txt").exists() else ""
        lines += [
            "`make bench` (`bench/run_benchmarks.py`) runs this implementation and the authors' package "
            "(`lfxai` 0.1.1 from PyPI) **in one process, on the same model weights and the same input tensors**, "
            "and compares both the time per call and the results. *Speed-up* is the authors' time divided by ours "
            "(above 1: ours is faster); times are medians of the repeated runs, in seconds, wall clock. Where both "
            "sides are cheap enough to repeat, they alternate run by run (ours, lfxai; lfxai, ours; …) and the "
            "column also gives the lowest and highest ratio of the paired runs: a spread across 1× means the two "
            "are equally fast within this machine's noise. "
            "*Agreement* compares the two outputs; the tolerance is stated per row and the verdict is computed by "
            "the script. The targets are those of the project's issue 12 (≥ 1× for feature attribution, ≥ 50× for "
            "masking, ≥ 100× for TracIn and influence functions).", "",
        ]
        if machine:
            lines += ["**Machine and run**", "", "```text", machine, "```", ""]
            warn = _perf_load_warning(machine)
            if warn:
                lines += [f"```{{warning}}\n{warn}\n```", ""]
        table = pd.DataFrame({
            "benchmark": df["benchmark"],
            "workload": df["workload"],
            "ours (s)": [_perf_time(r["ours_s"], r["ours_runs"], r["ours_timing"]) for _, r in df.iterrows()],
            "lfxai 0.1.1 (s)": [_perf_time(r["authors_s"], r["authors_runs"], r["authors_timing"])
                                for _, r in df.iterrows()],
            "speed-up": [_perf_speedup(r) for _, r in df.iterrows()],
            "agreement": [_perf_agreement(r) for _, r in df.iterrows()],
            "notes": df["notes"],
        })
        lines += [_md_table(table), ""]
        extrap = [(r["benchmark"], who, r[col]) for _, r in df.iterrows()
                  for who, col in (("ours", "ours_timing"), ("lfxai", "authors_timing"))
                  if "extrapolat" in str(r[col]).lower()]
        if extrap:
            lines += ["¹ **Extrapolated, not measured at full size.** The run was timed on a subset and each phase "
                      "scaled by how its work grows (per-example loops linearly, the pairwise loop with the number "
                      "of pairs); time outside the named phases is kept as measured:", ""]
            lines += [f"- {md_escape(b)} ({who}): {md_escape(t)}" for b, who, t in extrap]
            lines += [""]
        fig = results_dir / "speedups.png"
        if fig.exists():
            rel = Path(os.path.relpath(fig.resolve(), page_dir.resolve())).as_posix()
            lines += [f"![Speed-up over lfxai 0.1.1 per benchmark (log scale)]({rel})", ""]
        if (results_dir / "runs.csv").exists():
            lines += ["Every timed run is listed in `bench/results/runs.csv`.", ""]
    lines += _render_if_budget(results_dir / "if_budget.csv")
    lines += _render_training_throughput(results_dir / "training_throughput.csv")
    timings = results_dir / "book_timings.csv"
    lines += ["## Building the book", ""]
    if timings.exists():
        bt = pd.read_csv(timings)
        lines += ["Wall time of each page of the book (from `bench/results/book_timings.csv`, written by "
                  "`python -m lfxai_utils.book --force --record-timings bench/results/book_timings.csv`, i.e. a full "
                  "build in inference mode from the shipped checkpoints).", ""]
        shown = bt.copy()
        for col in shown.columns:
            if pd.api.types.is_float_dtype(shown[col]):
                shown[col] = shown[col].map(lambda v: "" if pd.isna(v) else f"{v:,.1f}")
        lines += [_md_table(shown.fillna("")), ""]
        if "seconds" in bt.columns and pd.api.types.is_numeric_dtype(bt["seconds"]):
            is_total = bt.iloc[:, 0].astype(str).str.startswith(TIMINGS_TOTAL)
            if is_total.any():  # written by `python -m lfxai_utils.book --record-timings`: the build's own wall time
                total = float(bt.loc[is_total, "seconds"].iloc[-1])
                ran = ~is_total & (bt["status"].astype(str) == "executed" if "status" in bt.columns else True)
                pages = bt.loc[ran, "seconds"].sum()     # a cached page's seconds are from an earlier build
                at_once = re.search(r"(\d+) pages at once", str(bt.loc[is_total].iloc[-1, 0]))
                if at_once and int(at_once.group(1)) > 1:
                    lines += [f"Whole build (the `total` row): {total:,.0f} s ({total / 60:.1f} min), "
                              f"{at_once.group(1)} pages at a time; the executed pages' own times sum to "
                              f"{pages:,.0f} s.", ""]
                else:
                    lines += [f"Whole build (the `total` row): {total:,.0f} s ({total / 60:.1f} min), of which "
                              f"executing the pages took {pages:,.0f} s; the rest is checking data and checkpoints "
                              "and building the HTML.", ""]
            else:
                lines += [f"Sum of the `seconds` column: {bt['seconds'].sum():,.0f} s ({bt['seconds'].sum() / 60:.1f} min).", ""]
    else:
        lines += ["No book timings are present in this build (`bench/results/book_timings.csv`).", ""]
    return "\n".join(lines).rstrip() + "\n"


def _render_training_throughput(csv: Path) -> list[str]:
    """The "Training throughput" section, from ``bench/training_throughput.py``'s CSV (``make bench-train``)."""
    from ..training import FAST_PATH

    lines = ["(training-throughput)=", "## Training throughput", ""]
    if not csv.exists():
        return lines + ["No measurement is present in this build (`bench/results/training_throughput.csv`); "
                        "`make bench-train` measures it.", ""]
    text = csv.read_text()
    header = text.splitlines()[0].lstrip("# ").strip() if text.startswith("#") else ""
    df = pd.read_csv(csv, comment="#")
    lines += [
        "One optimiser step (forward, loss, backward, Adam) at the paper's batch size, per architecture, under each "
        "execution option: `eager` (PyTorch's default), `channels_last` (NHWC memory format for weights and image "
        "batches) and `compile` (`torch.compile` of the loss), with 1 or 2 intra-op threads, and as **2 processes "
        "at once with one thread each** — how `make checkpoints JOBS=2` trains on this 2-core machine (there the "
        "images/s column counts both processes). *Agrees*: five seeded steps under the option end with the same "
        "loss as eager to a relative 1e-3 (the difference is given). "
        + (f"Measured {md_escape(header)}." if header else ""), ""]
    shown = df.assign(**{
        "step (ms)": [f"{m:,.1f} ({lo:,.1f}–{hi:,.1f})" if pd.notna(m) else "failed"
                      for m, lo, hi in zip(df.step_ms, df.step_ms_min, df.step_ms_max)],
        "images/s": df.images_per_s.map(lambda v: "" if pd.isna(v) else f"{v:,.0f}"),
        "vs eager, 1 thread": df.speedup_vs_eager_1thread.map(lambda v: "" if pd.isna(v) else f"{v:.2f}×"),
        "agrees": [("yes" if a in (True, "True") else "no") + (f" ({d})" if isinstance(d, str) and d else "")
                   for a, d in zip(df.agrees, df.loss_rel_diff.astype(object).fillna(""))],
    })[["model", "batch", "option", "threads", "processes", "step (ms)", "images/s", "vs eager, 1 thread", "agrees",
        "notes"]].astype(object).fillna("")
    lines += [_md_table(shown), ""]
    adopted = ", ".join(f"`{a}`: {f}" for a, f in sorted(FAST_PATH.items())) or "none"
    one = df[(df.threads == 1) & (df.processes == 1)].set_index(["model", "option"])["step_ms"]
    faster = [m for m in dict.fromkeys(df.model) if (m, "compile") in one.index and (m, "eager") in one.index
              and one[(m, "compile")] < one[(m, "eager")]]
    two = df[(df.option == "eager") & (df.processes == 2)].set_index("model")["images_per_s"]
    thr = df[(df.option == "eager") & (df.threads == 2) & (df.processes == 1)].set_index("model")["images_per_s"]
    procs = [m for m in two.index if m in thr.index and two[m] > thr[m]]
    lines += [f"Adopted by the training loop (`lfxai_utils.training.FAST_PATH`, used by `make checkpoints` and every "
              f"notebook's train mode): {adopted}; every other architecture trains eager and contiguous. "
              f"`torch.compile` (compile time not counted) was faster than eager on one thread for "
              f"{len(faster)} of {df.model.nunique()} models" + (f" ({', '.join(faster)})" if faster else "")
              + f"; two one-thread processes gave more images per second than one two-thread process for "
              f"{len(procs)} of {len(two)} models" + (f" ({', '.join(procs)})" if procs else "") + ".", ""]
    return lines


def _render_if_budget(csv: Path) -> list[str]:
    """The "Influence functions: the book's budget" section, from ``bench/if_budget.py``'s CSV."""
    lines = ["(if-budget)=", "## Influence functions: the book's budget against the paper's", ""]
    if not csv.exists():
        return lines + ["No comparison is present in this build (`bench/results/if_budget.csv`); "
                        "`make if-budget` computes it.", ""]
    df = pd.read_csv(csv)
    ref = df.iloc[0]
    rate_cols = [c for c in df.columns if c.split("_")[0] in ("most", "least")]   # most_5, least_5, most_10, ...
    percents = list(dict.fromkeys(int(c.split("_")[1]) for c in rate_cols))
    lines += [
        f"The Claim 1.2 page runs influence functions with a reduced LiSSA budget to fit a 2-core CPU. "
        f"`make if-budget` (`bench/if_budget.py`) computed them at each budget below on the same shipped model "
        f"(`{ref['model']}`) and the same examples ({int(ref['n_train']):,} train × {int(ref['n_test']):,} test; "
        f"{ref['data']}), with damping 1e-3 and scale 1,000 as the paper. *Spearman* is the correlation, per test "
        "example, between the ranking of the training set at that budget and at the paper's budget (mean and "
        "lowest over test examples); the similarity rates are those of Claim 1.2 (share of the most / least "
        f"important {' and '.join(f'{p} %' for p in percents)} of training images with the test image's label: "
        f"k = {' and '.join(str(int(p / 100 * ref['n_train'] + 1e-9)) for p in percents)} images here).", ""]
    shown = pd.DataFrame({
        "budget": df["budget"],
        "LiSSA depth": df["recursion_depth"].astype(int),
        "HVP minibatch": df["hvp_batch"].astype(int),
        "time (s)": df["seconds"].map(lambda v: f"{v:,.1f}"),
        "Spearman with the paper's budget: mean (lowest)": [f"{m:.4f} ({lo:.4f})" for m, lo in
                                                            zip(df["spearman_mean"], df["spearman_min"])],
        **{c.replace("_", " ") + " %": df[c].map(lambda v: f"{v:.3f}") for c in rate_cols},
    })
    lines += [_md_table(shown), ""]
    for i in range(1, len(df)):
        diff = (df.loc[i, rate_cols] - df.loc[0, rate_cols]).astype(float)
        worst = diff.abs().idxmax()
        lines += [f"- {df.loc[i, 'budget']}: its similarity rates differ from the paper's budget's by at most "
                  f"{abs(diff[worst]):.3f} ({worst.replace('_', ' ')} %: {df.loc[i, worst]:.3f} against "
                  f"{df.loc[0, worst]:.3f})."]
    return lines + [""]


# ------------------------------------------------------------------------------------------ build times
def write_timings(path: Path, outcomes: Sequence[Outcome], total: float, *, html_rc: int | None,
                  jobs: int = 1) -> None:
    """One row per page (status, seconds, when) and a last row with the whole command's wall time, atomically.

    ``seconds`` of a cached page is the time it took when it was last executed, not in this build: the ``status``
    column says which, and the ``total`` row is this build's own wall time (page execution + HTML).
    """
    rows = [{"page": o.page.key, "status": o.status, "seconds": round(o.seconds, 1) if o.seconds else None,
             "when": o.when} for o in outcomes]
    html = "" if html_rc is None else (" + HTML" if html_rc == 0 else " + HTML (failed)")
    at_once = f", {jobs} pages at once" if jobs > 1 else ""
    rows.append({"page": f"{TIMINGS_TOTAL}: this build ({len(outcomes)} pages{html}{at_once}, {machine_summary()})",
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
    counts = {s: sum(o.status == s for o in outcomes) for s in ("executed", "cached", "not-run", "failed")}
    row = {"selection": " ".join(sorted(only)) or "all pages", "jobs": int(jobs),
           "kernel_threads": threads or (kernel_threads(jobs) if jobs > 1 else os.cpu_count() or 1),
           "pages_executed": counts["executed"], "pages_cached": counts["cached"],
           "pages_not_run": counts["not-run"], "pages_failed": counts["failed"],
           "execute_s": round(exec_seconds, 1), "total_s": round(total, 1),
           "html": "" if html_rc is None else ("yes" if html_rc == 0 else "failed"),
           "load_1min": "" if load is None else round(load, 2), "machine": machine_summary(),
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
    lines += ["| " + " | ".join(md_escape(v) for v in r) + " |" for r in shown.itertuples(index=False)]
    lines.append("")
    for sel, g in df.groupby("selection", sort=False):
        for _, seq in g[g["jobs"] == "1"].iterrows():
            for _, par in g[g["jobs"] != "1"].iterrows():
                s, q = float(seq["execute_s"] or 0), float(par["execute_s"] or 0)
                if s <= 0 or q <= 0:
                    continue
                line = (f"- {md_escape(sel)}: executing the pages took {s:,.0f} s one at a time "
                        f"({seq['kernel_threads']} thread(s) per kernel) and {q:,.0f} s with {par['jobs']} at once "
                        f"({par['kernel_threads']} thread(s) per kernel): {s / q:.2f}× faster")
                if seq["pages_executed"] != par["pages_executed"]:
                    line += " — not the same number of executed pages, so not comparable"
                lines.append(line)
    lines.append("")
    return "\n".join(lines).rstrip() + "\n"

