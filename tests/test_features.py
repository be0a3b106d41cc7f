"""Label-free feature importance against closed forms (linear encoders), completeness, invariances."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients, Saliency
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lfxai_utils.features import (
    FEATURE_METHODS,
    _gradient_mode,
    attribute_dataset,
    attribute_units_dataset,
    label_free_attribution,
    per_unit_attribution,
)


def linear_encoder(in_shape, d=3, seed=0):
    torch.manual_seed(seed)
    D = int(np.prod(in_shape))
    enc = nn.Sequential(nn.Flatten(), nn.Linear(D, d, bias=False))
    return enc.eval(), enc[1].weight.detach().clone()


def closed_form(x, W, baseline=0.0):
    """x (.) W^T W x  for g_x(x~) = <Wx, Wx~>; (x - x_bar) (.) W^T W x with a baseline."""
    grad = (x.flatten(1) @ W.T @ W).view_as(x)
    return (x - baseline) * grad, grad


def mlp(D, d=3, seed=0, scale=2.0):
    torch.manual_seed(seed)
    enc = nn.Sequential(nn.Flatten(), nn.Linear(D, 8), nn.Tanh(), nn.Linear(8, d), nn.Tanh())
    with torch.no_grad():
        for p in enc.parameters():
            p.mul_(scale)
    return enc.eval()


def conv_encoder(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5), nn.Tanh()).eval()


class LastHidden(nn.Module):
    """LSTM encoder of a series (N, T, 1): last hidden state (N, d)."""

    def __init__(self, d=4):
        super().__init__()
        self.rnn = nn.LSTM(1, d, batch_first=True)

    def forward(self, s):
        return self.rnn(s)[0][:, -1]


SHAPES = [(6, 1, 4, 4), (5, 7)]


@pytest.mark.parametrize("shape", SHAPES)
def test_linear_closed_form(shape):
    x = torch.rand(shape)
    enc, W = linear_encoder(shape[1:])
    exact, grad = closed_form(x, W)
    ig = label_free_attribution(enc, x, "integrated_gradients")
    gs = label_free_attribution(enc, x, "gradient_shap", n_samples=7, generator=torch.Generator().manual_seed(0))
    sal = label_free_attribution(enc, x, "saliency")
    assert ig.shape == gs.shape == sal.shape == x.shape and not ig.requires_grad
    torch.testing.assert_close(ig, exact, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gs, exact, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sal, grad.abs(), atol=1e-6, rtol=1e-6)
    # nonzero baselines: one example without batch dim, a callable (per-input), a tensor per input
    xbar = torch.rand(shape[1:])
    torch.testing.assert_close(label_free_attribution(enc, x, "integrated_gradients", xbar),
                               closed_form(x, W, xbar)[0], atol=1e-5, rtol=1e-5)
    for method in ("integrated_gradients", "gradient_shap"):
        torch.testing.assert_close(label_free_attribution(enc, x, method, lambda t: 0.3 * t),
                                   closed_form(x, W, 0.3 * x)[0], atol=1e-5, rtol=1e-5)
        per_input = torch.rand(shape)
        torch.testing.assert_close(label_free_attribution(enc, x, method, per_input),
                                   closed_form(x, W, per_input)[0], atol=1e-5, rtol=1e-5)


def test_as_published_pairing_bug():
    x = torch.rand(6, 1, 4, 4)
    enc, W = linear_encoder((1, 4, 4))
    exact, _ = closed_form(x, W)
    g = torch.Generator().manual_seed(1)
    ig = label_free_attribution(enc, x, "integrated_gradients", pairing="as_published")
    torch.testing.assert_close(ig, exact, atol=1e-5, rtol=1e-5)  # block order: IG is paired correctly
    sal = label_free_attribution(enc, x, "saliency", pairing="as_published")
    torch.testing.assert_close(sal, label_free_attribution(enc, x, "saliency"))
    gs = label_free_attribution(enc, x, "gradient_shap", pairing="as_published", generator=g)
    assert (gs - exact).abs().max() > 0.1 * exact.abs().max()  # interleaved NoiseTunnel: wrong examples paired
    # a batch of one cannot be mispaired
    gs1 = label_free_attribution(enc, x[:1], "gradient_shap", pairing="as_published", generator=g)
    torch.testing.assert_close(gs1, exact[:1], atol=1e-5, rtol=1e-5)


def test_gradient_shap_batch_size_invariance():
    x = torch.rand(4, 1, 4, 4)
    enc = mlp(16)
    # matched seeds: captum draws the alphas of example 0 first in both calls -> identical
    full = label_free_attribution(enc, x, "gradient_shap", generator=torch.Generator().manual_seed(3))
    alone = label_free_attribution(enc, x[:1], "gradient_shap", generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(full[:1], alone, atol=1e-6, rtol=1e-6)
    bug = label_free_attribution(enc, x, "gradient_shap", pairing="as_published",
                                 generator=torch.Generator().manual_seed(3))
    assert (bug[:1] - alone).abs().max() > 0.05 * alone.abs().max()
    # in expectation every example matches its batch-of-one value (both converge to IG)
    g = torch.Generator().manual_seed(0)
    batch = label_free_attribution(enc, x, "gradient_shap", n_samples=2000, generator=g)
    single = torch.cat([label_free_attribution(enc, x[i:i + 1], "gradient_shap", n_samples=2000, generator=g)
                        for i in range(len(x))])
    ig = label_free_attribution(enc, x, "integrated_gradients", n_steps=100)
    tol = 0.03 * ig.abs().max()
    assert (batch - single).abs().max() < tol and (batch - ig).abs().max() < tol
    bug = label_free_attribution(enc, x, "gradient_shap", n_samples=2000, generator=g, pairing="as_published")
    assert (bug - ig).abs().max() > 5 * tol


def test_generator_reproducible_and_global_rng_untouched():
    x = torch.rand(3, 5)
    enc = mlp(5)
    torch.manual_seed(123)
    np.random.seed(123)
    state_t, state_np = torch.get_rng_state(), np.random.get_state()[1].copy()
    a = label_free_attribution(enc, x, "gradient_shap", generator=torch.Generator().manual_seed(7))
    b = label_free_attribution(enc, x, "gradient_shap", generator=torch.Generator().manual_seed(7))
    c = label_free_attribution(enc, x, "gradient_shap", generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), state_t) and np.array_equal(np.random.get_state()[1], state_np)
    r1 = label_free_attribution(enc, x, "random", generator=torch.Generator().manual_seed(0))
    r2 = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    assert torch.equal(r1, r2)


@pytest.mark.parametrize("make", ["mlp", "conv"])
def test_integrated_gradients_completeness(make):
    if make == "mlp":
        enc, x = mlp(16), torch.rand(5, 1, 4, 4)
    else:
        enc, x = conv_encoder(), torch.rand(3, 3, 8, 8)
    xbar = 0.5 * torch.rand(x.shape[1:])
    a = label_free_attribution(enc, x, "integrated_gradients", xbar, n_steps=200)
    with torch.no_grad():
        z, zbar = enc(x), enc(xbar[None])
    expected = (z * z).sum(1) - (z * zbar).sum(1)
    torch.testing.assert_close(a.flatten(1).sum(1), expected, rtol=1e-2, atol=1e-4)
    # internal batching does not change IG
    torch.testing.assert_close(
        label_free_attribution(enc, x, "integrated_gradients", xbar, n_steps=200, internal_batch_size=64), a,
        atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", ["integrated_gradients", "gradient_shap", "saliency"])
def test_orthogonal_invariance(method):
    enc, x = conv_encoder(), torch.rand(4, 3, 8, 8)
    Q, _ = torch.linalg.qr(torch.randn(5, 5))
    rotated = nn.Sequential(enc, nn.Linear(5, 5, bias=False)).eval()
    rotated[1].weight.data = Q
    a = label_free_attribution(enc, x, method, generator=torch.Generator().manual_seed(0))
    b = label_free_attribution(rotated, x, method, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method,kw", [("integrated_gradients", {"n_steps": 16}), ("saliency", {"abs": False})])
def test_per_unit_decomposition(method, kw):
    enc, x = conv_encoder(), torch.rand(3, 3, 8, 8)
    units = per_unit_attribution(enc, x, method, absolute=False, reduce_channels=False, **kw)
    assert units.shape == (3, 5, 3, 8, 8)
    torch.testing.assert_close(units.sum(1), label_free_attribution(enc, x, method, **kw), atol=1e-5, rtol=1e-4)
    # against the ORIG loop over units: |z_j * a(f_j, x)| with target=j, channel mean first
    cls = IntegratedGradients if method == "integrated_gradients" else Saliency
    with torch.no_grad():
        z = enc(x)
    ref = torch.stack([z[:, j, None, None] * cls(enc).attribute(x.clone().requires_grad_(), target=j, **kw).mean(1)
                       for j in range(5)], 1).abs()
    torch.testing.assert_close(per_unit_attribution(enc, x, method, **kw), ref, atol=1e-5, rtol=1e-4)


def test_per_unit_linear_gradient_shap_and_shapes():
    x = torch.rand(4, 1, 4, 4)
    enc, W = linear_encoder((1, 4, 4))
    z = x.flatten(1) @ W.T
    exact = (z[:, :, None] * W[None]).view(4, 3, 4, 4) * x  # z_j * x (.) w_j
    got = per_unit_attribution(enc, x, "gradient_shap", absolute=False, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(got, exact, atol=1e-5, rtol=1e-5)
    chunked = per_unit_attribution(enc, x, "gradient_shap", internal_batch_size=10)
    torch.testing.assert_close(chunked, exact.abs(), atol=1e-5, rtol=1e-5)
    assert per_unit_attribution(enc, x, "random").shape == (4, 3, 4, 4)
    # series (N, T, 1) -> (N, d, T) with an LSTM encoder
    torch.manual_seed(0)
    enc, s = LastHidden().eval(), torch.randn(3, 10, 1)
    out = per_unit_attribution(enc, s, "integrated_gradients", n_steps=8)
    assert out.shape == (3, 4, 10) and (out >= 0).all()
    assert label_free_attribution(enc, s, "integrated_gradients", n_steps=8).shape == s.shape


def test_attribute_dataset_batches_and_modes():
    enc = conv_encoder()
    enc.train()
    enc[0].eval()  # mixed modes must come back exactly
    x = torch.rand(10, 3, 8, 8)
    whole = label_free_attribution(enc, x, "integrated_gradients", n_steps=8)
    for data in (x, TensorDataset(x, torch.zeros(10)), DataLoader(TensorDataset(x, torch.zeros(10)), batch_size=4)):
        out = attribute_dataset(enc, data, "integrated_gradients", batch_size=4, device="cpu", progress=False, n_steps=8)
        assert out.shape == x.shape  # 4 + 4 + 2: last partial batch kept
        torch.testing.assert_close(out, whole, atol=1e-6, rtol=1e-5)
    assert enc.training and not enc[0].training and enc[1].training
    # a per-example baseline tensor is sliced per batch
    xbar = torch.rand(10, 3, 8, 8)
    torch.testing.assert_close(
        attribute_dataset(enc, x, "integrated_gradients", xbar, batch_size=3, device="cpu", progress=False, n_steps=8),
        label_free_attribution(enc, x, "integrated_gradients", xbar, n_steps=8), atol=1e-6, rtol=1e-5)
    units = attribute_units_dataset(enc, x, "saliency", batch_size=4, device="cpu", progress=False)
    torch.testing.assert_close(units, per_unit_attribution(enc, x, "saliency"), atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="drop_last"):
        attribute_dataset(enc, DataLoader(x, batch_size=4, drop_last=True), "saliency", progress=False)
    with pytest.raises(ValueError, match="shuffle"):
        attribute_dataset(enc, DataLoader(x, batch_size=4, shuffle=True), "saliency", progress=False)


def test_rnn_mode_switch_only_for_cuda():
    enc = nn.Sequential(nn.LSTM(1, 4, batch_first=True)).eval()
    with _gradient_mode(enc, torch.device("cpu")):
        assert not enc[0].training
    with _gradient_mode(enc, torch.device("cuda")):  # only flips flags; no CUDA op runs
        assert enc[0].training
    assert not enc[0].training
    deep = nn.LSTM(1, 4, num_layers=2, dropout=0.5).eval()  # train mode would switch dropout on
    with _gradient_mode(deep, torch.device("cuda")):
        assert not deep.training and not torch.backends.cudnn.enabled
    assert torch.backends.cudnn.enabled and not deep.training


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_lstm_on_cuda_eval_mode():
    enc = LastHidden().cuda().eval()  # cuDNN RNN backward fails in eval mode unless handled
    s = torch.randn(3, 10, 1, device="cuda")
    out = label_free_attribution(enc, s, "gradient_shap")
    assert out.shape == s.shape and not enc.training and not enc.rnn.training


def test_errors():
    enc, x = mlp(5), torch.rand(2, 5)
    with pytest.raises(ValueError, match="integrated_gradients"):
        label_free_attribution(enc, x, "deeplift")
    with pytest.raises(ValueError, match="as_published"):
        label_free_attribution(enc, x, "saliency", pairing="buggy")
    with pytest.raises(ValueError, match="baseline"):
        label_free_attribution(enc, x, "integrated_gradients", torch.zeros(3, 5))
    assert FEATURE_METHODS == ("integrated_gradients", "gradient_shap", "saliency", "random")


class _BatchSizes(nn.Module):
    """Records the size of every batch the wrapped encoder sees."""

    def __init__(self, enc):
        super().__init__()
        self.enc, self.sizes = enc, []

    def forward(self, x):
        self.sizes.append(len(x))
        return self.enc(x)


@pytest.mark.parametrize("method,kw,per_example", [("integrated_gradients", {"n_steps": 8}, 8),
                                                   ("saliency", {}, 1)])
def test_cpu_split_bounds_probes_per_pass_and_keeps_the_result(monkeypatch, method, kw, per_example):
    import lfxai_utils.features as F

    x = torch.rand(11, 3, 8, 8)
    rec = _BatchSizes(conv_encoder())
    monkeypatch.setattr(F, "CPU_PROBES_PER_PASS", None)
    whole = label_free_attribution(rec, x, method, **kw)
    assert max(rec.sizes) == 11 * per_example  # one pass over every probe (after the one pass computing f(x))
    for budget in (3 * per_example, 4 * per_example + 1):
        monkeypatch.setattr(F, "CPU_PROBES_PER_PASS", budget)
        rec.sizes.clear()
        split = label_free_attribution(rec, x, method, **kw)
        probe_passes = rec.sizes[1:]
        assert max(probe_passes) <= budget and sum(probe_passes) == 11 * per_example
        torch.testing.assert_close(split, whole, atol=1e-6, rtol=1e-5)
        rec.sizes.clear()
        units = per_unit_attribution(rec, x, method, **kw)
        assert max(rec.sizes[1:]) <= budget
        monkeypatch.setattr(F, "CPU_PROBES_PER_PASS", None)
        torch.testing.assert_close(units, per_unit_attribution(rec, x, method, **kw), atol=1e-6, rtol=1e-5)


def test_cpu_split_leaves_random_methods_and_explicit_batches_alone(monkeypatch):
    import lfxai_utils.features as F

    monkeypatch.setattr(F, "CPU_PROBES_PER_PASS", 4)
    x = torch.rand(6, 3, 8, 8)
    rec = _BatchSizes(conv_encoder())
    label_free_attribution(rec, x, "gradient_shap", generator=torch.Generator().manual_seed(0))
    assert rec.sizes[1:] == [6 * 5]  # GradientShap's random draws would change with a split: one pass
    rec.sizes.clear()
    label_free_attribution(rec, x, "integrated_gradients", n_steps=8, internal_batch_size=16)
    passes = rec.sizes[1:]  # captum's own split of the 48 probes (whole steps: 2 x 6) wins over the automatic one
    assert sum(passes) == 48 and max(passes) <= 16 and min(passes) > 4
    assert F._auto_chunk(IntegratedGradients, {"n_steps": 8}, torch.device("cuda")) is None  # GPUs: one pass


def test_simclr_deviations_are_stated_where_the_code_makes_them():
    """The SimCLR pages' statement of the schedule, augmentation and baseline deviations matches the code, and is
    shown by both SimCLR notebooks and copied on the methods page."""
    import json
    from pathlib import Path

    from lfxai_utils.experiments import feature_consistency as FC
    from lfxai_utils.models import simclr

    root = Path(__file__).resolve().parents[1]
    what = {w: (ours, theirs) for w, ours, theirs in FC.SIMCLR_DEVIATIONS}
    lr = FC.SIMCLR_SPEC.lr
    assert FC.SIMCLR_FIT["scheduler"] == "cosine" and lr == 0.6
    training = (root / "lfxai_utils" / "training.py").read_text()
    assert "eta_min=lr * 1e-3" in training                                     # the schedule the text describes
    assert lr * 1e-3 == pytest.approx(6e-4) and "from 0.6 down to 6e-4" in what["learning-rate schedule"][0]
    assert lr * 0.6 == pytest.approx(0.36) and "0.36 down to 6e-4" in what["learning-rate schedule"][1]
    doc = simclr.simclr_augment.__doc__
    for claim in ("retries 10 times", "without antialiasing", "brightness → contrast → saturation → hue", "YIQ"):
        assert claim in doc and claim in what["augmentations"][0]
    assert "own GaussianBlur(kernel 21, σ = 5)" in what["GradientSHAP baseline"][0]
    methods = (root / "book" / "methods.md").read_text()
    for w, (ours, theirs) in what.items():
        assert f"| {w} | {ours} | {theirs} |" in methods, w
    for nb in ("claim1_feature_consistency", "claim1_example_consistency"):
        cells = json.loads((root / "notebooks" / f"{nb}.ipynb").read_text())["cells"]
        src = "\n".join("".join(c["source"]) for c in cells)
        assert 'if model == "simclr"' in src and "simclr_deviations_markdown()" in src, nb
    md = FC.simclr_deviations_markdown()
    assert md.count("\n|") == 2 + len(FC.SIMCLR_DEVIATIONS)


def test_simclr_gradient_shap_pairs_each_image_with_its_own_blur():
    """Per-input baselines: GradientSHAP of image i uses baseline i (not a random draw from the batch, as captum's
    GradientShap does with a baseline batch). On a linear encoder, x̃ = b + α(x − b) gives the closed form."""
    import torch

    from lfxai_utils.features import attribute_dataset

    torch.manual_seed(0)
    W = torch.randn(2, 12)

    class Lin(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.W = torch.nn.Parameter(W.clone())

        def forward(self, x):
            return x.flatten(1) @ self.W.T

    x = torch.rand(4, 3, 2, 2)
    blur = lambda v: 0.5 * v.flip(0)                       # noqa: E731  a per-image "baseline" unlike the others
    b = blur(x)
    a = attribute_dataset(Lin(), x, "gradient_shap", blur, batch_size=4, progress=False,
                          generator=torch.Generator().manual_seed(0))
    xf, bf = x.flatten(1), b.flatten(1)
    # label-free IG-like form along x̃ = b + α(x − b): (x − b) ⊙ Wᵀ W (b + ᾱ(x − b)) for the drawn α; bounds:
    # every α ∈ [0, 1] gives an attribution between those at α = 0 and α = 1 (linear in α)
    lo = (xf - bf) * ((bf) @ W.T @ W)
    hi = (xf - bf) * ((xf) @ W.T @ W)
    af = a.flatten(1)
    assert bool((((af - lo) * (af - hi)) <= 1e-5).all())     # with its own baseline b_i, never another image's
