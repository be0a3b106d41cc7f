"""Tests of the benchmark helpers (bench/harness.py, bench/run_benchmarks.py plumbing) and of the Performance page.

No timing assertions: clocks are faked. lfxai (the authors' package) is optional; the one test that uses it
skips cleanly when it is absent.
"""
from __future__ import annotations

import itertools
import math
import types
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from bench import harness as H
from lfxai_utils.book.performance import render_performance


def fake_clock(times):
    it = iter(times)
    return lambda: next(it)


# ------------------------------------------------------------------------------------------------ timing
def test_time_calls_median_warmup_and_before():
    calls, befores = [], []
    t = H.time_calls(lambda: calls.append(1) or len(calls), repeats=3, warmup=True, before=lambda: befores.append(1),
                     clock=fake_clock([0.0, 1.0, 1.0, 4.0, 4.0, 6.0]))
    assert t.seconds == [1.0, 3.0, 2.0]
    assert t.median == 2.0 and t.runs == 3
    assert len(calls) == 4 and len(befores) == 4  # warm-up call + 3 timed, each preceded by `before`
    assert t.result == 4  # the last timed call's return value
    with pytest.raises(ValueError):
        H.time_calls(lambda: None, repeats=0)


def test_time_interleaved_alternates_and_pairs_runs():
    order, clock_t = [], [0.0]

    def clock():
        return clock_t[0]

    def make(name, cost):
        def fn():
            order.append(name)
            clock_t[0] += cost
            return name
        return fn

    ours, theirs = H.time_interleaved(make("o", 1.0), make("a", 3.0), repeats=4, warmup=(True, False),
                                      before=lambda: order.append("b"), clock=clock)
    calls = [c for c in order if c != "b"]
    assert calls == ["o", "o", "a", "a", "o", "o", "a", "a", "o"]  # warm-up (ours only), then o a | a o | o a | a o
    assert order.count("b") == len(calls)  # ``before`` ahead of every call, warm-up included
    assert ours.seconds == [1.0] * 4 and theirs.seconds == [3.0] * 4 and (ours.result, theirs.result) == ("o", "a")
    with pytest.raises(ValueError):
        H.time_interleaved(lambda: None, lambda: None, repeats=0)


def test_speedup_range():
    assert H.speedup_range([1.0, 2.0, 4.0], [2.0, 3.0, 4.0]) == (1.0, 2.0)
    assert all(math.isnan(v) for v in H.speedup_range([1.0], [1.0, 2.0]))
    assert all(math.isnan(v) for v in H.speedup_range([], []))
    r = H.summary_row("IG", "w", 2.0, 2, "measured", 3.0, 2, "measured", 1.0, pairs=([2.0, 1.0], [2.0, 4.0]))
    assert (r["speedup_min"], r["speedup_max"]) == (1.0, 4.0) and r["speedup"] == 1.5
    assert math.isnan(H.summary_row("x", "w", 1.0, 1, "", 2.0, 1, "", None)["speedup_min"])


def test_speedup():
    assert H.speedup(2.0, 10.0) == 5.0
    assert math.isnan(H.speedup(0.0, 1.0)) and math.isnan(H.speedup(None, 1.0))
    assert math.isnan(H.speedup(1.0, float("nan")))


# --------------------------------------------------------------------------------------------- agreement
def test_agreement_scale_relative():
    a = H.agreement(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 4.0]))
    assert a == {"max_abs": 2.0, "scale": 4.0, "rel_to_scale": 0.5}
    assert H.agreement(torch.zeros(3), torch.zeros(3))["rel_to_scale"] == 0.0
    assert H.agreement([1.0, 0.0], [0.0, 0.0])["rel_to_scale"] == math.inf
    with pytest.raises(ValueError):
        H.agreement(torch.zeros(2), torch.zeros(3))


def test_elementwise_agreement():
    e = H.elementwise_agreement(torch.tensor([1.0, 2.2], dtype=torch.float64), torch.tensor([1.0, 2.0]))
    assert e["max_rel"] == pytest.approx(0.1) and e["median_rel"] == pytest.approx(0.05)
    inf = float("inf")
    assert H.elementwise_agreement([inf, 1.0], [inf, 1.0]) == {"max_rel": 0.0, "median_rel": 0.0}
    assert H.elementwise_agreement([inf, 1.0], [5.0, 1.0])["max_rel"] == inf
    # below `tiny` the comparison is absolute
    assert H.elementwise_agreement([0.5], [0.0], tiny=1e-9)["max_rel"] == 0.5


