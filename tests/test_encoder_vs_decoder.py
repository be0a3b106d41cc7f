"""Encoder-vs-full-model extension: exact answers on linear models and hand-made numbers."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from lfxai_utils.experiments import encoder_vs_decoder as E

CPU = torch.device("cpu")


def _exp(dataset="mnist"):
    return SimpleNamespace(seed=0, device=CPU, progress=False, dataset=dataset)


class Lin(nn.Module):
    def __init__(self, W):
        super().__init__()
        self.W = nn.Parameter(torch.as_tensor(W, dtype=torch.float32).clone())

    def forward(self, x):
        return x.flatten(1) @ self.W.T


class TwoPart(nn.Module):
    """encoder (linear, bias-free) followed by a linear bias-free head: the full model is head(encoder(x))."""

    def __init__(self, W, A):
        super().__init__()
        self.encoder, self.lin_output = Lin(W), Lin(A)

    def forward(self, x):
        return self.lin_output(self.encoder(x))


def test_validate_and_checkpoint_names():
    assert E.validate(5, None, "denoising, inpainting") == ["denoising", "inpainting"]
    assert E.validate(5, 100, ["reconstruction"]) == ["reconstruction"]
    with pytest.raises(ValueError, match=r"unknown ae_tasks entry 'denoise'; valid values: 'reconstruction'"):
        E.validate(5, None, ["denoise"])
    with pytest.raises(ValueError, match="n_runs must be a positive integer"):
        E.validate(0, None, ["denoising"])
    names = E.required_checkpoints("mnist")
    assert names == [f"claim2-pretext_mnist_{m}_run{r}" for r in range(5) for m in ("classifier", "denoising-ae")]
    assert len(E.required_checkpoints("cifar10", None, 2, ("reconstruction", "inpainting"))) == 6


def test_normalise_and_masked_per_image_correlation():
    a = torch.tensor([[-1.0, 2.0, 3.0, 0.0]])
    n = E.normalise(a)
    torch.testing.assert_close(n, a.abs().double() / a.abs().double().std())
    enc = torch.tensor([[1.0, -2.0, 3.0, 0.0], [1.0, 2.0, 3.0, 4.0]])
    full = torch.tensor([[2.0, 4.0, 6.0, 100.0], [4.0, 3.0, 2.0, 1.0]])   # image 0: 100 sits on a black pixel
    x = torch.tensor([[0.5, 0.1, 0.9, 0.0], [1.0, 1.0, 1.0, 1.0]])
    r = E.per_image_correlation(enc, full, x)
    torch.testing.assert_close(r, torch.tensor([1.0, -1.0], dtype=torch.float64))
    # the global normalisation is cosmetic: scaling one array changes nothing
    torch.testing.assert_close(E.per_image_correlation(enc * 7, full, x), r)


def test_isometric_bias_free_head_gives_identical_maps_and_a_distorting_one_does_not():
    torch.manual_seed(0)
    W = torch.randn(2, 9)
    x = torch.rand(6, 1, 3, 3) + 0.1                  # no black pixels
    Q = torch.linalg.qr(torch.randn(2, 2))[0]
    iso = TwoPart(W, 3.0 * Q)                         # ⟨A z, A z'⟩ = 9 ⟨z, z'⟩
    res = E.compare_model(_exp(), iso, x, None, run=0, batch_size=3)
    assert set(res) == {"integrated_gradients", "gradient_shap", "saliency", "gradient_shap_as_published"}
    for key, r in res.items():
        torch.testing.assert_close(r, torch.ones(6, dtype=torch.float64), rtol=0, atol=1e-5, msg=key)
    bent = TwoPart(W, torch.diag(torch.tensor([1.0, 10.0])))
    r = E.compare_model(_exp(), bent, x, None, run=0, batch_size=3, show_as_published=False)["saliency"]
    assert float(r.min()) < 0.999
    # Saliency closed form: |Wᵀ AᵀA W x| for the full model vs |Wᵀ W x| for the encoder
    xf = x.flatten(1)
    A = torch.diag(torch.tensor([1.0, 10.0]))
    enc = (xf @ W.T @ W).abs()
    full = (xf @ W.T @ A.T @ A @ W).abs()
    torch.testing.assert_close(r, E.per_image_correlation(enc, full, x))


def test_condition_number_of_the_head():
    A = torch.diag(torch.tensor([1.0, 10.0, 2.0]))
    k = E.decoder_condition(Lin(A), torch.randn(4, 3))
    torch.testing.assert_close(k, torch.full((4,), 10.0, dtype=torch.float64))
    head = nn.Sequential(nn.Linear(2, 3), nn.Tanh())
    z = torch.randn(5, 2)
    J = torch.stack([torch.autograd.functional.jacobian(lambda v: head(v[None])[0], zi) for zi in z])
    s = torch.linalg.svdvals(J.double())
    torch.testing.assert_close(E.decoder_condition(head, z), s[:, 0] / s[:, -1])
    assert E._head(TwoPart(torch.eye(2), torch.eye(2))) is not None
    with pytest.raises(ValueError, match="neither a .decoder nor a .lin_output"):
        E._head(nn.Linear(2, 2))


def test_summary_convention_reproduces_facts_published_numbers():
    f = E.fact_summary().set_index("method")
    assert round(f.loc["IG", "mean"], 3) == 0.434 and round(f.loc["IG", "ci95"], 3) == 0.029
    assert round(f.loc["Saliency", "mean"], 3) == 0.176 and round(f.loc["Saliency", "ci95"], 3) == 0.029
    g = f.loc["GradientSHAP (authors' pairing)"]
    assert round(g["mean"], 3) == 0.338 and round(g["ci95"], 3) == 0.015  # FACT prints 0.337 (0.3376 truncated)
    df = pd.DataFrame({"side": "supervised", "model": "classifier", "method": "IG", "run": [0, 1, 2],
                       "mean_r": [0.1, 0.2, 0.6]})
    s = E.summarise(df).iloc[0]
    assert s["mean"] == pytest.approx(0.3) and s["ci95"] == pytest.approx(1.96 * np.std([0.1, 0.2, 0.6], ddof=1) / 3 ** 0.5)


def _summary(rows):
    return pd.DataFrame(rows, columns=["side", "model", "method", "mean", "std", "count", "ci95"])


def test_verdicts():
    rows = [("supervised", "classifier", "IG", 0.50, 0, 5, 0.02),                       # |0.066| ≤ 0.129: holds
            ("supervised", "classifier", "Saliency", 0.40, 0, 5, 0.02),                 # 0.224 > 0.129
            ("supervised", "classifier", "GradientSHAP", 0.90, 0, 5, 0.02),             # not the one judged
            ("supervised", "classifier", "GradientSHAP (authors' pairing)", 0.30, 0, 5, 0.02),
            ("unsupervised", "denoising AE", "IG", 0.60, 0, 5, 0.05),
            ("unsupervised", "denoising AE", "Saliency", 0.68, 0, 5, 0.05),
            ("unsupervised", "denoising AE", "GradientSHAP (authors' pairing)", 0.1, 0, 5, 0.0)]
    vs = E.verdicts(_exp(), _summary(rows), n_images=10000)
    got = [(v.model, v.quantity.split(", ")[-1], v.verdict) for v in vs]
    assert got == [("classifier (pretext page)", "IG", "holds"),
                   ("classifier (pretext page)", "GradientSHAP (authors' pairing)", "holds"),
                   ("classifier (pretext page)", "Saliency", "does not hold"),
                   ("denoising AE", "IG", "holds"),
                   ("denoising AE", "Saliency", "does not hold")]
    assert "with the corrected pairing 0.900" in vs[1].ours and vs[1].anchor == "0.337 ± 0.015"
    assert "10,000 test images" in vs[0].ours and "notebook cell 13" in vs[0].anchor_source
    cifar = E.verdicts(_exp("cifar10"), _summary(rows), n_images=100)
    assert [v.verdict for v in cifar[:3]] == ["inconclusive"] * 3 and "MNIST numbers" in cifar[0].criterion


def test_bar_table_marks_pairings():
    rows = [("supervised", "classifier", "IG", 0.5, 0, 5, 0.02),
            ("supervised", "classifier", "GradientSHAP (authors' pairing)", 0.3, 0, 5, 0.02)]
    tab = E.bar_table(_summary(rows))
    ours = tab[tab.series == "classifier"]
    assert ours.method_group.tolist() == ["IG", "GradientSHAP"]
    assert ours.pairing.tolist() == ["corrected", "authors' pairing"]
    assert len(tab) == 2 + 3
