"""One training loop for every model of :mod:`lfxai_utils.models` (experiments.md §1.3).

:func:`fit` trains any module with a ``loss(batch) -> scalar`` method on ``(x, y)`` batches: Adam
(lr 1e-3, weight decay 1e-5), seeded shuffling, validation on a held-out part of the *training* data
(ORIG validated on the test set), early stopping with best-model restore, optional TracIn checkpoints
(ORIG ``checkpoint_interval``), and a clear error when the loss diverges.
"""
from __future__ import annotations

import copy
import json
import math
import random
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence, Union

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset, TensorDataset
from torch.utils.data.dataloader import default_collate
from tqdm.auto import tqdm

from ._utils import atomic_torch_save, resolve_device, seed_everything

Data = Union[Dataset, Sequence[Tensor]]
OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer, int], Any]
OPTIMIZERS: tuple[str, ...] = ("adam", "sgd_nesterov")
MEMORY_FORMATS: tuple[str, ...] = ("auto", "contiguous", "channels_last")
#: The memory format :func:`fit` trains each architecture in by default (``memory_format="auto"``), chosen from
#: ``bench/results/training_throughput.csv`` (``make bench-train``): NHWC (``channels_last``) where it made a step
#: faster on this project's 2-core CPU with 2 training processes at once, and the same losses to float tolerance.
FAST_PATH: dict[str, str] = {"mnist_ae": "channels_last", "vae": "channels_last"}
SCHEDULERS: tuple[str, ...] = ("cosine",)


class TrainingDivergedError(RuntimeError):
    """The training or validation loss became NaN or infinite."""


@dataclass
class TrainResult:
    """Outcome of :func:`fit`.  Epochs are 0-based (epoch e = after e + 1 passes over the data).

    ``tracin_checkpoints`` holds ``(epoch, state_dict)`` CPU copies taken after epochs 0, k, 2k, … when
    ``checkpoint_every=k``; ``best_val_loss`` is ``None`` when training ran without validation data.
    """

    history: list[dict[str, Any]]
    best_epoch: int
    epochs_run: int
    best_val_loss: float | None
    final_train_loss: float
    seed: int
    n_train: int
    n_val: int
    stopped_early: bool = False
    train_seconds: float = 0.0
    tracin_checkpoints: list[tuple[int, dict[str, Tensor]]] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        """JSON-serialisable summary (everything except the TracIn state dicts)."""
        return {
            "best_epoch": self.best_epoch, "epochs_run": self.epochs_run, "best_val_loss": self.best_val_loss,
            "final_train_loss": self.final_train_loss, "seed": self.seed, "n_train": self.n_train,
            "n_val": self.n_val, "stopped_early": self.stopped_early,
            "train_seconds": round(self.train_seconds, 3),
            "tracin_epochs": [e for e, _ in self.tracin_checkpoints], "history": self.history,
        }


class _Source:
    """Index-based batch access to a dataset: whole-tensor indexing where possible, per item otherwise."""

    def __init__(self, data: Data) -> None:
        self.get: Callable[[Tensor], tuple[Tensor, ...]]
        if isinstance(data, TensorDataset):
            data = data.tensors
        if isinstance(data, (tuple, list)):
            tensors = tuple(data)
            if not tensors or any(len(t) != len(tensors[0]) for t in tensors):
                raise ValueError("a tuple of tensors must be non-empty with equal first dimensions")
            self.n = len(tensors[0])
            self.get = lambda idx: tuple(t[idx] for t in tensors)
        elif callable(getattr(data, "tensors", None)):  # lfxai_utils.data.ArrayDataset fast path
            self.n = len(data)
            self.get = lambda idx: tuple(data.tensors(idx))
        elif isinstance(data, Subset) and callable(getattr(data.dataset, "tensors", None)):
            base, parent = torch.as_tensor(data.indices, dtype=torch.long), data.dataset
            self.n = len(base)
            self.get = lambda idx: tuple(parent.tensors(base[idx]))
        else:
            self.n = len(data)  # type: ignore[arg-type]
            self.get = lambda idx: tuple(default_collate([data[i] for i in idx.tolist()]))

    def batches(self, indices: Tensor, batch_size: int, device: torch.device,
                drop_last: bool = False) -> Iterable[tuple[Tensor, ...]]:
        for idx in indices.split(batch_size):
            if drop_last and len(idx) < batch_size:
                return
            yield tuple(t.to(device, non_blocking=True) if isinstance(t, Tensor) else t for t in self.get(idx))


