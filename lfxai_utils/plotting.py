"""Figures shared by the notebooks: static matplotlib figures and interactive plotly ones.

In the built book (``LFXAI_BOOK=1``, set by :mod:`lfxai_utils.book`) plotly figures are emitted as HTML *without*
plotly.js: the book ships ``plotly.min.js`` once (``_config.yml``), so pages need no CDN and stay small. In JupyterLab
:func:`show_plotly` falls back to plotly's normal renderer.
"""
from __future__ import annotations

import os
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]  # Okabe-Ito


def in_book() -> bool:
    return os.environ.get("LFXAI_BOOK") == "1"


def show_plotly(fig) -> None:
    """Display a plotly figure so that it survives the static book (no CDN, plotly.js shipped once)."""
    if in_book():
        from IPython.display import HTML, display

        display(HTML(fig.to_html(include_plotlyjs=False, full_html=False, config={"responsive": True})))
    else:
        fig.show()


def mean_ci(df: pd.DataFrame, x: str, y: str, by: Sequence[str]) -> pd.DataFrame:
    """Mean of ``y`` and its 95 % normal confidence half-width (1.96·SEM) per ``by + [x]`` group."""
    g = df.groupby(list(by) + [x], sort=True)[y]
    out = g.agg(["mean", "std", "count"]).reset_index()
    out["ci"] = 1.96 * out["std"].fillna(0.0) / np.sqrt(out["count"].clip(lower=1))
    return out


def line_ci(df: pd.DataFrame, x: str, y: str, hue: str, *, style: str | None = None, ax=None,
            xlabel: str | None = None, ylabel: str | None = None, title: str | None = None,
            reference: float | None = None, reference_label: str = "reference"):
    """Matplotlib line plot of the mean of ``y`` against ``x`` per ``hue`` (and ``style``), with 95 % CI bands."""
    ax = ax or plt.subplots(figsize=(6, 4))[1]
    by = [hue] + ([style] if style else [])
    stats = mean_ci(df, x, y, by)
    hues = list(dict.fromkeys(df[hue]))
    styles = list(dict.fromkeys(df[style])) if style else [None]
    dashes = ["-", "--", ":", "-."]
    for (keys, grp) in stats.groupby(by, sort=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        color = PALETTE[hues.index(keys[0]) % len(PALETTE)]
        ls = dashes[styles.index(keys[1]) % len(dashes)] if style else "-"
        label = " / ".join(str(k) for k in keys)
        ax.plot(grp[x], grp["mean"], ls, color=color, marker="o", ms=3, label=label)
        ax.fill_between(grp[x], grp["mean"] - grp["ci"], grp["mean"] + grp["ci"], color=color, alpha=0.15)
    if reference is not None:
        ax.axhline(reference, color="grey", lw=1, ls=":", label=reference_label)
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel or y)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax


