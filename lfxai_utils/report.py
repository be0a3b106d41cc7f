"""Verdict records written by the notebooks, and the book's generated overview pages.

Every claim notebook ends by calling :func:`write_summary` with one :class:`Verdict` per headline number. The book
builder reads those CSVs back (:func:`render_results`): nothing in the overview is typed by hand.
"""
from __future__ import annotations

import datetime as _dt
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import pandas as pd

from ._utils import atomic_write

if TYPE_CHECKING:  # pragma: no cover
    from .book import Outcome

SUMMARY_COLUMNS = ["claim", "dataset", "model", "quantity", "ours", "anchor", "anchor_source", "criterion", "verdict"]
VERDICTS = ("holds", "does not hold", "inconclusive")


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


def _md_escape(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    rows = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    rows += ["| " + " | ".join(_md_escape(v) for v in r) + " |" for r in df.itertuples(index=False)]
    return "\n".join(rows)


def render_results(outcomes: Iterable["Outcome"]) -> str:
    """The results overview: every verdict the executed notebooks wrote, and the pages that were not run."""
    frames, missing = [], []
    for o in outcomes:
        csv = o.page.output_dir / "summary.csv"
        if o.status in ("executed", "cached") and csv.exists():
            df = pd.read_csv(csv, dtype=str, keep_default_na=False)
            df.insert(0, "page", f"[{o.page.key}](../_executed/{o.page.key})")
            frames.append(df)
        else:
            missing.append(o)
    lines = [
        "# Results overview",
        "",
        "Every row below was read from the `summary.csv` that the notebook of that page wrote when it ran for this "
        "build; nothing here is typed by hand. *Anchor* is the number or wording of the paper or of a published "
        "reproduction (its source is named), and *verdict* applies the stated criterion to **our** numbers.",
        "",
    ]
    if frames:
        table = pd.concat(frames, ignore_index=True)[["page"] + SUMMARY_COLUMNS]
        counts = table["verdict"].value_counts().to_dict()
        lines += [
            f"**{len(table)} verdicts** from {len(frames)} executed pages: "
            + ", ".join(f"{counts.get(v, 0)} {v}" for v in VERDICTS) + ".",
            "",
            _md_table(table.drop(columns=["page"]).assign(page=table["page"])[["page"] + SUMMARY_COLUMNS]),
            "",
        ]
    else:
        lines += ["No page was executed in this build.", ""]
    if missing:
        lines += ["## Pages without results in this build", ""]
        lines += [f"- [{o.page.title}](../_executed/{o.page.key}): {'; '.join(o.reasons) or o.status}" for o in missing]
        lines += ["", "See [What was not run here](not_run) for the reasons and the commands that run them."]
    return "\n".join(lines) + "\n"


def render_not_run(outcomes: Iterable["Outcome"]) -> str:
    outcomes = list(outcomes)
    skipped = [o for o in outcomes if o.status == "not-run"]
    failed = [o for o in outcomes if o.status == "failed"]
    lines = [
        "# What was not run here",
        "",
        "This book is built on a machine without internet access and without a GPU. Datasets that could not be "
        "obtained offline (CIFAR-10, CIFAR-100, dSprites and the 4,500-series ECG5000 test split) and models that "
        "were not trained here have no results in this build. Each page below says exactly why, and gives the "
        "papermill command that runs it for a user who has the data (it is downloaded and checksum-verified "
        "automatically on a machine with internet) or a GPU.",
        "",
    ]
    if not skipped and not failed:
        lines.append("Every page of the book was executed in this build.")
    if skipped:
        lines += ["| page | why it was not run |", "|---|---|"]
        lines += [f"| [{o.page.title}](../_executed/{o.page.key}) | {_md_escape('; '.join(o.reasons))} |" for o in skipped]
    if failed:
        lines += ["", "## Pages whose notebook raised an error", ""]
        lines += [f"- [{o.page.title}](../_executed/{o.page.key}): `{_md_escape('; '.join(o.reasons))}`" for o in failed]
    return "\n".join(lines) + "\n"


def render_performance(results_dir: Path) -> str:
    lines = ["# Performance", ""]
    csv = results_dir / "benchmarks.csv"
    if not csv.exists():
        lines += [
            "No benchmark results are present in this build. Run `make bench` to time this implementation "
            "against the authors' `lfxai` package on the same weights and inputs; the results land in "
            "`bench/results/benchmarks.csv` and this page shows them.",
        ]
        return "\n".join(lines) + "\n"
    df = pd.read_csv(csv)
    meta = results_dir / "machine.txt"
    if meta.exists():
        lines += ["```text", meta.read_text().strip(), "```", ""]
    lines += [_md_table(df), ""]
    fig = results_dir / "speedups.png"
    if fig.exists():
        lines += [f"![Speed-ups](../../bench/results/speedups.png)", ""]
    return "\n".join(lines) + "\n"


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
        rows.append({"checkpoint": name, "arch": m.get("arch"), "parameters": m.get("n_parameters"),
                     "trained on": f"{data.get('name', '?')} ({data.get('n_train', '?')} train)",
                     "epochs run": tr.get("epochs_run"), "best val loss": tr.get("best_val_loss"),
                     "seed": tr.get("seed"), "sha256": (m.get("file") or {}).get("sha256", "")[:12]})
    return pd.DataFrame(rows)
