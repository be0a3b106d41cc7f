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


def _rows_both_heads(soft, logit):
    """Classifier rows for both heads: ``soft`` / ``logit`` map method -> mean."""
    rows = []
    for head, vals in (("softmax", soft), ("logits", logit)):
        for m, v in vals.items():
            rows.append(("supervised", f"classifier ({head})", m, v, 0, 5, 0.02))
    return rows


def test_verdicts():
    rows = _rows_both_heads(
        {"IG": 0.50, "Saliency": 0.40, "GradientSHAP": 0.90, "GradientSHAP (authors' pairing)": 0.30},
        {"IG": 0.434, "Saliency": 0.176, "GradientSHAP": 0.95, "GradientSHAP (authors' pairing)": 0.337})
    rows += [("unsupervised", "denoising AE", "IG", 0.60, 0, 5, 0.05),
             ("unsupervised", "denoising AE", "Saliency", 0.68, 0, 5, 0.05),
             ("unsupervised", "denoising AE", "GradientSHAP (authors' pairing)", 0.1, 0, 5, 0.0)]
    vs = E.verdicts(_exp(), _summary(rows), n_images=10000)
    got = [(v.model, v.quantity.split(", ")[-1], v.verdict) for v in vs]
    assert got == [("classifier (softmax)", "IG", "holds"),                  # |0.066| ≤ 0.129
                   ("classifier (softmax)", "GradientSHAP (authors' pairing)", "holds"),
                   ("classifier (softmax)", "Saliency", "does not hold"),    # 0.224 > 0.129
                   # logits rows: FACT's qualitative reading, never FACT's numbers (which equal these means here)
                   ("classifier (logits)", "IG", "holds"),
                   ("classifier (logits)", "Saliency", "holds"),
                   ("classifier (logits)", "GradientSHAP", "does not hold"),
                   ("denoising AE", "IG", "holds"),
                   ("denoising AE", "Saliency", "does not hold")]
    assert all("vs softmax" in v.quantity for v in vs[:3]) and all("vs logits" in v.quantity for v in vs[3:6])
    assert "with the corrected pairing 0.900" in vs[1].ours and vs[1].anchor == "0.337 ± 0.015"
    assert "logits head (not comparable with FACT) 0.337" in vs[1].ours
    assert "softmax full model" in vs[0].criterion and "60k" not in vs[0].criterion
    assert vs[3].anchor == "agree only moderately" and "softmax" in vs[3].anchor_source
    assert "10,000 test images" in vs[0].ours and "notebook cell 13" in vs[0].anchor_source
    cifar = E.verdicts(_exp("cifar10"), _summary(rows), n_images=100)
    assert [v.verdict for v in cifar[:3]] == ["inconclusive"] * 3 and "MNIST numbers" in cifar[0].criterion


def test_single_run_verdicts_give_no_interval_and_no_partial_reading():
    rows = [("supervised", f"classifier ({h})", m, v, np.nan, 1, 0.0)
            for h, v in (("softmax", 0.43), ("logits", 0.2)) for m in ("IG", "GradientSHAP (authors' pairing)")]
    rows += [("unsupervised", "denoising AE", "IG", 0.6, np.nan, 1, 0.0)]
    vs = E.verdicts(_exp(), _summary(rows), n_images=10)
    assert all("± 0.000" not in v.ours and "1 run: no interval over runs" in v.ours for v in vs)
    fact = [v for v in vs if v.anchor_source == E.FACT_SOURCE]
    assert [v.verdict for v in fact] == ["holds", "holds"]          # FACT's interval + tolerance, our face value
    partial = [v for v in vs if v.anchor_source != E.FACT_SOURCE]
    assert len(partial) == 2 and {v.verdict for v in partial} == {"inconclusive"}  # the authors' pairing: FACT only
    assert all("at face value: holds" in v.ours for v in partial)   # 0.2 and 0.6 < PARTIAL
    # two runs: the interval is back and the partial reading applies
    two = [r[:4] + (0.01, 2, 0.01) for r in rows]
    vs2 = E.verdicts(_exp(), _summary(two), n_images=10)
    assert "0.430 ± 0.010" in vs2[0].ours and {v.verdict for v in vs2} == {"holds"}


