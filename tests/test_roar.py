"""ROAR (Appendix C, experiments.md §4): per-image masks in dataset order, masking, the explained encoder, the
shared initial weights, checkpoints and the verdict logic."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from torch import nn

from lfxai_utils._utils import seed_everything
from lfxai_utils.checkpoints import CheckpointMismatchError, CheckpointNotFoundError
from lfxai_utils.experiments import common, module_for, roar as R
from lfxai_utils.fixtures import write_fixture
from lfxai_utils.models import build_model
from lfxai_utils.training import evaluate_loss


# ------------------------------------------------------------------------------------------ parameters and names
def test_validate_parameters():
    assert R.validate() == (R.METHODS, R.PERCENTS)
    assert R.validate("random, gradient_shap", "70,10,10") == (("random", "gradient_shap"), (10, 70))
    assert R.validate(["random"], [50.0]) == (("random",), (50,))
    with pytest.raises(ValueError, match=r"unknown method 'saliency'; valid values: 'gradient_shap'"):
        R.validate(["saliency"], [10])
    with pytest.raises(ValueError, match="twice"):
        R.validate(["random", "random"], [10])
    for bad in ([0], [101], [12.5], ["ten"]):
        with pytest.raises(ValueError, match="1..100"):
            R.validate(["random"], bad)


def test_smoke_budget(tmp_path):
    assert R.smoke_levels((10, 20, 50, 70, 100)) == (10, 100) and R.smoke_levels([30]) == (30,)
    exp = _setup(tmp_path, smoke=True, dataset="cifar10")
    splits = R.load_data(exp)
    assert len(splits.train) == splits.info["n_train"] == R.SMOKE_TRAIN and len(splits.test) == 64
    full = exp.load_data()
    assert torch.equal(R.train_images(splits), full.train.tensors()[0][:R.SMOKE_TRAIN])      # the first images


def test_k_and_checkpoint_names():
    assert [R.n_removed(p, 784) for p in R.PERCENTS] == [78, 156, 392, 548, 784]      # experiments.md §4
    assert [R.n_removed(p, 1024) for p in R.PERCENTS] == [102, 204, 512, 716, 1024]
    assert R.checkpoint("mnist") == "claim1-roar_mnist_reconstruction-ae"
    assert R.checkpoint("mnist", "gradient_shap", 20) == "claim1-roar_mnist_reconstruction-ae_gradient-shap-20_run0"
    assert R.checkpoint("mnist", "random", 10, 2) == "claim1-roar_mnist_reconstruction-ae_random-10_run2"
    assert R.checkpoint("cifar10", "integrated_gradients", 100) == \
        "claim1-roar_cifar10_reconstruction-ae_integrated-gradients-100_run0"
    names = R.required_checkpoints("mnist")
    assert len(names) == len(set(names)) == 1 + 15 * R.N_SEEDS and module_for("claim1_roar") is R
    assert len(R.required_checkpoints("mnist", n_seeds=1)) == 16
    with pytest.raises(ValueError, match="n_seeds"):
        R.required_checkpoints("mnist", n_seeds=0)
    assert R.data_requirements("cifar100") == [("cifar100", {})]


def test_model_spec_is_the_reconstruction_ae_for_10_epochs():
    for ds, arch in (("mnist", "mnist_ae"), ("cifar10", "cifar_ae"), ("cifar100", "cifar_ae")):
        spec = R.model_spec(ds)
        assert spec.arch == arch and spec.arch_kwargs["pretext"] == "reconstruction"
        assert spec.n_epochs == 10 and spec.batch_size == 300
        assert spec.arch_kwargs["latent_dim"] == common.AE_SPECS[ds].arch_kwargs["latent_dim"]
    assert common.AE_SPECS["mnist"].arch_kwargs["pretext"] == "denoising"          # the shared spec is untouched


def test_same_seed_builds_identical_weights():
    def build(seed):
        seed_everything(seed)
        return build_model("mnist_ae", **R.model_spec("mnist").arch_kwargs).state_dict()

    a, b, c = build(1), build(1), build(2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


# ------------------------------------------------------------------------------------------ masks
class _Linear(nn.Module):
    """f(x) = W vec(x): label-free IG / GradientSHAP (zero baseline, stdevs 0) is exactly x ⊙ WᵀW x."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x):
        return x.flatten(1) @ self.w.T


