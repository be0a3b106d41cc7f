"""Pure helpers of the benchmark against the authors' ``lfxai`` 0.1.1: timing, agreement, extrapolation.

Nothing here imports ``lfxai``; ``tests/test_bench.py`` checks every function on hand-computed cases.

* :func:`time_calls` — median wall time of several repetitions (an optional untimed warm-up first).
* :func:`time_interleaved` — the same for two implementations of one workload, run by run in alternating
  order; :func:`speedup_range` — the spread of the per-repetition ratios.
* :func:`agreement`, :func:`elementwise_agreement`, :func:`mask_agreement` — how close two results are.
* :class:`PhaseRecorder` + :func:`extrapolate` — time the phases of a loop-based implementation on a
  subset and scale each phase by how its work grows (linear in examples, quadratic in pairs).
* :func:`linear_gradshap_exact`, :func:`linear_gradshap_as_published` — closed forms of label-free
  GradientSHAP on a linear encoder (the exact answer, and what lfxai 0.1.1's mis-paired wrapper returns).
* :func:`summary_row`, :func:`machine_description`, :func:`plot_speedups` — output.
"""
from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "CSV_COLUMNS",
    "Timing",
    "time_calls",
    "time_interleaved",
    "speedup",
    "speedup_range",
    "agreement",
    "elementwise_agreement",
    "mask_agreement",
    "PhaseRecorder",
    "extrapolate",
    "linear_gradshap_exact",
    "linear_gradshap_as_published",
    "summary_row",
    "machine_description",
    "plot_speedups",
]

# One row per benchmark in bench/results/benchmarks.csv (lfxai_utils.book.performance.render_performance reads
# these names).
CSV_COLUMNS = [
    "benchmark", "workload", "ours_s", "ours_runs", "ours_timing", "authors_s", "authors_runs", "authors_timing",
    "speedup", "speedup_min", "speedup_max", "target", "meets_target", "agreement_metric", "agreement_value",
    "tolerance", "agrees", "notes",
]


# ------------------------------------------------------------------------------------------------ timing
@dataclass
class Timing:
    """Wall times (seconds) of repeated calls; ``result`` is the return value of the last timed call."""

    seconds: list[float]
    result: Any = field(default=None, repr=False)

    @property
    def median(self) -> float:
        if not self.seconds:
            raise ValueError("no timed runs")
        return float(statistics.median(self.seconds))

    @property
    def runs(self) -> int:
        return len(self.seconds)


def time_calls(fn: Callable[[], Any], repeats: int = 3, *, warmup: bool = False,
               before: Callable[[], None] | None = None,
               clock: Callable[[], float] = time.perf_counter) -> Timing:
    """Call ``fn`` ``repeats`` times and record each wall time; ``before`` runs untimed before every call
    (e.g. re-seeding), ``warmup`` adds one untimed call first (first-call overheads: allocator, vmap setup)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1; got {repeats}")
    if warmup:
        if before is not None:
            before()
        fn()
    seconds, result = [], None
    for _ in range(repeats):
        if before is not None:
            before()
        t0 = clock()
        result = fn()
        seconds.append(clock() - t0)
    return Timing(seconds, result)


def time_interleaved(ours: Callable[[], Any], authors: Callable[[], Any], repeats: int = 3, *,
                     warmup: tuple[bool, bool] = (True, True), before: Callable[[], None] | None = None,
                     clock: Callable[[], float] = time.perf_counter) -> tuple[Timing, Timing]:
    """Time two implementations of one workload run by run, in alternating order (ours, authors; authors,
    ours; ...), so that a slow drift of the machine (another process, the CPU clock) falls on both alike and
    repetition ``i`` of each forms a pair. ``warmup`` = (ours, authors): one untimed call first; ``before``
    runs untimed before every call. Returns the two :class:`Timing` (ours, authors)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1; got {repeats}")
    fns = (ours, authors)
    for fn, w in zip(fns, warmup):
        if w:
            if before is not None:
                before()
            fn()
    seconds: tuple[list[float], list[float]] = ([], [])
    results: list[Any] = [None, None]
    for i in range(repeats):
        for k in ((0, 1) if i % 2 == 0 else (1, 0)):
            if before is not None:
                before()
            t0 = clock()
            results[k] = fns[k]()
            seconds[k].append(clock() - t0)
    return Timing(seconds[0], results[0]), Timing(seconds[1], results[1])


