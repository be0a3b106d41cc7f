"""Every notebook in ``notebooks/`` runs in smoke mode for every (dataset, model) its claim module allows.

The list is built from :data:`lfxai_utils.experiments._MODULES` and each module's ``DATASETS`` × ``MODELS``
(filtered by the module's ``validate(dataset, model)`` when it has one with that signature, or replaced by the
module's ``SMOKE_CASES`` list of (dataset, model) pairs when it defines one), so a new notebook is picked up as soon
as it exists. Each case executes the notebook with papermill and ``smoke=True`` on generated fixture data into a temporary
folder; it fails on any exception and checks that the notebook wrote its verdicts (all ``inconclusive`` in a smoke
run). Run them in parallel with ``pytest -n 2`` (pytest-xdist); ``make test`` does.
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


GENERATORS = sorted((ROOT / "tools").glob("nb_*.py"))


def test_every_notebook_has_a_generator():
    stems = {p.stem for p in NOTEBOOKS.glob("*.ipynb")}
    assert stems == {g.stem[len("nb_"):] for g in GENERATORS}


@pytest.mark.parametrize("generator", GENERATORS, ids=lambda p: p.stem)
def test_notebook_matches_its_generator(generator, monkeypatch, tmp_path):
    """``notebooks/X.ipynb`` is exactly what ``tools/nb_X.py`` writes (edit the generator, then rerun it)."""
    import runpy
    import sys

    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    sys.modules.pop("nbwrite", None)
    import nbwrite

    written = {}
    real_write = nbwrite.write

    def capture(path, cells):
        real_write(tmp_path / "out.ipynb", cells)
        written[Path(path).name] = (tmp_path / "out.ipynb").read_text()

    monkeypatch.setattr(nbwrite, "write", capture)
    runpy.run_path(str(generator), run_name="__main__")
    name = generator.stem[len("nb_"):] + ".ipynb"
    assert list(written) == [name]
    assert written[name] == (NOTEBOOKS / name).read_text(), (
        f"notebooks/{name} differs from what {generator.relative_to(ROOT)} writes: "
        f"run `.venv/bin/python {generator.relative_to(ROOT)}` (or move your notebook edit into the generator)")


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
    assert "params.check(X.NOTEBOOK, globals())" in nb.cells[failed].source
    assert not out_dir.exists() and not (tmp_path / "no-data").exists()
