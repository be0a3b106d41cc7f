"""Every notebook in ``notebooks/`` runs in smoke mode for every (dataset, model) its claim module allows.

The list is built from :data:`lfxai_utils.experiments._MODULES` and each module's ``DATASETS`` × ``MODELS``
(filtered by the module's ``validate(dataset, model)`` when it has one with that signature, or replaced by the
module's ``SMOKE_CASES`` list of (dataset, model) pairs when it defines one), so a new notebook is picked up as soon
as it exists. Each case executes the notebook with papermill and ``smoke=True`` on generated fixture data into a temporary
folder; it fails on any exception and checks that the notebook wrote its verdicts (all ``inconclusive`` in a smoke
run). Run them in parallel with ``pytest -n 2`` (pytest-xdist); ``make test`` does.

Each notebook's source is the py:percent script beside it (``notebooks/X.py``, paired by ``jupytext.toml``); the
tests below fail when a pair is missing or out of sync (``make notebooks`` runs ``jupytext --sync``).
"""
from __future__ import annotations

import importlib
import inspect
import itertools
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


def allowed(mod, dataset: str, model: str | None) -> bool:
    """Does the claim module accept this (dataset, model)? Asks its ``validate(dataset, model, ...)`` if it has one."""
    validate = getattr(mod, "validate", None)
    if validate is None:
        return True
    try:
        first = list(inspect.signature(validate).parameters)[:2]
    except (TypeError, ValueError):
        return True
    if first != ["dataset", "model"]:       # a validator of other parameters
        return True
    try:
        validate(dataset, model)
    except ValueError:
        return False
    return True


def smoke_cases(mod) -> list[tuple[str, str | None]]:
    """The module's ``SMOKE_CASES`` if it lists them, else every allowed pair of ``DATASETS`` × ``MODELS``."""
    if hasattr(mod, "SMOKE_CASES"):
        return [tuple(c) for c in mod.SMOKE_CASES]
    return [(d, m) for d, m in itertools.product(mod.DATASETS, getattr(mod, "MODELS", (None,)))
            if allowed(mod, d, m)]


def _cases() -> list:
    from lfxai_utils.experiments import _MODULES

    cases = []
    for stem, module_name in sorted(_MODULES.items()):
        if not (NOTEBOOKS / f"{stem}.ipynb").exists():
            continue
        mod = importlib.import_module(f"lfxai_utils.experiments.{module_name}")
        for dataset, model in smoke_cases(mod):
            cases.append(pytest.param(stem, dataset, model, id=f"{stem}-{dataset}" + (f"-{model}" if model else "")))
    return cases


CASES = _cases()


def _running_cell(nb_path: Path) -> str:
    """The cell papermill marked as running in the partially written output notebook."""
    import nbformat

    try:
        nb = nbformat.read(nb_path, as_version=4)
    except Exception:  # noqa: BLE001 - nothing written yet
        return "(no output notebook written)"
    for i, cell in enumerate(nb.cells):
        if cell.get("metadata", {}).get("papermill", {}).get("status") == "running":
            first = cell.source.strip().splitlines()[0] if cell.source.strip() else ""
            return f"cell {i} ({first[:80]!r})"
    return "(no cell marked running)"


def test_every_notebook_has_a_claim_module():
    from lfxai_utils.experiments import _MODULES

    orphans = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb") if p.stem not in _MODULES)
    assert not orphans, f"notebooks without an entry in lfxai_utils.experiments._MODULES: {orphans}"


