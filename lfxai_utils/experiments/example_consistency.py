"""Claim 1.2 — consistency of label-free example importance (paper §4.1, experiments.md §3).

For each test example, rank a class-balanced set of training examples by label-free example importance (influence
functions and TracIn on the model's own pretext loss, SimplEx, DKNN and CosineNN in its latent space). Labels are used
only to evaluate: the most important training examples should often share the test example's class (similarity rate
above the label prior), the least important ones should not (below the prior).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .. import examples as E
from ..data import class_balanced_indices
from ..metrics import label_prior
from ..plotting import image_grid, to_display_image
from ..report import Verdict, verdict_word
from . import feature_consistency as fc
from .common import AE_SPECS, Experiment, ModelSpec, json_data_info

NOTEBOOK = "claim1_example_consistency"
CLAIM = "claim1"
DATASETS = ("mnist", "ecg5000", "cifar10", "cifar100")
MODELS = (None, "simclr")
EXPLAINERS = E.EXAMPLE_METHODS            # influence_functions, tracin, simplex, dknn, cosine_nn
LOSS_BASED = ("influence_functions", "tracin")
REPRESENTATION_BASED = ("simplex", "dknn", "cosine_nn")
#: SimCLR has no reconstruction loss: the authors ran only the representation-based explainers on it.
SIMCLR_EXPLAINERS = REPRESENTATION_BASED
EXPLAINER_LABELS = {"influence_functions": "Influence Functions", "tracin": "TracIn", "simplex": "SimplEx",
                    "dknn": "DKNN", "cosine_nn": "CosineNN"}
TYPE_LABELS = {"most": "Most important", "least": "Least important"}
FRACTIONS = (0.05, 0.1, 0.2, 0.5, 0.7, 1.0)
#: TracIn checkpoints of the ECG all-beats autoencoder: every 25 epochs (the authors: every 10), to keep the shipped
#: files small (each holds the whole 249k-parameter model, ~1 MB).
ECG_TRACIN_EVERY = 25
LABEL_NAMES = {"ecg5000": ("normal", "abnormal"),
               "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")}
ANCHOR = ("paper §4.1 example-importance figure and FACT Claim 1.2 (figures only, no stored numbers): most-important "
          "curves lie well above the label prior at small k and fall to it at 100 %; least-important curves lie below "
          "the prior")
ANCHOR_RANKING = ("paper §4.1 / experiments.md §3: representation-based explainers (SimplEx, DKNN) are the strongest; "
                  "loss-based ones (IF, TracIn) are weaker but above chance")


# ------------------------------------------------------------------------------------------ parameters
def default_explainers(model: str | None = None) -> tuple[str, ...]:
    """All five explainers for the autoencoders; SimplEx, DKNN and CosineNN for SimCLR (as the authors)."""
    return SIMCLR_EXPLAINERS if model == "simclr" else EXPLAINERS


def resolve_explainers(explainers: Sequence[str] | str | None, model: str | None = None) -> list[str]:
    """The explainers to run: ``None`` → the defaults; a list or a comma-separated string (papermill ``-p``)."""
    if explainers is None or (isinstance(explainers, str) and explainers.strip().lower() in ("", "none")):
        return list(default_explainers(model))
    if isinstance(explainers, str):
        explainers = [e.strip() for e in explainers.split(",") if e.strip()]
    out = list(dict.fromkeys(explainers))
    bad = [e for e in out if e not in EXPLAINERS]
    if bad:
        raise ValueError(f"unknown explainer(s) {bad}; valid values: {', '.join(map(repr, EXPLAINERS))}")
    if not out:
        raise ValueError(f"explainers is empty; valid values: {', '.join(map(repr, EXPLAINERS))}")
    if model == "simclr" and set(out) & set(LOSS_BASED):
        raise ValueError(f"model='simclr' has no reconstruction loss, so influence functions and TracIn do not apply "
                         f"(the authors ran only SimplEx and DKNN on it); valid explainers: "
                         f"{', '.join(map(repr, SIMCLR_EXPLAINERS))}")
    return out


def validate(dataset: str, model: str | None, explainers: Sequence[str] | str | None = None, *,
             n_train: int = 1000, n_test: int = 1000, if_recursion_depth: int = 100,
             if_batch_size: int | None = None, if_damp: float = 1e-3, if_scale: float = 1000.0) -> list[str]:
    """Check the page's parameters (clear ``ValueError`` naming the valid values); return the explainers to run."""
    fc.validate(dataset, model)
    for name, v in (("n_train", n_train), ("n_test", n_test)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 2:
            raise ValueError(f"{name} must be an integer >= 2; got {v!r}")
    if not isinstance(if_recursion_depth, (int, np.integer)) or if_recursion_depth < 1:
        raise ValueError(f"if_recursion_depth must be an integer >= 1 (paper: 100); got {if_recursion_depth!r}")
    if if_batch_size is not None and (not isinstance(if_batch_size, (int, np.integer)) or if_batch_size < 1):
        raise ValueError(f"if_batch_size must be None (the model's training batch) or a positive integer; "
                         f"got {if_batch_size!r}")
    if not 0 <= if_damp < 1:
        raise ValueError(f"if_damp must lie in [0, 1) (paper: 1e-3); got {if_damp!r}")
    if not if_scale > 0:
        raise ValueError(f"if_scale must be > 0 (paper: 1000); got {if_scale!r}")
    return resolve_explainers(explainers, model)


def run_plan(exp: Experiment, explainers: Sequence[str] | str | None, *, n_train: int, n_test: int,
             if_recursion_depth: int) -> dict[str, Any]:
    """What this run computes: the explainers and the budgets (the parameters, or seconds-long ones in a smoke run).

    A smoke run on ECG5000 leaves influence functions out unless they were asked for explicitly: one Hessian-vector
    product through the 140-step LSTM autoencoder takes about 2 s on a CPU core (the code path is MNIST's, and
    LSTM HVPs are covered by tests/test_examples.py).
    """
    run = resolve_explainers(explainers, exp.model)
    plan = {"explainers": run, "n_train": n_train, "n_test": n_test, "if_recursion_depth": if_recursion_depth,
            "simplex_steps": 1000, "notes": []}
    if exp.smoke:
        ecg = exp.dataset == "ecg5000"
        plan.update(n_train=20 if ecg else 40, n_test=10 if ecg else 20, if_recursion_depth=1, simplex_steps=50)
        if ecg and explainers is None and "influence_functions" in run:
            plan["explainers"] = [e for e in run if e != "influence_functions"]
            plan["notes"].append("smoke run on ECG5000: influence functions left out (about 2 s per LSTM "
                                 "Hessian-vector product on a CPU core); pass explainers to include them")
    return plan


def load_kwargs(dataset: str) -> dict[str, Any]:
    """ECG5000 in *examples* mode: all beats with binary labels (0 normal, 1 abnormal), random 80/20 split."""
    return {"ecg_mode": "examples"} if dataset == "ecg5000" else {}


def data_requirements(dataset: str, model: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    return [(dataset, load_kwargs(dataset))]


# ------------------------------------------------------------------------------------------ models
def model_spec(dataset: str, model: str | None = None) -> ModelSpec:
    """The explained model: Claim 1.1's autoencoder / SimCLR (MNIST, CIFAR) or the ECG all-beats LSTM AE."""
    if dataset == "ecg5000" and model is None:
        return AE_SPECS["ecg5000"].with_(checkpoint_every=ECG_TRACIN_EVERY, identity={"ecg_mode": "examples"})
    return fc.model_spec(dataset, model)


def checkpoint(dataset: str, model: str | None = None) -> str:
    from ..checkpoints import checkpoint_name

    if dataset == "ecg5000" and model is None:
        return checkpoint_name(CLAIM, dataset, "lstm-ae", variant="all-beats")
    return fc.checkpoint(dataset, model)


def required_checkpoints(dataset: str, model: str | None = None) -> list[str]:
    """The model checkpoint (its manifest lists the TracIn checkpoints it was saved with)."""
    return [checkpoint(dataset, model)]


def get_model(exp: Experiment, splits):
    """Load (inference) or train (train/smoke) the model this page explains.

    MNIST, CIFAR and SimCLR reuse exactly the Claim 1.1 model (:func:`feature_consistency.get_model`); ECG5000 trains
    its own LSTM autoencoder on all beats of the examples split (TracIn checkpoints every 25 epochs).
    """
    if exp.dataset != "ecg5000" or exp.model is not None:
        return fc.get_model(exp, splits)
    fit_kwargs = {"max_train_examples": 128} if exp.smoke else {}
    return exp.get_model(checkpoint(exp.dataset, exp.model), model_spec(exp.dataset, exp.model), splits.train,
                         data_info=json_data_info(splits), fit_kwargs=fit_kwargs)


def training_jobs(dataset: str, model: str | None = None, **_: Any) -> list:
    """ECG5000: the all-beats LSTM AE (with TracIn checkpoints); otherwise Claim 1.1's model (shared)."""
    if dataset != "ecg5000" or model is not None:
        return fc.training_jobs(dataset, model)
    from .jobs import TrainJob, estimate_cost

    spec = model_spec(dataset, model)
    name = checkpoint(dataset, model)
    return [TrainJob(NOTEBOOK, dataset, model, (name,), {}, (dataset, load_kwargs(dataset)),
                     estimate_cost(spec.arch, 3600, spec.n_epochs),
                     expect={name: {"n_epochs": spec.n_epochs, "batch_size": spec.batch_size,
                                    "patience": spec.patience, "checkpoint_every": spec.checkpoint_every}})]


def train_job(exp: Experiment) -> None:
    """Train (or load when current) the page's model."""
    get_model(exp, exp.load_data(**load_kwargs(exp.dataset)))


def hvp_batch_size(exp: Experiment, if_batch_size: int | None = None) -> int:
    """HVP minibatch of influence functions: the model's training batch (paper: the CLI batch, 300 MNIST/CIFAR,
    20 ECG5000) unless given; at most 8 in a smoke run."""
    b = int(if_batch_size) if if_batch_size else model_spec(exp.dataset, exp.model).batch_size
    return exp.size(b, min(b, 8))


def loss_kind(dataset: str) -> str:
    """The pretext loss IF and TracIn differentiate: L1 for the ECG LSTM AE, MSE for the image AEs."""
    return "l1" if dataset == "ecg5000" else "mse"


def tracin_states(exp: Experiment, name: str) -> list[dict[str, Tensor]]:
    """The TracIn checkpoints saved with ``name`` (a clear error when there are none)."""
    states = exp.tracin_checkpoints(name)
    if not states:
        raise ValueError(f"checkpoint {name!r} was saved without TracIn checkpoints; retrain it "
                         f"({exp.papermill_command('train')}) or leave 'tracin' out of explainers")
    return states


# ------------------------------------------------------------------------------------------ data
@dataclass
class Subsets:
    """The explained test examples and the ranked training examples ("subtrain"), with how they were chosen."""

    train_idx: Tensor
    test_idx: Tensor
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    n_classes: int
    notes: list[str] = field(default_factory=list)
    rules: dict[str, str] = field(default_factory=dict)

    @property
    def n_train(self) -> int:
        return len(self.train_idx)

    @property
    def n_test(self) -> int:
        return len(self.test_idx)


def capped_balanced_indices(labels: Tensor, n: int, n_classes: int, what: str) -> tuple[Tensor, str | None]:
    """ORIG's class-balanced rule (:func:`class_balanced_indices`), capped at ``n_classes × smallest class``.

    Returns the positions and, when the data held fewer examples than asked, a note saying so.
    """
    labels = torch.as_tensor(labels).long()
    counts = torch.bincount(labels, minlength=n_classes)
    smallest = int(counts.min())
    if smallest == 0:
        missing = torch.nonzero(counts == 0).squeeze(1).tolist()
        raise ValueError(f"{what}: classes {missing} have no example, so no class-balanced subset exists")
    cap = n_classes * smallest
    note = None
    if n > cap:
        note = (f"{what}: asked for {n:,} class-balanced examples but the smallest of the {n_classes} classes has "
                f"{smallest:,}, so {cap:,} are used ({smallest:,} per class)")
        n = cap
    return class_balanced_indices(labels, n, n_classes), note


def select_subsets(splits, dataset: str, n_train: int, n_test: int, seed: int) -> Subsets:
    """Subtrain and test examples as the authors chose them (experiments.md §3), capped to what the data holds.

    * subtrain: ``n_train`` class-balanced training examples (the (i // C)-th example of class i % C);
    * test: MNIST/CIFAR ``n_test`` class-balanced test examples; ECG5000 the first ``n_test`` of a seeded random
      permutation of the test split (ORIG).
    """
    ytr_all = splits.train.targets.long()
    yte_all = splits.test.targets.long()
    C = int(splits.info.get("n_classes") or (2 if dataset == "ecg5000" else int(max(ytr_all.max(), yte_all.max())) + 1))
    notes = []
    tr, note = capped_balanced_indices(ytr_all, n_train, C, "subtrain")
    notes += [note] if note else []
    if dataset == "ecg5000":
        perm = torch.randperm(len(yte_all), generator=torch.Generator().manual_seed(int(seed)))
        te = perm[:n_test]
        if n_test > len(yte_all):
            notes.append(f"test: asked for {n_test:,} examples but the test split holds {len(yte_all):,}; all are used")
        test_rule = f"the first {len(te):,} of a seeded random permutation of the {len(yte_all):,}-example test split"
    else:
        te, note = capped_balanced_indices(yte_all, n_test, C, "test")
        notes += [note] if note else []
        test_rule = f"{len(te):,} class-balanced test examples out of {len(yte_all):,}"
    x_train, y_train = splits.train.tensors(tr)
    x_test, y_test = splits.test.tensors(te)
    rules = {"subtrain": f"{len(tr):,} class-balanced training examples ({C} classes) out of {len(ytr_all):,}",
             "test": test_rule}
    return Subsets(tr, te, x_train, y_train.long(), x_test, y_test.long(), C, notes, rules)


def showcase_indices(test_labels: Tensor, n: int = 4) -> list[int]:
    """``n`` test positions for the qualitative figure: the first example of each class in turn (round robin)."""
    y = torch.as_tensor(test_labels).long()
    by_class = [torch.nonzero(y == c).squeeze(1).tolist() for c in torch.unique(y).tolist()]
    out: list[int] = []
    depth = 0
    while len(out) < min(n, len(y)):
        for pos in by_class:
            if depth < len(pos) and len(out) < n:
                out.append(pos[depth])
        depth += 1
    return out


# ------------------------------------------------------------------------------------------ explanations
def explain(exp: Experiment, net, sub: Subsets, explainers: Sequence[str], *, hvp_x: Tensor | None = None,
            tracin_checkpoints: Sequence[Mapping[str, Tensor]] | None = None, loss: str = "mse",
            if_recursion_depth: int = 100, if_batch_size: int = 300, if_damp: float = 1e-3,
            if_scale: float = 1000.0, simplex_steps: int = 1000,
            batch_size: int = 256) -> tuple[dict[str, Tensor], pd.DataFrame]:
    """Run every explainer on (test, subtrain) → ({explainer: (n_test, n_train) scores}, timings).

    Gradients and latents are taken in eval mode (FACT's fix; ORIG used train mode, i.e. denoising noise on and
    BatchNorm on single images). The latents are computed once and shared by SimplEx, DKNN and CosineNN.
    """
    scores: dict[str, Tensor] = {}
    rows = []
    latents = None

    def timed(name: str, detail: str, fn):
        t0 = time.perf_counter()
        out = fn()
        rows.append({"step": name, "seconds": time.perf_counter() - t0, "detail": detail})
        return out

    for e in explainers:
        if e == "influence_functions":
            if hvp_x is None:
                raise ValueError("influence functions need hvp_x (the training set HVP minibatches are drawn from)")
            detail = (f"LiSSA depth {if_recursion_depth}, HVP batch {if_batch_size} drawn with replacement from "
                      f"{len(hvp_x):,} training examples, damp {if_damp:g}, scale {if_scale:g}")
            scores[e] = timed(EXPLAINER_LABELS[e], detail, lambda: E.influence_functions(
                net, loss, sub.x_train, sub.x_test, hvp_x, damp=if_damp, scale=if_scale,
                recursion_depth=if_recursion_depth, batch_size=if_batch_size, seed=exp.seed, chunk_size=batch_size,
                device=exp.device, progress=exp.progress))
        elif e == "tracin":
            if not tracin_checkpoints:
                raise ValueError("TracIn needs the checkpoints saved during training (tracin_checkpoints=)")
            detail = f"{len(tracin_checkpoints)} checkpoints, learning-rate factor 1"
            scores[e] = timed(EXPLAINER_LABELS[e], detail, lambda: E.tracin(
                net, loss, sub.x_train, sub.x_test, tracin_checkpoints, chunk_size=batch_size, device=exp.device,
                progress=exp.progress))
        else:
            if latents is None:
                latents = timed("encoding (shared)", f"latents of {sub.n_train:,} + {sub.n_test:,} examples",
                                lambda: (E.encode(net, sub.x_train, batch_size=batch_size, device=exp.device),
                                         E.encode(net, sub.x_test, batch_size=batch_size, device=exp.device)))
            h_train, h_test = latents
            if e == "simplex":
                scores[e] = timed(EXPLAINER_LABELS[e], f"Adam lr 1e-3, {simplex_steps} steps", lambda: E.simplex(
                    h_train, h_test, n_steps=simplex_steps, device=exp.device, progress=exp.progress))
            elif e == "dknn":
                scores[e] = timed(EXPLAINER_LABELS[e], "1 / squared latent distance",
                                  lambda: E.dknn(h_train, h_test, device=exp.device))
            else:
                scores[e] = timed(EXPLAINER_LABELS[e], "cosine similarity of latents",
                                  lambda: E.cosine_nn(h_train, h_test, device=exp.device))
    timings = pd.DataFrame(rows, columns=["step", "seconds", "detail"])
    timings.insert(1, "n_test", sub.n_test)
    timings.insert(2, "n_train", sub.n_train)
    return scores, timings


# ------------------------------------------------------------------------------------------ metric
def _k(fraction: float, n: int) -> int:
    return int(fraction * n + 1e-9)  # as metrics.similarity_rates: int(fraction * n_train)


def per_example_rates(importance: Tensor, train_labels: Tensor, test_labels: Tensor,
                      fractions: Sequence[float] = FRACTIONS) -> pd.DataFrame:
    """Per test example, the share of its top-k / bottom-k training examples with its label, k = int(f·n_train).

    The mean over examples is exactly :func:`lfxai_utils.metrics.similarity_rates` (same stable ranking); keeping
    the examples gives confidence bands. Columns: ``example, fraction, percent, k, type, similarity_rate``.
    """
    imp = torch.as_tensor(importance)
    ytr, yte = torch.as_tensor(train_labels).long(), torch.as_tensor(test_labels).long()
    n_test, n_train = imp.shape
    if len(ytr) != n_train or len(yte) != n_test:
        raise ValueError(f"importance is {tuple(imp.shape)} but got {len(yte)} test and {len(ytr)} train labels")
    ks = [_k(float(f), n_train) for f in fractions]
    if min(ks) < 1:
        raise ValueError(f"fractions {list(fractions)} of {n_train} training examples give k = 0; use more examples")
    order = torch.argsort(imp, dim=1, descending=True, stable=True)
    matches = (ytr[order] == yte[:, None]).double()
    cum = torch.cat([torch.zeros(n_test, 1, dtype=torch.double), matches.cumsum(1)], dim=1)
    kt = torch.tensor(ks)
    most = cum[:, kt] / kt
    least = (cum[:, n_train:n_train + 1] - cum[:, n_train - kt]) / kt
    F_ = len(ks)
    frames = []
    for typ, vals in (("most", most), ("least", least)):
        frames.append(pd.DataFrame({
            "example": np.repeat(np.arange(n_test), F_),
            "fraction": np.tile(np.asarray(fractions, dtype=float), n_test),
            "k": np.tile(np.asarray(ks), n_test),
            "type": typ,
            "similarity_rate": vals.reshape(-1).numpy(),
        }))
    out = pd.concat(frames, ignore_index=True)
    out.insert(2, "percent", (100 * out["fraction"]).round(1))
    return out


def rates(scores: Mapping[str, Tensor], sub: Subsets, fractions: Sequence[float] = FRACTIONS) -> pd.DataFrame:
    """:func:`per_example_rates` for every explainer; ``explainer`` and ``type`` columns hold display labels."""
    frames = []
    for e, s in scores.items():
        df = per_example_rates(s, sub.y_train, sub.y_test, fractions)
        df.insert(0, "explainer", EXPLAINER_LABELS.get(e, e))
        frames.append(df)
    out = pd.concat(frames, ignore_index=True)
    out["type"] = out["type"].map(TYPE_LABELS)
    return out


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """Mean similarity rate and 95 % CI half-width (over test examples) per explainer, type and percentage."""
    g = (df.groupby(["explainer", "type", "percent", "k"], sort=False)["similarity_rate"]
         .agg(["mean", "std", "count"]).reset_index())
    g["ci95"] = 1.96 * g["std"].fillna(0) / np.sqrt(g["count"])
    return g.rename(columns={"mean": "similarity_rate", "count": "n_test"}).drop(columns="std")


def rate_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Wide table: one row per explainer and type, one column per % of examples selected."""
    t = summary.pivot_table(index=["explainer", "type"], columns="percent", values="similarity_rate", sort=False)
    t.columns = [f"{c:g} %" for c in t.columns]
    return t


# ------------------------------------------------------------------------------------------ figures
def top_bottom(scores: Tensor, rows: Sequence[int], k: int = 3) -> tuple[Tensor, Tensor]:
    """Positions of the ``k`` most and ``k`` least important training examples for each test row (stable order)."""
    s = torch.as_tensor(scores)[list(rows)]
    order = torch.argsort(s, dim=1, descending=True, stable=True)
    return order[:, :k], order[:, -k:].flip(1)


def label_name(dataset: str, y: int) -> str:
    names = LABEL_NAMES.get(dataset)
    return names[y] if names and 0 <= y < len(names) else str(y)


def examples_figures(dataset: str, sub: Subsets, scores: Mapping[str, Tensor], rows: Sequence[int], k: int = 3):
    """One figure per showcased test example: per explainer, its top-k and bottom-k training examples.

    Images through :func:`plotting.image_grid`; series as small line plots (the test series in grey behind each
    training series). Each training example is captioned
    with its label, green when it matches the test example's, red otherwise. Returns a list of figures.
    """
    names = list(scores)
    tb = {e: top_bottom(scores[e], rows, k) for e in names}
    cols = ["test example"] + [f"top {i + 1}" for i in range(k)] + [f"bottom {i + 1}" for i in range(k)]
    figs = []
    for r, t in enumerate(rows):
        yt = int(sub.y_test[t])
        picks = [torch.cat([tb[e][0][r], tb[e][1][r]]).tolist() for e in names]
        title = f"test example #{int(sub.test_idx[t])} ({label_name(dataset, yt)})"
        row_labels = [EXPLAINER_LABELS.get(e, e) for e in names]
        if sub.x_test.dim() == 4:
            imgs = np.stack([[to_display_image(sub.x_test[t].numpy())]
                             + [to_display_image(sub.x_train[j].numpy()) for j in p] for p in picks])
            fig = image_grid(imgs, row_labels=row_labels, col_labels=cols, size=1.15, title=title)
            axes = np.asarray(fig.axes).reshape(len(names), len(cols))
        else:
            fig, axes = plt.subplots(len(names), len(cols), figsize=(1.6 * len(cols), 1.1 * len(names)),
                                     squeeze=False, sharex=True, sharey=True)
            for i, p in enumerate(picks):
                axes[i, 0].plot(sub.x_test[t].reshape(-1).numpy(), color="black", lw=0.8)
                for c, j in enumerate(p, start=1):   # the test series in grey behind, for comparison
                    axes[i, c].plot(sub.x_test[t].reshape(-1).numpy(), color="lightgrey", lw=0.8)
                    axes[i, c].plot(sub.x_train[j].reshape(-1).numpy(), color="#0072B2", lw=0.8)
                for c in range(len(cols)):
                    axes[i, c].set_xticks([])
                    axes[i, c].set_yticks([])
                    if i == 0:
                        axes[i, c].set_title(cols[c], fontsize=8)
                axes[i, 0].set_ylabel(row_labels[i], fontsize=8)
            fig.suptitle(title)
        for i, p in enumerate(picks):
            for c, j in enumerate(p, start=1):
                yj = int(sub.y_train[j])
                axes[i, c].set_xlabel(label_name(dataset, yj), fontsize=7, labelpad=1,
                                      color="#009E73" if yj == yt else "#D55E00")
        fig.tight_layout()
        figs.append(fig)
    return figs


# ------------------------------------------------------------------------------------------ verdicts
def model_label(dataset: str, model: str | None) -> str:
    return model or ("LSTM AE (all beats)" if dataset == "ecg5000" else "denoising AE")


def paper_lissa(dataset: str, model: str | None = None) -> tuple[int, int]:
    """The paper's LiSSA budget: (recursion depth 100, HVP minibatch = the model's training batch)."""
    return 100, model_spec(dataset, model).batch_size


def lissa_label(exp: Experiment, recursion_depth: int, batch_size: int) -> str:
    """How influence functions ran, for their verdict row: the LiSSA budget, and the paper's when it differs."""
    paper = paper_lissa(exp.dataset, exp.model)
    label = f"LiSSA depth {recursion_depth}, HVP minibatch {batch_size}"
    if (recursion_depth, batch_size) != paper:
        label += f"; paper: depth {paper[0]}, minibatch {paper[1]}"
    return label


def verdicts(exp: Experiment, summary: pd.DataFrame, prior: float, n_train: int, n_test: int, *,
             lissa: str | None = None) -> list[Verdict]:
    """Per explainer: most-important rate above the label prior and least-important rate below it at the smallest k.

    When both families ran, one more verdict checks the paper's ranking: every representation-based explainer of the
    paper (SimplEx, DKNN) beats every loss-based one (IF, TracIn) on the most-important rate at the smallest k.
    ``lissa`` (:func:`lissa_label`) is appended to the influence-function row, so that a reduced budget shows.
    """
    p0 = float(summary["percent"].min())
    at = summary[summary.percent == p0]
    k0 = int(at["k"].iloc[0])
    model = model_label(exp.dataset, exp.model)
    data = f"{n_test:,} test examples, subtrain of {n_train:,}"
    out = []
    most_at = {}
    for name in dict.fromkeys(at["explainer"]):
        rows = at[at.explainer == name].set_index("type")["similarity_rate"]
        most, least = float(rows[TYPE_LABELS["most"]]), float(rows[TYPE_LABELS["least"]])
        most_at[name] = most
        holds = most > prior and least < prior
        extra = f"; {lissa}" if lissa and name == EXPLAINER_LABELS["influence_functions"] else ""
        ours = (f"at {p0:g} % (k = {k0}): most important {most:.3f}, least important {least:.3f}, label prior "
                f"{prior:.3f} ({data}{extra})")
        out.append(Verdict("1.2 example consistency", exp.dataset, model, f"similarity rate, {name}", ours,
                           "most-important rate above the prior, least-important below it", ANCHOR,
                           f"most-important rate > label prior and least-important rate < label prior at the "
                           f"smallest k ({p0:g} % of the subtrain)", verdict_word(holds)))
    rep = [EXPLAINER_LABELS[e] for e in ("simplex", "dknn") if EXPLAINER_LABELS[e] in most_at]
    lb = [EXPLAINER_LABELS[e] for e in LOSS_BASED if EXPLAINER_LABELS[e] in most_at]
    if rep and lb:
        worst_rep = min(rep, key=most_at.get)
        best_lb = max(lb, key=most_at.get)
        holds = most_at[worst_rep] > most_at[best_lb]
        ours = (f"at {p0:g} % (k = {k0}): weakest representation-based {worst_rep} {most_at[worst_rep]:.3f} vs "
                f"strongest loss-based {best_lb} {most_at[best_lb]:.3f} ({data})")
        out.append(Verdict("1.2 example consistency", exp.dataset, model,
                           "ranking: representation-based > loss-based", ours,
                           "SimplEx and DKNN strongest; IF and TracIn weaker", ANCHOR_RANKING,
                           f"min(SimplEx, DKNN) most-important rate > max(IF, TracIn) at {p0:g} %",
                           verdict_word(holds)))
    return out