def _exp(seed=0):
    return SimpleNamespace(seed=seed, device=torch.device("cpu"), progress=False)


def test_masks_are_per_image_in_dataset_order():
    g = torch.Generator().manual_seed(0)
    n, c, h, w = 11, 2, 3, 4
    x = torch.rand(n, c, h, w, generator=g, dtype=torch.float64)
    W = torch.randn(5, c * h * w, generator=g, dtype=torch.float64)
    enc = _Linear(W)
    scores = R.train_attributions(_exp(), enc, x, ["integrated_gradients", "gradient_shap", "random"],
                                  torch.zeros(1, c, h, w, dtype=torch.float64), batch_size=3)   # 4 batches
    exact = (x.flatten(1) * (x.flatten(1) @ W.T @ W)).reshape(n, c, h * w).abs().sum(1)     # Σ_channels |x ⊙ WᵀWx|
    for m in ("integrated_gradients", "gradient_shap"):
        torch.testing.assert_close(scores[m], exact)
        for p in (10, 25, 50, 100):
            k = R.n_removed(p, h * w)
            mask = R.removal_mask(scores[m], p)
            for i in range(n):                                   # brute force, image by image
                top = set(sorted(range(h * w), key=lambda j: -exact[i, j].item())[:k])
                assert set(torch.nonzero(mask[i]).flatten().tolist()) == top
    # images are different, so a mask that belonged to another image would fail above; check that they differ
    m50 = R.removal_mask(exact, 50)
    assert len({tuple(r.tolist()) for r in m50}) > 1
    # random scores: seeded, independent of the batch size, different for another seed
    again = R.train_attributions(_exp(), enc, x, ["random"], None, batch_size=5)["random"]
    torch.testing.assert_close(again, scores["random"])
    torch.testing.assert_close(again, torch.randn(x.shape, generator=torch.Generator().manual_seed(0),
                                                  dtype=x.dtype).abs().sum(1).flatten(1))
    assert not torch.equal(R.train_attributions(_exp(1), enc, x, ["random"], None)["random"], again)


def test_masked_images_are_x_times_one_minus_mask():
    x = torch.arange(1, 2 * 2 * 3 + 1, dtype=torch.float32).reshape(1, 2, 2, 3)        # 2 channels, 2×3 pixels
    mask = torch.tensor([[True, False, False, False, False, True]])
    expected = torch.tensor([[[[0, 2, 3], [4, 5, 0]], [[0, 8, 9], [10, 11, 0]]]], dtype=torch.float32)
    assert torch.equal(R.mask_images(x, mask), expected)
    g = torch.Generator().manual_seed(3)
    xs = torch.rand(7, 3, 5, 5, generator=g)
    ms = torch.rand(7, 25, generator=g) > 0.5
    assert torch.equal(R.mask_images(xs, ms), xs * (1 - ms.float()).reshape(7, 1, 5, 5))
    with pytest.raises(ValueError, match="expected"):
        R.mask_images(xs, ms[:, :24])


def test_nonzero_and_removal_stats():
    x = torch.zeros(2, 3, 2, 2)
    x[0, 1, 0, 0] = 1.0            # image 0: pixels 0 and 3 non-zero (in some channel)
    x[0, 2, 1, 1] = 0.5
    x[1, 0, 0, 1] = 0.2            # image 1: pixel 1 non-zero
    assert R.nonzero_pixels(x).tolist() == [[True, False, False, True], [False, True, False, False]]
    mask = torch.tensor([[True, True, False, False], [False, True, False, False]])
    stats = R.removal_stats(x, mask)
    assert stats["nonzero_removed"] == pytest.approx((1 / 2 + 1) / 2)
    assert stats["black_images"] == pytest.approx(0.5)          # image 1 lost its only non-zero pixel
    assert R.mask_digest(mask) == R.mask_digest(mask.clone()) != R.mask_digest(~mask)


