"""Notebook parameters are checked in one place (lfxai_utils.params) before a notebook does any work.

* every parameter of every notebook's ``parameters`` cell has a schema entry, and every entry a parameter;
* the notebooks' defaults, the book's page parameters and the smoke settings pass;
* a table of bad values (negative, zero, wrong type, unknown name, NaN, ...) is rejected for every parameter of every
  notebook, with a ``ValueError`` naming the parameter, the value and what is allowed;
* each notebook's set-up cell (``common.setup_notebook``) runs the check before ``common.setup`` (executed here
  with ``common.setup`` replaced).
"""
from __future__ import annotations

import ast
import math
import re
from pathlib import Path

import nbformat
import pytest

from lfxai_utils import params as P
from lfxai_utils.book import notebook_parameters

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
NAN = float("nan")


def defaults(notebook: str) -> dict:
    """The notebook's parameters cell, evaluated (every default is a literal)."""
    return {k: ast.literal_eval(v) for k, v in notebook_parameters(ROOT / "notebooks" / f"{notebook}.ipynb").items()}


# ------------------------------------------------------------------------------------------- coverage
@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_every_parameter_has_a_schema_entry(notebook):
    declared = set(notebook_parameters(ROOT / "notebooks" / f"{notebook}.ipynb"))
    specs = set(P.schema(notebook))
    assert not declared - specs, (f"{notebook}: parameters without an entry in lfxai_utils/params.py "
                                  f"(add their type and range there): {sorted(declared - specs)}")
    assert not specs - declared, f"{notebook}: schema entries for parameters it does not have: {sorted(specs - declared)}"


def test_schema_knows_every_notebook_and_no_other():
    assert P.notebooks() == NOTEBOOKS
    with pytest.raises(ValueError, match="unknown notebook 'nope'"):
        P.schema("nope")


