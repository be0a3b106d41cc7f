"""Pretext perturbations of the autoencoders (ORIG ``models/pretext.py``; experiments.md §1.2).

Each perturbation is a parameter-free :class:`torch.nn.Module` that *always* perturbs when called;
:class:`~lfxai_utils.models.autoencoder.AutoEncoder` decides when to call it (training forward
passes and every ``loss`` evaluation).  Randomness comes from the global torch RNG, which
:func:`lfxai_utils.training.fit` seeds.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

PRETEXTS: tuple[str, ...] = ("reconstruction", "denoising", "inpainting")


class Identity(nn.Module):
    """"Reconstruction" pretext: no perturbation."""

    def forward(self, x: Tensor) -> Tensor:
        return x


class RandomNoise(nn.Module):
    """"Denoising" pretext: ``x + noise_level * N(0, 1)`` per element, no clipping."""

    def __init__(self, noise_level: float = 0.3) -> None:
        super().__init__()
        self.noise_level = float(noise_level)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.noise_level * torch.randn_like(x)

    def extra_repr(self) -> str:
        return f"noise_level={self.noise_level}"


class Mask(nn.Module):
    """"Inpainting" pretext: every element (channels included) is replaced by ``baseline``
    independently with probability ``mask_proportion``."""

    def __init__(self, mask_proportion: float = 0.2, baseline: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= mask_proportion <= 1.0:
            raise ValueError(f"mask_proportion must lie in [0, 1], got {mask_proportion}")
        self.mask_proportion = float(mask_proportion)
        self.baseline = float(baseline)

    def forward(self, x: Tensor) -> Tensor:
        drop = torch.rand_like(x) < self.mask_proportion
        return x.masked_fill(drop, self.baseline)

    def extra_repr(self) -> str:
        return f"mask_proportion={self.mask_proportion}, baseline={self.baseline}"


def make_pretext(name: str, *, noise_level: float = 0.3, mask_proportion: float = 0.2) -> nn.Module:
    """Build a pretext perturbation by name: ``"reconstruction"``, ``"denoising"`` or ``"inpainting"``."""
    key = name.lower()
    if key == "reconstruction":
        return Identity()
    if key == "denoising":
        return RandomNoise(noise_level)
    if key == "inpainting":
        return Mask(mask_proportion)
    raise ValueError(f"unknown pretext {name!r}; valid pretexts: {', '.join(PRETEXTS)}")
