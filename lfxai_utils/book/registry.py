"""The book's page registry: what the book is made of, where its files go, and what each page needs.

:data:`BOOK_CHAPTERS` lists the chapters and their pages (a notebook on one dataset, and model variant), with the
reduced budgets of this project's 2-core CPU (:data:`CPU_BUDGETS`), the parameters ``make checkpoints`` adds in train
mode (:data:`TRAIN_PARAMS`) and the standing reasons some pages cannot run on this project's machines
(:data:`NOT_RUN_NOTES`). What a page needs (data, checkpoints) comes from its claim module's
:class:`~lfxai_utils.experiments.spec.ClaimSpec` (:func:`default_registry`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .._utils import REPO_ROOT, display_path
from ..labels import DATASET_LABELS, MODES, dataset_label

ROOT = REPO_ROOT


# ------------------------------------------------------------------------------------------------ pages
@dataclass(frozen=True)
class Page:
    """One executed page of the book: a notebook run on one dataset (and model variant).

    ``params`` are papermill parameters used in both modes (e.g. reduced budgets for this machine);
    ``train_params`` are added in train mode only (e.g. an ``n_epochs`` cap for ``--train-checkpoints``).
    """

    notebook: str
    dataset: str
    title: str
    model: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    train_params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """``<notebook>__<dataset>[-<model>]``: the page's file names and ``--only`` patterns."""
        return f"{self.notebook}__{self.dataset}" + (f"-{self.model}" if self.model else "")

    @property
    def label(self) -> str:
        """Dataset (and model) as shown in tables: ``MNIST``, ``CIFAR-10 (simclr)``."""
        return dataset_label(self.dataset) + (f" ({self.model})" if self.model else "")

    def parameters(self, mode: str = "inference") -> dict[str, Any]:
        """The papermill parameters of this page in ``mode`` (without the book's output/checkpoint folders)."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; valid values: {', '.join(MODES)}")
        p: dict[str, Any] = {"dataset": self.dataset}
        if self.model:
            p["model"] = self.model
        p["mode"] = mode
        p.update(self.params)
        if mode == "train":
            p.update(self.train_params)
        return p


@dataclass(frozen=True)
class Chapter:
    """A claim of the book: its introduction (``book/<intro>.md``) and its pages, all of one notebook."""

    title: str
    intro: str  # markdown page in book/ (without extension)
    notebook: str
    pages: tuple[Page, ...]


def papermill_command(page: Page, mode: str = "inference", out: str = "out.ipynb", **extra: Any) -> str:
    """The command that executes ``page`` in ``mode`` (``extra``: more parameters, e.g. ``reuse_checkpoints``)."""
    from ..params import papermill_command as command

    return command(page.notebook, {**page.parameters(mode), **extra}, out)


# ------------------------------------------------------------------------------------------------ registry
@dataclass
class Registry:
    """What the book is made of and what each page needs (injectable for tests).

    ``data_requirements(notebook, dataset, model)`` gives ``[(dataset name, load_dataset kwargs)]``;
    ``required_checkpoints(notebook, dataset, model, params)`` the checkpoint names the page loads with its papermill
    parameters ``params``; ``optional_checkpoints`` (same arguments) the ones it may load besides, when present
    (a page that picks its runs among those shipped: their manifests join the page's fingerprint, so a new run
    re-executes it).
    """

    chapters: Sequence[Chapter]
    data_requirements: Callable[[str, str, "str | None"], Sequence[tuple[str, Mapping[str, Any]]]]
    required_checkpoints: Callable[[str, str, "str | None", Mapping[str, Any]], Sequence[str]]
    optional_checkpoints: Callable[[str, str, "str | None", Mapping[str, Any]], Sequence[str]] | None = None

    def page_data(self, page: Page) -> list[tuple[str, Mapping[str, Any]]]:
        """The data ``page`` loads."""
        return list(self.data_requirements(page.notebook, page.dataset, page.model))

    def page_checkpoints(self, page: Page, mode: str = "inference") -> list[str]:
        """The checkpoints ``page`` loads, given its parameters in ``mode``."""
        return list(self.required_checkpoints(page.notebook, page.dataset, page.model, page.parameters(mode)))

    def page_optional_checkpoints(self, page: Page, mode: str = "inference") -> list[str]:
        """The checkpoints ``page`` may load besides :meth:`page_checkpoints` when they are present."""
        if self.optional_checkpoints is None:
            return []
        required = set(self.page_checkpoints(page, mode))
        return [n for n in self.optional_checkpoints(page.notebook, page.dataset, page.model, page.parameters(mode))
                if n not in required]


def default_registry() -> Registry:
    """:data:`BOOK_CHAPTERS`, with each page's needs from its claim module's ``SPEC``."""
    from ..experiments import spec_for

    return Registry(BOOK_CHAPTERS,
                    lambda notebook, dataset, model: spec_for(notebook).data_requirements(dataset, model),
                    lambda notebook, dataset, model, params: spec_for(notebook).required_checkpoints(dataset, model,
                                                                                                     params),
                    lambda notebook, dataset, model, params: spec_for(notebook).optional_checkpoints(dataset, model,
                                                                                                     params))


def checkpoint_users(registry: Registry | None = None) -> dict[str, list[str]]:
    """Checkpoint name -> the book pages (``notebook (dataset)``) that load it in inference mode (with the pages' own
    parameters; ``checkpoints/README.md`` lists them); a page that may load it, picking its runs among those shipped
    (:meth:`Registry.page_optional_checkpoints`), is listed as ``notebook (dataset, if its run is picked)``."""
    registry = registry or default_registry()
    users: dict[str, list[str]] = {}
    for chapter in registry.chapters:
        for page in chapter.pages:
            try:
                names = registry.required_checkpoints(page.notebook, page.dataset, page.model, page.params)
                optional = ([] if registry.optional_checkpoints is None else
                            registry.optional_checkpoints(page.notebook, page.dataset, page.model, page.params))
            except ImportError:   # a chapter whose module does not exist yet
                continue
            where = page.key.split('__', 1)[1]
            for name in names:
                users.setdefault(name, []).append(f"{page.notebook} ({where})")
            for name in optional:
                if name not in names:
                    users.setdefault(name, []).append(f"{page.notebook} ({where}, if its run is picked)")
    return users


# ------------------------------------------------------------------------------------------------ layout
@dataclass
class Layout:
    """Where the book's inputs and outputs live (the repository by default; a temp folder in tests)."""

    root: Path = ROOT
    data_dir: Path | None = None   # None: $LFXAI_DATA_DIR, then <repo>/data (lfxai_utils.data's search order)

    @property
    def notebooks(self) -> Path:
        return self.root / "notebooks"

    @property
    def book(self) -> Path:
        return self.root / "book"

    @property
    def executed(self) -> Path:
        return self.book / "_executed"

    @property
    def generated(self) -> Path:
        return self.book / "_generated"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def state_file(self) -> Path:
        return self.executed / "state.json"

    @property
    def timings_file(self) -> Path:
        """The committed per-page wall times of the last full build (``make book-timings``)."""
        return self.root / "bench" / "results" / "book_timings.csv"

    @property
    def train_runs(self) -> Path:
        return self.root / "_build" / "train_runs"

    def notebook(self, page: Page) -> Path:
        return self.notebooks / f"{page.notebook}.ipynb"

    def output_dir(self, page: Page, mode: str = "inference") -> Path:
        return (self.executed if mode == "inference" else self.train_runs) / "results" / page.key

    def executed_nb(self, page: Page, mode: str = "inference") -> Path:
        return (self.executed if mode == "inference" else self.train_runs) / f"{page.key}.ipynb"

    def not_run_md(self, page: Page) -> Path:
        return self.executed / f"{page.key}.md"

    def rel(self, path: Path) -> str:
        """``path`` relative to the root when inside it (what pages and messages show)."""
        return display_path(path, self.root)


