"""Datasets of the paper: MNIST, CIFAR-10/100, ECG5000 and dSprites.

:func:`load_dataset` finds the files, verifies them, decodes each file once into whole tensors and
returns the train/test :class:`ArrayDataset` pair the experiments use (``experiments.md`` §1.4).

Where files are looked for (:func:`search_dirs`): the explicit ``data_dir``, then ``$LFXAI_DATA_DIR``,
then ``<repo>/data``, each in the canonical on-disk layout (``data/README.md``)::

    MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz     (torchvision layout)
    cifar-10-batches-py/{data_batch_1..5,test_batch}              (official python tarball)
    cifar-100-python/{train,test}
    ECG5000/ECG5000_{TRAIN,TEST}.{txt,ts,arff}                     (UCR/UEA archive zip)
    ECG5000/ECG5000_TEST_5sigfig.txt                               (offline mirror: test split, values rounded)
    dsprites/dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz

If no folder holds the dataset and ``download=True``, it is downloaded with
``torchvision.datasets.utils`` into ``data_dir`` when given, else into ``<repo>/data``.

Checksums. Every file is verified *before* it is parsed, and a mismatch raises :class:`ChecksumError`:

1. against :data:`KNOWN_CHECKSUMS` (the publishers' md5 values as torchvision ships them, the sha256 of
   the offline mirror's files, and for dSprites the md5 used by independent public loaders);
2. else against ``<root>/LFXAI_CHECKSUMS.json`` (``{"files": {relpath: sha256}}``), the explicit trust
   file written by :func:`lfxai_utils.fixtures.write_fixture` for generated data;
3. else against ``<root>/SHA256SUMS`` (``sha256sum`` format), where files with no published checksum
   (the ECG5000 zip and its extracted files) are recorded, with a warning, the first time they are seen;
4. a file with a known checksum that matches none of these raises; a file with no known checksum at all
   is recorded in ``SHA256SUMS`` (trust on first use) with a :class:`UserWarning`.

Hashes are cached in-process by (path, size, mtime, inode), so repeated loads do not re-hash.
"""
from __future__ import annotations

import gzip
import json
import os
import pickle
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ._utils import atomic_write, md5_file, sha256_file

__all__ = [
    "DATASETS", "ArrayDataset", "DatasetSplits", "load_dataset", "class_balanced_indices", "search_dirs",
    "verify_file", "DatasetNotFoundError", "ChecksumError", "KNOWN_CHECKSUMS", "TRUST_FILE", "TOFU_FILE",
]

#: The datasets :func:`load_dataset` knows.
DATASETS: tuple[str, ...] = ("mnist", "cifar10", "cifar100", "ecg5000", "dsprites")
ECG_MODES: tuple[str, ...] = ("features", "examples")
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = REPO_ROOT / "data"          # read at call time (tests may monkeypatch it)
ENV_VAR = "LFXAI_DATA_DIR"
TRUST_FILE = "LFXAI_CHECKSUMS.json"
TOFU_FILE = "SHA256SUMS"

# ----------------------------------------------------------------------------------------------------------
# Sources and checksums
# ----------------------------------------------------------------------------------------------------------
MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
ECG_URL = "https://www.timeseriesclassification.com/aeon-toolkit/ECG5000.zip"
DSPRITES_FILE = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
DSPRITES_URL = f"https://github.com/google-deepmind/dsprites-dataset/raw/master/{DSPRITES_FILE}"
ECG_FORMATS = (".txt", ".ts", ".arff")         # preference order when several are present

_PUB = "published md5 (as checked by torchvision)"
_MIRROR_PARTIAL = "offline-mirror sha256: the first 10,000 of the 60,000 official MNIST training images"
_MIRROR = "offline-mirror sha256 (identical to the official file)"
_CIFAR_REBUILT = ("offline-mirror sha256: official CIFAR-10 training pixels and labels in official order, pickle "
                  "rebuilt (its md5 is not the published one)")
_CIFAR_TEST_PARTIAL = ("offline-mirror sha256: the first 1,000 of the 10,000 official CIFAR-10 test images "
                       "(pixel-exact, official order and labels; pickle rebuilt)")
_ECG_ROUNDED = ("offline-mirror sha256: all 4,500 ECG5000 test rows in official order and labels, every value "
                "rounded to 5 significant digits (not the official file)")
