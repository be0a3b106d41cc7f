"""Names shown to readers, defined once: the run modes, dataset labels and explanation-method labels.

The claim modules, the notebooks' :class:`~lfxai_utils.experiments.common.Experiment` and the book all take their
labels from here (this module imports nothing).
"""
from __future__ import annotations

#: How a notebook runs: ``"inference"`` loads the shipped checkpoints, ``"train"`` trains every model it needs.
MODES = ("inference", "train")

#: Dataset names (``lfxai_utils.data.DATASETS``) as written in titles and tables.
DATASET_LABELS = {"mnist": "MNIST", "ecg5000": "ECG5000", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100",
                  "dsprites": "dSprites"}

#: Label-free feature-importance methods (Claim 1.1, ROAR, Claim 2, encoder vs full model), with GradientSHAP as
#: the authors' code paired it (``pairing="as_published"``).
FEATURE_METHOD_LABELS = {"gradient_shap": "GradientSHAP", "integrated_gradients": "Integrated Gradients",
                         "saliency": "Saliency", "random": "Random",
                         "gradient_shap_as_published": "GradientSHAP (authors' pairing)"}

#: Label-free example-importance methods (Claim 1.2, Claim 2).
EXAMPLE_METHOD_LABELS = {"influence_functions": "Influence Functions", "tracin": "TracIn", "simplex": "SimplEx",
                         "dknn": "DKNN", "cosine_nn": "CosineNN"}


def dataset_label(dataset: str) -> str:
    """``"cifar10"`` → ``"CIFAR-10"`` (an unknown name is returned as it is)."""
    return DATASET_LABELS.get(dataset, dataset)


def labels_for(methods, labels: dict[str, str], **overrides: str) -> dict[str, str]:
    """``{method: label}`` for ``methods`` in their order, from ``labels``, with a page's own ``overrides``."""
    out = {m: labels[m] for m in methods}
    out.update(overrides)
    return out
