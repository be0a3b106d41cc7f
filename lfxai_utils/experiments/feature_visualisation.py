"""Extension of Claim 3 — feature visualisation of the VAEs' latent units (FACT "Lucid", experiments.md §7a).

For the β-VAEs of Claim 3 (β ∈ {1, 5, 10}, run 0), find by activation maximisation an image that drives each latent
mean unit μ_j as high as possible (:func:`lfxai_utils.visualisation.maximise_units`: spectral parameterisation,
sigmoid, Adam lr 0.05, 1,000 steps), with the encoder's ReLUs replaced by LeakyReLU(0.1) at visualisation time, as
FACT did. FACT made no quantitative claim about these pictures; we report how strongly each picture drives its unit
compared with the test images, and how similar the pictures of different units are.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ..report import Verdict
from ..visualisation import PARAMETERISATIONS, VisualisationResult, leaky_encoder, maximise_units
from . import disentanglement as D
from .common import Experiment, RunSelection, check_choice, json_data_info
from .spec import ClaimSpec

NOTEBOOK = "claim3_feature_visualisation"
DATASETS = ("mnist", "cifar10", "cifar100")
MODELS = (None,)
BETAS = D.BETAS
LOSS = "beta"          # FACT visualised the β-VAEs only
RUN = 0                # ... run 1 of theirs, our run 0
N_STEPS = 1000
LR = 0.05
ANCHOR = ("FACT README: a qualitative extension of Claim 3 (report figure: grid of β rows × unit columns); "
          "no number is published")
ANCHOR_SOURCE = "FACT experiments/lucid.py and README (experiments.md §7a)"


def data_requirements(dataset: str, model: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    check_choice("dataset", dataset, DATASETS)
    return D.data_requirements(dataset, model)


def points(betas: Iterable[float] = BETAS, run: int = RUN) -> list[D.GridPoint]:
    """The visualised VAEs: β-VAE, run ``run`` (0 unless it is being retrained: :func:`select_run`), at each β (the
    Claim 3 checkpoints)."""
    return D.grid(betas, [LOSS], [run])


def select_run(exp: Experiment, splits, betas: Iterable[float] = BETAS) -> RunSelection:
    """The run whose β-VAEs are drawn: run 0 when its β-VAEs are trained as ``make checkpoints`` trains them now;
    otherwise the lowest run that is (or, when none is, whose β-VAEs were trained alike) — never β-VAEs of one
    picture trained differently (:meth:`~lfxai_utils.experiments.common.Experiment.select_runs`)."""
    return exp.select_runs(1, D.N_RUNS, D.training_jobs(exp.dataset, betas=betas, losses=[LOSS], n_runs=D.N_RUNS),
                           data_info=json_data_info(splits))


def required_checkpoints(dataset: str, model: str | None = None, *, betas: Iterable[float] = BETAS) -> list[str]:
    check_choice("dataset", dataset, DATASETS)
    return [D.checkpoint(dataset, p.loss, p.beta, p.run) for p in points(betas)]


def candidate_checkpoints(dataset: str, model: str | None = None, *, betas: Iterable[float] = BETAS) -> list[str]:
    """The β-VAEs of every run :func:`select_run` may pick."""
    check_choice("dataset", dataset, DATASETS)
    return [D.checkpoint(dataset, p.loss, p.beta, p.run) for p in D.grid(betas, [LOSS], D.N_RUNS)]


def training_jobs(dataset: str, model: str | None = None, *, betas: Iterable[float] = BETAS, **_: Any) -> list:
    """The visualised VAEs are Claim 3's (β-VAE, run 0): the same jobs."""
    return [j for j in D.training_jobs(dataset, model, betas=betas, losses=[LOSS], n_runs=1)]


def validate(n_steps: int, lr: float, parameterisation: str, units: Sequence[int] | None, latent_dim: int) -> list[int]:
    """Check the parameters; returns the units to draw (all ``latent_dim`` when ``units`` is None)."""
    check_choice("parameterisation", parameterisation, PARAMETERISATIONS)
    if int(n_steps) != n_steps or n_steps < 0 or not lr > 0:
        raise ValueError(f"need an integer n_steps >= 0 and lr > 0 (FACT: 1000 and 0.05); got {n_steps}, {lr}")
    if units is None:
        return list(range(latent_dim))
    units = [int(u) for u in D._as_list(units)]
    bad = [u for u in units if not 0 <= u < latent_dim]
    if bad or not units:
        raise ValueError(f"units must be a non-empty list of indices in 0..{latent_dim - 1} (this VAE has d = "
                         f"{latent_dim} units); got {units}")
    return units