#: the offline mirror's ECG5000 test split: a clearly named variant of ECG5000_TEST.txt (values rounded)
ECG_TEST_ROUNDED = "ECG5000/ECG5000_TEST_5sigfig.txt"
#: relpath -> ((algorithm, hexdigest, provenance), ...); a file passes if it matches any entry.
KNOWN_CHECKSUMS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "MNIST/raw/train-images-idx3-ubyte.gz": (
        ("md5", "f68b3c2dcbeaaa9fbdd348bbdeb94873", _PUB),
        ("sha256", "d331b5b9f6406277c35a10aead99c41fa62fc74e17be0a08e95f7c2dfd7de514", _MIRROR_PARTIAL)),
    "MNIST/raw/train-labels-idx1-ubyte.gz": (
        ("md5", "d53e105ee54ea40749a09fcbcd1e9432", _PUB),
        ("sha256", "579692ac8b7fe0ea739ece0242f7be9b513acdb58eee4013c9a6940e69322ea8", _MIRROR_PARTIAL)),
    "MNIST/raw/t10k-images-idx3-ubyte.gz": (
        ("md5", "9fb629c4189551a2d022fa330f9573f3", _PUB),
        ("sha256", "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", _MIRROR)),
    "MNIST/raw/t10k-labels-idx1-ubyte.gz": (
        ("md5", "ec29112dd5afa0611ce80d1b7f02629c", _PUB),
        ("sha256", "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", _MIRROR)),
    "cifar-10-python.tar.gz": (("md5", "c58f30108f718f92721af3b95e74349a", _PUB),),
    "cifar-10-batches-py/data_batch_1": (
        ("md5", "c99cafc152244af753f735de768cd75f", _PUB),
        ("sha256", "bd937d9ca58806a9c5cb542d708d54c3f3b3e039c646d3f06cc96ecd43f84eee", _CIFAR_REBUILT)),
    "cifar-10-batches-py/data_batch_2": (
        ("md5", "d4bba439e000b95fd0a9bffe97cbabec", _PUB),
        ("sha256", "7cf3631308ba5131e0b5ffd3ddf08da4433df98dc20edb882c732640cbd2d41a", _CIFAR_REBUILT)),
    "cifar-10-batches-py/data_batch_3": (
        ("md5", "54ebc095f3ab1f0389bbae665268c751", _PUB),
        ("sha256", "5449b8a075d3f2c7ad3199581dc5e10b698c2df6825fd6862a2cb6c8b53a28c1", _CIFAR_REBUILT)),
    "cifar-10-batches-py/data_batch_4": (
        ("md5", "634d18415352ddfa80567beed471001a", _PUB),
        ("sha256", "676988eb2097b2c4e695e655beb344cd909953cf5f82ebc2e106df1b60e32d37", _CIFAR_REBUILT)),
    "cifar-10-batches-py/data_batch_5": (
        ("md5", "482c414d41f54cd18b22e5b47cb7c3cb", _PUB),
        ("sha256", "c91896f9d45b3fdc8b67989a54c0c1d0c3e2a1c70fa8d7a924a3b10a9708f1bb", _CIFAR_REBUILT)),
    "cifar-10-batches-py/test_batch": (
        ("md5", "40351d587109b95175f43aff81a1287e", _PUB),
        ("sha256", "0780f4c5fe3ff1892e68e68b066fa3fc10d71adfd220ce78daa7a225d900ae4c", _CIFAR_TEST_PARTIAL)),
    "cifar-100-python.tar.gz": (("md5", "eb9058c3a382ffc7106e4002c42a8d85", _PUB),),
    "cifar-100-python/train": (("md5", "16019d7e3df5f24257cddd939b257f8d", _PUB),),
    "cifar-100-python/test": (("md5", "f0ef6b0ae62326f3e7ffdfab6717acfc", _PUB),),
    "ECG5000/ECG5000_TRAIN.txt": (
        ("sha256", "0d96aff193311a6dc6111bf0dbd2f7d2313987fbf7a1da4a383d92563876057b",
         "offline-mirror sha256 of the official ECG5000 training split"),),
    ECG_TEST_ROUNDED: (("sha256", "d3b35b6cbdc76a575c7ca6414fc49d54249a4ed2885774b3aeeaddf308699498",
                        _ECG_ROUNDED),),
    f"dsprites/{DSPRITES_FILE}": (
        ("md5", "7da33b31b13a06f4b04a70402ce90c2e",
         "md5 used by independent public dSprites loaders (DeepMind publishes no checksum)"),),
}


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are in none of the searched folders and could not be downloaded."""


class ChecksumError(RuntimeError):
    """A data file does not match its expected checksum (corrupted, truncated or not the expected file)."""

    def __init__(self, path: Path | str, expected: str, actual: str):
        self.path, self.expected, self.actual = str(path), expected, actual
        super().__init__(
            f"Checksum mismatch for {path}: expected {expected}; got {actual}. The file is corrupted, truncated "
            f"or not the expected file, and was not used. Delete it and download it again (download=True), or "
            f"replace it by hand. (Only if you deliberately trust this exact file: list its sha256 in "
            f"{TRUST_FILE} in the data root.)")


# ----------------------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------------------
@dataclass(eq=False)
class ArrayDataset(torch.utils.data.Dataset):
    """In-memory dataset returning ``(x, y)``; ``x`` is converted to float32 on the fly.

    Attributes
    ----------
    data
        uint8 images ``(N, C, H, W)`` or float32 series ``(N, 140, 1)``.
    targets
        int64 labels ``(N,)``.
    scale
        multiplier applied after the float conversion (``1/255`` for 8-bit images, ``1.0`` for the
        {0, 1} dSprites images, ``None`` for float data).
    extras
        per-example side information, indexed like ``data`` (e.g. dSprites latents, ECG UCR labels).
    """

    data: torch.Tensor
    targets: torch.Tensor
    scale: float | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.data) != len(self.targets):
            raise ValueError(f"data has {len(self.data)} rows but targets has {len(self.targets)}")

    def __len__(self) -> int:
        return len(self.targets)

    def _float(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32, copy=True)      # never a view of ``data``
        return x.mul_(self.scale) if self.scale not in (None, 1.0) else x

    def __getitem__(self, i):
        return self._float(self.data[i]), self.targets[i]

    def tensors(self, indices: Sequence[int] | torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Whole float32 inputs and int64 labels at once (optionally only ``indices``): the fast path."""
        if indices is None:
            return self._float(self.data), self.targets.clone()
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self._float(self.data[idx]), self.targets[idx]

    def subset(self, indices: Sequence[int] | torch.Tensor) -> "ArrayDataset":
        """A new :class:`ArrayDataset` holding the rows ``indices`` (data, targets and extras)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return ArrayDataset(self.data[idx], self.targets[idx], self.scale, {k: v[idx] for k, v in self.extras.items()})


@dataclass(eq=False)
class DatasetSplits:
    """Train/test pair plus ``info`` (root, files with sha256 and provenance, sizes, notes, split details)."""

    name: str
    train: ArrayDataset
    test: ArrayDataset
    info: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------------
# Search
# ----------------------------------------------------------------------------------------------------------
def _candidates(data_dir: str | os.PathLike | None = None) -> list[tuple[Path, str]]:
    out: list[tuple[Path, str]] = []
    if data_dir is not None:
        out.append((Path(data_dir).expanduser(), "data_dir argument"))
    if os.environ.get(ENV_VAR):
        out.append((Path(os.environ[ENV_VAR]).expanduser(), f"${ENV_VAR}"))
    out.append((Path(DEFAULT_DATA_DIR), "repository default <repo>/data"))
    seen, unique = set(), []
    for d, origin in out:
        key = os.path.abspath(d)
        if key not in seen:
            seen.add(key)
            unique.append((Path(key), origin))
    return unique


def search_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched for data, in order: ``data_dir``, ``$LFXAI_DATA_DIR``, ``<repo>/data`` (duplicates dropped)."""
    return [d for d, _ in _candidates(data_dir)]


