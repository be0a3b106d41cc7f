"""Experiment-level code behind the notebooks: one module per claim.

The notebooks stay thin (parameters → data → model → explanation → metric → figure → verdict); everything they
call lives here or in the lower-level modules, and is tested. Each claim module ends with its
:class:`~lfxai_utils.experiments.spec.ClaimSpec` (``SPEC``: datasets, models, data, checkpoints, training jobs),
which is all the book (:mod:`lfxai_utils.book`) and ``make checkpoints`` ask of it; nothing here imports the book.
"""
from __future__ import annotations

import importlib

from .spec import ClaimSpec

# notebook stem -> module in this package that knows its data and checkpoints
_MODULES = {
    "claim1_feature_consistency": "feature_consistency",
    "claim1_example_consistency": "example_consistency",
    "claim1_roar": "roar",
    "claim2_pretext": "pretext",
    "claim3_disentanglement": "disentanglement",
    "claim3_feature_visualisation": "feature_visualisation",
    "encoder_vs_decoder": "encoder_vs_decoder",
}


def module_for(notebook: str):
    """The claim module of ``notebook`` (a notebook stem, e.g. ``"claim1_roar"``)."""
    if notebook not in _MODULES:
        raise ValueError(f"unknown notebook {notebook!r}; valid: {sorted(_MODULES)}")
    return importlib.import_module(f".{_MODULES[notebook]}", __name__)


def spec_for(notebook: str) -> ClaimSpec:
    """The :class:`~lfxai_utils.experiments.spec.ClaimSpec` of ``notebook`` (its claim module's ``SPEC``)."""
    spec = module_for(notebook).SPEC
    if spec.notebook != notebook:
        raise ValueError(f"{_MODULES[notebook]}.SPEC is the spec of {spec.notebook!r}, not of {notebook!r}")
    return spec