def speedup_range(ours_seconds: Sequence[float], authors_seconds: Sequence[float]) -> tuple[float, float]:
    """Lowest and highest ``authors_i / ours_i`` over paired repetitions (from :func:`time_interleaved`);
    ``(nan, nan)`` when the runs are not paired (different counts, or none)."""
    if not ours_seconds or len(ours_seconds) != len(authors_seconds) or min(ours_seconds) <= 0:
        return float("nan"), float("nan")
    ratios = [a / o for o, a in zip(ours_seconds, authors_seconds)]
    return float(min(ratios)), float(max(ratios))


def speedup(ours_s: float, authors_s: float) -> float:
    """``authors / ours`` (> 1 means ours is faster); NaN when either time is missing or ours is 0."""
    if ours_s is None or authors_s is None or not ours_s > 0 or math.isnan(authors_s):
        return float("nan")
    return float(authors_s) / float(ours_s)


# --------------------------------------------------------------------------------------------- agreement
def _t(a) -> Tensor:
    return a.detach().cpu().double() if isinstance(a, Tensor) else torch.as_tensor(np.asarray(a), dtype=torch.float64)


def agreement(ours, reference) -> dict[str, float]:
    """Scale-relative agreement of two arrays of the same shape.

    ``max_abs`` = max |ours − ref|; ``scale`` = max |ref|; ``rel_to_scale`` = max_abs / scale (0 when both are
    all zero, inf when only ``ours`` is non-zero). Using the matrix's scale (not element-wise) keeps entries
    near zero from dominating.
    """
    a, b = _t(ours), _t(reference)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.numel() == 0:
        raise ValueError("empty arrays")
    max_abs = float((a - b).abs().max())
    scale = float(b.abs().max())
    rel = 0.0 if max_abs == 0 else (max_abs / scale if scale > 0 else float("inf"))
    return {"max_abs": max_abs, "scale": scale, "rel_to_scale": rel}


def elementwise_agreement(ours, reference, *, tiny: float = 0.0) -> dict[str, float]:
    """Element-wise relative error ``|ours − ref| / |ref|`` (for values spanning decades, e.g. 1/d²).

    Entries with ``|ref| <= tiny`` are compared absolutely instead. Returns ``max_rel`` and ``median_rel``.
    Infinite entries must match exactly (same sign, both inf); a mismatch gives ``max_rel = inf``.
    """
    a, b = _t(ours), _t(reference)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    inf_a, inf_b = torch.isinf(a), torch.isinf(b)
    if not torch.equal(inf_a, inf_b) or not torch.equal(a[inf_a], b[inf_b]):
        return {"max_rel": float("inf"), "median_rel": float("inf")}
    keep = ~inf_b
    a, b = a[keep], b[keep]
    if a.numel() == 0:
        return {"max_rel": 0.0, "median_rel": 0.0}
    denom = torch.where(b.abs() > tiny, b.abs(), torch.ones_like(b))
    rel = (a - b).abs() / denom
    return {"max_rel": float(rel.max()), "median_rel": float(np.median(rel.numpy()))}


def mask_agreement(ours_removed: Tensor, authors_kept) -> dict[str, float]:
    """Compare our boolean "removed" masks ``(N, D)`` with lfxai's float masks (``0`` = removed, any shape
    ``(N, ...)`` with D entries per example). Returns the fraction of equal entries and of equal rows."""
    ours = torch.as_tensor(ours_removed).bool().reshape(len(ours_removed), -1)
    theirs = (_t(authors_kept) == 0).reshape(len(ours), -1)
    if ours.shape != theirs.shape:
        raise ValueError(f"shapes differ: {tuple(ours.shape)} vs {tuple(theirs.shape)}")
    eq = ours == theirs
    return {"entries_equal": float(eq.double().mean()), "rows_equal": float(eq.all(1).double().mean())}


