"""The shared experiment layer (parameters, model loading/training, outputs) and the Claim 1.1 module logic."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from lfxai_utils.checkpoints import CheckpointMismatchError, CheckpointNotFoundError
from lfxai_utils.experiments import common, feature_consistency as fc
from lfxai_utils.fixtures import write_fixture
from lfxai_utils.data import load_dataset


def _setup(tmp_path, **kw):
    args = dict(dataset="mnist", output_dir=str(tmp_path / "out"), checkpoint_dir=str(tmp_path / "ckpt"),
                data_dir=str(tmp_path / "data"), progress=False)
    args.update(kw)
    return common.setup("claim1_feature_consistency", **args)


@pytest.mark.parametrize("kw, match", [
    ({"dataset": "mnistt"}, r"unknown dataset 'mnistt'; valid values: 'mnist'"),
    ({"mode": "fast"}, r"unknown mode 'fast'; valid values: 'inference', 'train'"),
    ({"model": "resnet"}, r"unknown model 'resnet'; valid values: None"),
])
def test_bad_parameters_name_the_valid_values(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        _setup(tmp_path, **kw)


def test_simclr_only_on_cifar10():
    with pytest.raises(ValueError, match="use dataset='cifar10'"):
        fc.validate("mnist", "simclr")
    fc.validate("cifar10", "simclr")


def test_smoke_uses_private_fixture_and_checkpoint_folders(tmp_path):
    exp = _setup(tmp_path, smoke=True, dataset="ecg5000")
    assert exp.smoke and exp.checkpoint_dir != tmp_path / "ckpt" and exp.data_dir != tmp_path / "data"
    assert (exp.data_dir / "ECG5000").is_dir() and not (tmp_path / "ckpt").exists()
    assert exp.size(1000, 8) == 8 and _setup(tmp_path).size(1000, 8) == 1000


def _namespace(tmp_path, **kw):
    """A Claim 1.1 notebook's globals after its parameters cell (plus what else a notebook namespace holds)."""
    ns = dict(dataset="cifar10", model="simclr", n_explain=7, batch_size=64, mode="train", smoke=False, seed=3,
              device="cpu", data_dir=str(tmp_path / "data"), output_dir=str(tmp_path / "out"),
              checkpoint_dir=str(tmp_path / "ckpt"), reuse_checkpoints=True, n_epochs=2,
              __name__="__main__", plt=object())
    ns.update(kw)
    return ns


def test_setup_notebook_sets_up_from_the_namespace(tmp_path):
    exp = common.setup_notebook(fc, _namespace(tmp_path), progress=False)
    assert isinstance(exp, common.Experiment)
    assert (exp.notebook, exp.dataset, exp.model, exp.mode, exp.seed, exp.device.type) == (
        "claim1_feature_consistency", "cifar10", "simclr", "train", 3, "cpu")
    assert (exp.smoke, exp.reuse_checkpoints, exp.n_epochs, exp.progress) == (False, True, 2, False)
    assert (exp.output_dir, exp.checkpoint_dir, exp.data_dir) == (tmp_path / "out", tmp_path / "ckpt", tmp_path / "data")
    assert exp.output_dir.is_dir() and not exp.data_dir.exists() and not exp.checkpoint_dir.exists()


