"""Small shared helpers: devices, seeding, hashing, atomic writes, Markdown escaping and repo-relative paths.

Everything in :mod:`lfxai_utils` that writes a file goes through :func:`atomic_write`
so that an interrupted run never leaves a half-written checkpoint, cache or CSV behind.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import random
import tempfile
from pathlib import Path
from typing import Iterator, Union

import numpy as np
import torch

PathLike = Union[str, os.PathLike]
#: the repository root (this file is ``<root>/lfxai_utils/_utils.py``)
REPO_ROOT = Path(__file__).resolve().parents[1]

#: the verdicts a claim's check can reach (``report.Verdict``; counted on the book's pages by ``book``)
VERDICTS = ("holds", "does not hold", "inconclusive")
#: first word of the last row of ``bench/results/book_timings.csv``: the whole build's wall time
#: (written by :func:`lfxai_utils.book.performance.write_timings`, read by
#: :func:`lfxai_utils.book.performance.render_performance`)
TIMINGS_TOTAL = "total"


def md_escape(text: object) -> str:
    """``text`` as one Markdown table cell: ``|`` escaped, newlines as spaces."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def display_path(path: PathLike, root: PathLike = REPO_ROOT) -> str:
    """``path`` relative to ``root`` (the repository) when inside it, else as given: pages and messages should not
    show this machine's folders."""
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return str(path)


def resolve_device(device: Union[str, torch.device, None] = "auto") -> torch.device:
    """Return a :class:`torch.device`; ``"auto"``/``None`` picks CUDA when present, else CPU."""
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} was requested but CUDA is not available on this machine; "
            "use device='cpu' or device='auto'."
        )
    return dev


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA); return a torch Generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    return torch.Generator().manual_seed(seed)


def sha256_file(path: PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            h.update(block)
    return h.hexdigest()


def md5_file(path: PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex md5 of a file (only for checking publishers' published md5 values)."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            h.update(block)
    return h.hexdigest()


def _current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb") -> Iterator:
    """Open a temporary file next to ``path``; rename it onto ``path`` only if the block succeeds.

    >>> with atomic_write("out.csv", "w") as f:   # doctest: +SKIP
    ...     f.write("a,b\\n")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_torch_save(obj, path: PathLike) -> None:
    """``torch.save`` through :func:`atomic_write`."""
    with atomic_write(path, "wb") as f:
        torch.save(obj, f)
