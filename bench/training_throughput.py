"""Training throughput per architecture: one optimiser step, under each execution option (``make bench-train``).

For every architecture the book trains, time one Adam step (forward, loss, backward, step) on a batch of the
paper's size, under

* ``eager`` (the default), ``channels_last`` (NHWC memory format for model and inputs; image models only) and
  ``compile`` (``torch.compile`` of the loss);
* 1 and 2 intra-op threads (``torch.set_num_threads``);
* 1 process, and 2 processes running the same 1-thread step at once (what ``make checkpoints JOBS=2`` does).

Each option must give the same training as eager within float tolerance: from the same initial weights and seed,
five steps under the option and under eager end with losses that agree to ``rtol`` 1e-3 (``agrees``).
Results go to ``bench/results/training_throughput.csv`` (the book's *Performance* page shows them) and the option
the training loop adopts per architecture is :data:`lfxai_utils.training.FAST_PATH`.

Inputs are random tensors of the right shape and range: a step's cost does not depend on the pixel values.
"""
from __future__ import annotations

import argparse
import copy
import multiprocessing as mp
import statistics
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lfxai_utils._utils import atomic_write  # noqa: E402
from lfxai_utils.models import build_model  # noqa: E402

OUT = ROOT / "bench" / "results" / "training_throughput.csv"
COLUMNS = ["arch", "model", "batch", "option", "threads", "processes", "step_ms", "step_ms_min", "step_ms_max",
           "images_per_s", "speedup_vs_eager_1thread", "agrees", "loss_rel_diff", "notes"]

#: (label, arch, kwargs, input shape without batch, batch size, targets: classes or None)
CASES = [
    ("MNIST AE (denoising)", "mnist_ae", {"latent_dim": 4, "pretext": "denoising"}, (1, 28, 28), 300, None),
    ("MNIST classifier", "mnist_classifier", {"latent_dim": 4}, (1, 28, 28), 300, 10),
    ("Burgess VAE 1x32x32 (beta-TCVAE)", "vae", {"img_size": [1, 32, 32], "latent_dim": 3, "loss": "tc", "beta": 5,
                                                 "n_data": 54000}, (1, 32, 32), 300, None),
    ("CIFAR AE (denoising)", "cifar_ae", {"latent_dim": 16, "pretext": "denoising"}, (3, 32, 32), 300, None),
    ("CIFAR classifier", "cifar_classifier", {"latent_dim": 16}, (3, 32, 32), 300, 10),
    ("Burgess VAE 3x32x32 (beta-VAE)", "vae", {"img_size": [3, 32, 32], "latent_dim": 16, "loss": "beta", "beta": 5,
                                               "rec_dist": "gaussian", "n_data": 45000}, (3, 32, 32), 300, None),
    ("ECG5000 LSTM AE", "ecg_ae", {"latent_dim": 64}, (140, 1), 20, None),
]
OPTIONS = ("eager", "channels_last", "compile")