def _parameter_lines(notebook: str) -> list[str]:
    """The assignment lines of the notebook's ``parameters`` cell, in order."""
    nb = nbformat.read(ROOT / "notebooks" / f"{notebook}.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    return [ln for ln in cell.source.splitlines() if re.match(r"^[A-Za-z_]\w*\s*=", ln)]


def test_every_notebook_ends_its_parameters_with_the_same_common_block():
    """The common parameters close every notebook's parameters cell, in COMMON_NAMES' order and word for word the
    same lines (defaults and comments) in every notebook."""
    blocks = {}
    for nb in NOTEBOOKS:
        lines = _parameter_lines(nb)[-len(P.COMMON_NAMES):]
        assert tuple(re.match(r"^(\w+)", ln).group(1) for ln in lines) == P.COMMON_NAMES, nb
        blocks[nb] = lines
        assert set(P.COMMON_NAMES) <= set(P.schema(nb))
    assert len({tuple(b) for b in blocks.values()}) == 1, f"the common parameters differ between notebooks: {blocks}"
    assert tuple(P._common()) == P.COMMON_NAMES


# ------------------------------------------------------------------------------------------- valid values
@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_defaults_and_smoke_settings_pass(notebook):
    d = defaults(notebook)
    assert P.check(notebook, d) == {k: d[k] for k in P.schema(notebook)}
    P.check(notebook, {**d, "smoke": True, "output_dir": "/tmp/x", "n_epochs": 1, "device": "cpu", "seed": 0})


def test_every_book_page_parameter_passes():
    from lfxai_utils.book import BOOK_CHAPTERS

    n = 0
    for chapter in BOOK_CHAPTERS:
        if chapter.notebook not in NOTEBOOKS:
            continue
        d = defaults(chapter.notebook)
        for page in chapter.pages:
            for mode in ("inference", "train"):
                P.check(page.notebook, {**d, **page.parameters(mode), "output_dir": "book/_executed/results/x"})
                n += 1
    assert n > 10


@pytest.mark.parametrize("notebook,overrides", [
    ("claim1_roar", {"percents": "10,50", "methods": "random,gradient_shap", "n_seeds": 1}),
    ("claim1_roar", {"percents": (100,), "methods": ["random"]}),
    ("claim1_example_consistency", {"explainers": "dknn,simplex", "if_damp": 0, "if_batch_size": 64}),
    ("claim1_example_consistency", {"explainers": None, "if_scale": 1}),
    ("claim3_disentanglement", {"betas": "[1, 5]", "losses": "tc", "n_explain": None}),
    ("claim3_feature_visualisation", {"units": [0, 2], "betas": [0.5, 10], "parameterisation": "pixel"}),
    ("encoder_vs_decoder", {"ae_tasks": "denoising,inpainting", "n_explain": 1}),
    ("claim1_feature_consistency", {"device": "cuda:1", "data_dir": Path("/d"), "n_explain": 1}),
])
def test_accepted_forms(notebook, overrides):
    """The forms papermill passes (comma-separated strings, tuples, ints for floats) are accepted."""
    P.check(notebook, {**defaults(notebook), **overrides})


def test_fraction():
    f = P.fraction()
    assert f.problem(1.0) is None and f.problem(0.5) is None and f.problem(1) is None
    for bad in (0, 0.0, -0.1, 1.0001, NAN, math.inf, "0.5", True):
        assert f.problem(bad) is not None, bad
    assert f.allowed == "a finite number in (0, 1]"


# --------------------------------------------------------------------------------------------- bad values
def bad_values(spec: P.Spec) -> list:
    """Values that ``spec`` must reject, chosen from the spec's kind only (the table the issue asks for)."""
    out = []
    if not spec.none and not isinstance(spec, P.Choice):
        out.append(None)
    if isinstance(spec, P.Int):
        out += [NAN, 2.5, "3", True, [1]]
        if spec.min is not None:
            out += [spec.min - 1, -5] if spec.min > -5 else [spec.min - 1]
        if spec.min is not None and spec.min >= 1:
            out.append(0)
        if spec.max is not None:
            out.append(spec.max + 1)
    elif isinstance(spec, P.Real):
        out += [NAN, math.inf, -math.inf, "0.1", True]
        if spec.low is not None:
            out += [spec.low - 1] + ([spec.low] if spec.low_open else [])
        if spec.high is not None:
            out += [spec.high + 1] + ([spec.high] if spec.high_open else [])
    elif isinstance(spec, P.Bool):
        out += [1, 0, "True", "False", NAN]
    elif isinstance(spec, P.Choice):
        out += ["nope", "MNIST " if "mnist" in spec.values else "Gradient_Shap", 3, NAN, [spec.values[0]]]
        if None not in spec.values:
            out.append(None)
    elif isinstance(spec, P.Names):
        first = spec.values[0]
        out += [["nope"], [], "", 3, NAN, [first, first], f"{first},{first}", [first, "nope"], [3]]
    elif isinstance(spec, P.Numbers):
        out += [[], [NAN], ["x"], [-1], 5, NAN, "x", [True], [math.inf]]
        good = spec.item.min if isinstance(spec.item, P.Int) else 1
        out += [[good, good]]
        if isinstance(spec.item, P.Int):
            out += [[1.5], [-5]]
            if spec.item.max is not None:
                out.append([spec.item.max + 1])
        else:
            out += [[0], [-5.0]]
    elif isinstance(spec, P.Folder):
        out += [3, "", "   ", NAN, True]
    elif isinstance(spec, P.Device):
        out += ["gpu", "cuda:x", "", 0, NAN, "CPU"]
    else:  # a new kind of spec needs its row in this table
        raise AssertionError(f"no bad values for {type(spec).__name__}")
    return out


CASES = [pytest.param(nb, name, id=f"{nb}-{name}") for nb in NOTEBOOKS for name in P.schema(nb)]


@pytest.mark.parametrize("notebook,name", CASES)
def test_bad_values_are_rejected_naming_parameter_value_and_rule(notebook, name):
    spec = P.schema(notebook)[name]
    d = defaults(notebook)
    bad = bad_values(spec)
    assert bad
    for value in bad:
        with pytest.raises(ValueError) as err:
            P.check(notebook, {**d, name: value})
        msg = str(err.value)
        assert f"  {name} = {value!r} is not allowed" in msg, msg
        assert f"must be {spec.allowed}" in msg
        assert msg.count("\n") == 1, f"only {name} is bad, yet: {msg}"   # the other parameters are not blamed


def test_issue_examples_and_every_bad_parameter_at_once():
    d = defaults("claim1_feature_consistency")
    with pytest.raises(ValueError, match=r"n_explain = -5 is not allowed \(out of range\): must be None or an "
                                         r"integer >= 1"):
        P.check("claim1_feature_consistency", {**d, "n_explain": -5})
    with pytest.raises(ValueError, match=r"batch_size = 0 is not allowed \(out of range\): must be an integer >= 1"):
        P.check("claim1_feature_consistency", {**d, "batch_size": 0})
    with pytest.raises(ValueError, match=r"n_seeds = 0 is not allowed"):
        P.check("claim1_roar", {**defaults("claim1_roar"), "n_seeds": 0})
    with pytest.raises(ValueError) as err:
        P.check("claim1_feature_consistency", {**d, "dataset": "mnsit", "seed": NAN, "smoke": "yes"})
    lines = str(err.value).splitlines()
    assert lines[0] == "bad parameter(s) of claim1_feature_consistency:"
    assert [ln.split(" = ")[0].strip() for ln in lines[1:]] == ["dataset", "smoke", "seed"]
    assert "one of 'mnist', 'ecg5000', 'cifar10', 'cifar100'" in lines[1]
    missing = {k: v for k, v in d.items() if k != "batch_size"}
    with pytest.raises(ValueError, match="batch_size: not defined"):
        P.check("claim1_feature_consistency", missing)


def test_setup_checks_common_parameters_before_creating_anything(tmp_path):
    from lfxai_utils.experiments import common

    for bad in ({"n_epochs": 0}, {"seed": -1}, {"smoke": "no"}, {"device": "gpu"}, {"reuse_checkpoints": None}):
        with pytest.raises(ValueError, match=f"{next(iter(bad))} = "):
            common.setup("claim1_feature_consistency", dataset="mnist", output_dir=str(tmp_path / "out"),
                         progress=False, **bad)
        assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------- the notebooks' cells
def setup_source(notebook: str) -> str:
    """The code cell right after the parameters cell (without IPython magics)."""
    nb = nbformat.read(ROOT / "notebooks" / f"{notebook}.ipynb", as_version=4)
    i = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    cell = next(c for c in nb.cells[i + 1:] if c.cell_type == "code")
    return "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith("%"))


class Reached(Exception):
    pass


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_setup_cell_checks_before_common_setup(notebook, monkeypatch):
    from lfxai_utils.experiments import common

    calls = []

    def fake_setup(*a, **kw):
        calls.append(kw)
        raise Reached

    monkeypatch.setattr(common, "setup", fake_setup)
    src = setup_source(notebook)
    assert "exp = common.setup_notebook(X, globals())" in src and "common.setup(" not in src
    d = defaults(notebook)
    with pytest.raises(Reached):                          # valid parameters reach common.setup
        exec(src, dict(d))
    assert len(calls) == 1
    int_param = next(k for k, s in P.schema(notebook).items() if isinstance(s, P.Int) and s.min == 1 and k != "n_epochs")
    for bad in ({int_param: -5}, {int_param: 0}, {"dataset": "mnsit"}, {"seed": NAN}):
        with pytest.raises(ValueError, match=re.escape(f"{next(iter(bad))} = {next(iter(bad.values()))!r}")):
            exec(src, {**d, **bad})
    assert len(calls) == 1, "common.setup ran although a parameter was bad"