def test_mask_agreement():
    ours = torch.tensor([[True, False], [False, True]])
    authors = torch.tensor([[[0.0, 1.0]], [[1.0, 1.0]]])  # (N, 1, 2): 0 = removed
    m = H.mask_agreement(ours, authors)
    assert m == {"entries_equal": 0.75, "rows_equal": 0.5}


# ------------------------------------------------------------------------------ phases and extrapolation
def test_phase_recorder_times_loop_bodies():
    rec = H.PhaseRecorder(clock=fake_clock([10.0, 17.0, 20.0, 21.0]))
    assert list(rec.iterate(range(3), "train")) == [0, 1, 2]
    assert list(rec.iterate(["a"], "train")) == ["a"]
    assert rec.seconds["train"] == 8.0 and rec.counts["train"] == 4


def test_extrapolate():
    # 10 s measured; phase a (2 s) grows 5x, phase b (1 s) grows 100x; the other 7 s stay
    assert H.extrapolate(10.0, {"a": (2.0, 5.0), "b": (1.0, 100.0)}) == 10.0 + 8.0 + 99.0
    assert H.extrapolate(3.0, {}) == 3.0
    with pytest.raises(ValueError):
        H.extrapolate(1.0, {"a": (-1.0, 2.0)})


# ------------------------------------------------------------------------- GradientSHAP closed forms
def test_linear_gradshap_exact_by_hand():
    W, b = torch.tensor([[1.0, 2.0]]), torch.tensor([0.5])
    x = torch.tensor([[1.0, 1.0]])
    # f(x) = 3.5, W^T f = [3.5, 7], times x
    assert torch.equal(H.linear_gradshap_exact(W, b, x), torch.tensor([[3.5, 7.0]], dtype=torch.float64))
    base = torch.tensor([1.0, 0.0])
    assert torch.equal(H.linear_gradshap_exact(W, b, x, base), torch.tensor([[0.0, 7.0]], dtype=torch.float64))


def test_linear_gradshap_as_published_by_hand():
    W, b = torch.tensor([[1.0]]), None
    x = torch.tensor([[1.0], [2.0], [10.0]])  # f = x; batches of 2: {1, 2}, {10}
    out = H.linear_gradshap_as_published(W, b, x, batch_size=2, n_samples=5)
    # batch 1: image 0 pairs with (0,1,0,1,0) -> (3*1+2*2)/5 = 1.4; image 1 with (1,0,1,0,1) -> (3*2+2*1)/5 = 1.6
    # batch 2 (one image) pairs with itself: 10
    assert torch.allclose(out, torch.tensor([[1.0 * 1.4], [2.0 * 1.6], [10.0 * 10.0]], dtype=torch.float64))
    # with one sample per image and B=1 the pairing is correct
    assert torch.equal(H.linear_gradshap_as_published(W, b, x, batch_size=1, n_samples=1),
                       H.linear_gradshap_exact(W, b, x))


def _linear_encoder(seed=0, d_in=12, d=3):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(d_in, d)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(lin.weight.shape, generator=g))
        lin.bias.copy_(torch.randn(lin.bias.shape, generator=g))
    return nn.Sequential(nn.Flatten(), lin).eval(), lin, torch.rand(6, 1, 3, 4, generator=g)


