"""Tests of lfxai_utils.data and lfxai_utils.fixtures (offline, seconds).

Every dataset is loaded through ``load_dataset`` from generated fixtures in the real file formats and
compared with an independent decoding of the same files. When ``$LFXAI_DATA_DIR`` is set (CI points it at
the offline mirror), the real MNIST test set and ECG5000 training file are checked too.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from lfxai_utils import data as D
from lfxai_utils._utils import sha256_file
from lfxai_utils.fixtures import ecg_label_counts, write_fixture

REAL_DIR = os.environ.get(D.ENV_VAR)        # captured before the autouse fixture clears it


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No test sees the developer's <repo>/data or $LFXAI_DATA_DIR unless it sets them itself."""
    empty = tmp_path / "repo_default_data"
    empty.mkdir()
    monkeypatch.setattr(D, "DEFAULT_DATA_DIR", empty)
    monkeypatch.delenv(D.ENV_VAR, raising=False)
    monkeypatch.setattr(D, "check_reachable", lambda *a, **k: None)   # downloads are faked; no host is asked
    return empty


def load(name, root, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # fixtures load without any warning
        return D.load_dataset(name, data_dir=root, download=False, progress=False, **kw)


def balanced_counts(n, C):
    return [len(range(c, n, C)) for c in range(C)]


# ------------------------------------------------------------------------------------------------ images
def test_mnist_fixture_matches_independent_idx_decoding(tmp_path):
    root = write_fixture("mnist", tmp_path / "d", n_train=50, n_test=30)
    s = load("mnist", root)
    for ds, split, n in ((s.train, "train", 50), (s.test, "t10k", 30)):
        raw = gzip.decompress((root / f"MNIST/raw/{split}-images-idx3-ubyte.gz").read_bytes())
        lab = gzip.decompress((root / f"MNIST/raw/{split}-labels-idx1-ubyte.gz").read_bytes())
        assert int.from_bytes(raw[:4], "big") == 2051 and int.from_bytes(lab[:4], "big") == 2049
        imgs = np.frombuffer(raw, np.uint8, offset=16).reshape(n, 1, 28, 28)
        assert ds.data.dtype == torch.uint8 and ds.data.shape == (n, 1, 28, 28) and ds.scale == 1 / 255
        assert torch.equal(ds.data, torch.from_numpy(imgs.copy()))
        assert torch.equal(ds.targets, torch.from_numpy(np.frombuffer(lab, np.uint8, offset=8).astype(np.int64)))
        assert ds.targets.bincount(minlength=10).tolist() == balanced_counts(n, 10)
        x, y = ds.tensors()
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert torch.allclose(x, torch.from_numpy(imgs.astype(np.float32)) / 255)
        assert 0 <= x.min() and x.max() <= 1 and x.max() > 0.5           # blobs, not blank
        x3, y3 = ds[3]
        assert torch.equal(x3, x[3]) and y3 == y[3]
        assert torch.equal(ds.tensors([1, 4])[0], x[[1, 4]])
    assert s.info["n_train"] == 50 and s.info["n_test"] == 30 and s.info["image_size"] == 28
    assert all(f["verified_by"] == f"sha256 listed in {D.TRUST_FILE}" for f in s.info["files"])
    assert any("generated" in n for n in s.info["notes"])


def test_mnist_resize_32_matches_torchvision_resize(tmp_path):
    from torchvision import transforms

    root = write_fixture("mnist", tmp_path / "d", n_train=20, n_test=10)
    s28, s32 = load("mnist", root), load("mnist", root, image_size=32)
    assert s32.train.data.shape == (20, 1, 32, 32) and s32.train.data.dtype == torch.uint8
    assert torch.equal(s32.train.data, transforms.Resize(32)(s28.train.data))
    assert torch.equal(s32.test.data, transforms.Resize(32)(s28.test.data))
    x, _ = s32.train.tensors()
    assert 0 <= x.min() and x.max() <= 1 and s32.info["image_size"] == 32


@pytest.mark.parametrize("name,C", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_fixture_matches_independent_unpickling(tmp_path, name, C):
    root = write_fixture(name, tmp_path / "d", n_train=40, n_test=20)
    s = load(name, root)
    n_train, n_test = max(40, C), max(20, C)                 # CIFAR-100 fixtures hold every class
    folder = root / ("cifar-10-batches-py" if C == 10 else "cifar-100-python")
    files = [f"data_batch_{i}" for i in range(1, 6)] if C == 10 else ["train"]
    key = "labels" if C == 10 else "fine_labels"
    batches = [pickle.load(open(folder / f, "rb"), encoding="latin1") for f in files]
    x = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32)
    y = np.concatenate([b[key] for b in batches])
    assert s.train.data.shape == (n_train, 3, 32, 32) and s.test.data.shape == (n_test, 3, 32, 32)
    assert torch.equal(s.train.data, torch.from_numpy(x)) and torch.equal(s.train.targets, torch.from_numpy(y))
    assert s.train.targets.bincount(minlength=C).tolist() == balanced_counts(n_train, C)
    assert s.test.targets.bincount(minlength=C).tolist() == balanced_counts(n_test, C)
    xt, _ = s.test.tensors()
    assert xt.shape == (n_test, 3, 32, 32) and 0 <= xt.min() and xt.max() <= 1
    # class-balanced subsets work on the fixture (ORIG rule)
    idx = D.class_balanced_indices(s.train.targets, 2 * C if C == 10 else C, C)
    assert torch.equal(s.train.targets[idx], torch.arange(len(idx)) % C)


# ------------------------------------------------------------------------------------------------ ECG5000
def read_txt(path):
    a = np.loadtxt(path)
    return a[:, 1:], a[:, 0].astype(np.int64)


@pytest.mark.parametrize("fmt", ["txt", "ts", "arff"])
def test_ecg_each_format_alone_parses_identically(tmp_path, fmt):
    ref = write_fixture("ecg5000", tmp_path / "ref", ecg_formats=("txt",))
    root = write_fixture("ecg5000", tmp_path / fmt, ecg_formats=(fmt,))
    assert sorted(p.name for p in (root / "ECG5000").iterdir()) == [f"ECG5000_TEST.{fmt}", f"ECG5000_TRAIN.{fmt}"]
    s = load("ecg5000", root, ecg_mode="examples")
    xs, ys = zip(*(read_txt(ref / f"ECG5000/ECG5000_{sp}.txt") for sp in ("TRAIN", "TEST")))
    x_all, ucr_all = np.concatenate(xs), np.concatenate(ys)
    idx = torch.cat([s.info["train_indices"], s.info["test_indices"]])
    assert sorted(idx.tolist()) == list(range(96))
    got_x = torch.cat([s.train.data, s.test.data])
    assert got_x.dtype == torch.float32 and got_x.shape == (96, 140, 1)
    assert torch.equal(got_x, torch.from_numpy(x_all.astype(np.float32))[idx].unsqueeze(-1))
    assert torch.equal(torch.cat([s.train.extras["ucr_label"], s.test.extras["ucr_label"]]),
                       torch.from_numpy(ucr_all)[idx])


def test_ecg_fixture_class_counts():
    assert ecg_label_counts(64) == {1: 37, 2: 23, 3: 1, 4: 2, 5: 1}
    assert ecg_label_counts(32) == {1: 18, 2: 11, 3: 1, 4: 1, 5: 1}
    with pytest.raises(ValueError):
        ecg_label_counts(4)


def test_ecg_features_mode(tmp_path):
    root = write_fixture("ecg5000", tmp_path / "d")            # 64 + 32 series
    s = load("ecg5000", root, ecg_mode="features", split_seed=3)
    n_normal = 37 + 18
    assert len(s.train) == n_normal and len(s.test) == 96 - n_normal
    assert (s.train.targets == 0).all() and (s.train.extras["ucr_label"] == 1).all()
    assert (s.test.targets == 1).all() and set(s.test.extras["ucr_label"].tolist()) == {2, 3, 4, 5}
    assert s.info["class_counts"] == {1: 55, 2: 34, 3: 2, 4: 3, 5: 2}
    xs, ys = zip(*(read_txt(root / f"ECG5000/ECG5000_{sp}.txt") for sp in ("TRAIN", "TEST")))
    x, y = np.concatenate(xs), np.concatenate(ys)
    assert torch.equal(s.train.data[:, :, 0], torch.from_numpy(x[y == 1].astype(np.float32)))   # file order
    base = s.info["baseline"]
    assert base.shape == (140, 1) and torch.allclose(base[:, 0], torch.from_numpy(x[y == 1].mean(0)).float(), atol=1e-6)
    tr, va = s.info["train_indices"], s.info["val_indices"]
    assert len(tr) == 44 and len(va) == 11 and sorted(torch.cat([tr, va]).tolist()) == list(range(n_normal))
    assert s.train.scale is None and s.train.tensors()[0].shape == (n_normal, 140, 1)


def test_ecg_examples_mode_and_seed(tmp_path):
    root = write_fixture("ecg5000", tmp_path / "d")
    a = load("ecg5000", root, ecg_mode="examples", split_seed=1)
    b = load("ecg5000", root, ecg_mode="examples", split_seed=1)
    c = load("ecg5000", root, ecg_mode="examples", split_seed=2)
    assert len(a.train) == 77 and len(a.test) == 19               # random_split(96, [0.8, 0.2])
    for ds in (a.train, a.test):
        assert torch.equal(ds.targets, (ds.extras["ucr_label"] != 1).long())
    assert int(torch.cat([a.train.targets, a.test.targets]).sum()) == 96 - 55
    ref = torch.utils.data.random_split(range(96), [0.8, 0.2], generator=torch.Generator().manual_seed(1))
    assert a.info["train_indices"].tolist() == ref[0].indices and a.info["test_indices"].tolist() == ref[1].indices
    assert torch.equal(a.info["train_indices"], b.info["train_indices"])
    assert not torch.equal(a.info["train_indices"], c.info["train_indices"])


def test_ecg_train_file_only_warns(tmp_path):
    root = write_fixture("ecg5000", tmp_path / "d", ecg_formats=("arff",))
    (root / "ECG5000/ECG5000_TEST.arff").unlink()
    with pytest.warns(UserWarning, match=r"ECG5000_TRAIN\.arff.*ECG5000_TEST\.txt"):
        s = D.load_dataset("ecg5000", data_dir=root, download=False, progress=False)
    assert len(s.train) + len(s.test) == 64 and any("5,000" in n for n in s.info["notes"])


def test_ecg_rounded_test_variant_is_accepted_by_its_sha256_only_and_always_reported(tmp_path, monkeypatch):
    root = write_fixture("ecg5000", tmp_path / "d", ecg_formats=("txt",))
    official = root / "ECG5000/ECG5000_TEST.txt"
    variant = root / D.ECG_TEST_ROUNDED
    original = official.read_bytes()
    rows = [" ".join(f"{float(v):.5g}" for v in line.split()) for line in official.read_text().splitlines() if line]
    variant.write_text("\n".join(rows) + "\n")
    official.unlink()
    with pytest.raises(D.ChecksumError, match="5_sigfig|5sigfig"):      # not the mirror's file: refused, unparsed
        D.load_dataset("ecg5000", data_dir=root, download=False, progress=False)
    label = dict((a, c) for a, _, c in D.KNOWN_CHECKSUMS[D.ECG_TEST_ROUNDED])["sha256"]
    monkeypatch.setitem(D.KNOWN_CHECKSUMS, D.ECG_TEST_ROUNDED, (("sha256", sha256_file(variant), label),))
    with pytest.warns(UserWarning, match="rounded to 5 significant digits"):
        s = D.load_dataset("ecg5000", data_dir=root, download=False, progress=False, ecg_mode="examples")
    assert len(s.train) + len(s.test) == 96                          # train + test, as with the official file
    assert [f["path"] for f in s.info["files"]] == ["ECG5000/ECG5000_TRAIN.txt", D.ECG_TEST_ROUNDED]
    assert any("rounded to 5 significant digits" in n and "not the official" in n for n in s.info["notes"])
    assert not any("only ECG5000_TRAIN" in n for n in s.info["notes"])
    # the official file wins when both are present
    official.write_bytes(original)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = D.load_dataset("ecg5000", data_dir=root, download=False, progress=False)
    assert again.info["files"][1]["path"] == "ECG5000/ECG5000_TEST.txt"
    assert not any("rounded" in str(w.message) for w in caught)


def test_cifar10_mirror_files_pass_by_sha256_with_a_partial_test_split_note(tmp_path, monkeypatch):
    root = write_fixture("cifar10", tmp_path / "d", n_train=50, n_test=20)
    labels = {}
    for rel in D._required("cifar10"):       # pretend the fixture's files are the mirror's (their sha256 listed)
        entries = D.KNOWN_CHECKSUMS[rel]
        mirror = [e for e in entries if e[0] == "sha256"]
        assert mirror and all(e[0] == "md5" for e in entries if e not in mirror)   # published md5 still accepted
        labels[rel] = mirror[0][2]
        monkeypatch.setitem(D.KNOWN_CHECKSUMS, rel, (("sha256", sha256_file(root / rel), mirror[0][2]),))
    with pytest.warns(UserWarning, match="1,000 of the 10,000"):
        s = D.load_dataset("cifar10", data_dir=root, download=False, progress=False)
    assert "first 1,000 of the 10,000" in labels["cifar-10-batches-py/test_batch"]
    assert "rebuilt" in labels["cifar-10-batches-py/data_batch_1"]
    assert any("1,000 of the 10,000 official test images" in n for n in s.info["notes"])
    # a file that matches neither the published md5 nor the mirror's sha256 is refused
    (root / "cifar-10-batches-py/data_batch_2").write_bytes(b"corrupt")
    with pytest.raises(D.ChecksumError):
        D.load_dataset("cifar10", data_dir=root, download=False, progress=False)


# ------------------------------------------------------------------------------------------------ dSprites
def test_dsprites_split_and_extras(tmp_path):
    root = write_fixture("dsprites", tmp_path / "d", n_train=90, n_test=10)
    s = load("dsprites", root, split_seed=0)
    assert len(s.train) == 90 and len(s.test) == 10
    assert s.train.data.shape == (90, 1, 64, 64) and s.train.data.dtype == torch.uint8 and s.train.scale == 1.0
    z = np.load(root / "dsprites" / D.DSPRITES_FILE, allow_pickle=True)
    assert set(z.files) == {"imgs", "latents_values", "latents_classes", "metadata"}
    for ds in (s.train, s.test):
        idx = ds.extras["index"].numpy()
        assert torch.equal(ds.data[:, 0], torch.from_numpy(z["imgs"][idx]))
        assert torch.equal(ds.extras["latents_classes"], torch.from_numpy(z["latents_classes"][idx]))
        assert torch.equal(ds.extras["latents_values"], torch.from_numpy(z["latents_values"][idx]))
        assert torch.equal(ds.targets, ds.extras["latents_classes"][:, 1])
    assert sorted(torch.cat([s.train.extras["index"], s.test.extras["index"]]).tolist()) == list(range(100))
    assert set(s.train.targets.tolist()) == {0, 1, 2}
    x, _ = s.train.tensors()
    assert set(x.unique().tolist()) == {0.0, 1.0}
    # the fixture's latents follow the real grid and file order (index = classes @ bases)
    lc = z["latents_classes"]
    flat = lc @ np.array([737280, 245760, 40960, 1024, 32, 1])
    assert (np.diff(flat) > 0).all() and np.allclose(z["latents_values"][:, 2], np.linspace(0.5, 1, 6)[lc[:, 2]])
    ref = torch.utils.data.random_split(range(100), [0.9, 0.1], generator=torch.Generator().manual_seed(0))
    assert s.train.extras["index"].tolist() == ref[0].indices and s.test.extras["index"].tolist() == ref[1].indices
    other = load("dsprites", root, split_seed=1)
    assert not torch.equal(other.train.extras["index"], s.train.extras["index"])


# ------------------------------------------------------------------------------------------------ checksums
@pytest.mark.parametrize("name,rel", [("mnist", "MNIST/raw/t10k-images-idx3-ubyte.gz"),
                                      ("cifar10", "cifar-10-batches-py/test_batch"),
                                      ("ecg5000", "ECG5000/ECG5000_TRAIN.txt"),
                                      ("dsprites", f"dsprites/{D.DSPRITES_FILE}")])
@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_corrupted_fixture_raises_checksum_error(tmp_path, name, rel, how):
    root = write_fixture(name, tmp_path / "d")
    load(name, root)                                           # fine before, and the hash is now cached
    path = root / rel
    raw = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    else:
        raw[len(raw) // 2] ^= 0xFF
        path.write_bytes(raw)
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))   # guard against coarse mtime clocks
    with pytest.raises(D.ChecksumError) as err:
        D.load_dataset(name, data_dir=root, download=False, progress=False)
    msg = str(err.value)
    assert str(path) in msg and "expected" in msg and sha256_file(path) in msg
    assert err.value.path == str(path)


