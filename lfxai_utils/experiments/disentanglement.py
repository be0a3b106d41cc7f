"""Claim 3 — disentangled VAEs (paper §4.3, experiments.md §6).

The common belief is that a more disentangled representation (larger β in a β-VAE or β-TCVAE) has latent units
that look at *different* parts of the input. For every VAE of a grid loss × β × run we compute the per-unit saliency
maps ``|z_j(x) · GradientSHAP(μ_j, x)|`` (zero baseline) on the test set and the mean Pearson correlation between
the maps of different units (each unit's maps pooled over all images); the paper finds that this correlation does
**not** decrease as β grows. Spearman, cosine, entropy and active-unit counts (ORIG, MNIST) are reported as well.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ..checkpoints import checkpoint_name
from ..data import class_balanced_indices
from ..features import attribute_units_dataset
from ..metrics import saliency_metrics
from ..plotting import PALETTE
from ..report import Verdict, mean_pm, verdict_word
from .common import Experiment, ModelSpec, RunSelection, check_choice, json_data_info
from .spec import ClaimSpec
from .feature_consistency import explained_set  # noqa: F401 (the notebook calls X.explained_set)

NOTEBOOK = "claim3_disentanglement"
CLAIM = "claim3-disvae"
DATASETS = ("mnist", "dsprites", "cifar10", "cifar100")
MODELS = (None,)
LOSSES = ("beta", "tc")
LOSS_LABELS = {"beta": "β-VAE", "tc": "β-TCVAE"}
LOSS_MODEL_NAMES = {"beta": "beta-vae", "tc": "tc-vae"}
BETAS = (1, 5, 10)
#: Runs per (loss, β) in the paper (``n_runs=None`` means this when training).
N_RUNS = 5
METHOD = "gradient_shap"
METRICS = ("pearson", "spearman", "cosine", "entropy", "active_units")
METRIC_LABELS = {"pearson": "Pearson correlation", "spearman": "Spearman correlation", "cosine": "cosine similarity",
                 "entropy": "entropy (nats)", "active_units": "active units per pixel",
                 "active_latents": "latent units in use"}
#: Also reported per model: how many latent units the VAE uses (posterior collapse diagnostic, Burda et al. 2016).
FIGURE_METRICS = METRICS + ("active_latents",)
#: A unit is in use when its mean μ_j varies across the explained images with variance above this.
ACTIVE_VARIANCE = 0.01
#: Spearman ranks the whole d × (N·H·W) array in float64; above this many entries it is skipped (NaN).
SPEARMAN_MAX_ELEMENTS = 50_000_000


@dataclass(frozen=True)
class VAESetting:
    """Per-dataset VAE settings (experiments.md §6 table)."""

    img_size: tuple[int, int, int]
    latent_dim: int
    batch_size: int
    rec_dist: str
    n_data: int          # the paper's training-set size; only minibatch *stratified* sampling uses it (not run here)


VAE_SETTINGS: dict[str, VAESetting] = {
    "mnist": VAESetting((1, 32, 32), 3, 300, "bernoulli", 60_000),
    "dsprites": VAESetting((1, 64, 64), 6, 500, "bernoulli", 663_552),
    "cifar10": VAESetting((3, 32, 32), 16, 300, "gaussian", 50_000),
    "cifar100": VAESetting((3, 32, 32), 16, 300, "gaussian", 50_000),
}

#: FACT ``results/*/vae/metrics.csv``, Pearson, mean ± population std over 5 runs (experiments.md §6).
FACT_PEARSON: dict[str, dict[tuple[str, int], tuple[float, float]]] = {
    "mnist": {("beta", 1): (0.241, 0.028), ("beta", 5): (0.254, 0.027), ("beta", 10): (0.240, 0.046),
              ("tc", 1): (0.228, 0.023), ("tc", 5): (0.241, 0.027), ("tc", 10): (0.227, 0.045)},
    "dsprites": {("beta", 1): (0.239, 0.053), ("beta", 5): (0.233, 0.055), ("beta", 10): (0.289, 0.068),
                 ("tc", 1): (0.217, 0.048), ("tc", 5): (0.297, 0.029), ("tc", 10): (0.369, 0.058)},
    "cifar100": {("beta", 1): (0.189, 0.018), ("beta", 5): (0.252, 0.088), ("beta", 10): (0.249, 0.014),
                 ("tc", 1): (0.198, 0.011), ("tc", 5): (0.281, 0.073), ("tc", 10): (0.228, 0.008)},
}
FACT_RUNS = 5
FACT_SOURCE = ("FACT reproduction (jwagenbach/FACT) results/{ds}/vae/metrics.csv, mean ± population std over 5 runs "
               "(experiments.md §6); paper §4.3 (Fig. 3): the correlation does not decrease with β")
NO_ANCHOR = {"cifar10": "FACT ships the CIFAR-10 VAEs but no CIFAR-10 metrics.csv: no published number"}


# ------------------------------------------------------------------------------------------ grid and names
@dataclass(frozen=True)
class GridPoint:
    """One VAE of the grid."""

    loss: str
    beta: float
    run: int

    @property
    def label(self) -> str:
        return f"{LOSS_LABELS[self.loss]}, β={self.beta:g}, run {self.run}"


def _as_list(value: Any) -> list:
    """A list from a list/tuple, a scalar, or a string as papermill's ``-p`` passes it (``"[1, 5]"`` or ``"1,5"``)."""
    if isinstance(value, str):
        import ast

        text = value.strip()
        if text.startswith(("[", "(")):
            value = ast.literal_eval(text)
        else:
            value = [v for v in text.split(",") if v.strip()]
    if isinstance(value, Iterable) and not isinstance(value, str):
        return list(value)
    return [value]


