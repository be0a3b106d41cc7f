"""The training loop: loss decrease, seeded reproducibility, data paths, early stopping, TracIn
checkpoints and divergence errors."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, Subset, TensorDataset

from lfxai_utils.models import build_model
from lfxai_utils.training import TrainingDivergedError, TrainResult, evaluate_loss, fit


class TinyAE(nn.Module):
    """Linear 8 → 2 → 8 autoencoder with the uniform ``loss(batch)``."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder, self.decoder = nn.Linear(8, 2), nn.Linear(2, 8)

    def forward(self, x):
        return self.decoder(self.encoder(x))

    def loss(self, batch):
        return F.mse_loss(self(batch[0]), batch[0])


def tiny_data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g) @ torch.randn(2, 8, generator=g) + 0.05 * torch.randn(n, 8, generator=g)
    return x, torch.arange(n) % 3


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return TinyAE()


class ItemDataset(Dataset):
    """Per-item dataset (generic path)."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


class FastDataset(ItemDataset):
    """Dataset with the ArrayDataset-style ``tensors(indices)`` fast path."""

    def __init__(self, x, y):
        super().__init__(x, y)
        self.calls = 0

    def tensors(self, indices=None):
        self.calls += 1
        idx = slice(None) if indices is None else indices
        return self.x[idx], self.y[idx]


def states_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_short_mnist_run_lowers_the_loss():
    g = torch.Generator().manual_seed(0)
    # blurry blobs: learnable structure
    x = F.avg_pool2d(torch.rand(80, 1, 28, 28, generator=g), 7, stride=1, padding=3).clamp(0, 1)
    model = (torch.manual_seed(0), build_model("mnist_ae", pretext="denoising"))[1]
    res = fit(model, (x, torch.zeros(80, dtype=torch.long)), n_epochs=4, batch_size=16, lr=3e-3,
              device="cpu", progress=False, seed=0)
    assert isinstance(res, TrainResult) and res.epochs_run == 4 and (res.n_train, res.n_val) == (72, 8)
    losses = [h["train_loss"] for h in res.history]
    assert losses[-1] < 0.7 * losses[0]
    assert res.history[-1]["val_loss"] < res.history[0]["val_loss"]
    assert not model.training


def test_same_seed_identical_weights_and_different_seed_differs():
    x, y = tiny_data()
    runs = []
    for seed in (5, 5, 6):
        model = tiny_model()
        res = fit(model, (x, y), n_epochs=3, batch_size=10, seed=seed, device="cpu", progress=False)
        runs.append((model.state_dict(), res.history))
    assert states_equal(runs[0][0], runs[1][0]) and runs[0][1] == [
        {**h, "seconds": runs[0][1][i]["seconds"]} for i, h in enumerate(runs[1][1])]
    assert not states_equal(runs[0][0], runs[2][0])


def test_fast_path_generic_path_and_tuple_agree():
    x, y = tiny_data()
    fast = FastDataset(x, y)
    results = []
    for data in [(x, y), TensorDataset(x, y), fast, ItemDataset(x, y)]:
        model = tiny_model()
        fit(model, data, n_epochs=2, batch_size=16, seed=1, device="cpu", progress=False)
        results.append(model.state_dict())
    assert fast.calls > 0
    for r in results[1:]:
        assert states_equal(results[0], r)
    # a Subset of a fast dataset is indexed through the parent's tensors()
    fast.calls = 0
    sub = Subset(fast, list(range(0, 96, 2)))
    model = tiny_model()
    res = fit(model, sub, n_epochs=1, batch_size=16, seed=1, device="cpu", progress=False)
    assert fast.calls > 0 and res.n_train + res.n_val == 48


def test_validation_split_and_options():
    x, y = tiny_data(100)
    res = fit(tiny_model(), (x, y), n_epochs=1, batch_size=32, val_fraction=0.2, device="cpu", progress=False)
    assert (res.n_train, res.n_val) == (80, 20)
    xv, yv = tiny_data(30, seed=1)
    res = fit(tiny_model(), (x, y), val_data=(xv, yv), n_epochs=1, batch_size=32, max_train_examples=50,
              device="cpu", progress=False)
    assert (res.n_train, res.n_val) == (50, 30)
    model = tiny_model()
    res = fit(model, (x, y), val_data=(xv, yv), n_epochs=1, batch_size=32, device="cpu", progress=False)
    assert res.best_val_loss == pytest.approx(evaluate_loss(model, (xv, yv), device="cpu"))
    res = fit(tiny_model(), (x, y), val_fraction=0.0, n_epochs=2, batch_size=32, device="cpu", progress=False)
    assert res.best_val_loss is None and res.n_val == 0 and res.history[0]["val_loss"] is None and res.best_epoch == 1
    res = fit(tiny_model(), (x, y), n_epochs=2, batch_size=32, optimizer="sgd_nesterov", scheduler="cosine",
              lr=0.01, drop_last=True, device="cpu", progress=False)
    assert res.epochs_run == 2
    with pytest.raises(ValueError, match="adam, sgd_nesterov"):
        fit(tiny_model(), (x, y), n_epochs=1, batch_size=8, optimizer="rmsprop", progress=False)
    with pytest.raises(TypeError, match="loss"):
        fit(nn.Linear(8, 8), (x, y), n_epochs=1, batch_size=8, progress=False)


class Scripted(nn.Module):
    """Training moves ``w`` towards 1 (so every epoch has different weights); validation losses are scripted;
    the training loss turns NaN at a chosen (epoch, batch)."""

    def __init__(self, val_losses=(), nan_at=None):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.val_losses, self.nan_at = list(val_losses), nan_at
        self.val_calls, self.train_calls = 0, 0

    def loss(self, batch):
        if not self.training:
            self.val_calls += 1
            return torch.tensor(self.val_losses[self.val_calls - 1])
        self.train_calls += 1
        loss = (self.w - 1).pow(2).sum()
        return loss * float("nan") if self.train_calls == self.nan_at else loss


def test_early_stopping_stops_and_restores_best():
    x = torch.ones(20, 1)
    model = Scripted([5.0, 4.0, 3.0, 3.5, 3.6, 3.7, 3.8, 3.9, 4.0, 4.1])
    res = fit(model, (x,), val_data=(torch.ones(4, 1),), n_epochs=10, batch_size=10, patience=2,
              checkpoint_every=1, lr=0.1, device="cpu", progress=False)
    assert res.stopped_early and res.epochs_run == 5 and res.best_epoch == 2 and res.best_val_loss == 3.0
    epochs = [e for e, _ in res.tracin_checkpoints]
    assert epochs == [0, 1, 2, 3, 4]
    best = dict(res.tracin_checkpoints)[2]
    assert torch.equal(model.w.detach(), best["w"])
    assert not torch.equal(best["w"], dict(res.tracin_checkpoints)[4]["w"])
    # patience=None: no early stopping, the best weights are still restored
    model = Scripted([5.0, 4.0, 3.0, 3.5, 3.6, 3.7])
    res = fit(model, (x,), val_data=(torch.ones(4, 1),), n_epochs=6, batch_size=10, patience=None,
              device="cpu", progress=False)
    assert res.epochs_run == 6 and not res.stopped_early and res.best_epoch == 2


def test_tracin_checkpoints_every_k_are_cpu_copies():
    x = torch.ones(20, 1)
    model = Scripted([1.0] * 7)
    res = fit(model, (x,), val_data=(torch.ones(2, 1),), n_epochs=7, batch_size=10, patience=None,
              checkpoint_every=3, lr=0.1, device="cpu", progress=False)
    assert [e for e, _ in res.tracin_checkpoints] == [0, 3, 6]
    ws = [s["w"].item() for _, s in res.tracin_checkpoints]
    assert len(set(ws)) == 3  # weights changed between checkpoints
    w_before = res.tracin_checkpoints[0][1]["w"].clone()
    with torch.no_grad():
        model.w.add_(100.0)
    assert torch.equal(res.tracin_checkpoints[0][1]["w"], w_before)
    assert res.summary()["tracin_epochs"] == [0, 3, 6]


def test_nan_loss_raises_training_diverged_error():
    x = torch.ones(30, 1)
    model = Scripted([1.0] * 5, nan_at=5)  # 3 batches per epoch -> epoch 1, batch 1
    with pytest.raises(TrainingDivergedError, match=r"epoch 1, batch 1.*lower the learning rate"):
        fit(model, (x,), val_data=(torch.ones(2, 1),), n_epochs=5, batch_size=10, device="cpu", progress=False)
    with pytest.raises(TrainingDivergedError, match="epoch 0"):
        fit(tiny_model(), tiny_data(), n_epochs=2, batch_size=16, lr=1e30, device="cpu", progress=False)


def test_array_dataset_fast_path_matches_float_tensors():
    data = pytest.importorskip("lfxai_utils.data")
    g = torch.Generator().manual_seed(0)
    raw = torch.randint(0, 256, (40, 1, 28, 28), dtype=torch.uint8, generator=g)
    ds = data.ArrayDataset(raw, torch.arange(40) % 10, 1 / 255)
    x, y = ds.tensors()
    assert x.dtype == torch.float32 and torch.allclose(x, raw.float() / 255)
    states = []
    for d in (ds, (x, y)):
        torch.manual_seed(0)
        model = build_model("mnist_classifier")
        fit(model, d, n_epochs=1, batch_size=16, seed=2, device="cpu", progress=False)
        states.append(model.state_dict())
    assert states_equal(*states)


def _mnist_batch(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("arch,kwargs,shape", [
    ("mnist_ae", {"latent_dim": 3, "pretext": "denoising"}, (1, 28, 28)),
    ("vae", {"img_size": [1, 32, 32], "latent_dim": 3, "loss": "tc", "beta": 5.0}, (1, 32, 32)),
])
def test_channels_last_trains_the_same_model_to_float_tolerance(arch, kwargs, shape):
    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(64, *shape, generator=g), torch.randint(0, 10, (64,), generator=g)
    out = {}
    for fmt in ("contiguous", "channels_last"):
        torch.manual_seed(0)
        model = build_model(arch, **kwargs)
        res = fit(model, (x, y), n_epochs=3, batch_size=16, seed=5, device="cpu", progress=False, memory_format=fmt,
                  checkpoint_every=1)
        out[fmt] = (model, res)
    (a, ra), (b, rb) = out["contiguous"], out["channels_last"]
    # Adam turns float-rounding differences of near-zero gradients into visible weight differences on a few
    # entries, so compare what the model computes: the same outputs to float tolerance
    with torch.no_grad():
        torch.testing.assert_close(b(x), a(x), rtol=1e-3, atol=1e-3)
    # ... and nearly every weight: pooled over the model, since on some CPUs one entry of a 16-entry bias differs by
    # 2e-4 (a per-tensor share would then be 15/16), and no weight far off
    names = [k for k, v in a.state_dict().items() if v.is_floating_point()]
    wa, wb = (torch.cat([m.state_dict()[k].flatten() for k in names]) for m in (a, b))
    assert torch.isclose(wb, wa, rtol=1e-3, atol=1e-4).double().mean().item() > 0.99
    assert (wb - wa).abs().max().item() < 1e-2
    assert all(v.is_contiguous() for v in b.state_dict().values())   # handed back (and saved) in the default layout
    assert [h["train_loss"] for h in ra.history] == pytest.approx([h["train_loss"] for h in rb.history], rel=1e-4)
    assert all(v.is_contiguous() for _, s in rb.tracin_checkpoints for v in s.values())


def test_fast_path_table_picks_channels_last_only_where_measured_and_auto_uses_it(monkeypatch):
    from lfxai_utils import training as T

    assert set(T.FAST_PATH.values()) <= {"channels_last", "contiguous"}
    seen = []
    real = torch.Tensor.contiguous

    def spy(self, *a, **kw):
        seen.append(kw.get("memory_format"))
        return real(self, *a, **kw)

    monkeypatch.setattr(torch.Tensor, "contiguous", spy)
    x, y = _mnist_batch(32)
    fit(build_model("mnist_ae", latent_dim=2), (x, y), n_epochs=1, batch_size=16, device="cpu", progress=False)
    assert torch.channels_last in seen                                # mnist_ae: FAST_PATH says channels_last
    seen.clear()
    fit(build_model("mnist_classifier", latent_dim=2), (x, y), n_epochs=1, batch_size=16, device="cpu",
        progress=False)
    assert torch.channels_last not in seen
    with pytest.raises(ValueError, match="memory_format"):
        fit(build_model("mnist_ae", latent_dim=2), (x, y), n_epochs=1, batch_size=16, memory_format="nhwc")


# ------------------------------------------------------------------------------------------ resume
class NoisyAE(TinyAE):
    """TinyAE whose training loss draws from torch's, NumPy's and Python's global random states (a VAE's
    reparameterisation draws from torch's): resuming must restore all three."""

    def loss(self, batch):
        import random

        import numpy as np

        x = batch[0]
        noise = 0.1 * torch.randn_like(x) + 0.01 * torch.from_numpy(np.random.randn(*x.shape)).float()
        return F.mse_loss(self(x + noise), x) * (1 + 0.01 * random.random()) if self.training else \
            F.mse_loss(self(x), x)