def visualise(exp: Experiment, vaes: Mapping[D.GridPoint, tuple[torch.nn.Module, dict]], units: Sequence[int], *,
              n_steps: int = N_STEPS, lr: float = LR, parameterisation: str = "fft") -> dict[float, VisualisationResult]:
    """Maximise every unit of every VAE (a LeakyReLU copy of its encoder; the same initial images for every β)."""
    from tqdm.auto import tqdm

    out = {}
    for p, (model, _) in tqdm(vaes.items(), desc="feature visualisation", disable=not exp.progress):
        enc = leaky_encoder(model.encoder).to(exp.device)
        out[p.beta] = maximise_units(enc, units, enc.img_size, n_steps=n_steps, lr=lr,
                                     parameterisation=parameterisation, seed=exp.seed, device=exp.device,
                                     desc=f"β={p.beta:g}")
    return out


@torch.no_grad()
def _encode(encoder, x: torch.Tensor, device, batch_size: int = 1000) -> torch.Tensor:
    encoder = encoder.to(device).eval()
    return torch.cat([encoder(x[i:i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)])


def activation_table(exp: Experiment, vaes: Mapping[D.GridPoint, tuple[torch.nn.Module, dict]],
                     results: Mapping[float, VisualisationResult], test_x: torch.Tensor) -> pd.DataFrame:
    """Per (β, unit): μ_j of the optimised image (LeakyReLU copy it was optimised on, and the trained ReLU encoder)
    beside μ_j over the test images (max, 99th percentile, mean, std), and the ratio to the test-set maximum."""
    rows = []
    for p, (model, _) in vaes.items():
        res = results[p.beta]
        mu_test = _encode(model.encoder, test_x, exp.device)
        mu_vis = _encode(model.encoder, res.images, exp.device)
        for k, j in enumerate(res.units):
            t = mu_test[:, j].double()
            rows.append({"beta": p.beta, "run": p.run, "unit": j + 1, "n_test": len(test_x),
                         "mu_vis_leaky": float(res.final[k]),
                         "mu_vis": float(mu_vis[k, j]), "test_max": float(t.max()),
                         "test_q99": float(torch.quantile(t, 0.99)), "test_mean": float(t.mean()),
                         "test_std": float(t.std()) if len(t) > 1 else float("nan"),
                         "start_leaky": float(res.history[0, k])})
    df = pd.DataFrame(rows)
    df["ratio_to_test_max"] = df["mu_vis"] / df["test_max"].where(df["test_max"] > 0)
    df["z_vs_test"] = (df["mu_vis"] - df["test_mean"]) / df["test_std"]
    df["in_use"] = df["test_std"] ** 2 > D.ACTIVE_VARIANCE     # else the unit collapsed onto the prior
    return df


def unit_similarity(results: Mapping[float, VisualisationResult]) -> pd.DataFrame:
    """Per β: mean Pearson correlation between the (channel-flattened) pictures of different units
    (NaN with fewer than two units)."""
    rows = []
    for beta, res in results.items():
        x = res.images.flatten(1).double().numpy()
        k = len(x)
        if k < 2:
            r = float("nan")
        else:
            with np.errstate(invalid="ignore", divide="ignore"):
                c = np.corrcoef(x)
            r = float(np.nanmean(c[~np.eye(k, dtype=bool)]))
        rows.append({"beta": beta, "units": k, "mean_pairwise_pearson": r})
    return pd.DataFrame(rows)


def grid_figure(results: Mapping[float, VisualisationResult], *, title: str | None = None, size: float = 1.3):
    """FACT's ``lucid.pdf``: rows β, columns units titled "k. unit" (grayscale for one channel, RGB for three)."""
    import matplotlib.pyplot as plt

    from ..plotting import to_display_image

    betas = list(results)
    units = results[betas[0]].units
    fig, axes = plt.subplots(len(betas), len(units), figsize=(size * len(units), size * len(betas) + 0.4),
                             squeeze=False)
    for r, b in enumerate(betas):
        for c, j in enumerate(units):
            ax = axes[r, c]
            img = to_display_image(results[b].images[c].numpy())
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"{j + 1}. unit", fontsize=8)
            if c == 0:
                ax.set_ylabel(f"β = {b:g}", fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def history_long(results: Mapping[float, VisualisationResult]) -> pd.DataFrame:
    """Long table of the objective along the optimisation: β, unit, step, μ_j (LeakyReLU encoder)."""
    frames = []
    for b, res in results.items():
        h = res.history.numpy()
        steps = np.arange(len(h))
        for k, j in enumerate(res.units):
            frames.append(pd.DataFrame({"beta": b, "unit": j + 1, "step": steps, "activation": h[:, k]}))
    return pd.concat(frames, ignore_index=True)


def history_figure(results: Mapping[float, VisualisationResult], *, title: str | None = None):
    """μ_j of each picture along the optimisation: one panel per β, one line per unit."""
    import matplotlib.pyplot as plt

    from ..plotting import PALETTE

    fig, axes = plt.subplots(1, len(results), figsize=(3.6 * len(results), 3.0), squeeze=False, sharey=True)
    n_units = len(next(iter(results.values())).units)
    colors = PALETTE if n_units <= len(PALETTE) else [plt.cm.tab20(i % 20) for i in range(n_units)]
    for ax, (b, res) in zip(axes[0], results.items()):
        h = res.history.numpy()
        for k, j in enumerate(res.units):
            ax.plot(np.arange(len(h)), h[:, k], color=colors[k % len(colors)], lw=1.2, label=f"unit {j + 1}")
        ax.set_title(f"β = {b:g}", fontsize=9)
        ax.set_xlabel("Adam step")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("μ_j of the picture\n(LeakyReLU encoder)")
    if n_units <= 8:
        axes[0, -1].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def history_plotly(results: Mapping[float, VisualisationResult], *, title: str | None = None):
    """Interactive: μ_j of the picture along the optimisation, one line per (β, unit)."""
    import plotly.graph_objects as go

    from ..plotting import PALETTE

    fig = go.Figure()
    dashes = ["solid", "dash", "dot", "dashdot", "longdash"]
    for bi, (b, res) in enumerate(results.items()):
        h = res.history.numpy()
        step = max(1, len(h) // 400)         # at most ~400 points per line
        xs = np.arange(0, len(h), step)
        for k, j in enumerate(res.units):
            fig.add_trace(go.Scatter(x=xs, y=h[xs, k], mode="lines", name=f"β={b:g}, unit {j + 1}",
                                     legendgroup=f"{b:g}", line=dict(color=PALETTE[k % len(PALETTE)],
                                                                    dash=dashes[bi % len(dashes)])))
    fig.update_layout(title=title, xaxis_title="Adam step", yaxis_title="μ_j of the picture (LeakyReLU encoder)",
                      template="plotly_white", height=420, margin=dict(l=60, r=20, t=50, b=50))
    return fig


def verdicts(exp: Experiment, table: pd.DataFrame, similarity: pd.DataFrame) -> list[Verdict]:
    """One record per dataset: what the pictures show, marked inconclusive (no claim to test)."""
    d = D.VAE_SETTINGS[exp.dataset].latent_dim
    used = table[table["in_use"]]
    ratio = used["ratio_to_test_max"].dropna()
    sim = ", ".join(f"β={r.beta:g}: {r.mean_pairwise_pearson:.2f}" for r in similarity.itertuples()
                    if np.isfinite(r.mean_pairwise_pearson))
    n_above = int((used["mu_vis"] > used["test_max"]).sum())
    collapsed = "; ".join(f"β={b:g}: {int((~g['in_use']).sum())}/{len(g)}" for b, g in table.groupby("beta"))
    n_test = int(table["n_test"].iloc[0])
    ours = (f"units in use (test-set Var μ_j > {D.ACTIVE_VARIANCE:g}): μ_j of the optimised picture (trained ReLU "
            f"encoder) ÷ the largest μ_j over {n_test:,} test images: "
            + (f"median {ratio.median():.2f} (range {ratio.min():.2f}–{ratio.max():.2f})" if len(ratio) else "n/a")
            + f"; {n_above}/{len(used)} such pictures exceed every test image; collapsed units {collapsed}"
            + (f"; mean Pearson correlation between the pictures of different units {sim}" if sim else ""))
    run = int(table["run"].iloc[0]) if "run" in table else RUN
    return [Verdict("3 (extension) feature visualisation", exp.dataset, f"β-VAE run {run} (d={d})",
                    "activation reached by the unit's visualisation vs test images", ours, ANCHOR, ANCHOR_SOURCE,
                    "none: FACT states no testable claim about the pictures (qualitative extension), so the verdict "
                    "is inconclusive by construction", "inconclusive")]


# ------------------------------------------------------------------------------------------ the book's interface
#: What the book and ``make checkpoints`` know of this page: Claim 3's β-VAEs (run 0) at ``betas``, trained by
#: Claim 3's jobs (so no ``train`` of its own).
SPEC = ClaimSpec(NOTEBOOK, DATASETS, MODELS, data=data_requirements, checkpoints=required_checkpoints,
                 checkpoint_params=("betas",), jobs=training_jobs, job_params=("betas",),
                 optional=candidate_checkpoints)