def validate_grid(betas: Iterable[float] = BETAS, losses: Iterable[str] = LOSSES,
                  n_runs: int = N_RUNS) -> tuple[tuple[float, ...], tuple[str, ...], int]:
    """Check and normalise the grid parameters (β > 0, distinct; known losses; ``n_runs ≥ 1``)."""
    betas = tuple(float(b) for b in _as_list(betas))
    losses = tuple(str(v).strip().lower() for v in _as_list(losses))
    if not betas or any(not (b > 0 and math.isfinite(b)) for b in betas) or len(set(betas)) != len(betas):
        raise ValueError(f"betas must be distinct positive numbers, e.g. {list(BETAS)}; got {list(betas)}")
    if not losses or len(set(losses)) != len(losses):
        raise ValueError(f"losses must be a non-empty list of distinct values from {list(LOSSES)}; got {list(losses)}")
    for loss in losses:
        check_choice("loss", loss, LOSSES)
    if int(n_runs) != n_runs or int(n_runs) < 1:
        raise ValueError(f"n_runs must be a positive integer (the paper: {N_RUNS}); got {n_runs!r}")
    return tuple(sorted(betas)), losses, int(n_runs)


def grid(betas: Iterable[float] = BETAS, losses: Iterable[str] = LOSSES,
         runs: int | Sequence[int] = N_RUNS) -> list[GridPoint]:
    """Every (loss, β, run) of the experiment, loss-major then β then run. ``runs``: how many (runs ``0..n-1``) or
    which run numbers (e.g. ``[0, 3]``, as :func:`select_runs` picks them)."""
    if isinstance(runs, Iterable) and not isinstance(runs, str):
        runs = [int(r) for r in runs]
        if not runs or len(set(runs)) != len(runs) or min(runs) < 0:
            raise ValueError(f"runs must be distinct run numbers ≥ 0; got {runs}")
        betas, losses, _ = validate_grid(betas, losses, 1)
    else:
        betas, losses, n = validate_grid(betas, losses, runs)
        runs = list(range(n))
    return [GridPoint(loss, beta, run) for loss in losses for beta in betas for run in runs]


def checkpoint(dataset: str, loss: str, beta: float, run: int) -> str:
    """``claim3-disvae_{dataset}_{beta-vae|tc-vae}_beta{β}_run{r}``."""
    check_choice("dataset", dataset, DATASETS)
    check_choice("loss", loss, LOSSES)
    return checkpoint_name(CLAIM, dataset, LOSS_MODEL_NAMES[loss], beta=beta, run=run)


def model_seed(seed: int, loss: str, beta: float, run: int) -> int:
    """The seed a VAE is initialised and trained with: ``seed + 1000·run + 500·[loss = TC] + round(10·β)``.

    ORIG seeded once and trained the 30 models one after the other, so each had its own RNG stream; here every model
    gets its own stated seed, distinct over the grid for β < 50, and the same whichever notebook trains it.
    """
    return int(seed) + 1000 * int(run) + 500 * LOSSES.index(loss) + int(round(10 * float(beta)))


def load_kwargs(dataset: str) -> dict[str, Any]:
    """MNIST is resized to 32×32 for the Burgess VAE (ORIG ``Resize(32)``); the others keep their size."""
    return {"image_size": 32} if dataset == "mnist" else {}


