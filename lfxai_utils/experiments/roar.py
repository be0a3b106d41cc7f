"""Appendix C — remove and retrain (ROAR) with label-free attributions (experiments.md §4).

Train a reconstruction autoencoder; rank every *training* pixel by the label-free importance that the trained
encoder gives it (GradientSHAP, Integrated Gradients, or random scores); remove (set to 0) the top p % of each
training image; retrain the autoencoder from the *same initial weights* on the masked images and measure its MSE on
the *unmasked* test set. If the attributions find what the representation needs, removing them should hurt the
retrained model more than removing random pixels.

Two bugs of the authors' ``roar_test`` are fixed here (experiments.md §4, §12.5):

1. attributions are computed in dataset order, so every training image gets *its own* mask (ORIG iterated over a
   shuffled loader and indexed the masks by dataset position);
2. every method explains the *original* trained encoder (ORIG rebound ``encoder`` to each retrained one, so IG
   explained the model retrained on the 100 %-masked GradientSHAP images). Here all attributions are computed, from
   the base model, before any retraining, and :func:`retrain` never sees an encoder.

The random scores are seeded (ORIG: unseeded ``np.random.randn``).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..checkpoints import checkpoint_name
from ..data import DatasetSplits
from ..features import attribute_dataset
from ..metrics import feature_scores, topk_mask
from ..report import Verdict, verdict_word
from ..training import evaluate_loss
from ..labels import FEATURE_METHOD_LABELS, labels_for
from .common import AE_SPECS, Experiment, ModelSpec, check_choice, json_data_info
from .spec import ClaimSpec

NOTEBOOK = "claim1_roar"
CLAIM = "claim1-roar"
DATASETS = ("mnist", "cifar10", "cifar100")
MODELS = (None,)
METHODS = ("gradient_shap", "integrated_gradients", "random")
METHOD_LABELS = labels_for(METHODS, FEATURE_METHOD_LABELS)
PERCENTS = (10, 20, 50, 70, 100)
#: Retraining seeds per (method, level): seed ``s`` retrains from the initial weights and data order of seed
#: ``exp.seed + s`` (seed 0 = the base model's own initial weights, as ORIG; ORIG ran one seed).
N_SEEDS = 3
LOSS_COLUMNS = ["method", "percent", "run", "k", "test_loss", "nonzero_removed", "black_images", "degenerate",
                "checkpoint"]
#: Training images an inference run explains to check the shipped models' masks: each retrained model's manifest
#: records the sha256 of its masks over all training images and over the first ``CHECK_N`` (and what the masks left
#: of the images, for :func:`degenerate_levels`), so that the page need not explain all 60,000 images again (~7 min
#: on 2 CPU cores) to verify them. Train mode explains every image, as it must to mask them.
CHECK_N = 1000
#: The fields of a manifest's ``data.roar`` that let an inference run explain only the first ``CHECK_N`` images.
CHECK_FIELDS = ("check_n", "check_mask_sha256", "inputs_sha256")
#: ORIG's CLI runs ``roar_test(..., n_epochs=10)`` (the function default is 100).
N_EPOCHS = 10
ANCHOR = ("paper App. C (figure only, no numbers): removing the pixels that label-free GradientSHAP and IG rank "
          "most important hurts the retrained autoencoder's test loss more than removing random pixels")


# ------------------------------------------------------------------------------------------ parameters
def _as_list(value: Any) -> list:
    """A papermill parameter given as a list, a tuple or a comma-separated string."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return list(value)