def test_known_file_without_trust_entry_is_rejected(tmp_path):
    root = write_fixture("mnist", tmp_path / "d")
    (root / D.TRUST_FILE).unlink()                             # generated MNIST matches no published md5
    with pytest.raises(D.ChecksumError, match="f68b3c2dcbeaaa9fbdd348bbdeb94873"):
        D.load_dataset("mnist", data_dir=root, download=False, progress=False)


def test_unlisted_file_is_trusted_on_first_use_then_verified(tmp_path):
    root = write_fixture("ecg5000", tmp_path / "d", ecg_formats=("ts",))
    (root / D.TRUST_FILE).unlink()                             # ECG .ts files have no published checksum
    with pytest.warns(UserWarning, match="No published checksum"):
        D.load_dataset("ecg5000", data_dir=root, download=False, progress=False)
    sums = (root / D.TOFU_FILE).read_text()
    for sp in ("TRAIN", "TEST"):
        assert f"{sha256_file(root / f'ECG5000/ECG5000_{sp}.ts')}  ECG5000/ECG5000_{sp}.ts" in sums
    s = load("ecg5000", root)                                  # second load: verified, no warning
    assert all(f["verified_by"] == f"sha256 listed in {D.TOFU_FILE}" for f in s.info["files"])
    with open(root / "ECG5000/ECG5000_TEST.ts", "a") as f:
        f.write("0\n")
    with pytest.raises(D.ChecksumError, match="ECG5000_TEST.ts"):
        load("ecg5000", root)


