"""One checkpoint format for every model: ``<dir>/<name>.pt`` (a ``state_dict``) + ``<name>.json``
(a manifest that can rebuild, verify and describe it).

* :func:`save_checkpoint` writes both atomically (a failed save leaves no partial file); the manifest
  holds the architecture (``arch``, ``arch_kwargs`` for :func:`~lfxai_utils.models.build_model`), the
  caller's settings and data description, the training summary, library versions, a timestamp and the
  sha256/size of the ``.pt`` file.  TracIn checkpoints are saved as ``<name>_epoch{k}.pt`` with their own
  manifests and listed in the main manifest.
* :func:`load_checkpoint` verifies the manifest against what the caller expects, the file against its
  sha256, rebuilds the model and loads the weights with ``weights_only=True`` and ``strict=True``.
* Loading else training is :meth:`lfxai_utils.experiments.common.Experiment.get_model` (inference mode: load,
  never train; train mode: train and save, or reuse a current checkpoint).

Naming scheme: :func:`checkpoint_name` (documented in ``checkpoints/README.md``, whose table
``python -m lfxai_utils.checkpoints [directory]`` regenerates, with the book pages that load each checkpoint).
"""
from __future__ import annotations

import datetime as _dt
import json
import platform
import re
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from . import __version__
from ._utils import PathLike, atomic_torch_save, atomic_write, sha256_file
from .models.registry import build_model, normalize_arch_kwargs
from .training import TrainResult

FORMAT = "lfxai_utils.checkpoint/1"
DEFAULT_DIR = Path(__file__).resolve().parents[1] / "checkpoints"
_PART = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_TABLE_START, _TABLE_END = "<!-- checkpoint-table:start -->", "<!-- checkpoint-table:end -->"


class CheckpointError(Exception):
    """Base class of the checkpoint errors."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No checkpoint under that name (the message says how to train it)."""


class CheckpointIntegrityError(CheckpointError, RuntimeError):
    """The checkpoint files are corrupt, truncated, or disagree with their manifest."""


class CheckpointMismatchError(CheckpointError, ValueError):
    """The checkpoint is intact but is not the requested model (architecture, arguments or settings)."""


# ------------------------------------------------------------------------------------------ names
def _fmt_number(v: float) -> str:
    v = float(v)
    return str(int(v)) if v.is_integer() else repr(v).replace(".", "p").replace("-", "m")


def checkpoint_name(claim: str, dataset: str, model: str, *, variant: str | None = None,
                    beta: float | None = None, run: int | None = None, epoch: int | None = None) -> str:
    """``{claim}_{dataset}_{model}[_{variant}][_beta{β}][_run{r}][_epoch{k}]``.

    Parts are lower-case letters, digits and hyphens (``_`` separates parts).  Examples:
    ``claim1-features_mnist_denoising-ae``, ``claim2-pretext_mnist_inpainting-ae_run3``,
    ``claim3-disvae_mnist_tc-vae_beta5_run2``; ``epoch=k`` names the TracIn checkpoint after epoch k.
    """
    parts = [claim, dataset, model] + ([variant] if variant is not None else [])
    for p in parts:
        if not isinstance(p, str) or not _PART.match(p):
            raise ValueError(f"checkpoint name part {p!r} must be lower-case letters, digits and hyphens "
                             "(no '_', which separates the parts), e.g. 'denoising-ae'")
    if beta is not None:
        parts.append(f"beta{_fmt_number(beta)}")
    if run is not None:
        parts.append(f"run{int(run)}")
    if epoch is not None:
        parts.append(f"epoch{int(epoch)}")
    return "_".join(parts)


def checkpoint_paths(directory: PathLike, name: str) -> tuple[Path, Path]:
    """``(<dir>/<name>.pt, <dir>/<name>.json)``."""
    d = Path(directory)
    return d / f"{name}.pt", d / f"{name}.json"


