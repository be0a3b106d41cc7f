"""Extension — encoder vs full model (FACT's encoder-vs-full-model correlation, experiments.md §7b).

Label-free feature importance explains a *representation*.  How much does the answer depend on where the
representation is read?  For each model of the pretext page (Claim 2) we compare, image by image, the label-free
attribution of

* **supervised side** (as FACT): the classifier's encoder (its d-dimensional latent) vs the whole classifier, read
  at two heads: its **logits** (auxiliary function ⟨logits(x), logits(x̃)⟩) and its **softmax** probabilities
  (⟨softmax(x), softmax(x̃)⟩).  FACT's published numbers were computed with the softmax head (the authors'
  ``ClassifierMnist`` ends in a Softmax; experiments.md §7b "Correction"), so only the softmax rows are held against
  them;
* **unsupervised side** (what FACT did not do): an autoencoder's encoder (its latent) vs the whole autoencoder (its
  reconstruction as the representation), i.e. what the decoder adds.

For Integrated Gradients, GradientSHAP and Saliency (zero baseline), the maps are made absolute and divided by
their global std (cosmetic: Pearson correlation ignores a global scale); the per-image Pearson correlation is taken
over the non-black pixels (x ≠ 0, "trivially the same" elsewhere) and averaged over images: one number per run;
the bar chart shows the mean ± 1.96·SEM over runs (sample std, as FACT).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..features import attribute_dataset
from ..metrics import pixel_pearson
from ..plotting import PALETTE
from ..report import Verdict, mean_pm, verdict_word
from . import pretext as P
from ..labels import FEATURE_METHOD_LABELS, labels_for
from .common import Experiment, check_choice
from .spec import ClaimSpec

NOTEBOOK = "encoder_vs_decoder"
DATASETS = P.DATASETS
MODELS = (None,)
METHODS = ("integrated_gradients", "gradient_shap", "saliency")
#: (Integrated Gradients is abbreviated "IG" on this page's bar charts)
METHOD_LABELS = labels_for(METHODS + ("gradient_shap_as_published",), FEATURE_METHOD_LABELS, integrated_gradients="IG")
AE_TASKS = ("reconstruction", "denoising", "inpainting")
#: FACT notebook cell 13 (experiments.md §7b): per-run values, runs 0–4, MNIST classifiers, 10,000 test images.
#: Its GradientSHAP went through lfxai's mis-paired wrapper (experiments.md §0.1).
FACT_RUNS = {"integrated_gradients": (0.391, 0.474, 0.459, 0.425, 0.420),
             "saliency": (0.215, 0.135, 0.162, 0.163, 0.207),
             "gradient_shap": (0.350, 0.326, 0.328, 0.361, 0.323)}
FACT = {"integrated_gradients": (0.434, 0.029), "gradient_shap": (0.337, 0.015), "saliency": (0.176, 0.029)}
FACT_SOURCE = ("FACT (jwagenbach/FACT) extensions/encoder_decoder_correlations notebook cell 13, report Fig. 5: "
               "5 MNIST classifiers (60k training images), 10,000 test images, mean ± 1.96·SEM")
#: How far our mean may lie outside FACT's 95 % interval and still count as reproducing it: independently trained
#: classifiers (other seeds, splits, epochs) differ from run to run, so we allow 0.10, about three of FACT's run-to-run
#: standard deviations (IG 0.033, Saliency 0.033, GradientSHAP 0.017).
TOLERANCE = 0.10
#: The classifier's full model read at two heads (experiments.md §7b): FACT's numbers are for the softmax one.
HEADS = ("logits", "softmax")
FACT_HEAD = "softmax"
#: "Agree only moderately" (FACT's reading), applied to the autoencoders: the upper end of the 95 % interval of
#: the mean per-image correlation stays below this.
PARTIAL = 0.7
FACT_READING = ("FACT's reading for classifiers (presentation notebook): encoder and full-model importance "
                "'agree only moderately'; no published number for autoencoders (FACT compared classifiers only)")
FACT_READING_LOGITS = ("FACT's reading for classifiers (presentation notebook): encoder and full-model importance "
                       "'agree only moderately' — read from a softmax full model; no published number for the "
                       "logits head")


def validate(n_runs: int, n_explain: int | None, ae_tasks: Sequence[str] | str) -> list[str]:
    """Check the notebook parameters; returns ``ae_tasks`` as a list (a comma-separated string is accepted, as
    ``papermill -p ae_tasks denoising,inpainting`` passes one)."""
    if not isinstance(n_runs, (int, np.integer)) or n_runs < 1:
        raise ValueError(f"n_runs must be a positive integer (FACT: 5); got {n_runs!r}")
    if n_explain is not None and (not isinstance(n_explain, (int, np.integer)) or n_explain < 1):
        raise ValueError(f"n_explain must be None (the whole test set) or a positive integer; got {n_explain!r}")
    if isinstance(ae_tasks, str):
        ae_tasks = [t.strip() for t in ae_tasks.split(",") if t.strip()]
    ae_tasks = list(ae_tasks)
    for t in ae_tasks:
        check_choice("ae_tasks entry", t, AE_TASKS)
    if len(set(ae_tasks)) != len(ae_tasks):
        raise ValueError(f"ae_tasks has duplicates: {ae_tasks}")
    return ae_tasks


def data_requirements(dataset: str, model: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    return P.data_requirements(dataset, model)


def tasks(ae_tasks: Sequence[str] = ("denoising",)) -> list[str]:
    return ["classifier", *ae_tasks]


#: FACT's runs (the pretext page's 5 classifiers); ``n_runs=None`` means this when training.
N_RUNS = P.N_RUNS


def required_checkpoints(dataset: str, model: str | None = None, n_runs: int | None = N_RUNS,
                         ae_tasks: Sequence[str] = ("denoising",)) -> list[str]:
    """The pretext page's classifiers and (by default) denoising autoencoders, runs 0..n_runs-1."""
    return P.required_checkpoints(dataset, None, n_runs, tasks(ae_tasks))