def _ecg_files(root: Path) -> dict[str, str]:
    """{'TRAIN'/'TEST': relpath} of the ECG5000 series files present under ``root`` (first format found).

    The official files come first; without an official test file, the offline mirror's rounded variant
    :data:`ECG_TEST_ROUNDED` stands in for it (accepted only by its own sha256, and always reported).
    """
    out = {}
    for split in ("TRAIN", "TEST"):
        for rel in [f"ECG5000/ECG5000_{split}{ext}" for ext in ECG_FORMATS] + ([ECG_TEST_ROUNDED] if split == "TEST"
                                                                                 else []):
            if (root / rel).is_file():
                out[split] = rel
                break
    return out


def _required(name: str) -> list[str]:
    """Relative paths a complete copy of ``name`` consists of."""
    if name == "mnist":
        return [f"MNIST/raw/{f}" for f in MNIST_FILES]
    if name == "cifar10":
        return [f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)] + ["cifar-10-batches-py/test_batch"]
    if name == "cifar100":
        return ["cifar-100-python/train", "cifar-100-python/test"]
    if name == "ecg5000":
        return ["ECG5000/ECG5000_TRAIN.txt", "ECG5000/ECG5000_TEST.txt"]
    return [f"dsprites/{DSPRITES_FILE}"]


def _missing(name: str, root: Path) -> list[str]:
    if name == "ecg5000":   # usable as soon as one split is present (warns if the other is missing)
        return [] if _ecg_files(root) else _required(name)
    return [rel for rel in _required(name) if not (root / rel).is_file()]


_URLS = {
    "mnist": " or ".join(MNIST_MIRRORS) + " (files " + ", ".join(MNIST_FILES) + ")",
    "cifar10": CIFAR10_URL, "cifar100": CIFAR100_URL, "ecg5000": ECG_URL, "dsprites": DSPRITES_URL,
}
_HOW = {
    "mnist": "the four .gz files as downloaded (do not decompress them)",
    "cifar10": "extract the tarball so that the folder cifar-10-batches-py/ sits in the data folder",
    "cifar100": "extract the tarball so that the folder cifar-100-python/ sits in the data folder",
    "ecg5000": "unzip ECG5000.zip into ECG5000/ (any of .txt, .ts or .arff works; both TRAIN and TEST for the full 5,000 series)",
    "dsprites": "the .npz file as downloaded",
}


