"""Claim 1.2 module logic: parameters, subsets, similarity rates per example, explainer dispatch and verdicts."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from types import SimpleNamespace  # noqa: E402

from lfxai_utils import examples as E  # noqa: E402
from lfxai_utils.data import class_balanced_indices, load_dataset  # noqa: E402
from lfxai_utils.experiments import common, example_consistency as X  # noqa: E402
from lfxai_utils.fixtures import write_fixture  # noqa: E402
from lfxai_utils.metrics import label_prior, similarity_rates  # noqa: E402
from lfxai_utils.models import build_model  # noqa: E402


def _setup(tmp_path, **kw):
    args = dict(dataset="mnist", output_dir=str(tmp_path / "out"), checkpoint_dir=str(tmp_path / "ckpt"),
                data_dir=str(tmp_path / "data"), progress=False, datasets=X.DATASETS, models=X.MODELS)
    args.update(kw)
    return common.setup(X.NOTEBOOK, **args)


# ------------------------------------------------------------------------------------------ parameters
def test_explainer_defaults_and_parsing():
    assert X.resolve_explainers(None) == list(E.EXAMPLE_METHODS) == X.resolve_explainers("None")
    assert X.resolve_explainers(None, "simclr") == ["simplex", "dknn", "cosine_nn"]
    assert X.resolve_explainers(" dknn, simplex ,dknn") == ["dknn", "simplex"]      # papermill -p string, deduplicated
    assert X.resolve_explainers(["tracin"]) == ["tracin"]
    with pytest.raises(ValueError, match=r"unknown explainer\(s\) \['knn'\]; valid values: 'influence_functions'"):
        X.resolve_explainers("knn,dknn")
    with pytest.raises(ValueError, match="no reconstruction loss.*valid explainers: 'simplex', 'dknn', 'cosine_nn'"):
        X.resolve_explainers("tracin", "simclr")


@pytest.mark.parametrize("kw, match", [
    ({"n_train": 1}, "n_train must be an integer >= 2"),
    ({"n_test": 10.5}, "n_test must be an integer >= 2"),
    ({"if_recursion_depth": 0}, r"if_recursion_depth must be an integer >= 1 \(paper: 100\)"),
    ({"if_batch_size": -3}, "if_batch_size must be None"),
    ({"if_damp": 1.0}, r"if_damp must lie in \[0, 1\)"),
    ({"if_scale": 0}, "if_scale must be > 0"),
])
def test_bad_parameters_are_named(kw, match):
    with pytest.raises(ValueError, match=match):
        X.validate("mnist", None, **kw)


def test_simclr_only_on_cifar10_and_only_representation_explainers():
    with pytest.raises(ValueError, match="use dataset='cifar10'"):
        X.validate("mnist", "simclr")
    assert X.validate("cifar10", "simclr") == ["simplex", "dknn", "cosine_nn"]


def test_models_checkpoints_and_data_per_dataset():
    # MNIST / CIFAR / SimCLR: exactly Claim 1.1's model, with TracIn checkpoints every 10 epochs for the AEs
    assert X.checkpoint("mnist") == "claim1_mnist_denoising-ae" == X.required_checkpoints("mnist")[0]
    assert X.model_spec("mnist").checkpoint_every == 10 and X.model_spec("mnist").batch_size == 300
    assert X.checkpoint("cifar10", "simclr") == "claim1_cifar10_simclr-resnet18"
    assert X.model_spec("cifar100") == X.fc.model_spec("cifar100")
    # ECG5000: its own all-beats LSTM AE (examples mode), TracIn every 25 epochs, L1 loss, CLI batch 20
    spec = X.model_spec("ecg5000")
    assert X.checkpoint("ecg5000") == "claim1_ecg5000_lstm-ae_all-beats"
    assert (spec.arch, spec.checkpoint_every, spec.batch_size, spec.n_epochs) == ("ecg_ae", 25, 20, 150)
    assert dict(spec.identity) == {"ecg_mode": "examples"} and spec.arch_kwargs["latent_dim"] == 64
    assert X.data_requirements("ecg5000") == [("ecg5000", {"ecg_mode": "examples"})]
    assert X.data_requirements("mnist") == [("mnist", {})]
    assert X.loss_kind("ecg5000") == "l1" and X.loss_kind("cifar10") == "mse"


def test_hvp_batch_is_the_training_batch_unless_given(tmp_path):
    exp = _setup(tmp_path)
    assert X.hvp_batch_size(exp) == 300 and X.hvp_batch_size(exp, 64) == 64
    ecg = _setup(tmp_path, dataset="ecg5000")
    assert X.hvp_batch_size(ecg) == 20
    smoke = _setup(tmp_path, smoke=True)
    assert X.hvp_batch_size(smoke) == 8 and X.hvp_batch_size(smoke, 4) == 4


# ------------------------------------------------------------------------------------------ subsets
def test_capped_balanced_indices_by_hand():
    labels = torch.tensor([0, 1, 0, 0, 1, 2, 2, 0])      # class 0 at 0,2,3,7; class 1 at 1,4; class 2 at 5,6
    idx, note = X.capped_balanced_indices(labels, 4, 3, "subtrain")
    assert idx.tolist() == [0, 1, 5, 2] and note is None
    idx, note = X.capped_balanced_indices(labels, 9, 3, "subtrain")
    assert idx.tolist() == [0, 1, 5, 2, 4, 6]                                     # capped at 3 classes x 2
    assert note == ("subtrain: asked for 9 class-balanced examples but the smallest of the 3 classes has 2, so 6 "
                    "are used (2 per class)")
    with pytest.raises(ValueError, match=r"classes \[3\] have no example"):
        X.capped_balanced_indices(labels, 4, 4, "test")


def test_select_subsets_mnist_balanced(tmp_path):
    write_fixture("mnist", tmp_path, n_train=60, n_test=40)
    splits = load_dataset("mnist", data_dir=tmp_path, download=False, progress=False)
    sub = X.select_subsets(splits, "mnist", 20, 10, seed=0)
    assert sub.train_idx.tolist() == class_balanced_indices(splits.train.targets, 20, 10).tolist()
    assert sub.test_idx.tolist() == class_balanced_indices(splits.test.targets, 10, 10).tolist()
    assert sorted(sub.y_test.tolist()) == list(range(10)) and not sub.notes
    torch.testing.assert_close(sub.x_train, splits.train.tensors(sub.train_idx)[0])
    assert sub.n_classes == 10 and label_prior(sub.y_train, sub.y_test) == pytest.approx(0.1)


def test_select_subsets_ecg_caps_and_permutes_test(tmp_path):
    write_fixture("ecg5000", tmp_path, n_train=60, n_test=40)
    splits = load_dataset("ecg5000", data_dir=tmp_path, ecg_mode="examples", download=False, progress=False)
    ytr = splits.train.targets
    cap = 2 * int(torch.bincount(ytr, minlength=2).min())
    sub = X.select_subsets(splits, "ecg5000", 1000, 1000, seed=3)
    assert sub.n_train == cap and sub.n_classes == 2
    assert torch.bincount(sub.y_train).tolist() == [cap // 2, cap // 2]
    n_te = len(splits.test)
    perm = torch.randperm(n_te, generator=torch.Generator().manual_seed(3))
    assert sub.test_idx.tolist() == perm.tolist()                                  # ORIG: a permutation, all of it
    assert any(n.startswith("subtrain: asked for 1,000") for n in sub.notes)
    assert any(f"test split holds {n_te}" in n for n in sub.notes)
    small = X.select_subsets(splits, "ecg5000", 10, 5, seed=3)
    assert small.test_idx.tolist() == perm[:5].tolist() and not small.notes


def test_showcase_round_robin_over_classes():
    assert X.showcase_indices(torch.tensor([1, 1, 0, 2, 0]), 4) == [2, 0, 3, 4]
    assert X.showcase_indices(torch.tensor([1, 1]), 4) == [0, 1]


# ------------------------------------------------------------------------------------------ metric
def test_per_example_rates_by_hand():
    # 2 test examples x 4 train examples; train labels [0, 0, 1, 1]
    imp = torch.tensor([[4.0, 3.0, 2.0, 1.0],      # test label 0: top-2 = {0,1} both match, bottom-2 none
                        [1.0, 4.0, 3.0, 2.0]])     # test label 1: top-2 = {1,2} one match, bottom-2 {3,0} one
    df = X.per_example_rates(imp, torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1]), fractions=(0.25, 0.5, 1.0))
    got = {(r.example, r.percent, r.type): r.similarity_rate for r in df.itertuples()}
    assert got[(0, 50.0, "most")] == 1.0 and got[(0, 50.0, "least")] == 0.0
    assert got[(1, 50.0, "most")] == 0.5 and got[(1, 50.0, "least")] == 0.5
    assert got[(0, 25.0, "most")] == 1.0 and got[(1, 25.0, "most")] == 0.0 and got[(1, 25.0, "least")] == 0.0  # least = #0 (label 0)
    assert all(got[(e, 100.0, t)] == 0.5 for e in (0, 1) for t in ("most", "least"))
    assert set(df.k) == {1, 2, 4} and len(df) == 2 * 3 * 2


def test_per_example_rates_average_to_similarity_rates():
    g = torch.Generator().manual_seed(0)
    imp = torch.randint(0, 5, (30, 50), generator=g).float()           # many ties: the stable order must agree
    ytr, yte = torch.randint(0, 3, (50,), generator=g), torch.randint(0, 3, (30,), generator=g)
    ours = X.per_example_rates(imp, ytr, yte).groupby(["fraction", "type"])["similarity_rate"].mean()
    ref = similarity_rates(imp, ytr, yte, X.FRACTIONS).set_index(["fraction", "type"])["similarity_rate"]
    for key, v in ref.items():
        assert ours[key] == pytest.approx(v, abs=1e-12)
    full = X.per_example_rates(imp, ytr, yte).query("percent == 100")
    assert full.similarity_rate.mean() == pytest.approx(label_prior(ytr, yte))
    with pytest.raises(ValueError, match="give k = 0"):
        X.per_example_rates(imp[:, :10], ytr[:10], yte)
    with pytest.raises(ValueError, match="30 test and 49 train labels"):
        X.per_example_rates(imp, ytr[:49], yte)


def _sub(y_train, y_test):
    y_train, y_test = torch.as_tensor(y_train), torch.as_tensor(y_test)
    return X.Subsets(torch.arange(len(y_train)), torch.arange(len(y_test)), torch.zeros(len(y_train), 3),
                     y_train, torch.zeros(len(y_test), 3), y_test, int(max(y_train.max(), y_test.max())) + 1)


def test_rates_summary_and_ci():
    sub = _sub([0, 0, 1, 1], [0, 1])
    imp = torch.tensor([[4.0, 3.0, 2.0, 1.0], [1.0, 4.0, 3.0, 2.0]])
    df = X.rates({"dknn": imp}, sub, fractions=(0.5, 1.0))
    assert set(df.explainer) == {"DKNN"} and set(df.type) == {"Most important", "Least important"}
    s = X.summarise(df)
    row = s[(s.type == "Most important") & (s.percent == 50.0)].iloc[0]
    assert row.similarity_rate == pytest.approx(0.75) and row.n_test == 2 and row.k == 2
    assert row.ci95 == pytest.approx(1.96 * np.std([1.0, 0.5], ddof=1) / np.sqrt(2))
    table = X.rate_table(s)
    assert list(table.columns) == ["50 %", "100 %"] and table.loc[("DKNN", "Least important"), "50 %"] == 0.25


def test_top_bottom_by_hand():
    s = torch.tensor([[0.1, 0.9, 0.5, 0.7, 0.3], [5.0, 4.0, 3.0, 2.0, 1.0]])
    top, bottom = X.top_bottom(s, [0, 1], k=2)
    assert top.tolist() == [[1, 3], [0, 1]] and bottom.tolist() == [[0, 4], [4, 3]]   # bottom: least first


# ------------------------------------------------------------------------------------------ explainers
def test_explain_matches_the_library_and_brute_force(tmp_path):
    exp = _setup(tmp_path)
    torch.manual_seed(0)
    net = build_model("mnist_ae", latent_dim=3).eval()
    g = torch.Generator().manual_seed(1)
    x_tr, x_te = torch.rand(12, 1, 28, 28, generator=g), torch.rand(5, 1, 28, 28, generator=g)
    sub = X.Subsets(torch.arange(12), torch.arange(5), x_tr, torch.arange(12) % 3, x_te, torch.arange(5) % 3, 3)
    ckpts = [{k: v.clone() for k, v in net.state_dict().items()}]
    scores, timings = X.explain(exp, net, sub, list(E.EXAMPLE_METHODS), hvp_x=x_tr, tracin_checkpoints=ckpts,
                                loss="mse", if_recursion_depth=2, if_batch_size=4, simplex_steps=20, batch_size=5)
    assert list(timings.step) == ["Influence Functions", "TracIn", "encoding (shared)", "SimplEx", "DKNN", "CosineNN"]
    assert (timings.n_test == 5).all() and (timings.n_train == 12).all() and (timings.seconds >= 0).all()
    with torch.no_grad():
        h_tr, h_te = net.encoder(x_tr), net.encoder(x_te)
    brute = 1 / ((h_te[:, None, :] - h_tr[None, :, :]) ** 2).sum(-1)
    torch.testing.assert_close(scores["dknn"], brute, rtol=1e-4, atol=0)
    cos = torch.nn.functional.cosine_similarity(h_te[:, None, :], h_tr[None, :, :], dim=-1)
    torch.testing.assert_close(scores["cosine_nn"], cos, rtol=1e-5, atol=1e-6)
    ref_if = E.influence_functions(net, "mse", x_tr, x_te, x_tr, recursion_depth=2, batch_size=4, seed=exp.seed,
                                   progress=False)
    torch.testing.assert_close(scores["influence_functions"], ref_if)
    g_tr = E.per_example_gradients(net, "mse", x_tr)
    g_te = E.per_example_gradients(net, "mse", x_te)
    torch.testing.assert_close(scores["tracin"], g_te @ g_tr.T, rtol=1e-4, atol=1e-9)    # one checkpoint, lr 1
    assert scores["simplex"].shape == (5, 12)
    torch.testing.assert_close(scores["simplex"].sum(1), torch.ones(5))
    # influence functions on a nested subset: its timings row counts that subset, the other rows the page's
    small = X.nested_subset(sub, 6, 2)
    s2, t2 = X.explain(exp, net, sub, ["influence_functions", "dknn"], hvp_x=x_tr, loss="mse", if_recursion_depth=1,
                       if_batch_size=4, batch_size=5, if_subset=small)
    assert s2["influence_functions"].shape == (2, 6) and s2["dknn"].shape == (5, 12)
    assert t2.set_index("step")[["n_test", "n_train"]].to_dict("index") == {
        "Influence Functions": {"n_test": 2, "n_train": 6}, "encoding (shared)": {"n_test": 5, "n_train": 12},
        "DKNN": {"n_test": 5, "n_train": 12}}
    with pytest.raises(ValueError, match="TracIn needs the checkpoints"):
        X.explain(exp, net, sub, ["tracin"])


def test_tracin_states_error_names_the_fix(tmp_path):
    write_fixture("mnist", tmp_path / "data", n_train=32, n_test=8)
    exp = _setup(tmp_path, mode="train")
    splits = exp.load_data()
    spec = common.ModelSpec("mnist_ae", {"latent_dim": 2}, n_epochs=1, batch_size=16, patience=None)
    exp.get_model("no-tracin", spec, splits.train, data_info=common.json_data_info(splits))
    with pytest.raises(ValueError, match="saved without TracIn checkpoints.*papermill notebooks/claim1_example"):
        X.tracin_states(exp, "no-tracin")
    exp.get_model("with-tracin", spec.with_(checkpoint_every=1), splits.train, data_info=common.json_data_info(splits))
    assert len(X.tracin_states(exp, "with-tracin")) == 1                             # epoch 0 only
    spec3 = spec.with_(n_epochs=5, checkpoint_every=1)
    exp.get_model("five", spec3, splits.train, data_info=common.json_data_info(splits))
    every = X.tracin_states(exp, "five")
    picked = X.tracin_states(exp, "five", 3)
    assert len(every) == 5 and len(picked) == 3
    for got, want in zip(picked, (every[0], every[2], every[4])):                   # evenly spaced, last included
        assert all(torch.equal(got[k], want[k]) for k in want)


def test_spaced_subset():
    assert X.spaced_subset(5, 3) == [0, 2, 4] and X.spaced_subset(10, 4) == [0, 3, 6, 9]
    assert X.spaced_subset(5, 2) == [0, 4] and X.spaced_subset(5, 1) == [4]
    assert X.spaced_subset(5, None) == X.spaced_subset(5, 5) == X.spaced_subset(5, 9) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="at least one"):
        X.spaced_subset(5, 0)


def test_examples_figures_caption_matches(tmp_path):
    sub_img = X.Subsets(torch.arange(4), torch.arange(2), torch.rand(4, 1, 6, 6), torch.tensor([0, 1, 0, 1]),
                        torch.rand(2, 1, 6, 6), torch.tensor([0, 1]), 2)
    s = torch.tensor([[4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0]])
    figs = X.examples_figures("mnist", sub_img, {"dknn": s, "simplex": s}, [0, 1], k=1)
    assert len(figs) == 2
    axes = np.asarray(figs[0].axes).reshape(2, 3)
    assert axes[0, 1].get_xlabel() == "0" and axes[0, 2].get_xlabel() == "1"             # top = #0, bottom = #3
    assert matplotlib.colors.to_hex(axes[0, 1].xaxis.label.get_color()) == "#009e73"     # same class: green
    assert matplotlib.colors.to_hex(axes[0, 2].xaxis.label.get_color()) == "#d55e00"
    sub_ts = X.Subsets(torch.arange(4), torch.arange(2), torch.rand(4, 140, 1), torch.tensor([0, 1, 0, 1]),
                       torch.rand(2, 140, 1), torch.tensor([0, 1]), 2)
    figs = X.examples_figures("ecg5000", sub_ts, {"dknn": s}, [1], k=2)
    axes = np.asarray(figs[0].axes).reshape(1, 5)
    assert [a.get_xlabel() for a in axes[0, 1:]] == ["abnormal", "normal", "normal", "abnormal"]
    plt.close("all")


# ------------------------------------------------------------------------------------------ verdicts
def _summary(rates: dict[str, tuple[float, float]], percent=(5.0, 100.0)):
    rows = []
    for name, (most, least) in rates.items():
        for p in percent:
            k = int(p * 10)
            rows += [{"explainer": name, "type": "Most important", "percent": p, "k": k,
                      "similarity_rate": most if p < 100 else 0.1, "n_test": 20, "ci95": 0.0},
                     {"explainer": name, "type": "Least important", "percent": p, "k": k,
                      "similarity_rate": least if p < 100 else 0.1, "n_test": 20, "ci95": 0.0}]
    return pd.DataFrame(rows)


def test_verdicts_per_explainer_and_ranking(tmp_path):
    exp = _setup(tmp_path)
    s = _summary({"Influence Functions": (0.3, 0.05), "TracIn": (0.2, 0.12), "SimplEx": (0.8, 0.0),
                  "DKNN": (0.9, 0.01), "CosineNN": (0.09, 0.02)})
    v = {x.quantity: x for x in X.verdicts(exp, s, 0.1, 1000, 1000)}
    assert v["similarity rate, Influence Functions"].verdict == "holds"
    assert v["similarity rate, TracIn"].verdict == "does not hold"                       # least above the prior
    assert v["similarity rate, CosineNN"].verdict == "does not hold"                     # most below the prior
    assert v["similarity rate, DKNN"].ours == ("at 5 % (k = 50): most important 0.900, least important 0.010, "
                                               "label prior 0.100 (1,000 test examples, subtrain of 1,000); "
                                               "eval mode")
    rank = v["ranking: representation-based > loss-based"]
    assert rank.verdict == "holds" and "SimplEx 0.800 vs strongest loss-based Influence Functions 0.300" in rank.ours
    s2 = _summary({"TracIn": (0.85, 0.0), "SimplEx": (0.8, 0.0), "DKNN": (0.9, 0.0)})
    assert {x.quantity: x for x in X.verdicts(exp, s2, 0.1, 1000, 1000)}[
        "ranking: representation-based > loss-based"].verdict == "does not hold"
    lissa = X.lissa_label(exp, 2, 64)
    assert lissa == "LiSSA depth 2, HVP minibatch 64; paper: depth 100, minibatch 300"
    assert X.lissa_label(exp, 100, 300) == "LiSSA depth 100, HVP minibatch 300"
    v = {x.quantity: x for x in X.verdicts(exp, s, 0.1, 1000, 1000, lissa=lissa)}
    assert v["similarity rate, Influence Functions"].ours.endswith(f"subtrain of 1,000; {lissa}); eval mode")
    assert lissa not in v["similarity rate, TracIn"].ours
    only_rep = X.verdicts(exp, _summary({"DKNN": (0.9, 0.0), "CosineNN": (0.9, 0.0)}), 0.1, 100, 50)
    assert [x.quantity for x in only_rep] == ["similarity rate, DKNN", "similarity rate, CosineNN"]
    assert all(x.model == "denoising AE" and x.claim == "1.2 example consistency" for x in only_rep)


def test_smoke_summary_is_inconclusive(tmp_path):
    exp = _setup(tmp_path, smoke=True)
    out = exp.write_summary(X.verdicts(exp, _summary({"DKNN": (0.9, 0.0)}), 0.1, 40, 20))
    assert set(out.verdict) == {"inconclusive"} and (exp.output_dir / "summary.csv").exists()


def test_run_plan_budgets(tmp_path):
    exp = _setup(tmp_path)
    plan = X.run_plan(exp, None, n_train=1000, n_test=500, if_recursion_depth=100)
    assert plan == {"explainers": list(E.EXAMPLE_METHODS), "n_train": 1000, "n_test": 500, "if_recursion_depth": 100,
                    "if_n_train": None, "if_n_test": None, "simplex_steps": 1000, "notes": []}
    assert X.run_plan(exp, None, n_train=1000, n_test=500, if_recursion_depth=1, if_n_train=100,
                      if_n_test=100)["if_n_train"] == 100
    from lfxai_utils.book.registry import CPU_BUDGETS
    ecg_budget = CPU_BUDGETS[("claim1_example_consistency", "ecg5000")]
    assert "explainers" not in ecg_budget and ecg_budget["if_n_train"] == 100 and ecg_budget["if_recursion_depth"] == 1
    smoke = X.run_plan(_setup(tmp_path, smoke=True), "dknn", n_train=1000, n_test=500, if_recursion_depth=100)
    assert (smoke["n_train"], smoke["n_test"], smoke["if_recursion_depth"], smoke["simplex_steps"]) == (40, 20, 1, 50)
    ecg = _setup(tmp_path, smoke=True, dataset="ecg5000")
    p = X.run_plan(ecg, None, n_train=1000, n_test=500, if_recursion_depth=100)
    assert p["explainers"] == ["tracin", "simplex", "dknn", "cosine_nn"] and "influence functions left out" in p["notes"][0]
    assert X.run_plan(ecg, "influence_functions", n_train=9, n_test=9, if_recursion_depth=1)["explainers"] == [
        "influence_functions"]                                                          # asked for: kept


# ------------------------------------------------------------------------------------------ the authors' train mode
def test_train_mode_gradients_are_the_authors_single_image_train_mode():
    torch.manual_seed(0)
    net = build_model("mnist_ae", latent_dim=3, pretext="reconstruction").eval()   # no noise: deterministic
    with torch.no_grad():                                                          # BatchNorm running stats ≠ 0, 1
        net.train()
        net(torch.rand(64, 1, 28, 28))
        net.eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.rand(3, 1, 28, 28)
    work = X.train_mode_model(net)
    import warnings
    with warnings.catch_warnings():        # vmap works on the copy (no running statistics): no slow-loop fallback
        warnings.simplefilter("error", RuntimeWarning)
        g = E.per_example_gradients(work, X.train_mode_loss("mse"), x)
    names = E.encoder_parameter_names(net)
    ref = []
    for i in range(3):                                        # the authors: autoencoder.train(), batch size 1
        m = __import__("copy").deepcopy(net).train()
        loss = torch.nn.functional.mse_loss(m(x[i:i + 1]), x[i:i + 1])
        params = dict(m.named_parameters())
        gs = torch.autograd.grad(loss, [params[n] for n in names])
        ref.append(torch.cat([t.flatten() for t in gs]))
    torch.testing.assert_close(g, torch.stack(ref), rtol=1e-4, atol=1e-6)
    g_eval = E.per_example_gradients(net, "mse", x)
    assert not torch.allclose(g, g_eval, rtol=1e-3, atol=1e-6)                    # eval mode differs
    for k, v in net.state_dict().items():                                         # the page's model is untouched
        assert torch.equal(v, before[k]), k
    assert X.train_mode_differs(net) and X.train_mode_differs(build_model("mnist_ae", latent_dim=2,
                                                                          pretext="denoising"))
    assert not X.train_mode_differs(build_model("ecg_ae", latent_dim=4))          # LSTM AE: train = eval


def test_explain_train_mode_runs_loss_based_explainers_on_the_same_subsets(tmp_path):
    exp = _setup(tmp_path)
    torch.manual_seed(0)
    net = build_model("mnist_ae", latent_dim=3, pretext="denoising").eval()
    g = torch.Generator().manual_seed(1)
    x_tr, x_te = torch.rand(8, 1, 28, 28, generator=g), torch.rand(4, 1, 28, 28, generator=g)
    sub = X.Subsets(torch.arange(8), torch.arange(4), x_tr, torch.arange(8) % 2, x_te, torch.arange(4) % 2, 2)
    ckpts = [{k: v.clone() for k, v in net.state_dict().items()}]
    s1, t1 = X.explain_train_mode(exp, net, sub, ["tracin", "dknn", "influence_functions"], hvp_x=x_tr,
                                  tracin_checkpoints=ckpts, if_recursion_depth=1, if_batch_size=4)
    assert set(s1) == {"tracin", "influence_functions"} and s1["tracin"].shape == (4, 8)
    s2, _ = X.explain_train_mode(exp, net, sub, ["tracin"], tracin_checkpoints=ckpts)
    torch.testing.assert_close(s1["tracin"], s2["tracin"])                        # seeded noise: reproducible
    ev, _ = X.explain(exp, net, sub, ["tracin"], tracin_checkpoints=ckpts)
    assert not torch.allclose(ev["tracin"], s1["tracin"])                          # noise + BatchNorm change it
    assert X.explain_train_mode(exp, net, sub, ["dknn"])[0] == {}


def test_train_mode_numbers_are_reported_but_do_not_decide_the_verdict(tmp_path):
    exp = _setup(tmp_path)
    ev = _summary({"TracIn": (0.263, 0.05), "DKNN": (0.9, 0.0)})
    for train_most in (0.05, 0.380):                     # train mode below / above the prior: same verdict
        tr = _summary({"TracIn": (train_most, 0.3)})
        v = {x.quantity: x for x in X.verdicts(exp, ev, 0.1, 1000, 1000, train_summary=tr)}
        t = v["similarity rate, TracIn"]
        assert t.verdict == "holds"
        assert f"train mode (the authors'): most important {train_most:.3f}, least important 0.300" in t.ours
        assert "eval mode (FACT's fix)" in t.criterion
        assert "train mode" not in v["similarity rate, DKNN"].ours
    tab = X.mode_table(ev, _summary({"TracIn": (0.380, 0.3)}))
    row = tab[(tab.percent == 5.0) & (tab.type == "Most important")].iloc[0]
    assert (row["eval mode"], row["train mode"]) == (0.263, 0.380)
    assert row["train − eval"] == pytest.approx(0.117)
    note = X.verdicts(exp, ev, 0.1, 10, 10, train_mode_note="identical to eval mode")
    assert note[0].ours.endswith("; train mode: identical to eval mode")


def test_influence_functions_on_a_nested_subset(tmp_path):
    exp = _setup(tmp_path)
    y_tr = torch.arange(40) % 2
    sub = X.Subsets(torch.arange(40), torch.arange(30), torch.rand(40, 5, 1), y_tr, torch.rand(30, 5, 1),
                    torch.arange(30) % 2, 2, rules={"subtrain": "40 balanced", "test": "30 random"})
    small = X.nested_subset(sub, 20, 6)
    assert (small.n_train, small.n_test) == (20, 6) and torch.bincount(small.y_train).tolist() == [10, 10]
    assert torch.equal(small.x_train, sub.x_train[:20]) and "first 20" in small.rules["subtrain"]
    assert X.nested_subset(sub, None, 100).n_test == 30
    scores = {"dknn": torch.rand(30, 40), "influence_functions": torch.rand(6, 20)}
    df = X.rates(scores, sub, subsets={"influence_functions": small})
    k = df.groupby("explainer")["k"].min()
    assert (k["DKNN"], k["Influence Functions"]) == (2, 1)                      # 5 % of 40, 5 % of 20
    summ = X.summarise(df)
    v = {x.quantity: x for x in X.verdicts(exp, summ, 0.5, 40, 30, sizes={"Influence Functions": (6, 20)})}
    assert "(6 test examples, subtrain of 20" in v["similarity rate, Influence Functions"].ours
    assert "(k = 1)" in v["similarity rate, Influence Functions"].ours and "(k = 2)" in v["similarity rate, DKNN"].ours


def test_train_mode_comparison_reads_eval_mode_on_the_same_pairs():
    sub = X.Subsets(torch.arange(40), torch.arange(30), torch.rand(40, 5, 1), torch.arange(40) % 2,
                    torch.rand(30, 5, 1), torch.arange(30) % 2, 2)
    tm, tm_if = X.train_mode_subsets(sub, None, (20, 6))
    assert (tm.n_train, tm.n_test, tm_if) == (20, 6, None)
    full = {"tracin": torch.rand(30, 40)}
    cut = X.slice_scores(full, tm)
    assert torch.equal(cut["tracin"], full["tracin"][:6, :20])
    ev = X.summarise(X.rates(cut, tm))
    tr = X.summarise(X.rates({"tracin": torch.rand(6, 20)}, tm))
    exp = SimpleNamespace(dataset="mnist", model=None)
    v = X.verdicts(exp, X.summarise(X.rates(full, sub)), 0.5, 40, 30, train_summary=tr, eval_on_train_subset=ev,
                   train_sizes={"TracIn": (6, 20)})[0]
    e_most = float(ev[(ev.percent == 5.0) & (ev.type == "Most important")]["similarity_rate"].iloc[0])
    assert "train mode (the authors') on the first 6 test × 20 subtrain" in v.ours
    assert f"against eval mode there: most important {e_most:.3f}" in v.ours


def test_train_mode_loss_switches_the_pretext_noise_on_and_restores_the_mode():
    torch.manual_seed(0)
    net = build_model("mnist_ae", latent_dim=3, pretext="denoising").eval()
    work = X.train_mode_model(net)
    x = torch.rand(5, 1, 28, 28)
    loss = X.train_mode_loss("mse")
    torch.manual_seed(3)
    got = loss(work, x)
    assert not work.training and not any(m.training for m in work.modules())        # mode restored
    torch.manual_seed(3)
    noisy = x + 0.3 * torch.randn_like(x)                                           # RandomNoise(0.3), as ORIG
    want = ((work.decoder(work.encoder(noisy)) - x) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(got, want)
    clean = E.reconstruction_loss("mse")(work, x)
    assert not torch.allclose(got, clean)