def _mean_loss(model: nn.Module, source: _Source, indices: Tensor, batch_size: int, device: torch.device) -> float:
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in source.batches(indices, batch_size, device):
            n = len(batch[0])
            total += model.loss(batch).item() * n
            count += n
    return total / max(count, 1)


def evaluate_loss(model: nn.Module, data: Data, *, batch_size: int = 256, device: str | torch.device = "auto") -> float:
    """Example-weighted mean of ``model.loss`` over ``data`` in eval mode, without gradients."""
    dev = resolve_device(device)
    model.to(dev)
    source = _Source(data)
    return _mean_loss(model, source, torch.arange(source.n), batch_size, dev)


def _make_optimizer(model: nn.Module, optimizer: str | OptimizerFactory, lr: float,
                    weight_decay: float) -> torch.optim.Optimizer:
    if callable(optimizer):
        return optimizer(model.parameters())
    if optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    if optimizer == "sgd_nesterov":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {optimizer!r}; valid: {', '.join(OPTIMIZERS)} or a callable(params)")


def _state_copy(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def _check_fit_args(model: nn.Module, n_epochs: int, batch_size: int, val_fraction: float,
                    memory_format: str) -> str:
    """Reject what :func:`fit` cannot train; returns the memory format (``"auto"`` resolved by :data:`FAST_PATH`)."""
    if not callable(getattr(model, "loss", None)):
        raise TypeError(f"{type(model).__name__} has no loss(batch) method; build models with "
                        "lfxai_utils.models.build_model")
    if n_epochs < 1 or batch_size < 1:
        raise ValueError(f"n_epochs and batch_size must be positive; got {n_epochs}, {batch_size}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in [0, 1); got {val_fraction}")
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f"unknown memory_format {memory_format!r}; valid: {', '.join(MEMORY_FORMATS)}")
    if memory_format == "auto":
        return FAST_PATH.get(getattr(model, "arch", None), "contiguous")
    return memory_format


def _split(train_data: Data, val_data: Data | None, val_fraction: float, max_train_examples: int | None,
           gen: torch.Generator) -> tuple[_Source, _Source, Tensor, Tensor]:
    """``(train source, validation source, train indices, validation indices)``: a seeded random ``val_fraction``
    of ``train_data`` is held out unless ``val_data`` is given; at most ``max_train_examples`` are trained on."""
    train = _Source(train_data)
    perm = torch.randperm(train.n, generator=gen)
    if val_data is None:
        n_val = int(train.n * val_fraction)
        if val_fraction > 0 and not 1 <= n_val < train.n:
            raise ValueError(f"cannot hold out val_fraction={val_fraction} of {train.n} examples; "
                             "pass val_data or change val_fraction")
        val, val_idx, train_idx = train, perm[:n_val], perm[n_val:]
    else:
        val = _Source(val_data)
        val_idx, train_idx = torch.arange(val.n), perm
    if max_train_examples is not None:
        train_idx = train_idx[:max_train_examples]
    return train, val, train_idx, val_idx


def _make_scheduler(opt: torch.optim.Optimizer, scheduler: str | SchedulerFactory | None, total_steps: int,
                    lr: float):
    """The per-batch learning-rate schedule of :func:`fit` (``None``: constant)."""
    if scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps, eta_min=lr * 1e-3)
    if callable(scheduler):
        return scheduler(opt, total_steps)
    if scheduler is None:
        return None
    raise ValueError(f"unknown scheduler {scheduler!r}; valid: {', '.join(SCHEDULERS)}, None or a callable")


def _train_epoch(model: nn.Module, opt: torch.optim.Optimizer, sched, batches, epoch: int, nhwc: bool) -> float:
    """One pass over ``batches`` (train mode, one optimiser step each); the example-weighted mean training loss.
    A NaN or infinite loss raises :class:`TrainingDivergedError` naming the epoch and batch."""
    model.train()
    total, count = 0.0, 0
    for b, batch in enumerate(batches):
        if nhwc and batch[0].dim() == 4:
            batch = (batch[0].contiguous(memory_format=torch.channels_last), *batch[1:])
        loss = model.loss(batch)
        value = loss.item()
        if not math.isfinite(value):
            raise TrainingDivergedError(
                f"training loss is {value} at epoch {epoch}, batch {b} (lr={opt.param_groups[0]['lr']:g}); "
                "lower the learning rate (e.g. lr/10) or check the inputs for NaN/inf values")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        n = len(batch[0])
        total, count = total + value * n, count + n
    return total / count


RESUME_FORMAT = 1


def _rng_state(dev: torch.device) -> dict[str, Any]:
    """Every random state a training step may draw from (shuffling has its own generator), in types that
    ``torch.load(weights_only=True)`` reads back."""
    import numpy as np

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (kind, torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(gauss))}
    if dev.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(dev)
    return state


