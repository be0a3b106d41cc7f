"""How close the book's reduced influence-function budget comes to the paper's (Claim 1.2, MNIST).

The Claim 1.2 page of the book runs LiSSA with the reduced budget of ``CPU_BUDGETS`` (a few recursions on small
HVP minibatches) because the paper's budget (depth 100, minibatches of 300) costs 30–50 ms per training example
and recursion on this CPU. This script computes influence functions at both budgets, and at depth 0 (the plain
inner product of gradients, where LiSSA starts), on the **same** shipped model and the same class-balanced MNIST
subsets as the page, and writes ``bench/results/if_budget.csv``:

* per budget: its LiSSA settings, the wall time, the mean and lowest per-test-row Spearman correlation with the
  paper's budget (how alike the two rank the training set), and the similarity rates of Claim 1.2 (most / least
  similar 5 % and 10 %), the quantities the page's verdicts use.

The Performance page of the book renders the CSV (``lfxai_utils.book.performance.render_performance``); the
Methods page points there instead of quoting a number. Run it with ``make if-budget`` (about 10 minutes at 100 × 300
on 2 cores).
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from lfxai_utils import examples as E  # noqa: E402
from lfxai_utils import metrics as M  # noqa: E402
from lfxai_utils._utils import atomic_write  # noqa: E402

NOTEBOOK = "claim1_example_consistency"
FRACTIONS = (0.05, 0.1)
COLUMNS = ["budget", "recursion_depth", "hvp_batch", "n_train", "n_test", "seconds", "spearman_mean",
           "spearman_min", "most_5", "least_5", "most_10", "least_10", "model", "data"]


def budgets() -> list[tuple[str, int, int]]:
    """(label, recursion depth, HVP minibatch): the paper's, the book's page (from ``CPU_BUDGETS``), depth 0."""
    from lfxai_utils.book.registry import CPU_BUDGETS
    from lfxai_utils.experiments.example_consistency import paper_lissa

    depth, batch = paper_lissa("mnist")
    book = CPU_BUDGETS[(NOTEBOOK, "mnist")]
    return [("paper (reference)", depth, batch),
            ("book page", int(book["if_recursion_depth"]), int(book["if_batch_size"])),
            ("depth 0: gradient inner product", 0, batch)]


def rates_row(scores: torch.Tensor, y_train: torch.Tensor, y_test: torch.Tensor) -> dict[str, float]:
    r = M.similarity_rates(scores, y_train, y_test, FRACTIONS).set_index(["fraction", "type"])["similarity_rate"]
    return {f"{t}_{round(f * 100)}": float(r[(f, t)]) for f in FRACTIONS for t in ("most", "least")}


def run(n_train: int, n_test: int, seed: int = 0, progress: bool = True) -> pd.DataFrame:
    from lfxai_utils.checkpoints import load_checkpoint
    from lfxai_utils.data import load_dataset
    from lfxai_utils.experiments.example_consistency import checkpoint, select_subsets

    name = checkpoint("mnist")
    model, _ = load_checkpoint(ROOT / "checkpoints", name)
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the partial-mirror note; recorded in the data column
        splits = load_dataset("mnist", download=False, progress=False)
    sub = select_subsets(splits, "mnist", n_train, n_test, seed)
    hvp_x = splits.train.tensors()[0]
    data = f"MNIST: {sub.rules['subtrain']}; {sub.rules['test']}; HVP minibatches from all {len(hvp_x):,} train images"
    rows, ref = [], None
    for label, depth, batch in budgets():
        t0 = time.perf_counter()
        scores = E.influence_functions(model, "mse", sub.x_train, sub.x_test, hvp_x, recursion_depth=depth,
                                       batch_size=batch, seed=seed, device="cpu", progress=progress)
        seconds = time.perf_counter() - t0
        ref = scores if ref is None else ref
        rho = M.rowwise_spearman(scores, ref)
        rows.append({"budget": label, "recursion_depth": depth, "hvp_batch": batch, "n_train": len(sub.x_train),
                     "n_test": len(sub.x_test), "seconds": seconds, "spearman_mean": float(rho.mean()),
                     "spearman_min": float(rho.min()), **rates_row(scores, sub.y_train, sub.y_test),
                     "model": name, "data": data})
        print(f"{label}: depth {depth}, batch {batch}: {seconds:.1f} s, Spearman with the paper's budget "
              f"mean {rho.mean():.4f} (lowest {rho.min():.4f})", flush=True)
    return pd.DataFrame(rows, columns=COLUMNS)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-train", type=int, default=100)
    ap.add_argument("--n-test", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "if_budget.csv")
    args = ap.parse_args(argv)
    df = run(args.n_train, args.n_test, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out, "w") as f:
        df.to_csv(f, index=False)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
