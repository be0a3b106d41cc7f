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
from ..labels import EXAMPLE_METHOD_LABELS, labels_for
from .common import AE_SPECS, Experiment, ModelSpec, json_data_info
from .spec import ClaimSpec

NOTEBOOK = "claim1_example_consistency"
CLAIM = "claim1"
DATASETS = ("mnist", "ecg5000", "cifar10", "cifar100")
MODELS = (None, "simclr")
EXPLAINERS = E.EXAMPLE_METHODS            # influence_functions, tracin, simplex, dknn, cosine_nn
LOSS_BASED = ("influence_functions", "tracin")
REPRESENTATION_BASED = ("simplex", "dknn", "cosine_nn")
#: SimCLR has no reconstruction loss: the authors ran only the representation-based explainers on it.
SIMCLR_EXPLAINERS = REPRESENTATION_BASED
EXPLAINER_LABELS = labels_for(EXPLAINERS, EXAMPLE_METHOD_LABELS)
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
             if_batch_size: int | None = None, if_damp: float = 1e-3, if_scale: float = 1000.0,
             if_n_train: int | None = None, if_n_test: int | None = None) -> list[str]:
    """Check the page's parameters (clear ``ValueError`` naming the valid values); return the explainers to run."""
    fc.validate(dataset, model)
    for name, v, low in (("if_n_train", if_n_train, 2), ("if_n_test", if_n_test, 1)):
        if v is not None and (not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < low):
            raise ValueError(f"{name} must be None (the page's whole subset) or an integer >= {low}; got {v!r}")
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
             if_recursion_depth: int, if_n_train: int | None = None,
             if_n_test: int | None = None) -> dict[str, Any]:
    """What this run computes: the explainers and the budgets (the parameters, or seconds-long ones in a smoke run).

    A smoke run on ECG5000 leaves influence functions out unless they were asked for explicitly: one Hessian-vector
    product through the 140-step LSTM autoencoder takes about 2 s on a CPU core (the code path is MNIST's, and
    LSTM HVPs are covered by tests/test_examples.py).
    """
    run = resolve_explainers(explainers, exp.model)
    plan = {"explainers": run, "n_train": n_train, "n_test": n_test, "if_recursion_depth": if_recursion_depth,
            "if_n_train": if_n_train, "if_n_test": if_n_test, "simplex_steps": 1000, "notes": []}
    if exp.smoke:
        ecg = exp.dataset == "ecg5000"
        plan.update(n_train=20 if ecg else 40, n_test=10 if ecg else 20, if_recursion_depth=1, simplex_steps=50,
                    if_n_train=None if if_n_train is None else min(if_n_train, 20),
                    if_n_test=None if if_n_test is None else min(if_n_test, 10))
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

    MNIST, CIFAR and SimCLR reuse exactly the Claim 1.1 model
    (:func:`~lfxai_utils.experiments.feature_consistency.get_model`); ECG5000 trains its own LSTM autoencoder on all
    beats of the examples split (TracIn checkpoints every 25 epochs).
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