def plotly_line_ci(df: pd.DataFrame, x: str, y: str, hue: str, *, style: str | None = None,
                   xlabel: str | None = None, ylabel: str | None = None, title: str | None = None,
                   reference: float | None = None, reference_label: str = "reference"):
    """Interactive version of :func:`line_ci` (hover shows mean ± CI; click legend entries to toggle)."""
    import plotly.graph_objects as go

    by = [hue] + ([style] if style else [])
    stats = mean_ci(df, x, y, by)
    hues = list(dict.fromkeys(df[hue]))
    styles = list(dict.fromkeys(df[style])) if style else [None]
    dashes = ["solid", "dash", "dot", "dashdot"]
    fig = go.Figure()
    for keys, grp in stats.groupby(by, sort=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        color = PALETTE[hues.index(keys[0]) % len(PALETTE)]
        name = " / ".join(str(k) for k in keys)
        dash = dashes[styles.index(keys[1]) % len(dashes)] if style else "solid"
        xs = list(grp[x])
        upper, lower = list(grp["mean"] + grp["ci"]), list(grp["mean"] - grp["ci"])
        fig.add_trace(go.Scatter(x=xs + xs[::-1], y=upper + lower[::-1], fill="toself", fillcolor=color,
                                 opacity=0.15, line=dict(width=0), hoverinfo="skip", showlegend=False,
                                 legendgroup=name))
        fig.add_trace(go.Scatter(x=xs, y=list(grp["mean"]), name=name, legendgroup=name, mode="lines+markers",
                                 line=dict(color=color, dash=dash),
                                 customdata=np.stack([grp["ci"]], axis=-1),
                                 hovertemplate=f"{name}<br>{x}=%{{x}}<br>{y}=%{{y:.4g}} ± %{{customdata[0]:.2g}}"
                                               "<extra></extra>"))
    if reference is not None:
        fig.add_hline(y=reference, line_dash="dot", line_color="grey", annotation_text=reference_label)
    fig.update_layout(title=title, xaxis_title=xlabel or x, yaxis_title=ylabel or y, template="plotly_white",
                      height=420, margin=dict(l=60, r=20, t=50, b=50))
    return fig


def image_grid(images: np.ndarray, *, overlays: np.ndarray | None = None, row_labels: Sequence[str] | None = None,
               col_labels: Sequence[str] | None = None, cmap_overlay: str = "magma", size: float = 1.3,
               title: str | None = None):
    """Grid of images (R, C, H, W[, 3]) with optional saliency overlays (R, C, H, W); returns the figure."""
    images = np.asarray(images)
    R, C = images.shape[:2]
    fig, axes = plt.subplots(R, C, figsize=(size * C, size * R), squeeze=False)
    for r in range(R):
        for c in range(C):
            ax = axes[r, c]
            img = images[r, c]
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
            if overlays is not None:
                ov = overlays[r, c]
                ax.imshow(ov, cmap=cmap_overlay, alpha=0.6 if img.ndim == 2 else 0.5)
            ax.set_xticks([])
            ax.set_yticks([])
            if row_labels is not None and c == 0:
                ax.set_ylabel(row_labels[r], fontsize=8)
            if col_labels is not None and r == 0:
                ax.set_title(col_labels[c], fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def to_display_image(x: np.ndarray) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H, W) for one channel, (H, W, 3) for three."""
    x = np.asarray(x)
    if x.ndim == 3 and x.shape[0] == 1:
        return x[0]
    if x.ndim == 3 and x.shape[0] == 3:
        return np.transpose(x, (1, 2, 0))
    return x


def heatmap_matrix(mean: np.ndarray, std: np.ndarray | None, labels: Sequence[str], *, title: str = "",
                   zmin: float = -1.0, zmax: float = 1.0):
    """Interactive annotated heatmap of a correlation matrix (mean ± std in each cell)."""
    import plotly.graph_objects as go

    text = [[f"{mean[i, j]:.2f}" + (f" ± {std[i, j]:.2f}" if std is not None else "") for j in range(len(labels))]
            for i in range(len(labels))]
    fig = go.Figure(go.Heatmap(z=mean, x=list(labels), y=list(labels), zmin=zmin, zmax=zmax, colorscale="RdBu",
                               reversescale=True, text=text, texttemplate="%{text}",
                               hovertemplate="%{y} vs %{x}: %{text}<extra></extra>"))
    fig.update_layout(title=title, template="plotly_white", height=420, yaxis_autorange="reversed")
    return fig


def attribution_examples(x, attrs: dict, labels: dict | None = None, *, n: int = 6, title: str | None = None):
    """Inputs and their attributions side by side, for images ``(N, C, H, W)`` or series ``(N, T, 1)``.

    Images: one row per method, the input in grey with ``|attribution|`` (channel sum) overlaid.  Series: one panel
    per example, the signal coloured by each method's normalised ``|attribution|``.
    """
    import torch

    x = torch.as_tensor(x)[:n].detach().cpu()
    names = list(attrs)
    shown = {m: torch.as_tensor(attrs[m])[:n].detach().cpu().abs() for m in names}
    labels = labels or {}
    if x.dim() == 4:
        imgs = np.stack([[to_display_image(xi.numpy()) for xi in x] for _ in names])
        ov = np.stack([[a.sum(0).numpy() for a in shown[m]] for m in names])
        ov = ov / np.maximum(ov.reshape(len(names), len(x), -1).max(-1)[..., None, None], 1e-12)
        return image_grid(imgs, overlays=ov, row_labels=[labels.get(m, m) for m in names], title=title)
    fig, axes = plt.subplots(len(names), len(x), figsize=(2.2 * len(x), 1.6 * len(names)), squeeze=False,
                             sharex=True)
    t = np.arange(x.shape[1])
    for r, m in enumerate(names):
        for c in range(len(x)):
            ax = axes[r, c]
            s = shown[m][c].reshape(x.shape[1], -1).sum(-1).numpy()
            s = s / max(s.max(), 1e-12)
            ax.plot(t, x[c].reshape(x.shape[1], -1)[:, 0].numpy(), color="lightgrey", lw=1)
            ax.scatter(t, x[c].reshape(x.shape[1], -1)[:, 0].numpy(), c=s, cmap="magma_r", s=4, vmin=0, vmax=1)
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(labels.get(m, m), fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
