"""Write a notebook from a compact cell list (used to author the claim notebooks; edit them in JupyterLab too).

    from tools.nbwrite import write, md, code, params
    write("notebooks/x.ipynb", [md("# Title"), params("dataset = 'mnist'"), code("print(1)")])
"""
from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

import nbformat


def md(text: str):
    return nbformat.v4.new_markdown_cell(textwrap.dedent(text).strip())


def code(text: str, *, tags: list[str] | None = None):
    cell = nbformat.v4.new_code_cell(textwrap.dedent(text).strip())
    if tags:
        cell.metadata["tags"] = tags
    return cell


def params(*blocks: str):
    """The papermill ``parameters`` cell: each block dedented separately, then joined."""
    text = "\n".join(textwrap.dedent(b).strip() for b in blocks)
    return code(text, tags=["parameters"])


def write(path: str | Path, cells) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = list(cells)
    for i, cell in enumerate(nb.cells):  # stable ids: regenerating an unchanged notebook leaves the file unchanged
        cell.id = hashlib.sha1(f"{i}:{cell.source}".encode()).hexdigest()[:8]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nbformat.validate(nb)
    path = Path(path) if Path(path).is_absolute() else Path(__file__).resolve().parents[1] / path
    path.write_text(nbformat.writes(nb))


#: The parameters every claim notebook exposes (papermill ``-p name value``), after its own.
COMMON_PARAMS = '''
mode = "inference"        # "inference": load the shipped checkpoints | "train": train every model the page needs
smoke = False             # True: a seconds-long run on generated data with tiny models (proves the code runs, not the claim)
seed = 1
device = "auto"           # "auto" (CUDA if available), "cpu", "cuda", "cuda:1", ...
data_dir = None           # default: $LFXAI_DATA_DIR, then <repo>/data
output_dir = None         # default: results/<notebook>/<dataset>
checkpoint_dir = None     # default: <repo>/checkpoints
reuse_checkpoints = False # train mode: reuse matching checkpoints instead of retraining them
n_epochs = None           # train mode: None keeps the paper's epochs; an int caps every model's training
'''


def setup_cell(module: str, extra: str = "") -> str:
    """The notebook's first code cell after the parameters: imports, the parameter check, then the set-up.

    ``lfxai_utils.params.check`` validates every parameter against the notebook's schema (type and range; a bad
    value raises ``ValueError`` naming it) before ``common.setup`` creates a folder or loads data.
    """
    return f'''
%matplotlib inline
import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Markdown, display

from lfxai_utils import params, plotting, report
from lfxai_utils.experiments import common, {module} as X

params.check(X.NOTEBOOK, globals())   # every parameter's type and range, before anything is created or loaded
exp = common.setup(X.NOTEBOOK, dataset=dataset, mode=mode, smoke=smoke, model=model, seed=seed, device=device,
                   data_dir=data_dir, output_dir=output_dir, checkpoint_dir=checkpoint_dir,
                   reuse_checkpoints=reuse_checkpoints, n_epochs=n_epochs,
                   datasets=X.DATASETS, models=X.MODELS{extra})
'''
