"""Activation maximisation (lfxai_utils.visualisation): exact answers on linear encoders and closed forms."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lfxai_utils.models import EncoderBurgess
from lfxai_utils.visualisation import (fft_image, leaky_encoder, maximise_units, pixel_image, rfft2d_freqs)


class Linear(nn.Module):
    """f(x) = W · flatten(x): maximising unit j over [0, 1]^P puts pixel p at 1 if W[j, p] > 0, at 0 if < 0."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x):
        return x.flatten(1) @ self.w.T


def _weights(d=3, shape=(1, 8, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, int(np.prod(shape)), generator=g)
    return torch.where(w.abs() < 0.05, torch.full_like(w, 0.05) * w.sign(), w)   # no near-zero weight


def test_rfft2d_freqs_by_hand():
    f = rfft2d_freqs(4, 4)
    fy = np.array([0, 0.25, -0.5, -0.25])[:, None]
    fx = np.array([0, 0.25, 0.5])[None, :]
    np.testing.assert_allclose(f, np.sqrt(fx ** 2 + fy ** 2))
    assert rfft2d_freqs(4, 5).shape == (4, 4)      # odd width: lucent keeps w // 2 + 2 columns


def test_fft_image_dc_component_is_a_constant_image():
    spec, image = fft_image((1, 1, 8, 8))
    with torch.no_grad():
        spec.zero_()
        spec[0, 0, 0, 0, 0] = 2.0        # real part of the DC coefficient
    # scale(DC) = 1 / (1 / max(H, W)) = 8; ortho irfft: value / sqrt(H·W) = 16 / 8 = 2; lucent's magic /4 -> 0.5
    np.testing.assert_allclose(image().detach().numpy(), np.full((1, 1, 8, 8), 0.5), atol=1e-6)


def test_fft_image_matches_numpy_inverse_fft():
    g = [torch.Generator().manual_seed(3), torch.Generator().manual_seed(4)]
    spec, image = fft_image((2, 3, 6, 6), sd=1.0, generators=g)
    s = spec.detach().numpy()
    z = (s[..., 0] + 1j * s[..., 1]) / np.maximum(rfft2d_freqs(6, 6), 1 / 6)
    ref = np.fft.irfftn(z, s=(6, 6), axes=(-2, -1), norm="ortho") / 4
    np.testing.assert_allclose(image().detach().numpy(), ref, atol=1e-5)


def test_initial_images_are_grey_and_per_image_generators_are_independent():
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    spec_a, img_a = fft_image((2, 1, 8, 8), generators=[g(1), g(2)])
    spec_b, img_b = fft_image((1, 1, 8, 8), generators=[g(2)])
    torch.testing.assert_close(spec_a[1:], spec_b)
    x = torch.sigmoid(img_a())
    assert ((x > 0.45) & (x < 0.55)).all()
    p, img = pixel_image((2, 1, 4, 4), sd=0.0)
    assert torch.equal(torch.sigmoid(img()), torch.full((2, 1, 4, 4), 0.5))
    with pytest.raises(ValueError, match="one generator per image"):
        fft_image((2, 1, 8, 8), generators=[g(1)])


def test_linear_encoder_optimum_is_known_pixel_parameterisation():
    w = _weights()
    enc = Linear(w)
    res = maximise_units(enc, [0, 1, 2], (1, 8, 8), n_steps=150, parameterisation="pixel", seed=0)
    img = res.images.flatten(1)
    # every pixel is pushed to 1 where the unit's weight is positive and to 0 where it is negative
    assert torch.equal(img > 0.5, w > 0)
    sup = w.clamp_min(0).sum(1)                  # the supremum of w_j · x over [0, 1]^P
    assert (res.final <= sup + 1e-4).all()
    assert (res.final >= 0.95 * sup).all(), (res.final, sup)
    # the objective increases: every pixel only ever moves towards its optimum, so it never decreases
    h = res.history
    assert h.shape == (151, 3)
    assert (h.diff(dim=0) > -1e-5).all()
    # history[-1] is the activation of the returned images
    torch.testing.assert_close(enc(res.images)[torch.arange(3), torch.arange(3)], res.final, atol=1e-4, rtol=0)


def test_linear_encoder_fft_parameterisation_climbs_to_near_the_optimum():
    # In the Fourier domain pixels are coupled, and a pixel that saturates on the wrong side of the sigmoid gets no
    # more gradient; so the optimum is approached, not reached exactly (a property of lucent's loop too).
    w = _weights()
    enc = Linear(w)
    res = maximise_units(enc, [0, 1, 2], (1, 8, 8), n_steps=300, parameterisation="fft", seed=0)
    sup = w.clamp_min(0).sum(1)
    h = res.history
    assert (res.final <= sup + 1e-4).all() and (res.final >= 0.85 * sup).all(), (res.final, sup)
    assert (h[-1] > h[0] + 0.5 * sup).all()
    assert (h[-50:].mean(0) > h[:50].mean(0)).all()
    agree = ((res.images.flatten(1) > 0.5) == (w > 0)).float().mean()
    assert agree >= 0.9, agree


def test_batching_over_units_equals_optimising_each_unit_alone():
    enc = Linear(_weights(d=4, shape=(2, 8, 8)))
    both = maximise_units(enc, [0, 3, 2], (2, 8, 8), n_steps=30, seed=5)
    alone = maximise_units(enc, [3], (2, 8, 8), n_steps=30, seed=5)
    torch.testing.assert_close(both.images[1:2], alone.images, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both.history[:, 1:2], alone.history, atol=1e-5, rtol=1e-5)
    assert both.units == (0, 3, 2)
    # same seed, same result; another seed, another start
    again = maximise_units(enc, [3], (2, 8, 8), n_steps=30, seed=5)
    assert torch.equal(again.images, alone.images)
    other = maximise_units(enc, [3], (2, 8, 8), n_steps=0, seed=6)
    assert not torch.equal(other.history[0], alone.history[0])


def test_encoder_is_left_untouched_and_errors_are_clear():
    enc = Linear(_weights())
    enc.train()
    before = enc.w.detach().clone()
    maximise_units(enc, [1], (1, 8, 8), n_steps=5)
    assert torch.equal(enc.w, before) and enc.w.grad is None and enc.training
    with pytest.raises(ValueError, match="parameterisation"):
        maximise_units(enc, [0], (1, 8, 8), parameterisation="jitter")
    with pytest.raises(ValueError, match="out of range"):
        maximise_units(enc, [3], (1, 8, 8), n_steps=1)
    with pytest.raises(ValueError, match="units is empty"):
        maximise_units(enc, [], (1, 8, 8))


def test_zero_steps_returns_the_initial_image():
    enc = Linear(_weights())
    res = maximise_units(enc, [0, 1], (1, 8, 8), n_steps=0, seed=2)
    assert res.history.shape == (1, 2)
    torch.testing.assert_close(res.final, enc(res.images)[[0, 1], [0, 1]])


def _manual_forward(enc: EncoderBurgess, x, slope):
    act = lambda t: F.leaky_relu(t, slope)  # noqa: E731
    h = act(enc.conv3(act(enc.conv2(act(enc.conv1(x))))))
    h = act(enc.lin2(act(enc.lin1(h.flatten(1)))))
    return enc.mu_logvar_gen(h).view(-1, enc.latent_dim, 2)[..., 0]


def test_leaky_encoder_copy():
    torch.manual_seed(0)
    enc = EncoderBurgess((1, 32, 32), 3)
    x = torch.rand(4, 1, 32, 32)
    leaky = leaky_encoder(enc)
    assert leaky is not enc and leaky.leaky and not enc.leaky
    for (k, a), (k2, b) in zip(enc.state_dict().items(), leaky.state_dict().items()):
        assert k == k2 and torch.equal(a, b) and a.data_ptr() != b.data_ptr()
    with torch.no_grad():
        torch.testing.assert_close(leaky(x), _manual_forward(enc, x, 0.1))
        torch.testing.assert_close(enc(x), _manual_forward(enc, x, 0.0))
        assert not torch.allclose(leaky(x), enc(x))
    assert not any(p.requires_grad for p in leaky.parameters()) and all(p.requires_grad for p in enc.parameters())
    with pytest.raises(TypeError, match="leaky"):
        leaky_encoder(Linear(_weights()))


# ------------------------------------------------------------------------------------------ the notebook's module
from types import SimpleNamespace  # noqa: E402


from lfxai_utils.experiments import disentanglement as D  # noqa: E402
from lfxai_utils.experiments import feature_visualisation as V  # noqa: E402
from lfxai_utils.visualisation import VisualisationResult  # noqa: E402


def test_pages_need_the_claim3_beta_vaes_of_run_0():
    assert V.required_checkpoints("mnist") == [f"claim3-disvae_mnist_beta-vae_beta{b}_run0" for b in (1, 5, 10)]
    assert V.required_checkpoints("cifar10", betas=[10]) == ["claim3-disvae_cifar10_beta-vae_beta10_run0"]
    assert V.data_requirements("mnist") == [("mnist", {"image_size": 32})]
    with pytest.raises(ValueError, match="'mnist', 'cifar10', 'cifar100'"):
        V.required_checkpoints("dsprites")


def test_validate_parameters():
    assert V.validate(1000, 0.05, "fft", None, 3) == [0, 1, 2]
    assert V.validate(10, 0.05, "pixel", "[2, 0]", 3) == [2, 0]
    for args, match in [((10, 0.05, "fft", [3], 3), "0..2"), ((10, 0.05, "lucid", None, 3), "'fft', 'pixel'"),
                        ((-1, 0.05, "fft", None, 3), "n_steps"), ((10, 0.0, "fft", None, 3), "lr > 0")]:
        with pytest.raises(ValueError, match=match):
            V.validate(*args)


def test_activation_table_and_similarity_by_hand():
    w = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0]])        # unit 1 reads pixel 0, unit 2 pixel 3
    enc = Linear(w)
    test_x = torch.tensor([[0.5, 0, 0, 0.1], [0.2, 0, 0, 0.12], [0.3, 0, 0, 0.11]]).reshape(3, 1, 2, 2)
    imgs = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 1.0]]).reshape(2, 1, 2, 2)
    res = VisualisationResult((0, 1), imgs, torch.tensor([[0.1, 0.2], [0.9, 1.8]]))
    exp = SimpleNamespace(device=torch.device("cpu"), dataset="mnist", smoke=False)
    vaes = {D.GridPoint("beta", 5.0, 0): (SimpleNamespace(encoder=enc), {"name": "m"})}
    t = V.activation_table(exp, vaes, {5.0: res}, test_x)
    assert t["unit"].tolist() == [1, 2] and t["mu_vis"].tolist() == [1.0, 2.0]
    assert t["mu_vis_leaky"].tolist() == pytest.approx([0.9, 1.8]) and t["start_leaky"].tolist() == pytest.approx([0.1, 0.2])
    assert t["test_max"].tolist() == pytest.approx([0.5, 0.24]) and t["test_mean"].tolist() == pytest.approx([1 / 3, 0.22])
    assert t["ratio_to_test_max"].tolist() == pytest.approx([2.0, 2.0 / 0.24])
    assert t["z_vs_test"].iloc[0] == pytest.approx((1 - 1 / 3) / np.std([0.5, 0.2, 0.3], ddof=1))
    # unit 1: Var = 0.0233 > 0.01, in use; unit 2: Var(0.2, 0.24, 0.22) = 0.0004, collapsed
    assert t["in_use"].tolist() == [True, False]
    sim = V.unit_similarity({5.0: res})
    assert sim["mean_pairwise_pearson"].iloc[0] == pytest.approx(np.corrcoef([[1, 0, 0, 0], [0, 1, 0, 1]])[0, 1])
    assert np.isnan(V.unit_similarity({1.0: VisualisationResult((0,), imgs[:1], res.history[:, :1])})
                    ["mean_pairwise_pearson"].iloc[0])
    (v,) = V.verdicts(exp, t, sim)
    assert v.verdict == "inconclusive" and "median 2.00 (range 2.00–2.00)" in v.ours and "1/1 such pictures" in v.ours
    assert "3 test images" in v.ours and "collapsed units β=5: 1/2" in v.ours


def test_visualise_uses_a_leaky_copy_and_the_same_start_for_every_beta():
    torch.manual_seed(0)
    vaes = {D.GridPoint("beta", b, 0): (SimpleNamespace(encoder=EncoderBurgess((1, 32, 32), 3)), {}) for b in (1.0, 10.0)}
    exp = SimpleNamespace(device=torch.device("cpu"), progress=False, seed=3)
    out = V.visualise(exp, vaes, [0, 2], n_steps=0)
    assert list(out) == [1.0, 10.0] and out[1.0].units == (0, 2)
    assert torch.equal(out[1.0].images, out[10.0].images)                 # zero steps: the shared start
    assert not any(m.encoder.leaky for m, _ in vaes.values())
    enc = vaes[D.GridPoint("beta", 1.0, 0)][0].encoder
    with torch.no_grad():
        torch.testing.assert_close(out[1.0].final, leaky_encoder(enc)(out[1.0].images)[[0, 1], [0, 2]])
    fig = V.grid_figure(out)
    assert [a.get_title() for a in fig.axes[:2]] == ["1. unit", "3. unit"] and len(fig.axes) == 4
    long = V.history_long(out)
    assert len(long) == 2 * 2 and set(long.columns) == {"beta", "unit", "step", "activation"}
