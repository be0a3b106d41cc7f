"""Claim 3 module (lfxai_utils.experiments.disentanglement): grid, names, seeds, exact saliency, criterion, figures."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from lfxai_utils.experiments import common
from lfxai_utils.experiments import disentanglement as X
from lfxai_utils.experiments import feature_visualisation as V
from lfxai_utils.fixtures import write_fixture
from lfxai_utils.models import build_model

CPU = SimpleNamespace(device=torch.device("cpu"), progress=False)


class Linear(nn.Module):
    """f(x) = W · flatten(x). GradientSHAP with a zero baseline is exact on it: a(f_j, x) = x ⊙ w_j."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x):
        return x.flatten(1) @ self.w.T


# ------------------------------------------------------------------------------------------ grid, names, seeds
def test_checkpoint_names_and_required_checkpoints():
    assert X.checkpoint("mnist", "tc", 5, 2) == "claim3-disvae_mnist_tc-vae_beta5_run2"
    assert X.checkpoint("dsprites", "beta", 10.0, 0) == "claim3-disvae_dsprites_beta-vae_beta10_run0"
    names = X.grid_checkpoints("mnist")
    assert len(names) == 2 * 3 * 5 == len(set(names))
    three = X.grid_checkpoints("cifar100", n_runs=3)
    assert len(three) == 18 and "claim3-disvae_cifar100_tc-vae_beta10_run2" in three
    assert "claim3-disvae_cifar100_tc-vae_beta10_run3" not in three
    # papermill's -p passes lists as strings
    assert X.grid_checkpoints("mnist", betas="[1, 5]", losses="beta", n_runs=1) == [
        "claim3-disvae_mnist_beta-vae_beta1_run0", "claim3-disvae_mnist_beta-vae_beta5_run0"]
    # the page needs run 0 and takes the further runs that are shipped, up to n_runs: those are candidates only
    run0 = [n for n in names if n.endswith("_run0")]
    assert X.required_checkpoints("mnist") == X.required_checkpoints("mnist", n_runs=3) == run0 and len(run0) == 6
    assert X.candidate_checkpoints("mnist", n_runs=2) == names
    assert X.candidate_checkpoints("mnist", n_runs=7)[-1] == "claim3-disvae_mnist_tc-vae_beta10_run6"
    with pytest.raises(ValueError, match="n_runs must be a positive integer"):
        X.required_checkpoints("mnist", n_runs=0)
    assert [(p.loss, p.beta, p.run) for p in X.grid("10,1", ["tc"], 2)] == [
        ("tc", 1.0, 0), ("tc", 1.0, 1), ("tc", 10.0, 0), ("tc", 10.0, 1)]
    assert [(p.loss, p.beta, p.run) for p in X.grid([5], ["beta", "tc"], [0, 3])] == [   # the runs a page selected
        ("beta", 5.0, 0), ("beta", 5.0, 3), ("tc", 5.0, 0), ("tc", 5.0, 3)]
    assert X.data_requirements("mnist") == [("mnist", {"image_size": 32})]
    assert X.data_requirements("dsprites") == [("dsprites", {})]


@pytest.mark.parametrize("kw, match", [
    (dict(losses=["beta", "kl"]), "'beta', 'tc'"),
    (dict(betas=[1, 0]), "positive"),
    (dict(betas=[5, 5]), "distinct"),
    (dict(runs=0), "positive integer"),
    (dict(runs=1.5), "positive integer"),
    (dict(runs=[0, 0]), "distinct run numbers"),
    (dict(runs=[]), "distinct run numbers"),
    (dict(runs=[-1]), "distinct run numbers"),
])
def test_bad_grid_parameters_name_the_valid_values(kw, match):
    with pytest.raises(ValueError, match=match):
        X.grid(**kw)


def test_bad_dataset_names_the_valid_values():
    with pytest.raises(ValueError, match="'mnist', 'dsprites', 'cifar10', 'cifar100'"):
        X.checkpoint("ecg5000", "beta", 1, 0)


def test_model_seed_formula_and_distinct_over_the_grid():
    assert X.model_seed(1, "tc", 5, 2) == 1 + 2000 + 500 + 50
    assert X.model_seed(1, "beta", 1, 0) == 11
    seeds = [X.model_seed(1, p.loss, p.beta, p.run) for p in X.grid(runs=5)]
    assert len(set(seeds)) == 30