# ------------------------------------------------------------------------------------------ helpers
def library_versions() -> dict[str, str | None]:
    """Versions of torch, torchvision, captum, lfxai_utils and Python (without importing the packages)."""
    def dist(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {"torch": torch.__version__, "torchvision": dist("torchvision"), "captum": dist("captum"),
            "lfxai_utils": __version__, "python": platform.python_version()}


def _jsonable(obj: Any, what: str) -> Any:
    try:
        return json.loads(json.dumps(obj, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} must be JSON-serialisable (plain dicts, lists, str, finite numbers): {err}") from None


def _arch_of(model: nn.Module) -> tuple[str, dict[str, Any]]:
    arch, kwargs = getattr(model, "arch", None), getattr(model, "arch_kwargs", None)
    if not isinstance(arch, str) or not isinstance(kwargs, dict):
        raise ValueError(f"{type(model).__name__} has no arch/arch_kwargs; build it with "
                         "lfxai_utils.models.build_model so that its checkpoint can be rebuilt")
    return arch, kwargs


def _write_json(path: Path, obj: Mapping[str, Any]) -> None:
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2, allow_nan=False)
        f.write("\n")


def _save_state(state: Mapping[str, Tensor], directory: Path, name: str, manifest: dict[str, Any]) -> dict[str, Any]:
    pt, js = checkpoint_paths(directory, name)
    atomic_torch_save(dict(state), pt)
    manifest = {**manifest, "name": name, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "file": {"name": pt.name, "sha256": sha256_file(pt), "size": pt.stat().st_size}}
    _write_json(js, manifest)
    return manifest


def _not_found(pt: Path, train_hint: str | None) -> CheckpointNotFoundError:
    hint = f"\nTrain it with:\n    {train_hint}" if train_hint else ""
    return CheckpointNotFoundError(f"checkpoint {pt.stem!r} not found: {pt} (and its .json manifest) "
                                   f"do not exist.{hint}")


def _diff(found: Any, expected: Any, prefix: str) -> list[str]:
    if isinstance(found, dict) and isinstance(expected, dict):
        lines: list[str] = []
        for k in sorted(set(found) | set(expected), key=str):
            p = f"{prefix}.{k}"
            if k not in found:
                lines.append(f"  {p}: absent from the checkpoint, requested {expected[k]!r}")
            elif k not in expected:
                lines.append(f"  {p}: checkpoint has {found[k]!r}, not requested")
            else:
                lines.extend(_diff(found[k], expected[k], p))
        return lines
    return [] if found == expected else [f"  {prefix}: checkpoint={found!r}, requested={expected!r}"]


# ------------------------------------------------------------------------------------------ save
def save_checkpoint(model: nn.Module, directory: PathLike, name: str, *, settings: Mapping[str, Any],
                    data_info: Mapping[str, Any], train_result: TrainResult | None = None) -> Path:
    """Save ``model`` as ``<directory>/<name>.pt`` + ``<name>.json``; return the ``.pt`` path.

    The main manifest is written last, so a checkpoint whose save was interrupted is never listed as complete.

    Parameters
    ----------
    model
        built with :func:`~lfxai_utils.models.build_model` (it carries ``arch``/``arch_kwargs``).
    settings
        what the caller wants checked on reload (pretext, loss, β, epochs, batch size, lr, seed, …).
    data_info
        training data description (dataset, split, files with sha256, …).
    train_result
        the :class:`~lfxai_utils.training.TrainResult`; its TracIn checkpoints are saved as
        ``<name>_epoch{k}`` (own manifests, listed under ``tracin_checkpoints`` in the main manifest).
    """
    arch, arch_kwargs = _arch_of(model)
    directory = Path(directory)
    base = {"format": FORMAT, "role": "model", "arch": arch, "arch_kwargs": _jsonable(arch_kwargs, "arch_kwargs"),
            "settings": _jsonable(dict(settings), "settings"), "data": _jsonable(dict(data_info), "data_info"),
            "training": _jsonable(train_result.summary(), "training") if train_result else None,
            "n_parameters": sum(p.numel() for p in model.parameters()), "versions": library_versions()}
    tracin = []
    for epoch, state in (train_result.tracin_checkpoints if train_result else []):
        sub = _save_state(state, directory, f"{name}_epoch{epoch}",
                          {**base, "role": "tracin", "parent": name, "epoch": epoch, "training": None})
        tracin.append({"epoch": epoch, "name": sub["name"], "sha256": sub["file"]["sha256"]})
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    _save_state(state, directory, name, {**base, "tracin_checkpoints": tracin})
    _remove_orphan_tracin(directory, name, {t["name"] for t in tracin})
    return checkpoint_paths(directory, name)[0]


def _remove_orphan_tracin(directory: Path, name: str, keep: set[str]) -> list[str]:
    """Delete ``<name>_epoch{k}`` files of an earlier training of ``name`` that its new manifest does not list
    (a retrained model that stopped earlier has fewer TracIn checkpoints; stale ones must not linger)."""
    import re

    removed = []
    pattern = re.compile(re.escape(name) + r"_epoch\d+")
    for path in sorted(directory.glob(f"{name}_epoch*")):
        if pattern.fullmatch(path.stem) and path.stem not in keep and path.suffix in (".pt", ".json"):
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


# ------------------------------------------------------------------------------------------ load
def read_manifest(directory: PathLike, name: str, *, train_hint: str | None = None) -> dict[str, Any]:
    """Read ``<name>.json``; :class:`CheckpointNotFoundError` / :class:`CheckpointIntegrityError` on failure."""
    pt, js = checkpoint_paths(directory, name)
    if not js.exists():
        if pt.exists():
            raise CheckpointIntegrityError(f"{pt} has no manifest {js.name} (interrupted save?); delete it and "
                                           "retrain, or restore both files")
        raise _not_found(pt, train_hint)
    try:
        manifest = json.loads(js.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointIntegrityError(f"manifest {js} is not valid JSON ({err}); restore or retrain it") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or "file" not in manifest:
        raise CheckpointIntegrityError(f"manifest {js} is not a {FORMAT} manifest")
    return manifest


def amend_manifest(directory: PathLike, name: str, section: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """Add derived ``fields`` to the ``section`` (dotted path, e.g. ``"data.roar"``) of ``name``'s manifest.

    For facts computed later from what trained the model (never its weights: ``file`` is left alone, and an
    existing field is never changed). Atomic rewrite; returns the new manifest.
    """
    manifest = read_manifest(directory, name)
    node = manifest
    for key in section.split("."):
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ValueError(f"manifest section {section!r} of {name!r} is not a mapping")
    clash = {k: (node[k], v) for k, v in fields.items() if k in node and node[k] != v}
    if clash:
        raise ValueError(f"refusing to change recorded manifest fields of {name!r} ({section}): {clash}")
    node.update(_jsonable(dict(fields), f"fields for {name}"))
    _write_json(checkpoint_paths(directory, name)[1], manifest)
    return manifest


def _verified_state(directory: PathLike, name: str, manifest: Mapping[str, Any], map_location: Any) -> dict[str, Tensor]:
    pt = checkpoint_paths(directory, name)[0]
    if not pt.exists():
        raise CheckpointIntegrityError(f"{pt} is missing although its manifest exists; restore it or retrain")
    expected, size = manifest["file"]["sha256"], manifest["file"]["size"]
    actual_size = pt.stat().st_size
    actual = sha256_file(pt)
    if actual != expected:
        raise CheckpointIntegrityError(
            f"{pt} is corrupt or was modified: sha256 {actual} (size {actual_size} B) but the manifest "
            f"expects {expected} (size {size} B); restore the file or retrain it")
    try:
        state = torch.load(pt, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means an unusable file
        raise CheckpointIntegrityError(f"{pt} cannot be read as a state_dict: {err}") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointIntegrityError(f"{pt} does not hold a state_dict of tensors")
    return state


def _load_weights(model: nn.Module, state: Mapping[str, Tensor], where: Path) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        def few(xs: list[str]) -> str:
            return f" (e.g. {', '.join(xs[:3])})" if xs else ""

        raise CheckpointMismatchError(
            f"weights in {where} do not fit architecture {model.arch!r} {model.arch_kwargs}: "
            f"{len(missing)} missing key(s){few(missing)}, {len(unexpected)} unexpected key(s){few(unexpected)}, "
            f"{len(shapes)} shape mismatch(es){few(shapes)}; the file was saved from another architecture "
            "than its manifest says: retrain it")
    model.load_state_dict(state, strict=True)


def _check_manifest(manifest: Mapping[str, Any], where: Path, expected_arch: str | None,
                    expected_arch_kwargs: Mapping[str, Any] | None, expected_settings: Mapping[str, Any] | None) -> None:
    lines: list[str] = []
    if expected_arch is not None and manifest["arch"] != expected_arch:
        lines.append(f"  arch: checkpoint={manifest['arch']!r}, requested={expected_arch!r}")
    elif expected_arch_kwargs is not None:
        want = normalize_arch_kwargs(manifest["arch"], **expected_arch_kwargs)
        lines += _diff(manifest["arch_kwargs"], want, "arch_kwargs")
    if expected_settings is not None:
        lines += _diff(manifest.get("settings", {}), _jsonable(dict(expected_settings), "settings"), "settings")
    if lines:
        raise CheckpointMismatchError(
            f"checkpoint {where} is not the requested model; differing keys:\n" + "\n".join(lines)
            + "\nRequest the checkpoint's values, or retrain it with the new ones (the notebook's train mode).")


def load_checkpoint(directory: PathLike, name: str, *, expected_arch: str | None = None,
                    expected_arch_kwargs: Mapping[str, Any] | None = None,
                    expected_settings: Mapping[str, Any] | None = None, map_location: Any = "cpu",
                    train_hint: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Load and verify a checkpoint; return ``(model in eval mode, manifest)``.

    ``expected_arch_kwargs`` is completed with the architecture's defaults before the comparison;
    ``expected_settings`` must equal the saved settings exactly (keys and values).

    Raises
    ------
    CheckpointNotFoundError
        no such checkpoint (the message contains ``train_hint``).
    CheckpointIntegrityError
        manifest unreadable, file missing, sha256 mismatch, unreadable weights.
    CheckpointMismatchError
        manifest differs from the expectations (readable diff), or the weights do not
        fit the manifest's architecture (counts of missing/unexpected keys).
    """
    manifest = read_manifest(directory, name, train_hint=train_hint)
    pt, js = checkpoint_paths(directory, name)
    _check_manifest(manifest, js, expected_arch, expected_arch_kwargs, expected_settings)
    state = _verified_state(directory, name, manifest, map_location)
    try:
        model = build_model(manifest["arch"], **manifest["arch_kwargs"])
    except (ValueError, TypeError) as err:
        raise CheckpointMismatchError(f"manifest {js} names an architecture this version cannot build: {err}") from None
    _load_weights(model, state, pt)
    device = map_location if isinstance(map_location, (str, torch.device)) else "cpu"
    return model.to(device).eval(), manifest


def load_tracin_checkpoints(directory: PathLike, name: str, *, map_location: Any = "cpu") -> list[dict[str, Tensor]]:
    """The verified TracIn state dicts listed in ``<name>.json``, in epoch order (``[]`` when none)."""
    main = read_manifest(directory, name)
    states = []
    for entry in sorted(main.get("tracin_checkpoints", []), key=lambda e: e["epoch"]):
        sub = read_manifest(directory, entry["name"])
        if sub["file"]["sha256"] != entry["sha256"]:
            raise CheckpointIntegrityError(
                f"TracIn checkpoint {entry['name']!r} was replaced: sha256 {sub['file']['sha256']} but {name}.json "
                f"lists {entry['sha256']}; retrain {name!r}")
        states.append(_verified_state(directory, entry["name"], sub, map_location))
    return states


# ------------------------------------------------------------------------------------------ listing
def checkpoint_table(directory: PathLike = DEFAULT_DIR, used_by: Mapping[str, Sequence[str]] | None = None) -> str:
    """Markdown table of the model checkpoints (not the TracIn ones) found in ``directory``.

    ``used_by`` maps names to the pages that load them (:func:`lfxai_utils.book.registry.checkpoint_users`); a
    checkpoint it does not name, or every one without it, is used by "—".
    """
    used_by = used_by or {}
    rows = ["| name | arch | arch_kwargs | data | n_train / n_val | epochs (best) | best val loss | TracIn | size | sha256 "
            "| used by |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for js in sorted(Path(directory).glob("*.json")):
        try:
            m = json.loads(js.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(m, dict) or m.get("format") != FORMAT or m.get("role") != "model":
            continue
        t = m.get("training") or {}
        kw = ", ".join(f"{k}={v}" for k, v in m["arch_kwargs"].items())
        loss = t.get("best_val_loss")
        rows.append(
            f"| `{m['name']}` | {m['arch']} | {kw} | {m.get('data', {}).get('dataset') or m.get('data', {}).get('name', '')} "
            f"| {t.get('n_train', '')} / {t.get('n_val', '')} | {t.get('epochs_run', '')} ({t.get('best_epoch', '')}) "
            f"| {'' if loss is None else f'{loss:.5g}'} | {len(m.get('tracin_checkpoints', []))} "
            f"| {m['file']['size'] / 1e6:.2f} MB | `{m['file']['sha256'][:12]}` "
            f"| {', '.join(used_by.get(m['name'], [])) or '—'} |")
    return "\n".join(rows) + "\n"


def update_readme(directory: PathLike = DEFAULT_DIR, readme: PathLike | None = None,
                  used_by: Mapping[str, Sequence[str]] | None = None) -> Path:
    """Rewrite the table between the ``checkpoint-table`` markers of ``<directory>/README.md`` (``used_by``: as
    :func:`checkpoint_table`)."""
    path = Path(readme) if readme is not None else Path(directory) / "README.md"
    text = path.read_text()
    if _TABLE_START not in text or _TABLE_END not in text:
        raise ValueError(f"{path} lacks the {_TABLE_START} / {_TABLE_END} markers")
    head, rest = text.split(_TABLE_START, 1)
    _, tail = rest.split(_TABLE_END, 1)
    with atomic_write(path, "w") as f:
        f.write(f"{head}{_TABLE_START}\n{checkpoint_table(directory, used_by)}{_TABLE_END}{tail}")
    return path


if __name__ == "__main__":  # python -m lfxai_utils.checkpoints [directory]
    # the command line only: which pages use each checkpoint is the book's knowledge (the library never asks it)
    from .book.registry import checkpoint_users

    print(update_readme(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_DIR, used_by=checkpoint_users()))