def chapters(registry: Registry | None = None, layout: Layout | None = None) -> list[Chapter]:
    """The book's chapters whose notebook exists in ``notebooks/`` (the others are left out until written)."""
    registry = registry or default_registry()
    layout = layout or Layout()
    return [c for c in registry.chapters if (layout.notebooks / f"{c.notebook}.ipynb").exists()]


def all_pages(registry: Registry | None = None, layout: Layout | None = None) -> list[Page]:
    """Every page of :func:`chapters`, in the book's order."""
    return [p for c in chapters(registry, layout) for p in c.pages]


# ------------------------------------------------------------------------------------------------ the book
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
    ("claim2_pretext", "mnist"): {"n_explain": 1000},
    # the paper's 5 runs (those whose 6 VAEs are all trained as `make checkpoints` trains them now; while the grid is
    # retrained, fewer) on 300 class-balanced test images where the paper explains 10,000: 5 x 300 costs what
    # 3 x 500 cost (about 90 s on this CPU) and keeps the book near its 12 minutes
    ("claim3_disentanglement", "mnist"): {"n_runs": 5, "n_explain": 300},
    ("claim3_feature_visualisation", "mnist"): {},
    ("encoder_vs_decoder", "mnist"): {"n_explain": 500},
    # CIFAR-10: the mirror's test split holds 1,000 images (all, or a class-balanced part, explained); models trained
    # at the cut budgets of TRAIN_PARAMS, 2 runs where the paper (FACT) ran 5; no influence functions (LiSSA on the
    # 0.6 M-parameter encoder)
    # TracIn sums over 3 of the 5 saved checkpoints (after epochs 0, 4, 8): 170 s with all 5 on this CPU
    ("claim1_example_consistency", "cifar10"): {"explainers": "tracin,simplex,dknn,cosine_nn",
                                                "tracin_n_checkpoints": 3},
    ("claim1_feature_consistency", "cifar10"): {"n_explain": 500},
    ("claim2_pretext", "cifar10"): {"n_runs": 2, "n_explain": 500},
    # per-unit GradientSHAP of every unit of 6 VAEs took 440 s on 500 test images on this CPU: 100 class-balanced
    # images, for the 12 VAEs of 2 runs (FACT: 5 runs)
    ("claim3_disentanglement", "cifar10"): {"n_runs": 2, "n_explain": 100},
    # 3 β-VAEs × every latent unit × 1,000 Adam steps took 268 s here: 250 steps (FACT: 1,000)
    ("claim3_feature_visualisation", "cifar10"): {"n_steps": 250},
    # the full model's attributions run through the CIFAR decoder (3,072 outputs; IG's 50 steps dominate): 326 s for
    # 2 runs on 200 images in a fresh-clone build, so the page explains 100 class-balanced test images (paper: 10,000)
    ("encoder_vs_decoder", "cifar10"): {"n_runs": 2, "n_explain": 100},
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
    out = []
    for ds, model in datasets:
        title = f"{label}: {DATASET_LABELS[ds]}" + (f" ({model.upper() if model == 'simclr' else model})"
                                                    if model else "")
        page_params = {**(params or {}), **(CPU_BUDGETS.get((notebook, ds), {}) if model is None else {})}
        out.append(Page(notebook, ds, title, model, page_params,
                        TRAIN_PARAMS.get((notebook, ds), {}) if model is None else {}))
    return tuple(out)


#: The chapters of the book and their pages, in the book's order.
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
