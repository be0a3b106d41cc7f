"""Benchmark lfxai_utils against the authors' lfxai 0.1.1 on the same weights and inputs (``make bench``).

One process, the CPU threads torch picks, both implementations fed the same model object (a deep copy where
the authors' code mutates it) and the same tensors:

* label-free Integrated Gradients, GradientSHAP and Saliency over 1,000 MNIST test images
  (``lfxai.explanations.features.attribute_auxiliary`` vs ``lfxai_utils.features.attribute_dataset``);
  GradientSHAP also on a seeded *linear* encoder, where both are compared with the closed-form answer;
* the top-k masks of Claim 1.1 (``lfxai.utils.feature_attribution.generate_masks`` vs ``metrics.topk_mask``);
* TracIn and influence functions, 1,000 train x 1,000 test (``lfxai.explanations.examples.TracIn`` /
  ``InfluenceFunctions.attribute_loader`` vs ``lfxai_utils.examples``), with the authors' loaders of batch 1;
* SimplEx and DKNN, 1,000 x 1,000.

Where a full-size run is too slow (the authors' TracIn/IF, our IF) it is timed on a subset and scaled up phase
by phase (:func:`harness.extrapolate`); the CSV says so in ``ours_timing`` / ``authors_timing``. The authors'
progress bars are replaced by a silent timer (which only makes their code faster).

Outputs in ``--out`` (default ``bench/results``): ``benchmarks.csv`` (one row per benchmark), ``runs.csv``
(every timed run), ``machine.txt`` and ``speedups.png``. ``lfxai_utils.book.performance.render_performance``
turns them into the book's Performance page.

    .venv/bin/python bench/run_benchmarks.py            # full run (about 20-40 min on 2 idle cores)
    .venv/bin/python bench/run_benchmarks.py --quick    # seconds-to-minutes, tiny sizes, to a temp dir
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import itertools
import math
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from bench import harness as H  # noqa: E402
from lfxai_utils import examples as E  # noqa: E402
from lfxai_utils import features as F  # noqa: E402
from lfxai_utils import metrics as M  # noqa: E402
from lfxai_utils._utils import atomic_write  # noqa: E402

CPU = torch.device("cpu")
FRACTIONS = (0.05, 0.1, 0.2, 0.5, 0.8, 1.0)  # Claim 1.1 masking fractions (experiments.md §2)
CHECKPOINT = "claim1_mnist_denoising-ae"
TRACIN_TOL = 1e-4      # issue 12: TracIn to rtol 1e-4
SAME_TOL = 1e-4        # same method, same arithmetic up to summation order
FEATURE_METHODS = {"integrated_gradients": "IntegratedGradients", "gradient_shap": "GradientShap",
                   "saliency": "Saliency"}
LABELS = {"integrated_gradients": "Integrated Gradients", "gradient_shap": "GradientSHAP", "saliency": "Saliency"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------------ the authors
def import_authors():
    """The three lfxai 0.1.1 modules the benchmark calls (no hydra / torchvision extras needed)."""
    try:
        from lfxai.explanations import examples as le
        from lfxai.explanations import features as lf
        from lfxai.utils import feature_attribution as lm
    except ImportError as err:
        raise SystemExit(
            f"the authors' package is not importable ({err}). Install it next to our pins with\n"
            f"    {sys.executable} -m pip install --no-deps -r bench/requirements.txt\n"
            "(lfxai==0.1.1 from PyPI; its own dependency list pulls hydra, seaborn, scikit-image, ... which the "
            "benchmarked modules do not use)") from None
    return lf, le, lm


@contextlib.contextmanager
def authors_hooks(le, recorder: H.PhaseRecorder | None = None, phases: dict[int, str] | None = None):
    """Replace lfxai's tqdm / tqdm-product (module globals of lfxai.explanations.examples) by silent
    pass-throughs; loops over the iterables named in ``phases`` (by ``id``) and the pairwise ``product`` loop
    are timed by ``recorder``. Nothing the authors compute changes."""
    phases = phases or {}
    old_tqdm, old_product = le.tqdm, le.product

    def quiet_tqdm(iterable=None, *args, **kwargs):
        name = phases.get(id(iterable))
        return recorder.iterate(iterable, name) if (recorder is not None and name) else iterable

    def quiet_product(*iterables, **kwargs):
        it = itertools.product(*iterables)
        return recorder.iterate(it, "pairs") if recorder is not None else it

    le.tqdm, le.product = quiet_tqdm, quiet_product
    try:
        yield
    finally:
        le.tqdm, le.product = old_tqdm, old_product


class SharedMinibatches:
    """Re-iterable stand-in for the authors' ``train_loader_replacement``: every ``iter()`` yields the same
    ``recursion_depth`` minibatches ``(x[idx[t]], 0)``, the sequence ``lfxai_utils.examples`` draws for a given
    seed. lfxai restarts the iterator for every train example, so both share their HVP minibatches."""

    def __init__(self, x: torch.Tensor, idx: torch.Tensor):
        self.x, self.idx = x, idx

    def __iter__(self):
        for rows in self.idx:
            yield self.x[rows], torch.zeros(len(rows))

    def __len__(self) -> int:
        return len(self.idx)


def loader(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


# ------------------------------------------------------------------------------------------------ setup
@dataclass
class Setup:
    model: nn.Module
    model_label: str
    checkpoint_paths: list[Path]
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    hvp_x: torch.Tensor
    data_label: str
    tmp: Path
    notes: dict[str, str] = field(default_factory=dict)


class SyntheticFallbackRefused(SystemExit):
    """The real model or data is missing and the user did not ask for the labelled synthetic stand-in."""


def split_note(method: str, batch_size: int) -> str:
    """How our call splits each batch on the CPU (lfxai_utils.features.CPU_PROBES_PER_PASS), for the notes column."""
    import captum.attr as CA

    cls = getattr(CA, FEATURE_METHODS[method])
    chunk, per = F._auto_chunk(cls, {}, CPU), F._probes_per_example(cls, {})
    if chunk is None or chunk >= batch_size:
        return ""
    return (f"; ours splits each batch of {batch_size} into captum calls of {chunk} images "
            f"(≤ {F.CPU_PROBES_PER_PASS:,} probes per forward pass{f', {per} steps each' if per > 1 else ''}), "
            "which keeps the activations in cache; the authors pass the whole batch")


def require_real(what: str, why: str, args) -> None:
    """Refuse to benchmark on random weights / random images unless asked (``--allow-synthetic``, or ``--quick``):
    a results CSV from random inputs is easy to mistake for the real benchmark."""
    if args.quick or args.allow_synthetic:
        return
    raise SyntheticFallbackRefused(
        f"bench: {what} is not available here ({why}).\n"
        "Fix: point LFXAI_DATA_DIR at a folder holding MNIST (e.g. LFXAI_DATA_DIR=../shared/datasets make bench) and "
        "keep the shipped checkpoints in checkpoints/; or pass --allow-synthetic to time a seeded random stand-in "
        "(the results are then labelled RANDOM in benchmarks.csv and machine.txt).")


def build_setup(args, tmp: Path) -> Setup:
    """The shipped MNIST checkpoint + its TracIn checkpoints and the class-balanced MNIST subsets of Claim 1.2;
    where those are absent, a seeded random model / random images (labelled RANDOM), only with ``--allow-synthetic``
    or ``--quick``; otherwise :func:`require_real` stops the run with the fix."""
    from lfxai_utils.checkpoints import CheckpointError, load_checkpoint, read_manifest
    from lfxai_utils.data import DatasetNotFoundError, class_balanced_indices, load_dataset
    from lfxai_utils.models import build_model

    ckdir = ROOT / "checkpoints"
    try:
        model, manifest = load_checkpoint(ckdir, CHECKPOINT)
        paths = [ckdir / f"{e['name']}.pt" for e in sorted(manifest.get("tracin_checkpoints", []),
                                                              key=lambda e: e["epoch"])]
        for e in manifest.get("tracin_checkpoints", []):
            read_manifest(ckdir, e["name"])  # exists
        model_label = (f"shipped checkpoint `{CHECKPOINT}` (MNIST denoising AE, d=4, {manifest['n_parameters']:,} "
                       f"parameters; TracIn checkpoints at epochs {[e['epoch'] for e in manifest['tracin_checkpoints']]})")
    except (CheckpointError, FileNotFoundError, KeyError) as err:
        require_real("the shipped MNIST checkpoint", f"{type(err).__name__}: {err}", args)
        torch.manual_seed(0)
        model = build_model("mnist_ae", latent_dim=4).eval()
        paths = []
        for k in range(10):
            state = {n: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
                     for n, v in model.state_dict().items()}
            p = tmp / f"random_ckpt{k}.pt"
            torch.save(state, p)
            paths.append(p)
        model_label = (f"RANDOM-WEIGHT MNIST AE (seed 0; the shipped checkpoint is absent: {type(err).__name__}); "
                       "10 perturbed copies as TracIn checkpoints")
    model.eval()
    if args.quick:
        paths = paths[:2]

    n_tr, n_te = args.n_train, args.n_test
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the partial-mirror note (recorded below)
            splits = load_dataset("mnist", download=False, progress=False)
        xtr, ytr = splits.train.tensors()
        xte, yte = splits.test.tensors()
        itr = class_balanced_indices(ytr, n_tr, 10)
        ite = class_balanced_indices(yte, max(n_te, args.n_features), 10)
        data_label = (f"MNIST ({splits.info['root']}): {n_tr} class-balanced train images, "
                      f"{max(n_te, args.n_features)} class-balanced test images (the ORIG rule); "
                      f"HVP minibatches drawn from all {len(xtr):,} train images")
        if splits.info.get("notes"):
            data_label += "; " + "; ".join(splits.info["notes"])
        train_x, train_y, test_x, test_y, hvp_x = xtr[itr], ytr[itr], xte[ite], yte[ite], xtr
    except DatasetNotFoundError as err:
        require_real("MNIST", str(err).splitlines()[0], args)
        g = torch.Generator().manual_seed(0)
        n_all = max(n_te, args.n_features)
        train_x, test_x = torch.rand(n_tr, 1, 28, 28, generator=g), torch.rand(n_all, 1, 28, 28, generator=g)
        train_y, test_y = torch.arange(n_tr) % 10, torch.arange(n_all) % 10
        hvp_x = torch.cat([train_x, torch.rand(max(0, 3000 - n_tr), 1, 28, 28, generator=g)])
        data_label = f"RANDOM IMAGES (seed 0; MNIST not found: {str(err).splitlines()[0][:120]})"
    return Setup(model, model_label, paths, train_x, train_y, test_x, test_y, hvp_x, data_label, tmp)


# ------------------------------------------------------------------------------------------- benchmarks
class Bench:
    def __init__(self, args, setup: Setup):
        self.args, self.s = args, setup
        self.lf, self.le, self.lm = import_authors()
        self.rows: list[dict[str, Any]] = []
        self.runs: list[dict[str, Any]] = []
        self.ig_attr: torch.Tensor | None = None

    # -- bookkeeping ---------------------------------------------------------------------------------
    def record(self, benchmark: str, impl: str, timing: H.Timing, workload: str) -> None:
        for i, sec in enumerate(timing.seconds):
            self.runs.append({"benchmark": benchmark, "implementation": impl, "workload": workload, "run": i + 1,
                              "seconds": sec, "load_1min_after": _load1()})

    def add(self, **row) -> None:
        r = H.summary_row(**row)
        self.rows.append(r)
        ours = f"{r['ours_s']:.3g} s" if r["ours_s"] is not None and not _nan(r["ours_s"]) else "-"
        auth = f"{r['authors_s']:.3g} s" if r["authors_s"] is not None and not _nan(r["authors_s"]) else "-"
        log(f"  => {r['benchmark']}: ours {ours}, authors {auth}, speed-up {r['speedup']:.3g}x, "
            f"{r['agreement_metric']} = {r['agreement_value']} (agrees: {r['agrees']})")

    # -- feature attribution ---------------------------------------------------------------------------
    def features(self) -> None:
        a, s = self.args, self.s
        x = s.test_x[: a.n_features]
        y = s.test_y[: a.n_features]
        enc = s.model.encoder
        base = torch.zeros(1, *x.shape[1:])
        dl = loader(x, y, a.batch_size)
        import captum.attr as CA

        for name, cls_name in FEATURE_METHODS.items():
            cls = getattr(CA, cls_name)
            label = f"Label-free {LABELS[name]}"
            work = (f"{len(x):,} MNIST test images, batches of {a.batch_size}, zero baseline, captum defaults "
                    f"({'50 Gauss-Legendre steps' if name == 'integrated_gradients' else '5 samples' if name == 'gradient_shap' else 'abs=True'})")
            seed = (lambda: _seed(a.seed)) if name == "gradient_shap" else None
            log(f"{label}: ours / authors, interleaved")
            ours, theirs = H.time_interleaved(
                lambda: F.attribute_dataset(enc, x, name, None, batch_size=a.batch_size, device=CPU, progress=False),
                lambda: self.lf.attribute_auxiliary(enc, dl, CPU, cls(enc), baseline=base),
                a.repeats, before=seed)
            self.record(label, "ours", ours, work)
            self.record(label, "authors", theirs, work)
            ref = torch.from_numpy(theirs.result)
            if name == "integrated_gradients":
                self.ig_attr = ours.result
            if name != "gradient_shap":
                ag = H.agreement(ours.result, ref)
                self.add(benchmark=label, workload=work, ours_s=ours.median, ours_runs=ours.runs,
                         ours_timing="measured", authors_s=theirs.median, authors_runs=theirs.runs,
                         authors_timing="measured", target=1.0,
                         agreement_metric="max|ours - authors| / max|authors|", agreement_value=ag["rel_to_scale"],
                         tolerance=SAME_TOL, notes=f"max|Δ| = {ag['max_abs']:.2e}{split_note(name, a.batch_size)}",
                         pairs=(ours.seconds, theirs.seconds))
                continue
            # GradientSHAP: ours re-run with the authors' (mis-)pairing and the same seed must equal theirs;
            # the correctly paired result differs from theirs by construction.
            _seed(a.seed)
            as_pub = F.attribute_dataset(enc, x, name, None, batch_size=a.batch_size, device=CPU, progress=False,
                                         pairing="as_published")
            ag_pub = H.agreement(as_pub, ref)
            ag_fix = H.agreement(ours.result, ref)
            self.add(benchmark=label, workload=work, ours_s=ours.median, ours_runs=ours.runs, ours_timing="measured",
                     authors_s=theirs.median, authors_runs=theirs.runs, authors_timing="measured", target=1.0,
                     agreement_metric="ours with pairing='as_published' vs authors, same seed: max|Δ| / max|authors|",
                     agreement_value=ag_pub["rel_to_scale"], tolerance=SAME_TOL,
                     notes=(f"timed: ours with the correct pairing. Correct pairing vs authors differs by "
                            f"max|Δ|/max|authors| = {ag_fix['rel_to_scale']:.2f} (lfxai pairs the probes of image i "
                            "with the representation of image (5i+s) mod B; see the linear-encoder rows)"),
                     pairs=(ours.seconds, theirs.seconds))
        self.linear_gradshap()

    def linear_gradshap(self) -> None:
        """Both implementations vs the closed form on a seeded linear encoder (experiments.md §0.1)."""
        a, s = self.args, self.s
        x = s.test_x[: a.n_features]
        y = s.test_y[: a.n_features]
        g = torch.Generator().manual_seed(a.seed)
        lin = nn.Linear(x[0].numel(), 4)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) / math.sqrt(x[0].numel()))
            lin.bias.copy_(0.1 * torch.randn(lin.bias.shape, generator=g))
        enc = nn.Sequential(nn.Flatten(), lin).eval()
        W, b = lin.weight.detach(), lin.bias.detach()
        exact = H.linear_gradshap_exact(W, b, x)
        predicted_bug = H.linear_gradshap_as_published(W, b, x, batch_size=a.batch_size, n_samples=5)
        from captum.attr import GradientShap

        work = f"{len(x):,} MNIST test images, linear encoder 784→4 (seed {a.seed}), batches of {a.batch_size}"
        ours, theirs = H.time_interleaved(
            lambda: F.attribute_dataset(enc, x, "gradient_shap", None, batch_size=a.batch_size, device=CPU,
                                        progress=False),
            lambda: self.lf.attribute_auxiliary(enc, loader(x, y, a.batch_size), CPU, GradientShap(enc),
                                                baseline=torch.zeros(1, *x.shape[1:])),
            a.repeats, before=lambda: _seed(a.seed))
        label = "GradientSHAP, linear encoder"
        self.record(label, "ours", ours, work)
        self.record(label, "authors", theirs, work)
        ag_ours = H.agreement(ours.result, exact)
        ag_theirs = H.agreement(torch.from_numpy(theirs.result), exact)
        ag_bug = H.agreement(torch.from_numpy(theirs.result), predicted_bug)
        self.add(benchmark=label + ": ours vs closed form", workload=work, ours_s=ours.median, ours_runs=ours.runs,
                 ours_timing="measured", authors_s=theirs.median, authors_runs=theirs.runs, authors_timing="measured",
                 target=1.0, agreement_metric="max|ours - exact| / max|exact|, exact = x ⊙ Wᵀf(x)",
                 agreement_value=ag_ours["rel_to_scale"], tolerance=SAME_TOL,
                 notes=f"max|Δ| = {ag_ours['max_abs']:.2e}", pairs=(ours.seconds, theirs.seconds))
        self.add(benchmark=label + ": lfxai 0.1.1 vs closed form", workload=work, ours_s=None, ours_runs=0,
                 ours_timing="", authors_s=None, authors_runs=0, authors_timing="", target=None,
                 agreement_metric="max|authors - exact| / max|exact|", agreement_value=ag_theirs["rel_to_scale"],
                 tolerance=SAME_TOL,
                 notes=(f"max|Δ| = {ag_theirs['max_abs']:.2e}. The authors' result equals the predicted mis-paired "
                        f"closed form (pairing with image (5i+s) mod B) to max|Δ|/max = {ag_bug['rel_to_scale']:.1e}"))

    # -- masks ---------------------------------------------------------------------------------------------
    def masks(self) -> None:
        a = self.args
        attr = self.ig_attr if self.ig_attr is not None else F.attribute_dataset(
            self.s.model.encoder, self.s.test_x[: a.n_features], "integrated_gradients", None,
            batch_size=a.batch_size, device=CPU, progress=False)
        attr_np = attr.numpy()
        d = attr[0, 0].numel()
        ks = [int(f * d + 1e-9) for f in FRACTIONS]
        work = f"top-k masks of {len(attr):,} IG attribution maps (28×28), k = {ks}"
        label = "Top-k masking (Claim 1.1)"
        log(f"{label}: ours / authors, interleaved")
        ours, theirs = H.time_interleaved(lambda: [M.topk_mask(M.feature_scores(attr), k) for k in ks],
                                          lambda: [self.lm.generate_masks(attr_np, k) for k in ks],
                                          a.repeats, warmup=(True, False))
        self.record(label, "ours", ours, work)
        self.record(label, "authors", theirs, work)
        stats = [H.mask_agreement(o, t) for o, t in zip(ours.result, theirs.result)]
        frac_diff = 1.0 - float(np.mean([st["entries_equal"] for st in stats]))
        rows_eq = float(np.mean([st["rows_equal"] for st in stats]))
        self.add(benchmark=label, workload=work, ours_s=ours.median, ours_runs=ours.runs, ours_timing="measured",
                 authors_s=theirs.median, authors_runs=theirs.runs, authors_timing="measured", target=50.0,
                 agreement_metric="fraction of mask entries that differ", agreement_value=frac_diff, tolerance=0.0,
                 notes=f"identical masks for {rows_eq:.1%} of (image, k) pairs",
                 pairs=(ours.seconds, theirs.seconds))

    # -- representation-based example importance --------------------------------------------------------------
    def representation(self) -> None:
        a, s = self.args, self.s
        tr1, te1 = loader(s.train_x, s.train_y, 1), loader(s.test_x[: a.n_test], s.test_y[: a.n_test], 1)
        work = (f"{len(s.train_x):,} train × {a.n_test:,} test MNIST images, encoder d=4; authors' loaders of "
                "batch 1 (as ORIG), encoding included")
        for method, label in (("simplex", "SimplEx"), ("dknn", "DKNN")):
            log(f"{label}: ours / authors, interleaved")
            cls = self.le.SimplEx if method == "simplex" else self.le.NearestNeighbours
            kw = {"progress": False} if method == "simplex" else {}
            with authors_hooks(self.le):  # patches lfxai's module globals only: our calls do not touch them
                ours, theirs = H.time_interleaved(
                    lambda: E.example_importance(method, s.model, None, s.train_x, s.test_x[: a.n_test], device=CPU,
                                                 **kw),
                    lambda: cls(s.model).attribute_loader(CPU, tr1, te1, batch_size=50),
                    a.repeats, warmup=(method == "dknn", False))
            self.record(label, "ours", ours, work)
            self.record(label, "authors", theirs, work)
            if method == "simplex":
                ag = H.agreement(ours.result, theirs.result)
                metric, value = "max|ours - authors| / max|authors| (corpus weights)", ag["rel_to_scale"]
                note = (f"1000 Adam steps (lr 1e-3) for all test rows at once vs batches of 50: each row follows "
                        f"the same trajectory; max|Δ| = {ag['max_abs']:.2e}")
            else:
                ag = H.elementwise_agreement(ours.result, theirs.result)
                metric, value = "max element-wise |ours - authors| / |authors| (1/d²)", ag["max_rel"]
                note = f"median element-wise relative difference {ag['median_rel']:.1e}"
            self.add(benchmark=label, workload=work, ours_s=ours.median, ours_runs=ours.runs, ours_timing="measured",
                     authors_s=theirs.median, authors_runs=theirs.runs, authors_timing="measured", target=None,
                     agreement_metric=metric, agreement_value=value, tolerance=SAME_TOL, notes=note,
                     pairs=(ours.seconds, theirs.seconds))

    # -- TracIn ---------------------------------------------------------------------------------------------
    def tracin(self) -> None:
        a, s = self.args, self.s
        n_tr, n_te = len(s.train_x), a.n_test
        C = len(s.checkpoint_paths)
        sub_tr, sub_te = min(a.tracin_sub, n_tr), min(a.tracin_sub, n_te)
        work = f"{n_tr:,} train × {n_te:,} test MNIST images, {C} checkpoints, encoder parameters"
        label = "TracIn"
        log(f"{label}: ours ({n_tr}x{n_te}, {C} checkpoints)")
        ours = H.time_calls(lambda: E.tracin(s.model, "mse", s.train_x, s.test_x[:n_te], s.checkpoint_paths,
                                             device=CPU, progress=False),
                            a.heavy_repeats, warmup=False)
        self.record(label, "ours", ours, work)
        log(f"{label}: authors on a {sub_tr}x{sub_te} subset")
        tr1 = loader(s.train_x[:sub_tr], s.train_y[:sub_tr], 1)
        te1 = loader(s.test_x[:sub_te], s.test_y[:sub_te], 1)
        totals, extrapolated, result, phase_log = [], [], None, ""
        for _ in range(a.heavy_repeats):
            rec = H.PhaseRecorder()
            m = copy.deepcopy(s.model).eval()
            m.checkpoints_files = [str(p) for p in s.checkpoint_paths]
            with tempfile.TemporaryDirectory(dir=s.tmp) as d, authors_hooks(self.le, rec, {id(tr1): "train", id(te1): "test"}):
                t0 = time.perf_counter()
                result = self.le.TracIn(m, nn.MSELoss(), Path(d)).attribute_loader(CPU, tr1, te1)
                total = time.perf_counter() - t0
            phases = {"train": (rec.seconds["train"], n_tr / sub_tr), "test": (rec.seconds["test"], n_te / sub_te),
                      "pairs": (rec.seconds["pairs"], (n_tr * n_te) / (sub_tr * sub_te))}
            totals.append(total)
            extrapolated.append(H.extrapolate(total, phases))
            phase_log = (f"train-gradient loop {rec.seconds['train']:.1f} s (×{n_tr / sub_tr:g}), test-gradient loop "
                         f"{rec.seconds['test']:.1f} s (×{n_te / sub_te:g}), pairwise torch.load loop "
                         f"{rec.seconds['pairs']:.1f} s (×{(n_tr * n_te) / (sub_tr * sub_te):g})")
        measured = H.Timing(totals)
        self.record(label, f"authors (measured, {sub_tr}x{sub_te} subset)", measured, work)
        self.record(label, "authors (extrapolated to full size)", H.Timing(extrapolated), work)
        ag = H.agreement(ours.result[:sub_te, :sub_tr], result)
        full = sub_tr == n_tr and sub_te == n_te
        self.add(benchmark=label, workload=work, ours_s=ours.median, ours_runs=ours.runs, ours_timing="measured",
                 authors_s=float(np.median(extrapolated)), authors_runs=len(extrapolated),
                 authors_timing=("measured" if full else
                                 f"EXTRAPOLATED from a measured {sub_tr} train × {sub_te} test run "
                                 f"(median {measured.median:.1f} s; last run: {phase_log})"),
                 target=100.0, agreement_metric=f"max|ours - authors| / max|authors| on the {sub_te}×{sub_tr} block",
                 agreement_value=ag["rel_to_scale"], tolerance=TRACIN_TOL,
                 notes=(f"max|Δ| = {ag['max_abs']:.2e}; both in eval mode; authors write one file per example and "
                        "checkpoint, then torch.load every (test, train) pair"))

    # -- influence functions ------------------------------------------------------------------------------------
    def influence(self) -> None:
        a, s = self.args, self.s
        n_tr, n_te = len(s.train_x), a.n_test
        depth, bs = a.depth, a.hvp_batch
        ours_sub, auth_sub_tr, auth_sub_te = min(a.if_ours_sub, n_tr), min(a.if_authors_sub, n_tr), n_te
        idx = E._minibatch_indices(len(s.hvp_x), depth, bs, True, a.seed)  # the sequence ours draws for this seed
        work = (f"{n_tr:,} train × {n_te:,} test MNIST images, LiSSA depth {depth}, HVP minibatch {bs} from "
                f"{len(s.hvp_x):,} train images, damp 1e-3, scale 1000")
        label = "Influence functions"
        # ours: the LiSSA cost is linear in the number of train vectors; time a subset of whole HVP chunks.
        log(f"{label}: ours on {ours_sub} train x {n_te} test (depth {depth})")
        t_grad = H.time_calls(lambda: E.per_example_gradients(s.model, "mse", s.test_x[:n_te], device=CPU),
                              a.heavy_repeats, warmup=True)
        ours = H.time_calls(lambda: E.influence_functions(
            s.model, "mse", s.train_x[:ours_sub], s.test_x[:n_te], s.hvp_x, recursion_depth=depth, batch_size=bs,
            seed=a.seed, hvp_chunk_size=a.hvp_chunk, device=CPU, progress=False), a.if_repeats, warmup=False)
        ours_ex = [H.extrapolate(t, {"train-dependent": (t - t_grad.median, n_tr / ours_sub)}) for t in ours.seconds]
        self.record(label, f"ours (measured, {ours_sub}x{n_te} subset)", ours, work)
        self.record(label, "ours (extrapolated to full size)", H.Timing(ours_ex), work)
        # authors
        log(f"{label}: authors on {auth_sub_tr} train x {auth_sub_te} test (depth {depth})")
        tr1 = loader(s.train_x[:auth_sub_tr], s.train_y[:auth_sub_tr], 1)
        te1 = loader(s.test_x[:auth_sub_te], s.test_y[:auth_sub_te], 1)
        hvp_loader = SharedMinibatches(s.hvp_x, idx)
        totals, extrapolated, result, phase_log = [], [], None, ""
        for _ in range(a.if_repeats):
            rec = H.PhaseRecorder()
            m = copy.deepcopy(s.model).eval()
            with tempfile.TemporaryDirectory(dir=s.tmp) as d, authors_hooks(self.le, rec, {id(tr1): "train", id(te1): "test"}):
                t0 = time.perf_counter()
                result = self.le.InfluenceFunctions(m, nn.MSELoss(), Path(d)).attribute_loader(
                    CPU, tr1, te1, hvp_loader, recursion_depth=depth, damp=1e-3, scale=1000)
                total = time.perf_counter() - t0
            f_tr, f_te = n_tr / auth_sub_tr, n_te / auth_sub_te
            phases = {"train": (rec.seconds["train"], f_tr), "test": (rec.seconds["test"], f_te),
                      "pairs": (rec.seconds["pairs"], f_tr * f_te)}
            totals.append(total)
            extrapolated.append(H.extrapolate(total, phases))
            phase_log = (f"per-train-example LiSSA loop {rec.seconds['train']:.1f} s (×{f_tr:g}), test-gradient loop "
                         f"{rec.seconds['test']:.1f} s (×{f_te:g}), pairwise torch.load loop {rec.seconds['pairs']:.2f} s "
                         f"(×{f_tr * f_te:g})")
        measured = H.Timing(totals)
        self.record(label, f"authors (measured, {auth_sub_tr}x{auth_sub_te} subset)", measured, work)
        self.record(label, "authors (extrapolated to full size)", H.Timing(extrapolated), work)
        # lfxai divides by len(train_loader) = its subset size, ours by n_train of its own call: undo both.
        ours_block = ours.result[:auth_sub_te, :auth_sub_tr] * ours_sub
        ag = H.agreement(ours_block, result * auth_sub_tr)
        self.add(benchmark=label, workload=work, ours_s=float(np.median(ours_ex)), ours_runs=len(ours_ex),
                 ours_timing=(f"EXTRAPOLATED from a measured {ours_sub} train × {n_te} test run (median "
                              f"{ours.median:.1f} s; test gradients {t_grad.median:.1f} s kept, the rest ×{n_tr / ours_sub:g})"),
                 authors_s=float(np.median(extrapolated)), authors_runs=len(extrapolated),
                 authors_timing=(f"EXTRAPOLATED from a measured {auth_sub_tr} train × {auth_sub_te} test run "
                                 f"(median {measured.median:.1f} s; last run: {phase_log})"),
                 target=100.0,
                 agreement_metric=(f"shared HVP minibatches (seed {a.seed}): max|ours - authors| / max|authors| on "
                                   f"the {auth_sub_te}×{auth_sub_tr} block (before the 1/n_train factor)"),
                 agreement_value=ag["rel_to_scale"], tolerance=a.if_tol,
                 notes=(f"max|Δ| = {ag['max_abs']:.2e}. Both run the same {depth}×n_train Hessian-vector products on "
                        f"{bs}-image minibatches: that cost is shared, ours lets {a.hvp_chunk} vectors share each "
                        "minibatch's gradient graph and replaces the pairwise file loop by one matrix product"))


def _load1() -> float:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else float("nan")


def wait_until_idle(max_load: float, max_wait_s: float) -> None:
    """Sleep until the 1-minute load average drops below ``max_load`` (other jobs share the CPU), at most
    ``max_wait_s`` seconds; then go on regardless (the load is recorded in machine.txt and runs.csv)."""
    t0 = time.perf_counter()
    while _load1() >= max_load and time.perf_counter() - t0 < max_wait_s:
        log(f"waiting for an idle machine: load {_load1():.2f} >= {max_load}")
        time.sleep(60)


def _nan(v) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _seed(seed: int) -> None:
    np.random.seed(seed)
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------------------------- main
BENCHMARKS = ("features", "masks", "representation", "tracin", "influence")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes for development (results to a temp dir)")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default bench/results)")
    ap.add_argument("--only", action="append", choices=BENCHMARKS, help="run only these benchmarks (repeatable)")
    ap.add_argument("--n-train", type=int, default=1000)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--n-features", type=int, default=1000, help="test images for feature attribution")
    ap.add_argument("--batch-size", type=int, default=250, help="feature-attribution batch (both implementations)")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs of the cheap benchmarks (median reported)")
    ap.add_argument("--heavy-repeats", type=int, default=3, help="timed runs of TracIn (both) and our test gradients")
    ap.add_argument("--if-repeats", type=int, default=1, help="timed runs of the influence-function subsets")
    ap.add_argument("--tracin-sub", type=int, default=100, help="authors' TracIn subset: n train = n test")
    ap.add_argument("--if-ours-sub", type=int, default=32, help="our IF train subset (whole HVP chunks)")
    ap.add_argument("--if-authors-sub", type=int, default=2, help="authors' IF train subset")
    ap.add_argument("--hvp-chunk", type=int, default=16, help="our IF: vectors sharing one minibatch gradient graph")
    ap.add_argument("--depth", type=int, default=100, help="LiSSA recursion depth")
    ap.add_argument("--hvp-batch", type=int, default=300, help="HVP minibatch size")
    ap.add_argument("--if-tol", type=float, default=1e-3, help="IF agreement tolerance (scale-relative)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--allow-synthetic", action="store_true",
                    help="if MNIST or the shipped checkpoint is missing, time a seeded random stand-in (labelled RANDOM) "
                         "instead of stopping")
    ap.add_argument("--wait-idle", type=float, default=None, metavar="LOAD",
                    help="first wait until the 1-min load average is below LOAD (at most --wait-max seconds)")
    ap.add_argument("--wait-max", type=float, default=3 * 3600)
    args = ap.parse_args(argv)
    if args.quick:
        args.n_train, args.n_test, args.n_features, args.batch_size = 40, 50, 60, 30  # n_test: lfxai drops N % 50
        args.repeats, args.heavy_repeats, args.if_repeats = 2, 1, 1
        args.tracin_sub, args.if_ours_sub, args.if_authors_sub, args.hvp_chunk = 10, 4, 2, 4
        args.depth, args.hvp_batch = 3, 50
    if args.out is None:
        args.out = Path(tempfile.gettempdir()) / "lfxai-bench-quick" if args.quick else ROOT / "bench" / "results"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*")
    warnings.filterwarnings("ignore", message=".*Setting forward, backward hooks.*")
    warnings.filterwarnings("ignore", message=".*requires_grad.*")
    warnings.filterwarnings("ignore", message=".*did not already require gradients.*")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.wait_idle is not None:
        wait_until_idle(args.wait_idle, args.wait_max)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lfxai-bench-") as tmp:
        setup = build_setup(args, Path(tmp))
        bench = Bench(args, setup)
        log(f"model: {setup.model_label}")
        log(f"data: {setup.data_label}")
        machine = H.machine_description({
            "model": setup.model_label, "data": setup.data_label,
            "command": " ".join([Path(sys.argv[0]).name] + (sys.argv[1:] if argv is None else list(argv))),
        })
        todo = args.only or list(BENCHMARKS)
        for name in BENCHMARKS:
            if name in todo:
                getattr(bench, name)()
    elapsed = time.perf_counter() - t_start
    if hasattr(os, "getloadavg"):
        machine += "load average at end (1, 5, 15 min): " + ", ".join(f"{v:.2f}" for v in os.getloadavg()) + "\n"
    machine += f"benchmark wall time: {elapsed / 60:.1f} min\n"
    if args.quick:
        machine += "QUICK MODE: tiny sizes, not the benchmark\n"
    df = pd.DataFrame(bench.rows, columns=H.CSV_COLUMNS)
    with atomic_write(args.out / "benchmarks.csv", "w") as f:
        df.to_csv(f, index=False)
    with atomic_write(args.out / "runs.csv", "w") as f:
        pd.DataFrame(bench.runs).to_csv(f, index=False)
    with atomic_write(args.out / "machine.txt", "w") as f:
        f.write(machine)
    H.plot_speedups(bench.rows, args.out / "speedups.png")
    log(f"wrote {args.out}/benchmarks.csv, runs.csv, machine.txt, speedups.png in {elapsed / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