def test_verify_file_uses_known_checksums(tmp_path):
    rel = "MNIST/raw/t10k-labels-idx1-ubyte.gz"
    (tmp_path / rel).parent.mkdir(parents=True)
    (tmp_path / rel).write_bytes(b"not mnist")
    with pytest.raises(D.ChecksumError, match="ec29112dd5afa0611ce80d1b7f02629c"):
        D.verify_file(tmp_path, rel)


# ------------------------------------------------------------------------------------------------ download path (faked)
def fake_download_url(sources):
    """Stand-in for torchvision's download_url serving ``sources`` ({filename: bytes}); md5 checked like torchvision."""
    def download_url(url, root, filename=None, md5=None, **kw):
        fname = filename or url.rsplit("/", 1)[1]
        if fname not in sources:
            raise OSError(f"no network here: {url}")
        Path(root).mkdir(parents=True, exist_ok=True)
        (Path(root) / fname).write_bytes(sources[fname])
        if md5 is not None and hashlib.md5(sources[fname]).hexdigest() != md5:
            raise RuntimeError("File not found or corrupted.")
    return download_url


def test_ecg_download_records_sha256_then_verifies(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tvu

    src = write_fixture("ecg5000", tmp_path / "src", ecg_formats=("ts", "arff"))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p in sorted((src / "ECG5000").iterdir()):
            z.write(p, p.name)
    monkeypatch.setattr(tvu, "download_url", fake_download_url({"ECG5000.zip": buf.getvalue()}))
    target = tmp_path / "target"
    with pytest.warns(UserWarning, match="No published checksum") as rec:
        s = D.load_dataset("ecg5000", data_dir=target, download=True, progress=False)
    assert len(s.train) + len(s.test) == 96 and s.info["root"] == str(target)
    assert any(hashlib.sha256(buf.getvalue()).hexdigest() in str(w.message) for w in rec)
    sums = D._read_sums(target)
    assert sums["ECG5000/ECG5000.zip"] == hashlib.sha256(buf.getvalue()).hexdigest()
    assert set(sums) == {"ECG5000/ECG5000.zip"} | {f"ECG5000/ECG5000_{sp}.{e}" for sp in ("TRAIN", "TEST")
                                                    for e in ("ts", "arff")}
    again = load("ecg5000", target)                            # no warning now: verified against SHA256SUMS
    assert torch.equal(again.train.data, s.train.data)


def test_download_failure_is_dataset_not_found(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tvu

    monkeypatch.setattr(tvu, "download_url", fake_download_url({}))
    with pytest.raises(D.DatasetNotFoundError, match=r"(?s)Download into .* failed.*no network here.*dsprites"):
        D.load_dataset("dsprites", data_dir=tmp_path / "t", download=True, progress=False)


def test_corrupted_download_is_checksum_error(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tvu

    src = write_fixture("mnist", tmp_path / "src")             # not the published files: md5 mismatch
    files = {p.name: p.read_bytes() for p in (src / "MNIST/raw").iterdir()}
    monkeypatch.setattr(tvu, "download_url", fake_download_url(files))
    with pytest.raises(D.ChecksumError, match="train-images-idx3-ubyte.gz.*f68b3c2dcbeaaa9fbdd348bbdeb94873"):
        D.load_dataset("mnist", data_dir=tmp_path / "t", download=True, progress=False)


# ------------------------------------------------------------------------------------------------ errors, search
def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as err:
        D.load_dataset("imagenet", download=False)
    assert all(n in str(err.value) for n in D.DATASETS)
    with pytest.raises(ValueError, match="features.*examples"):
        D.load_dataset("ecg5000", ecg_mode="bogus", download=False)
    with pytest.raises(ValueError):
        write_fixture("imagenet", "/nonexistent")


SOURCES = {  # name -> (a URL the message must give, files a user must place)
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/",
              [f"MNIST/raw/{f}" for f in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                                          "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")]),
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                [f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)] + ["cifar-10-batches-py/test_batch"]),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                 ["cifar-100-python/train", "cifar-100-python/test"]),
    "ecg5000": ("https://www.timeseriesclassification.com/aeon-toolkit/ECG5000.zip",
                ["ECG5000/ECG5000_TRAIN.txt", "ECG5000/ECG5000_TEST.txt"]),
    "dsprites": ("https://github.com/google-deepmind/dsprites-dataset/raw/master/"
                 "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz",
                 ["dsprites/dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"]),
}


