"""Claim 1.1 — consistency of label-free feature importance (paper §4.1, experiments.md §2).

Mask the top-k features of each test input by label-free importance, replace them by the baseline, and measure how
far the representation moves, ||f(x) − f(x̃)||²; important features should move it more than random ones.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from ..features import attribute_dataset
from ..metrics import representation_shift
from ..report import Verdict, verdict_word
from ..labels import FEATURE_METHOD_LABELS, labels_for
from .common import AE_SPECS, Experiment, ModelSpec, baseline_for, json_data_info
from .spec import ClaimSpec

NOTEBOOK = "claim1_feature_consistency"
CLAIM = "claim1"
DATASETS = ("mnist", "ecg5000", "cifar10", "cifar100")
MODELS = (None, "simclr")
METHODS = ("gradient_shap", "integrated_gradients", "saliency", "random")
METHOD_LABELS = labels_for(METHODS + ("gradient_shap_as_published",), FEATURE_METHOD_LABELS)
FRACTIONS = (0.05, 0.1, 0.2, 0.5, 0.8, 1.0)
#: SimCLR training (experiments.md §2): SGD-Nesterov lr 0.6, batch 512, 100 epochs, cosine schedule, no early stop.
SIMCLR_SPEC = ModelSpec("simclr", {"latent_dim": 512, "projection_dim": 128, "temperature": 0.5}, n_epochs=100,
                        batch_size=512, patience=None, lr=0.6)
SIMCLR_FIT = {"optimizer": "sgd_nesterov", "scheduler": "cosine", "drop_last": True, "weight_decay": 1e-6,
              "val_fraction": 0.0}
ANCHOR = ("paper Fig. 2 and FACT Claim 1.1 (figures only, no stored numbers): masking by GradientSHAP, IG and "
          "Saliency shifts the representation more than random masking at every p < 100 %")


#: The SimCLR path's departures from the authors' code that no verdict would show (stated on every SimCLR page and
#: on the methods page). Read from lfxai_utils.training (the schedule), lfxai_utils.models.simclr (the
#: augmentations) and lfxai_utils.features (the per-input GradientSHAP baseline).
SIMCLR_DEVIATIONS = (
    ("learning-rate schedule",
     "cosine annealing per batch from 0.6 down to 6e-4 (`CosineAnnealingLR`, η_min = lr·1e-3) over the 100 epochs",
     "`LambdaLR` whose lambda returns an absolute rate in [1e-3, 0.6], which LambdaLR multiplies by the base rate "
     "0.6: the effective rate runs from 0.36 down to 6e-4 (experiments.md §2)"),
    ("augmentations",
     "computed on the device for the whole batch (`lfxai_utils.models.simclr.simclr_augment`), with per-image "
     "random parameters, approximating torchvision's: the crop's area fraction (0.08–1) and log aspect ratio "
     "(3/4–4/3) are drawn once and its sides clamped to the image (torchvision retries 10 times, then falls back "
     "to a centre crop); resampling is bilinear `grid_sample` without antialiasing, with the horizontal flip folded "
     "into the same affine map; colour jitter (0.4, 0.4, 0.4, 0.1; p = 0.8) applies brightness → contrast → "
     "saturation → hue in this fixed order (torchvision permutes it at random), and the hue shift is a rotation "
     "of the YIQ chroma plane by 2π·h instead of an HSV hue shift; random grayscale p = 0.2 as torchvision",
     "torchvision `RandomResizedCrop(32)`, `RandomHorizontalFlip(0.5)`, `RandomApply(ColorJitter(0.4, 0.4, 0.4, "
     "0.1), p=0.8)`, `RandomGrayscale(0.2)` on the CPU, one image at a time"),
    ("GradientSHAP baseline",
     "each image is paired with its own GaussianBlur(kernel 21, σ = 5) as its baseline",
     "the batch of blurred images is passed to captum's `GradientShap`, which treats it as a baseline "
     "*distribution* and draws each probe's baseline at random from the batch, i.e. mostly the blur of another "
     "image (Integrated Gradients and the masking pair images with their own blur in both)"),
)


def simclr_deviations_markdown() -> str:
    """The SimCLR deviations as a Markdown table (shown by the SimCLR pages and copied in book/methods.md)."""
    rows = ["| what | here | the authors' code |", "|---|---|---|"]
    rows += [f"| {what} | {ours} | {theirs} |" for what, ours, theirs in SIMCLR_DEVIATIONS]
    return ("**SimCLR: differences from the authors' code that no number on this page shows** (besides the "
            "random initialisation instead of ImageNet weights).\n\n" + "\n".join(rows))


def validate(dataset: str, model: str | None) -> None:
    if model == "simclr" and dataset != "cifar10":
        raise ValueError(f"model='simclr' is the paper's CIFAR-10 model; use dataset='cifar10' (got {dataset!r}), "
                         "or model=None for the autoencoder")


def load_kwargs(dataset: str) -> dict[str, Any]:
    return {"ecg_mode": "features"} if dataset == "ecg5000" else {}


def data_requirements(dataset: str, model: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    return [(dataset, load_kwargs(dataset))]


def model_spec(dataset: str, model: str | None = None) -> ModelSpec:
    """The explained model: the claim-1 autoencoder (shared with Claim 1.2 on MNIST and CIFAR) or SimCLR."""
    if model == "simclr":
        return SIMCLR_SPEC
    spec = AE_SPECS[dataset]
    # The MNIST/CIFAR autoencoder also serves Claim 1.2, which needs TracIn checkpoints every 10 epochs.
    return spec if dataset == "ecg5000" else spec.with_(checkpoint_every=10)


def checkpoint(dataset: str, model: str | None = None) -> str:
    from ..checkpoints import checkpoint_name

    if model == "simclr":
        return checkpoint_name(CLAIM, dataset, "simclr-resnet18")
    if dataset == "ecg5000":
        return checkpoint_name(CLAIM, dataset, "lstm-ae", variant="normal-beats")
    return checkpoint_name(CLAIM, dataset, "denoising-ae")


def required_checkpoints(dataset: str, model: str | None = None) -> list[str]:
    return [checkpoint(dataset, model)]


def train_val(splits, dataset: str):
    """(train, validation) data: ECG5000 uses its 80/20 split of the normal beats; images a held-out 10 %."""
    if dataset == "ecg5000":
        return splits.train.subset(splits.info["train_indices"]), splits.train.subset(splits.info["val_indices"])
    return splits.train, None


def get_model(exp: Experiment, splits):
    """Load (inference) or train (train/smoke) the model this page explains."""
    spec = model_spec(exp.dataset, exp.model)
    train, val = train_val(splits, exp.dataset)
    fit_kwargs = dict(SIMCLR_FIT) if exp.model == "simclr" else {}
    if exp.smoke:
        fit_kwargs["max_train_examples"] = 128
        if exp.model == "simclr":
            fit_kwargs["batch_size"] = 32
    return exp.get_model(checkpoint(exp.dataset, exp.model), spec, train, val_data=val,
                         data_info=json_data_info(splits), fit_kwargs=fit_kwargs)


def training_jobs(dataset: str, model: str | None = None, **_: Any) -> list:
    """The page's one model (with its TracIn checkpoints on MNIST and CIFAR)."""
    from .jobs import TRAIN_EXAMPLES, TrainJob, estimate_cost

    spec = model_spec(dataset, model)
    name = checkpoint(dataset, model)
    n = TRAIN_EXAMPLES.get(dataset, 2336)
    return [TrainJob(NOTEBOOK, dataset, model, (name,), {}, (dataset, load_kwargs(dataset)),
                     estimate_cost(spec.arch, n, spec.n_epochs),
                     expect={name: {"n_epochs": spec.n_epochs, "batch_size": spec.batch_size,
                                    "patience": spec.patience, "checkpoint_every": spec.checkpoint_every}})]


