"""Burgess VAE and its β-VAE / β-TCVAE losses (ORIG ``models/images.py`` and ``models/losses.py``,
after YannDubs/disentangling-vae; experiments.md §1.1, §6, §7a).

``model.encoder`` convention
----------------------------
``EncoderBurgess.forward(x)`` returns the **latent mean** μ ``(N, d)``, so downstream code can treat a
VAE like every other model (``model.encoder(x)`` is the explained representation, and
``model.encoder.parameters()`` are the encoder weights).  The full Gaussian is given by
``encoder.mu_logvar(x) -> (mu, logvar)``, and ``encoder.mu`` is an ORIG-compatible alias that is the
encoder module itself (``encoder.mu(x)`` returns μ, as ``encoder_mu`` did in ORIG).  Internally the
last layer outputs 2d values with μ at the even and log σ² at the odd positions
(``view(-1, d, 2).unbind(-1)``), as the disentangling-vae code.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

REC_DISTS: tuple[str, ...] = ("bernoulli", "gaussian")
VAE_LOSSES: tuple[str, ...] = ("beta", "tc")


def _check_img_size(img_size: Sequence[int]) -> tuple[int, int, int]:
    c, h, w = (int(v) for v in img_size)
    if h != w or h not in (32, 64):
        raise ValueError(f"Burgess VAEs take 32×32 or 64×64 images; got img_size={tuple(img_size)} "
                         "(resize the images, e.g. load_dataset('mnist', image_size=32))")
    return c, h, w


class EncoderBurgess(nn.Module):
    """Conv(C→32,k4,s2,p1) ×3 [+ ``conv_64`` for 64×64] → Linear(512→256) → Linear(256→256) → Linear(256→2d).

    ``forward(x)`` returns μ; see the module docstring.

    Parameters
    ----------
    img_size
        ``(C, H, W)`` with H = W ∈ {32, 64}.
    latent_dim
        d.
    leaky
        use LeakyReLU(0.1) instead of ReLU (FACT, for feature visualisation only).  The flag holds no
        weights, so it can be flipped on a trained encoder: ``encoder.leaky = True``.
    """

    def __init__(self, img_size: Sequence[int] = (1, 32, 32), latent_dim: int = 10, leaky: bool = False) -> None:
        super().__init__()
        self.img_size = _check_img_size(img_size)
        self.latent_dim = latent_dim
        self.leaky = leaky
        c, h, _ = self.img_size
        kw = dict(kernel_size=4, stride=2, padding=1)
        self.conv1 = nn.Conv2d(c, 32, **kw)
        self.conv2 = nn.Conv2d(32, 32, **kw)
        self.conv3 = nn.Conv2d(32, 32, **kw)
        if h == 64:
            self.conv_64 = nn.Conv2d(32, 32, **kw)
        self.lin1 = nn.Linear(32 * 4 * 4, 256)
        self.lin2 = nn.Linear(256, 256)
        self.mu_logvar_gen = nn.Linear(256, 2 * latent_dim)

    def _act(self, x: Tensor) -> Tensor:
        return F.leaky_relu(x, 0.1) if self.leaky else F.relu(x)

    def mu_logvar_raw(self, x: Tensor) -> Tensor:
        """The 2d outputs of the last layer (μ at even, log σ² at odd positions)."""
        x = self._act(self.conv3(self._act(self.conv2(self._act(self.conv1(x))))))
        if hasattr(self, "conv_64"):
            x = self._act(self.conv_64(x))
        x = self._act(self.lin2(self._act(self.lin1(x.flatten(1)))))
        return self.mu_logvar_gen(x)

    def mu_logvar(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu, logvar)``, each ``(N, d)``."""
        mu, logvar = self.mu_logvar_raw(x).view(-1, self.latent_dim, 2).unbind(-1)
        return mu, logvar

    def forward(self, x: Tensor) -> Tensor:
        return self.mu_logvar(x)[0]

    @property
    def mu(self) -> "EncoderBurgess":
        """ORIG-compatible alias: the module mapping x to the latent mean (this encoder itself)."""
        return self


