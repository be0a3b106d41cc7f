"""Label-free feature importance (paper §2.2; experiments.md §0.1).

For an encoder ``f`` and an input ``x`` the label-free importance is ``b(f, x) = a(g_x, x)`` where
``a`` is any captum attribution method and ``g_x(x~) = <f(x), f(x~)>`` is a scalar auxiliary function.

``f(x)`` is computed once (no grad, detached) and handed to captum through ``additional_forward_args``;
captum then expands it in the same order as the probe inputs for every method (block order for
Integrated Gradients, interleaved for NoiseTunnel / GradientShap), so every probe is paired with
the representation of *its own* input. ``pairing="as_published"`` instead reproduces lfxai 0.1.1's
``AuxiliaryFunction``, which stores ``f(x)`` and tiles it with ``.repeat`` (block order): correct for
Integrated Gradients and Saliency, wrong for GradientShap (experiments.md §0.1 and §12.1).

captum is imported lazily so that ``import lfxai_utils.features`` stays cheap.
"""
from __future__ import annotations

import contextlib
import inspect
import math
from typing import Callable, Iterator, Optional, Union

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, RandomSampler
from tqdm.auto import tqdm

from ._utils import resolve_device

__all__ = [
    "FEATURE_METHODS",
    "PAIRINGS",
    "label_free_attribution",
    "attribute_dataset",
    "per_unit_attribution",
    "attribute_units_dataset",
]

FEATURE_METHODS: tuple[str, ...] = ("integrated_gradients", "gradient_shap", "saliency", "random")
PAIRINGS: tuple[str, ...] = ("correct", "as_published")

Baseline = Union[Tensor, float, Callable[[Tensor], Tensor], None]
Data = Union[Tensor, Dataset, DataLoader]


# ----------------------------------------------------------------------------------------------
# auxiliary scalar functions
class _InnerProduct(nn.Module):
    """``g(x~, z) = <z, f(x~)>`` row-wise; ``z`` arrives (already expanded) as a forward argument."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        return (self.encoder(x).flatten(1) * z).sum(-1)


class _AsPublishedAuxiliary(nn.Module):
    """lfxai 0.1.1 ``AuxiliaryFunction``: stores ``f(x)`` and tiles it in *block* order (``.repeat``)."""

    def __init__(self, encoder: nn.Module, z: Tensor):
        super().__init__()
        self.encoder, self.z = encoder, z

    def forward(self, x: Tensor) -> Tensor:
        out = self.encoder(x).flatten(1)
        if len(out) % len(self.z):
            raise ValueError(f"probe batch {len(out)} is not a multiple of the explained batch {len(self.z)}")
        return (self.z.repeat(len(out) // len(self.z), 1) * out).sum(-1)


class _Flat(nn.Module):
    """``x -> f(x).flatten(1)`` so that ``target=j`` selects latent unit ``j``."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder(x).flatten(1)


# ----------------------------------------------------------------------------------------------
# helpers
def _method_class(method):
    """captum class for a method name (``None`` for "random") or a captum Attribution subclass."""
    from captum.attr import Attribution, GradientShap, IntegratedGradients, Saliency

    if isinstance(method, str):
        table = {"integrated_gradients": IntegratedGradients, "gradient_shap": GradientShap, "saliency": Saliency}
        if method == "random":
            return None
        if method not in table:
            raise ValueError(f"unknown feature method {method!r}; valid names: {FEATURE_METHODS} "
                             "(or pass a captum.attr.Attribution subclass)")
        return table[method]
    if isinstance(method, type) and issubclass(method, Attribution):
        return method
    raise ValueError(f"method must be one of {FEATURE_METHODS} or a captum.attr.Attribution subclass, got {method!r}")