def _set_rng_state(state: dict[str, Any], dev: torch.device) -> None:
    import numpy as np

    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, cached))
    if dev.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], dev)


def _load_resume(path: Path, key: str) -> dict[str, Any] | None:
    """The training state saved at ``path`` by an interrupted :func:`fit` with the same settings (``key``), or
    ``None`` (nothing saved; or saved by other settings or unreadable: then it says so and training starts over)."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
            raise ValueError("not a training state of this version")
    except Exception as err:  # noqa: BLE001 - a damaged state file only costs the epochs it held
        print(f"note: ignoring the unreadable training state {path} ({type(err).__name__}: {err}); "
              "training from epoch 0")
        return None
    if state.get("key") != key:
        print(f"note: the training state {path} was saved with other settings; training from epoch 0")
        return None
    return state


def fit(model: nn.Module, train_data: Data, *, val_data: Data | None = None, val_fraction: float = 0.1,
        n_epochs: int, batch_size: int, lr: float = 1e-3, weight_decay: float = 1e-5, patience: int | None = 10,
        seed: int = 0, device: str | torch.device = "auto", checkpoint_every: int | None = None,
        optimizer: str | OptimizerFactory = "adam", scheduler: str | SchedulerFactory | None = None,
        drop_last: bool = False, progress: bool = True, max_train_examples: int | None = None,
        desc: str = "training", memory_format: str = "auto", resume: str | Path | None = None,
        resume_key: Any = None) -> TrainResult:
    """Train ``model`` by minimising ``model.loss(batch)`` over ``(x, y)`` batches.

    Parameters
    ----------
    model
        any module with ``loss(batch) -> scalar`` (every :mod:`lfxai_utils.models` model).
    train_data
        a Dataset of ``(x, y)`` items or a tuple of tensors.  Datasets with a ``tensors(indices)``
        method (``lfxai_utils.data.ArrayDataset``, also inside a ``Subset``) and TensorDatasets are
        indexed as whole tensors per batch instead of item by item.
    val_data
        validation data; when ``None``, a seeded random ``val_fraction`` of ``train_data`` is held
        out (ORIG validated on the test set; we do not).  ``val_fraction=0`` trains without validation:
        no early stopping, the final weights are kept.
    n_epochs, batch_size, lr, weight_decay
        as ORIG (Adam, lr 1e-3, weight decay 1e-5).
    patience
        early stopping after ``patience`` epochs without a strictly lower validation loss; the best
        weights are restored at the end.  ``None`` disables early stopping (best weights still restored).
    seed
        seeds Python/NumPy/torch (perturbations, reparameterisation), the split and the shuffling.
        Seed before building the model for a reproducible initialisation.  Same seed → identical weights on CPU.
    device
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, …
    checkpoint_every
        keep CPU copies of the weights after epochs 0, k, 2k, … (TracIn checkpoints).
    optimizer
        ``"adam"``, ``"sgd_nesterov"`` (momentum 0.9; SimCLR) or ``callable(params) -> Optimizer``
        (then ``lr``/``weight_decay`` are ignored).
    scheduler
        ``None``, ``"cosine"`` (cosine annealing per batch from ``lr`` to ``lr·1e-3``) or
        ``callable(optimizer, total_steps)``; stepped after every batch.
    drop_last
        drop the last incomplete training batch (SimCLR).
    progress
        show a tqdm epoch bar with the losses.
    max_train_examples
        train on a seeded random subset of at most this many training examples.
    memory_format
        ``"contiguous"``, ``"channels_last"`` (NHWC weights and image batches; same results to float
        tolerance) or ``"auto"``: :data:`FAST_PATH` of the model's architecture (else contiguous).
    resume
        a file for the training state: written atomically after every epoch (weights, optimiser, schedule,
        early-stopping state, history, TracIn copies, every random state), and read at the start, so a training
        killed at any point continues from its last finished epoch, to the same weights bit for bit on the same
        machine and thread count. A state saved with other settings (the arguments above, the split sizes and
        ``resume_key``) or unreadable is ignored, with a note. The caller deletes the file once the model is saved.
    resume_key
        anything JSON-serialisable that must also match for a saved state to be resumed (e.g. the data files).

    Returns
    -------
    TrainResult
        with the model in eval mode on ``device``.

    Raises
    ------
    TrainingDivergedError
        when a loss is NaN or infinite (names the epoch and batch).
    """
    memory_format = _check_fit_args(model, n_epochs, batch_size, val_fraction, memory_format)
    nhwc = memory_format == "channels_last"
    dev = resolve_device(device)
    seed_everything(seed)
    split_gen = torch.Generator().manual_seed(seed)
    shuffle_gen = torch.Generator().manual_seed(seed + 1_000_003)
    train, val, train_idx, val_idx = _split(train_data, val_data, val_fraction, max_train_examples, split_gen)
    n_train, n_val = len(train_idx), len(val_idx)
    n_batches = n_train // batch_size if drop_last else math.ceil(n_train / batch_size)
    if n_batches == 0:
        raise ValueError(f"no training batch: {n_train} examples, batch_size={batch_size}, drop_last={drop_last}")

    model.to(dev)
    if nhwc:
        model.to(memory_format=torch.channels_last)
    opt = _make_optimizer(model, optimizer, lr, weight_decay)
    sched = _make_scheduler(opt, scheduler, n_epochs * n_batches, lr)

    history: list[dict[str, Any]] = []
    tracin: list[tuple[int, dict[str, Tensor]]] = []
    best_val, best_epoch, best_state, wait, stopped = math.inf, 0, None, 0, False
    start, earlier = time.perf_counter(), 0.0
    key = json.dumps({"n_epochs": n_epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
                      "patience": patience, "seed": seed, "device": dev.type, "checkpoint_every": checkpoint_every,
                      "optimizer": optimizer if isinstance(optimizer, str) else getattr(optimizer, "__qualname__",
                                                                                          repr(optimizer)),
                      "scheduler": scheduler if scheduler is None or isinstance(scheduler, str)
                      else getattr(scheduler, "__qualname__", repr(scheduler)),
                      "drop_last": drop_last, "memory_format": memory_format, "n_train": n_train, "n_val": n_val,
                      "model": type(model).__qualname__, "key": resume_key}, sort_keys=True, default=str)
    saved = _load_resume(Path(resume), key) if resume is not None else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        if sched is not None:
            sched.load_state_dict(saved["scheduler"])
        history, tracin = saved["history"], [tuple(t) for t in saved["tracin"]]
        best_val, best_epoch, best_state = saved["best_val"], saved["best_epoch"], saved["best_state"]
        wait, stopped, earlier = saved["wait"], saved["stopped"], saved["seconds"]
        shuffle_gen.set_state(saved["shuffle_gen"])
        _set_rng_state(saved["rng"], dev)
        if progress:
            print(f"{desc}: resuming after epoch {len(history) - 1} from {resume}")
    first = len(history)
    bar = tqdm(range(first, n_epochs if not stopped else first), desc=desc, disable=not progress, leave=False,
               initial=first, total=n_epochs)
    for epoch in bar:
        t0 = time.perf_counter()
        order = train_idx[torch.randperm(n_train, generator=shuffle_gen)]
        train_loss = _train_epoch(model, opt, sched, train.batches(order, batch_size, dev, drop_last), epoch, nhwc)
        val_loss = _mean_loss(model, val, val_idx, batch_size, dev) if n_val else None
        if val_loss is not None and not math.isfinite(val_loss):
            raise TrainingDivergedError(f"validation loss is {val_loss} at epoch {epoch}; lower the learning rate")
        history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                        "seconds": round(time.perf_counter() - t0, 3)})
        bar.set_postfix(train=f"{train_loss:.4g}", val="-" if val_loss is None else f"{val_loss:.4g}")
        if val_loss is None:
            best_epoch = epoch
        elif val_loss < best_val:
            best_val, best_epoch, wait = val_loss, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            wait += 1
        if checkpoint_every and epoch % checkpoint_every == 0:
            tracin.append((epoch, _state_copy(model)))
        stopped = patience is not None and bool(n_val) and wait >= patience
        if resume is not None:
            atomic_torch_save({
                "format": RESUME_FORMAT, "key": key, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict() if sched is not None else None, "history": history,
                "tracin": tracin, "best_val": best_val, "best_epoch": best_epoch, "best_state": best_state,
                "wait": wait, "stopped": stopped, "seconds": earlier + time.perf_counter() - start,
                "shuffle_gen": shuffle_gen.get_state(), "rng": _rng_state(dev)}, resume)
        if stopped:
            break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    if nhwc:   # hand back a model in the default layout (saved and explained like any other)
        model.to(memory_format=torch.contiguous_format)
    model.eval()
    return TrainResult(
        history=history, best_epoch=best_epoch, epochs_run=len(history),
        best_val_loss=best_val if n_val else None, final_train_loss=history[-1]["train_loss"], seed=seed,
        n_train=n_train, n_val=n_val, stopped_early=stopped, train_seconds=earlier + time.perf_counter() - start,
        tracin_checkpoints=tracin)
