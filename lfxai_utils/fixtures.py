"""Tiny generated datasets in the REAL on-disk formats, for tests and smoke runs.

``write_fixture(name, root)`` writes files that :func:`lfxai_utils.data.load_dataset` reads with
``data_dir=root`` through exactly the same code path as the real data (same layout, same decoders):

* ``mnist``: ``MNIST/raw/*-ubyte.gz``, IDX with magic numbers 2051 (images) / 2049 (labels);
* ``cifar10`` / ``cifar100``: pickled batches (``data_batch_1..5`` + ``test_batch`` + ``batches.meta``;
  ``train`` / ``test`` + ``meta`` with ``fine_labels`` and ``coarse_labels``);
* ``ecg5000``: UCR ``ECG5000_{TRAIN,TEST}`` as ``.txt`` (``label v1..v140``), ``.ts`` and ``.arff``;
* ``dsprites``: the ``.npz`` with ``imgs``, ``latents_values``, ``latents_classes`` and ``metadata``.

Images are class-dependent blobs / rendered shapes (not noise); labels cover every class (MNIST and
CIFAR-10: 10, CIFAR-100: 100, ECG: 5 with normal = 1 the most frequent, dSprites: 3 shapes), so
class-balanced subsets work. Generated files are not canonical data: their sha256 values are written to
``<root>/LFXAI_CHECKSUMS.json``, the trust file that the loader verifies them against (so a fixture
corrupted after generation still raises :class:`lfxai_utils.data.ChecksumError`).
"""
from __future__ import annotations

import gzip
import json
import pickle
import struct
from pathlib import Path
from typing import Sequence

import numpy as np

from ._utils import atomic_write, sha256_file
from .data import DATASETS, DSPRITES_FILE, TRUST_FILE

__all__ = ["write_fixture", "ecg_label_counts"]

ECG_CLASS_FRACTIONS = (2919, 1767, 96, 194, 24)      # real ECG5000 class counts (classes 1..5)