@pytest.mark.parametrize("name", D.DATASETS)
def test_missing_data_offline_names_folders_url_and_files(tmp_path, monkeypatch, isolated, name):
    explicit, env = tmp_path / "explicit", tmp_path / "env"
    env.mkdir()
    monkeypatch.setenv(D.ENV_VAR, str(env))
    with pytest.raises(D.DatasetNotFoundError) as err:
        D.load_dataset(name, data_dir=explicit, download=False)
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert repr(name) in msg and str(explicit) in msg and str(env) in msg and str(isolated) in msg
    url, files = SOURCES[name]
    assert url in msg
    for rel in files:
        assert str(explicit / rel) in msg


def test_search_order_explicit_beats_env_beats_default(tmp_path, monkeypatch):
    a = write_fixture("mnist", tmp_path / "a", n_train=20)
    b = write_fixture("mnist", tmp_path / "b", n_train=30)
    c = write_fixture("mnist", tmp_path / "c", n_train=40)
    monkeypatch.setattr(D, "DEFAULT_DATA_DIR", c)
    monkeypatch.setenv(D.ENV_VAR, str(b))
    assert D.search_dirs(a) == [a, b, c]
    assert len(load("mnist", a).train) == 20
    assert len(D.load_dataset("mnist", download=False, progress=False).train) == 30
    monkeypatch.delenv(D.ENV_VAR)
    assert len(D.load_dataset("mnist", download=False, progress=False).train) == 40
    # a folder lacking the dataset is skipped
    assert len(load("mnist", tmp_path / "empty").train) == 40


