"""SimCLR with a CIFAR-style ResNet backbone (ORIG ``models/images.py`` after p3i0t/SimCLR-CIFAR10;
experiments.md §1.1, §2 "SimCLR training").

``model.encoder`` is the ResNet backbone returning the 512-d feature that is explained;
``forward(x)`` returns the 128-d projection; ``loss(batch)`` draws two augmented views per image
with :func:`simclr_augment` and applies :func:`nt_xent`.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BACKBONES: tuple[str, ...] = ("resnet18", "resnet34")

# RGB -> YIQ (NTSC) and back; a hue shift is a rotation of the (I, Q) chroma plane.
_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.5) -> Tensor:
    """Normalised-temperature cross-entropy (SimCLR) between two views ``z1``, ``z2`` of shape (B, p).

    For each of the 2B rows, the positive is the other view of the same image and the 2B − 2 other rows
    are negatives: ``mean_i −log softmax_{k≠i}(cos(z_i, z_k)/t)[pos(i)]``.  Unlike the p3i0t code used by
    ORIG, similarities are not clamped at 1e-7 (that clamp zeroes every negative cosine).
    """
    b = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = (z @ z.T) / temperature
    logits = logits.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(b, 2 * b), torch.arange(b)]).to(z.device)
    return F.cross_entropy(logits, targets)


def _rand(shape: Sequence[int], generator: torch.Generator | None, device: torch.device) -> Tensor:
    dev = generator.device if generator is not None else device
    return torch.rand(*shape, generator=generator, device=dev).to(device)


def _blend(a: Tensor, b: Tensor, ratio: Tensor) -> Tensor:
    return (ratio * a + (1 - ratio) * b).clamp(0, 1)


def _gray(x: Tensor) -> Tensor:
    return (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def simclr_augment(x: Tensor, generator: torch.Generator | None = None, *, size: int = 32,
                   scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                   flip_p: float = 0.5, jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
                   jitter_p: float = 0.8, gray_p: float = 0.2) -> Tensor:
    """Batched SimCLR view of RGB images ``x`` (B, 3, H, W) in [0, 1], with per-image random parameters.

    Approximates ``RandomResizedCrop(size) → RandomHorizontalFlip(0.5) →
    RandomApply(ColorJitter(0.4, 0.4, 0.4, 0.1), p=0.8) → RandomGrayscale(0.2)``, entirely on-device.
    Approximations against torchvision (which draws one parameter set per image on the CPU):

    * crop: area fraction and log aspect ratio are drawn once and the crop sides clamped to the image
      (torchvision retries 10 times and falls back to a centre crop); resampling is bilinear
      ``grid_sample`` without antialiasing; the flip is folded into the same affine map;
    * colour jitter: fixed order brightness → contrast → saturation → hue (torchvision permutes the order
      randomly); the hue shift is a rotation of the YIQ chroma plane by ``2π·h`` instead of an HSV shift.

    All random numbers come from ``generator`` (or the global RNG when ``None``).
    """
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"simclr_augment expects RGB batches (B, 3, H, W); got shape {tuple(x.shape)}")
    b, dev = x.shape[0], x.device
    u = _rand((b, 10), generator, dev)
    # --- random resized crop + horizontal flip, one affine map per image (normalised coordinates)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    w = torch.sqrt(area * torch.exp(log_r)).clamp(max=1.0)
    h = torch.sqrt(area / torch.exp(log_r)).clamp(max=1.0)
    cx = (2 * u[:, 2] - 1) * (1 - w)
    cy = (2 * u[:, 3] - 1) * (1 - h)
    flip = torch.where(u[:, 4] < flip_p, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=dev, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = F.affine_grid(theta, [b, 3, size, size], align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # --- colour jitter, applied with probability jitter_p
    br, co, sa, hu = jitter
    v = _rand((b, 4), generator, dev).view(b, 4, 1, 1, 1)
    bf, cf, sf = 1 - br + 2 * br * v[:, 0], 1 - co + 2 * co * v[:, 1], 1 - sa + 2 * sa * v[:, 2]
    hf = (2 * v[:, 3].view(b) - 1) * hu
    j = out.mul(bf).clamp(0, 1)
    j = _blend(j, _gray(j).mean((2, 3), keepdim=True), cf)
    j = _blend(j, _gray(j), sf)
    ang = 2 * math.pi * hf
    cos, sin = torch.cos(ang), torch.sin(ang)
    rot = torch.zeros(b, 3, 3, device=dev, dtype=x.dtype)
    rot[:, 0, 0], rot[:, 1, 1], rot[:, 2, 2] = 1, cos, cos
    rot[:, 1, 2], rot[:, 2, 1] = -sin, sin
    m = _RGB2YIQ.to(dev, x.dtype)
    mat = torch.linalg.inv(m) @ rot @ m  # (b, 3, 3)
    j = torch.einsum("bij,bjhw->bihw", mat, j).clamp(0, 1)
    out = torch.where((u[:, 5] < jitter_p).view(b, 1, 1, 1), j, out)
    # --- random grayscale
    return torch.where((u[:, 6] < gray_p).view(b, 1, 1, 1), _gray(out).expand_as(out), out)


class SimCLR(nn.Module):
    """ResNet backbone (conv1 = Conv(3→64, k3, s1, p1, no bias), maxpool and fc = Identity) + projector
    Linear(512→2048) → ReLU → Linear(2048→projection_dim).  Random init (``weights=None``: ImageNet
    weights cannot be downloaded offline and do not fit the replaced conv1).
    """

    def __init__(self, latent_dim: int = 512, projection_dim: int = 128, temperature: float = 0.5,
                 backbone: str = "resnet18") -> None:
        super().__init__()
        import torchvision.models as tvm  # lazy: keep `import lfxai_utils.models` light

        if backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r}; valid: {', '.join(BACKBONES)}")
        if latent_dim != 512:
            raise ValueError(f"{backbone} features are 512-d; got latent_dim={latent_dim}")
        enc = getattr(tvm, backbone)(weights=None)
        enc.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        enc.maxpool = nn.Identity()
        enc.fc = nn.Identity()
        self.encoder = enc
        self.projector = nn.Sequential(nn.Linear(latent_dim, 2048), nn.ReLU(True), nn.Linear(2048, projection_dim))
        self.temperature = float(temperature)
        self.generator: torch.Generator | None = None  # optional RNG for the augmentations

    def forward(self, x: Tensor) -> Tensor:
        return self.projector(self.encoder(x))

    def loss(self, batch: Sequence[Tensor]) -> Tensor:
        """NT-Xent between the projections of two augmented views of ``batch[0]``."""
        x = batch[0]
        v1, v2 = simclr_augment(x, self.generator), simclr_augment(x, self.generator)
        z = self(torch.cat([v1, v2]))
        return nt_xent(*z.chunk(2), temperature=self.temperature)