def _batch_baseline(baseline: Baseline, inputs: Tensor) -> Tensor:
    """Baseline as a tensor of shape ``(1 or B, *inputs.shape[1:])`` on the inputs' device.

    ``None`` -> zeros; a callable is applied to the batch (e.g. a GaussianBlur, per-input baseline);
    a tensor or number is broadcast to one example (leading dim 1) or must match the batch size.
    """
    if baseline is None:
        return torch.zeros_like(inputs[:1])
    if callable(baseline) and not isinstance(baseline, Tensor):
        with torch.no_grad():
            b = baseline(inputs)
    else:
        b = torch.as_tensor(baseline)
    b = b.detach().to(device=inputs.device, dtype=inputs.dtype)
    if b.dim() < inputs.dim():
        b = b.reshape((1,) * (inputs.dim() - b.dim()) + tuple(b.shape))
    if b.shape[0] not in (1, len(inputs)):
        raise ValueError(f"baseline of shape {tuple(b.shape)} does not fit inputs of shape {tuple(inputs.shape)}: "
                         "give one example (leading dim 1 or none) or one baseline per input")
    try:
        return b.expand(b.shape[0], *inputs.shape[1:]).contiguous()
    except RuntimeError as err:
        raise ValueError(f"baseline of shape {tuple(b.shape)} cannot broadcast to inputs {tuple(inputs.shape)}") from err


@contextlib.contextmanager
def _gradient_mode(module: nn.Module, device: torch.device) -> Iterator[None]:
    """Keep the module's modes, except that cuDNN RNNs (which need train mode for backward) are put in
    train mode on CUDA; RNNs with inter-layer dropout get cuDNN disabled instead. Modes are restored."""
    modes = [(m, m.training) for m in module.modules()]
    rnns = [m for m in module.modules() if isinstance(m, nn.RNNBase)]
    with contextlib.ExitStack() as stack:
        if device.type == "cuda" and rnns and torch.backends.cudnn.enabled:
            if any(m.dropout > 0 and m.num_layers > 1 for m in rnns):
                stack.enter_context(torch.backends.cudnn.flags(enabled=False))
            else:
                for m in rnns:
                    m.train()
        try:
            yield
        finally:
            for m, training in modes:
                m.training = training


@contextlib.contextmanager
def _seeded(generator: Optional[torch.Generator], device: torch.device) -> Iterator[None]:
    """captum draws from the *global* torch and NumPy RNGs (GradientShap's alphas use ``np.random``).
    With a generator, seed both from one draw of it and restore the global states afterwards."""
    if generator is None:
        yield
        return
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device))
    np_state = np.random.get_state()
    cuda = list(range(torch.cuda.device_count())) if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        np.random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(np_state)


#: On the CPU, a forward pass over many more probe inputs than this (examples x IG steps) falls out of the
#: caches: 250 MNIST images x 50 IG steps in one pass take 2.2x as long as the same images in chunks of 40
#: (measured on the 2-core benchmark machine; `make bench`). ``None`` switches the automatic split off.
CPU_PROBES_PER_PASS: int | None = 2048


