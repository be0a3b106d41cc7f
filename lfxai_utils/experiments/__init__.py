"""Experiment-level code behind the notebooks: one module per claim, plus the book's page registry.

The notebooks stay thin (parameters → data → model → explanation → metric → figure → verdict); everything they
call lives here or in the lower-level modules, and is tested.
"""
from __future__ import annotations

import importlib
from typing import Any

from ..book import Chapter, Page

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
    if notebook not in _MODULES:
        raise ValueError(f"unknown notebook {notebook!r}; valid: {sorted(_MODULES)}")
    return importlib.import_module(f".{_MODULES[notebook]}", __name__)


def data_requirements(notebook: str, dataset: str, model: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(dataset name, load_dataset kwargs) pairs the page needs."""
    return module_for(notebook).data_requirements(dataset, model)


def required_checkpoints(notebook: str, dataset: str, model: str | None = None,
                         params: dict[str, Any] | None = None) -> list[str]:
    """Checkpoint names the page loads in inference mode (with the book's parameters).

    ``params`` (a page's papermill parameters) are passed on to the module's ``required_checkpoints`` where it
    takes them as keywords (e.g. ``n_runs``, ``betas``); the others are ignored.
    """
    import inspect

    fn = module_for(notebook).required_checkpoints
    sig = inspect.signature(fn).parameters
    kw = {k: v for k, v in (params or {}).items() if k in sig and k not in ("dataset", "model")}
    return fn(dataset, model, **kw)


#: Reduced budgets of the pages this book executes on a 2-core CPU (the notebooks' defaults stay the paper's; each
#: executed page shows its parameters beside the defaults, and the not-run pages give the paper-scale command).
CPU_BUDGETS: dict[tuple[str, str], dict[str, Any]] = {
    ("claim1_feature_consistency", "mnist"): {"n_explain": 1000},
    ("claim1_feature_consistency", "ecg5000"): {"n_explain": 100},
    # 1000 x 1000 as the paper; LiSSA depth 2 at batch 64 instead of 100 at 300 (`make if-budget` compares the two)
    ("claim1_example_consistency", "mnist"): {"if_recursion_depth": 2, "if_batch_size": 64},
    # influence functions on the LSTM: ~0.6 s per per-example gradient and 1-2 s per Hessian-vector product on this
    # CPU, so they run on the first 100 subtrain (50 per class) x 100 test series with LiSSA depth 1 at the paper's
    # minibatch 20 (paper: 1000 x 1000, depth 100); the other explainers on the page's whole subsets
    ("claim1_example_consistency", "ecg5000"): {"if_recursion_depth": 1, "if_n_train": 100, "if_n_test": 100},
    # ROAR: one retraining seed on the page until seeds 1-2 of the Random masks are trained (TRAIN_PARAMS trains 3)
    ("claim1_roar", "mnist"): {"n_seeds": 1},
    ("claim2_pretext", "mnist"): {"n_explain": 1000},
    ("claim3_disentanglement", "mnist"): {"n_runs": 3, "n_explain": 1000},
    ("claim3_feature_visualisation", "mnist"): {},
    ("encoder_vs_decoder", "mnist"): {"n_explain": 1000},
    # CIFAR-10: the mirror's test split holds 1,000 images (all explained); models trained at the cut budgets of
    # TRAIN_PARAMS, 2 runs where the paper (FACT) ran 5; no influence functions (LiSSA on the 0.5 M-parameter encoder)
    ("claim1_example_consistency", "cifar10"): {"explainers": "tracin,simplex,dknn,cosine_nn"},
    ("claim2_pretext", "cifar10"): {"n_runs": 2},
    ("claim3_disentanglement", "cifar10"): {"n_runs": 2},
    ("encoder_vs_decoder", "cifar10"): {"n_runs": 2},
}


#: Parameters added in train mode only (``make checkpoints`` trains what the paper-scale page needs, while the
#: book's page still explains the subset its CPU budget allows until every model is trained).
TRAIN_PARAMS: dict[tuple[str, str], dict[str, Any]] = {
    ("claim3_disentanglement", "mnist"): {"n_runs": 5},
    ("claim1_roar", "mnist"): {"n_seeds": 3},
    # CIFAR-10 on a 2-core CPU (measured: ~2 min per autoencoder epoch over 45,000 images with 2 processes at once,
    # bench/results/training_throughput.csv): the paper's 100 epochs are cut, and each page says so.
    ("claim1_feature_consistency", "cifar10"): {"n_epochs": 10},
    ("claim1_example_consistency", "cifar10"): {"n_epochs": 10},
    ("claim2_pretext", "cifar10"): {"n_epochs": 10},
    ("encoder_vs_decoder", "cifar10"): {"n_epochs": 10},
    ("claim3_disentanglement", "cifar10"): {"n_epochs": 20},
    ("claim3_feature_visualisation", "cifar10"): {"n_epochs": 20},
}


#: Why a page is not executed on this project's machines, beyond what the book's readiness check finds, keyed by
#: (notebook or None for every notebook, dataset, model); shown on the page's "not run here" note.
NOT_RUN_NOTES: dict[tuple[str | None, str, str | None], str] = {
    (None, "cifar100", None): (
        "CIFAR-100 is not reachable from the machines this book is built on: no CIFAR-100 training image exists "
        "anywhere they can reach (only its first 1,000 test images), so no model could be trained or explained "
        "here. A machine with internet access downloads the official tarball (checksum-verified) with "
        "`python -c \"from lfxai_utils.data import load_dataset; load_dataset('cifar100')\"`, then trains the "
        "page's models with `make checkpoints BOOK_ARGS=\"--only cifar100\"` (or the papermill command below)."),
    (None, "dsprites", None): (
        "dSprites is not reachable from the machines this book is built on (no copy of any kind); a machine with "
        "internet access downloads the official `.npz` (checksum-verified) and trains the 30 VAEs of the grid "
        "(about 8 h on one GPU: `make checkpoints BOOK_ARGS=\"--only dsprites\"`)."),
    (None, "cifar10", "simclr"): (
        "The paper's SimCLR ResNet-18 needs a GPU: 100 epochs of contrastive training over 50,000 CIFAR-10 images "
        "is about 40 min on one modern GPU and several days on this 2-core CPU. On a GPU machine, "
        "`make checkpoints BOOK_ARGS=\"--only simclr\"` trains it in one command (the same job the notebook's "
        "train mode runs), after which `make book` executes this page."),
    ("claim1_roar", "cifar10", None): (
        "ROAR on CIFAR-10 retrains 46 CIFAR autoencoders (3 methods × 5 levels × 3 seeds + the base model): about "
        "15 h on this CPU and 180 MB of checkpoints, over the 120 MiB this project allows for CIFAR-10. FACT's port "
        "of it was never run either (experiments.md §4). `make checkpoints BOOK_ARGS=\"--only claim1_roar__cifar10\"` "
        "trains it where a GPU is available."),
}


def not_run_note(notebook: str, dataset: str, model: str | None = None) -> str:
    """The standing reason a page is not run here ('' when there is none)."""
    return NOT_RUN_NOTES.get((notebook, dataset, model)) or NOT_RUN_NOTES.get((None, dataset, model)) or ""


def _pages(notebook: str, label: str, datasets: list[tuple[str, str | None]], params: dict | None = None):
    names = {"mnist": "MNIST", "ecg5000": "ECG5000", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100",
             "dsprites": "dSprites"}
    out = []
    for ds, model in datasets:
        title = f"{label}: {names[ds]}" + (f" ({model.upper() if model == 'simclr' else model})" if model else "")
        page_params = {**(params or {}), **(CPU_BUDGETS.get((notebook, ds), {}) if model is None else {})}
        out.append(Page(notebook, ds, title, model, page_params,
                        TRAIN_PARAMS.get((notebook, ds), {}) if model is None else {}))
    return tuple(out)


BOOK_CHAPTERS: list[Chapter] = [
    Chapter("Claim 1.1 — feature-importance consistency", "claim1_feature_consistency", "claim1_feature_consistency",
            _pages("claim1_feature_consistency", "Feature consistency",
                   [("mnist", None), ("ecg5000", None), ("cifar10", None), ("cifar100", None),
                    ("cifar10", "simclr")])),
    Chapter("Claim 1.2 — example-importance consistency", "claim1_example_consistency", "claim1_example_consistency",
            _pages("claim1_example_consistency", "Example consistency",
                   [("mnist", None), ("ecg5000", None), ("cifar10", None), ("cifar100", None),
                    ("cifar10", "simclr")])),
    Chapter("Appendix C — remove and retrain (ROAR)", "claim1_roar", "claim1_roar",
            _pages("claim1_roar", "ROAR", [("mnist", None), ("cifar10", None), ("cifar100", None)])),
    Chapter("Claim 2 — pretext-task sensitivity", "claim2_pretext", "claim2_pretext",
            _pages("claim2_pretext", "Pretext tasks", [("mnist", None), ("cifar10", None), ("cifar100", None)])),
    Chapter("Claim 3 — disentangled VAEs", "claim3_disentanglement", "claim3_disentanglement",
            _pages("claim3_disentanglement", "Disentanglement",
                   [("mnist", None), ("dsprites", None), ("cifar10", None), ("cifar100", None)])),
    Chapter("Extension — feature visualisation of VAE units", "claim3_feature_visualisation",
            "claim3_feature_visualisation",
            _pages("claim3_feature_visualisation", "Feature visualisation",
                   [("mnist", None), ("cifar10", None), ("cifar100", None)])),
    Chapter("Extension — encoder vs decoder / full model", "encoder_vs_decoder", "encoder_vs_decoder",
            _pages("encoder_vs_decoder", "Encoder vs full model",
                   [("mnist", None), ("cifar10", None), ("cifar100", None)])),
]
