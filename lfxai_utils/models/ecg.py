"""LSTM autoencoder for ECG5000 series (ORIG ``models/time_series.py``; experiments.md §1.1)."""
from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn


class EncoderLSTM(nn.Module):
    """(N, T, n_features) → LSTM(n_features→2d) → LSTM(2d→d) → final hidden state of the 2nd LSTM (N, d)."""

    def __init__(self, n_features: int = 1, latent_dim: int = 64) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.rnn1 = nn.LSTM(n_features, 2 * latent_dim, batch_first=True)
        self.rnn2 = nn.LSTM(2 * latent_dim, latent_dim, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        x, _ = self.rnn1(x)
        _, (h_n, _) = self.rnn2(x)
        return h_n[-1]


class DecoderLSTM(nn.Module):
    """(N, d) → repeat ``seq_len`` times → LSTM(d→d) → LSTM(d→2d) → Linear(2d→n_features) per step."""

    def __init__(self, seq_len: int = 140, n_features: int = 1, latent_dim: int = 64) -> None:
        super().__init__()
        self.seq_len = seq_len
        self.rnn1 = nn.LSTM(latent_dim, latent_dim, batch_first=True)
        self.rnn2 = nn.LSTM(latent_dim, 2 * latent_dim, batch_first=True)
        self.output_layer = nn.Linear(2 * latent_dim, n_features)

    def forward(self, z: Tensor) -> Tensor:
        x = z.unsqueeze(1).expand(-1, self.seq_len, -1)
        x, _ = self.rnn1(x)
        x, _ = self.rnn2(x)
        return self.output_layer(x)


class RecurrentAutoencoder(nn.Module):
    """LSTM reconstruction autoencoder trained with the mean L1 loss; 249 473 parameters for d=64.

    ``model.encoder`` maps a batch of series ``(N, seq_len, n_features)`` to ``(N, latent_dim)``.
    Keep the model in train mode when back-propagating through it on cuDNN (there is no dropout, so
    train and eval mode compute the same function).
    """

    def __init__(self, seq_len: int = 140, n_features: int = 1, latent_dim: int = 64) -> None:
        super().__init__()
        self.encoder = EncoderLSTM(n_features, latent_dim)
        self.decoder = DecoderLSTM(seq_len, n_features, latent_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))

    def loss(self, batch: Sequence[Tensor]) -> Tensor:
        """Mean absolute reconstruction error."""
        x = batch[0]
        return F.l1_loss(self(x), x)