def test_vae_specs_follow_the_paper():
    table = {"mnist": ([1, 32, 32], 3, 300, "bernoulli", 463_783),      # §1.1: 464k
             "dsprites": ([1, 64, 64], 6, 500, "bernoulli", 498_925),   # 499k
             "cifar10": ([3, 32, 32], 16, 300, "gaussian", 475_843),    # 476k
             "cifar100": ([3, 32, 32], 16, 300, "gaussian", 475_843)}
    for ds, (size, d, batch, rec, n_params) in table.items():
        spec = X.vae_spec(ds, "tc", 5)
        assert spec.arch_kwargs["img_size"] == size and spec.arch_kwargs["latent_dim"] == d
        assert spec.arch_kwargs["rec_dist"] == rec and spec.arch_kwargs["beta"] == 5.0
        assert (spec.batch_size, spec.n_epochs, spec.patience, spec.lr) == (batch, 100, 10, 1e-3)
        model = build_model(spec.arch, **spec.arch_kwargs)
        assert sum(p.numel() for p in model.parameters()) == n_params
        assert type(model.loss_f).__name__ == "BetaTCVAELoss" and model.loss_f.beta == 5.0


# ------------------------------------------------------------------------------------------ saliency and metrics
def test_unit_saliency_and_metrics_are_exact_on_a_linear_encoder():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 2 * 4 * 4, generator=g)
    x = torch.rand(5, 2, 4, 4, generator=g)
    enc = Linear(w)
    S = X.unit_saliency(CPU, enc, x, seed=0, batch_size=2)
    z = enc(x).detach()                                                 # (5, 3)
    expected = (z[:, :, None, None, None] * x[:, None] * w.reshape(1, 3, 2, 4, 4)).mean(2).abs()
    torch.testing.assert_close(S, expected, atol=1e-5, rtol=1e-5)
    m = X.model_metrics(S)
    units = expected.transpose(0, 1).reshape(3, -1).double().numpy()
    c = np.corrcoef(units)
    assert m["pearson"] == pytest.approx(c[~np.eye(3, dtype=bool)].mean(), abs=1e-5)
    assert set(m) == set(X.METRICS)

    vaes = {X.GridPoint("beta", 1.0, 0): (SimpleNamespace(encoder=enc), {"name": "a", "training": {"epochs_run": 3}}),
            X.GridPoint("tc", 10.0, 1): (SimpleNamespace(encoder=enc), {"name": "b", "training": {"epochs_run": 4}})}
    exp = SimpleNamespace(device=torch.device("cpu"), progress=False, seed=1, dataset="mnist")
    df = X.metrics_table(exp, vaes, x, batch_size=3)
    assert list(df["checkpoint"]) == ["a", "b"] and list(df["seed"]) == [11, 1 + 1000 + 500 + 100]
    assert list(df["loss"]) == ["β-VAE", "β-TCVAE"] and list(df["n_explained"]) == [5, 5]
    assert df["pearson"].tolist() == pytest.approx([m["pearson"]] * 2, abs=1e-5)
    var = z.double().var(0)
    assert df["active_latents"].tolist() == [int((var > 0.01).sum())] * 2
    assert df["latent_variances"].iloc[0] == " ".join(f"{v:.3g}" for v in var.tolist())


def test_latent_variance_and_units_in_use():
    w = torch.tensor([[1.0, 0.0], [0.0, 0.1], [0.0, 0.0]])   # unit 1 varies, unit 2 barely, unit 3 is constant
    x = torch.tensor([[0.0, 0.0], [0.5, 0.5], [1.0, 1.0]]).reshape(3, 1, 1, 2)
    var = X.latent_variance(CPU, Linear(w), x, batch_size=2)
    torch.testing.assert_close(var, torch.tensor([0.25, 0.0025, 0.0], dtype=torch.float64))
    assert X.active_latents(var) == 1 and X.active_latents(var, threshold=0.001) == 2


def test_spearman_is_skipped_above_the_size_limit(monkeypatch):
    S = torch.rand(4, 3, 5, 5, generator=torch.Generator().manual_seed(1))
    assert np.isfinite(X.model_metrics(S)["spearman"])
    monkeypatch.setattr(X, "SPEARMAN_MAX_ELEMENTS", S.numel() - 1)
    m = X.model_metrics(S)
    assert np.isnan(m["spearman"]) and np.isfinite(m["pearson"]) and np.isfinite(m["entropy"])