def training_jobs(dataset: str, model: str | None = None, *, n_runs: int = 5,
                  ae_tasks: Sequence[str] = ("denoising",), **_: Any) -> list:
    """The pretext page's models (trained by its jobs)."""
    return P.training_jobs(dataset, None, n_runs=n_runs, tasks=tasks(ae_tasks))


# ------------------------------------------------------------------------------------------ metric
def normalise(attr: Tensor) -> Tensor:
    """``|attr| / std(|attr|)`` over the whole array (FACT; cosmetic for a correlation)."""
    a = torch.as_tensor(attr).abs().double()
    return a / a.std().clamp_min(1e-300)


def per_image_correlation(enc_attr: Tensor, full_attr: Tensor, x: Tensor) -> Tensor:
    """Per-image Pearson correlation of the normalised maps over the entries where ``x ≠ 0``: ``(N,)`` float64."""
    return pixel_pearson(normalise(enc_attr), normalise(full_attr), mask=torch.as_tensor(x) != 0)


def attribution(exp: Experiment, black_box: nn.Module, x: Tensor, baseline, method: str, *, run: int,
                pairing: str = "correct", batch_size: int = 128) -> Tensor:
    gen = torch.Generator().manual_seed(exp.seed + run)
    return attribute_dataset(black_box, x, method, baseline, batch_size=batch_size, device=exp.device,
                             progress=exp.progress, generator=gen, pairing=pairing, **P.method_kwargs(method))


def variants(show_as_published: bool = True) -> list[tuple[str, str, str]]:
    """(label key, captum method, pairing) of the compared attributions."""
    out = [(m, m, "correct") for m in METHODS]
    if show_as_published:
        out.append(("gradient_shap_as_published", "gradient_shap", "as_published"))
    return out


class SoftmaxOutput(nn.Module):
    """A classifier read at its softmax: ``forward(x) = softmax(model(x))`` (the authors' ``ClassifierMnist`` head,
    with which FACT's numbers were computed); ``.encoder`` and ``.lin_output`` are the classifier's own."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.encoder = model.encoder
        if isinstance(getattr(model, "lin_output", None), nn.Module):
            self.lin_output = nn.Sequential(model.lin_output, nn.Softmax(dim=1))

    def forward(self, x: Tensor) -> Tensor:
        return torch.softmax(self.model(x), dim=1)


def full_models(model: nn.Module, task: str) -> dict[str, nn.Module]:
    """The full model(s) a task's encoder is compared with: the classifier at each of :data:`HEADS`, an
    autoencoder's reconstruction."""
    if task == "classifier":
        return {"logits": model, "softmax": SoftmaxOutput(model)}
    return {"reconstruction": model}