def _balanced_labels(n: int, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """``arange(n) % C`` shuffled: every class appears, class c exactly ``len(range(c, n, C))`` times."""
    return rng.permutation(np.arange(n) % n_classes).astype(np.int64)


def _blobs(labels: np.ndarray, n_classes: int, size: int, channels: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 (N, C, size, size): a Gaussian blob whose position (and colour) depends on the class, plus noise."""
    n = len(labels)
    angle = 2 * np.pi * labels / n_classes
    cy = size / 2 + size / 4 * np.sin(angle) + rng.normal(0, 1, n)
    cx = size / 2 + size / 4 * np.cos(angle) + rng.normal(0, 1, n)
    sigma = size / 8 * rng.uniform(0.8, 1.2, n)
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    r2 = (yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2
    blob = np.exp(-r2 / (2 * sigma[:, None, None] ** 2))                          # (N, H, W)
    colour = 0.4 + 0.6 * np.stack([np.cos(angle + k * 2 * np.pi / 3) ** 2 for k in range(channels)], 1)
    img = 255 * blob[:, None] * colour[:, :, None, None] + rng.normal(0, 8, (n, channels, size, size))
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def ecg_label_counts(n: int) -> dict[int, int]:
    """UCR class counts (1..5) the ECG fixture uses for ``n`` series: ECG5000's proportions, each class >= 1."""
    if n < 5:
        raise ValueError(f"an ECG5000 fixture needs at least 5 series (one per class); got {n}")
    total = sum(ECG_CLASS_FRACTIONS)
    counts = {c: max(1, round(n * f / total)) for c, f in zip(range(2, 6), ECG_CLASS_FRACTIONS[1:])}
    counts[1] = n - sum(counts.values())
    if counts[1] < max(counts.values()):
        raise ValueError(f"n={n} is too small for normal beats (class 1) to be the most frequent class")
    return dict(sorted(counts.items()))


def _ecg_series(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, 140) z-normalised heartbeat-like curves (a dip and a class-dependent bump), rounded like UCR files."""
    t = np.linspace(0, 1, 140)
    n = len(labels)
    shift = (labels - 1)[:, None] * 0.12 + rng.normal(0, 0.01, (n, 1))
    x = (-3 * np.exp(-((t - 0.1) ** 2) / 0.002) + np.sin(2 * np.pi * t)
         + 1.5 * np.exp(-((t - 0.35 - shift) ** 2) / 0.004) + rng.normal(0, 0.1, (n, 140)))
    x = (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)
    return np.array([[float(f"{v:.7e}") for v in row] for row in x])      # exactly what the text files hold


def _write_ecg(folder: Path, split: str, x: np.ndarray, y: np.ndarray, formats: Sequence[str]) -> list[Path]:
    vals = [[f"{v:.7e}" for v in row] for row in x]
    out = []
    for fmt in formats:
        path = folder / f"ECG5000_{split}.{fmt}"
        if fmt == "txt":
            body = "".join("".join(f"{s:>16}" for s in [f"{float(lab):.7e}", *row]) + "\n" for lab, row in zip(y, vals))
        elif fmt == "arff":
            head = "@relation 'ECG5000'\n" + "".join(f"@attribute att{i} numeric\n" for i in range(1, 141))
            head += "@attribute target {1,2,3,4,5}\n\n@data\n"
            body = head + "".join(",".join(row) + f",{lab}\n" for lab, row in zip(y, vals))
        elif fmt == "ts":
            head = ("#Generated ECG5000-format fixture (lfxai_utils.fixtures)\n@problemName ECG5000\n@timeStamps false\n"
                    "@missing false\n@univariate true\n@equalLength true\n@seriesLength 140\n"
                    "@classLabel true 1 2 3 4 5\n@data\n")
            body = head + "".join(",".join(row) + f":{lab}\n" for lab, row in zip(y, vals))
        else:
            raise ValueError(f"unknown ECG format {fmt!r}; valid: txt, ts, arff")
        path.write_text(body)
        out.append(path)
    return out


def _write_idx(path: Path, arr: np.ndarray, magic: int) -> None:
    header = struct.pack(f">i{arr.ndim}i", magic, *arr.shape)
    path.write_bytes(gzip.compress(header + arr.astype(np.uint8).tobytes(), mtime=0))


def _dsprites_arrays(n: int, rng: np.random.Generator):
    """Distinct grid points (every shape present, sorted in file order) and rendered 64x64 {0,1} images."""
    per_shape = np.bincount(np.arange(n) % 3, minlength=3)
    idx = np.sort(np.concatenate([s * 245760 + rng.choice(245760, k, replace=False) for s, k in enumerate(per_shape)]))
    classes = np.stack([np.zeros_like(idx), idx // 245760, idx // 40960 % 6, idx // 1024 % 40, idx // 32 % 32, idx % 32], 1)
    grids = [np.array([1.0]), np.array([1.0, 2.0, 3.0]), np.linspace(0.5, 1, 6), np.linspace(0, 2 * np.pi, 40),
             np.linspace(0, 1, 32), np.linspace(0, 1, 32)]
    values = np.stack([g[c] for g, c in zip(grids, classes.T)], 1)
    _, shape, scale, theta, px, py = (values[:, k][:, None, None] for k in range(6))
    yy, xx = np.mgrid[:64, :64].astype(np.float64)
    dx, dy = xx[None] - (15.5 + 32 * px), yy[None] - (15.5 + 32 * py)
    u = (np.cos(theta) * dx + np.sin(theta) * dy) / (10 * scale)           # unit = half a square's side
    v = (-np.sin(theta) * dx + np.cos(theta) * dy) / (10 * scale)
    square = np.maximum(abs(u), abs(v)) <= 1
    ellipse = u ** 2 + (2 * v) ** 2 <= 1
    hu, hv = 1.2 * u, -1.2 * v + 0.2
    heart = (hu ** 2 + hv ** 2 - 1) ** 3 - hu ** 2 * hv ** 3 <= 0
    imgs = np.where(shape == 1, square, np.where(shape == 2, ellipse, heart)).astype(np.uint8)
    metadata = {"date": "generated", "description": "lfxai_utils fixture in the dSprites format", "version": 1,
                "latents_names": ("color", "shape", "scale", "orientation", "posX", "posY"),
                "latents_possible_values": dict(zip(("color", "shape", "scale", "orientation", "posX", "posY"), grids)),
                "latents_sizes": np.array([1, 3, 6, 40, 32, 32]), "author": "lfxai_utils.fixtures", "title": "fixture"}
    return imgs, values, classes.astype(np.int64), metadata


def _update_trust(root: Path, paths: Sequence[Path]) -> None:
    trust = root / TRUST_FILE
    files = json.loads(trust.read_text()).get("files", {}) if trust.is_file() else {}
    files.update({p.relative_to(root).as_posix(): sha256_file(p) for p in paths})
    doc = {"format": 1, "note": "sha256 of locally generated data (lfxai_utils.fixtures.write_fixture); the loader "
           "verifies these files against it. Not canonical data.", "files": dict(sorted(files.items()))}
    with atomic_write(trust, "w") as f:
        json.dump(doc, f, indent=1)
    trust.chmod(0o644)


def write_fixture(name: str, root: str | Path, *, n_train: int = 64, n_test: int = 32, seed: int = 0,
                  ecg_formats: Sequence[str] = ("txt", "ts", "arff")) -> Path:
    """Write a tiny generated copy of dataset ``name`` under ``root`` in its real on-disk format.

    Parameters
    ----------
    name
        one of :data:`lfxai_utils.data.DATASETS`.
    root
        data root (created if needed); afterwards ``load_dataset(name, data_dir=root)`` works.
    n_train, n_test
        sizes of the official train/test files. CIFAR-100 raises both to at least 100 so that
        every class is present. dSprites writes a single file of ``n_train + n_test`` images (the loader
        re-splits it 90/10). ECG needs at least 5 per file (class counts: :func:`ecg_label_counts`).
    seed
        seed of the generator (same seed -> identical files).
    ecg_formats
        which of ``"txt"``, ``"ts"``, ``"arff"`` to write for ECG5000 (each holds the same values).

    Returns
    -------
    Path
        ``root``. Its ``LFXAI_CHECKSUMS.json`` lists the sha256 of every file written.
    """
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    if name == "mnist":
        written = _write_mnist(root, n_train, n_test, rng)
    elif name in ("cifar10", "cifar100"):
        written = _write_cifar(root, 10 if name == "cifar10" else 100, n_train, n_test, rng)
    elif name == "ecg5000":
        written = _write_ecg5000(root, n_train, n_test, rng, ecg_formats)
    else:
        written = _write_dsprites(root, n_train + n_test, rng)
    _update_trust(root, written)
    return root


def _write_mnist(root: Path, n_train: int, n_test: int, rng: np.random.Generator) -> list[Path]:
    """MNIST's four gzipped IDX files (``MNIST/raw``) of digit-like blobs."""
    folder = root / "MNIST" / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for split, n in (("train", n_train), ("t10k", n_test)):
        y = _balanced_labels(n, 10, rng)
        x = _blobs(y, 10, 28, 1, rng)[:, 0]
        _write_idx(folder / f"{split}-images-idx3-ubyte.gz", x, 2051)
        _write_idx(folder / f"{split}-labels-idx1-ubyte.gz", y, 2049)
        written += [folder / f"{split}-images-idx3-ubyte.gz", folder / f"{split}-labels-idx1-ubyte.gz"]
    return written


def _pickle(path: Path, obj) -> Path:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)
    return path


def _write_cifar(root: Path, C: int, n_train: int, n_test: int, rng: np.random.Generator) -> list[Path]:
    """CIFAR-10 (5 training batches, a test batch, ``batches.meta``) or CIFAR-100 (``train``, ``test``, ``meta``)
    in the official pickle layout; both splits hold at least one image per class."""
    folder = root / ("cifar-10-batches-py" if C == 10 else "cifar-100-python")
    folder.mkdir(parents=True, exist_ok=True)
    n_train, n_test = max(n_train, C), max(n_test, C)
    batches = {}
    for split, n in (("train", n_train), ("test", n_test)):
        y = _balanced_labels(n, C, rng)
        batches[split] = (_blobs(y, C, 32, 3, rng).reshape(n, 3072), y)
    written: list[Path] = []
    if C == 10:
        x, y = batches["train"]
        parts = [(f"data_batch_{i + 1}", f"training batch {i + 1} of 5", ix)
                 for i, ix in enumerate(np.array_split(np.arange(n_train), 5))]
        parts.append(("test_batch", "testing batch 1 of 1", None))
        for fname, label, ix in parts:
            bx, by = (x[ix], y[ix]) if ix is not None else batches["test"]
            written.append(_pickle(folder / fname, {"batch_label": label, "labels": by.tolist(), "data": bx,
                                                    "filenames": [f"fixture_{i}.png" for i in range(len(by))]}))
        meta = {"num_cases_per_batch": int(np.ceil(n_train / 5)), "num_vis": 3072,
                "label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                                "truck"]}
        written.append(_pickle(folder / "batches.meta", meta))
        return written
    for split in ("train", "test"):
        bx, by = batches[split]
        written.append(_pickle(folder / split, {
            "filenames": [f"fixture_{i}.png" for i in range(len(by))], "batch_label": f"{split}ing batch 1 of 1",
            "fine_labels": by.tolist(), "coarse_labels": (by // 5).tolist(), "data": bx}))
    meta = {"fine_label_names": [f"class_{i}" for i in range(100)],
            "coarse_label_names": [f"superclass_{i}" for i in range(20)]}
    written.append(_pickle(folder / "meta", meta))
    return written


def _write_ecg5000(root: Path, n_train: int, n_test: int, rng: np.random.Generator,
                   formats: Sequence[str]) -> list[Path]:
    """ECG5000's TRAIN and TEST files in each of ``formats`` (class counts of :func:`ecg_label_counts`)."""
    folder = root / "ECG5000"
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for split, n in (("TRAIN", n_train), ("TEST", n_test)):
        y = rng.permutation(np.repeat(np.arange(1, 6), list(ecg_label_counts(n).values())))
        written += _write_ecg(folder, split, _ecg_series(y, rng), y, formats)
    return written


def _write_dsprites(root: Path, n: int, rng: np.random.Generator) -> list[Path]:
    """dSprites' single ``.npz`` of ``n`` images with its latent values, classes and metadata."""
    folder = root / "dsprites"
    folder.mkdir(parents=True, exist_ok=True)
    imgs, values, classes, metadata = _dsprites_arrays(n, rng)
    np.savez_compressed(folder / DSPRITES_FILE, imgs=imgs, latents_values=values, latents_classes=classes,
                        metadata=np.array(metadata, dtype=object))
    return [folder / DSPRITES_FILE]