class DecoderBurgess(nn.Module):
    """Linear(d→256) → Linear(256→256) → Linear(256→512) → (32,4,4) [→ ``convT_64``] → ConvT ×3 → sigmoid."""

    def __init__(self, img_size: Sequence[int] = (1, 32, 32), latent_dim: int = 10) -> None:
        super().__init__()
        self.img_size = _check_img_size(img_size)
        c, h, _ = self.img_size
        kw = dict(kernel_size=4, stride=2, padding=1)
        self.lin1 = nn.Linear(latent_dim, 256)
        self.lin2 = nn.Linear(256, 256)
        self.lin3 = nn.Linear(256, 32 * 4 * 4)
        if h == 64:
            self.convT_64 = nn.ConvTranspose2d(32, 32, **kw)
        self.convT1 = nn.ConvTranspose2d(32, 32, **kw)
        self.convT2 = nn.ConvTranspose2d(32, 32, **kw)
        self.convT3 = nn.ConvTranspose2d(32, c, **kw)

    def forward(self, z: Tensor) -> Tensor:
        x = F.relu(self.lin3(F.relu(self.lin2(F.relu(self.lin1(z))))))
        x = x.view(-1, 32, 4, 4)
        if hasattr(self, "convT_64"):
            x = F.relu(self.convT_64(x))
        x = F.relu(self.convT2(F.relu(self.convT1(x))))
        return torch.sigmoid(self.convT3(x))


# ------------------------------------------------------------------------------------------ losses
def reconstruction_loss(x: Tensor, recon: Tensor, rec_dist: str = "bernoulli") -> Tensor:
    """Per-batch-averaged reconstruction NLL summed over pixels.

    ``"bernoulli"``: binary cross-entropy; ``"gaussian"``: squared error (FACT: without ORIG's ×255 scale).
    """
    if rec_dist == "bernoulli":
        total = F.binary_cross_entropy(recon, x, reduction="sum")
    elif rec_dist == "gaussian":
        total = F.mse_loss(recon, x, reduction="sum")
    else:
        raise ValueError(f"unknown rec_dist {rec_dist!r}; valid: {', '.join(REC_DISTS)}")
    return total / x.shape[0]