def spaced_subset(n: int, k: int | None) -> list[int]:
    """Indices of ``k`` of ``n`` items, evenly spaced from the first to the last (the last always included);
    all ``n`` when ``k`` is None or at least ``n``; the last one alone when ``k == 1``."""
    if k is None or k >= n:
        return list(range(n))
    if k < 1:
        raise ValueError(f"need at least one checkpoint, got {k}")
    if k == 1:
        return [n - 1]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def tracin_states(exp: Experiment, name: str, n_checkpoints: int | None = None) -> list[dict[str, Tensor]]:
    """The TracIn checkpoints saved with ``name`` (a clear error when there are none); with ``n_checkpoints``,
    that many of them, evenly spaced over training, the last included (:func:`spaced_subset`)."""
    states = exp.tracin_checkpoints(name)
    if not states:
        raise ValueError(f"checkpoint {name!r} was saved without TracIn checkpoints; retrain it "
                         f"({exp.papermill_command('train')}) or leave 'tracin' out of explainers")
    return [states[i] for i in spaced_subset(len(states), n_checkpoints)]


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
    """ORIG's class-balanced rule (:func:`~lfxai_utils.data.class_balanced_indices`), capped at
    ``n_classes × smallest class``.

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


def nested_subset(sub: Subsets, n_train: int | None, n_test: int | None) -> Subsets:
    """The first ``n_train`` subtrain and ``n_test`` test examples of ``sub`` (``None``: all). The subtrain's
    order is the class-balanced rule's (class i % C in turn), so a prefix of a multiple of C examples is still
    class-balanced; the test order is the balanced rule's (images) or a seeded permutation (ECG5000)."""
    ntr = sub.n_train if n_train is None else min(int(n_train), sub.n_train)
    nte = sub.n_test if n_test is None else min(int(n_test), sub.n_test)
    rules = {"subtrain": f"the first {ntr:,} of the page's subtrain ({sub.rules.get('subtrain', '')})",
             "test": f"the first {nte:,} of the page's test examples ({sub.rules.get('test', '')})"}
    return Subsets(sub.train_idx[:ntr], sub.test_idx[:nte], sub.x_train[:ntr], sub.y_train[:ntr], sub.x_test[:nte],
                   sub.y_test[:nte], sub.n_classes, list(sub.notes), rules)


# ------------------------------------------------------------------------------------------ explanations
def explain(exp: Experiment, net, sub: Subsets, explainers: Sequence[str], *, hvp_x: Tensor | None = None,
            tracin_checkpoints: Sequence[Mapping[str, Tensor]] | None = None, loss: str = "mse",
            if_recursion_depth: int = 100, if_batch_size: int = 300, if_damp: float = 1e-3,
            if_scale: float = 1000.0, simplex_steps: int = 1000,
            batch_size: int = 256, if_subset: Subsets | None = None) -> tuple[dict[str, Tensor], pd.DataFrame]:
    """Run every explainer on (test, subtrain) → ({explainer: (n_test, n_train) scores}, timings).

    Gradients and latents are taken in eval mode (FACT's fix; ORIG used train mode, i.e. denoising noise on and
    BatchNorm on single images; :func:`explain_train_mode` runs that). The latents are computed once and shared by
    SimplEx, DKNN and CosineNN. ``if_subset`` (:func:`nested_subset`): influence functions run on it instead of
    ``sub`` (a CPU budget). ``loss``: a loss kind, or a per-example loss function.
    """
    scores: dict[str, Tensor] = {}
    rows = []
    latents = None

    def timed(name: str, detail: str, fn, on: Subsets = sub):
        t0 = time.perf_counter()
        out = fn()
        rows.append({"step": name, "n_test": on.n_test, "n_train": on.n_train,
                     "seconds": time.perf_counter() - t0, "detail": detail})
        return out

    for e in explainers:
        if e == "influence_functions":
            if hvp_x is None:
                raise ValueError("influence functions need hvp_x (the training set HVP minibatches are drawn from)")
            isub = if_subset or sub
            detail = (f"LiSSA depth {if_recursion_depth}, HVP batch {if_batch_size} drawn with replacement from "
                      f"{len(hvp_x):,} training examples, damp {if_damp:g}, scale {if_scale:g}"
                      + (f"; {isub.n_test:,} test × {isub.n_train:,} subtrain" if if_subset is not None else ""))
            scores[e] = timed(EXPLAINER_LABELS[e], detail, lambda: E.influence_functions(
                net, loss, isub.x_train, isub.x_test, hvp_x, damp=if_damp, scale=if_scale,
                recursion_depth=if_recursion_depth, batch_size=if_batch_size, seed=exp.seed, chunk_size=batch_size,
                device=exp.device, progress=exp.progress), on=isub)
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
    # each row counts the examples its step ran on (influence functions: ``if_subset`` when given)
    return scores, pd.DataFrame(rows, columns=["step", "n_test", "n_train", "seconds", "detail"])


