"""Every checkpoint shipped in ``checkpoints/`` matches its manifest's sha256 and loads (weights only, strict)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lfxai_utils.checkpoints import FORMAT, checkpoint_table, load_checkpoint, read_manifest
from lfxai_utils.book.registry import checkpoint_users
from lfxai_utils._utils import sha256_file
from lfxai_utils.models import build_model

DIR = Path(__file__).resolve().parents[1] / "checkpoints"
MANIFESTS = sorted(p for p in DIR.glob("*.json"))
#: Size caps per dataset (MB of .pt files, TracIn checkpoints included); CIFAR-10's is issue 20's 120 MiB.
MAX_MB = {"cifar10": 120 * 1.048576, "mnist": 110, "ecg5000": 20}
MAX_TOTAL_MB = sum(MAX_MB.values())


def _ids():
    return [p.stem for p in MANIFESTS]


def test_checkpoints_are_shipped():
    assert MANIFESTS, f"no checkpoint manifests in {DIR}"
    for js in MANIFESTS:
        assert js.with_suffix(".pt").exists(), f"{js.with_suffix('.pt')} is missing"
    orphans = [p.name for p in DIR.glob("*.pt") if not p.with_suffix(".json").exists()]
    assert not orphans, f"weights without a manifest: {orphans}"


@pytest.mark.parametrize("js", MANIFESTS, ids=_ids())
def test_checkpoint_matches_manifest_and_loads(js):
    m = json.loads(js.read_text())
    assert m["format"] == FORMAT and m["name"] == js.stem
    pt = js.with_suffix(".pt")
    assert sha256_file(pt) == m["file"]["sha256"] and pt.stat().st_size == m["file"]["size"]
    state = torch.load(pt, map_location="cpu", weights_only=True)
    model = build_model(m["arch"], **m["arch_kwargs"])
    model.load_state_dict(state, strict=True)
    assert sum(p.numel() for p in model.parameters()) == m["n_parameters"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    if m["role"] == "model":
        load_checkpoint(DIR, js.stem)          # the library's own verified path
        assert m["data"].get("n_train"), "the manifest must say how many training examples were used"
        assert m["training"]["epochs_run"] >= 1
        for t in m.get("tracin_checkpoints", []):
            assert read_manifest(DIR, t["name"])["file"]["sha256"] == t["sha256"]


def test_total_size_and_readme_table():
    total = sum(p.stat().st_size for p in DIR.glob("*.pt")) / 1e6
    assert total < MAX_TOTAL_MB, f"shipped checkpoints take {total:.1f} MB (> {MAX_TOTAL_MB} MB)"
    per: dict[str, float] = {}
    for js in MANIFESTS:
        name = (json.loads(js.read_text()).get("data") or {}).get("name", "?")
        per[name] = per.get(name, 0.0) + js.with_suffix(".pt").stat().st_size / 1e6
    for name, mb in per.items():
        assert name in MAX_MB and mb < MAX_MB[name], f"{name} checkpoints take {mb:.1f} MB (cap {MAX_MB.get(name)})"
    readme = (DIR / "README.md").read_text()
    assert checkpoint_table(DIR, checkpoint_users()) in readme, \
        "checkpoints/README.md is stale: run `python -m lfxai_utils.checkpoints`"
