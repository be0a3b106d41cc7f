"""Checkpoint format: names, round trip, integrity and mismatch errors, TracIn files, atomic writes and the README
table. (Loading else training is ``Experiment.get_model``: tests/test_experiments_common.py.)"""
from __future__ import annotations

import json

import pytest
import torch

from lfxai_utils import checkpoints as ck
from lfxai_utils.checkpoints import (CheckpointIntegrityError, CheckpointMismatchError, checkpoint_name,
                                     load_checkpoint, load_tracin_checkpoints, save_checkpoint)
from lfxai_utils.models import build_model
from lfxai_utils.training import fit

SETTINGS = {"pretext": "denoising", "n_epochs": 2, "batch_size": 16, "lr": 1e-3, "seed": 0}
DATA = {"dataset": "generated", "files": [{"name": "x.npz", "sha256": "0" * 64}]}


def images(n=32):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 28, 28, generator=g), torch.zeros(n, dtype=torch.long)


def build():
    return build_model("mnist_ae", latent_dim=4, pretext="denoising")


def train(model, checkpoint_every=None):
    return fit(model, images(), n_epochs=2, batch_size=16, device="cpu", progress=False,
               checkpoint_every=checkpoint_every)


@pytest.fixture()
def saved(tmp_path):
    torch.manual_seed(0)
    model = build()
    result = train(model)
    save_checkpoint(model, tmp_path, "m", settings=SETTINGS, data_info=DATA, train_result=result)
    return tmp_path, model


def test_checkpoint_names():
    assert checkpoint_name("claim1-features", "mnist", "denoising-ae") == "claim1-features_mnist_denoising-ae"
    assert checkpoint_name("claim2-pretext", "mnist", "inpainting-ae", run=3) == "claim2-pretext_mnist_inpainting-ae_run3"
    assert checkpoint_name("claim3-disvae", "mnist", "tc-vae", beta=5.0, run=2) == "claim3-disvae_mnist_tc-vae_beta5_run2"
    assert checkpoint_name("claim1-examples", "ecg5000", "ae", variant="small", beta=0.5, epoch=10) == \
        "claim1-examples_ecg5000_ae_small_beta0p5_epoch10"
    for bad in ("Claim1", "claim_1", "", "a b"):
        with pytest.raises(ValueError, match="lower-case"):
            checkpoint_name(bad, "mnist", "ae")


def test_round_trip_identical_outputs_and_manifest(saved):
    d, model = saved
    loaded, manifest = load_checkpoint(d, "m", expected_arch="mnist_ae", expected_arch_kwargs={"latent_dim": 4},
                                       expected_settings=SETTINGS)
    x = images(8)[0]
    with torch.no_grad():
        assert torch.equal(model.eval()(x), loaded(x))
    assert not loaded.training and loaded.arch == "mnist_ae"
    assert manifest["arch_kwargs"] == {"latent_dim": 4, "pretext": "denoising", "noise_level": 0.3, "mask_proportion": 0.2}
    assert manifest["settings"] == SETTINGS and manifest["data"] == DATA
    assert manifest["file"]["sha256"] == ck.sha256_file(d / "m.pt") and manifest["file"]["size"] == (d / "m.pt").stat().st_size
    t = manifest["training"]
    assert t["epochs_run"] == 2 and t["n_train"] + t["n_val"] == 32 and t["seed"] == 0 and len(t["history"]) == 2
    assert set(manifest["versions"]) == {"torch", "torchvision", "captum", "lfxai_utils", "python"}
    assert manifest["created"] and manifest["tracin_checkpoints"] == []
    assert set(p.name for p in d.iterdir()) == {"m.pt", "m.json"}
    assert all(p.stat().st_mode & 0o044 == 0o044 for p in d.iterdir())  # group/other readable (not mkstemp's 0600)