def test_example_grid_shows_each_images_own_mask():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(5, 1, 4, 4, generator=g)
    scores = {"random": torch.rand(5, 16, generator=g), "gradient_shap": torch.rand(5, 16, generator=g)}
    images, rows, cols = R.example_grid(x, scores, [25, 100], n=2)
    assert images.shape == (4, 3, 4, 4) and cols == ["original", "25 % removed", "100 % removed"]
    assert rows[2].startswith("GradientSHAP") and rows[2].endswith("image 0")
    for r, (m, i) in enumerate([("random", 0), ("random", 1), ("gradient_shap", 0), ("gradient_shap", 1)]):
        assert (images[r, 0] == x[i, 0].numpy()).all()
        want = R.mask_images(x, R.removal_mask(scores[m], 25))[i, 0].numpy()
        assert (images[r, 1] == want).all() and (images[r, 2] == 0).all()


# ------------------------------------------------------------------------------------------ the pipeline
def _setup(tmp_path, **kw):
    args = dict(dataset="mnist", output_dir=str(tmp_path / "out"), checkpoint_dir=str(tmp_path / "ckpt"),
                data_dir=str(tmp_path / "data"), progress=False, datasets=R.DATASETS, models=R.MODELS)
    args.update(kw)
    return common.setup(R.NOTEBOOK, **args)


def test_pipeline_explains_the_original_encoder_from_shared_initial_weights(tmp_path, monkeypatch):
    write_fixture("mnist", tmp_path / "data", n_train=24, n_test=8)
    exp = _setup(tmp_path, mode="train", n_epochs=1)
    splits = exp.load_data()
    fit_starts, explained = [], []
    real_fit, real_attr = common.fit, R.attribute_dataset

    def spy_fit(model, *a, **kw):
        fit_starts.append({k: v.clone() for k, v in model.state_dict().items()})
        return real_fit(model, *a, **kw)

    def spy_attr(encoder, *a, **kw):
        explained.append(encoder)
        return real_attr(encoder, *a, **kw)

    monkeypatch.setattr(common, "fit", spy_fit)
    monkeypatch.setattr(R, "attribute_dataset", spy_attr)
    base, base_man = R.get_base_model(exp, splits)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    x = R.train_images(splits)
    scores = R.train_attributions(exp, base.encoder, x, R.METHODS, common.baseline_for("mnist", splits))
    models = R.retrain(exp, splits, scores, [50, 100], base_man, runs=[0, 1])
    # ORIG bug 2: every attribution explains the base encoder, and retraining never touches the base model
    assert len(explained) == 2 and all(e is base.encoder for e in explained)       # GradientSHAP, IG
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
    # seed 0 retrains from the base model's own initial weights, seed 1 from another one shared by every model
    assert len(fit_starts) == 1 + 12
    seed_of = [None] + [r for (_, _, r) in models]
    for s, r in zip(fit_starts[1:], seed_of[1:]):
        same = all(torch.equal(s[k], fit_starts[0][k]) for k in s)
        assert same == (r == 0)
    seed1 = [s for s, r in zip(fit_starts[1:], seed_of[1:]) if r == 1]
    assert all(torch.equal(s[k], seed1[0][k]) for s in seed1 for k in s)
    # each model trained on its own masked images (recorded in the manifest); 100 % masks are identical
    for (m, p, r), rt in models.items():
        man = rt.manifest
        assert rt.k == R.n_removed(p, 784) and rt.stats == R.removal_stats(x, R.removal_mask(scores[m], p))
        assert man["settings"]["roar_base_sha256"] == base_man["file"]["sha256"] and man["settings"]["roar_k"] == \
            R.n_removed(p, 784) and man["settings"]["run"] == r
        assert man["data"]["roar"]["mask_sha256"] == R.mask_digest(R.removal_mask(scores[m], p))
        assert rt.inputs_sha256 == R.effective_digest(x, R.removal_mask(scores[m], p))
    df = R.retrained_losses(exp, splits, base, models)
    assert list(df.columns[:5]) == ["method", "percent", "run", "k", "test_loss"] and len(df) == 3 * 2 * 3
    base_rows = df[df.percent == 0]
    assert (base_rows.test_loss == evaluate_loss(base, splits.test)).all()
    m50 = models[("random", 50, 1)].model
    got = df[(df.method == "Random") & (df.percent == 50) & (df.run == 1)].test_loss.item()
    assert got == pytest.approx(evaluate_loss(m50, splits.test))
    for r in (0, 1):   # all-black training data, same seed: the same model whatever the method
        assert df[(df.percent == 100) & (df.run == r)].test_loss.nunique() == 1
    assert (df[df.percent == 100].degenerate == "").all()      # 100 % is the reference, never "degenerate"

    # inference: everything loads, masks recomputed from the loaded base equal the training masks
    inf = _setup(tmp_path, mode="inference")
    base2, base_man2 = R.get_base_model(inf, splits)
    scores2 = R.train_attributions(inf, base2.encoder, x, R.METHODS, common.baseline_for("mnist", splits))
    models2 = R.retrain(inf, splits, scores2, [50, 100], base_man2, runs=[0, 1])
    assert inf.trained == [] and len(inf.loaded) == 13
    assert R.mask_reproduction(models2).identical.all()
    df2 = R.retrained_losses(inf, splits, base2, models2)
    pd.testing.assert_frame_equal(df, df2)
    other_random = dict(scores2, random=scores2["random"].flip(0))            # image i gets image N-1-i's scores
    flags = R.mask_reproduction(R.retrain(inf, splits, other_random, [50], base_man2)).set_index("method").identical
    assert flags.to_dict() == {"GradientSHAP": True, "Integrated Gradients": True, "Random": False}
    # ROAR models trained on another base model's masks are refused
    other = {**base_man2, "file": {**base_man2["file"], "sha256": "0" * 64}}
    with pytest.raises(CheckpointMismatchError, match="roar_base_sha256"):
        R.retrain(inf, splits, scores2, [50], other)
    # a retraining seed that was never trained is reported, not silently replaced
    with pytest.raises(CheckpointNotFoundError):
        R.retrain(inf, splits, scores2, [50], base_man2, runs=[2])