def compare_heads(exp: Experiment, encoder: nn.Module, fulls: Mapping[str, nn.Module], x: Tensor, baseline, *,
                  run: int, batch_size: int = 128, show_as_published: bool = True) -> dict[str, dict[str, Tensor]]:
    """``{head: {variant: per-image r (N,)}}``: label-free attribution of ``encoder`` vs of each full model (the
    encoder's attributions are computed once and shared by every head)."""
    out: dict[str, dict[str, Tensor]] = {h: {} for h in fulls}
    for key, method, pairing in variants(show_as_published):
        enc = attribution(exp, encoder, x, baseline, method, run=run, pairing=pairing, batch_size=batch_size)
        for head, full_model in fulls.items():
            full = attribution(exp, full_model, x, baseline, method, run=run, pairing=pairing, batch_size=batch_size)
            out[head][key] = per_image_correlation(enc, full, x)
    return out


def compare_model(exp: Experiment, model: nn.Module, x: Tensor, baseline, *, run: int, batch_size: int = 128,
                  show_as_published: bool = True) -> dict[str, Tensor]:
    """``{variant: per-image r (N,)}``: label-free attribution of ``model.encoder`` vs of ``model`` itself."""
    return compare_heads(exp, model.encoder, {"full": model}, x, baseline, run=run, batch_size=batch_size,
                         show_as_published=show_as_published)["full"]


def side_of(task: str) -> str:
    return "supervised" if task == "classifier" else "unsupervised"


def model_label(task: str, head: str | None = None) -> str:
    """``classifier (logits)`` / ``classifier (softmax)`` / ``denoising AE``; ``classifier`` without a head."""
    if task == "classifier":
        return f"classifier ({head})" if head in HEADS else "classifier"
    return f"{task} AE"


def run_all(exp: Experiment, models: Mapping[tuple[int, str], tuple[nn.Module, dict]], n_runs: int, x: Tensor,
            baseline, *, ae_tasks: Sequence[str] = ("denoising",), batch_size: int = 128,
            show_as_published: bool = True, kappa_images: int = 256) -> pd.DataFrame:
    """One row per (run, model, head, method): mean per-image r, its image count, and the head's conditioning
    (median κ over the first ``kappa_images`` explained images, see :func:`decoder_condition`).  The classifier
    gives two rows per method, its logits and its softmax head (:func:`full_models`)."""
    rows = []
    jobs = [(r, t) for r in range(n_runs) for t in tasks(ae_tasks)]
    for r, t in tqdm(jobs, desc="models", disable=not exp.progress):
        model = models[(r, t)][0]
        fulls = full_models(model, t)
        res = compare_heads(exp, model.encoder, fulls, x, baseline, run=r, batch_size=batch_size,
                            show_as_published=show_as_published)
        z = _latents(model, x[:kappa_images])
        for head, per_variant in res.items():
            kappa = float(np.median(decoder_condition(_head(fulls[head]), z).numpy()))
            for key, corr in per_variant.items():
                ok = torch.isfinite(corr)
                rows.append({"side": side_of(t), "model": model_label(t, head), "head": head, "run": r,
                             "method": METHOD_LABELS[key],
                             "mean_r": float(corr[ok].mean()) if ok.any() else float("nan"),
                             "n_images": int(ok.sum()), "head_condition_median": kappa})
    return pd.DataFrame(rows)


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """Mean over runs and 1.96·SEM (sample std, ddof = 1, as FACT) per (side, model, method)."""
    g = df.groupby(["side", "model", "method"], sort=False)["mean_r"]
    out = g.agg(["mean", "std", "count"]).reset_index()
    out["ci95"] = 1.96 * out["std"].fillna(0.0) / np.sqrt(out["count"])
    return out


def fact_summary() -> pd.DataFrame:
    """FACT's numbers as rows of :func:`summarise` (recomputed from its per-run values)."""
    rows = []
    for m, vals in FACT_RUNS.items():
        v = np.asarray(vals)
        label = METHOD_LABELS[m] + (" (authors' pairing)" if m == "gradient_shap" else "")
        rows.append({"side": "supervised", "model": "FACT classifier (softmax)", "method": label, "mean": v.mean(),
                     "std": v.std(ddof=1), "count": len(v), "ci95": 1.96 * v.std(ddof=1) / np.sqrt(len(v))})
    return pd.DataFrame(rows)