def _auto_chunk(cls, kw: dict, device: torch.device) -> int | None:
    """Examples per captum call when the caller gave no ``internal_batch_size``.

    Only on the CPU, and only for deterministic methods whose result for one example does not depend on the
    rest of its batch (Integrated Gradients, Saliency): splitting them by examples leaves every attribution
    unchanged. GradientShap is left whole, because a split would change its random draws.
    """
    per_example = _probes_per_example(cls, kw)
    if CPU_PROBES_PER_PASS is None or device.type != "cpu" or per_example is None:
        return None
    return max(1, CPU_PROBES_PER_PASS // per_example)


def _probes_per_example(cls, kw: dict) -> int | None:
    """Inputs captum evaluates per example for the deterministic methods (IG: ``n_steps``; Saliency: 1), else None."""
    from captum.attr import IntegratedGradients, Saliency

    if issubclass(cls, IntegratedGradients):
        return max(1, int(kw.get("n_steps", 50)))
    if issubclass(cls, Saliency):
        return 1
    return None


def _split_internal_batch(method, kw: dict, device: torch.device) -> int | None:
    """Examples per chunk (``None``: one call). An explicit ``internal_batch_size`` is passed on to methods
    that take it and turned into a number of examples for the others; without one, :func:`_auto_chunk`."""
    ibs = kw.get("internal_batch_size")
    cls = _method_class(method)
    if cls is None:
        return None
    if ibs is None:
        return _auto_chunk(cls, kw, device)
    if "internal_batch_size" in inspect.signature(cls.attribute).parameters:
        return None
    kw.pop("internal_batch_size")
    from captum.attr import GradientShap

    expansion = kw.get("n_samples", 5) if issubclass(cls, GradientShap) else 1
    return max(1, int(ibs) // int(expansion))


def _chunked(fn: Callable[[slice], Tensor], n: int, chunk: int | None) -> Tensor:
    chunk = chunk or n
    return torch.cat([fn(slice(s, s + chunk)) for s in range(0, n, chunk)])


def _attribute(forward: nn.Module, x: Tensor, method, baseline: Tensor, *, paired: bool = True, **kw) -> Tensor:
    """One captum call. ``kw`` may hold target / additional_forward_args / method options."""
    cls = _method_class(method)
    x = x.detach().requires_grad_(True)  # a leaf that needs grad: captum would otherwise warn and set it
    if method == "gradient_shap" and paired and baseline.shape[0] > 1:
        # Per-input baselines (e.g. a blur of each image): captum's GradientShap would treat them as a
        # distribution and draw them at random; pair each input with its own baseline instead.
        from captum.attr import NoiseTunnel
        from captum.attr._core.gradient_shap import InputBaselineXGradient

        nt = NoiseTunnel(InputBaselineXGradient(forward))
        return nt.attribute(x, nt_type="smoothgrad", nt_samples=kw.pop("n_samples", 5),
                            stdevs=kw.pop("stdevs", 0.0), draw_baseline_from_distrib=False, baselines=baseline, **kw)
    if "baselines" in inspect.signature(cls.attribute).parameters:
        kw["baselines"] = baseline
    return cls(forward).attribute(x, **kw)


def _random(shape, generator, like: Tensor) -> Tensor:
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


# ----------------------------------------------------------------------------------------------
# public API
def label_free_attribution(
    encoder: nn.Module,
    inputs: Tensor,
    method,
    baseline: Baseline = None,
    *,
    pairing: str = "correct",
    generator: Optional[torch.Generator] = None,
    **method_kwargs,
) -> Tensor:
    """Label-free feature importance ``a(g_x, x)`` with ``g_x(x~) = <f(x), f(x~)>``.

    Parameters
    ----------
    encoder
        the black box ``f`` (any output shape; flattened per example). Its train/eval modes are
        restored on exit (cuDNN RNNs are switched to train mode during the call on CUDA only).
    inputs
        batch ``(B, ...)`` on the encoder's device.
    method
        one of ``FEATURE_METHODS`` or a captum ``Attribution`` subclass (built as ``cls(forward_func)``).
        Defaults are captum's: IG ``n_steps=50`` Gauss-Legendre; GradientShap ``n_samples=5, stdevs=0``;
        Saliency ``abs=True`` and no baseline. "random" returns N(0, 1) scores drawn from ``generator``.
    baseline
        ``None`` (zeros), a tensor/number broadcast to one example, a tensor with one baseline
        per input, or a callable applied to the batch (per-input baseline, e.g. a GaussianBlur). For
        "gradient_shap" a per-input baseline is paired with its own input; a single baseline is captum's
        one-point baseline distribution. Pass ``captum.attr.GradientShap`` itself for captum's semantics.
    pairing
        ``"correct"`` (``f(x)`` through ``additional_forward_args``) or ``"as_published"``
        (lfxai 0.1.1: stored ``f(x)`` tiled in block order; wrong for GradientShap on purpose).
    generator
        makes random methods reproducible. captum samples from the global torch/NumPy RNGs;
        they are seeded from one draw of ``generator`` and restored afterwards.
    **method_kwargs
        passed to ``attribute`` (e.g. ``n_steps``, ``n_samples``, ``stdevs``, ``abs``).
        ``internal_batch_size`` is passed to methods that take it; for the others the batch is split
        into chunks of ``internal_batch_size // n_samples`` (GradientShap) examples. Without it, on the
        CPU, IG and Saliency split the batch into chunks of ``CPU_PROBES_PER_PASS`` probes (same result, faster).

    Returns
    -------
    Tensor
        of the shape of ``inputs``, detached.
    """
    if pairing not in PAIRINGS:
        raise ValueError(f"unknown pairing {pairing!r}; valid values: {PAIRINGS}")
    if _method_class(method) is None:
        return _random(inputs.shape, generator, inputs)
    kw = dict(method_kwargs)
    chunk = _split_internal_batch(method, kw, inputs.device)
    with _gradient_mode(encoder, inputs.device), _seeded(generator, inputs.device):
        b = _batch_baseline(baseline, inputs)
        with torch.no_grad():
            z = encoder(inputs).flatten(1).detach()

        def one(sl: slice) -> Tensor:
            bb = b if len(b) == 1 else b[sl]
            if pairing == "correct":
                return _attribute(_InnerProduct(encoder), inputs[sl], method, bb,
                                  additional_forward_args=(z[sl],), **dict(kw))
            return _attribute(_AsPublishedAuxiliary(encoder, z[sl]), inputs[sl], method, bb, paired=False, **dict(kw))

        return _chunked(one, len(inputs), chunk).detach()


def per_unit_attribution(
    encoder: nn.Module,
    inputs: Tensor,
    method,
    baseline: Baseline = None,
    *,
    absolute: bool = True,
    reduce_channels: bool = True,
    generator: Optional[torch.Generator] = None,
    **method_kwargs,
) -> Tensor:
    """Per-unit decomposition ``|z_j(x) * a(f_j, x)|`` (ORIG ``attribute_individual_dim``).

    All ``d`` units are attributed in one captum call: the batch is repeated ``d`` times (unit-major
    blocks) with a tensor ``target`` selecting unit ``j`` in block ``j``; captum expands the target
    consistently with its probes. Use ``internal_batch_size`` to bound memory.

    Returns
    -------
    Tensor
        images ``(N, C, H, W)`` -> ``(N, d, H, W)`` (signed channel mean first, as FACT, when
        ``reduce_channels``; else ``(N, d, C, H, W)``); series ``(N, T, F)`` -> ``(N, d, T)`` (else
        ``(N, d, T, F)``); vectors ``(N, D)`` -> ``(N, d, D)``. ``absolute=False`` keeps the sign, so that
        ``sum_j`` of the unit maps equals the label-free map for methods linear in the function (IG, gradients).
    """
    kw = dict(method_kwargs)
    chunk = _split_internal_batch(method, kw, inputs.device)
    with _gradient_mode(encoder, inputs.device), _seeded(generator, inputs.device):
        with torch.no_grad():
            z = encoder(inputs).flatten(1).detach()
        B, d = z.shape
        if _method_class(method) is None:
            maps = _random((B, d) + tuple(inputs.shape[1:]), generator, inputs)
        else:
            reps = (d,) + (1,) * (inputs.dim() - 1)
            x_rep = inputs.repeat(*reps)
            target = torch.arange(d, device=inputs.device).repeat_interleave(B)
            b = _batch_baseline(baseline, inputs)
            b = b if len(b) == 1 else b.repeat(*reps)
            flat = _Flat(encoder)

            def one(sl: slice) -> Tensor:
                return _attribute(flat, x_rep[sl], method, b if len(b) == 1 else b[sl], target=target[sl], **dict(kw))

            maps = _chunked(one, len(x_rep), chunk).detach().reshape(d, B, *inputs.shape[1:]).transpose(0, 1)
    if reduce_channels and inputs.dim() >= 3:
        maps = maps.mean(dim=2 if inputs.dim() == 4 else -1)
    maps = maps * z.reshape(B, d, *([1] * (maps.dim() - 2)))
    return maps.abs() if absolute else maps


# ----------------------------------------------------------------------------------------------
# datasets
def _n_examples(data: Data) -> int:
    return len(data.dataset) if isinstance(data, DataLoader) else len(data)


def _iter_batches(data: Data, batch_size: int) -> Iterator[Tensor]:
    """Inputs of a Tensor / Dataset of (x, y) / DataLoader, in order, last partial batch kept."""
    if isinstance(data, DataLoader):
        if data.drop_last:
            raise ValueError("the DataLoader has drop_last=True and would drop the last partial batch; "
                             "pass the Dataset itself or a loader with drop_last=False")
        if isinstance(data.sampler, RandomSampler):
            raise ValueError("the DataLoader shuffles: attributions would not line up with the dataset; use shuffle=False")
        for batch in data:
            yield batch[0] if isinstance(batch, (tuple, list)) else batch
        return
    n = len(data)
    for s in range(0, n, batch_size):
        if isinstance(data, Tensor):
            yield data[s:s + batch_size]
        elif callable(getattr(data, "tensors", None)):  # lfxai_utils.data.ArrayDataset fast path
            yield data.tensors(torch.arange(s, min(s + batch_size, n)))[0]
        else:
            items = [data[i] for i in range(s, min(s + batch_size, n))]
            yield torch.stack([it[0] if isinstance(it, (tuple, list)) else it for it in items])


def _n_batches(data: Data, batch_size: int) -> int:
    return len(data) if isinstance(data, DataLoader) else math.ceil(len(data) / batch_size)


@contextlib.contextmanager
def _module_on(module: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """Move ``module`` to ``device`` for the block and back to where it was."""
    tensors = list(module.parameters()) + list(module.buffers())
    home = tensors[0].device if tensors else None
    module.to(device)
    try:
        yield module
    finally:
        if home is not None:
            module.to(home)


def _map_batches(fn: Callable[[Tensor, Baseline], Tensor], encoder: nn.Module, data: Data, baseline: Baseline,
                 batch_size: int, device, progress: bool, desc: str) -> Tensor:
    dev = resolve_device(device)
    n = _n_examples(data)
    if n == 0:
        raise ValueError("no examples to attribute")
    outs, offset = [], 0
    with _module_on(encoder, dev):
        for x in tqdm(_iter_batches(data, batch_size), total=_n_batches(data, batch_size), desc=desc,
                      disable=not progress):
            x = x.to(dev, non_blocking=True)
            b = baseline
            if isinstance(b, Tensor):
                if n > 1 and b.dim() == x.dim() and b.shape[0] == n:  # one baseline per dataset example
                    b = b[offset:offset + len(x)]
                b = b.to(dev)
            outs.append(fn(x, b).cpu())
            offset += len(x)
    return torch.cat(outs)


def attribute_dataset(
    encoder: nn.Module,
    data: Data,
    method,
    baseline: Baseline = None,
    *,
    batch_size: int = 256,
    device="auto",
    progress: bool = True,
    **kw,
) -> Tensor:
    """:func:`label_free_attribution` over a Tensor, a Dataset of ``(x, y)`` or an unshuffled DataLoader.

    Batches keep the data order and the last partial batch. The encoder is moved to ``device`` for the
    call and moved back. A baseline tensor with one row per dataset example is sliced per batch.
    ``kw`` goes to :func:`label_free_attribution` (``pairing``, ``generator``, method options).

    Returns
    -------
    Tensor
        on the CPU, ``(N, ...)`` of the shape of the inputs.
    """
    return _map_batches(lambda x, b: label_free_attribution(encoder, x, method, b, **kw), encoder, data, baseline,
                        batch_size, device, progress, f"label-free {method if isinstance(method, str) else method.__name__}")


def attribute_units_dataset(
    encoder: nn.Module,
    data: Data,
    method,
    baseline: Baseline = None,
    *,
    batch_size: int = 256,
    device="auto",
    progress: bool = True,
    **kw,
) -> Tensor:
    """:func:`per_unit_attribution` over a dataset (same batching rules as :func:`attribute_dataset`)."""
    return _map_batches(lambda x, b: per_unit_attribution(encoder, x, method, b, **kw), encoder, data, baseline,
                        batch_size, device, progress, "per-unit attribution")
