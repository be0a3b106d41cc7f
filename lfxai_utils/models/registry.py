"""Name → architecture registry, so that a checkpoint manifest (``arch`` + ``arch_kwargs``) can rebuild
its model with :func:`build_model`."""
from __future__ import annotations

import inspect
import json
from typing import Any, Callable, Sequence

from torch import nn

from .autoencoder import AutoEncoder, Classifier
from .cifar import DecoderCIFAR, EncoderCIFAR
from .ecg import RecurrentAutoencoder
from .mnist import DecoderMnist, EncoderMnist
from .pretext import make_pretext
from .vae import VAE, VAE_LOSSES, BetaTCVAELoss, BetaVAELoss, DecoderBurgess, EncoderBurgess


def _mnist_ae(latent_dim: int = 4, pretext: str = "denoising", noise_level: float = 0.3,
              mask_proportion: float = 0.2) -> nn.Module:
    pert = make_pretext(pretext, noise_level=noise_level, mask_proportion=mask_proportion)
    return AutoEncoder(EncoderMnist(latent_dim), DecoderMnist(latent_dim), pert)


def _mnist_classifier(latent_dim: int = 4, n_classes: int = 10) -> nn.Module:
    return Classifier(EncoderMnist(latent_dim), latent_dim, n_classes)


def _cifar_ae(latent_dim: int = 16, pretext: str = "denoising", noise_level: float = 0.3,
              mask_proportion: float = 0.2) -> nn.Module:
    pert = make_pretext(pretext, noise_level=noise_level, mask_proportion=mask_proportion)
    return AutoEncoder(EncoderCIFAR(latent_dim), DecoderCIFAR(latent_dim), pert)


def _cifar_classifier(latent_dim: int = 16, n_classes: int = 10) -> nn.Module:
    return Classifier(EncoderCIFAR(latent_dim), latent_dim, n_classes)


def _ecg_ae(seq_len: int = 140, n_features: int = 1, latent_dim: int = 64) -> nn.Module:
    return RecurrentAutoencoder(seq_len, n_features, latent_dim)


def _vae(img_size: Sequence[int] = (1, 32, 32), latent_dim: int = 3, loss: str = "beta", beta: float = 1.0,
         rec_dist: str = "bernoulli", n_data: int = 60000, alpha: float = 1.0, gamma: float = 1.0,
         is_mss: bool = False) -> nn.Module:
    if loss == "beta":
        loss_f: nn.Module = BetaVAELoss(beta, rec_dist)
    elif loss == "tc":
        loss_f = BetaTCVAELoss(n_data, alpha=alpha, beta=beta, gamma=gamma, is_mss=is_mss, rec_dist=rec_dist)
    else:
        raise ValueError(f"unknown VAE loss {loss!r}; valid: {', '.join(VAE_LOSSES)}")
    return VAE(EncoderBurgess(img_size, latent_dim), DecoderBurgess(img_size, latent_dim), loss_f)


def _simclr(latent_dim: int = 512, projection_dim: int = 128, temperature: float = 0.5,
            backbone: str = "resnet18") -> nn.Module:
    from .simclr import SimCLR

    return SimCLR(latent_dim, projection_dim, temperature, backbone)


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "mnist_ae": _mnist_ae,                  # EncoderMnist/DecoderMnist + pretext, MSE
    "mnist_classifier": _mnist_classifier,  # EncoderMnist + Linear head, cross-entropy
    "cifar_ae": _cifar_ae,                  # FACT EncoderCIFAR/DecoderCIFAR + pretext, MSE
    "cifar_classifier": _cifar_classifier,  # EncoderCIFAR + Linear head
    "ecg_ae": _ecg_ae,                      # LSTM autoencoder, L1
    "vae": _vae,                            # Burgess VAE, β-VAE ("beta") or β-TCVAE ("tc") loss
    "simclr": _simclr,                      # ResNet-18 SimCLR, NT-Xent
}


def normalize_arch_kwargs(arch: str, **kwargs: Any) -> dict[str, Any]:
    """Complete ``kwargs`` with the builder's defaults and make them JSON-plain (tuples → lists).

    Raises ``ValueError`` for an unknown architecture or keyword (listing the valid ones).
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; valid architectures: {', '.join(ARCHITECTURES)}")
    sig = inspect.signature(ARCHITECTURES[arch])
    unknown = sorted(set(kwargs) - set(sig.parameters))
    if unknown:
        raise ValueError(f"unknown argument(s) {unknown} for architecture {arch!r}; "
                         f"valid: {', '.join(sig.parameters)}")
    bound = sig.bind(**kwargs)
    bound.apply_defaults()
    args = dict(bound.arguments)
    for key in ("pretext", "loss", "rec_dist"):
        if isinstance(args.get(key), str):
            args[key] = args[key].lower()
    try:
        return json.loads(json.dumps(args))
    except TypeError as err:
        raise ValueError(f"arguments of {arch!r} must be JSON-serialisable: {err}") from None


def build_model(arch: str, **kwargs: Any) -> nn.Module:
    """Build architecture ``arch`` (see ``ARCHITECTURES``) with keyword arguments ``kwargs``.

    The model records ``model.arch`` and ``model.arch_kwargs`` (every argument, defaults included,
    JSON-serialisable) so that :mod:`lfxai_utils.checkpoints` can rebuild it.

    >>> m = build_model("vae", img_size=(1, 32, 32), latent_dim=3, loss="tc", beta=5, n_data=60000)  # doctest: +SKIP
    """
    args = normalize_arch_kwargs(arch, **kwargs)
    model = ARCHITECTURES[arch](**args)
    model.arch = arch
    model.arch_kwargs = args
    return model