def test_inference_checks_masks_on_the_first_images_and_train_mode_records_what_that_needs(tmp_path, monkeypatch):
    """The page's inference run explains only the first CHECK_N training images: the same table as explaining all
    of them, masks checked against the manifests' digests over those images; train mode (re)records those digests."""
    monkeypatch.setattr(R, "CHECK_N", 10)
    write_fixture("mnist", tmp_path / "data", n_train=24, n_test=8)
    exp = _setup(tmp_path, mode="train", n_epochs=1)
    splits = exp.load_data()
    base, base_man = R.get_base_model(exp, splits)
    x = R.train_images(splits)
    baseline = common.baseline_for("mnist", splits)
    scores = R.train_attributions(exp, base.encoder, x, R.METHODS, baseline)
    models = R.retrain(exp, splits, scores, [10, 50, 100], base_man)
    names = [R.checkpoint("mnist", m, p, 0) for m in R.METHODS for p in (10, 50, 100)]
    for (m, p, _), rt in models.items():
        roar = rt.manifest["data"]["roar"]
        assert roar["check_n"] == 10
        assert roar["check_mask_sha256"] == R.mask_digest(R.removal_mask(scores[m], p)[:10])
        assert roar["inputs_sha256"] == R.effective_digest(x, R.removal_mask(scores[m], p))
    assert len(R.images_to_explain(exp, x, names)) == 24                    # train mode: every image is masked
    full = R.retrained_losses(exp, splits, base, models)

    inf = _setup(tmp_path, mode="inference")
    base2, base_man2 = R.get_base_model(inf, splits)
    head = R.images_to_explain(inf, x, names)
    assert torch.equal(head, x[:10])
    scores2 = R.train_attributions(inf, base2.encoder, head, R.METHODS, baseline)
    models2 = R.retrain(inf, splits, scores2, [10, 50, 100], base_man2)
    same = R.mask_reproduction(models2)
    assert same.identical.all() and (same.images == 10).all()
    pd.testing.assert_frame_equal(R.retrained_losses(inf, splits, base2, models2), full)
    assert R.degenerate_levels(models2) == R.degenerate_levels(models)
    wrong = dict(scores2, random=scores2["random"].flip(0))                 # another image's scores in the head
    assert not R.mask_reproduction(R.retrain(inf, splits, wrong, [10], base_man2)).set_index("method") \
        .identical["Random"]
    with pytest.raises(ValueError, match="only inference mode"):
        R.retrain(exp, splits, scores2, [10], base_man)                     # train mode must mask every image

    # a manifest written before the check fields existed: inference falls back to every image, and a train-mode
    # run that reuses the model (its full-mask digest confirmed) adds the fields without retraining it
    js = tmp_path / "ckpt" / f"{names[0]}.json"
    old = json.loads(js.read_text())
    for f in R.CHECK_FIELDS:
        del old["data"]["roar"][f]
    js.write_text(json.dumps(old))
    assert len(R.images_to_explain(inf, x, names)) == 24
    again = _setup(tmp_path, mode="train", n_epochs=1, reuse_checkpoints=True)
    sha = old["file"]["sha256"]
    R.retrain(again, splits, scores, [10], base_man)
    assert again.trained == []
    amended = json.loads(js.read_text())
    assert amended["file"]["sha256"] == sha
    assert {f: amended["data"]["roar"][f] for f in R.CHECK_FIELDS} == \
        {f: models[("gradient_shap", 10, 0)].manifest["data"]["roar"][f] for f in R.CHECK_FIELDS}
    assert len(R.images_to_explain(inf, x, names)) == 10


