"""What every claim notebook shares: parameter validation, data, models from checkpoints, outputs.

A notebook calls :func:`setup_notebook` (its parameters checked, then :func:`setup` with them) and gets an
:class:`Experiment` that knows

* the **mode**: ``"inference"`` (load the shipped checkpoints, never train) or ``"train"`` (train every model the
  notebook needs at the paper's settings and save it into ``checkpoint_dir``), and whether this is a **smoke** run
  (``smoke=True``: seconds long, on generated fixtures, tiny budgets, models trained into a temporary folder; it
  proves the notebook works, not the claim);
* where the data and the checkpoints are, and where results go (``output_dir``: CSVs, figures, ``summary.csv``).

One code path for every dataset: the per-dataset settings live in :data:`AE_SPECS` and :func:`baseline_for`.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd
import torch
from torch import nn

from .._utils import atomic_write, display_path, resolve_device, seed_everything
from ..checkpoints import (CheckpointMismatchError, CheckpointNotFoundError, checkpoint_name, load_checkpoint, load_tracin_checkpoints,
                           checkpoint_paths, read_manifest, save_checkpoint)
from ..data import DATASETS, DatasetNotFoundError, DatasetSplits, load_dataset
from ..labels import DATASET_LABELS, MODES, dataset_label  # noqa: F401 - re-exported: common.MODES etc.
from ..models import build_model
from ..report import Verdict, write_csv, write_summary
from ..training import TrainResult, fit

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CHECKPOINT_DIR = REPO_ROOT / "checkpoints"


# ------------------------------------------------------------------------------------------ model specs
@dataclass(frozen=True)
class ModelSpec:
    """Architecture plus the paper's training settings for one model.

    ``identity`` are the settings a checkpoint must match to be reused (what the model *is*: pretext, loss, β,
    run); the training budget (epochs, batch size) is recorded in the manifest but not matched, so that a
    checkpoint trained on a bigger budget still loads.
    """

    arch: str
    arch_kwargs: Mapping[str, Any]
    n_epochs: int
    batch_size: int
    patience: int | None = 10
    lr: float = 1e-3
    checkpoint_every: int | None = None
    identity: Mapping[str, Any] = field(default_factory=dict)

    def with_(self, **changes: Any) -> "ModelSpec":
        return replace(self, **changes)


#: The denoising / reconstruction autoencoder of Experiments 1, 2 and 4, per dataset (experiments.md §2, §3).
AE_SPECS: dict[str, ModelSpec] = {
    "mnist": ModelSpec("mnist_ae", {"latent_dim": 4, "pretext": "denoising"}, n_epochs=100, batch_size=300),
    "ecg5000": ModelSpec("ecg_ae", {"latent_dim": 64}, n_epochs=150, batch_size=20),
    "cifar10": ModelSpec("cifar_ae", {"latent_dim": 16, "pretext": "denoising"}, n_epochs=100, batch_size=300),
    "cifar100": ModelSpec("cifar_ae", {"latent_dim": 16, "pretext": "denoising"}, n_epochs=100, batch_size=300),
}

#: What a smoke run shrinks every model to (the point is to exercise the code path, in seconds).
SMOKE_TRAINING = {"n_epochs": 2, "patience": None}
#: Folder of the checkpoint folder where a training in progress keeps its state (:meth:`Experiment.resume_path`).
RESUME_DIR = ".resume"


def check_choice(name: str, value: Any, valid: Sequence[Any]) -> Any:
    """Return ``value`` if it is one of ``valid``; else raise ``ValueError`` naming the valid values."""
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid values: {', '.join(map(repr, valid))}")
    return value


def json_data_info(splits: DatasetSplits) -> dict[str, Any]:
    """The JSON-plain part of ``splits.info`` that a checkpoint manifest records (files, sizes, notes)."""
    keep = ("name", "files", "n_train", "n_test", "split_seed", "notes", "mode", "image_size", "n_classes")
    out = {k: splits.info[k] for k in keep if k in splits.info}
    out["dataset"] = splits.name
    return json.loads(json.dumps(out, default=str))


def baseline_for(dataset: str, splits: DatasetSplits, model: str | None = None):
    """The attribution and masking baseline of experiments.md §2.

    Zero image for MNIST/CIFAR autoencoders, the mean normal training beat for ECG5000, and for SimCLR a callable
    giving each image's own GaussianBlur(kernel 21, σ=5).
    """
    if model == "simclr":
        from torchvision.transforms.functional import gaussian_blur

        return lambda x: gaussian_blur(x, kernel_size=[21, 21], sigma=[5.0, 5.0])
    if dataset == "ecg5000":
        if "baseline" not in splits.info:
            raise ValueError("the ECG5000 baseline (mean normal beat) needs load_dataset(..., ecg_mode='features')")
        return splits.info["baseline"].unsqueeze(0).float()
    x0, _ = splits.test[0]
    return torch.zeros((1, *x0.shape))


def _short(path: Path) -> str:
    """``path`` relative to the repository when inside it (pages should not show this machine's folders)."""
    return display_path(path, REPO_ROOT)


#: The training-budget settings a reused checkpoint must match in train mode (inference loads any budget).
BUDGET_KEYS = ("n_epochs", "batch_size", "patience", "lr", "checkpoint_every", "seed")


def data_files(info: Mapping[str, Any]) -> dict[str, str]:
    """{relative path: sha256} of the data files a manifest's (or :func:`json_data_info`'s) ``data`` lists."""
    return {f["path"]: f["sha256"] for f in (info or {}).get("files", [])}


def stale_reasons(manifest: Mapping[str, Any], settings: Mapping[str, Any], data_info: Mapping[str, Any]) -> list[str]:
    """Why a checkpoint is not what train mode would produce now ([] when it is current).

    Current means: the same identity and training budget (:data:`BUDGET_KEYS`) as ``settings``, trained on the same
    data files (sha256) and the same number of training examples as ``data_info`` describes. ``make checkpoints``
    retrains exactly the stale ones.
    """
    saved = manifest.get("settings", {})
    want = json.loads(json.dumps(dict(settings)))
    out = [f"{k}: checkpoint={saved.get(k, '<absent>')!r}, now={v!r}" for k, v in want.items()
           if saved.get(k, "<absent>") != v]
    out += [f"{k}: checkpoint={saved[k]!r}, now=<absent>" for k in BUDGET_KEYS if k in saved and k not in want]
    have, now = data_files(manifest.get("data", {})), data_files(data_info)
    if have != now:
        changed = sorted(k for k in set(have) | set(now) if have.get(k) != now.get(k))
        out.append("data files differ: " + ", ".join(changed))
    for key in ("n_train", "roar"):
        a, b = (manifest.get("data") or {}).get(key), (data_info or {}).get(key)
        a, b = json.loads(json.dumps(a, default=str)), json.loads(json.dumps(b, default=str))
        if isinstance(a, dict) and isinstance(b, dict):   # fields one side records and the other not are derived
            a, b = ({k: d[k] for k in set(a) & set(b)} for d in (a, b))
        if key in (data_info or {}) and a != b:
            out.append(f"data.{key} differs")
    return out


def _check_identity(manifest: Mapping[str, Any], identity: Mapping[str, Any], name: str, hint: str) -> None:
    """The checkpoint's settings must agree with ``identity`` on every key it names (the budget may differ)."""
    saved = manifest.get("settings", {})
    want = json.loads(json.dumps(dict(identity)))
    diff = [f"  {k}: checkpoint={saved.get(k, '<absent>')!r}, requested={v!r}" for k, v in want.items()
            if saved.get(k, "<absent>") != v]
    if diff:
        raise CheckpointMismatchError(f"checkpoint {name!r} is not the requested model:\n" + "\n".join(diff)
                                      + f"\nRetrain it: {hint}")


#: TracIn checkpoints kept when a model's epochs are capped below the paper's (``n_epochs``): evenly spaced.
CAPPED_TRACIN_CHECKPOINTS = 5


def capped_checkpoint_every(every: int | None, paper_epochs: int, n_epochs: int) -> int | None:
    """TracIn checkpoint interval under an epoch cap: the paper's interval, or, when the cap leaves fewer than
    :data:`CAPPED_TRACIN_CHECKPOINTS` checkpoints, ``n_epochs // 5`` (at least 1) so that TracIn still sums over
    several points of training (e.g. 10 epochs: epochs 0, 2, 4, 6, 8)."""
    if not every or n_epochs >= paper_epochs:
        return every
    return min(every, max(1, int(n_epochs) // CAPPED_TRACIN_CHECKPOINTS))


def downloads_allowed() -> bool:
    """Notebooks download missing data unless run by the book builder (``LFXAI_BOOK``) or ``LFXAI_NO_DOWNLOAD``."""
    return not (os.environ.get("LFXAI_BOOK") or os.environ.get("LFXAI_NO_DOWNLOAD"))


def training_signature(manifest: Mapping[str, Any]) -> tuple:
    """What makes two checkpoints "trained alike" for :meth:`Experiment.select_runs`: the data files (sha256), the
    number of training examples, the epoch budget and the patience (not the seed, the identity or the outcome)."""
    data = manifest.get("data") or {}
    settings = manifest.get("settings") or {}
    return (tuple(sorted(data_files(data).items())), json.dumps(data.get("n_train"), default=str),
            settings.get("n_epochs"), settings.get("patience"))


def _runs_text(runs: Sequence[int]) -> str:
    return ", ".join(str(r) for r in runs)


@dataclass(frozen=True)
class RunSelection:
    """Which runs a page uses (:meth:`Experiment.select_runs`): ``kind`` is ``"current"`` (trained as ``make
    checkpoints`` trains them now), ``"stale"`` (trained alike, but not as now) or ``"train"`` (train mode or a
    smoke run: every run is trained); ``left_out`` says why each other run is not used; ``note`` is one Markdown
    paragraph for the page."""

    runs: list[int]
    kind: str
    left_out: dict[int, str]
    note: str
    stale_reason: str = ""

    def describe(self, n_runs: int | None, paper: int, train_command: str) -> str:
        k = len(self.runs)
        how = {"current": "trained as `make checkpoints` trains them now",
               "stale": f"**stale** ({self.stale_reason}): no run is complete at the current settings, so these "
                        "older models, trained alike, are used"}[self.kind]
        out = [f"Run{'s' if k > 1 else ''} used: **{_runs_text(self.runs)}** (the paper: {paper} runs), {how}."]
        spare = [r for r, w in self.left_out.items() if w.startswith("not needed")]
        other = {r: w for r, w in self.left_out.items() if r not in spare}
        if n_runs is not None and k < int(n_runs):
            out.append(f"`n_runs = {n_runs}` asked for {n_runs}: only {k} can be used.")
        if spare:
            out.append(f"Run{'s' if len(spare) > 1 else ''} {_runs_text(spare)} {'are' if len(spare) > 1 else 'is'} "
                       f"trained alike too; only the first {k} {'is' if k == 1 else 'are'} used "
                       f"(`n_runs = {paper if n_runs is None else n_runs}`).")
        if other:
            out.append("Left out: " + "; ".join(f"run {r}, {w}" for r, w in other.items()) + ".")
        if self.kind == "stale" or other:
            out.append("A page never mixes models trained differently. `make checkpoints` trains the missing and "
                       f"stale models (or: `{train_command}`).")
        return " ".join(out)


# ------------------------------------------------------------------------------------------ the experiment
@dataclass
class Experiment:
    """A notebook's run: validated parameters plus helpers for data, models and outputs."""

    notebook: str
    dataset: str
    mode: str
    model: str | None
    seed: int
    device: torch.device
    data_dir: Path | None
    output_dir: Path
    checkpoint_dir: Path
    reuse_checkpoints: bool = False
    smoke: bool = False
    n_epochs: int | None = None
    progress: bool = True
    trained: list[str] = field(default_factory=list)
    loaded: list[str] = field(default_factory=list)
    #: every model this run loaded or trained: manifest, and the paper's epoch budget for it (for the diagnostics)
    manifests: dict[str, dict] = field(default_factory=dict)
    paper_epochs: dict[str, int] = field(default_factory=dict)

    # -------------------------------------------------------------- mode helpers
    @property
    def label(self) -> str:
        return dataset_label(self.dataset) + (f" ({self.model})" if self.model else "")

    def size(self, normal: Any, smoke: Any) -> Any:
        """``smoke`` in a smoke run, ``normal`` otherwise (budgets: examples explained, epochs, steps, …)."""
        return smoke if self.smoke else normal

    def papermill_command(self, mode: str = "train", **extra: Any) -> str:
        """The command that runs this notebook on this dataset (and model) in ``mode`` with ``extra`` parameters
        (:func:`lfxai_utils.params.papermill_command`)."""
        from ..params import papermill_command

        params = {"dataset": self.dataset, **({"model": self.model} if self.model else {}), "mode": mode, **extra}
        return papermill_command(self.notebook, params)

    def describe(self) -> str:
        what = {"inference": "inference from the checkpoints in", "train": "training every model into"}[self.mode]
        if self.smoke:
            what = "SMOKE TEST (generated fixture data, tiny models trained on the fly; numbers mean nothing) in"
        budget = f"; epochs capped at {self.n_epochs}" if self.n_epochs and self.mode == "train" else ""
        return (f"{self.notebook} on {self.label}: {what} {_short(self.checkpoint_dir)}{budget}; "
                f"device {self.device}; seed {self.seed}; results in {_short(self.output_dir)}")

    # -------------------------------------------------------------- data
    def load_data(self, dataset: str | None = None, **kwargs: Any) -> DatasetSplits:
        """:func:`~lfxai_utils.data.load_dataset` with this run's data folder.

        Missing data is downloaded (checksum-verified) in both modes, except inside the book build (``LFXAI_BOOK``
        set: pages never download) or with ``LFXAI_NO_DOWNLOAD`` set; offline, the error comes within seconds.
        """
        name = dataset or self.dataset
        kwargs.setdefault("download", downloads_allowed())
        kwargs.setdefault("progress", self.progress)
        with warnings.catch_warnings(record=True) as caught:   # printed below, without the source path
            warnings.simplefilter("always")
            try:
                splits = load_dataset(name, data_dir=self.data_dir, **kwargs)
            except DatasetNotFoundError as err:
                why = ("Downloads are off here (the book build never downloads; LFXAI_NO_DOWNLOAD is set or "
                       "download=False)" if not kwargs["download"] else "The download failed (see above)")
                raise DatasetNotFoundError(
                    f"{err}\n\n{why}. To download {name!r} (checksum-verified, into the repository's data/ "
                    f"folder) on a machine with internet access, without training anything:\n"
                    f"  python -c \"from lfxai_utils.data import load_dataset; load_dataset({name!r})\"\n"
                    f"then run this notebook again; or train every model this page needs (downloads the data "
                    f"too): {self.papermill_command('train')}") from None
        notes = list(splits.info.get("notes", []))
        notes += [str(w.message) for w in caught if not any(n in str(w.message) for n in notes)]
        for note in notes:
            print(f"note ({dataset_label(name)}): {note}")
        return splits

    # -------------------------------------------------------------- models
    def checkpoint_name(self, claim: str, model: str, **kw: Any) -> str:
        return checkpoint_name(claim, self.dataset, model, **kw)

    def get_model(self, name: str, spec: ModelSpec, train_data: Any, *, data_info: Mapping[str, Any],
                  val_data: Any = None, arch_overrides: Mapping[str, Any] | None = None,
                  fit_kwargs: Mapping[str, Any] | None = None, seed: int | None = None,
                  desc: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
        """Load checkpoint ``name`` (inference), or train it with ``spec`` and save it (train, smoke).

        In train mode an existing checkpoint with the same identity is reused only when the notebook was run with
        ``reuse_checkpoints=True`` (the book's ``--train-checkpoints`` does so, since several pages share a model).
        Returns ``(model in eval mode on self.device, manifest)``.
        """
        seed = self.seed if seed is None else seed
        arch_kwargs = {**spec.arch_kwargs, **(arch_overrides or {})}
        settings = {"arch": spec.arch, **arch_kwargs, **spec.identity}
        hint = self.papermill_command("train")
        budget = self.budget(spec, fit_kwargs)
        saved_settings = {**settings, **{k: v for k, v in budget.items() if v is not None}, "seed": seed}
        if not self.smoke and (self.mode == "inference" or self.reuse_checkpoints):
            try:
                model, manifest = load_checkpoint(self.checkpoint_dir, name, expected_arch=spec.arch,
                                                  expected_arch_kwargs=arch_kwargs, map_location="cpu",
                                                  train_hint=hint)
                _check_identity(manifest, settings, name, hint)
                stale = [] if self.mode == "inference" else stale_reasons(manifest, saved_settings, data_info)
                if not stale:
                    self.loaded.append(name)
                    self.manifests[name], self.paper_epochs[name] = manifest, spec.n_epochs
                    return model.to(self.device).eval(), manifest
                print(f"retraining {name}: " + "; ".join(stale))
            except CheckpointNotFoundError:
                if self.mode == "inference":
                    raise
        seed_everything(seed)
        model = build_model(spec.arch, **arch_kwargs)
        resume = self.resume_path(name)
        result: TrainResult = fit(model, train_data, val_data=val_data, seed=seed, device=self.device,
                                  progress=self.progress, desc=desc or name, resume=resume,
                                  resume_key={"settings": saved_settings, "data": data_files(data_info)}, **budget)
        save_checkpoint(model, self.checkpoint_dir, name, data_info=data_info, train_result=result,
                        settings=saved_settings)
        resume.unlink(missing_ok=True)
        with contextlib.suppress(OSError):      # the folder goes with its last state (another training may use it)
            resume.parent.rmdir()
        self.trained.append(name)
        manifest = read_manifest(self.checkpoint_dir, name)
        self.manifests[name], self.paper_epochs[name] = manifest, spec.n_epochs
        return model.to(self.device).eval(), manifest

    def resume_path(self, name: str) -> Path:
        """Where training checkpoint ``name`` keeps its state between epochs (:func:`~lfxai_utils.training.fit`'s
        ``resume``), so that a stopped ``make checkpoints`` or notebook continues from the last finished epoch:
        ``<checkpoint_dir>/.resume/<name>.pt`` (git-ignored; deleted once the checkpoint is saved)."""
        return self.checkpoint_dir / RESUME_DIR / f"{name}.pt"

    def resolve_runs(self, n_runs: int | None, paper: int, required: Callable[[int], Sequence[str]]) -> int:
        """``n_runs``, or for ``None`` (the notebooks' default): the paper's ``paper`` runs when training, and in
        inference mode the runs ``0..k-1`` whose every checkpoint (``required(k)``: the names for ``k`` runs) is in
        the checkpoint folder and was trained like run 0's (:func:`training_signature`: a run retrained at another
        budget or on other data ends the prefix, so runs trained differently are never mixed), at most ``paper``;
        ``CheckpointNotFoundError`` naming the train command when not even run 0 can be used. So
        ``papermill notebook.ipynb -p dataset D`` uses whatever is shipped for ``D``. (A page that can use any
        set of runs, not only a prefix, picks them with :meth:`select_runs`.)"""
        if n_runs is not None:
            return n_runs
        if self.mode != "inference" or self.smoke:
            return paper
        def shipped(name: str) -> bool:
            return all(p.exists() for p in checkpoint_paths(self.checkpoint_dir, name))

        def signatures(names: Sequence[str]) -> set:
            return {training_signature(read_manifest(self.checkpoint_dir, n)) for n in names}

        k, first = 0, None
        while k < paper and all(shipped(n) for n in required(k + 1)):
            sigs = signatures([n for n in required(k + 1) if n not in set(required(k))])
            if len(sigs) != 1 or (first is not None and sigs != first):
                break
            first, k = sigs, k + 1
        if k == 0:
            missing = [n for n in required(1) if not shipped(n)]
            why = (f"missing e.g. {missing[0]}" if missing else
                   "run 0's models were trained differently: some retrained, some not")
            raise CheckpointNotFoundError(
                f"no complete run of this page's models for {self.label} in {_short(self.checkpoint_dir)} "
                f"({why}); train them: {self.papermill_command('train')}")
        print(f"n_runs = None: the {k} run(s) whose checkpoints are in {_short(self.checkpoint_dir)}, trained alike "
              f"(the paper: {paper}; `-p n_runs N` chooses)")
        return k

    def select_runs(self, n_runs: int | None, paper: int, jobs: Sequence[Any], *,
                    data_info: Mapping[str, Any] | None = None) -> "RunSelection":
        """The runs a page uses, never mixing models trained differently.

        ``jobs`` are the page's training jobs (:class:`~lfxai_utils.experiments.jobs.TrainJob`, each with a ``run``
        in its selector) for at least ``max(paper, n_runs)`` runs; ``data_info`` the page's loaded data
        (:func:`json_data_info`), so that nothing is loaded twice.

        Train mode and smoke runs: runs ``0..n-1`` (``n_runs``, or the paper's ``paper`` for ``None``). Inference:
        among the runs whose every checkpoint is in the checkpoint folder (*complete*), the **current** ones — each
        checkpoint what ``make checkpoints`` would train now (:func:`~lfxai_utils.experiments.jobs.job_state`: same
        data files and training budget) — or, when no run is current, the largest set of complete runs
        whose checkpoints were all trained alike (:func:`training_signature`), labelled stale. A run whose own
        checkpoints differ (half retrained) is never used. Of those, the lowest ``n_runs`` (``None``: all of them,
        at most ``paper``); fewer than ``n_runs`` are used, and the note says why, when no more are trained alike.
        ``CheckpointNotFoundError`` naming the train command when no run can be used.
        """
        if self.mode != "inference" or self.smoke:
            k = paper if n_runs is None else int(n_runs)
            return RunSelection(list(range(k)), "train", {}, "")
        from .jobs import data_key, job_state

        by_run: dict[int, list[Any]] = {}
        for j in jobs:
            by_run.setdefault(int(j.selector["run"]), []).append(j)
        memo: dict = {}
        if data_info is not None:
            for j in jobs:
                memo[data_key(j.data)] = dict(data_info)
        left_out: dict[int, str] = {}
        current, stale = [], {}
        for r, js in sorted(by_run.items()):
            states = [job_state(j, self.checkpoint_dir, self.data_dir, memo) for j in js]
            n_have = sum(st != "missing" for st, _ in states)
            if any(st == "no-data" for st, _ in states):
                left_out[r] = "its data is not here"
            elif n_have < len(states):
                left_out[r] = f"incomplete ({n_have} of {len(states)} models trained)"
            elif all(st == "current" for st, _ in states):
                current.append(r)
            else:
                why = next(w for st, w in states if st == "stale").split(": ", 1)[-1]
                try:
                    sigs = {training_signature(read_manifest(self.checkpoint_dir, n)) for j in js for n in j.names}
                except Exception as err:  # noqa: BLE001 - a corrupt manifest: the run cannot be used
                    left_out[r] = f"a manifest cannot be read ({type(err).__name__}: {err})"
                    continue
                if len(sigs) == 1:
                    stale[r] = (sigs.pop(), why)
                else:
                    left_out[r] = f"its models were trained differently (some retrained, some not: {why})"
        if current:
            kind, chosen = "current", current
            for r, (_, why) in stale.items():
                left_out[r] = f"stale ({why}): not mixed with the current runs"
        elif stale:
            groups: dict[Any, list[int]] = {}
            for r, (sig, _) in stale.items():
                groups.setdefault(sig, []).append(r)
            kind, chosen = "stale", max(groups.values(), key=lambda g: (len(g), -g[0]))
            for r, (_, why) in stale.items():
                if r not in chosen:
                    left_out[r] = f"trained differently from runs {_runs_text(chosen)} ({why})"
        else:
            raise CheckpointNotFoundError(
                f"no complete run of this page's models for {self.label} in {_short(self.checkpoint_dir)} ("
                + "; ".join(f"run {r}: {w}" for r, w in sorted(left_out.items()))
                + f"); train them: {self.papermill_command('train')}")
        want = paper if n_runs is None else int(n_runs)
        for r in chosen[want:]:
            left_out[r] = f"not needed (n_runs = {want})"
        sel = RunSelection(chosen[:want], kind, dict(sorted(left_out.items())), "",
                           stale[chosen[0]][1] if kind == "stale" else "")
        return replace(sel, note=sel.describe(n_runs, paper, self.papermill_command("train")))

    def budget(self, spec: ModelSpec, fit_kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The keyword arguments of :func:`~lfxai_utils.training.fit` this run trains ``spec`` with."""
        budget = dict(n_epochs=spec.n_epochs, batch_size=spec.batch_size, patience=spec.patience, lr=spec.lr,
                      checkpoint_every=spec.checkpoint_every)
        if self.n_epochs is not None:
            budget["n_epochs"] = self.n_epochs
            budget["checkpoint_every"] = capped_checkpoint_every(spec.checkpoint_every, spec.n_epochs, self.n_epochs)
        if self.smoke:
            budget.update(SMOKE_TRAINING)
            if spec.checkpoint_every:
                budget["checkpoint_every"] = 1
        budget.update(fit_kwargs or {})
        return budget

    def tracin_checkpoints(self, name: str) -> list[dict[str, torch.Tensor]]:
        return load_tracin_checkpoints(self.checkpoint_dir, name)

    # -------------------------------------------------------------- outputs
    def save_csv(self, df: pd.DataFrame, filename: str) -> Path:
        path = write_csv(df, self.output_dir / filename)
        print(f"wrote {_short(path)}")
        return path

    def save_figure(self, fig, filename: str) -> Path:
        """Save a matplotlib figure (PNG and PDF) atomically into ``output_dir``."""
        path = self.output_dir / filename
        for suffix in (".png", ".pdf"):
            with atomic_write(path.with_suffix(suffix), "wb") as f:
                fig.savefig(f, format=suffix[1:], bbox_inches="tight", dpi=150)
        return path.with_suffix(".png")

    def training_diagnostics(self) -> dict:
        """:func:`~lfxai_utils.report.training_diagnostics` of every model this run used."""
        from ..report import training_diagnostics

        return training_diagnostics(self.manifests, self.paper_epochs)

    def write_summary(self, verdicts: Sequence[Verdict]) -> pd.DataFrame:
        """Write ``summary.csv``. A verdict resting on a model trained below the paper's epochs whose training the
        paper's early stopping would not yet have ended (:func:`~lfxai_utils.report.training_diagnostics`) is not
        like-for-like: it becomes "inconclusive", saying why and what the criterion gave at this budget. Smoke runs
        never give a verdict."""
        if self.smoke:
            verdicts = [replace(v, verdict="inconclusive",
                                criterion=v.criterion + " [smoke run on generated data: no verdict]")
                        for v in verdicts]
        else:
            diag = self.training_diagnostics()
            if diag["undertrained"]:
                note = (f" [not like-for-like: {diag['sentence']}; {len(diag['undertrained'])} model(s) trained "
                        "below the paper's budget had not converged by its early-stopping rule, so the claim is not "
                        "tested yet]")
                verdicts = [v if v.verdict == "inconclusive" else
                            replace(v, verdict="inconclusive", ours=v.ours + note + f" (at this budget the "
                                    f"criterion gives: {v.verdict})") for v in verdicts]
        return write_summary(verdicts, self.output_dir)


def setup(notebook: str, *, dataset: str, mode: str = "inference", smoke: bool = False, model: str | None = None, seed: int = 1,
          device: str = "auto", data_dir: str | None = None, output_dir: str | None = None,
          checkpoint_dir: str | None = None, reuse_checkpoints: bool = False, n_epochs: int | None = None,
          datasets: Sequence[str] = DATASETS, models: Sequence[str | None] = (None,),
          smoke_fixtures: Sequence[str] | None = None, progress: bool = True) -> Experiment:
    """Validate a notebook's parameters and prepare its folders.

    ``smoke``, ``seed``, ``device``, ``reuse_checkpoints`` and ``n_epochs`` are checked against their entries of
    :mod:`lfxai_utils.params` (a notebook has already checked all its parameters there before calling this).

    Parameters
    ----------
    notebook
        the notebook's stem (for messages and the papermill command it prints).
    dataset, model
        validated against ``datasets`` / ``models``.
    mode
        ``"inference"`` or ``"train"``.
    smoke
        a seconds-long run on generated fixtures (written into a temporary folder, as are its checkpoints).
    data_dir
        where the data is looked for (default: ``$LFXAI_DATA_DIR``, then ``<repo>/data``).  Smoke runs write
        small generated fixtures (``smoke_fixtures``, default the dataset itself) into a temporary folder instead.
    output_dir
        results folder (default ``results/<notebook>/<dataset>[-<model>]``).
    checkpoint_dir
        default ``<repo>/checkpoints``; a smoke run uses a temporary folder.
    n_epochs
        train mode: override the paper's epoch budget of every model trained (recorded in the manifests).
    """
    from ..params import check_common

    check_choice("mode", mode, MODES)
    check_common(smoke=smoke, seed=seed, device=device, reuse_checkpoints=reuse_checkpoints, n_epochs=n_epochs)
    check_choice("dataset", dataset, list(datasets))
    model = model or None
    check_choice("model", model, list(models))
    key = dataset + (f"-{model}" if model else "")
    out = Path(output_dir) if output_dir else REPO_ROOT / "results" / notebook / key
    out.mkdir(parents=True, exist_ok=True)
    ckpt = Path(checkpoint_dir) if checkpoint_dir else DEFAULT_CHECKPOINT_DIR
    data = Path(data_dir) if data_dir else None
    if smoke:
        from ..fixtures import write_fixture

        tmp = Path(tempfile.mkdtemp(prefix=f"lfxai-smoke-{notebook}-"))
        data, ckpt = tmp / "data", tmp / "checkpoints"
        for name in (smoke_fixtures or [dataset]):
            write_fixture(name, data, n_train=128 if name != "cifar100" else 200,
                          n_test=64 if name != "cifar100" else 100)
    exp = Experiment(notebook=notebook, dataset=dataset, mode=mode, model=model, seed=int(seed),
                     device=resolve_device(device), data_dir=data, output_dir=out, checkpoint_dir=ckpt,
                     reuse_checkpoints=bool(reuse_checkpoints), smoke=bool(smoke),
                     n_epochs=None if n_epochs is None else int(n_epochs), progress=progress and not os.environ.get("LFXAI_NO_PROGRESS"))
    seed_everything(exp.seed)
    print(exp.describe())
    return exp


def setup_notebook(module: Any, namespace: Mapping[str, Any], **extra: Any) -> Experiment:
    """A claim notebook's set-up: its first code cell after the parameters runs
    ``exp = common.setup_notebook(X, globals())`` (``X`` the notebook's claim module).

    First :func:`lfxai_utils.params.check` validates every parameter of ``module.NOTEBOOK`` as set in ``namespace``
    (a bad value raises ``ValueError`` naming it, before any folder is created or any data is read); then
    :func:`setup` gets ``dataset``, ``model`` and the common parameters (``lfxai_utils.params.COMMON_NAMES``:
    mode, smoke, seed, device, folders, ...) from ``namespace``, ``datasets=module.DATASETS``,
    ``models=module.MODELS``, and ``extra`` (any other keyword argument of :func:`setup`, e.g. ``smoke_fixtures``).
    """
    from ..params import COMMON_NAMES, check

    check(module.NOTEBOOK, namespace)
    kwargs = {name: namespace[name] for name in ("dataset", "model", *COMMON_NAMES)}
    kwargs.update(datasets=module.DATASETS, models=module.MODELS)
    clash = sorted(set(extra) & set(kwargs) - {"datasets", "models"})
    if clash:
        raise TypeError(f"setup_notebook: {', '.join(clash)} come from the notebook's parameters, not from extra")
    return setup(module.NOTEBOOK, **{**kwargs, **extra})