def test_closed_forms_match_lfxai_utils_both_pairings():
    from lfxai_utils import features as F

    enc, lin, x = _linear_encoder()
    W, b = lin.weight.detach(), lin.bias.detach()
    exact = H.linear_gradshap_exact(W, b, x)
    ours = F.label_free_attribution(enc, x, "gradient_shap", None, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ours.double(), exact, rtol=1e-5, atol=1e-5)
    pub = F.label_free_attribution(enc, x, "gradient_shap", None, pairing="as_published",
                                   generator=torch.Generator().manual_seed(0))
    bug = H.linear_gradshap_as_published(W, b, x, batch_size=len(x))
    assert torch.allclose(pub.double(), bug, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(bug, exact, atol=1e-2)


def test_closed_form_matches_the_authors_package():
    pytest.importorskip("lfxai")
    from captum.attr import GradientShap
    from lfxai.explanations.features import attribute_auxiliary
    from torch.utils.data import DataLoader, TensorDataset

    enc, lin, x = _linear_encoder(seed=1)
    dl = DataLoader(TensorDataset(x, torch.zeros(len(x))), batch_size=4)
    theirs = torch.from_numpy(attribute_auxiliary(enc, dl, torch.device("cpu"), GradientShap(enc),
                                                  baseline=torch.zeros(1, *x.shape[1:])))
    W, b = lin.weight.detach(), lin.bias.detach()
    assert torch.allclose(theirs.double(), H.linear_gradshap_as_published(W, b, x, batch_size=4), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------ run_benchmarks plumbing
def test_shared_minibatches_repeat_the_same_sequence():
    from bench.run_benchmarks import SharedMinibatches

    x = torch.arange(10.0).reshape(10, 1)
    idx = torch.tensor([[0, 1], [9, 9], [3, 4]])
    sm = SharedMinibatches(x, idx)
    first = [b[0].flatten().tolist() for b in sm]
    assert first == [[0.0, 1.0], [9.0, 9.0], [3.0, 4.0]]
    assert [b[0].flatten().tolist() for b in sm] == first and len(sm) == 3


def test_authors_hooks_time_named_loops_and_restore():
    from bench.run_benchmarks import authors_hooks

    orig_tqdm, orig_product = object(), object()
    le = types.SimpleNamespace(tqdm=orig_tqdm, product=orig_product)
    train, other = [1, 2], [7]
    rec = H.PhaseRecorder()
    with authors_hooks(le, rec, {id(train): "train"}):
        assert list(le.tqdm(train, unit="example")) == [1, 2]
        assert le.tqdm(other) is other  # not a named loop: passed through untouched
        assert list(le.product(range(2), range(3))) == list(itertools.product(range(2), range(3)))
    assert rec.counts == {"train": 2, "pairs": 6}
    assert le.tqdm is orig_tqdm and le.product is orig_product


# ----------------------------------------------------------------------------------------- output + page
def test_summary_row_computes_verdicts():
    r = H.summary_row("TracIn", "w", 2.0, 3, "measured", 500.0, 1, "extrapolated", 100.0,
                      "rel", 1e-6, 1e-4)
    assert r["speedup"] == 250.0 and r["meets_target"] is True and r["agrees"] is True
    r = H.summary_row("IG", "w", 2.0, 3, "measured", 1.0, 3, "measured", 1.0, "rel", 0.5, 1e-4)
    assert r["speedup"] == 0.5 and r["meets_target"] is False and r["agrees"] is False
    r = H.summary_row("x", "w", None, 0, "", None, 0, "", None)
    assert math.isnan(r["speedup"]) and r["meets_target"] == "" and r["agrees"] == ""
    assert list(r) == H.CSV_COLUMNS


def _results_dir(tmp_path: Path) -> Path:
    res = tmp_path / "bench" / "results"
    res.mkdir(parents=True)
    rows = [
        H.summary_row("TracIn", "1,000 × 1,000", 2.0, 3, "measured", 500.0, 1,
                      "EXTRAPOLATED from a measured 100 × 100 run", 100.0, "max rel", 1e-6, 1e-4, "n1"),
        H.summary_row("Label-free IG", "1,000 images", 4.0, 5, "measured", 2.0, 5, "measured", 1.0,
                      "max rel", 0.0, 1e-4, "n2", pairs=([4.0, 4.0, 2.0], [2.0, 1.6, 2.4])),
        H.summary_row("GradientSHAP, linear encoder: lfxai 0.1.1 vs closed form", "w", None, 0, "", None, 0, "",
                      None, "max rel", 0.8, 1e-4, "n3"),
    ]
    pd.DataFrame(rows, columns=H.CSV_COLUMNS).to_csv(res / "benchmarks.csv", index=False)
    (res / "machine.txt").write_text("cores: 2\nload average at start (1, 5, 15 min): 5.00, 1.0, 1.0\n")
    H.plot_speedups(rows, res / "speedups.png")
    return res


def test_render_performance_page(tmp_path):
    res = _results_dir(tmp_path)
    assert (res / "speedups.png").stat().st_size > 1000
    page = render_performance(res, page_dir=tmp_path / "book" / "_generated")
    assert page.startswith("# Performance")
    assert "![" in page and "(../../bench/results/speedups.png)" in page
    assert "| TracIn |" in page and "≈ 500 ¹" in page and "250×" in page and "target ≥ 100×: met" in page
    assert "0.5×, runs 0.4×–1.2× (target ≥ 1×: **not met**)" in page
    assert "250× (target" in page  # no range for a row without paired runs
    assert "**differs**" in page and "**agrees**" in page
    assert "Extrapolated, not measured at full size" in page and "EXTRAPOLATED from a measured 100 × 100 run" in page
    assert "{warning}" in page and "load average reached 5.0 on 2 cores" in page
    assert "No book timings" in page


def test_render_performance_book_timings_and_missing(tmp_path):
    assert "No benchmark results" in render_performance(tmp_path)
    pd.DataFrame({"page": ["a", "b"], "mode": ["inference"] * 2, "seconds": [12.5, 47.5]}).to_csv(
        tmp_path / "book_timings.csv", index=False)
    page = render_performance(tmp_path)
    assert "| a | inference | 12.5 |" in page and "Sum of the `seconds` column: 60 s (1.0 min)" in page


def test_render_performance_uses_the_builds_total_row(tmp_path):
    pd.DataFrame({"page": ["a", "b", "total: this build (2 pages + HTML, 2 CPU cores, no GPU)"],
                  "status": ["executed", "cached", ""], "seconds": [100.0, 20.0, 150.0]}).to_csv(
        tmp_path / "book_timings.csv", index=False)
    page = render_performance(tmp_path)
    # b was cached: its 20 s are from an earlier build, not this one's
    assert "Whole build (the `total` row): 150 s (2.5 min), of which executing the pages took 100 s" in page
    assert "Sum of the `seconds` column" not in page
    pd.DataFrame({"page": ["a", "b", "total: this build (2 pages + HTML, 2 pages at once, 2 CPU cores, no GPU)"],
                  "status": ["executed", "executed", ""], "seconds": [100.0, 80.0, 110.0]}).to_csv(
        tmp_path / "book_timings.csv", index=False)
    page = render_performance(tmp_path)      # two at once: the pages' times overlap, so no "of which"
    assert "150 s" not in page and "of which" not in page
    assert "Whole build (the `total` row): 110 s (1.8 min), 2 pages at a time; the executed pages' own times sum " \
           "to 180 s." in page


def test_bench_refuses_random_images_unless_asked(tmp_path, monkeypatch):
    """Without MNIST the benchmark stops with the fix, instead of silently timing random images."""
    from bench import run_benchmarks as RB

    monkeypatch.setenv("LFXAI_DATA_DIR", str(tmp_path / "empty"))
    args = RB.parse_args(["--n-train", "20", "--n-test", "20", "--n-features", "20"])
    with pytest.raises(RB.SyntheticFallbackRefused, match="LFXAI_DATA_DIR") as exc:
        RB.build_setup(args, tmp_path)
    assert exc.value.code != 0  # a SystemExit whose message is the exit status: non-zero
    args = RB.parse_args(["--n-train", "20", "--n-test", "20", "--n-features", "20", "--allow-synthetic"])
    setup = RB.build_setup(args, tmp_path)
    assert setup.data_label.startswith("RANDOM IMAGES") and setup.train_x.shape == (20, 1, 28, 28)


def test_if_budget_budgets_follow_the_book_and_the_page_renders(tmp_path):
    from bench import if_budget as IB
    from lfxai_utils.book.registry import CPU_BUDGETS

    (ref_label, ref_depth, ref_batch), (_, depth, batch), (_, zero, _) = IB.budgets()
    book = CPU_BUDGETS[(IB.NOTEBOOK, "mnist")]
    assert (ref_depth, ref_batch) == (100, 300) and zero == 0
    assert (depth, batch) == (book["if_recursion_depth"], book["if_batch_size"])
    assert "No comparison is present" in render_performance(tmp_path)
    rows = [{"budget": "paper (reference)", "recursion_depth": 100, "hvp_batch": 300, "n_train": 100, "n_test": 300,
             "seconds": 280.5, "spearman_mean": 1.0, "spearman_min": 1.0, "most_5": 0.9, "least_5": 0.01,
             "most_10": 0.85, "least_10": 0.02, "model": "m", "data": "d"},
            {"budget": "book page", "recursion_depth": 2, "hvp_batch": 64, "n_train": 100, "n_test": 300,
             "seconds": 1.25, "spearman_mean": 0.99912, "spearman_min": 0.98, "most_5": 0.9, "least_5": 0.0125,
             "most_10": 0.85, "least_10": 0.02, "model": "m", "data": "d"}]
    pd.DataFrame(rows, columns=IB.COLUMNS).to_csv(tmp_path / "if_budget.csv", index=False)
    page = render_performance(tmp_path)
    assert "(if-budget)=" in page and "100 train × 300 test" in page
    assert "| book page | 2 | 64 | 1.2 | 0.9991 (0.9800) | 0.900 | 0.013 | 0.850 | 0.020 |" in page
    assert "- book page: its similarity rates differ from the paper's budget's by at most 0.003 (least 5 %: 0.013 " \
           "against 0.010)." in page


def test_book_timings_round_trip_writer_to_performance_page(tmp_path):
    """``book.write_timings`` marks the whole build's row so that ``render_performance`` finds it."""
    from types import SimpleNamespace

    from lfxai_utils import book

    pages = [book.Outcome(SimpleNamespace(key=k), "executed", s, when="2026-01-01T00:00:00")
             for k, s in (("a", 30.0), ("b", 50.0))]
    book.write_timings(tmp_path / "book_timings.csv", pages, 95.0, html_rc=0)
    page = render_performance(tmp_path)
    assert "Whole build (the `total` row): 95 s (1.6 min), of which executing the pages took 80 s" in page


def test_split_note_describes_the_features_split(monkeypatch):
    from bench import run_benchmarks as RB
    from lfxai_utils import features as F

    monkeypatch.setattr(F, "CPU_PROBES_PER_PASS", 2048)
    note = RB.split_note("integrated_gradients", 250)
    assert "captum calls of 40 images (≤ 2,048 probes per forward pass, 50 steps each)" in note
    assert RB.split_note("saliency", 250) == ""  # 250 images = 250 probes: no split
    assert RB.split_note("gradient_shap", 250) == ""  # random: never split
    monkeypatch.setattr(F, "CPU_PROBES_PER_PASS", 100)
    assert "captum calls of 100 images (≤ 100 probes per forward pass)" in RB.split_note("saliency", 250)


def test_training_throughput_section_reads_the_csv_and_computes_its_statements(tmp_path):
    from lfxai_utils.book.performance import render_performance

    rows = [
        # model, option, threads, processes, step_ms, images_per_s
        ("A", "eager", 1, 1, 100.0, 3000), ("A", "eager", 2, 1, 80.0, 3750), ("A", "eager", 1, 2, 110.0, 5400),
        ("A", "compile", 1, 1, 90.0, 3300),
        ("B", "eager", 1, 1, 10.0, 30000), ("B", "eager", 2, 1, 6.0, 50000), ("B", "eager", 1, 2, 14.0, 42000),
        ("B", "compile", 1, 1, 12.0, 25000),
    ]
    import pandas as pd

    df = pd.DataFrame([dict(arch=m.lower(), model=m, batch=300, option=o, threads=t, processes=p, step_ms=s,
                            step_ms_min=s, step_ms_max=s, images_per_s=i, speedup_vs_eager_1thread=1.0,
                            agrees=True, loss_rel_diff="0.0e+00", notes="") for m, o, t, p, s, i in rows])
    with open(tmp_path / "training_throughput.csv", "w") as f:
        f.write("# 2026-01-01 00:00 UTC, torch x, 2 CPUs; median of 8 steps\n")
        df.to_csv(f, index=False)
    text = render_performance(tmp_path, tmp_path)
    sec = text[text.index("## Training throughput"):]
    assert "Measured 2026-01-01 00:00 UTC" in sec
    assert "faster than eager on one thread for 1 of 2 models (A)" in sec
    assert "more images per second than one two-thread process for 1 of 2 models (A)" in sec
    assert "| A | 300 | compile | 1 | 1 | 90.0 (90.0–90.0) | 3,300 |" in sec
    assert "No measurement is present" in render_performance(tmp_path / "none", tmp_path)