def _not_found_message(name: str, cands: list[tuple[Path, str]], reason: str, target: Path) -> str:
    lines = [f"Dataset {name!r} was not found. Folders searched, in order:"]
    for d, origin in cands:
        state = "folder does not exist" if not d.is_dir() else "missing " + ", ".join(_missing(name, d))
        lines.append(f"  - {d}  ({origin}; {state})")
    lines.append(reason)
    lines.append(f"Source URL: {_URLS[name]}")
    lines.append(f"To place the files by hand ({_HOW[name]}), put them in any searched folder, e.g.:")
    lines += [f"  {target / rel}" for rel in _required(name)]
    lines.append(f"or set ${ENV_VAR} to a folder holding them, or pass data_dir=...")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# Verification
# ----------------------------------------------------------------------------------------------------------
_HASH_CACHE: dict[tuple, dict[str, str]] = {}


def _file_hash(path: Path, algo: str) -> str:
    st = path.stat()
    entry = _HASH_CACHE.setdefault((os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ino), {})
    if algo not in entry:
        entry[algo] = sha256_file(path) if algo == "sha256" else md5_file(path)
    return entry[algo]


def _read_trust(root: Path) -> dict[str, str]:
    p = root / TRUST_FILE
    if not p.is_file():
        return {}
    try:
        files = json.loads(p.read_text())["files"]
        return {str(k): str(v).lower() for k, v in files.items()}
    except (ValueError, KeyError, AttributeError, TypeError) as e:
        raise ValueError(f"{p} is not a valid trust file ({e}); expected {{\"files\": {{relpath: sha256}}}}") from e


def _read_sums(root: Path) -> dict[str, str]:
    p = root / TOFU_FILE
    if not p.is_file():
        return {}
    out = {}
    for line in p.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            digest, rel = line.split(maxsplit=1)
            out[rel.strip().lstrip("*")] = digest.lower()
    return out


def _record_sums(root: Path, new: dict[str, str], why: str) -> None:
    """Add ``new`` ({relpath: sha256}) to ``<root>/SHA256SUMS`` and warn that they were trusted on first use."""
    sums = {**_read_sums(root), **new}
    listed = "\n".join(f"  {h}  {r}" for r, h in new.items())
    try:
        with atomic_write(root / TOFU_FILE, "w") as f:
            f.write("# sha256 of data files that have no published checksum, recorded at first use by lfxai_utils\n")
            f.writelines(f"{h}  {r}\n" for r, h in sorted(sums.items()))
        os.chmod(root / TOFU_FILE, 0o644)
        where = f"recorded in {root / TOFU_FILE}; later loads are verified against it"
    except OSError as e:
        where = f"could NOT be recorded ({e}), so this check repeats on every load"
    warnings.warn(f"No published checksum exists for these files ({why}); trusting them on first use, {where}. "
                  f"Compare with a trusted copy if you can:\n{listed}", UserWarning, stacklevel=3)


def verify_file(root: Path | str, rel: str) -> dict:
    """Verify ``root/rel`` before use; return ``{"path", "size", "sha256", "verified_by"}``.

    Order: :data:`KNOWN_CHECKSUMS`, then ``LFXAI_CHECKSUMS.json`` (generated data), then ``SHA256SUMS``
    (recorded at first use). A file with a known checksum that matches nothing raises
    :class:`ChecksumError`; a file with no checksum anywhere is hashed, recorded in ``SHA256SUMS`` and
    reported with a warning (trust on first use).
    """
    root = Path(root)
    path = root / rel
    sha = _file_hash(path, "sha256")
    rec = {"path": rel, "size": path.stat().st_size, "sha256": sha}
    known = sorted(KNOWN_CHECKSUMS.get(rel, ()), key=lambda k: k[0] != "sha256")   # sha256 first: no extra md5
    for algo, digest, label in known:
        if _file_hash(path, algo) == digest:
            return {**rec, "verified_by": label}
    for fname, table in ((TRUST_FILE, _read_trust(root)), (TOFU_FILE, _read_sums(root))):
        if rel in table:
            if table[rel] != sha:
                raise ChecksumError(path, f"sha256 {table[rel]} (listed in {root / fname})", f"sha256 {sha}")
            return {**rec, "verified_by": f"sha256 listed in {fname}"}
    if known:
        expected = " or ".join(f"{a} {d} ({lab})" for a, d, lab in known)
        actual = ", ".join(f"{a} {_file_hash(path, a)}" for a in sorted({a for a, _, _ in known} | {"sha256"}))
        raise ChecksumError(path, expected, actual)
    _record_sums(root, {rel: sha}, f"{rel} under {root}")
    return {**rec, "verified_by": f"sha256 recorded at first use in {TOFU_FILE} (no published checksum)"}


# ----------------------------------------------------------------------------------------------------------
# Download
# ----------------------------------------------------------------------------------------------------------
#: Seconds to wait for a dataset host to accept a connection (and for any socket operation while downloading):
#: an offline machine gets its "not found" error in seconds instead of hanging.
CONNECT_TIMEOUT = 5.0