def _batch(shape, batch, classes, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((batch, *shape), generator=g)
    y = torch.randint(0, classes or 2, (batch,), generator=g)
    return x, y


def _prepare(arch, kwargs, option, seed=0):
    torch.manual_seed(seed)
    model = build_model(arch, **kwargs)
    if option == "channels_last":
        model = model.to(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)
    loss_fn = torch.compile(model.loss) if option == "compile" else model.loss
    return model, opt, loss_fn


def _step(opt, loss_fn, batch):
    loss = loss_fn(batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def _inputs(x, y, option):
    if option == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    return (x, y)


def time_case(case, option, threads, steps, warmup):
    """Per-step wall times (ms) of ``steps`` steps after ``warmup`` untimed ones (compile happens in warm-up)."""
    _, arch, kwargs, shape, batch, classes = case
    torch.set_num_threads(threads)
    _, opt, loss_fn = _prepare(arch, kwargs, option)
    b = _inputs(*_batch(shape, batch, classes), option)
    for _ in range(warmup):
        _step(opt, loss_fn, b)
    out = []
    for _ in range(steps):
        t0 = time.perf_counter()
        _step(opt, loss_fn, b)
        out.append(1000 * (time.perf_counter() - t0))
    return out


def agreement(case, option, n=5):
    """Relative difference of the loss after ``n`` seeded steps under ``option`` vs eager (same init, same data)."""
    if option == "eager":
        return 0.0
    _, arch, kwargs, shape, batch, classes = case
    losses = []
    for opt_name in ("eager", option):
        torch.manual_seed(0)
        _, opt, loss_fn = _prepare(arch, kwargs, opt_name)
        for i in range(n):
            torch.manual_seed(100 + i)        # same noise / reparameterisation draws on both sides
            last = _step(opt, loss_fn, _inputs(*_batch(shape, batch, classes, seed=i), opt_name))
        losses.append(last)
    return abs(losses[1] - losses[0]) / max(abs(losses[0]), 1e-12)


def _worker(args):
    case_idx, option, threads, steps, warmup = args
    return time_case(CASES[case_idx], option, threads, steps, warmup)


def applies(case, option):
    return not (option == "channels_last" and len(case[3]) != 3)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--only", default="", help="only architectures whose label contains this")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile (slow to compile on 2 cores)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    rows = []
    cases = [(i, c) for i, c in enumerate(CASES) if args.only.lower() in c[0].lower()]
    for i, case in cases:
        label, arch, _, _, batch, _ = case
        base = None
        for option in OPTIONS:
            if not applies(case, option) or (option == "compile" and args.no_compile):
                continue
            try:
                rel = agreement(case, option)
                err = ""
            except Exception as e:  # noqa: BLE001 - an option that does not work is a result too
                rel, err = float("nan"), f"{type(e).__name__}: {str(e)[:120]}"
            for threads in ((1,) if option == "compile" else (1, 2)):
                if err:
                    break
                t = time_case(case, option, threads, args.steps, args.warmup)
                med = statistics.median(t)
                if option == "eager" and threads == 1:
                    base = med
                rows.append(dict(arch=arch, model=label, batch=batch, option=option, threads=threads, processes=1,
                                 step_ms=round(med, 1), step_ms_min=round(min(t), 1), step_ms_max=round(max(t), 1),
                                 images_per_s=round(1000 * batch / med), agrees=rel < 1e-3,
                                 speedup_vs_eager_1thread=round(base / med, 2), loss_rel_diff=f"{rel:.1e}", notes=""))
                print(f"{label:36s} {option:14s} threads={threads} {med:8.1f} ms/step", flush=True)
            if err:
                rows.append(dict(arch=arch, model=label, batch=batch, option=option, threads=1, processes=1,
                                 agrees=False, notes=err))
                print(f"{label:36s} {option:14s} FAILED {err}", flush=True)
                continue
            if option == "compile":   # compiling takes ~1 min per process on 2 cores: measured in-process only
                continue
            # two processes at once, one thread each (make checkpoints JOBS=2)
            ctx = mp.get_context("spawn")
            with ctx.Pool(2) as pool:
                both = pool.map(_worker, [(i, option, 1, args.steps, args.warmup)] * 2)
            med = statistics.median(both[0] + both[1])
            rows.append(dict(arch=arch, model=label, batch=batch, option=option, threads=1, processes=2,
                             step_ms=round(med, 1), step_ms_min=round(min(both[0] + both[1]), 1),
                             step_ms_max=round(max(both[0] + both[1]), 1), images_per_s=round(2 * 1000 * batch / med),
                             speedup_vs_eager_1thread=round(base / med, 2), agrees=rel < 1e-3,
                             loss_rel_diff=f"{rel:.1e}",
                             notes="per-process step time; images_per_s is both processes together"))
            print(f"{label:36s} {option:14s} 2 procs x 1 thread {med:8.1f} ms/step", flush=True)
    df = pd.DataFrame(rows, columns=COLUMNS)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out, "w") as f:
        f.write(f"# {time.strftime('%Y-%m-%d %H:%M')} UTC, torch {torch.__version__}, {mp.cpu_count()} CPUs; "
                f"median of {args.steps} steps after {args.warmup} warm-up steps\n")
        df.to_csv(f, index=False)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
