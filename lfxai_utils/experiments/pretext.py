"""Claim 2 — pretext-task sensitivity (paper §4.2, experiments.md §5; FACT "Claims 2.1 and 2.2").

Do encoders trained on different pretext tasks rely on the same features and the same training examples?  Per
run, three autoencoders (reconstruction, denoising, inpainting) and a classifier share the encoder architecture.
For each model we compute

* the label-free feature importance of its **encoder** (for the classifier, the pre-head latent) on the explained
  test images (``|GradientSHAP|`` by default, zero baseline), and
* the label-free example importance (DKNN by default) between the explained test images and the class-balanced
  training subset, with inputs in [0, 1] as in training (ORIG fed DKNN raw 0–255 pixels, experiments.md §12.2);

then the Pearson and Spearman 4×4 matrices between tasks of the flattened importance arrays, per run, summarised
as mean ± std over runs.  The paper calls the feature correlations "moderate" (Claim 2.1) and the example
correlations "low" (Claim 2.2); :func:`verdicts` states the thresholds.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .. import examples as ex
from ..checkpoints import checkpoint_name
from ..data import class_balanced_indices
from ..features import attribute_dataset
from ..metrics import correlation_matrices
from ..plotting import to_display_image
from ..report import Verdict, mean_pm, verdict_word
from ..labels import EXAMPLE_METHOD_LABELS, FEATURE_METHOD_LABELS, dataset_label, labels_for
from .common import Experiment, ModelSpec, check_choice, json_data_info
from .spec import ClaimSpec

NOTEBOOK = "claim2_pretext"
CLAIM = "claim2-pretext"
DATASETS = ("mnist", "cifar10", "cifar100")
MODELS = (None,)
TASKS = ("reconstruction", "denoising", "inpainting", "classifier")
TASK_LABELS = {"reconstruction": "Reconstruction", "denoising": "Denoising", "inpainting": "Inpainting",
               "classifier": "Classification"}
FEATURE_METHODS = ("gradient_shap", "integrated_gradients", "saliency", "random")
EXAMPLE_METHODS = ("dknn", "simplex", "tracin", "influence_functions")
FEATURE_LABELS = labels_for(FEATURE_METHODS, FEATURE_METHOD_LABELS)
#: (this page writes "Influence functions", lower case, in its tables and figures)
EXAMPLE_LABELS = labels_for(EXAMPLE_METHODS, EXAMPLE_METHOD_LABELS, influence_functions="Influence functions")
#: Latent size and architectures per dataset (experiments.md §1.1, §5: MNIST d = 4; FACT CIFAR d = 16).
ARCHS = {"mnist": ("mnist_ae", "mnist_classifier", 4), "cifar10": ("cifar_ae", "cifar_classifier", 16),
         "cifar100": ("cifar_ae", "cifar_classifier", 16)}
N_EPOCHS, BATCH_SIZE, PATIENCE = 100, 300, 10
#: Runs whose models keep TracIn checkpoints every 10 epochs (the method sweep's TracIn / influence functions).
TRACIN_RUNS = (0, 1)
#: Datasets whose sweep runs keep TracIn checkpoints: MNIST only (the book runs the sweep there). A CIFAR model's
#: TracIn states are 4 MB each, and 2 runs × 4 models × 5 states would exceed CIFAR-10's 120 MiB budget alone.
TRACIN_DATASETS = ("mnist",)


def tracin_runs(dataset: str) -> tuple[int, ...]:
    """The runs of ``dataset`` trained with TracIn checkpoints (:data:`TRACIN_RUNS` for MNIST, none elsewhere)."""
    return TRACIN_RUNS if dataset in TRACIN_DATASETS else ()
#: Runs of 4 models in the paper (``n_runs=None`` means this when training).
N_RUNS = 5
N_CLASSES = {"mnist": 10, "cifar10": 10, "cifar100": 100}
#: Run r seeds its models with seed + r + TASK_SEED_STRIDE·k (k = task index; see :func:`model_seed`).
TASK_SEED_STRIDE = 100
#: Integrated Gradients evaluates n_steps (50) copies of every input at once: bound it (CIFAR would need GBs).
IG_INTERNAL_BATCH = 512
#: Verdict bands on the mean off-diagonal Pearson correlation (our reading of the paper's words).
MODERATE = (0.3, 0.7)
#: Below this mean correlation the agreement is "low".
LOW = 0.3
FEATURE_ANCHOR = ("paper §4.2 (feature-importance Pearson table; its numbers are in the PDF only, no repository "
                  "stores them) and FACT abstract (iii): 'moderate correlation among the highest scored features' "
                  "between models trained on different pretext tasks (reproduced by FACT)")
EXAMPLE_ANCHOR = ("paper §4.2 (example-importance Pearson table; numbers in the PDF only) and FACT abstract (iv): "
                  "'low correlation in example scores measured on a fixed set of data points' (reproduced by FACT)")


# ------------------------------------------------------------------------------------------ parameters
def validate(feature_method: str, example_method: str, n_runs: int, n_explain: int | None = None,
             n_train: int = 1000) -> None:
    """Raise ``ValueError`` (listing the valid values) for a bad notebook parameter."""
    check_choice("feature_method", feature_method, FEATURE_METHODS)
    check_choice("example_method", example_method, EXAMPLE_METHODS)
    if not isinstance(n_runs, (int, np.integer)) or n_runs < 1:
        raise ValueError(f"n_runs must be a positive integer (the paper uses 5); got {n_runs!r}")
    if n_explain is not None and (not isinstance(n_explain, (int, np.integer)) or n_explain < 2):
        raise ValueError(f"n_explain must be None (the whole test set) or an integer >= 2; got {n_explain!r}")
    if not isinstance(n_train, (int, np.integer)) or n_train < 2:
        raise ValueError(f"n_train (the class-balanced training subset) must be an integer >= 2; got {n_train!r}")


def data_requirements(dataset: str, model: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    return [(dataset, {})]


def model_key(task: str) -> str:
    """The checkpoint-name part of a task: ``<task>-ae`` or ``classifier``."""
    check_choice("task", task, TASKS)
    return "classifier" if task == "classifier" else f"{task}-ae"


def checkpoint(dataset: str, task: str, run: int) -> str:
    return checkpoint_name(CLAIM, dataset, model_key(task), run=run)


def required_checkpoints(dataset: str, model: str | None = None, n_runs: int | None = N_RUNS,
                         tasks: Sequence[str] = TASKS) -> list[str]:
    """The 4 × ``n_runs`` checkpoints of the page (run-major order; ``None``: the paper's :data:`N_RUNS`)."""
    return [checkpoint(dataset, t, r) for r in range(N_RUNS if n_runs is None else n_runs) for t in tasks]


def n_classes_of(splits) -> int:
    return int(splits.info.get("n_classes") or int(splits.train.targets.max()) + 1)


def model_spec(dataset: str, task: str, n_classes: int, run: int, *, tracin: bool = False) -> ModelSpec:
    """Architecture and paper settings (100 epochs, patience 10, batch 300, Adam 1e-3) of one task's model.

    ``tracin=True`` keeps TracIn checkpoints every 10 epochs (only needed for ``example_method="tracin"``).
    """
    ae, clf, d = ARCHS[dataset]
    if task == "classifier":
        arch, kwargs = clf, {"latent_dim": d, "n_classes": int(n_classes)}
    else:
        arch, kwargs = ae, {"latent_dim": d, "pretext": check_choice("task", task, TASKS)}
    return ModelSpec(arch, kwargs, n_epochs=N_EPOCHS, batch_size=BATCH_SIZE, patience=PATIENCE,
                     checkpoint_every=10 if tracin else None, identity={"experiment": CLAIM, "run": int(run)})


def model_seed(seed: int, run: int, task: str) -> int:
    """Run ``r`` uses seed ``seed + r``; its four models get ``+ 100·k`` (task index k) so that they start from
    different initialisations, as in ORIG (which seeded once and let one RNG stream feed all 20 models)."""
    return int(seed) + int(run) + TASK_SEED_STRIDE * TASKS.index(task)


# ------------------------------------------------------------------------------------------ data
def subtrain(splits, n_train: int) -> tuple[Tensor, Tensor, Tensor]:
    """The class-balanced training subset of ORIG (the first ``n_train / C`` images of each class), in [0, 1].

    Returns ``(x, y, indices into splits.train)``.
    """
    idx = class_balanced_indices(splits.train.targets, n_train, n_classes_of(splits))
    x, y = splits.train.tensors(idx)
    return x, y, idx


def explained_set(splits, n_explain: int | None) -> tuple[Tensor, Tensor, Tensor]:
    """The explained test images: all of them (paper), or a class-balanced ``n_explain`` (ORIG's rule), so that
    the first test image of every class is always included.  Returns ``(x, y, indices into splits.test)``."""
    n = len(splits.test)
    if n_explain is None or n_explain >= n:
        idx = torch.arange(n)
    else:
        idx = torch.sort(class_balanced_indices(splits.test.targets, n_explain, n_classes_of(splits))).values
    x, y = splits.test.tensors(idx)
    return x, y, idx


def first_of_each_class(y: Tensor, n: int = 10) -> list[int]:
    """Positions of the first example of classes 0, 1, … (at most ``n`` classes; absent classes skipped)."""
    y = torch.as_tensor(y)
    out = []
    for c in range(int(y.max()) + 1):
        pos = torch.nonzero(y == c).flatten()
        if len(pos):
            out.append(int(pos[0]))
        if len(out) == n:
            break
    return out


# ------------------------------------------------------------------------------------------ models
def get_models(exp: Experiment, splits, n_runs: int, *, tasks: Sequence[str] = TASKS,
               example_method: str = "dknn") -> dict[tuple[int, str], tuple[nn.Module, dict]]:
    """Load (inference) or train (train, smoke) the ``n_runs`` × tasks models: ``{(run, task): (model, manifest)}``."""
    n_classes = n_classes_of(splits)
    info = json_data_info(splits)
    fit_kwargs = {"max_train_examples": 128} if exp.smoke else {}
    out = {}
    jobs = [(r, t) for r in range(n_runs) for t in tasks]
    for r, t in tqdm(jobs, desc="models", disable=not exp.progress):
        spec = model_spec(exp.dataset, t, n_classes, r, tracin=r in tracin_runs(exp.dataset) or example_method == "tracin")
        name = checkpoint(exp.dataset, t, r)
        out[(r, t)] = exp.get_model(name, spec, splits.train, data_info=info, fit_kwargs=fit_kwargs,
                                    seed=model_seed(exp.seed, r, t), desc=name)
    return out


# ------------------------------------------------------------------------------------------ make checkpoints
def training_jobs(dataset: str, model: str | None = None, *, n_runs: int = 5, tasks: Sequence[str] = TASKS,
                  **_: Any) -> list:
    """One job per (run, task) model, run-major (a complete run first)."""
    from .jobs import TRAIN_EXAMPLES, TrainJob, estimate_cost

    out = []
    for r in range(int(n_runs)):
        for t in tasks:
            spec = model_spec(dataset, t, N_CLASSES[dataset], r, tracin=r in tracin_runs(dataset))
            name = checkpoint(dataset, t, r)
            expect = {"n_epochs": spec.n_epochs, "batch_size": spec.batch_size, "patience": spec.patience,
                      "checkpoint_every": spec.checkpoint_every}
            out.append(TrainJob(NOTEBOOK, dataset, None, (name,), {"task": t, "run": r}, (dataset, {}),
                                estimate_cost(spec.arch, TRAIN_EXAMPLES[dataset], spec.n_epochs),
                                expect={name: expect}))
    return out


def train_job(exp: Experiment, task: str, run: int) -> None:
    """Train (or load when current) one model of the grid, as :func:`get_models` does for the notebook."""
    splits = exp.load_data()
    get_models_for(exp, splits, [(int(run), task)])


def get_models_for(exp: Experiment, splits, pairs: Sequence[tuple[int, str]]) -> dict:
    """:func:`get_models` for explicit ``(run, task)`` pairs."""
    n_classes = n_classes_of(splits)
    info = json_data_info(splits)
    fit_kwargs = {"max_train_examples": 128} if exp.smoke else {}
    out = {}
    for r, t in pairs:
        spec = model_spec(exp.dataset, t, n_classes, r, tracin=r in tracin_runs(exp.dataset))
        name = checkpoint(exp.dataset, t, r)
        out[(r, t)] = exp.get_model(name, spec, splits.train, data_info=info, fit_kwargs=fit_kwargs,
                                    seed=model_seed(exp.seed, r, t), desc=name)
    return out


# ------------------------------------------------------------------------------------------ losses (TracIn / IF)
def pack_labels(x: Tensor, y: Tensor, n_classes: int) -> Tensor:
    """``(N, D + C)`` rows ``[x.flatten(), one_hot(y)]``: lets a per-example loss ``loss_fn(model, rows)`` see labels."""
    return torch.cat([x.flatten(1), F.one_hot(torch.as_tensor(y).long(), n_classes).to(x.dtype)], dim=1)


def classifier_loss(image_shape: Sequence[int], n_classes: int) -> ex.LossFn:
    """Per-example cross-entropy of a classifier on packed rows (see :func:`pack_labels`)."""
    shape = tuple(image_shape)

    def loss_fn(model: nn.Module, rows: Tensor) -> Tensor:
        x = rows[:, :-n_classes].reshape(len(rows), *shape)
        onehot = rows[:, -n_classes:]
        return -(onehot * torch.log_softmax(model(x), dim=1)).sum(1)

    return loss_fn


def loss_inputs(task: str, x: Tensor, y: Tensor, n_classes: int) -> tuple[ex.LossFn, Tensor]:
    """The model's own training loss as ``(loss_fn(model, rows) -> (N,), rows)``.

    Autoencoders: the per-example MSE reconstruction error in eval mode (clean input; ORIG explained in train mode,
    with the pretext perturbation on, experiments.md §12.6).  Classifier: its cross-entropy on the true labels,
    which travel with the inputs as one-hot columns.
    """
    if task == "classifier":
        return classifier_loss(x.shape[1:], n_classes), pack_labels(x, y, n_classes)
    return ex.reconstruction_loss("mse"), x


# ------------------------------------------------------------------------------------------ explanations
def method_kwargs(method: str) -> dict[str, Any]:
    """Memory bound for Integrated Gradients (same result: captum evaluates its steps in chunks)."""
    return {"internal_batch_size": IG_INTERNAL_BATCH} if method == "integrated_gradients" else {}


def feature_importance(exp: Experiment, model: nn.Module, x: Tensor, baseline, method: str, *, run: int = 0,
                       batch_size: int = 256) -> Tensor:
    """``|label-free attribution|`` of the model's encoder on ``x`` (the classifier's encoder is its pre-head
    latent)."""
    gen = torch.Generator().manual_seed(exp.seed + run)
    a = attribute_dataset(model.encoder, x, method, baseline, batch_size=batch_size, device=exp.device,
                          progress=exp.progress, generator=gen, **method_kwargs(method))
    return a.abs()


def example_importance(exp: Experiment, model: nn.Module, task: str, method: str, train: tuple[Tensor, Tensor],
                       test: tuple[Tensor, Tensor], *, n_classes: int, hvp: tuple[Tensor, Tensor] | None = None,
                       checkpoints: Sequence[Mapping[str, Tensor]] | None = None, run: int = 0,
                       name: str = "", recursion_depth: int | None = None, hvp_batch_size: int | None = None,
                       simplex_steps: int | None = None) -> Tensor:
    """``(n_test, n_train)`` label-free example importance of one model (see :func:`loss_inputs` for TracIn/IF).

    ``recursion_depth`` / ``hvp_batch_size`` (influence functions) and ``simplex_steps`` default to the paper's
    budget (LiSSA depth 100 at the training batch 300; 1,000 Adam steps), cut to seconds in a smoke run.
    """
    check_choice("example_method", method, EXAMPLE_METHODS)
    if method in ("dknn", "simplex"):
        kw = ({"progress": exp.progress, "n_steps": simplex_steps or exp.size(1000, 50)} if method == "simplex"
              else {})
        return ex.example_importance(method, model, None, train[0], test[0], device=exp.device, **kw)
    loss_fn, tr = loss_inputs(task, train[0], train[1], n_classes)
    _, te = loss_inputs(task, test[0], test[1], n_classes)
    if method == "tracin":
        if not checkpoints:
            raise ValueError(f"example_method='tracin' needs the TracIn checkpoints of {name or task!r} (saved every "
                             "10 epochs during training), which the shipped checkpoints do not have; train them: "
                             + exp.papermill_command("train", example_method="tracin"))
        return ex.example_importance("tracin", model, loss_fn, tr, te, checkpoints=checkpoints, device=exp.device,
                                     progress=exp.progress)
    if hvp is None:
        raise ValueError("influence_functions needs hvp= (the training set its Hessian minibatches are drawn from)")
    _, hv = loss_inputs(task, hvp[0], hvp[1], n_classes)
    return ex.example_importance("influence_functions", model, loss_fn, tr, te, hvp_x=hv, device=exp.device,
                                 seed=exp.seed + run, batch_size=hvp_batch_size or exp.size(BATCH_SIZE, 8),
                                 progress=exp.progress, recursion_depth=recursion_depth or exp.size(100, 2))


def correlation_records(maps: Mapping[str, Tensor], scores: Mapping[str, Tensor], run: int,
                        tasks: Sequence[str] = TASKS) -> pd.DataFrame:
    """Long table of the per-run 4×4 matrices: columns kind (features|examples), metric (pearson|spearman), run,
    task_a, task_b, value."""
    rows = []
    for kind, arrays in (("features", maps), ("examples", scores)):
        pear, spear = correlation_matrices([arrays[t] for t in tasks])
        for metric, mat in (("pearson", pear), ("spearman", spear)):
            for i, a in enumerate(tasks):
                for j, b in enumerate(tasks):
                    rows.append({"kind": kind, "metric": metric, "run": int(run), "task_a": TASK_LABELS[a],
                                 "task_b": TASK_LABELS[b], "value": float(mat[i, j])})
    return pd.DataFrame(rows)


@dataclass
class PretextResults:
    """Per-run correlations of every run, plus the explanations of the first run (for figures and the explorer)."""

    correlations: pd.DataFrame
    maps: dict[str, Tensor] = field(default_factory=dict)
    scores: dict[str, Tensor] = field(default_factory=dict)
    run_shown: int = 0


def explain_runs(exp: Experiment, models: Mapping[tuple[int, str], tuple[nn.Module, dict]], n_runs: int,
                 test: tuple[Tensor, Tensor], train: tuple[Tensor, Tensor], baseline, *, feature_method: str,
                 example_method: str, n_classes: int, hvp: tuple[Tensor, Tensor] | None = None,
                 batch_size: int = 256, tasks: Sequence[str] = TASKS, keep_run: int = 0) -> PretextResults:
    """Feature and example importance of every model, and the task-by-task correlations of each run.

    Only the explanations of run ``keep_run`` are kept in memory (the others are reduced to their matrices).
    """
    frames, kept_maps, kept_scores = [], {}, {}
    for r in tqdm(range(n_runs), desc="runs", disable=not exp.progress):
        maps, scores = {}, {}
        for t in tasks:
            model = models[(r, t)][0]
            name = checkpoint(exp.dataset, t, r)
            maps[t] = feature_importance(exp, model, test[0], baseline, feature_method, run=r, batch_size=batch_size)
            ckpts = exp.tracin_checkpoints(name) if example_method == "tracin" else None
            scores[t] = example_importance(exp, model, t, example_method, train, test, n_classes=n_classes, hvp=hvp,
                                           checkpoints=ckpts, run=r, name=name).float()
        frames.append(correlation_records(maps, scores, r, tasks))
        if r == keep_run:
            kept_maps, kept_scores = maps, scores
    return PretextResults(pd.concat(frames, ignore_index=True), kept_maps, kept_scores, keep_run)


# ------------------------------------------------------------------------------------------ summaries
def matrix_stats(corr: pd.DataFrame, kind: str, metric: str,
                 labels: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Mean and (population, as ORIG's ``np.std``) standard deviation over runs of one 4×4 matrix."""
    labels = list(labels or [TASK_LABELS[t] for t in TASKS])
    sub = corr[(corr.kind == kind) & (corr.metric == metric)]
    g = sub.groupby(["task_a", "task_b"])["value"]
    mean = g.mean().unstack().reindex(index=labels, columns=labels)
    std = g.std(ddof=0).unstack().reindex(index=labels, columns=labels)
    return mean.to_numpy(), std.to_numpy(), labels


def table(corr: pd.DataFrame, kind: str, metric: str, digits: int = 2) -> pd.DataFrame:
    """The paper-style table: cells "avg ± std" over runs."""
    mean, std, labels = matrix_stats(corr, kind, metric)
    cells = [[f"{mean[i, j]:.{digits}f} ± {std[i, j]:.{digits}f}" for j in range(len(labels))]
             for i in range(len(labels))]
    return pd.DataFrame(cells, index=pd.Index(labels, name=f"{kind} {metric}"), columns=labels)


def off_diagonal(corr: pd.DataFrame, kind: str, metric: str = "pearson",
                 pairs: Sequence[tuple[str, str]] | None = None) -> pd.Series:
    """Per run, the mean correlation over the task pairs (default: all off-diagonal pairs, each counted once)."""
    sub = corr[(corr.kind == kind) & (corr.metric == metric)]
    order = {TASK_LABELS[t]: i for i, t in enumerate(TASKS)}
    if pairs is None:
        keep = sub.task_a.map(order) < sub.task_b.map(order)
    else:
        wanted = {tuple(sorted((TASK_LABELS.get(a, a), TASK_LABELS.get(b, b)), key=order.get)) for a, b in pairs}
        keep = [(a, b) in wanted for a, b in zip(sub.task_a, sub.task_b)]
    return sub[keep].groupby("run")["value"].mean()


AE_PAIRS = [("reconstruction", "denoising"), ("reconstruction", "inpainting"), ("denoising", "inpainting")]


def band_reading(kind: str, mean: float, sd: float) -> tuple[bool | None, str]:
    """The verdict of a mean off-diagonal correlation against its band, with the borderline rule.

    ``kind`` ``"features"``: *moderate* = in [:data:`MODERATE`]; ``"examples"``: *low* = below :data:`LOW`. A mean
    strictly within one standard deviation over runs (``sd``) of a band edge is **borderline**: the runs do not place it on
    one side of the edge, so the reading is ``None`` (inconclusive), and the text says "borderline" and why.
    Returns ``(holds or None, text)``.
    """
    m = round(float(mean), 9)  # bands inclusive, free of float noise
    sd = float(sd) if np.isfinite(sd) else 0.0
    edges = MODERATE if kind == "features" else (LOW,)
    holds = MODERATE[0] <= m <= MODERATE[1] if kind == "features" else m < LOW
    near = [e for e in edges if abs(m - e) < sd]
    if near:
        e = min(near, key=lambda v: abs(m - v))
        return None, (f"borderline: {m:.2f} lies within one standard deviation over runs ({sd:.2f}) of the band "
                      f"edge {e:g}, so the runs do not place it on either side (at face value: "
                      f"{verdict_word(bool(holds))})")
    return bool(holds), ""


def _criterion(kind: str, pairs: str, metric: str = "Pearson") -> str:
    band = (f"moderate: mean off-diagonal {metric} ({pairs}, averaged over runs) in [{MODERATE[0]}, {MODERATE[1]}]"
            if kind == "features" else f"low: mean off-diagonal {metric} ({pairs}, averaged over runs) < {LOW}")
    return band + ("; borderline (within one std over runs of a band edge): inconclusive, saying why")


def verdicts(exp: Experiment, corr: pd.DataFrame, *, feature_method: str, example_method: str,
             n_explain: int, n_train: int) -> list[Verdict]:
    """Claim 2.1 (features "moderate") and Claim 2.2 (examples "low") on the mean off-diagonal Pearson correlation,
    with the borderline rule of :func:`band_reading`.

    Per kind, three rows: the headline (all 6 task pairs, Pearson), the autoencoder pairs alone (3 pairs: the
    classifier is the odd one out and pulls the mean down), and the Spearman correlation over the 6 pairs (the
    authors' second table) — each read against the same band, so that a verdict resting on the choice of pairs or
    of correlation shows.
    """
    n_runs = corr.run.nunique()
    out = []
    specs = [("features", "2.1 pretext tasks: features", FEATURE_LABELS[feature_method], FEATURE_ANCHOR,
              "'moderate'"),
             ("examples", "2.2 pretext tasks: examples", EXAMPLE_LABELS[example_method], EXAMPLE_ANCHOR, "'low'")]
    for kind, claim, method, anchor, word in specs:
        what = (f"{n_explain:,} test images" if kind == "features"
                else f"{n_explain:,} test × {n_train:,} balanced training images")
        per_run = off_diagonal(corr, kind)
        ae_runs = off_diagonal(corr, kind, pairs=AE_PAIRS)
        sp_runs = off_diagonal(corr, kind, "spearman")
        m, ae, sp = (float(v.mean()) for v in (per_run, ae_runs, sp_runs))
        sd, ae_sd, sp_sd = (float(v.std(ddof=0)) for v in (per_run, ae_runs, sp_runs))
        pm = lambda v, s: mean_pm(v, s, n_runs, digits=2)  # noqa: E731
        over = f"std over {n_runs} runs" if n_runs > 1 else "1 run: no spread over runs"
        rows = [(f"{method} correlation between tasks", "6 task pairs", "Pearson", m, sd,
                 f"mean off-diagonal Pearson {pm(m, sd)} ({over}; autoencoder pairs only "
                 f"{pm(ae, ae_sd)}; Spearman {pm(sp, sp_sd)}) on {what}"),
                (f"{method} correlation between tasks, autoencoder pairs only", "3 autoencoder pairs", "Pearson",
                 ae, ae_sd,
                 f"mean Pearson over the 3 autoencoder pairs {pm(ae, ae_sd)} ({over}; all 6 "
                 f"pairs {m:.2f}) on {what}"),
                (f"{method} correlation between tasks, Spearman", "6 task pairs", "Spearman", sp, sp_sd,
                 f"mean off-diagonal Spearman {pm(sp, sp_sd)} ({over}; Pearson "
                 f"{m:.2f}) on {what}" + ("; the shared zero importance of black pixels is a mass of ties in the "
                                          "feature Spearman" if kind == "features" else ""))]
        for quantity, pairs, metric, value, spread, ours in rows:
            holds, note = band_reading(kind, value, spread)
            if n_runs < 2:   # the borderline rule needs a spread over runs
                holds, note = None, (f"one run gives no spread over runs, so the borderline rule cannot be applied "
                                     f"(the paper: {N_RUNS} runs; at face value: {verdict_word(holds)})")
            out.append(Verdict(claim, exp.dataset, "3 pretext AEs + classifier", quantity,
                               ours + (f"; {note}" if note else ""), word, anchor, _criterion(kind, pairs, metric),
                               verdict_word(holds)))
    return out


# ------------------------------------------------------------------------------------------ method sweep
#: The sweep of the second seed's extension (experiments.md §5, ER): every feature and example method.
SWEEP_FEATURE_METHODS = ("integrated_gradients", "gradient_shap", "saliency")
SWEEP_EXAMPLE_METHODS = ("dknn", "simplex", "tracin", "influence_functions")
#: Its budget on a 2-core CPU: the runs whose models keep TracIn checkpoints, a class-balanced subset for the
#: example methods (SimplEx, TracIn and influence functions scale with it), LiSSA depth 2 at minibatch 64.
SWEEP_N_TEST = 100
SWEEP_N_TRAIN = 100
SWEEP_LISSA = (2, 64)
SWEEP_SIMPLEX_STEPS = 1000


@dataclass
class SweepResults:
    """Per-run correlations of every method that ran (column ``method``), and one status row per method."""

    correlations: pd.DataFrame
    status: pd.DataFrame


def sweep_skip_reason(dataset: str, method_sweep: bool | None) -> str | None:
    """Why the page skips the method sweep (``None``: it runs). ``method_sweep=None`` runs it on the datasets whose
    sweep runs keep TracIn states (:data:`TRACIN_DATASETS`: MNIST) and skips it elsewhere; True / False force it."""
    if method_sweep is True or (method_sweep is None and dataset in TRACIN_DATASETS):
        return None
    if method_sweep is False:
        return "method_sweep=False (pass `-p method_sweep True` to run it)"
    return (f"by default (method_sweep=None) the sweep runs on {', '.join(map(dataset_label, TRACIN_DATASETS))} "
            f"only: on {dataset_label(dataset)} its models keep no TracIn states, and 3 feature methods on every "
            f"model plus LiSSA on the 0.6 M-parameter encoder exceed this page's 2-core CPU budget; pass "
            f"`-p method_sweep True` to run it (on a GPU)")


def sweep_budget(exp: Experiment, n_runs: int, n_explain: int, method_sweep: bool | None = None) -> dict[str, Any]:
    """What the sweep runs: runs, subset sizes and LiSSA budget (seconds-long in a smoke run), and the paper's;
    ``skip`` says why it does not run at all (:func:`sweep_skip_reason`), else None."""
    depth, batch = SWEEP_LISSA
    return {"skip": sweep_skip_reason(exp.dataset, method_sweep),
            "runs": [r for r in TRACIN_RUNS if r < n_runs], "n_explain_features": n_explain,
            "n_test": exp.size(SWEEP_N_TEST, 10), "n_train": exp.size(SWEEP_N_TRAIN, 20),
            "recursion_depth": exp.size(depth, 1), "hvp_batch_size": exp.size(batch, 8),
            "simplex_steps": exp.size(SWEEP_SIMPLEX_STEPS, 20),
            "paper": {"runs": 5, "n_test": "10,000", "n_train": 1000, "recursion_depth": 100, "hvp_batch_size": 300,
                      "simplex_steps": 1000}}


def missing_tracin(exp: Experiment, runs: Sequence[int], tasks: Sequence[str] = TASKS) -> list[str]:
    """The sweep's checkpoints saved without TracIn states."""
    return [checkpoint(exp.dataset, t, r) for r in runs for t in tasks
            if not exp.tracin_checkpoints(checkpoint(exp.dataset, t, r))]


def method_sweep(exp: Experiment, models: Mapping[tuple[int, str], tuple[nn.Module, dict]], splits, baseline, *,
                 budget: Mapping[str, Any], x_features: Tensor, batch_size: int = 256,
                 tasks: Sequence[str] = TASKS) -> SweepResults:
    """Every feature method on ``x_features`` and every example method on a class-balanced ``n_test × n_train``
    subset, for the runs of ``budget`` (:func:`sweep_budget`). A method that cannot run is not faked: TracIn on
    checkpoints saved without TracIn states gets a status ``not run: <reason>`` and no numbers."""
    runs = list(budget["runs"])
    if budget.get("skip") or not runs:
        reason = budget.get("skip") or f"no run among {list(TRACIN_RUNS)} (the runs with TracIn checkpoints) was loaded"
        rows = [{"kind": k, "method": lab[m], "status": f"not run: {reason}"} for k, ms, lab in
                (("features", SWEEP_FEATURE_METHODS, FEATURE_LABELS), ("examples", SWEEP_EXAMPLE_METHODS,
                                                                        EXAMPLE_LABELS)) for m in ms]
        return SweepResults(pd.DataFrame(columns=["kind", "metric", "run", "task_a", "task_b", "value", "method"]),
                            pd.DataFrame(rows))
    n_classes = n_classes_of(splits)
    x_te, y_te, _ = explained_set(splits, budget["n_test"])
    x_tr, y_tr, _ = subtrain(splits, budget["n_train"])
    frames, status = [], []
    for m in SWEEP_FEATURE_METHODS:
        for r in runs:
            maps = {t: feature_importance(exp, models[(r, t)][0], x_features, baseline, m, run=r,
                                          batch_size=batch_size) for t in tasks}
            df = correlation_records(maps, maps, r, tasks)
            frames.append(df[df.kind == "features"].assign(method=FEATURE_LABELS[m]))
        status.append({"kind": "features", "method": FEATURE_LABELS[m], "status": "run",
                       "budget": f"{len(x_features):,} test images, runs {runs}"})
    lacking = missing_tracin(exp, runs, tasks)
    hvp = splits.train.tensors()
    for m in SWEEP_EXAMPLE_METHODS:
        label = EXAMPLE_LABELS[m]
        if m == "tracin" and lacking:
            status.append({"kind": "examples", "method": label, "status": (
                f"not run: {len(lacking)} of {len(runs) * len(tasks)} checkpoints of runs {runs} were saved without "
                f"TracIn states (e.g. {lacking[0]}); models trained with the current settings keep them every 10 "
                f"epochs ({exp.papermill_command('train')})"), "budget": ""})
            continue
        budget_text = f"{budget['n_test']:,} test × {budget['n_train']:,} training images, runs {runs}"
        if m == "influence_functions":
            budget_text += (f"; LiSSA depth {budget['recursion_depth']}, HVP minibatch {budget['hvp_batch_size']} "
                            f"(paper: depth 100, minibatch 300)")
        if m == "simplex":
            budget_text += f"; {budget['simplex_steps']} Adam steps"
        for r in runs:
            scores = {}
            for t in tasks:
                name = checkpoint(exp.dataset, t, r)
                ckpts = exp.tracin_checkpoints(name) if m == "tracin" else None
                scores[t] = example_importance(
                    exp, models[(r, t)][0], t, m, (x_tr, y_tr), (x_te, y_te), n_classes=n_classes,
                    hvp=hvp if m == "influence_functions" else None, checkpoints=ckpts, run=r, name=name,
                    recursion_depth=budget["recursion_depth"], hvp_batch_size=budget["hvp_batch_size"],
                    simplex_steps=budget["simplex_steps"]).float()
            df = correlation_records(scores, scores, r, tasks)
            frames.append(df[df.kind == "examples"].assign(method=label))
        status.append({"kind": "examples", "method": label, "status": "run", "budget": budget_text})
    return SweepResults(pd.concat(frames, ignore_index=True), pd.DataFrame(status))


def sweep_table(sweep: SweepResults) -> pd.DataFrame:
    """One row per (kind, method): mean off-diagonal Pearson ± std over runs (6 pairs), the autoencoder pairs only,
    Spearman, and the band reading of :func:`band_reading`; ``not run: <reason>`` rows carry no number."""
    rows = []
    corr = sweep.correlations
    for st in sweep.status.to_dict("records"):
        kind, method = st["kind"], st["method"]
        row = {"kind": kind, "method": method}
        if st["status"] != "run":
            rows.append({**row, "Pearson, 6 pairs": "—", "Pearson, AE pairs": "—", "Spearman, 6 pairs": "—",
                         "reading": st["status"], "budget": st.get("budget", "")})
            continue
        sub = corr[(corr.kind == kind) & (corr.method == method)]
        pr, ae, sp = off_diagonal(sub, kind), off_diagonal(sub, kind, pairs=AE_PAIRS), off_diagonal(sub, kind, "spearman")
        holds, note = band_reading(kind, pr.mean(), pr.std(ddof=0))
        word = "moderate" if kind == "features" else "low"
        reading = (f"{word}: " + verdict_word(holds)) if holds is not None else note.split(" (at face")[0]
        rows.append({**row, "Pearson, 6 pairs": f"{pr.mean():.2f} ± {pr.std(ddof=0):.2f} ({len(pr)} runs)",
                     "Pearson, AE pairs": f"{ae.mean():.2f} ± {ae.std(ddof=0):.2f}",
                     "Spearman, 6 pairs": f"{sp.mean():.2f} ± {sp.std(ddof=0):.2f}", "reading": reading,
                     "budget": st.get("budget", "")})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------ figures
def heatmaps_figure(corr: pd.DataFrame, title: str = ""):
    """2×2 annotated heatmaps: (features, examples) × (Pearson, Spearman), mean ± std over runs."""
    fig, axes = plt.subplots(2, 2, figsize=(10, 8.6))
    for r, kind in enumerate(("features", "examples")):
        for c, metric in enumerate(("pearson", "spearman")):
            ax = axes[r, c]
            mean, std, labels = matrix_stats(corr, kind, metric)
            im = ax.imshow(mean, vmin=-1, vmax=1, cmap="RdBu_r")
            for i in range(len(labels)):
                for j in range(len(labels)):
                    ax.text(j, i, f"{mean[i, j]:.2f}\n± {std[i, j]:.2f}", ha="center", va="center", fontsize=8,
                            color="white" if abs(mean[i, j]) > 0.6 else "black")
            short = [lab[:5] + "." for lab in labels]
            ax.set_xticks(range(len(labels)), short, fontsize=8)
            ax.set_yticks(range(len(labels)), short, fontsize=8)
            ax.set_title(f"{kind} — {metric.capitalize()}", fontsize=10)
    fig.colorbar(im, ax=axes, shrink=0.6)
    if title:
        fig.suptitle(title)
    return fig


def _overlay(ax, img: np.ndarray, sal: np.ndarray | None, title: str = "") -> None:
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
    if sal is not None:
        ax.imshow(sal, cmap="magma", alpha=0.6 if img.ndim == 2 else 0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7)


def _saliency_2d(a: Tensor) -> np.ndarray:
    s = torch.as_tensor(a).abs().sum(0).numpy()
    return s / max(float(s.max()), 1e-12)


def saliency_grid(x: Tensor, y: Tensor, maps: Mapping[str, Tensor], positions: Sequence[int],
                  tasks: Sequence[str] = TASKS, title: str = ""):
    """Rows: the given test images (e.g. the first of each class); columns: the image, then each task's saliency."""
    cols = 1 + len(tasks)
    fig, axes = plt.subplots(len(positions), cols, figsize=(1.35 * cols, 1.35 * len(positions)), squeeze=False)
    for r, p in enumerate(positions):
        img = to_display_image(x[p].numpy())
        _overlay(axes[r, 0], img, None, "test image" if r == 0 else "")
        axes[r, 0].set_ylabel(f"label {int(y[p])}", fontsize=7)
        for c, t in enumerate(tasks, start=1):
            _overlay(axes[r, c], img, _saliency_2d(maps[t][p]), TASK_LABELS[t] if r == 0 else "")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def top_examples(scores: Mapping[str, Tensor], positions: Sequence[int], k: int = 1) -> dict[str, Tensor]:
    """Per task, the indices (into the training subset) of the ``k`` highest-scored training examples of each of
    the test ``positions``: ``{task: (len(positions), k)}``."""
    return {t: torch.topk(s[list(positions)], k, dim=1).indices for t, s in scores.items()}


def top_examples_figure(x_test: Tensor, y_test: Tensor, x_train: Tensor, y_train: Tensor,
                        scores: Mapping[str, Tensor], positions: Sequence[int], tasks: Sequence[str] = TASKS,
                        title: str = ""):
    """Rows: test images; columns: the test image, then each task's most important training image (label shown)."""
    top = top_examples({t: scores[t] for t in tasks}, positions, 1)
    cols = 1 + len(tasks)
    fig, axes = plt.subplots(len(positions), cols, figsize=(1.45 * cols, 1.5 * len(positions)), squeeze=False)
    for r, p in enumerate(positions):
        _overlay(axes[r, 0], to_display_image(x_test[p].numpy()), None, f"test (label {int(y_test[p])})")
        for c, t in enumerate(tasks, start=1):
            j = int(top[t][r, 0])
            _overlay(axes[r, c], to_display_image(x_train[j].numpy()), None,
                     f"{TASK_LABELS[t]}\ntrain #{j}, label {int(y_train[j])}")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def plotly_heatmaps(corr: pd.DataFrame, kind: str, title: str):
    """Interactive Pearson heatmap (mean ± std over runs) of one kind (features or examples)."""
    from ..plotting import heatmap_matrix

    mean, std, labels = matrix_stats(corr, kind, "pearson")
    return heatmap_matrix(mean, std, labels, title=title)


def explorer_figure(index: int, x_test: Tensor, y_test: Tensor, x_train: Tensor, y_train: Tensor,
                    maps: Mapping[str, Tensor], scores: Mapping[str, Tensor], k: int = 3,
                    tasks: Sequence[str] = TASKS):
    """One row per task: the test image with that task's saliency, then its ``k`` most important training images."""
    top = top_examples({t: scores[t] for t in tasks}, [index], k)
    img = to_display_image(x_test[index].numpy())
    fig, axes = plt.subplots(len(tasks), 1 + k, figsize=(1.6 * (1 + k), 1.6 * len(tasks)), squeeze=False)
    for r, t in enumerate(tasks):
        _overlay(axes[r, 0], img, _saliency_2d(maps[t][index]), f"{TASK_LABELS[t]} saliency")
        for c in range(k):
            j = int(top[t][0, c])
            _overlay(axes[r, 1 + c], to_display_image(x_train[j].numpy()), None,
                     f"top {c + 1}: #{j} (label {int(y_train[j])})")
    fig.suptitle(f"test image {index} (label {int(y_test[index])})", fontsize=9)
    fig.tight_layout()
    return fig


def explorer(x_test: Tensor, y_test: Tensor, x_train: Tensor, y_train: Tensor, maps: Mapping[str, Tensor],
             scores: Mapping[str, Tensor], k: int = 3):
    """An ipywidgets explorer for JupyterLab: pick a test index, see every task's saliency and top examples.

    Returns the widget (``display`` it); the static book cannot run widgets, the notebook shows it only outside.
    """
    import ipywidgets as w

    pick = w.BoundedIntText(value=0, min=0, max=len(x_test) - 1, description="test index")
    out = w.Output()

    def draw(index: int) -> None:
        with out:
            out.clear_output(wait=True)
            fig = explorer_figure(index, x_test, y_test, x_train, y_train, maps, scores, k)
            plt.show()
            plt.close(fig)

    pick.observe(lambda change: draw(int(change["new"])), names="value")
    draw(0)
    box = w.VBox([pick, out])
    box.draw = draw  # for tests and scripted use
    return box


# ------------------------------------------------------------------------------------------ the book's interface
#: What the book and ``make checkpoints`` know of this page: ``n_runs`` runs of its four models.
SPEC = ClaimSpec(NOTEBOOK, DATASETS, MODELS, data=data_requirements, checkpoints=required_checkpoints,
                 checkpoint_params=("n_runs",), jobs=training_jobs, job_params=("n_runs",), train=train_job)