def test_corrupted_or_truncated_weights_raise_integrity_error(saved):
    d, _ = saved
    pt = d / "m.pt"
    expected = json.loads((d / "m.json").read_text())["file"]["sha256"]
    raw = bytearray(pt.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    pt.write_bytes(bytes(raw))
    with pytest.raises(CheckpointIntegrityError, match="m.pt") as err:
        load_checkpoint(d, "m")
    assert expected in str(err.value) and ck.sha256_file(pt) in str(err.value)
    pt.write_bytes(bytes(raw[: len(raw) // 3]))
    with pytest.raises(CheckpointIntegrityError, match="corrupt"):
        load_checkpoint(d, "m")
    (d / "m.json").write_text("{ not json")
    with pytest.raises(CheckpointIntegrityError, match="not valid JSON"):
        load_checkpoint(d, "m")


def test_edited_manifest_raises_mismatch_with_readable_diff(saved):
    d, _ = saved
    js = d / "m.json"
    manifest = json.loads(js.read_text())
    manifest["arch_kwargs"]["latent_dim"] = 5
    js.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointMismatchError, match=r"arch_kwargs\.latent_dim: checkpoint=5, requested=4"):
        load_checkpoint(d, "m", expected_arch="mnist_ae", expected_arch_kwargs={"latent_dim": 4})
    with pytest.raises(CheckpointMismatchError, match=r"settings\.n_epochs: checkpoint=2, requested=100"):
        load_checkpoint(d, "m", expected_settings={**SETTINGS, "n_epochs": 100})
    with pytest.raises(CheckpointMismatchError, match=r"arch: checkpoint='mnist_ae', requested='vae'"):
        load_checkpoint(d, "m", expected_arch="vae")
    # without expectations, the weights (d=4) do not fit the edited architecture (d=5)
    with pytest.raises(CheckpointMismatchError, match="shape mismatch"):
        load_checkpoint(d, "m")


def test_weights_of_another_architecture_raise_readable_mismatch(saved):
    d, _ = saved
    ck.atomic_torch_save(build_model("cifar_ae").state_dict(), d / "m.pt")
    js = d / "m.json"
    manifest = json.loads(js.read_text())
    manifest["file"].update(sha256=ck.sha256_file(d / "m.pt"), size=(d / "m.pt").stat().st_size)
    js.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(d, "m")
    msg = str(err.value)
    assert "missing key" in msg and "unexpected key" in msg and "another architecture" in msg
    assert len(msg) < 800  # a summary, not a dump of every key


def test_tracin_checkpoints_are_saved_listed_and_verified(tmp_path):
    torch.manual_seed(0)
    model = build()
    save_checkpoint(model, tmp_path, "ae", settings=SETTINGS, data_info=DATA,
                    train_result=train(model, checkpoint_every=1))
    manifest = json.loads((tmp_path / "ae.json").read_text())
    assert [e["epoch"] for e in manifest["tracin_checkpoints"]] == [0, 1]
    assert {p.name for p in tmp_path.iterdir()} == {"ae.pt", "ae.json", "ae_epoch0.pt", "ae_epoch0.json",
                                                    "ae_epoch1.pt", "ae_epoch1.json"}
    sub = json.loads((tmp_path / "ae_epoch1.json").read_text())
    assert sub["role"] == "tracin" and sub["parent"] == "ae" and sub["epoch"] == 1
    states = load_tracin_checkpoints(tmp_path, "ae")
    assert len(states) == 2 and states[0].keys() == model.state_dict().keys()
    assert not torch.equal(states[0]["encoder.encoder_lin.2.weight"], states[1]["encoder.encoder_lin.2.weight"])

    # a TracIn checkpoint replaced by another intact one (file + its manifest) is detected via the main listing
    import shutil
    for ext in (".pt", ".json"):
        shutil.copy(tmp_path / f"ae_epoch0{ext}", tmp_path / f"keep{ext}")
        shutil.copy(tmp_path / f"ae_epoch1{ext}", tmp_path / f"ae_epoch0{ext}")
    with pytest.raises(CheckpointIntegrityError, match="ae_epoch0.*replaced"):
        load_tracin_checkpoints(tmp_path, "ae")
    for ext in (".pt", ".json"):
        shutil.move(tmp_path / f"keep{ext}", tmp_path / f"ae_epoch0{ext}")
    assert len(load_tracin_checkpoints(tmp_path, "ae")) == 2

    # a corrupted TracIn file is detected
    p = tmp_path / "ae_epoch0.pt"
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(CheckpointIntegrityError, match="ae_epoch0.pt"):
        load_tracin_checkpoints(tmp_path, "ae")


def test_failed_save_leaves_no_partial_file(tmp_path, monkeypatch):
    real_save = torch.save

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial bytes")
        raise OSError("disk full")

    model = build()
    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(model, tmp_path, "x", settings=SETTINGS, data_info=DATA)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(torch, "save", real_save)
    with pytest.raises(ValueError, match="JSON-serialisable"):
        save_checkpoint(model, tmp_path, "x", settings={"f": lambda: 0}, data_info=DATA)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="build_model"):
        save_checkpoint(torch.nn.Linear(2, 2), tmp_path, "x", settings=SETTINGS, data_info=DATA)


def test_amend_manifest_adds_derived_fields_atomically_and_never_changes_one(saved, monkeypatch):
    d, _ = saved
    before = ck.read_manifest(d, "m")
    after = ck.amend_manifest(d, "m", "data.roar", {"check_n": 10})
    assert after == ck.read_manifest(d, "m") and after["data"]["roar"] == {"check_n": 10}
    assert {k: v for k, v in after.items() if k != "data"} == {k: v for k, v in before.items() if k != "data"}
    assert ck.amend_manifest(d, "m", "data.roar", {"check_n": 10}) == after      # the same value again: fine
    with pytest.raises(ValueError, match="refusing to change"):
        ck.amend_manifest(d, "m", "data.roar", {"check_n": 11})
    with pytest.raises(ValueError, match="not a mapping"):
        ck.amend_manifest(d, "m", "data.roar.check_n", {"x": 1})

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(json, "dump", boom)
    with pytest.raises(OSError):
        ck.amend_manifest(d, "m", "data.roar", {"other": 1})
    assert ck.read_manifest(d, "m") == after                                    # no half-written manifest
    load_checkpoint(d, "m")                                                     # weights still verify


def test_readme_table(saved):
    d, _ = saved
    readme = d / "README.md"
    readme.write_text(f"# C\n\n{ck._TABLE_START}\nold\n{ck._TABLE_END}\n\nfooter\n")
    ck.update_readme(d)
    text = readme.read_text()
    assert "`m`" in text and "mnist_ae" in text and "old" not in text and text.endswith("footer\n")
    assert "| name |" in ck.checkpoint_table(d)
    assert ck.checkpoint_table(d).splitlines()[-1].endswith("| — |")            # no page named: used by nobody
    ck.update_readme(d, used_by={"m": ["claim_a (mnist)", "claim_b (mnist)"]})
    assert "| claim_a (mnist), claim_b (mnist) |" in readme.read_text()
