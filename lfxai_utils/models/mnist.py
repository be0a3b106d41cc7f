"""MNIST encoder/decoder (ORIG ``models/images.py``; experiments.md §1.1), 1×28×28 inputs."""
from __future__ import annotations

from torch import Tensor, nn


class EncoderMnist(nn.Module):
    """1×28×28 → Conv(1→8,s2,p1) → ReLU → Conv(8→16,s2,p1) → BN → ReLU → Conv(16→32,s2,p0) → ReLU
    → flatten 288 → Linear(288→128) → ReLU → Linear(128→d).  43 428 parameters for d=4."""

    def __init__(self, latent_dim: int = 4) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder_cnn = nn.Sequential(
            nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ReLU(True),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(True),
            nn.Conv2d(16, 32, 3, stride=2, padding=0), nn.ReLU(True),
        )
        self.flatten = nn.Flatten(start_dim=1)
        self.encoder_lin = nn.Sequential(nn.Linear(3 * 3 * 32, 128), nn.ReLU(True), nn.Linear(128, latent_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder_lin(self.flatten(self.encoder_cnn(x)))


class DecoderMnist(nn.Module):
    """d → Linear(d→128) → ReLU → Linear(128→288) → ReLU → (32,3,3) → ConvT(32→16) 7×7 → BN → ReLU
    → ConvT(16→8) 14×14 → BN → ReLU → ConvT(8→1) 28×28 → sigmoid.  43 697 parameters for d=4."""

    def __init__(self, latent_dim: int = 4) -> None:
        super().__init__()
        self.decoder_lin = nn.Sequential(
            nn.Linear(latent_dim, 128), nn.ReLU(True), nn.Linear(128, 3 * 3 * 32), nn.ReLU(True)
        )
        self.unflatten = nn.Unflatten(dim=1, unflattened_size=(32, 3, 3))
        self.decoder_conv = nn.Sequential(
            nn.ConvTranspose2d(32, 16, 3, stride=2, output_padding=0), nn.BatchNorm2d(16), nn.ReLU(True),
            nn.ConvTranspose2d(16, 8, 3, stride=2, padding=1, output_padding=1), nn.BatchNorm2d(8), nn.ReLU(True),
            nn.ConvTranspose2d(8, 1, 3, stride=2, padding=1, output_padding=1),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.decoder_conv(self.unflatten(self.decoder_lin(z))).sigmoid()
