"""Feature visualisation by activation maximisation (FACT's "Lucid" extension; experiments.md §7a).

FACT used ``torch-lucent`` (which needs a patch to its ``render.py``). This module is the short loop the spec
recommends instead, with lucent's defaults:

* the image is parameterised in the Fourier domain (:func:`fft_image`: lucent's ``fft_image``, a random
  half-spectrum with standard deviation 0.01, each frequency scaled by ``1 / max(|f|, 1/max(H, W))`` so that low
  frequencies dominate, an orthonormal inverse real FFT, divided by lucent's "magic" 4) and squashed into [0, 1]
  by a sigmoid (``param.image(W, channels=C)``: no colour decorrelation because the channels are given);
  :func:`pixel_image` is the plain alternative;
* Adam with learning rate 0.05 for 1,000 steps, no transforms (FACT: ``transforms=[]``), no resizing;
* the objective of unit ``j`` is its activation (FACT: ``objectives.channel("mu_logvar_gen", 2j)``, which is μ_j
  of a Burgess encoder).

Several units are optimised at once, one image per unit: the objective is the sum of each image's own unit, and
as Adam is element-wise and the encoder treats examples independently, this is the same as optimising each unit
alone. Each unit's initial spectrum is drawn from its own generator (seeded by ``seed`` and the unit index), so
a unit's image does not depend on which other units share the batch.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

__all__ = ["PARAMETERISATIONS", "VisualisationResult", "fft_image", "leaky_encoder", "maximise_units",
           "pixel_image", "rfft2d_freqs"]

PARAMETERISATIONS: tuple[str, ...] = ("fft", "pixel")
#: lucent divides the inverse FFT by this constant ("increasing this seems to reduce saturation").
FFT_MAGIC = 4.0

ImageFn = Callable[[], Tensor]


def rfft2d_freqs(h: int, w: int) -> np.ndarray:
    """Frequency magnitude ``sqrt(fx² + fy²)`` of every entry of a real 2-D FFT of an ``h × w`` image
    (shape ``(h, w // 2 + 1)``, or ``w // 2 + 2`` columns for odd ``w``, as lucent)."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[: w // 2 + (2 if w % 2 else 1)]
    return np.sqrt(fx * fx + fy * fy)


def _randn(shape: Sequence[int], generators: Sequence[torch.Generator]) -> Tensor:
    """One independent N(0, 1) block per leading index, each from its own generator."""
    return torch.stack([torch.randn(tuple(shape[1:]), generator=g) for g in generators])


def fft_image(shape: Sequence[int], *, sd: float = 0.01, decay_power: float = 1.0,
              generators: Sequence[torch.Generator] | None = None,
              device: str | torch.device = "cpu") -> tuple[Tensor, ImageFn]:
    """lucent's spectral image parameterisation (before the sigmoid).

    Parameters
    ----------
    shape
        ``(K, C, H, W)``.
    sd
        standard deviation of the initial spectrum (real and imaginary parts).
    decay_power
        frequency ``f`` is scaled by ``1 / max(f, 1 / max(H, W)) ** decay_power``.
    generators
        one per image (``K``) for a reproducible initialisation; default the global RNG.

    Returns
    -------
    spectrum : Tensor
        the learnable tensor ``(K, C, H, W//2+1, 2)``.
    image_fn : callable
        returns the real image ``(K, C, H, W)`` = ``irfftn(scale · spectrum, norm="ortho") / 4``.
    """
    k, c, h, w = (int(v) for v in shape)
    freqs = rfft2d_freqs(h, w)
    size = (k, c) + freqs.shape + (2,)
    gens = list(generators) if generators is not None else None
    if gens is not None and len(gens) != k:
        raise ValueError(f"need one generator per image: {k} images, {len(gens)} generators")
    init = _randn(size, gens) if gens is not None else torch.randn(size)
    spectrum = (init * sd).to(device).requires_grad_(True)
    scale = torch.tensor(1.0 / np.maximum(freqs, 1.0 / max(w, h)) ** decay_power, dtype=torch.float32,
                         device=device)[None, None, ..., None]

    def image() -> Tensor:
        z = torch.view_as_complex((scale * spectrum).contiguous())
        return torch.fft.irfftn(z, s=(h, w), norm="ortho")[:k, :c, :h, :w] / FFT_MAGIC

    return spectrum, image


def pixel_image(shape: Sequence[int], *, sd: float = 0.01, generators: Sequence[torch.Generator] | None = None,
                device: str | torch.device = "cpu") -> tuple[Tensor, ImageFn]:
    """Plain pixel parameterisation (before the sigmoid): a learnable ``(K, C, H, W)`` tensor, N(0, sd²) at start."""
    k = int(shape[0])
    gens = list(generators) if generators is not None else None
    if gens is not None and len(gens) != k:
        raise ValueError(f"need one generator per image: {k} images, {len(gens)} generators")
    init = _randn(tuple(shape), gens) if gens is not None else torch.randn(tuple(shape))
    pixels = (init * sd).to(device).requires_grad_(True)
    return pixels, lambda: pixels


def leaky_encoder(encoder: nn.Module) -> nn.Module:
    """A copy of a Burgess encoder with LeakyReLU(0.1) instead of ReLU and the same weights (FACT, for
    visualisation only: it keeps gradients alive where ReLUs are off). The original is not touched.

    The copy is rebuilt as ``type(encoder)(img_size, latent_dim, leaky=True)`` and loads the original's state dict;
    its parameters do not require gradients and it is in eval mode.
    """
    if not hasattr(encoder, "leaky") or not hasattr(encoder, "img_size") or not hasattr(encoder, "latent_dim"):
        raise TypeError(f"{type(encoder).__name__} has no 'leaky' switch; leaky_encoder needs an EncoderBurgess "
                        "(lfxai_utils.models.EncoderBurgess)")
    new = type(encoder)(encoder.img_size, encoder.latent_dim, leaky=True)
    new.load_state_dict(copy.deepcopy(encoder.state_dict()))
    new.to(next(encoder.parameters()).device)
    new.requires_grad_(False)
    return new.eval()


@dataclass
class VisualisationResult:
    """Outcome of :func:`maximise_units`.

    images: ``(K, C, H, W)`` in [0, 1], image ``k`` maximises unit ``units[k]``.
    history: ``(n_steps + 1, K)``: unit ``units[k]``'s activation on its image before each step and at the end.
    """

    units: tuple[int, ...]
    images: Tensor
    history: Tensor

    @property
    def final(self) -> Tensor:
        """Activation of each unit on its final image, ``(K,)``."""
        return self.history[-1]


def maximise_units(encoder: nn.Module, units: Sequence[int], image_shape: Sequence[int], *, n_steps: int = 1000,
                   lr: float = 0.05, parameterisation: str = "fft", sd: float = 0.01, seed: int = 0,
                   device: str | torch.device | None = None, progress: bool = False,
                   desc: str = "feature visualisation") -> VisualisationResult:
    """Find, for every unit ``j`` in ``units``, an image in [0, 1] that maximises ``encoder(x)[:, j]``.

    Parameters
    ----------
    encoder
        maps ``(K, C, H, W)`` to ``(K, d)`` (flattened). Used as given (swap in a LeakyReLU copy with
        :func:`leaky_encoder` first, as FACT); it is not modified and no gradient is taken for its parameters.
    units
        the units to visualise (indices into the ``d`` outputs), one image each.
    image_shape
        ``(C, H, W)``.
    n_steps, lr
        Adam steps and learning rate (FACT/lucent: 1,000 and 0.05).
    parameterisation
        ``"fft"`` (lucent's spectral parameterisation, default) or ``"pixel"``; then a sigmoid.
    sd
        standard deviation of the initial parameters.
    seed
        unit ``j``'s initialisation comes from ``torch.Generator().manual_seed(seed * 1_000_003 + j)``.
    device
        default the encoder's device.

    Returns
    -------
    VisualisationResult
        the images and each unit's activation history.
    """
    if parameterisation not in PARAMETERISATIONS:
        raise ValueError(f"unknown parameterisation {parameterisation!r}; valid: {', '.join(PARAMETERISATIONS)}")
    units = tuple(int(u) for u in units)
    if not units:
        raise ValueError("units is empty: give at least one unit index")
    if int(n_steps) < 0 or not lr > 0:
        raise ValueError(f"need n_steps >= 0 and lr > 0; got n_steps={n_steps}, lr={lr}")
    if len(tuple(image_shape)) != 3:
        raise ValueError(f"image_shape must be (C, H, W); got {tuple(image_shape)}")
    params = list(encoder.parameters())
    dev = torch.device(device) if device is not None else (params[0].device if params else torch.device("cpu"))
    gens = [torch.Generator().manual_seed(int(seed) * 1_000_003 + u) for u in units]
    shape = (len(units), *(int(v) for v in image_shape))
    make = fft_image if parameterisation == "fft" else pixel_image
    param, image_fn = make(shape, sd=sd, generators=gens, device=dev)
    opt = torch.optim.Adam([param], lr=lr)
    rows = torch.arange(len(units), device=dev)
    cols = torch.tensor(units, device=dev)

    def activations() -> tuple[Tensor, Tensor]:
        x = torch.sigmoid(image_fn())
        out = encoder(x).flatten(1)
        if cols.max() >= out.shape[1] or cols.min() < -out.shape[1]:
            raise ValueError(f"unit index out of range: the encoder has {out.shape[1]} outputs, units={units}")
        return x, out[rows, cols]

    history = []
    training = encoder.training
    encoder.eval()
    try:
        for _ in tqdm(range(int(n_steps)), desc=desc, disable=not progress, leave=False):
            _, act = activations()
            history.append(act.detach().cpu())
            (grad,) = torch.autograd.grad(-act.sum(), [param])
            opt.zero_grad(set_to_none=True)
            param.grad = grad
            opt.step()
        with torch.no_grad():
            x, act = activations()
        history.append(act.detach().cpu())
    finally:
        encoder.train(training)
    return VisualisationResult(units, x.detach().cpu(), torch.stack(history))