# ------------------------------------------------------------------------------ phases and extrapolation
class PhaseRecorder:
    """Times named loops: ``for x in rec.iterate(it, "train"): ...`` adds the loop's wall time (its body
    included) and its number of iterations to phase ``"train"``. Used to time the authors' loops through
    their progress-bar hook without changing what they compute."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock
        self.seconds: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def iterate(self, iterable: Iterable, phase: str) -> Iterator:
        t0 = self.clock()
        n = 0
        try:
            for item in iterable:
                n += 1
                yield item
        finally:
            self.seconds[phase] += self.clock() - t0
            self.counts[phase] += n


def extrapolate(total_s: float, phases: Mapping[str, tuple[float, float]]) -> float:
    """Scale a measured run to a larger workload: ``total + Σ_phase seconds · (factor − 1)``.

    ``phases`` maps a phase name to ``(measured seconds, factor)`` where ``factor`` is the target work over the
    measured work of that phase (e.g. ``N_train / n_train`` for a per-train-example loop, ``N_train·N_test /
    (n_train·n_test)`` for a pairwise loop). Time outside the named phases is kept as measured.
    """
    out = float(total_s)
    for name, (sec, factor) in phases.items():
        if sec < 0 or factor < 0:
            raise ValueError(f"phase {name!r}: seconds and factor must be >= 0; got {sec}, {factor}")
        out += sec * (factor - 1.0)
    return out


# ------------------------------------------------------------------------- GradientSHAP closed forms
def _linear_terms(W: Tensor, b: Tensor | None, x: Tensor) -> tuple[Tensor, Tensor]:
    """``f(x) = W·flat(x) + b`` for a linear encoder; returns (flat x (N, D), f(x) (N, d))."""
    xf = x.reshape(len(x), -1).double()
    z = xf @ W.double().T
    if b is not None:
        z = z + b.double()
    return xf, z


def linear_gradshap_exact(W: Tensor, b: Tensor | None, x: Tensor, baseline: Tensor | None = None) -> Tensor:
    """Label-free GradientSHAP (and IG) of a linear encoder, exactly: ``(x − x̄) ⊙ Wᵀ f(x)``.

    The auxiliary function ``g_x(x̃) = ⟨f(x), W x̃ + b⟩`` has the constant gradient ``Wᵀ f(x)``, so every
    Monte-Carlo sample (any α, any number of samples) gives the same answer. Returned in ``x``'s shape.
    """
    xf, z = _linear_terms(W, b, x)
    base = torch.zeros_like(xf) if baseline is None else baseline.reshape(-1, xf.shape[1]).double().expand_as(xf)
    return ((xf - base) * (z @ W.double())).reshape(x.shape)


def linear_gradshap_as_published(W: Tensor, b: Tensor | None, x: Tensor, *, batch_size: int, n_samples: int = 5,
                                 baseline: Tensor | None = None) -> Tensor:
    """What lfxai 0.1.1's ``AuxiliaryFunction`` gives for label-free GradientSHAP on a linear encoder.

    captum's NoiseTunnel repeats each input ``n_samples`` times in a row (x1,x1,…,x2,…) while the wrapper tiles
    the stored representations in block order, so sample ``s`` of example ``i`` of a batch of size ``B`` is
    paired with ``f(x_{(n_samples·i + s) mod B})`` (experiments.md §0.1). Batches are consecutive slices of
    ``batch_size`` (the last one may be shorter, as a DataLoader without drop_last).
    """
    xf, z = _linear_terms(W, b, x)
    base = torch.zeros_like(xf) if baseline is None else baseline.reshape(-1, xf.shape[1]).double().expand_as(xf)
    out = torch.empty_like(xf)
    for start in range(0, len(xf), batch_size):
        zb = z[start:start + batch_size]
        B = len(zb)
        i = torch.arange(B)
        partners = (n_samples * i[:, None] + torch.arange(n_samples)[None, :]) % B  # (B, n_samples)
        zmean = zb[partners].mean(1)
        out[start:start + B] = (xf[start:start + B] - base[start:start + B]) * (zmean @ W.double())
    return out.reshape(x.shape)


# ----------------------------------------------------------------------------------------------- output
def _fmt(v: float, digits: int = 2) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}e}"


def summary_row(benchmark: str, workload: str, ours_s: float, ours_runs: int, ours_timing: str,
                authors_s: float | None, authors_runs: int, authors_timing: str, target: float | None,
                agreement_metric: str = "", agreement_value: float | None = None, tolerance: float | None = None,
                notes: str = "", pairs: tuple[Sequence[float], Sequence[float]] | None = None) -> dict[str, Any]:
    """One CSV row; ``speedup``, ``meets_target`` and ``agrees`` are computed here, never typed by hand.

    ``agrees`` is ``agreement_value <= tolerance`` (empty when either is missing); ``meets_target`` is
    ``speedup >= target`` (empty without a target). ``pairs`` = (ours seconds, authors seconds) of
    interleaved runs gives ``speedup_min`` / ``speedup_max`` (:func:`speedup_range`; NaN without).
    """
    sp = speedup(ours_s, authors_s if authors_s is not None else float("nan"))
    lo, hi = speedup_range(*pairs) if pairs is not None else (float("nan"), float("nan"))
    meets = "" if target is None or math.isnan(sp) else bool(sp >= target)
    agrees = "" if agreement_value is None or tolerance is None else bool(agreement_value <= tolerance)
    return {
        "benchmark": benchmark, "workload": workload, "ours_s": ours_s, "ours_runs": ours_runs,
        "ours_timing": ours_timing, "authors_s": authors_s, "authors_runs": authors_runs,
        "authors_timing": authors_timing, "speedup": sp, "speedup_min": lo, "speedup_max": hi, "target": target,
        "meets_target": meets,
        "agreement_metric": agreement_metric, "agreement_value": agreement_value, "tolerance": tolerance,
        "agrees": agrees, "notes": notes,
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description(extra: Mapping[str, Any] | None = None) -> str:
    """``key: value`` lines: date, CPU model, cores, torch threads, OS, Python/torch/captum/lfxai versions."""
    from importlib import metadata

    def version(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "not installed"

    lines = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch threads": torch.get_num_threads(),
        "os": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "captum": version("captum"),
        "lfxai (authors)": version("lfxai"),
        "cuda available": torch.cuda.is_available(),
    }
    if hasattr(os, "getloadavg"):
        lines["load average at start (1, 5, 15 min)"] = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    lines.update(extra or {})
    return "\n".join(f"{k}: {v}" for k, v in lines.items()) + "\n"


def plot_speedups(rows: Sequence[Mapping[str, Any]], path) -> None:
    """Horizontal bar chart of speed-ups (log scale), target marks, extrapolated bars hatched; saved as PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("speedup") is not None and not math.isnan(float(r["speedup"]))]
    fig, ax = plt.subplots(figsize=(9.5, 0.55 * max(len(rows), 1) + 1.6))
    if not rows:
        ax.text(0.5, 0.5, "no speed-ups measured", ha="center", va="center")
        ax.set_axis_off()
    else:
        names = [r["benchmark"] for r in rows][::-1]
        vals = [float(r["speedup"]) for r in rows][::-1]
        extrap = ["extrapolat" in (str(r["ours_timing"]) + str(r["authors_timing"])).lower() for r in rows][::-1]
        colors = ["#2b8cbe" if v >= 1 else "#de2d26" for v in vals]
        bars = ax.barh(range(len(vals)), vals, color=colors, hatch=None)
        for bar, ex in zip(bars, extrap):
            if ex:
                bar.set_hatch("//")
                bar.set_edgecolor("white")
        for i, r in enumerate(rows[::-1]):
            t = r.get("target")
            if t is not None and not (isinstance(t, float) and math.isnan(t)) and t != "":
                ax.plot([float(t)] * 2, [i - 0.4, i + 0.4], color="black", lw=2)
        for i, v in enumerate(vals):
            ax.text(v * 1.08, i, f"{v:,.2g}×" if v < 10 else f"{v:,.0f}×", va="center", fontsize=9,
                    bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5, "alpha": 0.8})
        ax.set_yticks(range(len(vals)), names)
        ax.set_xscale("log")
        ax.axvline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xlim(min(min(vals) / 2, 0.5), max(vals) * 8)
        ax.set_xlabel("speed-up over lfxai 0.1.1 (authors' time / our time, log scale)")
        ax.set_title("Same weights and inputs, one process. Black tick: target of issue 12.\n"
                     "Hatched: extrapolated from a timed subset. Red: slower than lfxai.", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
