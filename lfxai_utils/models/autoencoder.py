"""Generic deterministic autoencoder and classifier wrappers shared by the MNIST and CIFAR families."""
from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .pretext import make_pretext


class AutoEncoder(nn.Module):
    """Encoder + decoder trained on a pretext task (ORIG ``AutoEncoderMnist``; FACT ``AutoEncoderCIFAR``).

    Parameters
    ----------
    encoder, decoder
        ``x -> z`` and ``z -> x_hat`` modules.  ``model.encoder`` is the black box that is explained.
    pretext
        a perturbation module or its name (see :func:`~lfxai_utils.models.make_pretext`).

    Notes
    -----
    * ``forward(x)`` perturbs ``x`` only in training mode (as ORIG); in eval mode it is the plain
      reconstruction ``decoder(encoder(x))`` used by the explanations.
    * ``loss(batch)`` *always* perturbs (train and eval), so the validation loss is the pretext loss,
      as ORIG ``test_epoch`` which applies the perturbation explicitly: ``MSE(decoder(encoder(pert(x))), x)``.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, pretext: nn.Module | str = "reconstruction") -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.pretext = make_pretext(pretext) if isinstance(pretext, str) else pretext

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            x = self.pretext(x)
        return self.decoder(self.encoder(x))

    def loss(self, batch: Sequence[Tensor]) -> Tensor:
        """Mean squared reconstruction error of the perturbed input against the clean input."""
        x = batch[0]
        return F.mse_loss(self.decoder(self.encoder(self.pretext(x))), x)


class Classifier(nn.Module):
    """Encoder followed by a linear head ``Linear(latent_dim -> n_classes)`` returning plain logits.

    Trained with cross-entropy on the labels (``batch[1]``).  This is the FACT fix of ORIG
    ``ClassifierMnist``, which applied a Softmax *before* ``CrossEntropyLoss`` (a double softmax,
    experiments.md §12.3).  ``model.encoder`` is the pre-head representation that is explained.
    """

    def __init__(self, encoder: nn.Module, latent_dim: int, n_classes: int = 10) -> None:
        super().__init__()
        self.encoder = encoder
        self.lin_output = nn.Linear(latent_dim, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.lin_output(self.encoder(x))

    def loss(self, batch: Sequence[Tensor]) -> Tensor:
        """Cross-entropy of the logits against the integer labels ``batch[1]``."""
        if len(batch) < 2:
            raise ValueError("Classifier.loss needs labelled batches (x, y); got a batch without labels")
        return F.cross_entropy(self(batch[0]), batch[1])