def test_plot_indices_take_one_image_per_class_in_turn():
    y = torch.tensor([3, 0, 0, 1, 2, 1, 3, 2])
    assert X.plot_indices(y, 4).tolist() == [1, 3, 4, 0]
    assert X.plot_indices(y, 6).tolist() == [1, 3, 4, 0, 2, 5]
    assert X.plot_indices(torch.tensor([0, 0, 1]), 3).tolist() == [0, 2, 1]
    assert X.plot_indices(torch.tensor([0, 0, 0, 1]), 4).tolist() == [0, 1, 2, 3]   # class 1 runs out: first n


# ------------------------------------------------------------------------------------------ criterion and verdict
def _values(pairs):
    return pd.DataFrame([{"beta": b, "value": v} for b, vs in pairs for v in vs])


def test_trend_by_hand():
    t = X.trend(_values([(1, [0.2, 0.4, 0.3]), (10, [0.1, 0.3, 0.2])]))
    assert t["means"] == pytest.approx({1: 0.3, 10: 0.2})
    assert t["pooled_std"] == pytest.approx(0.1)                     # both sample variances are 0.01
    assert t["drop"] == pytest.approx(0.1)
    # ranks of the values: β=1 → (2.5, 6, 4.5), β=10 → (1, 4.5, 2.5) (rank sum 8). Of the C(6, 3) = 20 ways to
    # give three of the ranks {1, 2.5, 2.5, 4.5, 4.5, 6} to β=10, 5 have a sum ≤ 8 ({1, 2.5, 2.5} and the four
    # {1, 2.5, 4.5}): p = 5/20, not significant although ρ < 0
    assert t["spearman_rho"] < 0 and t["spearman_p_decrease"] == pytest.approx(5 / 20)
    assert t["holds"] is None and "not significant" in t["reason"]
    assert t["test"] == "exact over 20 arrangements"                # C(6, 3)
    up = X.trend(_values([(1, [0.1, 0.2, 0.3]), (5, [0.2, 0.3, 0.4]), (10, [0.35, 0.25, 0.45])]))
    assert up["spearman_rho"] > 0 and up["holds"] is True
    down = X.trend(_values([(1, [0.4, 0.5, 0.45]), (5, [0.3, 0.35, 0.32]), (10, [0.1, 0.2, 0.15])]))
    # perfectly separated decreasing cells: the observed assignment is the single most extreme of the
    # 9! / (3!·3!·3!) = 1,680 distinct ones
    assert down["spearman_p_decrease"] == pytest.approx(1 / 1680)
    assert down["holds"] is False and "significant decrease" in down["reason"]
    # two runs per cell: inconclusive whatever the ranks say
    few = X.trend(_values([(1, [0.4, 0.5]), (10, [0.1, 0.2])]))
    assert few["holds"] is None and "fewer than 3 runs" in few["reason"]
    assert X.trend(_values([(1, [0.3]), (10, [0.1])]))["holds"] is None


def test_permutation_test_is_exact_and_matches_brute_force():
    from itertools import permutations

    from scipy.stats import spearmanr

    beta = [1, 1, 5, 5, 10, 10]
    value = [0.30, 0.10, 0.25, 0.05, 0.20, 0.15]
    t = X.permutation_test_decrease(beta, value)
    rho = spearmanr(beta, value).statistic
    assert t["rho"] == pytest.approx(rho)
    null = [spearmanr([beta[i] for i in p], value).statistic for p in permutations(range(6))]
    assert t["p_decrease"] == pytest.approx(np.mean(np.asarray(null) <= rho + 1e-12))
    assert t["how"] == "exact over 90 arrangements"                 # 6! / (2!·2!·2!)
    assert len(X._label_arrangements([2, 2, 2])) == 90 == X._n_arrangements([2, 2, 2])
    big = X.permutation_test_decrease([1] * 5 + [5] * 5 + [10] * 5, np.linspace(1, 0, 15))
    assert big["how"].startswith("Monte Carlo") and big["p_decrease"] < 1e-3


def test_anchor_trend_reports_fact_numbers_without_a_test():
    a = X.anchor_trend("mnist", "beta")
    var = np.array([0.028, 0.027, 0.046]) ** 2 * 5 / 4
    assert a["pooled_std"] == pytest.approx(np.sqrt(var.mean()))
    assert (a["mean_lo"], a["mean_hi"], a["testable"]) == (0.241, 0.240, False)
    assert X.anchor_trend("cifar10", "beta") is None
    assert X.anchor_table("cifar10").empty and "no CIFAR-10" in X.anchor_table("cifar10").attrs["note"]
    assert len(X.anchor_table("cifar100")) == 6