# ------------------------------------------------------------------------------------------ the authors' train mode
def train_mode_differs(net) -> bool:
    """Whether explaining in train mode changes anything: BatchNorm, dropout, or an autoencoder whose forward
    perturbs its input in training (the denoising / inpainting pretext). The ECG LSTM AE has none of them."""
    from torch import nn

    from ..models.pretext import Identity

    if any(isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.Dropout)) for m in net.modules()):
        return True
    pretext = getattr(net, "pretext", None)
    return isinstance(pretext, nn.Module) and not isinstance(pretext, Identity)


def train_mode_model(net):
    """A copy of ``net`` that computes like the authors' ``autoencoder.train()`` explanations, without touching
    ``net``: every BatchNorm uses the statistics of the batch it sees (running statistics removed, so a single-example
    gradient sees single-image statistics, as the authors' batch-size-1 loaders; nothing is updated), and
    :func:`train_mode_loss` switches the copy to train mode for each forward (pretext noise / mask on)."""
    import copy

    work = copy.deepcopy(net)
    torch.func.replace_all_batch_norm_modules_(work)
    return work


def train_mode_loss(kind: str) -> E.LossFn:
    """The per-example pretext loss of :func:`lfxai_utils.examples.reconstruction_loss`, evaluated with the model in
    train mode (restored afterwards): the authors' explanation mode (experiments.md §3, §12.6)."""
    base = E.reconstruction_loss(kind)

    def loss_fn(model, x):
        flags = [(m, m.training) for m in model.modules()]
        model.train()
        try:
            return base(model, x)
        finally:
            for m, f in flags:
                m.training = f

    loss_fn.__name__ = f"train_mode_{kind}_loss"
    return loss_fn


def explain_train_mode(exp: Experiment, net, sub: Subsets, explainers: Sequence[str], *,
                       hvp_x: Tensor | None = None, tracin_checkpoints: Sequence[Mapping[str, Tensor]] | None = None,
                       loss: str = "mse", if_recursion_depth: int = 100, if_batch_size: int = 300,
                       if_damp: float = 1e-3, if_scale: float = 1000.0, batch_size: int = 256,
                       if_subset: Subsets | None = None) -> tuple[dict[str, Tensor], pd.DataFrame]:
    """The loss-based explainers of ``explainers`` (IF, TracIn) as the authors ran them, in train mode
    (:func:`train_mode_model`, :func:`train_mode_loss`), on the same subsets and budgets as :func:`explain`.

    The pretext noise is drawn from a generator seeded with ``exp.seed`` (the caller's RNG state is restored).
    Returns ``({explainer: scores}, timings)``; empty when no loss-based explainer is asked for.
    """
    work = train_mode_model(net)
    keep = set(work.state_dict())
    ckpts = ([{k: v for k, v in st.items() if k in keep} for st in tracin_checkpoints]
             if tracin_checkpoints else None)
    wanted = [e for e in explainers if e in LOSS_BASED]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(exp.seed))
        return explain(exp, work, sub, wanted, hvp_x=hvp_x, tracin_checkpoints=ckpts, loss=train_mode_loss(loss),
                       if_recursion_depth=if_recursion_depth, if_batch_size=if_batch_size, if_damp=if_damp,
                       if_scale=if_scale, batch_size=batch_size, if_subset=if_subset) if wanted else ({}, pd.DataFrame())


#: Train mode costs about twice eval mode per gradient (measured: 0.93 s vs 0.42 s per 64 MNIST images on this CPU),
#: so the comparison runs on the first (n_train, n_test) examples of the page's subsets; eval mode is read on the
#: same examples (a loss-based score of a (test, train) pair does not depend on the other examples scored).
TRAIN_MODE_SIZES = (200, 200)


def train_mode_subsets(sub: Subsets, if_sub: Subsets | None, sizes: tuple[int, int] = TRAIN_MODE_SIZES):
    """``(subset, IF subset or None)`` of the train-mode comparison: nested prefixes of the page's subsets."""
    tm = nested_subset(sub, *sizes)
    return tm, (nested_subset(if_sub, *sizes) if if_sub is not None else None)


