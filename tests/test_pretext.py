"""Claim 2 (pretext-task sensitivity) module logic: exact answers on tiny hand-made cases."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lfxai_utils import examples as ex
from lfxai_utils.data import load_dataset
from lfxai_utils.experiments import common, pretext as P
from lfxai_utils.fixtures import write_fixture
from lfxai_utils.models import build_model

CPU = torch.device("cpu")


def _ns(**kw):
    return SimpleNamespace(**{"seed": 0, "device": CPU, "progress": False, "dataset": "mnist", **kw})


class Linear(nn.Module):
    """``x -> W x.flatten()`` (no bias): label-free attributions have closed forms."""

    def __init__(self, W: torch.Tensor):
        super().__init__()
        self.W = nn.Parameter(W.clone())

    def forward(self, x):
        return x.flatten(1) @ self.W.T


# ------------------------------------------------------------------------------------------ parameters and names
@pytest.mark.parametrize("args, match", [
    (("gradshap", "dknn", 5), r"unknown feature_method 'gradshap'; valid values: 'gradient_shap'"),
    (("saliency", "knn", 5), r"unknown example_method 'knn'; valid values: 'dknn', 'simplex', 'tracin'"),
    (("saliency", "dknn", 0), r"n_runs must be a positive integer"),
    (("saliency", "dknn", 2, 1), r"n_explain must be None"),
])
def test_bad_parameters_name_the_valid_values(args, match):
    with pytest.raises(ValueError, match=match):
        P.validate(*args)


def test_checkpoint_names_seeds_and_specs():
    names = P.required_checkpoints("mnist")
    assert len(names) == 20 and len(set(names)) == 20
    assert names[:4] == ["claim2-pretext_mnist_reconstruction-ae_run0", "claim2-pretext_mnist_denoising-ae_run0",
                         "claim2-pretext_mnist_inpainting-ae_run0", "claim2-pretext_mnist_classifier_run0"]
    assert names[-1] == "claim2-pretext_mnist_classifier_run4"
    assert P.required_checkpoints("cifar100", None, 2, ["classifier"]) == [
        "claim2-pretext_cifar100_classifier_run0", "claim2-pretext_cifar100_classifier_run1"]
    seeds = [P.model_seed(1, r, t) for r in range(5) for t in P.TASKS]
    assert len(set(seeds)) == 20 and [P.model_seed(1, r, "reconstruction") for r in range(5)] == [1, 2, 3, 4, 5]
    assert P.model_seed(1, 2, "classifier") == 303
    s = P.model_spec("cifar100", "classifier", 100, 3)
    assert (s.arch, dict(s.arch_kwargs), s.n_epochs, s.batch_size, s.patience, s.checkpoint_every) == (
        "cifar_classifier", {"latent_dim": 16, "n_classes": 100}, 100, 300, 10, None)
    s = P.model_spec("mnist", "inpainting", 10, 0, tracin=True)
    assert dict(s.arch_kwargs) == {"latent_dim": 4, "pretext": "inpainting"} and s.checkpoint_every == 10
    assert dict(s.identity) == {"experiment": "claim2-pretext", "run": 0}


# ------------------------------------------------------------------------------------------ data
def test_subsets_are_class_balanced_in_unit_range_and_include_first_of_each_class(tmp_path):
    write_fixture("mnist", tmp_path, n_train=128, n_test=64)
    splits = load_dataset("mnist", data_dir=tmp_path, download=False, progress=False)
    x, y, idx = P.subtrain(splits, 50)
    assert torch.bincount(y, minlength=10).tolist() == [5] * 10
    assert 0 <= float(x.min()) and float(x.max()) <= 1 and x.dtype == torch.float32
    torch.testing.assert_close(x, splits.train.tensors(idx)[0])
    xt, yt, tidx = P.explained_set(splits, 20)
    assert torch.bincount(yt, minlength=10).tolist() == [2] * 10 and bool((tidx[1:] > tidx[:-1]).all())
    ytest = splits.test.targets
    firsts = [int(torch.nonzero(ytest == c)[0]) for c in range(10)]
    assert [int(tidx[p]) for p in P.first_of_each_class(yt)] == firsts
    assert len(P.explained_set(splits, None)[0]) == 64 == len(P.explained_set(splits, 1000)[0])


def test_first_of_each_class_by_hand():
    assert P.first_of_each_class(torch.tensor([2, 0, 2, 1, 0, 3]), 10) == [1, 3, 0, 5]
    assert P.first_of_each_class(torch.tensor([2, 0, 2, 1, 0, 3]), 2) == [1, 3]
    assert P.first_of_each_class(torch.tensor([2, 2, 0])) == [2, 0]  # class 1 absent


# ------------------------------------------------------------------------------------------ explanations
def test_feature_importance_closed_forms_for_a_linear_encoder():
    torch.manual_seed(0)
    W = torch.randn(3, 4)
    model = SimpleNamespace(encoder=Linear(W))
    x = torch.rand(5, 1, 2, 2)
    xf = x.flatten(1)
    z = xf @ W.T
    sal = P.feature_importance(_ns(), model, x, None, "saliency")
    torch.testing.assert_close(sal, (z @ W).abs().reshape(x.shape))            # |∇<f(x), W x~>| = |Wᵀ W x|
    ig = P.feature_importance(_ns(), model, x, None, "integrated_gradients")
    torch.testing.assert_close(ig, (xf * (z @ W)).abs().reshape(x.shape), rtol=1e-5, atol=1e-6)  # x ⊙ Wᵀ f(x)
    assert (P.feature_importance(_ns(), model, x, None, "random") >= 0).all()


def test_dknn_example_importance_on_latents():
    torch.manual_seed(0)
    W = torch.randn(2, 4)
    model = nn.Module()
    model.encoder = Linear(W)
    xtr, xte = torch.rand(6, 1, 2, 2), torch.rand(3, 1, 2, 2)
    s = P.example_importance(_ns(), model, "denoising", "dknn", (xtr, None), (xte, None), n_classes=10)
    htr, hte = xtr.flatten(1) @ W.T, xte.flatten(1) @ W.T
    torch.testing.assert_close(s, 1 / ((hte[:, None] - htr[None]) ** 2).sum(-1), rtol=1e-5, atol=0)


def test_packed_classifier_loss_is_the_cross_entropy():
    torch.manual_seed(0)
    m = build_model("mnist_classifier", latent_dim=2, n_classes=10).eval()
    x, y = torch.rand(7, 1, 28, 28), torch.randint(0, 10, (7,))
    loss_fn, rows = P.loss_inputs("classifier", x, y, 10)
    assert rows.shape == (7, 784 + 10)
    torch.testing.assert_close(loss_fn(m, rows), F.cross_entropy(m(x), y, reduction="none"))
    ae = build_model("mnist_ae", latent_dim=2, pretext="denoising").eval()
    loss_fn, rows = P.loss_inputs("denoising", x, y, 10)
    assert rows is x
    torch.testing.assert_close(loss_fn(ae, x), ((ae(x) - x) ** 2).flatten(1).mean(1))  # eval: no noise


@pytest.mark.parametrize("task", ["classifier", "reconstruction"])
def test_tracin_through_the_module_equals_brute_force(task, tmp_path):
    torch.manual_seed(0)
    model = (build_model("mnist_classifier", latent_dim=2, n_classes=10) if task == "classifier"
             else build_model("mnist_ae", latent_dim=2, pretext="reconstruction")).eval()
    xtr, ytr = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    xte, yte = torch.rand(3, 1, 28, 28), torch.tensor([3, 1, 0])
    states = [{k: v.clone() for k, v in model.state_dict().items()}]
    exp = common.setup(P.NOTEBOOK, dataset="mnist", output_dir=str(tmp_path / "o"), checkpoint_dir=str(tmp_path / "c"),
                       datasets=P.DATASETS, progress=False, device="cpu")
    s = P.example_importance(exp, model, task, "tracin", (xtr, ytr), (xte, yte), n_classes=10, checkpoints=states)

    def grad(x, y):
        out = model(x[None])
        loss = F.cross_entropy(out, y[None]) if task == "classifier" else F.mse_loss(out, x[None])
        gs = torch.autograd.grad(loss, list(model.encoder.parameters()))
        return torch.cat([g.flatten() for g in gs])

    gtr = torch.stack([grad(xtr[i], ytr[i]) for i in range(4)])
    gte = torch.stack([grad(xte[i], yte[i]) for i in range(3)])
    torch.testing.assert_close(s, gte @ gtr.T, rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match=r"TracIn checkpoints.*papermill notebooks/claim2_pretext.ipynb.*"
                                         r"-p example_method tracin"):
        P.example_importance(exp, model, task, "tracin", (xtr, ytr), (xte, yte), n_classes=10, checkpoints=[])


# ------------------------------------------------------------------------------------------ correlations
def test_correlation_records_hand_case():
    v = torch.tensor([1.0, 2.0, 3.0, 4.0])
    w = torch.tensor([1.0, -1.0, -1.0, 1.0])          # centred and orthogonal to centred v
    arrays = {"reconstruction": v, "denoising": 2 * v + 1, "inpainting": -v, "classifier": w}
    df = P.correlation_records(arrays, arrays, run=3)
    assert len(df) == 2 * 2 * 16 and set(df.run) == {3}
    for metric in ("pearson", "spearman"):
        mean, std, labels = P.matrix_stats(df, "features", metric)
        expected = np.array([[1, 1, -1, 0], [1, 1, -1, 0], [-1, -1, 1, 0], [0, 0, 0, 1]], dtype=float)
        np.testing.assert_allclose(mean, expected, atol=1e-12)
        np.testing.assert_array_equal(std, np.zeros((4, 4)))
        assert labels == ["Reconstruction", "Denoising", "Inpainting", "Classification"]


def _corr_frame(values_by_run: dict[int, float], kind="features", metric="pearson", pair_values=None):
    """Runs whose off-diagonal entries all equal a value (or per-pair values), diagonal 1."""
    rows = []
    labels = [P.TASK_LABELS[t] for t in P.TASKS]
    for run, v in values_by_run.items():
        for i, a in enumerate(labels):
            for j, b in enumerate(labels):
                val = 1.0 if i == j else (pair_values or {}).get(frozenset((a, b)), v)
                rows.append({"kind": kind, "metric": metric, "run": run, "task_a": a, "task_b": b, "value": val})
    return pd.DataFrame(rows)


def test_mean_std_table_and_off_diagonal():
    df = _corr_frame({0: 0.2, 1: 0.4})
    mean, std, _ = P.matrix_stats(df, "features", "pearson")
    assert mean[0, 1] == pytest.approx(0.3) and std[0, 1] == pytest.approx(0.1)   # population std, as ORIG
    assert P.table(df, "features", "pearson").iloc[0, 1] == "0.30 ± 0.10"
    assert P.off_diagonal(df, "features").tolist() == pytest.approx([0.2, 0.4])
    pv = {frozenset(("Reconstruction", "Classification")): 0.9}
    df = _corr_frame({0: 0.3}, pair_values=pv)
    assert P.off_diagonal(df, "features")[0] == pytest.approx((5 * 0.3 + 0.9) / 6)
    assert P.off_diagonal(df, "features", pairs=P.AE_PAIRS)[0] == pytest.approx(0.3)
    assert P.off_diagonal(df, "features", pairs=[("classifier", "reconstruction")])[0] == pytest.approx(0.9)


@pytest.mark.parametrize("feat, exam, expected", [
    (0.5, 0.2, ("holds", "holds")),
    (0.8, 0.35, ("does not hold", "does not hold")),
    (0.25, 0.29, ("does not hold", "holds")),
    (0.7, 0.3, ("holds", "does not hold")),
])
def test_verdict_bands(feat, exam, expected):
    df = pd.concat([_corr_frame({0: feat, 1: feat}, "features"), _corr_frame({0: exam, 1: exam}, "examples"),
                    _corr_frame({0: 0.5, 1: 0.5}, "features", "spearman"),
                    _corr_frame({0: 0.5, 1: 0.5}, "examples", "spearman")])
    vs = P.verdicts(_ns(), df, feature_method="gradient_shap", example_method="dknn", n_explain=10000, n_train=1000)
    assert len(vs) == 6 and (vs[0].verdict, vs[3].verdict) == expected   # std 0: never borderline
    assert vs[0].anchor == "'moderate'" and vs[3].anchor == "'low'"
    assert f"{feat:.2f} ± 0.00 (std over 2 runs" in vs[0].ours and "10,000 test × 1,000" in vs[3].ours
    assert "PDF only" in vs[0].anchor_source and "[0.3, 0.7]" in vs[0].criterion and "< 0.3" in vs[3].criterion
    assert [v.quantity for v in vs[3:]] == ["DKNN correlation between tasks",
                                            "DKNN correlation between tasks, autoencoder pairs only",
                                            "DKNN correlation between tasks, Spearman"]
    assert vs[5].verdict == "does not hold" and "Spearman (6 task pairs" in vs[5].criterion  # 0.5 is not low


def test_autoencoder_pairs_and_spearman_are_reported_beside_the_headline():
    # classifier pairs 0.05, autoencoder pairs 0.46: all six 0.255 (low), the AE pairs alone not
    clf = {frozenset((P.TASK_LABELS[t], "Classification")): 0.05 for t in ("reconstruction", "denoising",
                                                                           "inpainting")}
    df = pd.concat([_corr_frame({0: 0.5, 1: 0.5}, "features"), _corr_frame({0: 0.5, 1: 0.5}, "features", "spearman"),
                    _corr_frame({0: 0.46, 1: 0.46}, "examples", pair_values=clf),
                    _corr_frame({0: 0.58, 1: 0.58}, "examples", "spearman")])
    vs = P.verdicts(_ns(), df, feature_method="gradient_shap", example_method="dknn", n_explain=100, n_train=100)
    head, ae, sp = vs[3:]
    assert head.verdict == "holds" and "0.26 ± 0.00" in head.ours
    assert "autoencoder pairs only 0.46 ± 0.00; Spearman 0.58 ± 0.00" in head.ours
    assert ae.verdict == "does not hold" and "3 autoencoder pairs 0.46" in ae.ours and "3 autoencoder pairs" in ae.criterion
    assert sp.verdict == "does not hold" and "Spearman 0.58" in sp.ours


def test_band_reading_borderline_rule():
    assert P.band_reading("examples", 0.29, 0.03)[0] is None                        # within 1 sd of 0.3
    holds, text = P.band_reading("examples", 0.29, 0.03)
    assert "borderline" in text and "edge 0.3" in text and "at face value: holds" in text
    assert P.band_reading("examples", 0.26, 0.03) == (True, "")                     # 0.04 > 0.03 from the edge
    assert P.band_reading("examples", 0.34, 0.03) == (False, "")
    assert P.band_reading("features", 0.68, 0.05)[0] is None                        # near the upper edge 0.7
    assert "edge 0.7" in P.band_reading("features", 0.68, 0.05)[1]
    assert P.band_reading("features", 0.32, 0.01) == (True, "")
    assert P.band_reading("features", 0.5, float("nan")) == (True, "")


def test_borderline_headline_is_inconclusive_with_the_word_and_the_reason():
    # the audit's numbers: 0.29 ± 0.03 over runs
    df = pd.concat([_corr_frame({0: 0.5, 1: 0.5}, "features"), _corr_frame({0: 0.5, 1: 0.5}, "features", "spearman"),
                    _corr_frame({0: 0.26, 1: 0.32}, "examples"), _corr_frame({0: 0.2, 1: 0.2}, "examples", "spearman")])
    vs = P.verdicts(_ns(), df, feature_method="gradient_shap", example_method="dknn", n_explain=100, n_train=100)
    v = vs[3]
    assert v.verdict == "inconclusive" and v.verdict in ("holds", "does not hold", "inconclusive")
    assert "borderline: 0.29 lies within one standard deviation over runs (0.03)" in v.ours
    assert "borderline" in v.criterion and vs[5].verdict == "holds"                 # Spearman 0.2 ± 0: low


class _FakeExp(SimpleNamespace):
    def tracin_checkpoints(self, name):
        return self.states.get(name, [])

    def size(self, normal, smoke):
        return smoke if self.smoke else normal

    def papermill_command(self, mode="train", **kw):
        return f"papermill notebooks/claim2_pretext.ipynb out.ipynb -p mode {mode}"


def test_method_sweep_degrades_when_tracin_states_are_missing(tmp_path):
    write_fixture("mnist", tmp_path, n_train=64, n_test=32)
    splits = load_dataset("mnist", data_dir=tmp_path, download=False, progress=False)
    torch.manual_seed(0)
    models = {(r, t): ((build_model("mnist_classifier", latent_dim=2, n_classes=10) if t == "classifier"
                        else build_model("mnist_ae", latent_dim=2, pretext=t)).eval(), {})
              for r in (0, 1) for t in P.TASKS}
    exp = _FakeExp(seed=0, device=CPU, progress=False, dataset="mnist", smoke=True, states={})
    budget = P.sweep_budget(exp, 2, 20)
    assert budget["runs"] == [0, 1] and (budget["n_test"], budget["n_train"]) == (10, 20)
    assert P.sweep_budget(exp, 1, 20)["runs"] == [0]
    budget = {**budget, "n_train": 10}                                               # one image per digit: fast
    x = splits.test.tensors()[0][:12]
    res = P.method_sweep(exp, models, splits, None, budget=budget, x_features=x)
    st = res.status.set_index("method")["status"]
    assert st["TracIn"].startswith("not run: 8 of 8 checkpoints of runs [0, 1] were saved without TracIn states")
    assert (st.drop("TracIn") == "run").all() and len(st) == 7
    assert "TracIn" not in set(res.correlations.method)                             # no fake number
    assert set(res.correlations.method) == {"Integrated Gradients", "GradientSHAP", "Saliency", "DKNN", "SimplEx",
                                            "Influence functions"}
    tab = P.sweep_table(res).set_index("method")
    assert tab.loc["TracIn", "Pearson, 6 pairs"] == "—" and tab.loc["TracIn", "reading"].startswith("not run:")
    assert tab.loc["DKNN", "Pearson, 6 pairs"].endswith("(2 runs)")
    assert "LiSSA depth 1, HVP minibatch 8 (paper: depth 100, minibatch 300)" in tab.loc["Influence functions",
                                                                                         "budget"]
    # with TracIn states for every model, TracIn runs and equals the module's own TracIn on the subset
    exp.states = {P.checkpoint("mnist", t, r): [{k: v.clone() for k, v in models[(r, t)][0].state_dict().items()}]
                  for r in (0, 1) for t in P.TASKS}
    res = P.method_sweep(exp, models, splits, None, budget={**budget, "runs": [0]}, x_features=x)
    assert res.status.set_index("method").loc["TracIn", "status"] == "run"
    assert "TracIn" in set(res.correlations.method)


def test_method_sweep_runs_on_mnist_by_default_and_is_skipped_with_its_reason_elsewhere(tmp_path):
    mnist, cifar = (_FakeExp(seed=0, device=CPU, progress=False, dataset=d, smoke=True, states={})
                    for d in ("mnist", "cifar10"))
    assert P.sweep_budget(mnist, 2, 20)["skip"] is None                            # None: MNIST runs it
    assert P.sweep_budget(cifar, 2, 20, method_sweep=True)["skip"] is None         # True forces it
    off = P.sweep_budget(mnist, 2, 20, method_sweep=False)["skip"]
    assert off.startswith("method_sweep=False") and "-p method_sweep True" in off
    skip = P.sweep_budget(cifar, 2, 20)["skip"]
    assert "CIFAR-10" in skip and "MNIST only" in skip and "-p method_sweep True" in skip
    # a skipped sweep computes nothing (models that would fail if called) and says why on every method's row
    res = P.method_sweep(cifar, {}, None, None, budget=P.sweep_budget(cifar, 2, 20), x_features=None)
    assert res.correlations.empty and len(res.status) == 7
    assert (res.status.status == f"not run: {skip}").all()
    tab = P.sweep_table(res)
    assert (tab["Pearson, 6 pairs"] == "—").all() and tab.reading.str.startswith("not run: by default").all()


# ------------------------------------------------------------------------------------------ figures and explorer
def test_top_examples_and_explorer_show_the_argmax():
    torch.manual_seed(0)
    scores = {t: torch.rand(5, 7) for t in P.TASKS}
    top = P.top_examples(scores, [4, 1], k=2)
    for t in P.TASKS:
        assert top[t].tolist() == [torch.argsort(scores[t][i], descending=True)[:2].tolist() for i in (4, 1)]
    x_test, y_test = torch.rand(5, 1, 6, 6), torch.arange(5)
    x_train, y_train = torch.rand(7, 1, 6, 6), torch.arange(7) % 3
    maps = {t: torch.rand(5, 1, 6, 6) for t in P.TASKS}
    fig = P.explorer_figure(3, x_test, y_test, x_train, y_train, maps, scores, k=2)
    titles = [[ax.get_title() for ax in row] for row in np.asarray(fig.axes).reshape(4, 3)]
    for r, t in enumerate(P.TASKS):
        j = int(scores[t][3].argmax())
        assert titles[r][1] == f"top 1: #{j} (label {j % 3})"
    widget = P.explorer(x_test, y_test, x_train, y_train, maps, scores, k=2)
    assert widget.children[0].max == 4
    widget.children[0].value = 2  # redraws without error
    import matplotlib.pyplot as plt
    plt.close("all")


def test_get_models_train_then_inference(tmp_path):
    write_fixture("mnist", tmp_path / "data", n_train=64, n_test=16)
    args = dict(dataset="mnist", output_dir=str(tmp_path / "o"), checkpoint_dir=str(tmp_path / "c"),
                data_dir=str(tmp_path / "data"), datasets=P.DATASETS, progress=False, device="cpu", seed=7)
    exp = common.setup(P.NOTEBOOK, mode="train", n_epochs=1, **args)
    splits = exp.load_data()
    models = P.get_models(exp, splits, 1, tasks=("reconstruction", "classifier"))
    assert exp.trained == ["claim2-pretext_mnist_reconstruction-ae_run0", "claim2-pretext_mnist_classifier_run0"]
    assert [m["settings"]["seed"] for _, m in models.values()] == [7, 307]
    inf = common.setup(P.NOTEBOOK, mode="inference", **args)
    again = P.get_models(inf, splits, 1, tasks=("reconstruction", "classifier"))
    x = splits.test.tensors()[0]
    for key in models:
        torch.testing.assert_close(models[key][0].encoder(x), again[key][0].encoder(x))
    with pytest.raises(FileNotFoundError, match="papermill notebooks/claim2_pretext.ipynb"):
        P.get_models(inf, splits, 2, tasks=("reconstruction",))


def test_a_single_run_shows_no_spread_and_is_inconclusive_with_the_face_value():
    df = pd.concat([_corr_frame({0: 0.5}, "features"), _corr_frame({0: 0.5}, "features", "spearman"),
                    _corr_frame({0: 0.2}, "examples"), _corr_frame({0: 0.5}, "examples", "spearman")])
    vs = P.verdicts(_ns(), df, feature_method="gradient_shap", example_method="dknn", n_explain=100, n_train=100)
    assert [v.verdict for v in vs] == ["inconclusive"] * 6
    assert "Pearson 0.50 (1 run: no spread over runs;" in vs[0].ours and "±" not in vs[0].ours
    assert "one run gives no spread over runs" in vs[0].ours and "at face value: holds" in vs[0].ours
    assert "at face value: does not hold" in vs[5].ours                              # Spearman 0.5 is not low