@pytest.mark.slow
@pytest.mark.parametrize("notebook,dataset,model", CASES)
def test_notebook_smoke(notebook, dataset, model, tmp_path, monkeypatch):
    import pandas as pd
    import papermill as pm

    # one thread per kernel: the suite runs two notebooks at once on two cores (pytest -n 2)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(var, os.environ.get(var, "1"))
    monkeypatch.setenv("LFXAI_NO_PROGRESS", "1")
    monkeypatch.setenv("LFXAI_BOOK", "1")          # exercise the book's rendering path of the figures
    out_dir = tmp_path / "results"
    params = {"dataset": dataset, "smoke": True, "output_dir": str(out_dir)}
    if model is not None:
        params["model"] = model
    out_nb = tmp_path / f"{notebook}.ipynb"
    try:
        pm.execute_notebook(str(NOTEBOOKS / f"{notebook}.ipynb"), str(out_nb), parameters=params,
                            kernel_name="python3", cwd=str(ROOT), progress_bar=False,
                            extra_arguments=["--IPKernelApp.log_level=ERROR"])
    except pm.PapermillExecutionError as err:
        tb = "\n".join(err.traceback[-12:]) if err.traceback else ""
        pytest.fail(f"{notebook} ({dataset}, model={model}) raised in cell [{err.exec_count}]: "
                    f"{err.ename}: {err.evalue}\n{tb}", pytrace=False)
    except Exception as err:  # noqa: BLE001 - the kernel died (out of memory?), timed out, ...
        pytest.fail(f"{notebook} ({dataset}, model={model}): {type(err).__name__}: {err} while running "
                    f"{_running_cell(out_nb)} (a dead kernel is usually the kernel killed for memory: see dmesg)",
                    pytrace=False)
    summary = out_dir / "summary.csv"
    assert summary.exists(), f"{notebook} ({dataset}) wrote no summary.csv (exp.write_summary) into {out_dir}"
    df = pd.read_csv(summary, dtype=str, keep_default_na=False)
    assert len(df) > 0, "summary.csv has no verdict"
    assert set(df["verdict"]) == {"inconclusive"}, "a smoke run on generated data must not claim a verdict"


# ------------------------------------------------------------------- notebooks/X.py <-> notebooks/X.ipynb (jupytext)
SOURCES = sorted(NOTEBOOKS.glob("*.py"))
IPYNBS = sorted(NOTEBOOKS.glob("*.ipynb"))


def _cells(nb) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(c.cell_type, c.source, tuple(c.get("metadata", {}).get("tags", []))) for c in nb.cells]


def pair_differences(py: Path, ipynb: Path) -> list[str]:
    """How the cells jupytext reads from ``py`` differ from those of ``ipynb`` (type, source, tags); [] in sync."""
    import jupytext
    import nbformat

    text, nb = jupytext.read(py), nbformat.read(ipynb, as_version=4)
    a, b = _cells(text), _cells(nb)
    out = [f"{len(a)} cells in {py.name}, {len(b)} in {ipynb.name}"] if len(a) != len(b) else []
    for i, (x, y) in enumerate(zip(a, b)):
        for what, u, v in zip(("type", "source", "tags"), x, y):
            if u != v:
                out.append(f"cell {i}: {what} {u!r:.60} in {py.name} but {v!r:.60} in {ipynb.name}")
    if text.metadata.get("kernelspec") != nb.metadata.get("kernelspec"):
        out.append(f"kernelspec {text.metadata.get('kernelspec')} vs {nb.metadata.get('kernelspec')}")
    return out


def test_every_notebook_is_paired_with_its_py_percent_source():
    """``jupytext.toml`` pairs ``notebooks/X.ipynb`` with ``notebooks/X.py`` (py:percent), and both exist."""
    from jupytext.config import find_jupytext_configuration_file, load_jupytext_configuration_file
    from jupytext.formats import long_form_multiple_formats
    from jupytext.paired_paths import paired_paths

    assert IPYNBS and {p.stem for p in IPYNBS} == {p.stem for p in SOURCES}, (
        "every notebooks/X.ipynb needs its notebooks/X.py and vice versa (`jupytext --set-formats "
        "ipynb,py:percent` or `make notebooks`)")
    config = load_jupytext_configuration_file(find_jupytext_configuration_file(str(NOTEBOOKS)))
    for ipynb in IPYNBS:
        formats = config.default_formats(str(ipynb))
        assert formats, f"jupytext.toml does not pair {ipynb.name}"
        paths = dict(paired_paths(str(ipynb), "ipynb", formats))
        assert set(paths) == {str(ipynb), str(ipynb.with_suffix(".py"))}
        assert {f.get("format_name") for f in long_form_multiple_formats(formats)} == {None, "percent"}