def slice_scores(scores: Mapping[str, Tensor], sub: Subsets, subsets: Mapping[str, Subsets] | None = None
                 ) -> dict[str, Tensor]:
    """The scores of the first ``n_test × n_train`` examples of ``sub`` (``subsets``: per explainer) — the same
    (test, train) pairs as on the full subsets, because a loss-based score of a pair does not depend on the others."""
    out = {}
    for e, sc in scores.items():
        own = (subsets or {}).get(e, sub)
        out[e] = torch.as_tensor(sc)[:own.n_test, :own.n_train]
    return out


def mode_table(eval_summary: pd.DataFrame, train_summary: pd.DataFrame) -> pd.DataFrame:
    """Eval mode (ours) beside train mode (the authors') for the explainers of ``train_summary``: one row per
    explainer, type and percentage, columns ``eval mode``, ``train mode``, ``train − eval``."""
    if train_summary is None or train_summary.empty:
        return pd.DataFrame(columns=["explainer", "type", "percent", "k", "eval mode", "train mode", "train − eval"])
    key = ["explainer", "type", "percent", "k"]
    ev = eval_summary.set_index(key)["similarity_rate"].rename("eval mode")
    tr = train_summary.set_index(key)["similarity_rate"].rename("train mode")
    out = pd.concat([ev, tr], axis=1, join="inner").reset_index()
    out["train − eval"] = out["train mode"] - out["eval mode"]
    return out


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


def rates(scores: Mapping[str, Tensor], sub: Subsets, fractions: Sequence[float] = FRACTIONS,
          subsets: Mapping[str, Subsets] | None = None) -> pd.DataFrame:
    """:func:`per_example_rates` for every explainer; ``explainer`` and ``type`` columns hold display labels.
    ``subsets``: explainers scored on another subset than ``sub`` (e.g. influence functions on a budget)."""
    frames = []
    for e, s in scores.items():
        own = (subsets or {}).get(e, sub)
        df = per_example_rates(s, own.y_train, own.y_test, fractions)
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

    Images through :func:`~lfxai_utils.plotting.image_grid`; series as small line plots (the test series in grey
    behind each training series). Each training example is captioned with its label, green when it matches the test
    example's, red otherwise. Returns a list of figures.
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


#: Why the verdict rows use eval mode although the authors explained in train mode (stated in each criterion).
EVAL_MODE_REASON = ("the verdict uses eval mode (FACT's fix): in train mode the explanation of one example "
                    "depends on random pretext noise and on the statistics of whatever batch BatchNorm sees, so it "
                    "is not a function of the trained model; the authors' train mode is reported beside it")


