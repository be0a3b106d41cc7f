"""Every architecture of the paper and its reproductions (experiments.md §1.1).

Each model has ``.encoder`` (the explained black box ``x -> latent``; for VAEs the latent mean) and a
uniform ``loss(batch) -> scalar`` taking the ``(x, y)`` tuple of a data loader.  Build models by name
with :func:`build_model` (names in ``ARCHITECTURES``).  ``SimCLR`` (torchvision) is imported lazily.
"""
from __future__ import annotations

from typing import Any

from .autoencoder import AutoEncoder, Classifier
from .cifar import DecoderCIFAR, EncoderCIFAR
from .ecg import DecoderLSTM, EncoderLSTM, RecurrentAutoencoder
from .mnist import DecoderMnist, EncoderMnist
from .pretext import PRETEXTS, Identity, Mask, RandomNoise, make_pretext
from .registry import ARCHITECTURES, build_model, normalize_arch_kwargs
from .vae import (VAE, BetaTCVAELoss, BetaVAELoss, DecoderBurgess, EncoderBurgess, kl_normal,
                  reconstruction_loss)

__all__ = [
    "ARCHITECTURES", "AutoEncoder", "BetaTCVAELoss", "BetaVAELoss", "Classifier", "DecoderBurgess",
    "DecoderCIFAR", "DecoderLSTM", "DecoderMnist", "EncoderBurgess", "EncoderCIFAR", "EncoderLSTM",
    "EncoderMnist", "Identity", "Mask", "PRETEXTS", "RandomNoise", "RecurrentAutoencoder", "SimCLR", "VAE",
    "build_model", "kl_normal", "make_pretext", "normalize_arch_kwargs", "nt_xent", "reconstruction_loss",
    "simclr_augment",
]


def __getattr__(name: str) -> Any:  # lazy SimCLR exports (torchvision import)
    if name in ("SimCLR", "nt_xent", "simclr_augment"):
        from . import simclr

        return getattr(simclr, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