def _hosts(name: str) -> list[tuple[str, int]]:
    from urllib.parse import urlsplit

    urls = [m for m in MNIST_MIRRORS] if name == "mnist" else [{"cifar10": CIFAR10_URL, "cifar100": CIFAR100_URL,
                                                                 "ecg5000": ECG_URL, "dsprites": DSPRITES_URL}[name]]
    out = []
    for u in urls:
        parts = urlsplit(u)
        out.append((parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)))
    return out


def check_reachable(name: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Raise ``ConnectionError`` unless some host that serves ``name`` accepts a TCP connection within ``timeout`` s."""
    import socket

    errors = []
    for host, port in _hosts(name):
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            return
        except OSError as err:   # includes socket.timeout and DNS failures (socket.gaierror)
            errors.append(f"{host}:{port}: {type(err).__name__}: {err or 'timed out'}")
    raise ConnectionError("no download host reachable (" + "; ".join(errors) + ")")


def _download(name: str, root: Path) -> None:
    """Download ``name`` into ``root`` (checksum-verified); fails within seconds when its hosts are unreachable."""
    import socket

    check_reachable(name)
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(max(CONNECT_TIMEOUT, 30.0))    # a stalled transfer fails instead of hanging
    try:
        _download_files(name, root)
    finally:
        socket.setdefaulttimeout(old)


def _download_files(name: str, root: Path) -> None:
    from torchvision.datasets.utils import download_url, extract_archive

    root.mkdir(parents=True, exist_ok=True)
    if name == "mnist":
        for fname in MNIST_FILES:
            md5 = KNOWN_CHECKSUMS[f"MNIST/raw/{fname}"][0][1]
            errors = []
            for mirror in MNIST_MIRRORS:
                try:
                    download_url(mirror + fname, root / "MNIST" / "raw", fname, md5=md5)
                    break
                except Exception as e:  # noqa: BLE001 - try the next mirror
                    errors.append(f"{mirror}{fname}: {e}")
            else:
                raise RuntimeError("; ".join(errors))
    elif name in ("cifar10", "cifar100"):
        url = CIFAR10_URL if name == "cifar10" else CIFAR100_URL
        fname = url.rsplit("/", 1)[1]
        download_url(url, root, fname, md5=KNOWN_CHECKSUMS[fname][0][1])
        verify_file(root, fname)
        extract_archive(str(root / fname), str(root))
    elif name == "ecg5000":
        folder = root / "ECG5000"
        download_url(ECG_URL, folder, "ECG5000.zip")
        zip_rec = verify_file(root, "ECG5000/ECG5000.zip")   # no published checksum: recorded on first download
        extract_archive(str(folder / "ECG5000.zip"), str(folder))
        new = {}
        for rel in (f"ECG5000/ECG5000_{s}{e}" for s in ("TRAIN", "TEST") for e in ECG_FORMATS):
            if (root / rel).is_file():
                if rel in KNOWN_CHECKSUMS:
                    verify_file(root, rel)
                elif rel not in _read_sums(root):
                    new[rel] = _file_hash(root / rel, "sha256")
        if new:
            _record_sums(root, new, f"extracted from ECG5000.zip, sha256 {zip_rec['sha256']}")
    else:
        download_url(DSPRITES_URL, root / "dsprites", DSPRITES_FILE, md5=KNOWN_CHECKSUMS[f"dsprites/{DSPRITES_FILE}"][0][1])


# ----------------------------------------------------------------------------------------------------------
# Decoders (each reads one whole file with numpy)
# ----------------------------------------------------------------------------------------------------------
def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Decode an IDX(.gz) file (MNIST): big-endian magic (2051 images, 2049 labels), dims, then uint8 data."""
    buf = path.read_bytes()
    if buf[:2] == b"\x1f\x8b":
        buf = gzip.decompress(buf)
    if len(buf) < 8 or struct.unpack(">i", buf[:4])[0] != magic:
        raise ValueError(f"{path} is not an IDX file with magic number {magic}")
    ndim = buf[3]
    dims = struct.unpack(f">{ndim}i", buf[4:4 + 4 * ndim])
    data = np.frombuffer(buf, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} but holds {data.size} values (truncated?)")
    return data.reshape(dims)


class _CifarUnpickler(pickle.Unpickler):
    """Only what CIFAR batches need (numpy arrays, lists, strings): never arbitrary code."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")
        return super().find_class(module, name)


def _read_cifar(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        d = _CifarUnpickler(f, encoding="latin1").load()
    d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
    x = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    y = np.asarray(d[label_key], dtype=np.int64)
    if len(x) != len(y):
        raise ValueError(f"{path}: {len(x)} images but {len(y)} labels")
    return x, y


def _read_ucr(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a univariate UCR/UEA file (.txt ``label v1 .. vT``; .arff ``v1,..,vT,label``; .ts ``v1,..,vT:label``)."""
    text = path.read_text()
    if path.suffix == ".txt":
        rows = [r for r in text.splitlines() if r.strip()]
        flat = " ".join(rows).split()
    else:
        lines = iter(text.splitlines())
        for line in lines:
            if line.strip().lower().startswith("@data"):
                break
        else:
            raise ValueError(f"{path}: no @data line")
        comment = "%" if path.suffix == ".arff" else "#"
        rows = [r.strip() for r in lines if r.strip() and not r.lstrip().startswith(comment)]
        flat = ",".join(rows).replace(":", ",").replace("'", "").replace('"', "").split(",")
    try:
        arr = np.array(flat, dtype=np.float64)
    except ValueError as e:
        raise ValueError(f"{path}: non-numeric value ({e})") from e
    if not rows or arr.size % len(rows):
        raise ValueError(f"{path}: rows of unequal length")
    arr = arr.reshape(len(rows), -1)
    y, x = (arr[:, 0], arr[:, 1:]) if path.suffix == ".txt" else (arr[:, -1], arr[:, :-1])
    if not np.all(y == np.round(y)):
        raise ValueError(f"{path}: class labels are not integers")
    return x, y.astype(np.int64)


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear antialiased resize of a uint8 batch, as ``torchvision.transforms.Resize(size)`` on a tensor."""
    if x.shape[-2:] == (size, size):
        return x
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF
    return TF.resize(x, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True)


def _random_split(n: int, fractions: Sequence[float], seed: int) -> list[torch.Tensor]:
    """Index sets of ``torch.utils.data.random_split(range(n), fractions, generator=manual_seed(seed))``."""
    parts = torch.utils.data.random_split(range(n), list(fractions), generator=torch.Generator().manual_seed(seed))
    return [torch.as_tensor(p.indices, dtype=torch.long) for p in parts]


# ----------------------------------------------------------------------------------------------------------
# Per-dataset loaders: (root, verified files, options) -> (train, test, info additions)
# ----------------------------------------------------------------------------------------------------------
def _load_mnist(root, recs, image_size, bar, **_):
    raw = root / "MNIST" / "raw"
    arrays = {f: _read_idx(raw / f, 2051 if "images" in f else 2049) for f in bar(MNIST_FILES)}
    out = []
    for split in ("train", "t10k"):
        x = torch.from_numpy(arrays[f"{split}-images-idx3-ubyte.gz"].copy()).unsqueeze(1)
        y = torch.from_numpy(arrays[f"{split}-labels-idx1-ubyte.gz"].astype(np.int64))
        out.append(ArrayDataset(_resize(x, image_size or 28), y, 1 / 255))
    notes = []
    if any(r["verified_by"] == _MIRROR_PARTIAL for r in recs):
        notes.append(f"partial MNIST mirror: only {len(out[0]):,} of the 60,000 training images are present "
                     "(the first 10,000 in official order); the test set is complete")
    return out[0], out[1], {"image_size": image_size or 28}, notes


def _partial_notes(recs) -> list[str]:
    """A note for every file that was accepted as a labelled variant of the official one (never silent)."""
    notes = []
    for r in recs:
        if r["verified_by"] == _CIFAR_TEST_PARTIAL:
            notes.append("partial CIFAR-10 test split: only the first 1,000 of the 10,000 official test images are "
                         "present (offline mirror; pixel-exact, official order and labels); the training set is "
                         "complete")
        elif r["verified_by"] == _ECG_ROUNDED:
            notes.append(f"ECG5000 test split from {r['path']}: all 4,500 official rows and labels, but every value "
                         "rounded to 5 significant digits (offline mirror, not the official ECG5000_TEST file)")
    return notes


def _load_cifar(root, recs, image_size, bar, *, name, **_):
    key = "labels" if name == "cifar10" else "fine_labels"
    rels = _required(name)
    parts = [_read_cifar(root / rel, key) for rel in bar(rels)]
    tr, te = parts[:-1], parts[-1]
    train = ArrayDataset(_resize(torch.from_numpy(np.concatenate([p[0] for p in tr])), image_size or 32),
                         torch.from_numpy(np.concatenate([p[1] for p in tr])), 1 / 255)
    test = ArrayDataset(_resize(torch.from_numpy(te[0]), image_size or 32), torch.from_numpy(te[1]), 1 / 255)
    info = {"image_size": image_size or 32, "n_classes": 10 if name == "cifar10" else 100}
    return train, test, info, _partial_notes(recs)


def _load_ecg(root, recs, image_size, bar, *, ecg_mode, split_seed, **_):
    files = _ecg_files(root)
    xs, ys = zip(*(_read_ucr(root / files[s]) for s in bar(["TRAIN", "TEST"]) if s in files))
    x, ucr = np.concatenate(xs), np.concatenate(ys)
    if x.shape[1] != 140 or not np.isin(ucr, [1, 2, 3, 4, 5]).all():
        raise ValueError(f"{root / 'ECG5000'}: expected 140 time steps and classes 1-5, got {x.shape[1]} steps "
                         f"and classes {sorted(set(ucr.tolist()))}")
    x = torch.from_numpy(x.astype(np.float32)).unsqueeze(-1)
    ucr = torch.from_numpy(ucr)
    y = (ucr != 1).long()                       # 0 = normal beat (class 1), 1 = abnormal (classes 2-5)
    info = {"mode": ecg_mode, "split_fractions": (0.8, 0.2),
            "class_counts": {int(c): int((ucr == c).sum()) for c in range(1, 6)}}
    notes = _partial_notes(recs)
    if len(files) < 2:
        (have, rel), = files.items()
        lack = "TEST" if have == "TRAIN" else "TRAIN"
        notes.append(f"only {rel} is present ({len(x)} series: the official {have.lower()} split only, not all "
                     f"5,000 series); add ECG5000_{lack}.txt (or .ts / .arff) to {root / 'ECG5000'} for the full "
                     "dataset")
    if ecg_mode == "features":
        normal = torch.nonzero(y == 0).squeeze(1)
        abnormal = torch.nonzero(y == 1).squeeze(1)
        train = ArrayDataset(x[normal], y[normal], None, {"ucr_label": ucr[normal]})
        test = ArrayDataset(x[abnormal], y[abnormal], None, {"ucr_label": ucr[abnormal]})
        tr_idx, val_idx = _random_split(len(train), [0.8, 0.2], split_seed)
        info.update(baseline=train.data.mean(0), train_indices=tr_idx, val_indices=val_idx)
    else:
        tr_idx, te_idx = _random_split(len(x), [0.8, 0.2], split_seed)
        train = ArrayDataset(x[tr_idx], y[tr_idx], None, {"ucr_label": ucr[tr_idx]})
        test = ArrayDataset(x[te_idx], y[te_idx], None, {"ucr_label": ucr[te_idx]})
        info.update(train_indices=tr_idx, test_indices=te_idx)
    return train, test, info, notes


def _load_dsprites(root, recs, image_size, bar, *, split_seed, **_):
    with np.load(root / "dsprites" / DSPRITES_FILE, allow_pickle=False) as z:   # 'metadata' (pickled) is not read
        arrays = {k: z[k] for k in bar(["imgs", "latents_values", "latents_classes"])}
    imgs, lv, lc = arrays["imgs"], arrays["latents_values"], arrays["latents_classes"]
    if imgs.ndim != 3 or lv.shape != (len(imgs), 6) or lc.shape != (len(imgs), 6):
        raise ValueError(f"unexpected dSprites arrays: imgs {imgs.shape}, latents {lv.shape}, {lc.shape}")
    tr_idx, te_idx = _random_split(len(imgs), [0.9, 0.1], split_seed)
    imgs_t, lv_t, lc_t = torch.from_numpy(imgs), torch.from_numpy(lv), torch.from_numpy(lc.astype(np.int64))
    out = []
    for idx in (tr_idx, te_idx):
        x = _resize(imgs_t[idx].unsqueeze(1), image_size or imgs.shape[-1])
        out.append(ArrayDataset(x, lc_t[idx, 1].clone(), 1.0,
                                {"latents_values": lv_t[idx], "latents_classes": lc_t[idx], "index": idx}))
    return out[0], out[1], {"image_size": image_size or imgs.shape[-1], "train_indices": tr_idx,
                            "test_indices": te_idx, "split_fractions": (0.9, 0.1)}, []


_LOADERS = {"mnist": _load_mnist, "cifar10": _load_cifar, "cifar100": _load_cifar,
            "ecg5000": _load_ecg, "dsprites": _load_dsprites}


def _used_files(name: str, root: Path) -> list[str]:
    return list(_ecg_files(root).values()) if name == "ecg5000" else _required(name)


# ----------------------------------------------------------------------------------------------------------
# Public entry points
# ----------------------------------------------------------------------------------------------------------
def load_dataset(name: str, *, data_dir: str | os.PathLike | None = None, download: bool = True,
                 image_size: int | None = None, ecg_mode: str = "features", split_seed: int = 42,
                 progress: bool = True) -> DatasetSplits:
    """Load a dataset of the paper as train/test :class:`ArrayDataset` s (experiments.md §1.4).

    Parameters
    ----------
    name
        one of :data:`DATASETS` (case-insensitive).
    data_dir
        folder searched first (then ``$LFXAI_DATA_DIR``, then ``<repo>/data``); also the download
        target when given (else ``<repo>/data``).
    download
        download when no searched folder holds the files. Files with no published checksum
        (ECG5000) get their sha256 recorded in ``<root>/SHA256SUMS`` with a warning, and later loads are
        verified against it.
    image_size
        images only; resize once at load with bilinear antialiased interpolation (as torchvision's
        ``Resize`` on a tensor), e.g. 32 for the MNIST VAEs. Default: native size (28, 32, 32, 64).
    ecg_mode
        ``"features"``: train = all normal beats (class 1), test = all abnormal beats; ``info`` holds
        ``baseline`` (mean normal beat, (140, 1)) and the 80/20 ``train_indices``/``val_indices`` into the
        train set. ``"examples"``: all series, labels 0 normal / 1 abnormal, random 80/20 train/test split.
        Labels are binary in both modes; ``extras["ucr_label"]`` keeps the UCR class 1-5.
    split_seed
        seed of the random splits (ECG, dSprites 90/10), as ``torch.utils.data.random_split``.
    progress
        show a progress bar while decoding.

    Returns
    -------
    DatasetSplits
        with ``info`` keys: name, root, files (path, size, sha256, verified_by), n_train, n_test,
        split_seed, notes, plus dataset-specific ones. Images are uint8 in memory (``x`` floats in [0, 1] on
        access), series float32 ``(N, 140, 1)``; labels int64 (dSprites: shape class 0/1/2, latents in extras).

    Raises
    ------
    ValueError
        unknown name / ecg_mode / image_size.
    DatasetNotFoundError
        the files are nowhere and download is off or failed (message lists every
        searched folder, the URL and the exact paths to place by hand).
    ChecksumError
        a file does not match its expected checksum; it is never parsed.
    """
    key = str(name).lower().replace("-", "").replace("_", "")
    if key not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    if ecg_mode not in ECG_MODES:
        raise ValueError(f"Unknown ecg_mode {ecg_mode!r}; valid values: {', '.join(ECG_MODES)}")
    if image_size is not None and (key == "ecg5000" or int(image_size) <= 0):
        raise ValueError(f"image_size applies to image datasets only and must be a positive int; got {image_size!r} "
                         f"for {key!r}")
    cands = _candidates(data_dir)
    target = cands[0][0] if data_dir is not None else Path(DEFAULT_DATA_DIR).absolute()   # download target
    root = next((d for d, _ in cands if d.is_dir() and not _missing(key, d)), None)
    if root is None:
        if not download:
            raise DatasetNotFoundError(_not_found_message(key, cands, "Download is off (download=False).", target))
        root = target
        try:
            _download(key, root)
        except ChecksumError:
            raise
        except Exception as e:  # noqa: BLE001 - report any download failure as a missing dataset
            archives = {"cifar10": ["cifar-10-python.tar.gz"], "cifar100": ["cifar-100-python.tar.gz"]}
            for rel in archives.get(key, []) + _required(key):   # a corrupted download is a checksum error
                if (root / rel).is_file() and rel in KNOWN_CHECKSUMS:
                    verify_file(root, rel)
            raise DatasetNotFoundError(_not_found_message(
                key, cands, f"Download into {root} failed: {type(e).__name__}: {e}", target)) from e
        if _missing(key, root):
            raise DatasetNotFoundError(_not_found_message(
                key, cands, f"Download into {root} finished but files are still missing: {_missing(key, root)}",
                target))

    recs = [verify_file(root, rel) for rel in _used_files(key, root)]     # before anything is parsed

    def bar(items):
        return tqdm(items, desc=f"decoding {key}", disable=not progress, leave=False)

    train, test, extra, notes = _LOADERS[key](root, recs, image_size, bar, name=key, ecg_mode=ecg_mode,
                                              split_seed=split_seed)
    for note in notes:   # partial data is always reported loudly
        warnings.warn(f"{key}: {note}", UserWarning, stacklevel=2)
    if any(r["verified_by"].endswith(TRUST_FILE) for r in recs):
        notes.append(f"files verified against {root / TRUST_FILE}: locally generated data (e.g. a test fixture), "
                     "not the canonical dataset")
    info = {"name": key, "root": str(root), "files": recs, "n_train": len(train), "n_test": len(test),
            "split_seed": split_seed, "notes": notes, **extra}
    return DatasetSplits(key, train, test, info)


def class_balanced_indices(labels: torch.Tensor | Sequence[int], n: int, n_classes: int | None = None) -> torch.Tensor:
    """ORIG class-balanced subset: for ``i`` in ``0..n-1`` take the ``(i // C)``-th example of class ``i % C``.

    Parameters
    ----------
    labels
        int labels ``(N,)`` in ``0..C-1``.
    n
        subset size.
    n_classes
        C (default ``labels.max() + 1``).

    Returns
    -------
    Tensor
        int64 ``(n,)``: positions into ``labels`` (in the rule's order).

    Raises
    ------
    ValueError
        if some class has fewer examples than the rule needs.
    """
    labels = torch.as_tensor(labels).reshape(-1).long()
    C = int(n_classes) if n_classes is not None else int(labels.max()) + 1
    if n < 0 or C <= 0:
        raise ValueError(f"need n >= 0 and n_classes > 0; got n={n}, n_classes={C}")
    out = torch.empty(n, dtype=torch.long)
    for c in range(min(C, n)):
        need = len(range(c, n, C))
        pos = torch.nonzero(labels == c).squeeze(1)
        if len(pos) < need:
            raise ValueError(f"class_balanced_indices: class {c} has {len(pos)} examples but n={n} with "
                             f"{C} classes needs {need}; lower n or use a larger source set")
        out[c::C] = pos[:need]
    return out