def kl_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(μ, σ²) ‖ N(0, I)) = Σ_j mean_batch ½(−1 − log σ_j² + μ_j² + σ_j²)."""
    return (0.5 * (-1 - logvar + mu.pow(2) + logvar.exp())).mean(0).sum()


def log_density_gaussian(x: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """Element-wise log N(x; μ, σ²) (broadcasting)."""
    return -0.5 * (math.log(2 * math.pi) + logvar) - 0.5 * (x - mu).pow(2) * torch.exp(-logvar)


def log_importance_weight_matrix(batch_size: int, n_data: int) -> Tensor:
    """Log weights of minibatch stratified sampling (Chen et al. 2018, appendix C.2), ``(B, B)``.

    Row i weighs the batch members when estimating q(z_i): 1/N for example i itself, (N − M)/(N·M) for
    the next one (cyclically) and 1/M for the others (M = B − 1), so every row sums to 1.  The
    disentangling-vae/ORIG code strides by M + 1 = B, which fills the first two *columns* instead of the
    diagonal (rtqichen/beta-tcvae PR #1); the experiments use MWS (``is_mss=False``), which this does not affect.
    """
    if batch_size < 2:
        raise ValueError("minibatch stratified sampling needs batches of at least 2 examples")
    n, m = n_data, batch_size - 1
    w = torch.full((batch_size, batch_size), 1 / m, dtype=torch.float64)
    idx = torch.arange(batch_size)
    w[idx, (idx + 1) % batch_size] = (n - m) / (n * m)
    w[idx, idx] = 1 / n
    return w.log().float()


class BetaVAELoss(nn.Module):
    """β-VAE loss ``rec + β·KL`` (ORIG ``BetaHLoss``, no annealing).

    ``forward(x, recon, mu, logvar, z)`` returns ``(loss, components)`` with components
    ``{"rec", "kl"}`` (detached scalars).
    """

    def __init__(self, beta: float = 1.0, rec_dist: str = "bernoulli") -> None:
        super().__init__()
        if rec_dist not in REC_DISTS:
            raise ValueError(f"unknown rec_dist {rec_dist!r}; valid: {', '.join(REC_DISTS)}")
        self.beta, self.rec_dist = float(beta), rec_dist

    def forward(self, x: Tensor, recon: Tensor, mu: Tensor, logvar: Tensor,
                z: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        rec = reconstruction_loss(x, recon, self.rec_dist)
        kl = kl_normal(mu, logvar)
        return rec + self.beta * kl, {"rec": rec.detach(), "kl": kl.detach()}


class BetaTCVAELoss(nn.Module):
    """β-TCVAE loss ``rec + α·MI + β·TC + γ·DWKL`` (ORIG ``BtcvaeLoss``).

    log q(z) and log q(z_j) are minibatch estimates from the B×B×d matrix of log N(z_i; μ_k, σ_k²).
    ``is_mss=False`` (used by the experiments) is minibatch weighted sampling without the constant
    −log(N·B) (values shift, gradients do not), exactly as ORIG.  ``is_mss=True`` adds the
    stratified-sampling log weights, which need ``n_data`` (training-set size); it follows Chen et al.'s
    reference code, not ORIG's two slips (see ``log_importance_weight_matrix`` and
    :meth:`decomposition`), which only matter for MSS.

    ``forward(x, recon, mu, logvar, z)`` returns ``(loss, components)`` with components
    ``{"rec", "mi", "tc", "dw_kl", "kl"}`` (detached scalars; ``kl`` is the closed-form KL, for logging).
    """

    def __init__(self, n_data: int, alpha: float = 1.0, beta: float = 6.0, gamma: float = 1.0,
                 is_mss: bool = False, rec_dist: str = "bernoulli") -> None:
        super().__init__()
        if rec_dist not in REC_DISTS:
            raise ValueError(f"unknown rec_dist {rec_dist!r}; valid: {', '.join(REC_DISTS)}")
        self.n_data, self.alpha, self.beta, self.gamma = int(n_data), float(alpha), float(beta), float(gamma)
        self.is_mss, self.rec_dist = bool(is_mss), rec_dist

    def decomposition(self, z: Tensor, mu: Tensor, logvar: Tensor) -> dict[str, Tensor]:
        """Per-example ``log_pz, log_qz, log_prod_qzi, log_q_zCx`` (each ``(B,)``)."""
        log_q_zCx = log_density_gaussian(z, mu, logvar).sum(1)
        log_pz = log_density_gaussian(z, torch.zeros_like(z), torch.zeros_like(z)).sum(1)
        mat = log_density_gaussian(z.unsqueeze(1), mu.unsqueeze(0), logvar.unsqueeze(0))  # (B, B, d)
        joint = mat.sum(2)
        if self.is_mss:  # the weight enters the joint once (Chen et al.; disentangling-vae adds it d times)
            log_w = log_importance_weight_matrix(z.shape[0], self.n_data).to(mat)
            joint, mat = joint + log_w, mat + log_w.unsqueeze(-1)
        log_qz = torch.logsumexp(joint, dim=1)
        log_prod_qzi = torch.logsumexp(mat, dim=1).sum(1)
        return {"log_pz": log_pz, "log_qz": log_qz, "log_prod_qzi": log_prod_qzi, "log_q_zCx": log_q_zCx}

    def forward(self, x: Tensor, recon: Tensor, mu: Tensor, logvar: Tensor,
                z: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        if z is None:
            raise ValueError("BetaTCVAELoss needs the latent sample z")
        rec = reconstruction_loss(x, recon, self.rec_dist)
        t = self.decomposition(z, mu, logvar)
        mi = (t["log_q_zCx"] - t["log_qz"]).mean()
        tc = (t["log_qz"] - t["log_prod_qzi"]).mean()
        dw_kl = (t["log_prod_qzi"] - t["log_pz"]).mean()
        loss = rec + self.alpha * mi + self.beta * tc + self.gamma * dw_kl
        comps = {"rec": rec, "mi": mi, "tc": tc, "dw_kl": dw_kl, "kl": kl_normal(mu, logvar)}
        return loss, {k: v.detach() for k, v in comps.items()}


class VAE(nn.Module):
    """Variational autoencoder: reparameterised sample in train mode, the mean μ in eval mode.

    ``forward(x)`` returns the reconstruction; ``loss(batch)`` runs the same path (so the validation loss
    uses z = μ, as ORIG ``test_epoch``) and stores the detached loss components in
    ``last_loss_components``.  ``model.encoder(x)`` is the latent mean (see module docstring).
    """

    def __init__(self, encoder: EncoderBurgess, decoder: DecoderBurgess, loss_f: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.loss_f = loss_f
        self.last_loss_components: dict[str, Tensor] = {}

    def reparameterize(self, mu: Tensor, logvar: Tensor) -> Tensor:
        """``mu + σ·ε`` in training mode, ``mu`` in eval mode."""
        if self.training:
            return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        return mu

    def forward_parts(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(reconstruction, mu, logvar, z)``."""
        mu, logvar = self.encoder.mu_logvar(x)
        z = self.reparameterize(mu, logvar)
        return self.decoder(z), mu, logvar, z

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_parts(x)[0]

    def loss(self, batch: Sequence[Tensor]) -> Tensor:
        """The VAE loss of ``loss_f`` on ``batch[0]`` (labels ignored)."""
        x = batch[0]
        recon, mu, logvar, z = self.forward_parts(x)
        loss, self.last_loss_components = self.loss_f(x, recon, mu, logvar, z)
        return loss