def test_setup_notebook_passes_the_claim_modules_choices_and_extra_keywords(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(common, "setup", lambda notebook, **kw: calls.append((notebook, kw)) or "exp")
    assert common.setup_notebook(fc, _namespace(tmp_path, smoke=True), smoke_fixtures=["mnist"]) == "exp"
    (notebook, kw), = calls
    assert notebook == fc.NOTEBOOK
    assert kw == dict(dataset="cifar10", model="simclr", mode="train", smoke=True, seed=3, device="cpu",
                      data_dir=str(tmp_path / "data"), output_dir=str(tmp_path / "out"),
                      checkpoint_dir=str(tmp_path / "ckpt"), reuse_checkpoints=True, n_epochs=2,
                      datasets=fc.DATASETS, models=fc.MODELS, smoke_fixtures=["mnist"])
    with pytest.raises(TypeError, match="seed come from the notebook's parameters"):
        common.setup_notebook(fc, _namespace(tmp_path), seed=4)


@pytest.mark.parametrize("bad, match", [
    ({"n_explain": -5, "batch_size": 0}, r"n_explain = -5 is not allowed(.|\n)*batch_size = 0 is not allowed"),
    ({"dataset": "mnsit"}, r"dataset = 'mnsit' is not allowed"),
    ({"seed": -1}, r"seed = -1 is not allowed"),
    ({"smoke": "yes"}, r"smoke = 'yes' is not allowed"),
    ({"output_dir": ""}, r"output_dir = '' is not allowed"),
])
def test_setup_notebook_rejects_a_bad_parameter_before_creating_anything(tmp_path, monkeypatch, bad, match):
    calls = []
    real_setup = common.setup
    monkeypatch.setattr(common, "setup", lambda *a, **kw: calls.append(kw) or real_setup(*a, **kw))
    with pytest.raises(ValueError, match=match):
        common.setup_notebook(fc, _namespace(tmp_path, **bad), progress=False)
    assert calls == [] and list(tmp_path.iterdir()) == []


def test_setup_notebook_names_a_missing_parameter(tmp_path):
    ns = _namespace(tmp_path)
    del ns["n_epochs"]
    with pytest.raises(ValueError, match="n_epochs: not defined"):
        common.setup_notebook(fc, ns, progress=False)
    assert list(tmp_path.iterdir()) == []


def _tiny_spec():
    return common.ModelSpec("mnist_ae", {"latent_dim": 2, "pretext": "denoising"}, n_epochs=1, batch_size=32,
                            patience=None, identity={"purpose": "test"})


def test_train_then_inference_round_trip_and_identity_check(tmp_path):
    write_fixture("mnist", tmp_path / "data", n_train=64, n_test=16)
    exp = _setup(tmp_path, mode="train")
    splits = exp.load_data()
    info = common.json_data_info(splits)
    json.dumps(info)  # manifest-ready
    m1, man1 = exp.get_model("m", _tiny_spec(), splits.train, data_info=info)
    assert exp.trained == ["m"] and man1["settings"]["n_epochs"] == 1 and man1["settings"]["purpose"] == "test"
    inf = _setup(tmp_path, mode="inference")
    m2, man2 = inf.get_model("m", _tiny_spec().with_(n_epochs=100), splits.train, data_info=info)
    assert inf.loaded == ["m"] and man2["file"]["sha256"] == man1["file"]["sha256"]
    x = splits.test.tensors()[0]
    torch.testing.assert_close(m1.encoder(x), m2.encoder(x))          # budget differs: still the same model
    with pytest.raises(CheckpointMismatchError, match=r"purpose: checkpoint='test', requested='other'"):
        inf.get_model("m", _tiny_spec().with_(identity={"purpose": "other"}), splits.train, data_info=info)
    with pytest.raises(CheckpointNotFoundError, match="papermill notebooks/claim1_feature_consistency.ipynb"):
        inf.get_model("absent", _tiny_spec(), splits.train, data_info=info)


def test_train_mode_retrains_unless_reuse(tmp_path):
    write_fixture("mnist", tmp_path / "data", n_train=64, n_test=16)
    exp = _setup(tmp_path, mode="train", n_epochs=1)
    splits = exp.load_data()
    info = common.json_data_info(splits)
    exp.get_model("m", _tiny_spec().with_(n_epochs=5), splits.train, data_info=info)
    assert exp.trained == ["m"]
    assert json.loads((tmp_path / "ckpt" / "m.json").read_text())["training"]["epochs_run"] == 1  # n_epochs cap
    again = _setup(tmp_path, mode="train", reuse_checkpoints=True)
    again.get_model("m", _tiny_spec(), splits.train, data_info=info)
    assert again.loaded == ["m"] and again.trained == []
    fresh = _setup(tmp_path, mode="train")
    fresh.get_model("m", _tiny_spec(), splits.train, data_info=info)
    assert fresh.trained == ["m"]
    # reuse only what is current: another budget or other data files mean retraining (make checkpoints relies on it)
    bigger = _setup(tmp_path, mode="train", reuse_checkpoints=True)
    bigger.get_model("m", _tiny_spec().with_(n_epochs=2), splits.train, data_info=info)
    assert bigger.trained == ["m"]
    other = {**info, "files": [{**f, "sha256": "0" * 64} for f in info["files"]]}
    moved = _setup(tmp_path, mode="train", reuse_checkpoints=True)
    moved.get_model("m", _tiny_spec().with_(n_epochs=2), splits.train, data_info=other)
    assert moved.trained == ["m"]
    same = _setup(tmp_path, mode="train", reuse_checkpoints=True)
    same.get_model("m", _tiny_spec().with_(n_epochs=2), splits.train, data_info=other)
    assert same.loaded == ["m"] and same.trained == []


def test_stale_reasons_name_each_difference():
    man = {"settings": {"arch": "a", "n_epochs": 100, "batch_size": 300, "seed": 1, "checkpoint_every": 10},
           "data": {"files": [{"path": "f", "sha256": "1"}], "n_train": 60000}}
    now = {"arch": "a", "n_epochs": 100, "batch_size": 300, "seed": 1, "checkpoint_every": 10}
    info = {"files": [{"path": "f", "sha256": "1"}], "n_train": 60000}
    assert common.stale_reasons(man, now, info) == []
    assert common.stale_reasons(man, {**now, "n_epochs": 20}, info) == ["n_epochs: checkpoint=100, now=20"]
    no_tracin = {k: v for k, v in now.items() if k != "checkpoint_every"}
    assert common.stale_reasons(man, no_tracin, info) == ["checkpoint_every: checkpoint=10, now=<absent>"]
    assert common.stale_reasons(man, now, {**info, "files": [{"path": "f", "sha256": "2"}]}) == \
        ["data files differ: f"]
    assert common.stale_reasons(man, now, {**info, "n_train": 10000}) == ["data.n_train differs"]
    # a mapping (ROAR's masks) differs on a field both record; a field only one side records is derived, later added
    roar = {"method": "random", "mask_sha256": "a"}
    man_roar = {**man, "data": {**man["data"], "roar": roar}}
    assert common.stale_reasons(man_roar, now, {**info, "roar": {**roar, "check_n": 10}}) == []
    assert common.stale_reasons(man_roar, now, {**info, "roar": {**roar, "mask_sha256": "b"}}) == ["data.roar differs"]


def test_baselines(tmp_path):
    write_fixture("ecg5000", tmp_path, n_train=40, n_test=20)
    splits = load_dataset("ecg5000", data_dir=tmp_path, ecg_mode="features", download=False, progress=False)
    b = common.baseline_for("ecg5000", splits)
    normal = splits.train.tensors()[0]
    torch.testing.assert_close(b[0], normal.mean(0))
    write_fixture("cifar10", tmp_path, n_train=20, n_test=10)
    cif = load_dataset("cifar10", data_dir=tmp_path, download=False, progress=False)
    assert common.baseline_for("cifar10", cif).shape == (1, 3, 32, 32)
    blur = common.baseline_for("cifar10", cif, "simclr")
    x = torch.rand(2, 3, 32, 32)
    flat = torch.full((1, 3, 32, 32), 0.3)
    torch.testing.assert_close(blur(flat), flat)                        # blurring a constant image changes nothing
    assert blur(x).std() < x.std()


def test_explained_set_is_seeded_subset(tmp_path):
    write_fixture("mnist", tmp_path, n_train=20, n_test=30)
    splits = load_dataset("mnist", data_dir=tmp_path, download=False, progress=False)
    a, b = fc.explained_set(splits, 10, 3), fc.explained_set(splits, 10, 3)
    torch.testing.assert_close(a, b)
    assert len(fc.explained_set(splits, None, 0)) == 30


def _shift_table(means: dict[str, list[float]]):
    rows = []
    for method, vals in means.items():
        for p, v in zip([0, 5, 10, 20, 50, 80, 100], vals):
            for e, d in enumerate((-0.01, 0.01)):
                rows.append({"method": method, "percent": float(p), "example": e, "shift": v + d})
    return pd.DataFrame(rows)


def test_verdicts_require_beating_random_at_every_level(tmp_path):
    exp = _setup(tmp_path)
    rand = [0, 0.1, 0.2, 0.3, 0.5, 0.8, 1.0]
    df = _shift_table({"Random": rand, "GradientSHAP": [0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
                       "Integrated Gradients": [0, 0.5, 0.6, 0.7, 0.8, 0.7, 1.0],   # loses at 80 %
                       "Saliency": [0, 0.2, 0.3, 0.4, 0.6, 0.9, 1.0]})
    v = {x.quantity.split(", ")[1]: x for x in fc.verdicts(exp, df)}
    assert v["GradientSHAP"].verdict == "holds" and v["Saliency"].verdict == "holds"
    assert v["Integrated Gradients"].verdict == "does not hold"
    assert "4/5 levels" in v["Integrated Gradients"].ours and "0.7 vs random 0.3" in v["GradientSHAP"].ours
    s = fc.summarise(df)
    row = s[(s.method == "Random") & (s.percent == 5.0)].iloc[0]
    assert row["mean"] == pytest.approx(0.1) and row["ci95"] == pytest.approx(1.96 * np.std([0.09, 0.11], ddof=1)
                                                                               / np.sqrt(2))


def test_smoke_summary_never_claims_a_verdict(tmp_path):
    exp = _setup(tmp_path, smoke=True)
    df = _shift_table({"Random": [0, .1, .2, .3, .5, .8, 1], "GradientSHAP": [0, .5, .6, .7, .8, .9, 1]})
    out = exp.write_summary(fc.verdicts(exp, df))
    assert set(out.verdict) == {"inconclusive"} and "smoke" in out.criterion.iloc[0]
    assert (exp.output_dir / "summary.csv").exists()


def test_pairing_agreement_is_pearson():
    a = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert fc.pairing_agreement({"gradient_shap": a, "gradient_shap_as_published": 2 * a + 1}) == pytest.approx(1.0)
    assert fc.pairing_agreement({"gradient_shap": a, "gradient_shap_as_published": -a}) == pytest.approx(-1.0)
    assert fc.pairing_agreement({"gradient_shap": a}) is None


def test_missing_data_in_inference_mode_downloads_unless_in_the_book(tmp_path, monkeypatch):
    """Inference mode downloads missing data; the book build (LFXAI_BOOK) never does."""
    from lfxai_utils import data as D

    monkeypatch.delenv("LFXAI_DATA_DIR", raising=False)
    monkeypatch.delenv("LFXAI_BOOK", raising=False)
    monkeypatch.delenv("LFXAI_NO_DOWNLOAD", raising=False)
    calls = []

    def fake_download(name, root):
        calls.append((name, root))
        write_fixture(name, root, n_train=20, n_test=10)

    monkeypatch.setattr(D, "_download", fake_download)
    exp = _setup(tmp_path, dataset="cifar10")
    splits = exp.load_data()
    assert calls == [("cifar10", tmp_path / "data")] and len(splits.train) == 20
    monkeypatch.setenv("LFXAI_BOOK", "1")
    book = _setup(tmp_path / "b", dataset="cifar10")
    with pytest.raises(common.DatasetNotFoundError, match="book build never downloads"):
        book.load_data()
    assert len(calls) == 1


def test_offline_download_fails_within_seconds_with_every_fix_named(tmp_path, monkeypatch):
    import socket
    import time

    from lfxai_utils import data as D

    monkeypatch.delenv("LFXAI_DATA_DIR", raising=False)
    monkeypatch.delenv("LFXAI_BOOK", raising=False)
    asked = []

    def hang(addr, timeout=None):     # a black-holed network: connect() never answers before the timeout
        asked.append((addr, timeout))
        time.sleep(min(timeout, 0.2))
        raise socket.timeout("timed out")

    monkeypatch.setattr(socket, "create_connection", hang)
    exp = _setup(tmp_path, dataset="cifar10")
    t0 = time.perf_counter()
    with pytest.raises(common.DatasetNotFoundError) as err:
        exp.load_data()
    assert time.perf_counter() - t0 < 15
    assert asked and all(t == D.CONNECT_TIMEOUT <= 5 for _, t in asked)
    assert asked[0][0] == ("www.cs.toronto.edu", 443)
    msg = str(err.value)
    assert "no download host reachable" in msg and "www.cs.toronto.edu:443" in msg
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in msg
    assert "cifar-10-batches-py" in msg                                    # the loader's own list of files
    assert "load_dataset('cifar10')" in msg
    assert ("papermill notebooks/claim1_feature_consistency.ipynb out.ipynb -p dataset cifar10 -p mode train"
            in msg)


def test_verdicts_on_models_cut_below_the_paper_budget_and_still_improving_are_inconclusive(tmp_path):
    from lfxai_utils.report import Verdict

    write_fixture("mnist", tmp_path / "data", n_train=64, n_test=16)
    v = Verdict("c", "mnist", "m", "q", "0.5", "0.4", "src", "above 0.3", "holds")
    capped = _setup(tmp_path, mode="train", n_epochs=1, output_dir=str(tmp_path / "o1"))
    splits = capped.load_data()
    info = common.json_data_info(splits)
    capped.get_model("m", _tiny_spec().with_(n_epochs=5), splits.train, data_info=info)
    diag = capped.training_diagnostics()
    assert diag["capped"] == ["m"] and diag["still_improving"] == ["m"] and diag["undertrained"] == ["m"]
    assert "1 of 1 models trained for 1 epochs (paper: 5)" in diag["sentence"]
    (row,) = capped.write_summary([v]).to_dict("records")
    assert row["verdict"] == "inconclusive" and "not like-for-like" in row["ours"]
    assert "at this budget the criterion gives: holds" in row["ours"]
    # trained at the paper's own budget: the verdict stands (like-for-like with the paper)
    full = _setup(tmp_path, mode="train", output_dir=str(tmp_path / "o2"), checkpoint_dir=str(tmp_path / "c2"))
    full.get_model("m", _tiny_spec(), splits.train, data_info=info)
    assert full.training_diagnostics()["undertrained"] == []
    assert full.write_summary([v]).verdict.tolist() == ["holds"]


def test_resolve_runs_uses_the_complete_shipped_runs_in_inference_and_the_papers_when_training(tmp_path, capsys):
    """`-p n_runs` unset (None): inference uses runs 0..k-1 whose every checkpoint is there (the design card's
    `papermill notebooks/claim2_pretext.ipynb -p dataset cifar10` then runs on what is shipped for CIFAR-10)."""
    from lfxai_utils.checkpoints import checkpoint_paths
    from lfxai_utils.experiments import pretext as P

    def ship(*names, sha="new"):
        for n in names:
            _write_manifest(tmp_path / "ckpt", n, sha=sha)

    def required(k):
        return P.required_checkpoints("cifar10", None, k)

    inf = _setup(tmp_path, dataset="cifar10", mode="inference")
    with pytest.raises(CheckpointNotFoundError, match=r"no complete run .* train them: papermill .*-p mode train"):
        inf.resolve_runs(None, 5, required)
    ship(*required(1)[:3])                                          # run 0 incomplete: still nothing to use
    with pytest.raises(CheckpointNotFoundError, match=P.checkpoint("cifar10", "classifier", 0)):
        inf.resolve_runs(None, 5, required)
    ship(*required(2))
    ship(*[n for n in required(4) if "_run3" in n])                # run 3 without run 2: runs 0-1 are used
    assert inf.resolve_runs(None, 5, required) == 2 and "the 2 run(s)" in capsys.readouterr().out
    checkpoint_paths(tmp_path / "ckpt", required(2)[-1])[0].unlink()   # a .pt gone: run 1 no longer complete
    assert inf.resolve_runs(None, 5, required) == 1
    ship(*required(7))
    assert inf.resolve_runs(None, 5, required) == 5                 # never more than the paper's
    assert inf.resolve_runs(3, 5, required) == 3                    # an explicit n_runs is kept
    ship(*[n for n in required(3) if "_run2" in n], sha="old")      # run 2 trained on other data: the prefix ends
    assert inf.resolve_runs(None, 5, required) == 2
    ship(required(1)[0], sha="old")                                 # run 0 half retrained: nothing can be used
    with pytest.raises(CheckpointNotFoundError, match="run 0's models were trained differently"):
        inf.resolve_runs(None, 5, required)
    assert _setup(tmp_path, dataset="cifar10", mode="train").resolve_runs(None, 5, required) == 5


def test_get_model_in_inference_mode_never_trains(tmp_path):
    """A missing checkpoint raises (a FileNotFoundError naming the file and the command that trains it) and writes
    nothing; one whose manifest no longer matches the requested architecture raises its mismatch."""
    write_fixture("mnist", tmp_path / "data", n_train=64, n_test=16)
    inf = _setup(tmp_path, mode="inference")
    splits = inf.load_data()
    info = common.json_data_info(splits)
    with pytest.raises(CheckpointNotFoundError) as err:
        inf.get_model("absent", _tiny_spec(), splits.train, data_info=info)
    assert "absent.pt" in str(err.value) and inf.papermill_command("train") in str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert not (tmp_path / "ckpt").exists() or list((tmp_path / "ckpt").iterdir()) == []
    _setup(tmp_path, mode="train").get_model("m", _tiny_spec(), splits.train, data_info=info)
    js = tmp_path / "ckpt" / "m.json"
    manifest = json.loads(js.read_text())
    manifest["arch_kwargs"]["latent_dim"] = 3
    js.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointMismatchError, match="latent_dim"):
        inf.get_model("m", _tiny_spec(), splits.train, data_info=info)
    assert inf.trained == [] and inf.loaded == []


def test_get_model_trains_saves_tracin_checkpoints_then_loads_the_same_model(tmp_path):
    write_fixture("mnist", tmp_path / "data", n_train=64, n_test=16)
    exp = _setup(tmp_path, mode="train")
    splits = exp.load_data()
    info = common.json_data_info(splits)
    spec = _tiny_spec().with_(n_epochs=2, checkpoint_every=1)
    model, manifest = exp.get_model("ae", spec, splits.train, data_info=info)
    ckpt = tmp_path / "ckpt"
    assert exp.trained == ["ae"] and not model.training
    assert [e["epoch"] for e in manifest["tracin_checkpoints"]] == [0, 1]
    assert {p.name for p in ckpt.iterdir()} == {"ae.pt", "ae.json", "ae_epoch0.pt", "ae_epoch0.json",
                                                "ae_epoch1.pt", "ae_epoch1.json"}
    sub = json.loads((ckpt / "ae_epoch1.json").read_text())
    assert sub["role"] == "tracin" and sub["parent"] == "ae" and sub["epoch"] == 1
    states = exp.tracin_checkpoints("ae")
    assert len(states) == 2 and states[0].keys() == model.state_dict().keys()
    assert any(not torch.equal(states[0][k], states[1][k]) for k in states[0])
    inf = _setup(tmp_path, mode="inference")
    again, manifest2 = inf.get_model("ae", spec, splits.train, data_info=info)
    assert inf.loaded == ["ae"] and inf.trained == [] and manifest2 == manifest
    x = splits.test.tensors()[0]
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    # another training setting (here the learning rate): a train run that reuses checkpoints retrains it
    lr = _setup(tmp_path, mode="train", reuse_checkpoints=True)
    _, manifest3 = lr.get_model("ae", spec.with_(lr=0.01), splits.train, data_info=info)
    assert lr.trained == ["ae"] and manifest3["settings"]["lr"] == 0.01


def test_get_model_training_is_seeded(tmp_path):
    write_fixture("mnist", tmp_path / "data", n_train=64, n_test=16)
    exp = _setup(tmp_path, mode="train")
    splits = exp.load_data()
    info = common.json_data_info(splits)
    shas = [exp.get_model(name, _tiny_spec(), splits.train, data_info=info)[1]["file"]["sha256"] for name in "ab"]
    assert shas[0] == shas[1]


def test_a_capped_model_counts_as_undertrained_unless_the_papers_early_stopping_would_have_ended_it():
    """Best epoch 8 of 10 under a 10-epoch cap (paper: 100 epochs, patience 10) is not "still improving", but the
    paper's training would have gone on: undertrained. Capped models that plateaued for `patience` epochs, or that
    early stopping ended, are not; uncapped models never are."""
    from lfxai_utils.report import training_diagnostics

    def man(n_epochs, best, run, stopped=False, patience=10):
        return {"settings": {"n_epochs": n_epochs, "patience": patience},
                "training": {"best_epoch": best, "epochs_run": run, "stopped_early": stopped}}

    manifests = {"cut": man(10, 8, 10), "last": man(10, 9, 10), "flat": man(30, 15, 30), "stopped": man(30, 5, 16, True),
                 "full": man(100, 99, 100), "no_patience": man(10, 2, 10, patience=None)}
    d = training_diagnostics(manifests, 100)
    assert d["capped"] == ["cut", "last", "flat", "stopped", "no_patience"]
    assert d["still_improving"] == ["last", "full"]
    assert d["undertrained"] == ["cut", "last", "no_patience"]
    assert "2 of 6 cut by the epoch cap before the paper's early stopping would have ended them" in d["sentence"]


def _write_manifest(ckpt, name, *, sha="new", n_epochs=100):
    """A minimal valid checkpoint (manifest + .pt) trained on data file ``sha`` for ``n_epochs``."""
    from lfxai_utils.checkpoints import FORMAT, checkpoint_paths

    pt, js = checkpoint_paths(ckpt, name)
    pt.parent.mkdir(parents=True, exist_ok=True)
    pt.write_bytes(b"x")
    js.write_text(json.dumps({"format": FORMAT, "file": {}, "settings": {"n_epochs": n_epochs, "patience": 10},
                              "data": {"files": [{"path": "d.bin", "sha256": sha}], "n_train": 54000}}))


def test_select_runs_never_mixes_models_trained_differently(tmp_path):
    """A grid being retrained run by run: the page uses the complete *current* runs (what `make checkpoints` leaves
    alone), else the largest set of stale runs trained alike; a half-retrained run is never used."""
    from lfxai_utils.experiments.jobs import TrainJob

    names = {r: [f"m{t}_run{r}" for t in "ab"] for r in range(5)}
    jobs = [TrainJob("claim3_disentanglement", "mnist", None, (n,), {"run": r}, ("mnist", {}),
                     expect={n: {"n_epochs": 100}}) for r in range(5) for n in names[r]]
    info = {"files": [{"path": "d.bin", "sha256": "new"}], "n_train": 54000}
    ckpt = tmp_path / "ckpt"
    inf = _setup(tmp_path, mode="inference", checkpoint_dir=str(ckpt))

    def select(n_runs=None):
        return inf.select_runs(n_runs, 5, jobs, data_info=info)

    with pytest.raises(CheckpointNotFoundError, match=r"run 0: incomplete \(0 of 2 models trained\).*-p mode train"):
        select()
    for r in range(3):                                   # runs 0-2: an old grid (other data file, 20 epochs)
        for n in names[r]:
            _write_manifest(ckpt, n, sha="old", n_epochs=20)
    sel = select()
    assert (sel.runs, sel.kind) == ([0, 1, 2], "stale") and "trained on other data files" in sel.note
    assert sel.left_out == {3: "incomplete (0 of 2 models trained)", 4: "incomplete (0 of 2 models trained)"}
    _write_manifest(ckpt, names[0][0])                   # run 0 half retrained: left out, runs 1-2 still alike
    sel = select()
    assert sel.runs == [1, 2] and sel.kind == "stale" and "trained differently" in sel.left_out[0]
    _write_manifest(ckpt, names[0][1])                   # run 0 complete and current: it alone, never with 1-2
    sel = select()
    assert (sel.runs, sel.kind) == ([0], "current")
    assert sel.left_out[1].startswith("stale (trained on other data files)") and "not mixed" in sel.left_out[2]
    for n in names[3]:                                   # run 3 current too: runs need not be contiguous
        _write_manifest(ckpt, n)
    assert select().runs == [0, 3]
    sel = select(1)                                      # n_runs caps the count (the lowest runs first)
    assert sel.runs == [0] and sel.left_out[3] == "not needed (n_runs = 1)"
    assert "Run 3 is trained alike too; only the first 1 is used (`n_runs = 1`)." in sel.note and "Left out: run 1" in sel.note
    sel = select(3)                                      # asked for more than are trained alike: said so
    assert sel.runs == [0, 3] and "`n_runs = 3` asked for 3: only 2 can be used" in sel.note
    _write_manifest(ckpt, names[4][0], n_epochs=50)      # another budget: stale by its settings, incomplete anyway
    assert select().left_out[4] == "incomplete (1 of 2 models trained)"
    # train mode and smoke runs train every run: 0..n-1
    assert _setup(tmp_path, mode="train").select_runs(None, 5, jobs).runs == [0, 1, 2, 3, 4]
    assert _setup(tmp_path, mode="train").select_runs(2, 5, jobs).kind == "train"


def test_get_model_resumes_a_stopped_training_and_cleans_up_its_state(tmp_path, monkeypatch):
    """A training stopped mid-way (a killed ``make checkpoints``) leaves its state in ``<ckpt>/.resume``; the next
    train run continues from the last finished epoch to the same weights as an uninterrupted training, saves the
    checkpoint, and deletes the state (the checkpoint folder holds only checkpoints again)."""
    from lfxai_utils import training

    write_fixture("mnist", tmp_path / "data", n_train=64, n_test=16)
    spec = _tiny_spec().with_(n_epochs=3)
    ref = _setup(tmp_path, mode="train", checkpoint_dir=str(tmp_path / "ref"))
    splits = ref.load_data()
    info = common.json_data_info(splits)
    ref_model, _ = ref.get_model("ae", spec, splits.train, data_info=info)

    real, calls = training._train_epoch, []

    def train_epoch(model, opt, sched, batches, epoch, nhwc):
        calls.append(epoch)
        if epoch == 2 and len(calls) == 3:
            raise KeyboardInterrupt
        return real(model, opt, sched, batches, epoch, nhwc)

    monkeypatch.setattr(training, "_train_epoch", train_epoch)
    exp = _setup(tmp_path, mode="train")
    state = exp.resume_path("ae")
    assert state == tmp_path / "ckpt" / ".resume" / "ae.pt"
    with pytest.raises(KeyboardInterrupt):
        exp.get_model("ae", spec, splits.train, data_info=info)
    assert state.exists() and not (tmp_path / "ckpt" / "ae.pt").exists()
    model, manifest = _setup(tmp_path, mode="train").get_model("ae", spec, splits.train, data_info=info)
    assert calls == [0, 1, 2, 2] and manifest["training"]["epochs_run"] == 3
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref_model.state_dict().values()))
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} == {"ae.pt", "ae.json"}