class Interrupt(Exception):
    pass


def _interrupt_at(monkeypatch, epoch):
    """Make the ``epoch``-th training epoch raise, as a killed process would stop there."""
    from lfxai_utils import training as T

    real, calls = T._train_epoch, []

    def train_epoch(model, opt, sched, batches, e, nhwc):
        calls.append(e)
        if e == epoch:
            raise Interrupt
        return real(model, opt, sched, batches, e, nhwc)

    monkeypatch.setattr(T, "_train_epoch", train_epoch)
    return calls


def _noisy_fit(x, y, **kw):
    torch.manual_seed(0)
    model = NoisyAE()
    kw = {"n_epochs": 6, "batch_size": 10, "seed": 3, "device": "cpu", "progress": False, "checkpoint_every": 2,
          "scheduler": "cosine", "lr": 1e-2, **kw}
    return model, fit(model, (x, y), **kw)


def _same_history(a, b):
    return [{**h, "seconds": 0} for h in a] == [{**h, "seconds": 0} for h in b]


def test_an_interrupted_fit_resumes_from_its_last_epoch_to_the_same_weights(tmp_path, monkeypatch, capsys):
    x, y = tiny_data()
    ref_model, ref = _noisy_fit(x, y)                                   # never interrupted, no state file
    state = tmp_path / "state" / "m.pt"
    calls = _interrupt_at(monkeypatch, 3)
    with pytest.raises(Interrupt):
        _noisy_fit(x, y, resume=state, resume_key={"data": "a"})
    assert state.exists() and calls == [0, 1, 2, 3]
    saved = torch.load(state, weights_only=True)
    assert len(saved["history"]) == 3 and _same_history(saved["history"], ref.history[:3])
    monkeypatch.undo()
    calls = _interrupt_at(monkeypatch, -1)
    torch.manual_seed(123)                                              # the global random state is not run 0's
    model, res = _noisy_fit(x, y, resume=state, resume_key={"data": "a"})
    assert calls == [3, 4, 5]                                           # only the missing epochs ran
    assert states_equal(model.state_dict(), ref_model.state_dict())     # bit for bit
    assert _same_history(res.history, ref.history) and res.best_epoch == ref.best_epoch
    assert [e for e, _ in res.tracin_checkpoints] == [0, 2, 4]
    assert all(states_equal(a, b) for (_, a), (_, b) in zip(res.tracin_checkpoints, ref.tracin_checkpoints))
    assert "resuming after epoch 2" not in capsys.readouterr().out     # progress=False: silent
    # a finished state returns the finished model without training again
    calls.clear()
    model, res = _noisy_fit(x, y, resume=state, resume_key={"data": "a"})
    assert calls == [] and states_equal(model.state_dict(), ref_model.state_dict()) and res.epochs_run == 6
    # other settings, other data, a damaged file: ignored with a note, training starts over
    for kw, why in [({"lr": 2e-2, "resume_key": {"data": "a"}}, "other settings"),
                    ({"resume_key": {"data": "b"}}, "other settings")]:
        calls.clear()
        _noisy_fit(x, y, resume=state, **kw)
        assert calls == [0, 1, 2, 3, 4, 5] and why in capsys.readouterr().out
    state.write_bytes(b"not a torch file")
    calls.clear()
    model, _ = _noisy_fit(x, y, resume=state)
    assert calls == list(range(6)) and "unreadable" in capsys.readouterr().out
    assert states_equal(model.state_dict(), ref_model.state_dict())