def verdicts(exp: Experiment, summary: pd.DataFrame, prior: float, n_train: int, n_test: int, *,
             lissa: str | None = None, train_summary: pd.DataFrame | None = None,
             sizes: Mapping[str, tuple[int, int]] | None = None, train_mode_note: str | None = None,
             eval_on_train_subset: pd.DataFrame | None = None,
             train_sizes: Mapping[str, tuple[int, int]] | None = None) -> list[Verdict]:
    """Per explainer: most-important rate above the label prior and least-important rate below it at the smallest k.

    When both families ran, one more verdict checks the paper's ranking: every representation-based explainer of the
    paper (SimplEx, DKNN) beats every loss-based one (IF, TracIn) on the most-important rate at the smallest k.
    ``lissa`` (:func:`lissa_label`) is appended to the influence-function row, so that a reduced budget shows.
    ``train_summary`` (:func:`summarise` of :func:`explain_train_mode`'s scores): the loss-based rows also give the
    train-mode rates (the authors' mode) — the verdict stays the eval-mode one, for :data:`EVAL_MODE_REASON`;
    ``eval_on_train_subset`` gives the eval-mode rates on the same examples (``train_sizes``: per explainer label
    ``(n_test, n_train)`` of that comparison);
    ``train_mode_note`` says why there are none (e.g. a model train mode does not change). ``sizes``:
    ``{explainer label: (n_test, n_train)}`` for explainers scored on another subset than the page's.
    """
    p0 = float(summary["percent"].min())
    at = summary[summary.percent == p0]
    model = model_label(exp.dataset, exp.model)
    out = []
    most_at = {}
    tr_at = train_summary[train_summary.percent == p0] if train_summary is not None and len(train_summary) else None
    for name in dict.fromkeys(at["explainer"]):
        sel = at[at.explainer == name]
        k0 = int(sel["k"].iloc[0])
        rows = sel.set_index("type")["similarity_rate"]
        most, least = float(rows[TYPE_LABELS["most"]]), float(rows[TYPE_LABELS["least"]])
        most_at[name] = most
        holds = most > prior and least < prior
        nte, ntr = (sizes or {}).get(name, (n_test, n_train))
        data = f"{nte:,} test examples, subtrain of {ntr:,}"
        extra = f"; {lissa}" if lissa and name == EXPLAINER_LABELS["influence_functions"] else ""
        ours = (f"at {p0:g} % (k = {k0}): most important {most:.3f}, least important {least:.3f}, label prior "
                f"{prior:.3f} ({data}{extra}); eval mode")
        criterion = (f"most-important rate > label prior and least-important rate < label prior at the "
                     f"smallest k ({p0:g} % of the subtrain)")
        loss_based = name in (EXPLAINER_LABELS[e] for e in LOSS_BASED)
        if loss_based:
            if tr_at is not None and name in set(tr_at["explainer"]):
                tr = tr_at[tr_at.explainer == name].set_index("type")["similarity_rate"]
                where = ""
                if train_sizes and name in train_sizes:
                    where = f" on the first {train_sizes[name][0]:,} test × {train_sizes[name][1]:,} subtrain"
                ours += (f"; train mode (the authors'){where}: most important {float(tr[TYPE_LABELS['most']]):.3f}, "
                         f"least important {float(tr[TYPE_LABELS['least']]):.3f}")
                if eval_on_train_subset is not None and len(eval_on_train_subset):
                    e_at = eval_on_train_subset[(eval_on_train_subset.percent == p0)
                                                & (eval_on_train_subset.explainer == name)]
                    if len(e_at):
                        ev = e_at.set_index("type")["similarity_rate"]
                        ours += (f" against eval mode there: most important {float(ev[TYPE_LABELS['most']]):.3f}, "
                                 f"least important {float(ev[TYPE_LABELS['least']]):.3f}")
            elif train_mode_note:
                ours += f"; train mode: {train_mode_note}"
            criterion += "; " + EVAL_MODE_REASON
        out.append(Verdict("1.2 example consistency", exp.dataset, model, f"similarity rate, {name}", ours,
                           "most-important rate above the prior, least-important below it", ANCHOR,
                           criterion, verdict_word(holds)))
    rep = [EXPLAINER_LABELS[e] for e in ("simplex", "dknn") if EXPLAINER_LABELS[e] in most_at]
    lb = [EXPLAINER_LABELS[e] for e in LOSS_BASED if EXPLAINER_LABELS[e] in most_at]
    if rep and lb:
        worst_rep = min(rep, key=most_at.get)
        best_lb = max(lb, key=most_at.get)
        holds = most_at[worst_rep] > most_at[best_lb]
        k0 = int(at["k"].iloc[0])
        ours = (f"at {p0:g} % (k = {k0}): weakest representation-based {worst_rep} {most_at[worst_rep]:.3f} vs "
                f"strongest loss-based {best_lb} {most_at[best_lb]:.3f} ({n_test:,} test examples, subtrain of "
                f"{n_train:,}; eval mode)")
        out.append(Verdict("1.2 example consistency", exp.dataset, model,
                           "ranking: representation-based > loss-based", ours,
                           "SimplEx and DKNN strongest; IF and TracIn weaker", ANCHOR_RANKING,
                           f"min(SimplEx, DKNN) most-important rate > max(IF, TracIn) at {p0:g} %",
                           verdict_word(holds)))
    return out


# ------------------------------------------------------------------------------------------ the book's interface
#: What the book and ``make checkpoints`` know of this page: one model per (dataset, model), no page parameter.
SPEC = ClaimSpec(NOTEBOOK, DATASETS, MODELS, data=data_requirements, checkpoints=required_checkpoints,
                 jobs=training_jobs, train=train_job)