def _df(values: dict[tuple[str, float], list[float]], units=None) -> pd.DataFrame:
    """``units(beta, run) -> latent units in use`` (default: all 3)."""
    rows = []
    for (loss, beta), vs in values.items():
        for r, v in enumerate(vs):
            rows.append({"loss": X.LOSS_LABELS[loss], "loss_key": loss, "beta": float(beta), "run": r,
                         "seed": X.model_seed(1, loss, beta, r), "n_explained": 100, "pearson": v,
                         "spearman": np.nan, "cosine": v / 2, "entropy": 1 - v, "active_units": 1 + v,
                         "active_latents": units(beta, r) if units else 3})
    return pd.DataFrame(rows)


def test_verdicts_per_loss():
    df = _df({("beta", 1): [0.20, 0.24, 0.22], ("beta", 5): [0.25, 0.27, 0.26], ("beta", 10): [0.22, 0.26, 0.30],
              ("tc", 1): [0.40, 0.42, 0.41], ("tc", 5): [0.30, 0.31, 0.32], ("tc", 10): [0.20, 0.22, 0.21]})
    exp = SimpleNamespace(dataset="mnist", seed=1)
    v = {x.model: x for x in X.verdicts(exp, df)}
    assert v["β-VAE (d=3)"].verdict == "holds" and v["β-TCVAE (d=3)"].verdict == "does not hold"
    assert "β=1: 0.220 ± 0.016 [units in use of 3: 3,3,3]" in v["β-VAE (d=3)"].ours
    assert "3 runs, 100 test images" in v["β-VAE (d=3)"].ours and "permutation p" in v["β-VAE (d=3)"].ours
    assert "0.241" in v["β-VAE (d=3)"].anchor and "cannot be applied" in v["β-VAE (d=3)"].anchor
    assert "permutation test" in v["β-VAE (d=3)"].criterion and "pooled" not in v["β-VAE (d=3)"].criterion
    table = X.comparison_table(df, "mnist")
    assert table.iloc[0].tolist() == ["β-VAE", "1", "0.220 ± 0.016 (3 runs)", "3,3,3", "0.241 ± 0.028 (5 runs)"]
    assert X.comparison_table(df, "cifar10")["FACT"].eq("—").all()


def test_one_run_per_cell_shows_no_spread():
    df = _df({("beta", 1): [0.20], ("beta", 5): [0.25], ("beta", 10): [0.30]})
    v = X.verdicts(SimpleNamespace(dataset="mnist", seed=1), df)[0]
    assert "± 0.000" not in v.ours and "β=1: 0.200 [units" in v.ours and "1 run: no spread over runs" in v.ours
    assert v.verdict == "inconclusive"                                  # fewer than MIN_RUNS runs
    assert X.comparison_table(df, "mnist").iloc[0, 2] == "0.200 (1 run)"


def test_collapsed_units_make_the_verdict_inconclusive_and_say_why():
    vals = {("beta", 1): [0.20, 0.24, 0.22], ("beta", 5): [0.25, 0.27, 0.26], ("beta", 10): [0.22, 0.26, 0.30]}
    exp = SimpleNamespace(dataset="mnist", seed=1)
    assert X.verdicts(exp, _df(vals))[0].verdict == "holds"
    v = X.verdicts(exp, _df(vals, units=lambda b, r: 1 if (b == 10 and r == 2) else 3))[0]
    assert v.verdict == "inconclusive"
    assert "1 of 9 VAEs have collapsed latent units (β=10: run(s) 2 use 1 of 3)" in v.ours
    assert "at face value the test gives: holds" in v.ours and "[units in use of 3: 3,3,1]" in v.ours


def test_fewer_than_three_runs_is_inconclusive():
    exp = SimpleNamespace(dataset="mnist", seed=1)
    two = _df({("beta", 1): [0.2, 0.24], ("beta", 10): [0.3, 0.35]})
    v = X.verdicts(exp, two)[0]
    assert v.verdict == "inconclusive" and "fewer than 3 runs" in v.ours
    assert "2 runs: fewer than 3 runs" in X.partial_note(two)
    one = _df({("beta", 1): [0.2], ("beta", 10): [0.1]})
    assert [x.verdict for x in X.verdicts(exp, one)] == ["inconclusive"]
    assert "a single run" in X.partial_note(one)
    three = _df({("beta", 1): [0.2, 0.24, 0.3], ("beta", 10): [0.3, 0.35, 0.4]})
    assert X.partial_note(three) is None


