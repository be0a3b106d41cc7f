"""Verdict records written by the notebooks, and the tables the notebooks show beside them.

Every claim notebook ends by calling :func:`write_summary` with one :class:`Verdict` per headline number. The book
builder reads those CSVs back (:func:`lfxai_utils.book.pages.render_results`): nothing in the overview is typed by
hand.
"""
from __future__ import annotations

import datetime as _dt
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from ._utils import VERDICTS, atomic_write

SUMMARY_COLUMNS = ["claim", "dataset", "model", "quantity", "ours", "anchor", "anchor_source", "criterion", "verdict"]


@dataclass
class Verdict:
    """One headline result: our number, the anchor's, the stated criterion, and whether the claim holds."""

    claim: str
    dataset: str
    model: str
    quantity: str
    ours: str
    anchor: str
    anchor_source: str
    criterion: str
    verdict: str

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")


def verdict_word(holds: bool | None) -> str:
    return "inconclusive" if holds is None else ("holds" if holds else "does not hold")


def mean_pm(mean: float, spread: float, n_runs: int, digits: int = 3) -> str:
    """``mean ± spread`` over ``n_runs`` runs; the mean alone for one run (a spread over one run is no spread)."""
    return f"{mean:.{digits}f} ± {spread:.{digits}f}" if int(n_runs) > 1 else f"{mean:.{digits}f}"


def write_summary(verdicts: Sequence[Verdict], output_dir: str | Path) -> pd.DataFrame:
    """Write ``summary.csv`` (atomically) into ``output_dir`` and return it as a DataFrame."""
    df = pd.DataFrame([asdict(v) for v in verdicts], columns=SUMMARY_COLUMNS)
    out = Path(output_dir) / "summary.csv"
    with atomic_write(out, "w") as f:
        df.to_csv(f, index=False)
    return df


def write_csv(df: pd.DataFrame, path: str | Path) -> Path:
    """Atomic ``DataFrame.to_csv`` (no index)."""
    path = Path(path)
    with atomic_write(path, "w") as f:
        df.to_csv(f, index=False)
    return path


def machine_description() -> str:
    import os

    import torch

    return (
        f"date: {_dt.date.today().isoformat()}\nmachine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.system()} {platform.release()}\npython: {platform.python_version()}, torch: {torch.__version__}, "
        f"cuda available: {torch.cuda.is_available()}"
    )


def verdict_table(verdicts: Sequence[Verdict]) -> pd.DataFrame:
    """The verdicts as a DataFrame for display in a notebook (same columns as ``summary.csv``)."""
    return pd.DataFrame([asdict(v) for v in verdicts], columns=SUMMARY_COLUMNS)


def manifest_table(manifests: dict) -> pd.DataFrame:
    """One row per checkpoint manifest: what it is, what trained it, and how (for the notebooks' model cell)."""
    rows = []
    for name, m in manifests.items():
        tr = m.get("training") or {}
        data = m.get("data") or {}
        settings = m.get("settings") or {}
        n_tr, n_val = tr.get("n_train"), tr.get("n_val")
        examples = (f"{n_tr:,} train / {n_val:,} val" if isinstance(n_tr, int) and isinstance(n_val, int)
                    else f"{data.get('n_train', '?')} in the training split")
        epochs, budget, best = tr.get("epochs_run"), settings.get("n_epochs"), tr.get("best_epoch")
        rows.append({"checkpoint": name, "arch": m.get("arch"), "parameters": m.get("n_parameters"),
                     "data": f"{data.get('name', '?')}: {examples}",
                     "epochs run / budget": f"{epochs} / {budget}" if budget else epochs,
                     "best epoch": best, "stopped early": tr.get("stopped_early"),
                     "best val loss": tr.get("best_val_loss"),
                     "seed": tr.get("seed"), "sha256": (m.get("file") or {}).get("sha256", "")[:12]})
    return pd.DataFrame(rows)


def training_diagnostics(manifests: dict, paper_epochs: "int | Mapping[str, int] | None" = None) -> dict:
    """How well trained a page's models are: counts of models stopped by early stopping, still improving at the
    end of their budget (best epoch = last epoch), and trained below the paper's epochs; and a sentence for verdicts.

    A model is *converged* when early stopping ended its training (patience exhausted). A model trained below the
    paper's epochs is *undertrained* (``undertrained``) unless the paper's protocol would have stopped it within
    its cut budget too: early stopping ended it, or its last ``patience`` epochs (the model's own setting, the
    paper's) brought no new best. A verdict resting on an undertrained model is not like-for-like with the paper.
    """
    n = len(manifests)
    improving, capped, stopped, under = [], [], [], []
    paper = {}
    for name, m in manifests.items():
        tr, st = m.get("training") or {}, m.get("settings") or {}
        paper[name] = paper_epochs.get(name) if isinstance(paper_epochs, Mapping) else paper_epochs
        best, run = tr.get("best_epoch"), tr.get("epochs_run") or 0
        if tr.get("stopped_early"):
            stopped.append(name)
        elif best is not None and best == run - 1:
            improving.append(name)
        if paper[name] and (st.get("n_epochs") or paper[name]) < paper[name]:
            capped.append(name)
            patience = st.get("patience")
            plateaued = best is not None and patience is not None and run - 1 - best >= patience
            if not tr.get("stopped_early") and not plateaued:
                under.append(name)
    parts = []
    if capped:
        budgets = sorted({(manifests[c].get("settings") or {}).get("n_epochs") for c in capped})
        papers = sorted({paper[c] for c in capped})
        parts.append(f"{len(capped)} of {n} models trained for {', '.join(map(str, budgets))} epochs "
                     f"(paper: {', '.join(map(str, papers))})")
    if improving:
        parts.append(f"{len(improving)} of {n} still improving when their budget ran out (best epoch = last)")
    cut = [u for u in under if u not in improving]
    if cut:
        parts.append(f"{len(cut)} of {n} cut by the epoch cap before the paper's early stopping would have ended "
                     "them (a new best within the last `patience` epochs)")
    return {"n": n, "early_stopped": stopped, "still_improving": improving, "capped": capped,
            "undertrained": under, "sentence": "; ".join(parts)}