def train_job(exp: Experiment) -> None:
    """Train (or load when current) the page's model."""
    get_model(exp, exp.load_data(**load_kwargs(exp.dataset)))


def explained_set(splits, n: int | None, seed: int) -> torch.Tensor:
    """The whole test set (paper), or a seeded random ``n`` of it."""
    x, _ = splits.test.tensors()
    if n is not None and n < len(x):
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
        x = x[idx]
    return x


def attributions(exp: Experiment, encoder, x, baseline, *, methods=METHODS, show_as_published: bool = True,
                 batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Label-free attributions of ``x`` per method (plus GradientSHAP with the authors' pairing, to compare)."""
    out = {}
    batch_size = exp.size(batch_size, 16)   # smoke: small batches (SimCLR's ResNet-18 × 50 IG steps is memory-hungry)
    for m in methods:
        gen = torch.Generator().manual_seed(exp.seed)
        # IG expands every example into n_steps points: bound the expanded batch to ``batch_size`` examples
        extra = ({"internal_batch_size": batch_size, "n_steps": exp.size(50, 8)}
                 if m == "integrated_gradients" else {})
        out[m] = attribute_dataset(encoder, x, m, baseline, batch_size=batch_size, device=exp.device,
                                   progress=exp.progress, generator=gen, **extra)
    if show_as_published and "gradient_shap" in methods:
        gen = torch.Generator().manual_seed(exp.seed)
        out["gradient_shap_as_published"] = attribute_dataset(
            encoder, x, "gradient_shap", baseline, batch_size=batch_size, device=exp.device, progress=exp.progress,
            generator=gen, pairing="as_published")
    return out


def shifts(exp: Experiment, encoder, x, attrs: dict[str, torch.Tensor], baseline,
           fractions=FRACTIONS, batch_size: int = 256) -> pd.DataFrame:
    """One row per (method, fraction, example): the representation shift."""
    frames = []
    batch_size = exp.size(batch_size, 16)
    for m, a in attrs.items():
        df = representation_shift(encoder, x, a, fractions, baseline, batch_size=batch_size, device=exp.device,
                                  progress=False)
        df.insert(0, "method", METHOD_LABELS.get(m, m))
        frames.append(df)
    out = pd.concat(frames, ignore_index=True)
    out["percent"] = (100 * out["fraction"]).round(1)
    return out


def pairing_agreement(attrs: dict[str, torch.Tensor]) -> float | None:
    """Mean per-example Pearson correlation between GradientSHAP with the correct and the authors' pairing."""
    if "gradient_shap_as_published" not in attrs:
        return None
    a = attrs["gradient_shap"].flatten(1).double()
    b = attrs["gradient_shap_as_published"].flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    r = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)
    return float(r.mean())


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """Mean shift and 95 % CI half-width per method and percentage (wide: one column per method)."""
    g = df.groupby(["method", "percent"])["shift"].agg(["mean", "std", "count"]).reset_index()
    g["ci95"] = 1.96 * g["std"].fillna(0) / np.sqrt(g["count"])
    return g


def verdicts(exp: Experiment, df: pd.DataFrame) -> list[Verdict]:
    """Per attribution method: does it beat random masking at every 0 < p < 100 %?"""
    s = summarise(df)
    rand = s[s.method == METHOD_LABELS["random"]].set_index("percent")["mean"]
    model = exp.model or ("LSTM AE" if exp.dataset == "ecg5000" else "denoising AE")
    out = []
    for m in (METHOD_LABELS[k] for k in METHODS if k != "random"):
        mine = s[s.method == m].set_index("percent")["mean"]
        if mine.empty:
            continue
        ps = [p for p in mine.index if 0 < p < 100]
        holds = all(mine[p] > rand[p] for p in ps)
        p20 = min(ps, key=lambda p: abs(p - 20))
        ours = (f"shift at {p20:g} %: {mine[p20]:.3g} vs random {rand[p20]:.3g}; beats random at "
                f"{sum(mine[p] > rand[p] for p in ps)}/{len(ps)} levels")
        out.append(Verdict("1.1 feature consistency", exp.dataset, model, f"representation shift, {m}", ours,
                           "larger than random at every p < 100 %", ANCHOR,
                           "mean shift above random's at every masked fraction 0 < p < 100 %", verdict_word(holds)))
    return out


# ------------------------------------------------------------------------------------------ the book's interface
#: What the book and ``make checkpoints`` know of this page: one model per (dataset, model), no page parameter.
SPEC = ClaimSpec(NOTEBOOK, DATASETS, MODELS, data=data_requirements, checkpoints=required_checkpoints,
                 jobs=training_jobs, train=train_job)