# ------------------------------------------------------------------------------------------------ subsets
def brute_force_balanced(labels, n, C):
    out = []
    for i in range(n):
        members = [j for j, l in enumerate(labels) if l == i % C]
        out.append(members[i // C])
    return out


def test_class_balanced_indices_exact():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (200,), generator=g)
    for n in (0, 1, 3, 4, 17, 40):
        assert D.class_balanced_indices(labels, n, 4).tolist() == brute_force_balanced(labels.tolist(), n, 4)
    assert D.class_balanced_indices([1, 0, 1, 0, 0], 4).tolist() == [1, 0, 3, 2]
    with pytest.raises(ValueError, match="class 1 has 2 examples"):
        D.class_balanced_indices([1, 0, 1, 0, 0], 6, 2)
    idx = D.class_balanced_indices(labels, 40, 4)
    assert torch.equal(labels[idx], torch.arange(40) % 4) and len(set(idx.tolist())) == 40


# ------------------------------------------------------------------------------------------------ real data
def real_dir():
    if not REAL_DIR:
        pytest.skip(f"${D.ENV_VAR} is not set: real-data checks need the offline mirror (e.g. /work/shared/datasets)")
    return Path(REAL_DIR)


@pytest.mark.realdata
def test_real_mnist(monkeypatch):
    root = real_dir()
    if not (root / "MNIST/raw/t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"no MNIST under {root}")
    monkeypatch.setenv(D.ENV_VAR, str(root))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = D.load_dataset("mnist", download=False, progress=False)
    x, y = s.test.tensors()
    assert x.shape == (10000, 1, 28, 28) and set(y.tolist()) == set(range(10))
    counts = y.bincount(minlength=10)
    assert (counts >= 850).all() and (counts <= 1150).all()
    assert x.min() == 0 and x.max() == 1
    assert s.info["files"][2]["verified_by"].startswith(("published md5", "offline-mirror"))
    if len(s.train) < 60000:     # the old 10,000-image mirror: reported, never silent
        assert len(s.train) == 10000
        assert any("10,000 of the 60,000" in n for n in s.info["notes"])
        assert any("10,000 of the 60,000" in str(w.message) for w in caught)
    else:                        # the official files: verified by the published md5, no note
        assert len(s.train) == 60000 and s.train.targets.bincount().tolist()[:2] == [5923, 6742]
        assert all(f["verified_by"].startswith("published md5") for f in s.info["files"][:2])     # train files
        assert all(f["verified_by"].startswith(("published md5", "offline-mirror sha256 (identical"))
                   for f in s.info["files"][2:])
        assert not s.info["notes"] and not any("MNIST" in str(w.message) for w in caught)


@pytest.mark.realdata
def test_real_ecg5000(monkeypatch):
    root = real_dir()
    if not (root / "ECG5000/ECG5000_TRAIN.txt").is_file():
        pytest.skip(f"no ECG5000 under {root}")
    monkeypatch.setenv(D.ENV_VAR, str(root))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        f = D.load_dataset("ecg5000", download=False, progress=False, ecg_mode="features")
        e = D.load_dataset("ecg5000", download=False, progress=False, ecg_mode="examples")
    x, _ = e.train.tensors()
    assert x.dtype == torch.float32 and abs(float(x.mean())) < 0.05        # UCR series are z-normalised
    assert f.info["baseline"].shape == (140, 1)
    if not D._ecg_files(root).get("TEST"):       # the training file alone: 500 series, with a warning
        assert f.info["class_counts"] == {1: 292, 2: 177, 3: 10, 4: 19, 5: 2}
        assert f.train.data.shape == (292, 140, 1) and f.test.data.shape == (208, 140, 1)
        assert len(e.train) == 400 and len(e.test) == 100
        assert any("ECG5000_TEST" in str(w.message) for w in caught)
        return
    # train + test: the paper's 5,000 series (experiments.md §1.4)
    assert f.info["class_counts"] == {1: 2919, 2: 1767, 3: 96, 4: 194, 5: 24}
    assert f.train.data.shape == (2919, 140, 1) and f.test.data.shape == (2081, 140, 1)
    assert len(f.info["train_indices"]) == 2336 and len(f.info["val_indices"]) == 583
    assert len(e.train) == 4000 and len(e.test) == 1000
    if D._ecg_files(root)["TEST"] == D.ECG_TEST_ROUNDED:   # the mirror's variant: always said
        assert any("rounded to 5 significant digits" in n for n in f.info["notes"])
        assert any("rounded to 5 significant digits" in str(w.message) for w in caught)


@pytest.mark.realdata
def test_real_cifar10(monkeypatch):
    root = real_dir()
    if not (root / "cifar-10-batches-py/data_batch_1").is_file():
        pytest.skip(f"no CIFAR-10 under {root}")
    monkeypatch.setenv(D.ENV_VAR, str(root))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = D.load_dataset("cifar10", download=False, progress=False)
    assert s.train.data.shape == (50000, 3, 32, 32) and s.train.targets.bincount().tolist() == [5000] * 10
    mean = s.train.data.double().mean((0, 2, 3)) / 255       # the published per-channel mean
    assert torch.allclose(mean, torch.tensor([0.49139968, 0.48215841, 0.44653091], dtype=torch.float64), atol=1e-6)
    if len(s.test) < 10000:
        assert len(s.test) == 1000
        assert any("1,000 of the 10,000" in n for n in s.info["notes"])
        assert any("1,000 of the 10,000" in str(w.message) for w in caught)


def test_array_dataset_returns_copies_and_subsets():
    ds = D.ArrayDataset(torch.arange(12.0).reshape(3, 4, 1), torch.tensor([0, 1, 0]), None, {"k": torch.tensor([5, 6, 7])})
    x, y = ds.tensors()
    x += 100
    assert ds.data.max() == 11                                  # the fast path never hands out a view
    half = D.ArrayDataset(torch.tensor([[0, 255]], dtype=torch.uint8), torch.tensor([1]), 1 / 255)
    assert torch.allclose(half[0][0], torch.tensor([0.0, 1.0])) and half.data.dtype == torch.uint8
    sub = ds.subset([2, 0])
    assert torch.equal(sub.data, ds.data[[2, 0]]) and sub.extras["k"].tolist() == [7, 5] and len(sub) == 2