def head_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The classifier's two heads side by side, with FACT's (softmax) numbers: one row per method, columns
    ``logits``, ``softmax``, ``FACT (softmax)`` (means over runs)."""
    sup = summary[summary.side == "supervised"]
    t = sup.pivot_table(index="method", columns="model", values="mean", sort=False)
    t = t.rename(columns={model_label("classifier", h): h for h in HEADS})
    f = fact_summary().set_index("method")["mean"]
    t["FACT (softmax)"] = [f.get(m, np.nan) for m in t.index]
    return t[[c for c in (*HEADS, "FACT (softmax)") if c in t.columns]]


# ------------------------------------------------------------------------------------------ the decoder's part
def _head(model: nn.Module) -> nn.Module:
    """What follows the encoder: the decoder of an autoencoder, the linear head of a classifier."""
    for name in ("decoder", "lin_output"):
        if isinstance(getattr(model, name, None), nn.Module):
            return getattr(model, name)
    raise ValueError(f"{type(model).__name__} has neither a .decoder nor a .lin_output head")


@torch.no_grad()
def _latents(model: nn.Module, x: Tensor, batch_size: int = 512) -> Tensor:
    enc = model.encoder
    dev = next(enc.parameters()).device
    return torch.cat([enc(x[s:s + batch_size].to(dev)).flatten(1).cpu() for s in range(0, len(x), batch_size)])


def decoder_condition(head: nn.Module, z: Tensor, chunk: int = 512) -> Tensor:
    """Condition number σ_max / σ_min of the head's Jacobian ∂head(z)/∂z at each latent ``z`` ``(N, d)``.

    κ = 1 for a (scaled) isometry.  A bias-free linear isometric head multiplies ⟨·,·⟩ by a constant, so the
    full model's label-free attributions would equal the encoder's up to scale (the paper's invariance property);
    the larger κ, the more the head re-weights latent directions.  The head must treat examples independently
    (eval mode): column j of every example's Jacobian is one forward-mode pass of the batch with tangent e_j.
    """
    import warnings

    dev = next(head.parameters()).device
    was = head.training
    head.eval()
    try:
        out = []
        for s in range(0, len(z), chunk):
            zb = z[s:s + chunk].to(dev)
            eye = torch.eye(zb.shape[1], dtype=zb.dtype, device=dev)
            with warnings.catch_warnings():   # torch.func's first call scripts a helper: torch's own deprecation
                warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated",
                                        category=FutureWarning)
                cols = [torch.func.jvp(head, (zb,), (eye[j].expand_as(zb),))[1].flatten(1)
                        for j in range(zb.shape[1])]
            J = torch.stack(cols, dim=-1).detach()           # (B, outputs, d)
            sv = torch.linalg.svdvals(J.double())
            out.append((sv[:, 0] / sv[:, -1].clamp_min(1e-300)).cpu())
        return torch.cat(out)
    finally:
        head.train(was)


# ------------------------------------------------------------------------------------------ verdicts and figures
def _mean_ci(row) -> str:
    """``mean ± 1.96·SEM`` of a :func:`summarise` row (:func:`~lfxai_utils.report.mean_pm`)."""
    return mean_pm(row["mean"], row["ci95"], row["count"])


def _over(n_runs: int, n_images: int) -> str:
    what = f"mean ± 1.96·SEM over {n_runs} runs" if n_runs > 1 else "1 run: no interval over runs"
    return f"{what}, {n_images:,} test images"


def _partial(exp: Experiment, summary: pd.DataFrame, side: str, quantity: str, anchor_source: str,
             n_images: int) -> list[Verdict]:
    """FACT's qualitative reading ("agree only moderately": mean + 1.96·SEM < :data:`PARTIAL`) on every row of
    ``side`` (corrected GradientSHAP pairing only)."""
    out = []
    for (model, method), row in summary[summary.side == side].set_index(["model", "method"]).iterrows():
        if method == METHOD_LABELS["gradient_shap_as_published"]:
            continue
        ours = f"{_mean_ci(row)} ({_over(int(row['count']), n_images)})"
        holds = bool(row["mean"] + row["ci95"] < PARTIAL)
        if int(row["count"]) < 2:   # the criterion needs an interval over runs
            ours += (f"; one run gives no interval over runs, so the criterion cannot be applied (at face value: "
                     f"{verdict_word(holds)})")
            holds = None
        out.append(Verdict("FACT ext. encoder vs full model", exp.dataset, model,
                           f"per-image Pearson, encoder vs {quantity}, {method}", ours, "agree only moderately",
                           anchor_source, f"partial agreement: mean + 1.96·SEM < {PARTIAL}",
                           verdict_word(holds)))
    return out


def verdicts(exp: Experiment, summary: pd.DataFrame, n_images: int) -> list[Verdict]:
    """Supervised side, softmax head: our classifier mean within FACT's 95 % interval widened by :data:`TOLERANCE`
    (GradientSHAP compared with the authors' pairing, as FACT computed it).  FACT's numbers are softmax numbers
    (experiments.md §7b), so the logits head is never held against them: its rows, like the autoencoders', test
    FACT's qualitative reading (agreement at most partial)."""
    out = []
    soft_label = model_label("classifier", FACT_HEAD)
    sup = summary[(summary.side == "supervised") & (summary.model == soft_label)].set_index("method")
    logits = summary[(summary.side == "supervised") & (summary.model == model_label("classifier", "logits"))]
    logits = logits.set_index("method")
    n_runs = int(sup["count"].max()) if len(sup) else 0
    for m in METHODS:
        key = "gradient_shap_as_published" if m == "gradient_shap" else m
        label = METHOD_LABELS[key]
        if label not in sup.index:
            continue
        row = sup.loc[label]
        f_mean, f_ci = FACT[m]
        ours = f"{_mean_ci(row)} ({_over(n_runs, n_images)})"
        if m == "gradient_shap" and METHOD_LABELS[m] in sup.index:
            ours += f"; with the corrected pairing {_mean_ci(sup.loc[METHOD_LABELS[m]])}"
        if label in logits.index:
            ours += f"; logits head (not comparable with FACT) {_mean_ci(logits.loc[label])}"
        holds = abs(row["mean"] - f_mean) <= f_ci + TOLERANCE
        criterion = (f"|ours − FACT| ≤ FACT's 1.96·SEM + {TOLERANCE} (run-to-run differences of independently "
                     "trained classifiers, about three of FACT's run-to-run standard deviations); both with a "
                     "softmax full model, the head FACT's numbers were computed with (experiments.md §7b)")
        if exp.dataset != "mnist":
            holds, criterion = None, criterion + "; FACT's numbers are MNIST numbers: no anchor for this dataset"
        out.append(Verdict("FACT ext. encoder vs full model", exp.dataset, soft_label,
                           f"per-image Pearson, encoder vs softmax, {label}", ours, f"{f_mean:.3f} ± {f_ci:.3f}",
                           FACT_SOURCE, criterion, verdict_word(None if holds is None else bool(holds))))
    out += _partial(exp, summary[summary.model != soft_label], "supervised", "logits", FACT_READING_LOGITS, n_images)
    out += _partial(exp, summary, "unsupervised", "reconstruction", FACT_READING, n_images)
    return out


def bar_table(summary: pd.DataFrame, with_fact: bool = True) -> pd.DataFrame:
    """Rows for the bar chart: one bar per (series, method)."""
    parts = [summary.assign(series=summary["model"])]
    if with_fact:
        f = fact_summary()
        parts.append(f.assign(series=f["model"]))
    out = pd.concat(parts, ignore_index=True)
    out["method_group"] = out["method"].str.replace(" (authors' pairing)", "", regex=False)
    out["pairing"] = np.where(out["method"].str.contains("authors' pairing", regex=False), "authors' pairing",
                              "corrected")
    return out


def _bar_positions(tab: pd.DataFrame):
    groups = list(dict.fromkeys(tab["method_group"]))
    series = list(dict.fromkeys(tab["series"] + " · " + tab["pairing"]))
    width = 0.8 / max(len(series), 1)
    return groups, series, width


def bar_figure(tab: pd.DataFrame, title: str = ""):
    """Matplotlib bar chart: mean ± 1.96·SEM per method (groups) and series (ours per model, FACT)."""
    groups, series, width = _bar_positions(tab)
    fig, ax = plt.subplots(figsize=(min(11, max(6, 0.45 * len(groups) * len(series))), 4))
    for k, s in enumerate(series):
        sub = tab[(tab["series"] + " · " + tab["pairing"]) == s].set_index("method_group")
        xs = [groups.index(g) + (k - (len(series) - 1) / 2) * width for g in sub.index]
        ax.bar(xs, sub["mean"], width, yerr=sub["ci95"], capsize=3, color=PALETTE[k % len(PALETTE)],
               hatch="//" if "authors'" in s else None, label=s.replace(" · corrected", ""), edgecolor="white")
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel("Pearson correlation (encoder vs full model)")
    ax.set_ylim(min(0, float((tab["mean"] - tab["ci95"]).min()) - 0.05), 1)
    ax.axhline(0, color="grey", lw=0.8)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def plotly_bars(tab: pd.DataFrame, title: str = ""):
    import plotly.graph_objects as go

    groups, series, _ = _bar_positions(tab)
    fig = go.Figure()
    for k, s in enumerate(series):
        sub = tab[(tab["series"] + " · " + tab["pairing"]) == s]
        fig.add_trace(go.Bar(x=list(sub["method_group"]), y=list(sub["mean"]), name=s.replace(" · corrected", ""),
                             marker_color=PALETTE[k % len(PALETTE)],
                             marker_pattern_shape="/" if "authors'" in s else "",
                             error_y=dict(type="data", array=list(sub["ci95"])),
                             customdata=np.stack([sub["ci95"], sub["count"]], axis=-1),
                             hovertemplate="%{x}: %{y:.3f} ± %{customdata[0]:.3f} (%{customdata[1]} runs)"
                                           "<extra>" + s + "</extra>"))
    fig.update_layout(barmode="group", title=title, yaxis_title="Pearson correlation (encoder vs full model)",
                      template="plotly_white", height=420, xaxis=dict(categoryorder="array", categoryarray=groups))
    return fig


def maps_figure(exp: Experiment, models: Mapping[tuple[int, str], tuple[nn.Module, dict]], x: Tensor, baseline,
                positions: Sequence[int], *, ae_tasks: Sequence[str] = ("denoising",), method: str = "integrated_gradients",
                batch_size: int = 128):
    """Run 0: for a few test images, the encoder map and the full-model map of each model (normalised ``|attr|``)."""
    from ..plotting import to_display_image

    ts = tasks(ae_tasks)
    xs = x[list(positions)]
    cols = 1 + 2 * len(ts)
    fig, axes = plt.subplots(len(positions), cols, figsize=(1.3 * cols, 1.35 * len(positions)), squeeze=False)
    maps = {}
    for t in ts:
        model = models[(0, t)][0]
        maps[(t, "encoder")] = attribution(exp, model.encoder, xs, baseline, method, run=0, batch_size=batch_size)
        maps[(t, "full")] = attribution(exp, model, xs, baseline, method, run=0, batch_size=batch_size)
    r_all = {t: per_image_correlation(maps[(t, "encoder")], maps[(t, "full")], xs) for t in ts}
    for i in range(len(positions)):
        img = to_display_image(xs[i].numpy())
        axes[i, 0].imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
        axes[i, 0].set_title("input" if i == 0 else "", fontsize=7)
        for k, t in enumerate(ts):
            for j, part in enumerate(("encoder", "full")):
                a = maps[(t, part)][i].abs().sum(0).numpy()
                ax = axes[i, 1 + 2 * k + j]
                ax.imshow(a / max(float(a.max()), 1e-12), cmap="magma")
                name = ("full " + ("classifier (logits)" if t == "classifier" else "AE")) if part == "full" else "encoder"
                ax.set_title((f"{model_label(t)}\n{name}" if i == 0 else "") +
                             (f"\nr = {float(r_all[t][i]):.2f}" if part == "full" else ""), fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{METHOD_LABELS[method]}: encoder vs full-model label-free importance (run 0)", fontsize=9)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------ the book's interface
#: What the book and ``make checkpoints`` know of this page: the pretext page's classifiers and ``ae_tasks``
#: autoencoders, runs 0..n_runs-1, trained by the pretext page's jobs (so no ``train`` of its own).
SPEC = ClaimSpec(NOTEBOOK, DATASETS, MODELS, data=data_requirements, checkpoints=required_checkpoints,
                 checkpoint_params=("n_runs", "ae_tasks"), jobs=training_jobs, job_params=("n_runs", "ae_tasks"))
