"""Architectures (shapes, parameter counts of experiments.md §1.1), pretext perturbations and VAE losses."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Normal, kl_divergence

from lfxai_utils.models import (ARCHITECTURES, AutoEncoder, BetaTCVAELoss, BetaVAELoss, DecoderMnist, EncoderBurgess,
                                EncoderMnist, Identity, Mask, RandomNoise, build_model, make_pretext)
from lfxai_utils.models.simclr import nt_xent, simclr_augment
from lfxai_utils.models.vae import log_importance_weight_matrix


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def n_state(m: nn.Module) -> int:
    return sum(v.numel() for v in m.state_dict().values())


# ----------------------------------------------------------------------------------------- architectures
SHAPES = [  # arch, kwargs, input shape, output shape, latent shape
    ("mnist_ae", {}, (2, 1, 28, 28), (2, 1, 28, 28), (2, 4)),
    ("mnist_classifier", {}, (2, 1, 28, 28), (2, 10), (2, 4)),
    ("cifar_ae", {}, (2, 3, 32, 32), (2, 3, 32, 32), (2, 16)),
    ("cifar_classifier", {"n_classes": 100}, (2, 3, 32, 32), (2, 100), (2, 16)),
    ("ecg_ae", {}, (2, 140, 1), (2, 140, 1), (2, 64)),
    ("vae", {"img_size": (1, 32, 32), "latent_dim": 3}, (2, 1, 32, 32), (2, 1, 32, 32), (2, 3)),
    ("vae", {"img_size": (1, 64, 64), "latent_dim": 6}, (2, 1, 64, 64), (2, 1, 64, 64), (2, 6)),
    ("vae", {"img_size": (3, 32, 32), "latent_dim": 16, "rec_dist": "gaussian"}, (2, 3, 32, 32), (2, 3, 32, 32), (2, 16)),
    ("simclr", {}, (2, 3, 32, 32), (2, 128), (2, 512)),
]


@pytest.mark.parametrize("arch,kwargs,in_shape,out_shape,z_shape", SHAPES)
def test_forward_shapes_and_uniform_loss(arch, kwargs, in_shape, out_shape, z_shape):
    torch.manual_seed(0)
    model = build_model(arch, **kwargs).eval()
    x = torch.rand(in_shape)
    with torch.no_grad():
        assert model(x).shape == out_shape
        assert model.encoder(x).shape == z_shape
        loss = model.loss((x, torch.tensor([0, 1])))
    assert loss.ndim == 0 and math.isfinite(loss.item())
    assert model.arch == arch and set(kwargs) <= set(model.arch_kwargs)


def test_decoders_output_probabilities():
    for arch, kw, shape in [("mnist_ae", {}, (3, 1, 28, 28)), ("cifar_ae", {}, (3, 3, 32, 32)), ("vae", {}, (3, 1, 32, 32))]:
        out = build_model(arch, **kw).eval()(torch.randn(shape) * 5)
        assert out.min() >= 0 and out.max() <= 1


# Exact counts; the state-dict element counts (buffers included) round to the §1.1 numbers.
COUNTS = [  # arch, kwargs, parameters, state-dict elements, §1.1 value, rounding unit
    ("mnist_ae", {}, 87125, 87208, 87.2e3, 100),
    ("mnist_classifier", {}, 43478, 43511, 43.5e3, 100),
    ("ecg_ae", {}, 249473, 249473, 249e3, 1000),
    ("vae", {"img_size": (1, 32, 32), "latent_dim": 3}, 463783, 463783, 464e3, 1000),
    ("vae", {"img_size": (1, 64, 64), "latent_dim": 6}, 498925, 498925, 499e3, 1000),
    ("vae", {"img_size": (3, 32, 32), "latent_dim": 16}, 475843, 475843, 476e3, 1000),
    ("cifar_ae", {}, 1003923, 1003923, 1.00e6, 10000),
    ("cifar_classifier", {}, 620026, 620026, 620e3, 1000),
    ("cifar_classifier", {"n_classes": 100}, 621556, 621556, 622e3, 1000),
]


@pytest.mark.parametrize("arch,kwargs,params,state,spec,unit", COUNTS)
def test_parameter_counts_match_spec(arch, kwargs, params, state, spec, unit):
    model = build_model(arch, **kwargs)
    assert n_params(model) == params
    assert n_state(model) == state
    assert round(state / unit) * unit == spec


def test_mnist_encoder_count_and_simclr_backbone():
    assert n_state(EncoderMnist(4)) == 43461 and round(n_state(EncoderMnist(4)), -2) == 43.5e3  # "≈ 43.4k" params
    assert n_params(EncoderMnist(4)) == 43428
    model = build_model("simclr")
    # torchvision resnet18: 11 689 512 − fc 513 000 − conv1 7×7 9 408 + conv1 3×3 1 728
    assert n_params(model.encoder) == 11_168_832
    assert n_params(model.projector) == 512 * 2048 + 2048 + 2048 * 128 + 128
    assert isinstance(model.encoder.maxpool, nn.Identity) and isinstance(model.encoder.fc, nn.Identity)
    assert model.encoder.conv1.kernel_size == (3, 3) and model.encoder.conv1.bias is None


def test_registry_errors_and_normalised_kwargs():
    with pytest.raises(ValueError, match="mnist_ae.*simclr"):
        build_model("resnet")
    with pytest.raises(ValueError, match="latent_dim"):
        build_model("mnist_ae", latent=3)
    with pytest.raises(ValueError, match="beta, tc"):
        build_model("vae", loss="kl")
    with pytest.raises(ValueError, match="32×32 or 64×64"):
        build_model("vae", img_size=(1, 28, 28))
    m = build_model("vae", img_size=(1, 32, 32), loss="TC", beta=5)
    assert m.arch_kwargs["img_size"] == [1, 32, 32] and m.arch_kwargs["loss"] == "tc"
    assert isinstance(m.loss_f, BetaTCVAELoss) and m.loss_f.beta == 5
    assert set(ARCHITECTURES) == {"mnist_ae", "mnist_classifier", "cifar_ae", "cifar_classifier", "ecg_ae", "vae", "simclr"}


# ----------------------------------------------------------------------------------------- pretext
class Recorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x + 1.0


def test_autoencoder_perturbs_only_in_training_forward_but_always_in_loss():
    torch.manual_seed(0)
    rec = Recorder()
    model = AutoEncoder(EncoderMnist(4), DecoderMnist(4), rec)
    x = torch.rand(4, 1, 28, 28)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model.decoder(model.encoder(x)))
        assert rec.calls == 0
        loss = model.loss((x, None))
        assert rec.calls == 1
        assert torch.allclose(loss, F.mse_loss(model.decoder(model.encoder(x + 1.0)), x))
    model.train()
    model(x)
    assert rec.calls == 2


def test_denoising_validation_loss_is_the_pretext_loss():
    model = build_model("mnist_ae", pretext="denoising").eval()
    x = torch.rand(8, 1, 28, 28)
    with torch.no_grad():
        torch.manual_seed(3)
        loss = model.loss((x,))
        torch.manual_seed(3)
        manual = F.mse_loss(model.decoder(model.encoder(x + 0.3 * torch.randn_like(x))), x)
        assert torch.allclose(loss, manual)
        assert loss.item() != F.mse_loss(model(x), x).item()


def test_pretext_statistics():
    torch.manual_seed(0)
    noise = RandomNoise()(torch.zeros(400_000))
    assert abs(noise.std().item() - 0.3) < 0.003 and abs(noise.mean().item()) < 0.003
    x = torch.ones(20_000, 3, 2, 2)
    masked = Mask()(x)
    assert set(masked.unique().tolist()) == {0.0, 1.0}
    assert abs((masked == 0).float().mean().item() - 0.2) < 0.005
    # independent per element: channels of a pixel disagree with prob 1 − 0.8³ − 0.2³ = 0.48
    disagree = (masked.amax(1) != masked.amin(1)).float().mean().item()
    assert abs(disagree - 0.48) < 0.01
    assert torch.equal(Identity()(x), x)


def test_make_pretext():
    assert isinstance(make_pretext("reconstruction"), Identity)
    assert isinstance(make_pretext("Denoising"), RandomNoise) and make_pretext("denoising").noise_level == 0.3
    assert isinstance(make_pretext("inpainting"), Mask) and make_pretext("inpainting").mask_proportion == 0.2
    with pytest.raises(ValueError, match="reconstruction, denoising, inpainting"):
        make_pretext("colorization")


def test_classifier_plain_logits_and_cross_entropy():
    model = build_model("mnist_classifier").eval()
    assert not any(isinstance(m, (nn.Softmax, nn.LogSoftmax)) for m in model.modules())
    x, y = torch.rand(6, 1, 28, 28), torch.tensor([0, 1, 2, 3, 4, 9])
    with torch.no_grad():
        assert torch.allclose(model.loss((x, y)), F.cross_entropy(model(x), y))
        assert torch.equal(model(x), model.lin_output(model.encoder(x)))


def test_ecg_encoder_is_final_hidden_state_and_l1_loss():
    torch.manual_seed(0)
    model = build_model("ecg_ae", latent_dim=8)
    x = torch.randn(3, 140, 1)
    with torch.no_grad():
        h1, _ = model.encoder.rnn1(x)
        out, (h_n, _) = model.encoder.rnn2(h1)
        assert h1.shape == (3, 140, 16)
        assert torch.allclose(model.encoder(x), h_n[-1]) and torch.allclose(model.encoder(x), out[:, -1])
        assert torch.allclose(model.loss((x,)), (model(x) - x).abs().mean())


# ----------------------------------------------------------------------------------------- VAE
def test_vae_mu_even_logvar_odd_and_encoder_returns_mu():
    torch.manual_seed(0)
    model = build_model("vae", img_size=(1, 32, 32), latent_dim=3)
    enc = model.encoder
    x = torch.rand(5, 1, 32, 32)
    with torch.no_grad():
        raw = enc.mu_logvar_raw(x)
        mu, logvar = enc.mu_logvar(x)
        assert torch.equal(mu, raw[:, 0::2]) and torch.equal(logvar, raw[:, 1::2])
        assert torch.equal(enc(x), mu) and torch.equal(enc.mu(x), mu) and isinstance(enc.mu, nn.Module)
        model.eval()
        assert torch.equal(model(x), model.decoder(mu))
        model.train()
        assert not torch.allclose(model(x), model(x))  # reparameterised samples


def test_leaky_flag():
    torch.manual_seed(0)
    enc = EncoderBurgess((1, 32, 32), 3)
    leaky = EncoderBurgess((1, 32, 32), 3, leaky=True)
    leaky.load_state_dict(enc.state_dict(), strict=True)
    x = torch.rand(4, 1, 32, 32)
    with torch.no_grad():
        h = x
        for conv in (leaky.conv1, leaky.conv2, leaky.conv3):
            h = F.leaky_relu(conv(h), 0.1)
        h = F.leaky_relu(leaky.lin2(F.leaky_relu(leaky.lin1(h.flatten(1)), 0.1)), 0.1)
        assert torch.allclose(leaky(x), leaky.mu_logvar_gen(h)[:, 0::2], atol=1e-6)
        assert not torch.allclose(leaky(x), enc(x))
        enc.leaky = True
        assert torch.equal(enc(x), leaky(x))


def _tiny():
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(4, 1, 2, 2, generator=g) > 0.5).float()
    recon = torch.rand(4, 1, 2, 2, generator=g) * 0.9 + 0.05
    mu, logvar = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g) * 0.5
    z = mu + torch.exp(0.5 * logvar) * torch.randn(4, 3, generator=g)
    return x, recon, mu, logvar, z


def test_beta_vae_loss_by_hand():
    x, recon, mu, logvar, z = _tiny()
    loss, comps = BetaVAELoss(beta=5)(x, recon, mu, logvar, z)
    bce = -(x * recon.log() + (1 - x) * (1 - recon).log()).sum() / 4
    kl = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(1).mean()
    kl_hand = sum(0.5 * (-1 - logvar[:, j] + mu[:, j] ** 2 + logvar[:, j].exp()).mean() for j in range(3))
    assert torch.allclose(comps["rec"], bce) and torch.allclose(comps["kl"], kl) and torch.allclose(kl, kl_hand)
    assert torch.allclose(loss, bce + 5 * kl)
    loss_g, comps_g = BetaVAELoss(beta=1, rec_dist="gaussian")(x, recon, mu, logvar, z)
    assert torch.allclose(comps_g["rec"], ((recon - x) ** 2).sum() / 4)
    with pytest.raises(ValueError, match="bernoulli, gaussian"):
        BetaVAELoss(rec_dist="laplace")


def _brute_force_tc(z, mu, logvar, log_w=None):
    """Loops over examples i, k and units j with torch.distributions (no shared code with the loss)."""
    b, d = z.shape
    sd = (0.5 * logvar).exp()
    log_q_zCx = torch.stack([Normal(mu[i], sd[i]).log_prob(z[i]).sum() for i in range(b)])
    log_pz = torch.stack([Normal(0.0, 1.0).log_prob(z[i]).sum() for i in range(b)])
    log_qz, log_prod = [], []
    for i in range(b):
        w = [0.0] * b if log_w is None else [log_w[i, k] for k in range(b)]
        log_qz.append(torch.logsumexp(torch.stack([Normal(mu[k], sd[k]).log_prob(z[i]).sum() + w[k] for k in range(b)]), 0))
        log_prod.append(sum(torch.logsumexp(torch.stack([Normal(mu[k, j], sd[k, j]).log_prob(z[i, j]) + w[k]
                                                         for k in range(b)]), 0) for j in range(d)))
    log_qz, log_prod = torch.stack(log_qz), torch.stack(log_prod)
    return {"mi": (log_q_zCx - log_qz).mean(), "tc": (log_qz - log_prod).mean(),
            "dw_kl": (log_prod - log_pz).mean(), "elbo_kl": (log_q_zCx - log_pz).mean()}


def test_tcvae_mws_against_brute_force_and_identity():
    x, recon, mu, logvar, z = _tiny()
    loss_f = BetaTCVAELoss(n_data=1000, alpha=1.0, beta=5.0, gamma=1.0)
    loss, c = loss_f(x, recon, mu, logvar, z)
    ref = _brute_force_tc(z, mu, logvar)
    for k in ("mi", "tc", "dw_kl"):
        assert torch.allclose(c[k], ref[k], atol=1e-5), k
    assert torch.allclose(c["mi"] + c["tc"] + c["dw_kl"], ref["elbo_kl"], atol=1e-5)
    assert torch.allclose(loss, c["rec"] + c["mi"] + 5 * c["tc"] + c["dw_kl"], atol=1e-5)
    # with β = 1 the TC loss equals rec + E[log q(z|x) − log p(z)] (a one-sample ELBO)
    loss1, _ = BetaTCVAELoss(n_data=1000, beta=1.0)(x, recon, mu, logvar, z)
    assert torch.allclose(loss1, c["rec"] + ref["elbo_kl"], atol=1e-5)


def test_tcvae_mss_differs_and_adds_up():
    x, recon, mu, logvar, z = _tiny()
    n = 1000
    w = log_importance_weight_matrix(4, n)
    assert torch.allclose(w.exp().sum(1), torch.ones(4)) and torch.allclose(w.diagonal().exp(), torch.full((4,), 1 / n))
    _, mws = BetaTCVAELoss(n_data=n)(x, recon, mu, logvar, z)
    _, mss = BetaTCVAELoss(n_data=n, is_mss=True)(x, recon, mu, logvar, z)
    ref = _brute_force_tc(z, mu, logvar, log_w=w)
    for k in ("mi", "tc", "dw_kl"):
        assert torch.allclose(mss[k], ref[k], atol=1e-5), k
    assert not torch.allclose(mss["mi"], mws["mi"], atol=1e-3)
    assert torch.allclose(mss["mi"] + mss["tc"] + mss["dw_kl"], ref["elbo_kl"], atol=1e-5)


def test_vae_loss_stores_components():
    torch.manual_seed(0)
    model = build_model("vae", loss="tc", beta=5, n_data=100)
    loss = model.loss((torch.rand(6, 1, 32, 32), None))
    c = model.last_loss_components
    assert set(c) == {"rec", "mi", "tc", "dw_kl", "kl"}
    assert torch.allclose(loss.detach(), c["rec"] + c["mi"] + 5 * c["tc"] + c["dw_kl"], atol=1e-4)


# ----------------------------------------------------------------------------------------- SimCLR
def test_nt_xent_against_brute_force():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    total = 0.0
    for i in range(6):
        pos = (i + 3) % 6
        num = torch.exp(z[i] @ z[pos] / 0.5)
        den = sum(torch.exp(z[i] @ z[k] / 0.5) for k in range(6) if k != i)
        total += -torch.log(num / den)
    assert torch.allclose(nt_xent(z1, z2, 0.5), total / 6, atol=1e-6)


def test_simclr_augment():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 32, 32, generator=g)
    ident = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, gray_p=0.0)
    assert torch.allclose(simclr_augment(x, **ident), x, atol=1e-5)
    assert torch.allclose(simclr_augment(x, **{**ident, "flip_p": 1.0}), x.flip(-1), atol=1e-5)
    gray = simclr_augment(x, **{**ident, "gray_p": 1.0})
    assert torch.allclose(gray[:, 0], gray[:, 1]) and torch.allclose(gray[:, 0], gray[:, 2])
    # zero-strength jitter is the identity too
    assert torch.allclose(simclr_augment(x, **{**ident, "jitter_p": 1.0, "jitter": (0, 0, 0, 0)}), x, atol=1e-5)
    a = simclr_augment(x, torch.Generator().manual_seed(1))
    b = simclr_augment(x, torch.Generator().manual_seed(1))
    c = simclr_augment(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    # per-image parameters: the same image repeated gets different views
    rep = simclr_augment(x[:1].expand(8, -1, -1, -1), torch.Generator().manual_seed(0))
    assert not torch.allclose(rep[0], rep[1])
