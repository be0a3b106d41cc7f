"""FACT small CIFAR autoencoder (``cifar100_models.py``; experiments.md §1.1, §8), 3×32×32 inputs."""
from __future__ import annotations

from torch import Tensor, nn


class EncoderCIFAR(nn.Module):
    """3×32×32 → 3 × [Conv(k3,p1) → LayerNorm → ReLU → MaxPool2] (32, 64, 128 channels) → Conv(128→128)
    → ReLU → flatten 2048 → Linear(2048→128) → ReLU → Linear(128→d).  619 856 parameters for d=16."""

    def __init__(self, latent_dim: int = 16) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder_cnn = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.LayerNorm([32, 32, 32]), nn.ReLU(True), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.LayerNorm([64, 16, 16]), nn.ReLU(True), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.LayerNorm([128, 8, 8]), nn.ReLU(True), nn.MaxPool2d(2),
            nn.Conv2d(128, 128, 3, padding=1), nn.ReLU(True),
        )
        self.flatten = nn.Flatten(start_dim=1)
        self.encoder_lin = nn.Sequential(nn.Linear(128 * 4 * 4, 128), nn.ReLU(True), nn.Linear(128, latent_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder_lin(self.flatten(self.encoder_cnn(x)))


class DecoderCIFAR(nn.Module):
    """d → Linear(d→128) → ReLU → Linear(128→2048) → ReLU → (128,4,4) → ConvT(128→64) 8×8 → LN → ReLU
    → ConvT(64→32) 16×16 → LN → ReLU → ConvT(32→3) 32×32 → sigmoid.  384 067 parameters for d=16."""

    def __init__(self, latent_dim: int = 16) -> None:
        super().__init__()
        self.decoder_lin = nn.Sequential(
            nn.Linear(latent_dim, 128), nn.ReLU(True), nn.Linear(128, 128 * 4 * 4), nn.ReLU(True)
        )
        self.unflatten = nn.Unflatten(dim=1, unflattened_size=(128, 4, 4))
        up = dict(kernel_size=3, stride=2, padding=1, output_padding=1)
        self.decoder_conv = nn.Sequential(
            nn.ConvTranspose2d(128, 64, **up), nn.LayerNorm([64, 8, 8]), nn.ReLU(True),
            nn.ConvTranspose2d(64, 32, **up), nn.LayerNorm([32, 16, 16]), nn.ReLU(True),
            nn.ConvTranspose2d(32, 3, **up),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.decoder_conv(self.unflatten(self.decoder_lin(z))).sigmoid()
