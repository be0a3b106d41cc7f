"""Micro-benchmark of lfxai_utils.examples on the ORIG MNIST autoencoder (experiments.md §1.1), and of the
per-example gradient modes on the ECG5000 LSTM autoencoder (``--lstm``).

The encoder (≈43.4k parameters) and decoder are built here, ad hoc, with random weights: timings do not
depend on training. Nothing is written to disk.

    PYTHONPATH=. .venv/bin/python bench/bench_examples.py --n 200 --depth 5 --batch 64 --checkpoints 2
    PYTHONPATH=. .venv/bin/python bench/bench_examples.py --lstm --n 256
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from lfxai_utils import examples as E


class EncoderMnist(nn.Module):
    def __init__(self, d: int = 4):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, 2, 0), nn.ReLU(), nn.Flatten(), nn.Linear(288, 128), nn.ReLU(), nn.Linear(128, d))

    def forward(self, x):
        return self.net(x)


class DecoderMnist(nn.Module):
    def __init__(self, d: int = 4):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d, 128), nn.ReLU(), nn.Linear(128, 288), nn.ReLU(), nn.Unflatten(1, (32, 3, 3)),
            nn.ConvTranspose2d(32, 16, 3, 2, output_padding=0), nn.BatchNorm2d(16), nn.ReLU(),
            nn.ConvTranspose2d(16, 8, 3, 2, padding=1, output_padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.ConvTranspose2d(8, 1, 3, 2, padding=1, output_padding=1), nn.Sigmoid())

    def forward(self, z):
        return self.net(z)


class AutoEncoderMnist(nn.Module):
    def __init__(self, d: int = 4):
        super().__init__()
        self.encoder, self.decoder = EncoderMnist(d), DecoderMnist(d)

    def forward(self, x):
        return self.decoder(self.encoder(x))


def _timed(label: str, fn):
    t = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t
    print(f"{label:<48s} {dt:8.2f} s")
    return out, dt


def lstm_grad_modes(n: int, chunk: int) -> None:
    """Per-example encoder gradients of the ECG5000 LSTM autoencoder (d = 64, 140 steps; the TracIn and
    influence-function gradients of Claim 1.2 on ECG5000) by each mode, and how far they are from the loop's."""
    from lfxai_utils.models import build_model

    torch.manual_seed(0)
    model = build_model("ecg_ae").eval()
    x = torch.randn(n, 140, 1)
    loss = E.reconstruction_loss("l1")
    ref = None
    for mode in ("loop", "capture"):
        g, dt = _timed(f"ECG LSTM AE per-example gradients, {mode} ({n} examples)",
                       lambda: E.per_example_gradients(model, loss, x, grad_mode=mode, chunk_size=chunk, device="cpu"))
        ref = g if ref is None else ref
        print(f"{'':<48s} {1000 * dt / n:8.2f} ms per example; max |Δ| vs loop "
              f"{(g - ref).abs().max().item() / ref.abs().max().item():.1e} (relative)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="train and test examples")
    ap.add_argument("--depth", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--checkpoints", type=int, default=2)
    ap.add_argument("--hvp-chunk", type=int, default=32)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--lstm", action="store_true", help="only the per-example gradient modes on the ECG LSTM AE")
    args = ap.parse_args()
    if args.lstm:
        return lstm_grad_modes(args.n, args.batch)

    torch.manual_seed(0)
    model = AutoEncoderMnist()
    n_enc = sum(p.numel() for p in model.encoder.parameters())
    x = torch.rand(3 * args.n, 1, 28, 28)
    train_x, test_x, hvp_x = x[: args.n], x[args.n: 2 * args.n], x
    loss = E.reconstruction_loss("mse")
    print(f"MNIST AE encoder parameters: {n_enc}; threads: {torch.get_num_threads()}; device: {args.device}")
    ckpts = [{k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
              for k, v in model.state_dict().items()} for _ in range(args.checkpoints)]
    E.per_example_gradients(model, loss, train_x[:8], device=args.device)  # warm-up
    _timed(f"per-example gradients ({args.n} examples)",
           lambda: E.per_example_gradients(model, loss, train_x, device=args.device))
    _timed(f"TracIn {args.n}x{args.n}, {args.checkpoints} checkpoints",
           lambda: E.tracin(model, loss, train_x, test_x, ckpts, device=args.device, progress=False))
    _timed(f"IF {args.n}x{args.n}, depth {args.depth}, batch {args.batch}",
           lambda: E.influence_functions(model, loss, train_x, test_x, hvp_x, recursion_depth=args.depth,
                                         batch_size=args.batch, hvp_chunk_size=args.hvp_chunk,
                                         device=args.device, progress=False))
    h_tr, h_te = E.encode(model, train_x), E.encode(model, test_x)
    _timed(f"SimplEx {args.n}x{args.n}, 1000 steps", lambda: E.simplex(h_tr, h_te, progress=False))
    _timed(f"DKNN + cosine {args.n}x{args.n}", lambda: (E.dknn(h_tr, h_te), E.cosine_nn(h_tr, h_te)))


if __name__ == "__main__":
    main()