def data_requirements(dataset: str, model: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    return [(dataset, load_kwargs(dataset))]


def grid_checkpoints(dataset: str, *, betas: Iterable[float] = BETAS, losses: Iterable[str] = LOSSES,
                     n_runs: int | None = N_RUNS) -> list[str]:
    """The checkpoints of the grid ``losses`` × ``betas`` × runs ``0..n_runs-1`` (``None``: the paper's
    :data:`N_RUNS`), in :func:`grid` order."""
    points = grid(betas, losses, N_RUNS if n_runs is None else n_runs)
    return [checkpoint(dataset, p.loss, p.beta, p.run) for p in points]


def required_checkpoints(dataset: str, model: str | None = None, *, betas: Iterable[float] = BETAS,
                         losses: Iterable[str] = LOSSES, n_runs: int | None = N_RUNS) -> list[str]:
    """The checkpoints the page cannot do without in inference mode: run 0 of the grid (the run ``make checkpoints``
    trains first). The page uses every further complete run that is shipped, up to ``n_runs``
    (:func:`select_runs`; they are its :func:`candidate_checkpoints`), so a grid still being trained builds with the
    runs it has, and says how many."""
    if n_runs is not None:
        validate_grid(betas, losses, n_runs)
    return grid_checkpoints(dataset, betas=betas, losses=losses, n_runs=1)


def candidate_checkpoints(dataset: str, model: str | None = None, *, betas: Iterable[float] = BETAS,
                          losses: Iterable[str] = LOSSES, n_runs: int | None = N_RUNS) -> list[str]:
    """Every checkpoint :func:`select_runs` may pick from: the paper's :data:`N_RUNS` runs (or ``n_runs`` if more)."""
    return grid_checkpoints(dataset, betas=betas, losses=losses, n_runs=max(N_RUNS, int(n_runs or 0)))


def vae_spec(dataset: str, loss: str, beta: float) -> ModelSpec:
    """Burgess VAE with the paper's settings: Adam 1e-3, 100 epochs, patience 10, batch 300 (dSprites 500)."""
    s = VAE_SETTINGS[check_choice("dataset", dataset, DATASETS)]
    kwargs = {"img_size": list(s.img_size), "latent_dim": s.latent_dim, "loss": check_choice("loss", loss, LOSSES),
              "beta": float(beta), "rec_dist": s.rec_dist, "n_data": s.n_data}
    return ModelSpec("vae", kwargs, n_epochs=100, batch_size=s.batch_size, patience=10)


# ------------------------------------------------------------------------------------------ models
def get_vae(exp: Experiment, splits, point: GridPoint) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Load (inference) or train (train/smoke) one VAE of the grid, under its own seed (:func:`model_seed`)."""
    spec = vae_spec(exp.dataset, point.loss, point.beta).with_(identity={"run": point.run})
    fit_kwargs = {"max_train_examples": 128} if exp.smoke else {}
    return exp.get_model(checkpoint(exp.dataset, point.loss, point.beta, point.run), spec, splits.train,
                         data_info=json_data_info(splits), fit_kwargs=fit_kwargs,
                         seed=model_seed(exp.seed, point.loss, point.beta, point.run), desc=point.label)


def training_jobs(dataset: str, model: str | None = None, *, betas: Iterable[float] = BETAS,
                  losses: Iterable[str] = LOSSES, n_runs: int = N_RUNS, **_: Any) -> list:
    """One job per VAE of the grid, run-major (every loss and β of run 0 first: a complete small grid soonest)."""
    from .jobs import TRAIN_EXAMPLES, TrainJob, estimate_cost

    pts = sorted(grid(betas, losses, n_runs), key=lambda p: (p.run, p.loss, p.beta))
    out = []
    for p in pts:
        spec = vae_spec(dataset, p.loss, p.beta)
        name = checkpoint(dataset, p.loss, p.beta, p.run)
        out.append(TrainJob(NOTEBOOK, dataset, None, (name,), {"loss": p.loss, "beta": p.beta, "run": p.run},
                            (dataset, load_kwargs(dataset)),
                            estimate_cost(spec.arch, TRAIN_EXAMPLES[dataset], spec.n_epochs),
                            expect={name: {"n_epochs": spec.n_epochs, "batch_size": spec.batch_size,
                                           "patience": spec.patience}}))
    return out


def train_job(exp: Experiment, loss: str, beta: float, run: int) -> None:
    """Train (or load when current) one VAE of the grid."""
    splits = exp.load_data(**load_kwargs(exp.dataset))
    get_vae(exp, splits, GridPoint(loss, float(beta), int(run)))


def select_runs(exp: Experiment, splits, n_runs: int | None, betas: Iterable[float] = BETAS,
                losses: Iterable[str] = LOSSES) -> RunSelection:
    """The runs the page uses (:meth:`~lfxai_utils.experiments.common.Experiment.select_runs` over this page's
    jobs): in inference, the complete runs trained as ``make checkpoints`` trains them now — while the grid is being
    retrained, the older runs are left out rather than mixed in, since a β trend across models trained differently
    would measure the training, not β."""
    if n_runs is not None:
        validate_grid(betas, losses, n_runs)
    k = max(N_RUNS, int(n_runs or 0))
    return exp.select_runs(n_runs, N_RUNS, training_jobs(exp.dataset, betas=betas, losses=losses, n_runs=k),
                           data_info=json_data_info(splits))


def get_vaes(exp: Experiment, splits, points: Sequence[GridPoint]) -> dict[GridPoint, tuple[torch.nn.Module, dict]]:
    """:func:`get_vae` for every grid point, with a progress bar."""
    from tqdm.auto import tqdm

    return {p: get_vae(exp, splits, p) for p in tqdm(points, desc="VAEs", disable=not exp.progress)}


# ------------------------------------------------------------------------------------------ saliency and metrics
def plot_indices(labels: torch.Tensor, n: int) -> torch.Tensor:
    """Test images to draw: the first occurrence of each class in turn (ORIG: first and second of each digit);
    the first ``n`` images when the classes run out."""
    try:
        return class_balanced_indices(labels, n)
    except ValueError:
        return torch.arange(min(n, len(labels)))


def unit_saliency(exp: Experiment, encoder, x: torch.Tensor, seed: int, *, batch_size: int = 250,
                  chunk_batches: int = 16) -> torch.Tensor:
    """``S`` of shape ``(N, d, H, W)``: ``|z_j(x) · GradientSHAP(μ_j, x)|`` with a zero baseline (RGB averaged first,
    as FACT); captum's GradientSHAP defaults (5 samples), random draws from a generator seeded with ``seed``.

    The maps are written into one preallocated tensor, ``chunk_batches`` batches at a time, so the peak memory is
    about the size of ``S`` itself (dSprites' whole test set: 7.2 GB); the result does not depend on the chunking.
    """
    gen = torch.Generator().manual_seed(int(seed))
    step = max(1, int(chunk_batches)) * int(batch_size)
    out = None
    from tqdm.auto import tqdm

    for start in tqdm(range(0, len(x), step), desc="per-unit GradientSHAP", disable=not exp.progress, leave=False):
        part = attribute_units_dataset(encoder, x[start:start + step], METHOD, None, batch_size=batch_size,
                                       device=exp.device, progress=False, generator=gen)
        if out is None:
            out = torch.empty((len(x), *part.shape[1:]), dtype=part.dtype)
        out[start:start + len(part)] = part
    if out is None:
        raise ValueError("no images to explain")
    return out


def model_metrics(S: torch.Tensor) -> dict[str, float]:
    """:func:`~lfxai_utils.metrics.saliency_metrics` of ``S``; Spearman is NaN when ``S`` has more than
    :data:`SPEARMAN_MAX_ELEMENTS` entries (it ranks the whole array in float64)."""
    spearman = S.numel() <= SPEARMAN_MAX_ELEMENTS
    out = {k: float(v) for k, v in saliency_metrics(S, spearman=spearman).items()}
    out.setdefault("spearman", float("nan"))
    return {k: out[k] for k in METRICS}


@torch.no_grad()
def latent_variance(exp: Experiment, encoder, x: torch.Tensor, *, batch_size: int = 1000) -> torch.Tensor:
    """Variance over the images ``x`` of each latent mean μ_j, ``(d,)`` (unbiased)."""
    dev = exp.device
    home = next(encoder.parameters()).device
    encoder.to(dev)
    try:
        mu = torch.cat([encoder(x[i:i + batch_size].to(dev)).cpu() for i in range(0, len(x), batch_size)])
    finally:
        encoder.to(home)
    return mu.double().var(0) if len(mu) > 1 else torch.zeros(mu.shape[1], dtype=torch.float64)


def active_latents(variance: torch.Tensor, threshold: float = ACTIVE_VARIANCE) -> int:
    """Number of latent units in use: ``Var_x(μ_j) > threshold`` (Burda et al.'s active units; the others have
    collapsed onto the prior and encode nothing)."""
    return int((torch.as_tensor(variance) > threshold).sum())


def metrics_table(exp: Experiment, vaes: Mapping[GridPoint, tuple[torch.nn.Module, dict]], x: torch.Tensor, *,
                  batch_size: int = 250) -> pd.DataFrame:
    """One row per VAE: its grid point, seed, checkpoint, and the saliency metrics on ``x``.

    GradientSHAP's random draws for a model use the model's own seed, so a row does not depend on the others.
    """
    from tqdm.auto import tqdm

    rows = []
    for p, (model, manifest) in tqdm(vaes.items(), desc="saliency metrics", disable=not exp.progress):
        seed = model_seed(exp.seed, p.loss, p.beta, p.run)
        S = unit_saliency(exp, model.encoder, x, seed, batch_size=batch_size)
        var = latent_variance(exp, model.encoder, x)
        rows.append({"loss": LOSS_LABELS[p.loss], "loss_key": p.loss, "beta": p.beta, "run": p.run, "seed": seed,
                     "checkpoint": manifest.get("name", checkpoint(exp.dataset, p.loss, p.beta, p.run)),
                     "epochs_run": (manifest.get("training") or {}).get("epochs_run"), "n_explained": len(x),
                     **model_metrics(S), "active_latents": active_latents(var),
                     "latent_variances": " ".join(f"{v:.3g}" for v in var.tolist())})
        del S
    return pd.DataFrame(rows)


def summarise(df: pd.DataFrame, metric: str = "pearson") -> pd.DataFrame:
    """Mean, population std (ddof 0, as FACT's ± figures) and number of runs per loss and β."""
    g = df.groupby(["loss_key", "loss", "beta"], sort=True)[metric]
    out = g.agg(mean="mean", std=lambda v: float(np.std(v, ddof=0)), n="count").reset_index()
    return out


# ------------------------------------------------------------------------------------------ anchors and verdict
def anchor_table(dataset: str) -> pd.DataFrame:
    """FACT's Pearson numbers for ``dataset`` (empty, with the reason in ``attrs['note']``, when there are none)."""
    rows = [{"loss_key": l, "loss": LOSS_LABELS[l], "beta": float(b), "mean": m, "std": s, "n": FACT_RUNS}
            for (l, b), (m, s) in FACT_PEARSON.get(dataset, {}).items()]
    df = pd.DataFrame(rows, columns=["loss_key", "loss", "beta", "mean", "std", "n"])
    df.attrs["note"] = NO_ANCHOR.get(dataset, "" if rows else f"no published number for {dataset}")
    return df


def units_in_use(df: pd.DataFrame) -> dict[tuple[str, float], list[int]]:
    """``{(loss_key, β): [latent units in use of each run, in run order]}`` (empty lists without the column)."""
    if "active_latents" not in df:
        return {}
    return {(l, float(b)): [int(v) for v in g.sort_values("run")["active_latents"]]
            for (l, b), g in df.groupby(["loss_key", "beta"])}


def comparison_table(df: pd.DataFrame, dataset: str, metric: str = "pearson") -> pd.DataFrame:
    """Ours beside FACT's, per loss and β: ``mean ± std (n runs)`` (population std for both), with the latent units
    in use of every run beside our number (of d; fewer means collapsed units)."""
    ours = summarise(df, metric)
    fact = anchor_table(dataset).set_index(["loss_key", "beta"]) if metric == "pearson" else pd.DataFrame()
    used = units_in_use(df)
    d = VAE_SETTINGS[dataset].latent_dim if dataset in VAE_SETTINGS else None
    rows = []
    for r in ours.itertuples(index=False):
        key = (r.loss_key, r.beta)
        f = fact.loc[key] if len(fact) and key in fact.index else None
        u = used.get((r.loss_key, float(r.beta)))
        rows.append({"loss": r.loss, "β": f"{r.beta:g}", f"ours ({METRIC_LABELS[metric]})":
                     f"{mean_pm(r.mean, r.std, r.n)} ({r.n} run{'s' if r.n != 1 else ''})",
                     f"latent units in use per run (of {d})": ",".join(map(str, u)) if u else "—",
                     "FACT": f"{f['mean']:.3f} ± {f['std']:.3f} ({FACT_RUNS} runs)" if f is not None else "—"})
    return pd.DataFrame(rows)


#: Significance level of the one-sided permutation test for a decrease, and the least runs per (loss, β) cell.
ALPHA = 0.05
#: The least runs per (loss, β) cell for a verdict.
MIN_RUNS = 3
#: Above this many distinct arrangements of the β labels the permutation test is Monte Carlo (seeded).
EXACT_MAX_ARRANGEMENTS = 100_000
#: Random arrangements of the Monte Carlo permutation test.
N_PERMUTATIONS = 20_000


def _ranks(v: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(v)   # average ranks for ties, as Spearman's ρ


def _rowwise_pearson(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    A = A - A.mean(1, keepdims=True)
    b = b - b.mean()
    den = np.sqrt((A ** 2).sum(1) * (b ** 2).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (A @ b) / np.where(den > 0, den, 1), np.nan)


def _n_arrangements(counts: Sequence[int]) -> int:
    out, left = 1, int(sum(counts))
    for c in counts:
        out *= math.comb(left, int(c))
        left -= int(c)
    return out


def _label_arrangements(counts: Sequence[int]) -> np.ndarray:
    """Every distinct assignment of group labels 0..G−1 (``counts[g]`` of each) to ``sum(counts)`` positions."""
    from itertools import combinations

    n = int(sum(counts))
    out: list[np.ndarray] = []

    def rec(free: tuple[int, ...], g: int, lab: np.ndarray) -> None:
        if g == len(counts) - 1:
            lab = lab.copy()
            lab[list(free)] = g
            out.append(lab)
            return
        for pick in combinations(free, int(counts[g])):
            nxt = lab.copy()
            nxt[list(pick)] = g
            rec(tuple(i for i in free if i not in pick), g + 1, nxt)

    rec(tuple(range(n)), 0, np.zeros(n, dtype=np.int64))
    return np.stack(out)


def permutation_test_decrease(beta: Sequence[float], value: Sequence[float], *, seed: int = 0) -> dict[str, Any]:
    """One-sided permutation test of Spearman's ρ(β, value) < 0 (a decrease with β).

    Under the null hypothesis (the value does not depend on β) every assignment of the observed β labels to the
    observed runs is equally likely. The p-value is the share of assignments whose ρ is ≤ the observed one: exact
    (every distinct assignment enumerated) up to :data:`EXACT_MAX_ARRANGEMENTS`, else :data:`N_PERMUTATIONS` seeded
    random permutations (plus the observed one).
    """
    b = np.asarray(beta, dtype=float)
    v = np.asarray(value, dtype=float)
    rv = _ranks(v)
    levels, labels, counts = np.unique(b, return_inverse=True, return_counts=True)
    rb_level = np.array([_ranks(b)[labels == g][0] for g in range(len(levels))])
    rho = float(_rowwise_pearson(rb_level[labels][None], rv)[0])
    total = _n_arrangements(counts)
    if total <= EXACT_MAX_ARRANGEMENTS:
        perms = _label_arrangements(counts)
        null = _rowwise_pearson(rb_level[perms], rv)
        p, how = float(np.mean(null <= rho + 1e-12)), f"exact over {total:,} arrangements"
    else:
        rng = np.random.default_rng(seed)
        perms = np.stack([rng.permutation(labels) for _ in range(N_PERMUTATIONS)])
        null = _rowwise_pearson(rb_level[perms], rv)
        p = float((np.sum(null <= rho + 1e-12) + 1) / (N_PERMUTATIONS + 1))
        how = f"Monte Carlo, {N_PERMUTATIONS:,} permutations of {total:,} arrangements"
    return {"rho": rho, "p_decrease": p, "how": how}


def trend(values: pd.DataFrame, *, ddof_std: int = 1, seed: int = 0) -> dict[str, Any]:
    """Does the metric decrease as β grows? A rank test over runs.

    ``values``: columns ``beta`` and ``value`` (one row per run). Returns the means and run counts per β, the
    pooled within-β standard deviation (sample variances, for information), the drop ``mean(β_min) − mean(β_max)``,
    Spearman's ρ between β and the value over all runs, the one-sided permutation p-value for a decrease
    (:func:`permutation_test_decrease`) and

    ``holds``: ``False`` when the decrease is significant (p < :data:`ALPHA`); ``True`` when it is not and ρ ≥ 0;
    ``None`` (inconclusive) when ρ < 0 without significance, when some β has fewer than :data:`MIN_RUNS` runs, or
    when there is a single β or no spread. ``reason`` says which.
    """
    g = values.groupby("beta")["value"]
    means, var, n = g.mean(), g.var(ddof=ddof_std), g.count()
    dof = (n - 1).clip(lower=0)
    pooled = float(np.sqrt((dof * var.fillna(0)).sum() / dof.sum())) if dof.sum() > 0 else float("nan")
    lo, hi = means.index.min(), means.index.max()
    drop = float(means[lo] - means[hi])
    out = {"means": means.to_dict(), "n": n.to_dict(), "pooled_std": pooled, "drop": drop, "beta_min": float(lo),
           "beta_max": float(hi), "spearman_rho": float("nan"), "spearman_p_decrease": float("nan"),
           "test": "", "holds": None, "reason": ""}
    if values["beta"].nunique() < 2:
        out["reason"] = "a single β: no trend to test"
        return out
    if values["value"].nunique() < 2:
        out["reason"] = "every run gives the same value: no ranking"
        return out
    t = permutation_test_decrease(values["beta"], values["value"], seed=seed)
    out.update(spearman_rho=t["rho"], spearman_p_decrease=t["p_decrease"], test=t["how"])
    if int(n.min()) < MIN_RUNS:
        out["reason"] = f"fewer than {MIN_RUNS} runs at some β ({int(n.min())}): the rank test has no power"
    elif t["p_decrease"] < ALPHA:
        out.update(holds=False, reason=f"significant decrease (one-sided p = {t['p_decrease']:.3f} < {ALPHA})")
    elif t["rho"] >= 0:
        out.update(holds=True, reason=f"no decrease: ρ = {t['rho']:+.2f} ≥ 0, p = {t['p_decrease']:.3f}")
    else:
        out["reason"] = (f"ρ = {t['rho']:+.2f} points to a decrease that is not significant "
                         f"(p = {t['p_decrease']:.3f} ≥ {ALPHA})")
    return out


def anchor_trend(dataset: str, loss: str) -> dict[str, Any] | None:
    """FACT's summary numbers at the smallest and largest β. FACT published means ± std only, no per-run values,
    so the rank test of :func:`trend` cannot be applied to them (``testable`` is ``False``)."""
    a = anchor_table(dataset)
    a = a[a.loss_key == loss]
    if a.empty:
        return None
    lo, hi = a.loc[a.beta.idxmin()], a.loc[a.beta.idxmax()]
    var = (a["std"] ** 2 * a["n"] / (a["n"] - 1))
    pooled = float(np.sqrt(((a["n"] - 1) * var).sum() / (a["n"] - 1).sum()))
    return {"mean_lo": float(lo["mean"]), "mean_hi": float(hi["mean"]), "beta_min": float(lo["beta"]),
            "beta_max": float(hi["beta"]), "pooled_std": pooled, "testable": False}


#: The page's criterion, as its verdicts state it.
CRITERION = (f"rank test over runs, per loss: Spearman ρ between β and the Pearson correlation of every run; does "
             f"not hold when a one-sided permutation test (β labels permuted over the runs; exact up to "
             f"{EXACT_MAX_ARRANGEMENTS:,} arrangements) finds a decrease at p < {ALPHA}; holds when it does not and "
             f"ρ ≥ 0; inconclusive when ρ < 0 without significance, when a (loss, β) cell has fewer than {MIN_RUNS} "
             f"runs, or when any of the loss's VAEs has collapsed latent units (Var μ_j ≤ {ACTIVE_VARIANCE}): "
             "the correlation would then compare working units with units that encode nothing")


def collapsed_models(sub: pd.DataFrame, latent_dim: int) -> pd.DataFrame:
    """The rows (VAEs) of ``sub`` with fewer latent units in use than ``latent_dim``."""
    if "active_latents" not in sub:
        return sub.iloc[:0]
    return sub[sub["active_latents"] < latent_dim]


def verdicts(exp: Experiment, df: pd.DataFrame) -> list[Verdict]:
    """Per loss: does the Pearson correlation between unit saliency maps not decrease as β increases?
    (:data:`CRITERION`; every number is given beside the latent units in use of each run.)"""
    d = VAE_SETTINGS[exp.dataset].latent_dim
    out = []
    used = units_in_use(df)
    for loss in [l for l in LOSSES if l in set(df["loss_key"])]:
        sub = df[df.loss_key == loss]
        t = trend(sub.rename(columns={"pearson": "value"})[["beta", "value"]], seed=int(getattr(exp, "seed", 0)))
        s = summarise(sub).set_index("beta")

        def units(b):
            u = used.get((loss, float(b)))
            return f" [units in use of {d}: {','.join(map(str, u))}]" if u else ""

        per_beta = ", ".join(f"β={b:g}: {mean_pm(s.loc[b, 'mean'], s.loc[b, 'std'], s.loc[b, 'n'])}{units(b)}"
                             for b in s.index)
        lo_n, hi_n = int(sub.groupby("beta").size().min()), int(sub.groupby("beta").size().max())
        runs = f"{lo_n}" if lo_n == hi_n else f"{lo_n}–{hi_n}"
        over = "1 run: no spread over runs" if hi_n == 1 else f"mean ± std over {runs} runs"
        ours = f"{per_beta} ({over}, {int(sub['n_explained'].iloc[0]):,} test images)"
        if math.isfinite(t["spearman_rho"]):
            ours += (f"; Spearman ρ(β, Pearson) = {t['spearman_rho']:+.2f}, one-sided permutation p for a decrease "
                     f"{t['spearman_p_decrease']:.3f} ({t['test']})")
        holds, reasons = t["holds"], [t["reason"]] if t["reason"] else []
        bad = collapsed_models(sub, d)
        if len(bad):
            cells = "; ".join(f"β={b:g}: run(s) {','.join(str(int(r)) for r in g['run'])} use "
                              f"{','.join(str(int(v)) for v in g['active_latents'])} of {d}"
                              for b, g in bad.groupby("beta"))
            reasons.append(f"inconclusive: {len(bad)} of {len(sub)} VAEs have collapsed latent units ({cells})")
            holds = None
        if holds is None and t["holds"] is not None:
            reasons.append(f"at face value the test gives: {verdict_word(t['holds'])}")
        if reasons:
            ours += "; " + "; ".join(reasons)
        a = anchor_trend(exp.dataset, loss)
        if a is None:
            anchor = f"{NO_ANCHOR.get(exp.dataset, 'no published number')}; paper: does not decrease with β"
        else:
            anchor = (f"β={a['beta_min']:g}: {a['mean_lo']:.3f} → β={a['beta_max']:g}: {a['mean_hi']:.3f} "
                      "(FACT publishes means ± std only, so the rank test cannot be applied to its runs); paper: "
                      "does not decrease with β")
        out.append(Verdict("3 disentanglement", exp.dataset, f"{LOSS_LABELS[loss]} (d={d})",
                           "Pearson correlation between latent units' saliency maps vs β", ours, anchor,
                           FACT_SOURCE.format(ds=exp.dataset), CRITERION, verdict_word(holds)))
    return out


# ------------------------------------------------------------------------------------------ figures
def _metrics_present(df: pd.DataFrame, metrics: Sequence[str]) -> list[str]:
    return [m for m in metrics if m in df and df[m].notna().any()]


def box_figure(df: pd.DataFrame, metrics: Sequence[str] = FIGURE_METRICS, *, title: str | None = None):
    """Box plots of each metric against β, one box per loss at each β, the runs drawn as dots (FACT/ORIG
    ``metric_box_plots.pdf``). Returns the matplotlib figure; metrics that are all NaN are left out."""
    import matplotlib.pyplot as plt

    metrics = _metrics_present(df, metrics)
    losses = [l for l in LOSSES if l in set(df["loss_key"])]
    betas = sorted(df["beta"].unique())
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.3 * len(metrics), 3.4), squeeze=False)
    width = 0.8 / max(len(losses), 1)
    for ax, m in zip(axes[0], metrics):
        for i, loss in enumerate(losses):
            color = PALETTE[i % len(PALETTE)]
            pos = [k + (i - (len(losses) - 1) / 2) * width for k in range(len(betas))]
            data = [df[(df.loss_key == loss) & (df.beta == b)][m].dropna().to_numpy() for b in betas]
            keep = [(p, v) for p, v in zip(pos, data) if len(v)]
            if not keep:
                continue
            bp = ax.boxplot([v for _, v in keep], positions=[p for p, _ in keep], widths=width * 0.85,
                            patch_artist=True, showfliers=False, manage_ticks=False)
            for patch in bp["boxes"]:
                patch.set(facecolor=color, alpha=0.35, edgecolor=color)
            for line in bp["medians"]:
                line.set(color=color, linewidth=2)
            for p, v in keep:
                ax.scatter(np.full(len(v), p), v, color=color, s=12, zorder=3,
                           label=LOSS_LABELS[loss] if p == keep[0][0] else None)
        ax.set_xticks(range(len(betas)), [f"{b:g}" for b in betas])
        ax.set_xlabel("β")
        ax.set_title(METRIC_LABELS[m], fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    axes[0, 0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def box_figure_plotly(df: pd.DataFrame, metrics: Sequence[str] = FIGURE_METRICS, *, title: str | None = None):
    """Interactive twin of :func:`box_figure` (hover shows each run)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    metrics = _metrics_present(df, metrics)
    losses = [l for l in LOSSES if l in set(df["loss_key"])]
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=[METRIC_LABELS[m] for m in metrics])
    for c, m in enumerate(metrics, start=1):
        for i, loss in enumerate(losses):
            sub = df[df.loss_key == loss]
            fig.add_trace(go.Box(x=[f"β={b:g}" for b in sub["beta"]], y=sub[m], name=LOSS_LABELS[loss],
                                 legendgroup=loss, showlegend=c == 1, marker_color=PALETTE[i % len(PALETTE)],
                                 boxpoints="all", jitter=0.3, pointpos=0, offsetgroup=loss,
                                 customdata=np.stack([sub["run"], sub["seed"]], axis=-1),
                                 hovertemplate=f"{LOSS_LABELS[loss]} %{{x}}<br>run %{{customdata[0]}} "
                                               f"(seed %{{customdata[1]}})<br>{m} = %{{y:.4f}}<extra></extra>"),
                          row=1, col=c)
    fig.update_layout(boxmode="group", title=title, template="plotly_white", height=420,
                      width=max(600, 300 * len(metrics)), margin=dict(l=50, r=20, t=70, b=40))
    return fig


def saliency_figure(x: torch.Tensor, maps: Mapping[float, torch.Tensor], *, title: str | None = None,
                    size: float = 1.1):
    """Per-unit saliency maps of a few test images: one row per (β, image), the image then one map per unit.

    ``maps[β]`` is ``(n, d, H, W)``. Each row shares one colour scale (the row's largest value), so the units of one
    image can be compared.
    """
    import matplotlib.pyplot as plt

    from ..plotting import to_display_image

    betas = list(maps)
    n, d = next(iter(maps.values())).shape[:2]
    fig, axes = plt.subplots(len(betas) * n, d + 1, figsize=(size * (d + 1), size * len(betas) * n), squeeze=False)
    for bi, b in enumerate(betas):
        S = maps[b].detach().cpu().numpy()
        for i in range(n):
            r = bi * n + i
            img = to_display_image(x[i].detach().cpu().numpy())
            axes[r, 0].imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
            axes[r, 0].set_ylabel(f"β={b:g}", fontsize=8)
            vmax = max(float(S[i].max()), 1e-12)
            for j in range(d):
                axes[r, j + 1].imshow(S[i, j], cmap="magma", vmin=0, vmax=vmax)
                if r == 0:
                    axes[r, j + 1].set_title(f"unit {j + 1}", fontsize=8)
            if r == 0:
                axes[r, 0].set_title("image", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_maps(exp: Experiment, vaes: Mapping[GridPoint, tuple[torch.nn.Module, dict]], x: torch.Tensor, loss: str,
              run: int = 0) -> dict[float, torch.Tensor]:
    """Per-unit saliency of the images ``x`` for run ``run`` of ``loss`` at every β (for :func:`saliency_figure`)."""
    out = {}
    for p, (model, _) in vaes.items():
        if p.loss == loss and p.run == run:
            out[p.beta] = unit_saliency(exp, model.encoder, x, model_seed(exp.seed, p.loss, p.beta, p.run))
    return dict(sorted(out.items()))


def partial_note(df: pd.DataFrame) -> str | None:
    """Why the verdict cannot hold when some grid cell has fewer than :data:`MIN_RUNS` runs, else ``None``.

    A note for the page (shown as Markdown), not a warning: a warning would print into the book as stderr.
    """
    counts = df.groupby(["loss_key", "beta"]).size()
    if not (counts < MIN_RUNS).any():
        return None
    few = "a single run" if int(counts.min()) == 1 else f"{int(counts.min())} runs"
    return (f"some (loss, β) cells have {few}: fewer than {MIN_RUNS} runs, so the rank test has no power and the "
            f"verdict is inconclusive; use n_runs ≥ {MIN_RUNS}")


# ------------------------------------------------------------------------------------------ the book's interface
#: What the book and ``make checkpoints`` know of this page: the VAE grid (``betas`` × ``losses`` × ``n_runs``).
SPEC = ClaimSpec(NOTEBOOK, DATASETS, MODELS, data=data_requirements, checkpoints=required_checkpoints,
                 checkpoint_params=("betas", "losses", "n_runs"), jobs=training_jobs,
                 job_params=("betas", "losses", "n_runs"), train=train_job, optional=candidate_checkpoints)