def validate(methods: Any = METHODS, percents: Any = PERCENTS) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Check the ``methods`` and ``percents`` parameters; return them as tuples (percents sorted, unique).

    Raises ``ValueError`` naming the valid values for an unknown method, a duplicate, or a percentage outside
    1..100.
    """
    ms = _as_list(methods)
    if not ms:
        raise ValueError(f"methods is empty; choose among {', '.join(map(repr, METHODS))}")
    for m in ms:
        check_choice("method", m, METHODS)
    if len(set(ms)) != len(ms):
        raise ValueError(f"methods lists a method twice: {ms}")
    ps = []
    for p in _as_list(percents):
        try:
            q = float(p)
        except (TypeError, ValueError):
            raise ValueError(f"percents must be numbers in 1..100, got {p!r}") from None
        if not q.is_integer() or not 1 <= q <= 100:
            raise ValueError(f"percents must be whole numbers in 1..100 (e.g. 10, 20, 50, 70, 100), got {p!r}")
        ps.append(int(q))
    if not ps:
        raise ValueError("percents is empty; e.g. [10, 20, 50, 70, 100]")
    return tuple(ms), tuple(sorted(set(ps)))


def smoke_levels(percents: Sequence[int]) -> tuple[int, ...]:
    """A smoke run retrains at the lowest and the highest level only (same code path, fewer trainings)."""
    return tuple(sorted({min(percents), max(percents)}))


#: Training images a smoke run keeps (every training image is explained and masked, so this sets its cost).
SMOKE_TRAIN = 48


def data_requirements(dataset: str, model: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    return [(dataset, {})]


def load_data(exp: Experiment) -> DatasetSplits:
    """The dataset; a smoke run keeps only its first :data:`SMOKE_TRAIN` training images."""
    splits = exp.load_data()
    n = exp.size(None, SMOKE_TRAIN)
    if n is not None and n < len(splits.train):
        splits = DatasetSplits(splits.name, splits.train.subset(torch.arange(n)), splits.test,
                               {**splits.info, "n_train": n})
    return splits


# ------------------------------------------------------------------------------------------ models
def model_spec(dataset: str) -> ModelSpec:
    """The reconstruction autoencoder (identity pretext) of ``dataset``, 10 epochs, batch 300 (experiments.md §4)."""
    spec = AE_SPECS[check_choice("dataset", dataset, DATASETS)]
    return spec.with_(arch_kwargs={**spec.arch_kwargs, "pretext": "reconstruction"}, n_epochs=N_EPOCHS)


def variant(method: str, percent: int) -> str:
    """Checkpoint variant of a retrained model, e.g. ``gradient-shap-20``."""
    return f"{check_choice('method', method, METHODS).replace('_', '-')}-{int(percent)}"


def checkpoint(dataset: str, method: str | None = None, percent: int | None = None, run: int = 0) -> str:
    """The base model (no method) or retraining seed ``run`` after removing ``percent`` % of pixels by ``method``."""
    if method is None:
        return checkpoint_name(CLAIM, dataset, "reconstruction-ae")
    return checkpoint_name(CLAIM, dataset, "reconstruction-ae", variant=variant(method, percent), run=int(run))


def validate_seeds(n_seeds: Any) -> int:
    """``n_seeds`` (retraining seeds per level) must be a positive integer."""
    if isinstance(n_seeds, bool) or int(n_seeds) != n_seeds or int(n_seeds) < 1:
        raise ValueError(f"n_seeds must be a positive integer (retraining seeds per level; default {N_SEEDS}); "
                         f"got {n_seeds!r}")
    return int(n_seeds)


def required_checkpoints(dataset: str, model: str | None = None, methods: Sequence[str] = METHODS,
                         percents: Sequence[int] = PERCENTS, n_seeds: int = N_SEEDS) -> list[str]:
    methods, percents = validate(methods, percents)
    return [checkpoint(dataset)] + [checkpoint(dataset, m, p, r) for m in methods for p in percents
                                    for r in range(validate_seeds(n_seeds))]


def images_to_explain(exp: Experiment, x: Tensor, names: Sequence[str]) -> Tensor:
    """The training images this run explains: all of them (train and smoke modes: every image is masked), or in
    inference mode the first :data:`CHECK_N` when every retrained checkpoint in ``names`` records its masks'
    digests over those images (:data:`CHECK_FIELDS`); otherwise all, with the reason printed."""
    n = min(CHECK_N, len(x))
    if exp.mode != "inference" or exp.smoke or n == len(x):
        return x
    from ..checkpoints import read_manifest

    lacking = []
    for name in names:
        roar = (read_manifest(exp.checkpoint_dir, name).get("data") or {}).get("roar") or {}
        if any(k not in roar for k in CHECK_FIELDS) or roar.get("check_n") != n:
            lacking.append(name)
    if lacking:
        print(f"{len(lacking)} checkpoint(s) do not record their masks' digests over the first {n:,} training "
              f"images (e.g. {lacking[0]}): explaining all {len(x):,} to check their masks")
        return x
    print(f"explaining the first {n:,} of {len(x):,} training images: enough to check every shipped model's masks "
          f"(their manifests record the digests over all images and over these; train mode explains all)")
    return x[:n]


def retrain_seed(seed: int, run: int) -> int:
    """Seed of retraining run ``run``: ``seed + run`` (run 0 starts from the base model's initial weights)."""
    return int(seed) + int(run)


def _fit_kwargs(exp: Experiment) -> dict[str, Any]:
    return {"max_train_examples": SMOKE_TRAIN} if exp.smoke else {}


def get_base_model(exp: Experiment, splits) -> tuple[nn.Module, dict[str, Any]]:
    """Load (inference) or train (train/smoke) the base autoencoder on the unmasked training set.

    Built after seeding with ``exp.seed``, like every retrained model, so all start from the same weights.
    """
    return exp.get_model(checkpoint(exp.dataset), model_spec(exp.dataset), splits.train,
                         data_info=json_data_info(splits), seed=exp.seed, fit_kwargs=_fit_kwargs(exp),
                         desc="base model")


# ------------------------------------------------------------------------------------------ masks
def n_removed(percent: int, n_features: int) -> int:
    """k = int(p · D / 100), in exact integer arithmetic (MNIST: 78, 156, 392, 548, 784)."""
    return int(percent) * int(n_features) // 100


def train_images(splits) -> Tensor:
    """All training inputs ``(N, C, H, W)`` in dataset order."""
    return splits.train.tensors()[0]


def train_attributions(exp: Experiment, encoder: nn.Module, x: Tensor, methods: Sequence[str] = METHODS,
                       baseline: Tensor | None = None, *, batch_size: int = 256) -> dict[str, Tensor]:
    """Per-pixel scores ``(N, H·W)`` of every training image, **in dataset order**, per method.

    ``encoder`` must be the *original* trained encoder (fix of ORIG bug 2). Scores are ``Σ_channels |attr|``
    (ORIG ``generate_masks``); "random" draws N(0, 1) attributions for the whole set at once from a generator
    seeded with ``exp.seed`` (so they do not depend on ``batch_size``).
    """
    out = {}
    for m in methods:
        gen = torch.Generator().manual_seed(exp.seed)
        if check_choice("method", m, METHODS) == "random":   # one draw for the whole set: independent of batch_size
            attr = torch.randn(x.shape, generator=gen, dtype=x.dtype)
        else:
            attr = attribute_dataset(encoder, x, m, baseline, batch_size=batch_size, device=exp.device,
                                     progress=exp.progress, generator=gen)
        out[m] = feature_scores(attr)
    return out


def removal_mask(scores: Tensor, percent: int) -> Tensor:
    """Boolean ``(N, D)``: row i marks the ``int(p·D/100)`` highest-scoring pixels of image i (True = removed)."""
    return topk_mask(scores, n_removed(percent, scores.shape[1]))


def mask_images(x: Tensor, mask: Tensor) -> Tensor:
    """``x · (1 − mask)``: removed pixels set to 0 in every channel; ``mask`` is ``(N, H·W)`` boolean."""
    n, _, h, w = x.shape
    if mask.shape != (n, h * w):
        raise ValueError(f"mask has shape {tuple(mask.shape)}, expected {(n, h * w)} for images {tuple(x.shape)}")
    return x * (~mask.bool()).reshape(n, 1, h, w).to(x.dtype)


def nonzero_pixels(x: Tensor) -> Tensor:
    """Boolean ``(N, H·W)``: pixels that are non-zero in some channel (removing a zero pixel changes nothing)."""
    return (x != 0).any(1).flatten(1)


def mask_digest(mask: Tensor) -> str:
    """sha256 of the packed boolean mask (recorded in each retrained model's manifest)."""
    bits = np.packbits(mask.bool().cpu().numpy(), axis=None)
    return hashlib.sha256(bits.tobytes() + str(tuple(mask.shape)).encode()).hexdigest()


def removal_stats(x: Tensor, mask: Tensor, nonzero: Tensor | None = None) -> dict[str, float]:
    """What a mask really removes: mean fraction of each image's non-zero pixels, and all-black images.

    ``nonzero``: :func:`nonzero_pixels` of ``x`` when already computed.
    """
    nz = nonzero_pixels(x) if nonzero is None else nonzero
    kept = nz & ~mask.bool()
    frac = (nz & mask.bool()).sum(1).double() / nz.sum(1).clamp_min(1).double()
    return {"nonzero_removed": float(frac.mean()), "black_images": float((kept.sum(1) == 0).double().mean())}


# ------------------------------------------------------------------------------------------ retraining
def roar_spec(dataset: str, method: str, percent: int, k: int, base_sha256: str, run: int = 0) -> ModelSpec:
    """The base spec plus the identity of the masking and the seed (checked on reload: stale models are refused)."""
    return model_spec(dataset).with_(identity={"roar_method": method, "roar_percent": int(percent), "roar_k": int(k),
                                               "roar_base_sha256": base_sha256, "run": int(run)})


@dataclass
class Retrained:
    """A model retrained without the top ``k`` pixels by ``method``, and what its masks removed."""

    model: nn.Module
    manifest: dict[str, Any]
    k: int
    mask_sha256: str                 # of the masks computed in this run (from the base model), over n_checked images
    stats: dict[str, float]          # :func:`removal_stats` of the masks over every training image
    inputs_sha256: str = ""          # of what the masks leave of the training images (:func:`effective_digest`)
    n_checked: int = 0               # training images whose masks this run computed (all, or the first CHECK_N)
    checked_against: str = "mask_sha256"   # the manifest field mask_sha256 is compared with


def effective_digest(x: Tensor, mask: Tensor, nonzero: Tensor | None = None) -> str:
    """sha256 of the pixels a mask really removes (mask ∧ non-zero): equal digests ⇔ identical masked images."""
    nz = nonzero_pixels(x) if nonzero is None else nonzero
    return mask_digest(mask.bool() & nz)


def retrain(exp: Experiment, splits, scores: Mapping[str, Tensor], percents: Sequence[int],
            base_manifest: Mapping[str, Any], runs: Sequence[int] = (0,)) -> dict[tuple[str, int, int], Retrained]:
    """One autoencoder per (method, percent, run), trained on the masked images: ``{(method, p, run): Retrained}``.

    Retraining seed ``run`` builds and shuffles with :func:`retrain_seed` (run 0: the base model's own initial
    weights), the same for every method and level, so methods compare paired by seed. Only scores enter here, never
    an encoder: the explained model cannot change between methods. In inference mode the checkpoints are loaded;
    they must record this base model's sha256 (else ``CheckpointMismatchError``).

    ``scores`` cover every training image, or (inference mode only, see :func:`images_to_explain`) the first
    :data:`CHECK_N`: the masks are then checked against the manifests' digests over those images, and the removal
    statistics come from the manifests. A model that train mode reuses and whose manifest predates
    :data:`CHECK_FIELDS` gets them added, once its full-mask digest is confirmed.
    """
    x, y = splits.train.tensors()
    n_scored = len(next(iter(scores.values())))
    full = n_scored == len(x)
    if not full and (exp.mode != "inference" or n_scored != min(CHECK_N, len(x))):
        raise ValueError(f"scores cover {n_scored:,} of {len(x):,} training images: retraining masks every image, "
                         f"and only inference mode may check the first {CHECK_N:,}")
    nz = nonzero_pixels(x)
    n_check = min(CHECK_N, len(x))
    base_sha = base_manifest["file"]["sha256"]
    out = {}
    masks = {}
    jobs = [(m, p, r) for m in scores for p in percents for r in runs]
    for m, p, r in tqdm(jobs, desc="remove and retrain", disable=not exp.progress):
        if (m, p) not in masks:
            mask = removal_mask(scores[m], p)
            derived = {"check_n": n_check, "check_mask_sha256": mask_digest(mask[:n_check])}
            if full:
                derived["inputs_sha256"] = effective_digest(x, mask, nz)
                masks = {(m, p): (mask, mask_digest(mask), {**removal_stats(x, mask, nz), **derived})}
            else:
                masks = {(m, p): (mask, derived["check_mask_sha256"], derived)}
        mask, digest, facts = masks[(m, p)]
        k = n_removed(p, mask.shape[1])
        name = checkpoint(exp.dataset, m, p, r)
        info = {**json_data_info(splits),
                "roar": {"method": m, "percent": int(p), "k": k, "masks_from": checkpoint(exp.dataset),
                         "base_sha256": base_sha, **({"mask_sha256": digest} if full else {}),
                         "removed": "top-k pixels of each training image (sum over channels of |attribution|) set to 0",
                         **facts}}
        model, manifest = exp.get_model(name, roar_spec(exp.dataset, m, p, k, base_sha, r),
                                        (mask_images(x, mask), y) if full else None, data_info=info,
                                        seed=retrain_seed(exp.seed, r), fit_kwargs=_fit_kwargs(exp),
                                        desc=f"{METHOD_LABELS[m]} {p} % seed {r}")
        recorded = (manifest.get("data") or {}).get("roar") or {}
        if full and exp.mode == "train" and recorded.get("mask_sha256") == digest \
                and any(f not in recorded for f in CHECK_FIELDS):
            from ..checkpoints import amend_manifest

            manifest = amend_manifest(exp.checkpoint_dir, name, "data.roar",
                                      {f: facts[f] for f in CHECK_FIELDS if f not in recorded})
            exp.manifests[name] = manifest
            recorded = manifest["data"]["roar"]
        stats = {s: facts[s] if full else recorded.get(s, float("nan")) for s in ("nonzero_removed", "black_images")}
        out[(m, p, r)] = Retrained(model, manifest, k, digest, stats,
                                   facts["inputs_sha256"] if full else recorded.get("inputs_sha256", ""),
                                   n_scored, "mask_sha256" if full else "check_mask_sha256")
    return out


def degenerate_levels(models: Mapping[tuple[str, int, int], Retrained]) -> dict[tuple[str, int], str]:
    """Levels that test nothing, per (method, percent): ``{(m, p): reason}`` ('' when the level is informative).

    A level 0 < p < 100 is degenerate when its masks leave every training image black (the inputs equal those of
    removing every pixel, whatever the method), or when they leave exactly the same images as a lower level of the
    same method (identical retraining inputs: the retrained models can only differ by chance, or not at all).
    """
    out: dict[tuple[str, int], str] = {}
    levels = sorted({(m, p): r for (m, p, _), r in models.items()}.items(), key=lambda kv: (kv[0][0], kv[0][1]))
    seen: dict[tuple[str, str], int] = {}
    for (m, p), r in levels:
        reason = ""
        if p >= 100:      # the reference level (every pixel removed for every method)
            pass
        elif r.stats.get("black_images", 0.0) >= 1.0:
            reason = "every non-zero pixel of every training image removed (inputs as at 100 %)"
        elif (m, r.inputs_sha256) in seen and r.inputs_sha256:
            reason = f"same masked training images as at {seen[(m, r.inputs_sha256)]} %"
        seen.setdefault((m, r.inputs_sha256), p)
        out[(m, p)] = reason
    return out


def retrained_losses(exp: Experiment, splits, base: nn.Module, models: Mapping[tuple[str, int], Retrained], *,
                     batch_size: int = 500) -> pd.DataFrame:
    """Test MSE on the **unmasked** test set: one row per (method, percent), with the base model as 0 % per method.

    Columns: method, percent, k, test_loss, nonzero_removed (mean fraction of a training image's non-zero pixels
    that the mask removed), black_images (fraction of training images left all black), checkpoint.
    Models whose weights are byte-identical (same checkpoint sha256; e.g. every model trained on all-black images)
    are evaluated once.
    """
    cache: dict[str, float] = {}

    def loss(model: nn.Module, sha: str) -> float:
        if sha not in cache:
            cache[sha] = evaluate_loss(model, splits.test, batch_size=batch_size, device=exp.device)
        return cache[sha]

    base_row = {"percent": 0, "k": 0, "nonzero_removed": 0.0, "checkpoint": checkpoint(exp.dataset),
                "black_images": float((nonzero_pixels(train_images(splits)).sum(1) == 0).double().mean()),
                "test_loss": evaluate_loss(base, splits.test, batch_size=batch_size, device=exp.device),
                "degenerate": ""}
    degenerate = degenerate_levels(models)
    runs = sorted({r for _, _, r in models})
    rows = []
    for m in dict.fromkeys(m for m, _, _ in models):
        rows += [{"method": METHOD_LABELS[m], "run": r, **base_row} for r in runs]
        rows += [{"method": METHOD_LABELS[m], "percent": int(p), "run": int(r), "k": rt.k,
                  "test_loss": loss(rt.model, rt.manifest["file"]["sha256"]), **rt.stats,
                  "degenerate": degenerate[(m, p)], "checkpoint": checkpoint(exp.dataset, m, p, r)}
                 for (mm, p, r), rt in models.items() if mm == m]
    return pd.DataFrame(rows, columns=LOSS_COLUMNS)


def loss_table(df: pd.DataFrame) -> pd.DataFrame:
    """Mean ± sd of the test MSE over retraining seeds, per level (rows) and method (columns); degenerate levels
    are marked with ``*``."""
    g = df.groupby(["percent", "method"], sort=False)
    mean, sd, n = g["test_loss"].mean(), g["test_loss"].std(ddof=1), g["test_loss"].count()
    deg = g["degenerate"].first()
    cell = {i: f"{mean[i]:.5f}" + (f" ± {sd[i]:.5f}" if n[i] > 1 else "") + (" *" if deg[i] else "")
            for i in mean.index}
    out = pd.Series(cell).unstack()
    out.index.name, out.columns.name = "% removed", None
    return out[[c for c in dict.fromkeys(df.method) if c in out.columns]]


def mask_reproduction(models: Mapping[tuple[str, int], Retrained]) -> pd.DataFrame:
    """Are the masks computed in this run the ones each model was trained on (sha256 in its manifest, over all
    training images or over the first ``n_checked``)?"""
    return pd.DataFrame([{"method": METHOD_LABELS[m], "percent": int(p), "run": int(run), "images": r.n_checked,
                          "identical": ((r.manifest.get("data") or {}).get("roar") or {}).get(r.checked_against)
                          == r.mask_sha256}
                         for (m, p, run), r in models.items()])


# ------------------------------------------------------------------------------------------ figures
def example_grid(x: Tensor, scores: Mapping[str, Tensor], percents: Sequence[int], *, n: int = 3):
    """Images ``(R, C, ...)`` and row/column labels: rows = (method, training image), columns = 0 % and each level."""
    from ..plotting import to_display_image

    idx = torch.arange(min(n, len(x)))
    rows, labels = [], []
    for m, s in scores.items():
        for i in idx.tolist():
            rows.append([to_display_image(x[i].numpy())])
            labels.append(f"{METHOD_LABELS[m]}\nimage {i}")
        for p in percents:
            shown = mask_images(x[idx], removal_mask(s[idx], p))
            for r, xi in zip(rows[-len(idx):], shown):
                r.append(to_display_image(xi.numpy()))
    cols = ["original"] + [f"{p} % removed" for p in percents]
    return np.stack([np.stack(r) for r in rows]), labels, cols


# ------------------------------------------------------------------------------------------ verdict
#: The page's criterion, as its verdicts state it.
CRITERION = ("at every informative removal level 0 < p < 100 % (degenerate levels, whose masks leave the same "
             "training images as removing every pixel or as a lower level, excluded), the model retrained without "
             "the method's top-p % pixels has a higher test MSE (unmasked test set) than the Random-mask model "
             "retrained from the same seed, for every retraining seed; 'does not hold' if the mean over seeds is "
             "below Random's at some informative level; 'inconclusive' otherwise or without an informative level")


def verdicts(df: pd.DataFrame, dataset: str, *, mean_nonzero: float | None = None,
             n_features: int | None = None) -> list[Verdict]:
    """Per attribution method, compared with Random paired by retraining seed at every informative level.

    ``df``: :func:`retrained_losses` (columns method labels, percent, run, test_loss, degenerate). See
    :data:`CRITERION`.
    """
    df = df.assign(run=df["run"] if "run" in df else 0, degenerate=df["degenerate"] if "degenerate" in df else "")
    loss = df.set_index(["method", "percent", "run"])["test_loss"]
    degen = df.groupby(["method", "percent"])["degenerate"].first()
    methods = set(df.method)
    context = ""
    if mean_nonzero is not None and n_features:
        context = (f"; a training image has {mean_nonzero:.0f} of {n_features} pixels non-zero on average "
                   f"({100 * mean_nonzero / n_features:.0f} %)")
    out = []
    for m in ("gradient_shap", "integrated_gradients"):
        label = METHOD_LABELS[m]
        if label not in methods:
            continue
        levels = sorted(p for p in set(df.percent[df.method == label]) if 0 < p < 100
                        and "Random" in methods and p in set(df.percent[df.method == "Random"]))
        skipped = [p for p in levels if degen.get((label, p)) or degen.get(("Random", p))]
        informative = [p for p in levels if p not in skipped]
        n_runs = df[(df.method == label) & (df.percent > 0)].run.nunique()
        if not informative:
            holds = None
            ours = ("no informative removal level 0 < p < 100 % with a Random model to compare"
                    + (f" (degenerate: {', '.join(f'{p} %' for p in skipped)})" if skipped else ""))
        else:
            diffs = {p: [loss[(label, p, r)] - loss[("Random", p, r)] for r in sorted(set(df.run))
                         if (label, p, r) in loss.index and ("Random", p, r) in loss.index] for p in informative}
            every = [p for p in informative if diffs[p] and min(diffs[p]) > 0]
            below = [p for p in informative if diffs[p] and float(np.mean(diffs[p])) < 0]
            holds = True if len(every) == len(informative) else (False if below else None)
            p20 = min(informative, key=lambda p: abs(p - 20))
            g = df[df.percent == p20].groupby("method")["test_loss"]
            sd = g.std(ddof=1)
            fmt = (lambda v, s: f"{v:.4g} ± {s:.2g}" if n_runs > 1 and np.isfinite(s) else f"{v:.4g}")
            ours = (f"test MSE at {p20} % removed: {fmt(g.mean()[label], sd[label])} vs Random "
                    f"{fmt(g.mean()['Random'], sd['Random'])} (mean ± sd over {n_runs} seed(s)); above Random for "
                    f"every seed at {len(every)}/{len(informative)} informative levels "
                    f"({', '.join(f'{p} %' for p in informative)})"
                    + (f"; degenerate levels excluded: {', '.join(f'{p} %' for p in skipped)}" if skipped else ""))
            if holds and n_runs < 2:
                holds, ours = None, ours + "; a single retraining seed gives no error bar"
        out.append(Verdict("App. C ROAR", dataset, "reconstruction AE", f"retrained test MSE, {label}",
                           ours + context, "higher than Random at every removal level", ANCHOR,
                           CRITERION, verdict_word(holds)))
    return out


# ------------------------------------------------------------------------------------------ make checkpoints
def training_jobs(dataset: str, model: str | None = None, *, methods: Sequence[str] = METHODS,
                  percents: Sequence[int] = PERCENTS, n_seeds: int = N_SEEDS, **_: Any) -> list:
    """The base model, then one job per method (its attributions once, every level × seed retrained)."""
    from .jobs import TRAIN_EXAMPLES, TrainJob, estimate_cost

    methods, percents = validate(methods, percents)
    n = validate_seeds(n_seeds)
    spec = model_spec(dataset)
    expect = {"n_epochs": spec.n_epochs, "batch_size": spec.batch_size, "patience": spec.patience}
    one = estimate_cost(spec.arch, TRAIN_EXAMPLES[dataset], spec.n_epochs)
    base = checkpoint(dataset)
    jobs = [TrainJob(NOTEBOOK, dataset, None, (base,), {}, (dataset, {}), one, expect={base: expect})]
    for m in methods:
        names = tuple(checkpoint(dataset, m, p, r) for p in percents for r in range(n))
        jobs.append(TrainJob(NOTEBOOK, dataset, None, names, {"method": m, "percents": list(percents), "n_seeds": n},
                             (dataset, {}), one * len(names) + (0 if m == "random" else 240), after=(base,),
                             expect={nm: expect for nm in names}))
    return jobs


def train_job(exp: Experiment, method: str | None = None, percents: Sequence[int] = PERCENTS,
              n_seeds: int = N_SEEDS) -> None:
    """Train (or load when current) the base model, then retrain ``method`` at every level and seed."""
    splits = load_data(exp)
    base, base_manifest = get_base_model(exp, splits)
    if method is None:
        return
    from .common import baseline_for

    x = train_images(splits)
    scores = train_attributions(exp, base.encoder, x, [method], baseline_for(exp.dataset, splits))
    retrain(exp, splits, scores, percents, base_manifest, runs=range(validate_seeds(n_seeds)))


# ------------------------------------------------------------------------------------------ the book's interface
#: What the book and ``make checkpoints`` know of this page: the base model and every retrained one, for the page's
#: methods, removal levels and seeds.
SPEC = ClaimSpec(NOTEBOOK, DATASETS, MODELS, data=data_requirements, checkpoints=required_checkpoints,
                 checkpoint_params=("methods", "percents", "n_seeds"), jobs=training_jobs,
                 job_params=("methods", "percents", "n_seeds"), train=train_job)