def _fake(stats: dict, digest: str):
    return R.Retrained(model=None, manifest={}, k=0, mask_sha256="", stats=stats, inputs_sha256=digest)


def test_degenerate_levels_are_all_black_inputs_or_repeats_of_a_lower_level():
    live = {"black_images": 0.0}
    models = {("gradient_shap", 20, 0): _fake(live, "a"), ("gradient_shap", 50, 0): _fake({"black_images": 1.0}, "b"),
              ("gradient_shap", 70, 0): _fake({"black_images": 1.0}, "b"),
              ("gradient_shap", 100, 0): _fake({"black_images": 1.0}, "b"),
              ("random", 20, 0): _fake(live, "c"), ("random", 50, 0): _fake(live, "d"),
              ("random", 70, 0): _fake(live, "d")}    # identical masked inputs at 50 and 70 %
    d = R.degenerate_levels(models)
    assert d[("gradient_shap", 20)] == "" and d[("random", 20)] == "" and d[("random", 50)] == ""
    assert "every non-zero pixel" in d[("gradient_shap", 50)] and "every non-zero pixel" in d[("gradient_shap", 70)]
    assert d[("gradient_shap", 100)] == ""
    assert d[("random", 70)] == "same masked training images as at 50 %"


def test_effective_digest_sees_only_removed_nonzero_pixels():
    x = torch.zeros(2, 1, 2, 2)
    x[:, 0, 0, 0] = 1.0
    a = torch.tensor([[True, False, False, False], [True, False, False, False]])
    b = torch.tensor([[True, True, False, False], [True, False, True, True]])    # also removes black pixels
    c = torch.tensor([[False, True, False, False], [True, False, False, False]])
    assert R.effective_digest(x, a) == R.effective_digest(x, b) != R.effective_digest(x, c)
    assert R.mask_digest(a) != R.mask_digest(b)


# ------------------------------------------------------------------------------------------ verdict
def _table(losses: dict[str, list], percents=(0, 10, 20, 50, 70, 100), degenerate=None):
    """Rows per method, level and seed: a list of floats is one seed; a list of lists gives one value per seed."""
    rows = []
    for m, vals in losses.items():
        for p, v in zip(percents, vals):
            for r, value in enumerate(v if isinstance(v, list) else [v]):
                rows.append({"method": m, "percent": p, "run": r, "k": R.n_removed(p, 784), "test_loss": value,
                             "degenerate": (degenerate or {}).get((m, p), "")})
    return pd.DataFrame(rows)


