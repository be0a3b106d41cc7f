"""Evaluation metrics of the paper's experiments, vectorised (no Python loops over examples or pixels).

- masks and representation shift (experiments.md §2), similarity rates (§3),
- Pearson / Spearman matrices between tasks (§5), saliency metrics for per-unit maps (§6),
- per-image Pearson between two attribution maps over selected pixels (§7b).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ._utils import resolve_device

__all__ = [
    "feature_scores", "topk_mask", "apply_mask", "representation_shift",
    "similarity_rates", "label_prior", "rowwise_spearman", "correlation_matrices",
    "pearson_saliency", "spearman_saliency", "cosine_saliency", "entropy_saliency", "active_units",
    "saliency_metrics", "pixel_pearson",
]

ArrayLike = Union[np.ndarray, Tensor]
Baseline = Union[Tensor, float, Callable[[Tensor], Tensor], None]


def _np(a: ArrayLike) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, Tensor) else np.asarray(a)


# ----------------------------------------------------------------------------------------------
# Experiment 1: masks and representation shift
def feature_scores(attr: Tensor) -> Tensor:
    """Per-feature scores ``sum_channels |attr|``: images ``(N, C, H, W) -> (N, H*W)``,
    series ``(N, T, F) -> (N, T)``, vectors ``(N, D)`` -> ``|attr|``."""
    attr = torch.as_tensor(attr).abs()
    if attr.dim() == 4:
        return attr.sum(1).flatten(1)
    if attr.dim() == 3:
        return attr.sum(-1)
    if attr.dim() == 2:
        return attr
    raise ValueError(f"expected (N, C, H, W), (N, T, F) or (N, D) attributions, got shape {tuple(attr.shape)}")


def topk_mask(scores: Tensor, k: int) -> Tensor:
    """Boolean ``(N, D)`` mask with exactly ``k`` True per row, at the ``k`` largest scores (ties arbitrary)."""
    n, d = scores.shape
    if not 0 <= k <= d:
        raise ValueError(f"k must be in [0, {d}], got {k}")
    mask = torch.zeros(n, d, dtype=torch.bool, device=scores.device)
    return mask.scatter_(1, scores.topk(k, dim=1).indices, True)


def _feature_mask(mask: Tensor, x: Tensor) -> Tensor:
    """``(N, D)`` feature mask -> broadcastable to ``x`` (over channels / the feature dim)."""
    if x.dim() == 4:
        return mask.reshape(len(x), 1, *x.shape[2:])
    if x.dim() == 3:
        return mask.reshape(len(x), x.shape[1], 1)
    return mask.reshape(x.shape)


def _resolve_baseline(baseline: Baseline, x: Tensor) -> Tensor:
    if baseline is None:
        return torch.zeros((), dtype=x.dtype, device=x.device)
    if callable(baseline) and not isinstance(baseline, Tensor):
        return baseline(x)
    return torch.as_tensor(baseline, dtype=x.dtype).to(x.device)


def apply_mask(x: Tensor, mask: Tensor, baseline: Baseline = None) -> Tensor:
    """``mask * baseline + (1 - mask) * x``; ``mask`` ``(N, D)`` marks the removed features and is broadcast
    over channels (images) / the feature dim (series). ``baseline``: tensor broadcastable to ``x``,
    ``None`` (zeros) or a callable applied to ``x`` (per-input baseline)."""
    return torch.where(_feature_mask(mask.bool(), x), _resolve_baseline(baseline, x), x)


def _k(fraction: float, d: int) -> int:
    return int(fraction * d + 1e-9)  # int(fraction * D), robust to float fuzz (0.29 * 100 = 28.999...)


def representation_shift(
    encoder: nn.Module,
    x: Tensor,
    scores: Tensor,
    fractions: Sequence[float] = (0.05, 0.1, 0.2, 0.5, 0.8, 1.0),
    baseline: Baseline = None,
    *,
    include_zero: bool = True,
    batch_size: int = 256,
    device="auto",
    progress: bool = True,
) -> pd.DataFrame:
    """Representation shift ``||f(x) - f(x_masked)||^2`` after masking the top-k features of each example.

    The encoder is used in its current mode, moved to ``device`` and back.

    Parameters
    ----------
    x
        inputs ``(N, ...)``.
    scores
        ``(N, D)`` feature scores (attributions of the shape of ``x`` are converted with :func:`feature_scores`).
    baseline
        see :func:`apply_mask` (a tensor with one row per example is sliced per batch).
    include_zero
        add the ``fraction = 0`` rows with shift exactly 0 (as ORIG's plots do).

    Returns
    -------
    DataFrame
        with columns ``fraction, k, example, shift`` (one row per fraction and example).
    """
    scores = torch.as_tensor(scores)
    if scores.shape == x.shape and x.dim() > 2:
        scores = feature_scores(scores)
    n, d = scores.shape
    if n != len(x):
        raise ValueError(f"scores have {n} rows but x has {len(x)} examples")
    fracs = [float(f) for f in fractions if f > 0]
    ks = [_k(f, d) for f in fracs]
    dev = resolve_device(device)
    per_batch = []
    tensors = list(encoder.parameters()) + list(encoder.buffers())
    home = tensors[0].device if tensors else None
    encoder.to(dev)
    try:
        with torch.no_grad():
            for s in tqdm(range(0, n, batch_size), desc="representation shift", disable=not progress):
                xb, sb = x[s:s + batch_size].to(dev), scores[s:s + batch_size].to(dev)
                b = baseline
                if isinstance(b, Tensor) and n > 1 and b.dim() == x.dim() and b.shape[0] == n:
                    b = b[s:s + batch_size]
                b = _resolve_baseline(b, xb)
                masked = torch.cat([apply_mask(xb, topk_mask(sb, k), b) for k in ks])
                z = encoder(xb).flatten(1)
                zm = encoder(masked).flatten(1).reshape(len(ks), len(xb), -1)
                per_batch.append(((zm - z) ** 2).sum(-1).cpu())  # (F, B)
    finally:
        if home is not None:
            encoder.to(home)
    shift = torch.cat(per_batch, dim=1).double().numpy()  # (F, N)
    if include_zero:
        fracs, ks, shift = [0.0] + fracs, [0] + ks, np.vstack([np.zeros((1, n)), shift])
    return pd.DataFrame({
        "fraction": np.repeat(fracs, n),
        "k": np.repeat(ks, n),
        "example": np.tile(np.arange(n), len(fracs)),
        "shift": shift.reshape(-1),
    })


# ----------------------------------------------------------------------------------------------
# Experiment 2: similarity rates
def similarity_rates(
    importance: ArrayLike,
    train_labels: ArrayLike,
    test_labels: ArrayLike,
    fractions: Sequence[float] = (0.05, 0.1, 0.2, 0.5, 0.7, 1.0),
) -> pd.DataFrame:
    """Fraction of the top-k ("most") / bottom-k ("least") training examples of each test example that share
    its label, averaged over test examples, for ``k = int(fraction * n_train)`` (ORIG ``similarity_rate``).

    One argsort of the ``(n_test, n_train)`` importance plus a cumulative sum of label matches.
    Rows with ``k = 0`` get NaN. Returns columns ``fraction, k, type, similarity_rate``.
    """
    imp = torch.as_tensor(_np(importance))
    ytr, yte = torch.as_tensor(_np(train_labels)), torch.as_tensor(_np(test_labels))
    n_test, n_train = imp.shape
    if len(ytr) != n_train or len(yte) != n_test:
        raise ValueError(f"importance is {tuple(imp.shape)} but got {len(yte)} test and {len(ytr)} train labels")
    order = torch.argsort(imp, dim=1, descending=True, stable=True)
    matches = ytr[order] == yte[:, None]
    cum = torch.cat([torch.zeros(n_test, 1, dtype=torch.long), matches.cumsum(1)], dim=1)  # cum[:, k] = #matches in top k
    rows = []
    for f in fractions:
        k = _k(float(f), n_train)
        most = cum[:, k].double().mean().item() / k if k else float("nan")
        least = (cum[:, n_train] - cum[:, n_train - k]).double().mean().item() / k if k else float("nan")
        rows += [(float(f), k, "most", most), (float(f), k, "least", least)]
    return pd.DataFrame(rows, columns=["fraction", "k", "type", "similarity_rate"])


def label_prior(train_labels: ArrayLike, test_labels: ArrayLike) -> float:
    """Chance level of :func:`similarity_rates`: mean over test examples of the share of train labels equal
    to the test label (the rate at ``k = n_train``)."""
    ytr, yte = _np(train_labels).ravel(), _np(test_labels).ravel()
    _, inv = np.unique(np.concatenate([ytr, yte]), return_inverse=True)
    m = inv.max() + 1
    p_tr = np.bincount(inv[: len(ytr)], minlength=m) / len(ytr)
    p_te = np.bincount(inv[len(ytr):], minlength=m) / len(yte)
    return float(p_tr @ p_te)


def rowwise_spearman(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """Spearman correlation (average-rank ties) between row ``i`` of ``a`` and row ``i`` of ``b``, for every
    row of two ``(n, m)`` score matrices, e.g. how alike two example-importance estimates rank the training set
    for each test example. A row that is constant in either matrix gives NaN."""
    x, y = _np(a).astype(np.float64), _np(b).astype(np.float64)
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"expected two (n, m) matrices of one shape, got {x.shape} and {y.shape}")
    x, y = _rank_rows(x.copy()), _rank_rows(y.copy())
    x -= x.mean(1, keepdims=True)
    y -= y.mean(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (x * y).sum(1) / np.sqrt((x * x).sum(1) * (y * y).sum(1))


# ----------------------------------------------------------------------------------------------
# Experiment 4: correlation between tasks
def _pearson_rows(x: np.ndarray) -> np.ndarray:
    """Pearson matrix between the rows of a float64 array; centres and scales ``x`` **in place**."""
    x -= x.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        x /= np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]  # no full-size temporary
        c = x @ x.T
    return np.clip(c, -1.0, 1.0)


def _rank_rows(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    for i in range(len(x)):  # one row (one task / unit) at a time keeps rankdata's temporaries small
        x[i] = rankdata(x[i])
    return x


def correlation_matrices(arrays: Sequence[ArrayLike]) -> tuple[np.ndarray, np.ndarray]:
    """Pearson and Spearman (average-rank ties) ``T x T`` matrices between ``T`` flattened arrays.

    Memory: one ``T x L`` float64 buffer (e.g. 4 x 10M -> 320 MB), reused for the ranks; as
    ``np.corrcoef`` / ``scipy.stats.spearmanr(axis=1)`` up to rounding.
    """
    flat = [_np(a).reshape(-1) for a in arrays]
    if len({len(a) for a in flat}) != 1:
        raise ValueError(f"arrays must have the same number of elements, got {[len(a) for a in flat]}")
    buf = np.empty((len(flat), len(flat[0])), dtype=np.float64)
    for i, a in enumerate(flat):
        buf[i] = a
    pearson = _pearson_rows(buf)
    for i, a in enumerate(flat):
        buf[i] = a
    spearman = _pearson_rows(_rank_rows(buf))
    return pearson, spearman


# ----------------------------------------------------------------------------------------------
# Experiment 5: saliency metrics on per-unit maps S of shape (N, d, ...)
# S can be large (dSprites: 73 728 x 6 x 64 x 64); the metrics stream over chunks of images in float64
# instead of copying S. Spearman needs whole rows of ranks (d x N*rest float64).
_CHUNK_ELEMENTS = 1 << 23


def _units(S: ArrayLike) -> np.ndarray:
    S = _np(S)
    if S.ndim < 3:
        raise ValueError(f"expected per-unit saliency of shape (N, d, ...), got {S.shape}")
    return S.reshape(S.shape[0], S.shape[1], -1)


def _image_chunks(S: np.ndarray):
    """float64 blocks ``(c, d, P)`` of consecutive images."""
    step = max(1, _CHUNK_ELEMENTS // (S.shape[1] * S.shape[2]))
    for i in range(0, len(S), step):
        yield S[i:i + step].astype(np.float64)


def _off_diagonal_mean(c: np.ndarray) -> float:
    return float(c[~np.eye(len(c), dtype=bool)].mean())


def pearson_saliency(S: ArrayLike) -> float:
    """Mean off-diagonal Pearson correlation between units, each unit's maps pooled over all examples
    (``d x (N * rest)``; ORIG ``pearson_saliency``). Two passes over image chunks (means, then centred
    cross-products), as ``np.corrcoef`` up to rounding."""
    S = _units(S)
    n = S.shape[0] * S.shape[2]
    mean = sum(block.sum(axis=(0, 2)) for block in _image_chunks(S)) / n
    cov = np.zeros((S.shape[1],) * 2)
    for block in _image_chunks(S):
        c = block - mean[None, :, None]
        cov += np.tensordot(c, c, axes=([0, 2], [0, 2]))
    sd = np.sqrt(np.diag(cov))
    with np.errstate(invalid="ignore", divide="ignore"):
        return _off_diagonal_mean(np.clip(cov / np.outer(sd, sd), -1.0, 1.0))


def spearman_saliency(S: ArrayLike) -> float:
    """As :func:`pearson_saliency` with Spearman rank correlation (average ranks for ties;
    ORIG ``spearmanr(axis=1)``)."""
    S = _units(S)
    x = np.moveaxis(S, 1, 0).reshape(S.shape[1], -1).astype(np.float64)
    return _off_diagonal_mean(_pearson_rows(_rank_rows(x)))


def cosine_saliency(S: ArrayLike) -> float:
    """Mean over unit pairs of the per-image cosine between unit maps, averaged over images.
    Images where one of the two maps is identically zero are skipped for that pair (ORIG gives NaN)."""
    S = _units(S)
    total = np.zeros((S.shape[1],) * 2)
    count = np.zeros_like(total)
    for block in _image_chunks(S):
        norms = np.linalg.norm(block, axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            cos = (block @ block.transpose(0, 2, 1)) / (norms[:, :, None] * norms[:, None, :])
        ok = np.isfinite(cos)
        total += np.where(ok, cos, 0.0).sum(0)
        count += ok.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _off_diagonal_mean(total / count)


def _pixel_shares(S: ArrayLike):
    """Per chunk, ``(pixels, d)`` shares of each pixel's saliency over units; zero-total pixels dropped."""
    S = _units(S)
    for block in _image_chunks(S):
        rows = block.transpose(0, 2, 1).reshape(-1, S.shape[1])
        tot = rows.sum(1)
        yield rows[tot > 0] / tot[tot > 0, None]


def entropy_saliency(S: ArrayLike) -> float:
    """Mean entropy (nats) of each pixel's saliency distribution over units (zero-total pixels dropped;
    ORIG ``entropy_saliency`` with ``scipy.stats.entropy``)."""
    h_sum, n = 0.0, 0
    for p in _pixel_shares(S):
        with np.errstate(divide="ignore", invalid="ignore"):
            h_sum += -np.where(p > 0, p * np.log(p), 0.0).sum()
        n += len(p)
    return h_sum / n if n else float("nan")


def active_units(S: ArrayLike) -> float:
    """Mean number per pixel of units whose share of the pixel's saliency exceeds ``1/d``
    (ORIG ``count_activated_neurons``; zero-total pixels dropped)."""
    c_sum, n = 0, 0
    for p in _pixel_shares(S):
        c_sum += int((p > 1.0 / p.shape[1]).sum())
        n += len(p)
    return c_sum / n if n else float("nan")


def saliency_metrics(S: ArrayLike, *, spearman: bool = True) -> dict[str, float]:
    """The saliency metrics of experiments.md §6 as a dict (``spearman=False`` skips the costly ranks)."""
    out = {"pearson": pearson_saliency(S)}
    if spearman:
        out["spearman"] = spearman_saliency(S)
    out.update(cosine=cosine_saliency(S), entropy=entropy_saliency(S), active_units=active_units(S))
    return out


# ----------------------------------------------------------------------------------------------
# Experiment 6b: encoder vs full-model maps
def pixel_pearson(a: Tensor, b: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """Per-example Pearson correlation between two maps over the selected entries.

    ``a``, ``b``: ``(N, ...)``; ``mask``: bool ``(N, ...)`` of the same number of entries per example
    (e.g. ``x != 0`` to drop black pixels), ``None`` = all. Returns float64 ``(N,)``; NaN where fewer than
    two entries are selected or a map is constant on them.
    """
    a = torch.as_tensor(a).flatten(1).double()
    b = torch.as_tensor(b).flatten(1).double()
    w = torch.ones_like(a) if mask is None else torch.as_tensor(mask).flatten(1).to(a)
    n = w.sum(1, keepdim=True)
    da = (a - (a * w).sum(1, keepdim=True) / n) * w
    db = (b - (b * w).sum(1, keepdim=True) / n) * w
    r = (da * db).sum(1) / ((da**2).sum(1) * (db**2).sum(1)).sqrt()
    return torch.where(n.squeeze(1) >= 2, r, torch.full_like(r, float("nan")))