@pytest.mark.parametrize("ipynb", IPYNBS, ids=lambda p: p.stem)
def test_pair_is_in_sync_and_the_notebook_has_no_outputs(ipynb):
    import nbformat

    py = ipynb.with_suffix(".py")
    diffs = pair_differences(py, ipynb)
    assert not diffs, (f"{py.name} and {ipynb.name} are out of sync (run `make notebooks`, i.e. jupytext --sync):\n"
                       + "\n".join(diffs))
    nb = nbformat.read(ipynb, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert not [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)], (
        f"{ipynb.name} carries outputs: keep them out of git (clear them, or `make notebooks`)")


def test_editing_one_side_of_a_pair_fails_the_sync_check(tmp_path):
    import nbformat

    py, ipynb = tmp_path / "claim1_roar.py", tmp_path / "claim1_roar.ipynb"

    def fresh():
        py.write_text((NOTEBOOKS / py.name).read_text())
        ipynb.write_text((NOTEBOOKS / ipynb.name).read_text())

    fresh()
    assert pair_differences(py, ipynb) == []
    py.write_text(py.read_text().replace("\n# %% [markdown]\n# ## Data\n", "\n# %% [markdown]\n# ## The data\n", 1))
    assert any("cell" in d and "## The data" in d for d in pair_differences(py, ipynb))
    fresh()
    nb = nbformat.read(ipynb, as_version=4)
    code = next(c for c in nb.cells if c.cell_type == "code" and "parameters" not in c.metadata.get("tags", []))
    code.source += "\nprint(1)"
    nbformat.write(nb, ipynb)
    assert pair_differences(py, ipynb)
    fresh()
    nb = nbformat.read(ipynb, as_version=4)
    next(c for c in nb.cells if "parameters" in c.metadata.get("tags", [])).metadata.pop("tags")
    nbformat.write(nb, ipynb)
    assert any("tags" in d for d in pair_differences(py, ipynb))
    fresh()
    nb = nbformat.read(ipynb, as_version=4)
    del nb.cells[-1]
    nbformat.write(nb, ipynb)
    assert pair_differences(py, ipynb)


@pytest.mark.parametrize("py", SOURCES, ids=lambda p: p.stem)
def test_parameters_cell_is_tagged_and_holds_literal_assignments_only(py):
    """papermill injects its parameters after the cell tagged ``parameters``: it must exist once, be the first code
    cell, and (for the book's parameter reader and lfxai_utils.params) assign literals only."""
    import ast

    import jupytext

    text = py.read_text()
    assert text.count('\n# %% tags=["parameters"]\n') == 1, f'{py.name}: no (or several) # %% tags=["parameters"] line'
    nb = jupytext.read(py)
    assert nb.metadata["jupytext"]["text_representation"]["format_name"] == "percent"
    code = [c for c in nb.cells if c.cell_type == "code"]
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0] is code[0]
    for stmt in ast.parse(tagged[0].source).body:
        assert isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name), (
            f"{py.name}: {ast.unparse(stmt)!r} is not a plain assignment")
        ast.literal_eval(stmt.value)


@pytest.mark.slow
def test_bad_parameter_stops_the_notebook_in_its_setup_cell(tmp_path, monkeypatch):
    """The issue's examples end to end: ``-p n_explain -5 -p batch_size 0`` on Claim 1.1 raises a ValueError naming
    both in the set-up cell, before any folder is created or any data is read."""
    import papermill as pm

    monkeypatch.setenv("LFXAI_NO_PROGRESS", "1")
    out_dir = tmp_path / "results"
    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(str(NOTEBOOKS / "claim1_feature_consistency.ipynb"), str(tmp_path / "out.ipynb"),
                            parameters={"n_explain": -5, "batch_size": 0, "output_dir": str(out_dir),
                                        "data_dir": str(tmp_path / "no-data")},
                            kernel_name="python3", cwd=str(ROOT), progress_bar=False,
                            extra_arguments=["--IPKernelApp.log_level=ERROR"])
    e = err.value
    assert e.ename == "ValueError"
    assert "n_explain = -5 is not allowed" in e.evalue and "batch_size = 0 is not allowed" in e.evalue
    import nbformat

    nb = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    failed = next(i for i, c in enumerate(nb.cells) if any(o.get("output_type") == "error" for o in c.get("outputs", [])))
    assert "common.setup_notebook(X, globals())" in nb.cells[failed].source
    assert not out_dir.exists() and not (tmp_path / "no-data").exists()
