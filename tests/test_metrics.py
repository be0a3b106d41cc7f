"""Metrics against brute force / closed forms / numpy-scipy references."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import entropy, spearmanr
from torch import nn

import lfxai_utils.metrics as metrics_module
from lfxai_utils.metrics import (
    active_units,
    apply_mask,
    correlation_matrices,
    cosine_saliency,
    entropy_saliency,
    feature_scores,
    label_prior,
    rowwise_spearman,
    pearson_saliency,
    pixel_pearson,
    representation_shift,
    saliency_metrics,
    similarity_rates,
    spearman_saliency,
    topk_mask,
)


def test_feature_scores():
    a = torch.randn(2, 3, 4, 5)
    s = feature_scores(a)
    assert s.shape == (2, 20)
    torch.testing.assert_close(s[1, 7], a[1, :, 1, 2].abs().sum())
    series = torch.randn(2, 140, 1)
    torch.testing.assert_close(feature_scores(series), series[..., 0].abs())


def test_topk_mask():
    scores = torch.randn(50, 30)
    for k in (0, 1, 7, 30):
        m = topk_mask(scores, k)
        assert m.dtype == torch.bool and (m.sum(1) == k).all()
        if 0 < k < 30:  # every selected score beats every unselected one
            sel = torch.where(m, scores, torch.inf).min(1).values
            rest = torch.where(m, -torch.inf, scores).max(1).values
            assert (sel > rest).all()
    with pytest.raises(ValueError):
        topk_mask(scores, 31)


def test_apply_mask_images_series_and_baselines():
    x = torch.rand(2, 3, 2, 2)
    mask = torch.tensor([[1, 0, 0, 1], [0, 0, 0, 0]], dtype=torch.bool)
    out = apply_mask(x, mask)
    assert (out[0, :, 0, 0] == 0).all() and (out[0, :, 1, 1] == 0).all()
    assert torch.equal(out[0, :, 0, 1], x[0, :, 0, 1]) and torch.equal(out[1], x[1])
    out = apply_mask(x, mask, lambda t: t + 10)  # callable: per-input baseline
    torch.testing.assert_close(out[0, :, 1, 1], x[0, :, 1, 1] + 10)
    s = torch.rand(2, 5, 1)
    smask = torch.tensor([[0, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    base = torch.arange(5.0)[:, None]  # a mean sequence (T, 1)
    out = apply_mask(s, smask, base)
    assert out[0, 1, 0] == 1.0 and out[0, 0, 0] == s[0, 0, 0] and torch.equal(out[1], base)


def test_representation_shift():
    torch.manual_seed(0)
    enc = nn.Sequential(nn.Flatten(), nn.Linear(16, 3), nn.Tanh()).eval()
    x = torch.rand(7, 1, 4, 4)
    scores = torch.rand(7, 16)
    df = representation_shift(enc, x, scores, fractions=(0.25, 1.0), batch_size=3, device="cpu", progress=False)
    assert list(df.columns) == ["fraction", "k", "example", "shift"] and len(df) == 3 * 7
    assert (df[df.fraction == 0]["shift"] == 0).all()
    with torch.no_grad():
        full = ((enc(x) - enc(torch.zeros_like(x))) ** 2).sum(1)
        m = topk_mask(scores, 4).view(7, 1, 4, 4)
        quarter = ((enc(x) - enc(x * ~m)) ** 2).sum(1)
    np.testing.assert_allclose(df[df.fraction == 1.0]["shift"], full.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(df[df.fraction == 0.25]["shift"], quarter.numpy(), rtol=1e-5, atol=1e-7)
    assert df[df.fraction == 0.25]["k"].unique().tolist() == [4]
    # attributions of x's shape are converted to scores; batch size does not matter
    attr = scores.view(7, 1, 4, 4)
    df2 = representation_shift(enc, x, attr, fractions=(0.25, 1.0), batch_size=100, device="cpu", progress=False)
    np.testing.assert_allclose(df2["shift"], df["shift"], rtol=1e-5, atol=1e-7)
    # one baseline per example (sliced per batch) and a callable baseline
    xbar = torch.rand(7, 1, 4, 4)
    with torch.no_grad():
        ref = ((enc(x) - enc(xbar)) ** 2).sum(1)
    for base in (xbar, lambda t: xbar):  # the callable is applied to the (single) batch of 7
        df3 = representation_shift(enc, x, scores, fractions=(1.0,), baseline=base, include_zero=False,
                                   batch_size=3 if isinstance(base, torch.Tensor) else 7, device="cpu", progress=False)
        np.testing.assert_allclose(df3["shift"], ref.numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("shape,ks", [((1, 28, 28), [39, 78, 156, 392, 627, 784]),
                                      ((3, 32, 32), [51, 102, 204, 512, 819, 1024]),
                                      ((140, 1), [7, 14, 28, 70, 112, 140])])
def test_representation_shift_k_values(shape, ks):
    enc = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(shape)), 2)).eval()
    x = torch.rand(2, *shape)
    df = representation_shift(enc, x, x, include_zero=False, device="cpu", progress=False)
    assert df.groupby("fraction")["k"].first().tolist() == ks


def brute_similarity(imp, ytr, yte, k):
    order = np.argsort(-imp, axis=1, kind="stable")
    most = np.mean([np.mean(ytr[order[n, :k]] == yte[n]) for n in range(len(yte))])
    least = np.mean([np.mean(ytr[order[n, -k:]] == yte[n]) for n in range(len(yte))])
    return most, least


def test_similarity_rates():
    rng = np.random.default_rng(0)
    ytr, yte = rng.integers(0, 3, 40), rng.integers(0, 3, 15)
    imp = rng.normal(size=(15, 40))
    df = similarity_rates(imp, ytr, yte, fractions=(0.05, 0.1, 0.5, 0.7, 1.0))
    assert list(df.columns) == ["fraction", "k", "type", "similarity_rate"]
    for k in (2, 4, 20, 28, 40):
        most, least = brute_similarity(imp, ytr, yte, k)
        rows = df[df.k == k].set_index("type")["similarity_rate"]
        assert rows["most"] == pytest.approx(most) and rows["least"] == pytest.approx(least)
    full = df[df.fraction == 1.0].set_index("type")["similarity_rate"]
    prior = label_prior(ytr, yte)
    assert full["most"] == pytest.approx(prior) and full["least"] == pytest.approx(prior)
    assert prior == pytest.approx(np.mean([np.mean(ytr == y) for y in yte]))
    # planted: importance = same label + small noise -> most = 1, least = 0 at small k
    planted = (yte[:, None] == ytr[None]).astype(float) + 0.1 * rng.random((15, 40))
    df = similarity_rates(torch.tensor(planted), torch.tensor(ytr), torch.tensor(yte), fractions=(0.1,))
    rates = df.set_index("type")["similarity_rate"]
    assert rates["most"] == 1.0 and rates["least"] == 0.0
    assert label_prior(np.repeat(np.arange(10), 3), np.arange(10)) == pytest.approx(0.1)


def test_correlation_matrices():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(20, 5))
    arrays = [base + rng.normal(size=base.shape) for _ in range(3)] + [np.round(base, 0)]  # last one has ties
    pearson, spearman = correlation_matrices([arrays[0], torch.tensor(arrays[1]), *arrays[2:]])
    flat = np.stack([a.ravel() for a in arrays])
    np.testing.assert_allclose(pearson, np.corrcoef(flat), atol=1e-12)
    np.testing.assert_allclose(spearman, spearmanr(flat, axis=1)[0], atol=1e-12)
    with pytest.raises(ValueError):
        correlation_matrices([np.zeros(3), np.zeros(4)])


def test_pearson_and_spearman_saliency():
    rng = np.random.default_rng(2)
    one = rng.random((4, 1, 3, 3))
    assert pearson_saliency(np.repeat(one, 3, axis=1)) == pytest.approx(1.0)
    S = rng.random((4, 3, 3, 3))
    units = S.swapaxes(0, 1).reshape(3, -1)
    hand = np.mean([np.corrcoef(units[i], units[j])[0, 1] for i in range(3) for j in range(3) if i != j])
    assert pearson_saliency(torch.tensor(S)) == pytest.approx(hand)
    S[S < 0.5] = 0  # ties
    units = S.swapaxes(0, 1).reshape(3, -1)
    rho = spearmanr(units, axis=1)[0]
    assert spearman_saliency(S) == pytest.approx((rho.sum() - 3) / 6)


def test_cosine_saliency():
    rng = np.random.default_rng(3)
    S = rng.random((5, 3, 2, 4))
    ref = []
    for i in range(3):
        for j in range(3):
            if i != j:
                a, b = S[:, i].reshape(5, -1), S[:, j].reshape(5, -1)
                ref.append(np.mean((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))
    assert cosine_saliency(S) == pytest.approx(np.mean(ref))
    assert cosine_saliency(np.repeat(S[:, :1], 3, axis=1)) == pytest.approx(1.0)
    # a unit map that is identically zero on one image: that image is skipped for its pairs
    Z = S.copy()
    Z[0, 0] = 0
    def cos(i, j, images):
        return np.mean([(S[n, i] * S[n, j]).sum() / np.linalg.norm(S[n, i]) / np.linalg.norm(S[n, j]) for n in images])

    ref_pair = (cos(1, 2, range(5)) + cos(0, 1, range(1, 5)) + cos(0, 2, range(1, 5))) / 3
    assert cosine_saliency(Z) == pytest.approx(ref_pair)


def test_entropy_and_active_units():
    # 4 pixels, d = 4 units: shares (1/2,1/2,0,0), (1,0,0,0), (1/4 each), and a zero pixel (dropped)
    pix = np.array([[1, 1, 0, 0], [3, 0, 0, 0], [2, 2, 2, 2], [0, 0, 0, 0]], float)
    S = pix.T.reshape(1, 4, 2, 2)  # S[0, j, h, w] = pix[2h + w, j]
    assert entropy_saliency(S) == pytest.approx((math.log(2) + 0 + math.log(4)) / 3)
    assert entropy_saliency(S) == pytest.approx(entropy(pix[:3], axis=1).mean())
    assert active_units(S) == pytest.approx((2 + 1 + 0) / 3)  # strictly above 1/d
    m = saliency_metrics(np.abs(np.random.default_rng(0).normal(size=(3, 4, 2, 2))))
    assert set(m) == {"pearson", "spearman", "cosine", "entropy", "active_units"}


def test_pixel_pearson():
    rng = np.random.default_rng(4)
    a, b = rng.random((3, 1, 4, 4)), rng.random((3, 1, 4, 4))
    mask = rng.random((3, 1, 4, 4)) > 0.4
    r = pixel_pearson(torch.tensor(a), torch.tensor(b), torch.tensor(mask))
    ref = [np.corrcoef(a[i][mask[i]], b[i][mask[i]])[0, 1] for i in range(3)]
    np.testing.assert_allclose(r.numpy(), ref, atol=1e-12)
    np.testing.assert_allclose(pixel_pearson(torch.tensor(a), torch.tensor(2 * a + 1)).numpy(), 1.0, atol=1e-12)
    none = torch.zeros(3, 1, 4, 4, dtype=torch.bool)
    none[0, 0, 0, :2] = True
    out = pixel_pearson(torch.tensor(a), torch.tensor(b), none)
    assert torch.isnan(out[1:]).all() and out[0].abs() == pytest.approx(1.0)


def test_saliency_metrics_streaming_matches_one_chunk(monkeypatch):
    S = np.abs(np.random.default_rng(5).normal(size=(7, 3, 4, 4))).astype(np.float32)
    S[S < 0.3] = 0
    whole = saliency_metrics(S)
    monkeypatch.setattr(metrics_module, "_CHUNK_ELEMENTS", 50)  # 1 image per chunk
    chunked = saliency_metrics(torch.tensor(S))
    assert chunked == pytest.approx(whole, rel=1e-10)
    flat = S.swapaxes(0, 1).reshape(3, -1).astype(np.float64)
    assert whole["pearson"] == pytest.approx((np.corrcoef(flat).sum() - 3) / 6, rel=1e-10)


def test_rowwise_spearman_matches_scipy_and_is_rank_based():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 40))
    b = a + rng.normal(scale=0.7, size=a.shape)
    b[2, :10] = b[2, 0]  # ties: average ranks, as scipy
    got = rowwise_spearman(a, torch.as_tensor(b))
    np.testing.assert_allclose(got, [spearmanr(a[i], b[i]).statistic for i in range(5)], rtol=1e-12)
    np.testing.assert_allclose(rowwise_spearman(a, np.exp(3 * a)), 1.0)  # monotone maps keep the ranking
    np.testing.assert_allclose(rowwise_spearman(a, -a), -1.0)
    assert np.isnan(rowwise_spearman(np.ones((1, 4)), a[:1, :4])).all()
    with pytest.raises(ValueError, match="one shape"):
        rowwise_spearman(a, b[:, :3])