def test_resume_keeps_the_early_stopping_state(tmp_path, monkeypatch):
    """Interrupted two epochs after the best one (patience 2): the resumed run stops one epoch later, exactly
    where the uninterrupted run stopped, and restores the best epoch's weights saved before the interruption."""
    x, val = torch.ones(20, 1), (torch.ones(4, 1),)
    losses = [5.0, 4.0, 3.0, 3.5, 3.6, 3.7, 3.8]
    ref_model = Scripted(losses)
    ref = fit(ref_model, (x,), val_data=val, n_epochs=7, batch_size=10, patience=2, lr=0.1, device="cpu",
              progress=False)
    state = tmp_path / "m.pt"
    _interrupt_at(monkeypatch, 4)
    with pytest.raises(Interrupt):
        fit(Scripted(losses), (x,), val_data=val, n_epochs=7, batch_size=10, patience=2, lr=0.1, device="cpu",
            progress=False, resume=state)
    monkeypatch.undo()
    model = Scripted(losses[4:])                                        # its scripted losses go on from epoch 4
    res = fit(model, (x,), val_data=val, n_epochs=7, batch_size=10, patience=2, lr=0.1, device="cpu",
              progress=False, resume=state)
    assert (res.stopped_early, res.epochs_run, res.best_epoch, res.best_val_loss) == (True, 5, 2, 3.0)
    assert (ref.stopped_early, ref.epochs_run, ref.best_epoch) == (True, 5, 2)
    assert torch.equal(model.w.detach(), ref_model.w.detach())


@pytest.mark.parametrize("arch,kwargs", [("vae", {"img_size": [1, 32, 32], "latent_dim": 3, "loss": "tc",
                                                   "beta": 5.0})])
def test_resume_is_exact_for_a_channels_last_vae(tmp_path, monkeypatch, arch, kwargs):
    """The grid this exists for: a β-TCVAE trained channels_last (its reparameterisation draws from torch's random
    state) resumes to the same weights as an uninterrupted run."""
    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(48, 1, 32, 32, generator=g), torch.zeros(48, dtype=torch.long)

    def run(**kw):
        torch.manual_seed(0)
        model = build_model(arch, **kwargs)
        fit(model, (x, y), n_epochs=3, batch_size=16, seed=5, device="cpu", progress=False, **kw)
        return model

    ref = run()
    _interrupt_at(monkeypatch, 2)
    with pytest.raises(Interrupt):
        run(resume=tmp_path / "vae.pt")
    monkeypatch.undo()
    assert states_equal(run(resume=tmp_path / "vae.pt").state_dict(), ref.state_dict())