def test_fact_is_held_against_the_softmax_head_only():
    # logits means far from FACT, softmax means on FACT: every FACT comparison holds, whatever the logits give
    rows = _rows_both_heads({"IG": 0.434, "Saliency": 0.176, "GradientSHAP (authors' pairing)": 0.337},
                            {"IG": 0.9, "Saliency": 0.9, "GradientSHAP (authors' pairing)": 0.9})
    vs = E.verdicts(_exp(), _summary(rows), n_images=10)
    fact = [v for v in vs if v.anchor_source == E.FACT_SOURCE]
    assert [v.model for v in fact] == ["classifier (softmax)"] * 3 and {v.verdict for v in fact} == {"holds"}
    # and the other way round: softmax far, logits on FACT → FACT's comparisons fail
    rows = _rows_both_heads({"IG": 0.9, "Saliency": 0.9, "GradientSHAP (authors' pairing)": 0.9},
                            {"IG": 0.434, "Saliency": 0.176, "GradientSHAP (authors' pairing)": 0.337})
    fact = [v for v in E.verdicts(_exp(), _summary(rows), n_images=10) if v.anchor_source == E.FACT_SOURCE]
    assert {v.verdict for v in fact} == {"does not hold"}


def test_softmax_head_is_the_authors_auxiliary_function():
    torch.manual_seed(0)
    W = torch.randn(2, 9)
    A = torch.randn(3, 2)
    model = TwoPart(W, A)
    x = torch.rand(4, 1, 3, 3) + 0.1
    fulls = E.full_models(model, "classifier")
    assert list(fulls) == ["logits", "softmax"] and fulls["logits"] is model
    sm = fulls["softmax"]
    torch.testing.assert_close(sm(x), torch.softmax(model(x), dim=1))
    assert sm.encoder is model.encoder and list(E.full_models(model, "denoising")) == ["reconstruction"]
    # Saliency of <softmax(x), softmax(x~)> at x~ = x: |J_f(x)ᵀ softmax(x)| with f = softmax ∘ head ∘ encoder
    res = E.compare_heads(_exp(), model.encoder, fulls, x, None, run=0, batch_size=2, show_as_published=False)
    for i in range(len(x)):
        xi = x[i:i + 1].clone().requires_grad_(True)
        p = sm(xi)
        g = torch.autograd.grad((p * p.detach()).sum(), xi)[0].abs()
        enc = E.attribution(_exp(), model.encoder, x[i:i + 1], None, "saliency", run=0)
        torch.testing.assert_close(res["softmax"]["saliency"][i:i + 1], E.per_image_correlation(enc, g, x[i:i + 1]))
    # the two heads differ (the softmax is not an isometry of the logits)
    assert not torch.allclose(res["softmax"]["saliency"], res["logits"]["saliency"])
    # κ of the softmax head is taken through lin_output ∘ softmax
    assert isinstance(E._head(sm), nn.Sequential)


def test_run_all_gives_both_heads_for_the_classifier():
    torch.manual_seed(0)
    clf = TwoPart(torch.randn(2, 9), torch.randn(3, 2))
    ae = TwoPart(torch.randn(2, 9), torch.randn(9, 2))
    ae.decoder = ae.lin_output
    x = torch.rand(5, 1, 3, 3) + 0.1
    df = E.run_all(_exp(), {(0, "classifier"): (clf, {}), (0, "denoising"): (ae, {})}, 1, x, None, batch_size=5,
                   show_as_published=False, kappa_images=5)
    assert sorted(set(df.model)) == ["classifier (logits)", "classifier (softmax)", "denoising AE"]
    assert (df.groupby("model").size() == 3).all() and set(df["head"]) == {"logits", "softmax", "reconstruction"}


def test_bar_table_marks_pairings():
    rows = [("supervised", "classifier (softmax)", "IG", 0.5, 0, 5, 0.02),
            ("supervised", "classifier (softmax)", "GradientSHAP (authors' pairing)", 0.3, 0, 5, 0.02)]
    tab = E.bar_table(_summary(rows))
    assert "FACT classifier (softmax)" in set(tab.series)
    ours = tab[tab.series == "classifier (softmax)"]
    assert ours.method_group.tolist() == ["IG", "GradientSHAP"]
    assert ours.pairing.tolist() == ["corrected", "authors' pairing"]
    assert len(tab) == 2 + 3


def test_head_table_puts_facts_softmax_numbers_beside_both_heads():
    rows = _rows_both_heads({"IG": 0.6, "GradientSHAP (authors' pairing)": 0.3},
                            {"IG": 0.9, "GradientSHAP (authors' pairing)": 0.8})
    t = E.head_table(_summary(rows))
    assert list(t.columns) == ["logits", "softmax", "FACT (softmax)"]
    assert t.loc["IG"].tolist() == pytest.approx([0.9, 0.6, 0.4338])
    assert t.loc["GradientSHAP (authors' pairing)", "FACT (softmax)"] == pytest.approx(0.3376)