def test_verdict_needs_a_higher_loss_than_random_for_every_seed_at_every_informative_level():
    three = lambda v, d=(0.0, 0.01, -0.01): [v + e for e in d]    # noqa: E731 - three seeds around v
    df = _table({"Random": [three(1.0), three(1.1), three(1.2), three(1.5), three(2.0), three(5.0)],
                 "GradientSHAP": [three(1.0), three(1.3), three(1.6), three(2.5), three(3.0), three(4.0)],
                 "Integrated Gradients": [three(1.0), three(1.3), three(1.6), three(1.4), three(3.0), three(5.0)]})
    v = {x.quantity.split(", ")[1]: x for x in R.verdicts(df, "mnist", mean_nonzero=150.2, n_features=784)}
    assert v["GradientSHAP"].verdict == "holds"                              # below Random at 100 %: ignored
    assert v["Integrated Gradients"].verdict == "does not hold"              # below Random at 50 %
    assert "at 3/4 informative levels" in v["Integrated Gradients"].ours and "at 4/4" in v["GradientSHAP"].ours
    assert "at 20 % removed: 1.6 ± 0.01 vs Random 1.2 ± 0.01 (mean ± sd over 3 seed(s))" in v["GradientSHAP"].ours
    assert "150 of 784 pixels non-zero" in v["GradientSHAP"].ours and "(19 %)" in v["GradientSHAP"].ours
    assert "App. C" in v["GradientSHAP"].anchor_source and "0 < p < 100" in v["GradientSHAP"].criterion
    # one seed where the method is not above Random: neither "holds" nor (mean above) "does not hold"
    mixed = _table({"Random": [1.0, [1.0, 1.0, 1.0]], "GradientSHAP": [1.0, [1.5, 1.5, 0.9]]}, percents=(0, 20))
    assert [x.verdict for x in R.verdicts(mixed, "mnist")] == ["inconclusive"]
    # a single seed gives no error bar: never "holds"
    single = _table({"Random": [1.0, 1.0], "GradientSHAP": [1.0, 2.0]}, percents=(0, 20))
    (one,) = R.verdicts(single, "mnist")
    assert one.verdict == "inconclusive" and "single retraining seed" in one.ours


def test_degenerate_levels_do_not_count_as_wins():
    three = lambda v: [v, v + 0.01, v - 0.01]    # noqa: E731
    losses = {"Random": [three(1.0), three(1.1), three(1.2), three(1.5), three(2.0), three(5.0)],
              "GradientSHAP": [three(1.0), three(1.0), three(1.0), three(5.0), three(5.0), three(5.0)]}
    deg = {("GradientSHAP", 50): "every non-zero pixel of every training image removed",
           ("GradientSHAP", 70): "every non-zero pixel of every training image removed"}
    (v,) = R.verdicts(_table(losses, degenerate=deg), "mnist")
    assert v.verdict == "does not hold"                   # below Random at 10 and 20 %; 50/70 % excluded
    assert "degenerate levels excluded: 50 %, 70 %" in v.ours and "0/2 informative levels" in v.ours
    (w,) = R.verdicts(_table(losses), "mnist")             # the same table without the rule: 2/4 levels
    assert "2/4 informative levels" in w.ours


def test_verdict_is_inconclusive_without_random_or_levels():
    no_random = _table({"GradientSHAP": [1.0, 2.0, 2.0, 2.0, 2.0, 2.0]})
    assert [v.verdict for v in R.verdicts(no_random, "mnist")] == ["inconclusive"]
    only_100 = _table({"Random": [1.0, 2.0], "GradientSHAP": [1.0, 3.0]}, percents=(0, 100))
    assert [v.verdict for v in R.verdicts(only_100, "mnist")] == ["inconclusive"]
    assert R.verdicts(_table({"Random": [1.0] * 6}), "mnist") == []