def test_box_figures_show_every_run():
    import matplotlib

    matplotlib.use("Agg")
    df = _df({("beta", 1): [0.20, 0.24, 0.3], ("beta", 10): [0.22, 0.26, 0.1],
              ("tc", 1): [0.40, 0.42, 0.5], ("tc", 10): [0.20, 0.22, 0.6]})
    fig = X.box_figure(df)
    axes = fig.axes
    assert [a.get_title() for a in axes] == [X.METRIC_LABELS[m] for m in (
        "pearson", "cosine", "entropy", "active_units", "active_latents")]   # all-NaN Spearman left out
    for (loss, beta), sub in df.groupby(["loss_key", "beta"]):
        med = sub["pearson"].median()
        assert any(np.allclose(line.get_ydata(), [med, med]) for line in axes[0].lines), (loss, beta)
    dots = np.sort(np.concatenate([c.get_offsets()[:, 1] for c in axes[0].collections]))
    np.testing.assert_allclose(dots, np.sort(df["pearson"].to_numpy()))
    pf = X.box_figure_plotly(df)
    assert len(pf.data) == 5 * 2
    np.testing.assert_allclose(pf.data[0].y, df[df.loss_key == "beta"]["pearson"])


def test_saliency_figure_layout():
    import matplotlib

    matplotlib.use("Agg")
    x = torch.rand(2, 3, 8, 8)
    maps = {1.0: torch.rand(2, 4, 8, 8), 10.0: torch.rand(2, 4, 8, 8)}
    fig = X.saliency_figure(x, maps)
    assert len(fig.axes) == (2 * 2) * (1 + 4)


# ------------------------------------------------------------------------------------------ checkpoints round trip
def test_train_then_inference_and_the_visualisation_page_finds_the_same_checkpoints(tmp_path):
    write_fixture("mnist", tmp_path / "data", n_train=40, n_test=20)
    kw = dict(dataset="mnist", data_dir=str(tmp_path / "data"), checkpoint_dir=str(tmp_path / "ckpt"),
              output_dir=str(tmp_path / "out"), datasets=X.DATASETS, models=X.MODELS, progress=False)
    train = common.setup(X.NOTEBOOK, mode="train", n_epochs=1, **kw)
    splits = train.load_data(**X.load_kwargs("mnist"))
    points = X.grid([1, 10], ["beta"], 1)
    trained = X.get_vaes(train, splits, points)
    assert sorted(p.name[:-3] for p in (tmp_path / "ckpt").glob("*.pt")) == sorted(V.required_checkpoints(
        "mnist", betas=[1, 10]))
    m = trained[points[1]][1]
    assert m["settings"]["seed"] == X.model_seed(1, "beta", 10, 0) and m["settings"]["run"] == 0
    assert m["arch_kwargs"]["beta"] == 10.0 and m["arch_kwargs"]["img_size"] == [1, 32, 32]
    inf = common.setup(X.NOTEBOOK, mode="inference", **kw)
    loaded = X.get_vaes(inf, splits, points)
    for p in points:
        for a, b in zip(trained[p][0].state_dict().values(), loaded[p][0].state_dict().values()):
            assert torch.equal(a, b)
    assert inf.loaded == [X.checkpoint("mnist", "beta", b, 0) for b in (1, 10)]
    with pytest.raises(FileNotFoundError, match="mode train"):
        X.get_vae(inf, splits, X.GridPoint("tc", 1.0, 0))


def test_unit_saliency_does_not_depend_on_the_chunking():
    torch.manual_seed(0)
    enc = build_model("vae", img_size=(1, 32, 32), latent_dim=3).encoder.eval()
    x = torch.rand(7, 1, 32, 32)
    a = X.unit_saliency(CPU, enc, x, seed=4, batch_size=2, chunk_batches=1)
    b = X.unit_saliency(CPU, enc, x, seed=4, batch_size=2, chunk_batches=100)
    c = X.unit_saliency(CPU, enc, x, seed=5, batch_size=2, chunk_batches=100)
    assert a.shape == (7, 3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
