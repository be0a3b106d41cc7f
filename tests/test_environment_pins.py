"""The conda environment, the pip requirements and the lock file must pin the same versions."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^\s*-?\s*([A-Za-z0-9_.\-]+)==([^\s;#]+)")


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(lines) -> dict[str, str]:
    out = {}
    for line in lines:
        m = PIN.match(line)
        if m:
            out[_canon(m.group(1))] = m.group(2)
    return out


def _environment_yml_pip_pins() -> dict[str, str]:
    text = (ROOT / "environment.yml").read_text()
    block = text.split("- pip:", 1)[1]
    return _pins(block.splitlines())


def test_environment_yml_matches_requirements():
    req = _pins((ROOT / "requirements.txt").read_text().splitlines())
    env = _environment_yml_pip_pins()
    assert req, "requirements.txt has no pins"
    assert env == req, f"environment.yml and requirements.txt disagree: {set(env.items()) ^ set(req.items())}"


def test_lock_file_agrees_with_requirements():
    req = _pins((ROOT / "requirements.txt").read_text().splitlines())
    lock = _pins((ROOT / "requirements-lock.txt").read_text().splitlines())
    mismatched = {k: (v, lock.get(k)) for k, v in req.items() if lock.get(k) != v}
    assert not mismatched, f"requirements-lock.txt disagrees with requirements.txt: {mismatched}"


@pytest.mark.parametrize("name", ["torch", "torchvision", "captum", "jupyter-book"])
def test_required_pins_present(name):
    req = _pins((ROOT / "requirements.txt").read_text().splitlines())
    expected = {"torch": "2.14.1", "torchvision": "0.29.1", "captum": "0.9.0", "jupyter-book": "1.0.4.post1"}
    assert req[name] == expected[name]


def test_library_does_not_require_exact_torch():
    """GPU environments often carry an older torch: the package metadata must accept it."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_spec = next(d for d in deps if _canon(re.split(r"[<>=!~ ]", d)[0]) == "torch")
    assert "==" not in torch_spec and ">=" in torch_spec
