"""``make checkpoints``: the job list (lfxai_utils.book.train), what counts as current (lfxai_utils.experiments.jobs),
the executor-agnostic runner, and a real resumable run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import pytest

from lfxai_utils.checkpoints import read_manifest
from lfxai_utils.book import train as T
from lfxai_utils.book.registry import BOOK_CHAPTERS
from lfxai_utils.experiments import jobs as J
from lfxai_utils.fixtures import write_fixture

ROOT = Path(__file__).resolve().parents[1]


def _pages(*keys):
    return [p for c in BOOK_CHAPTERS for p in c.pages if any(k == p.key for k in keys)]


def test_pages_share_models_and_each_checkpoint_is_one_job():
    jobs = T.page_jobs(_pages("claim1_feature_consistency__mnist", "claim1_example_consistency__mnist",
                              "claim2_pretext__mnist", "encoder_vs_decoder__mnist", "claim1_roar__mnist"))
    names = [n for j in jobs for n in j.names]
    assert len(names) == len(set(names))
    assert names.count("claim1_mnist_denoising-ae") == 1              # Claim 1.1 and 1.2 share their model
    # encoder vs full model reuses the pretext classifiers and denoising AEs: no job of its own
    assert all(j.notebook != "encoder_vs_decoder" for j in jobs)
    assert sum(1 for n in names if n.startswith("claim2-pretext_mnist_")) == 20
    roar = [j for j in jobs if j.notebook == "claim1_roar"]
    assert len(roar) == 4 and roar[0].names == ("claim1-roar_mnist_reconstruction-ae",)
    assert all(j.after == roar[0].names for j in roar[1:])            # retraining waits for the base model
    assert sum(len(j.names) for j in roar[1:]) == 3 * 5 * 3           # methods x levels x seeds
    # train-only page parameters: the VAE grid trains the paper's 5 runs while the page explains fewer
    vae = T.page_jobs(_pages("claim3_disentanglement__mnist"))
    assert len(vae) == 2 * 3 * 5 and vae[0].selector == {"loss": "beta", "beta": 1.0, "run": 0}


class InlineExecutor:
    """A concurrent.futures-style executor that runs each task at submit time (records the order and overlap)."""

    def __init__(self, fn=None):
        self.order, self.fn = [], fn

    def submit(self, fn, job, *args):
        self.order.append(job["names"][0])
        f = Future()
        f.set_result((self.fn or (lambda j: {"key": j["names"][0], "trained": list(j["names"]), "loaded": [],
                                              "seconds": 0.0, "error": None}))(job))
        return f


def _job(name, after=(), cost=1.0):
    return J.TrainJob("claim1_roar", "mnist", None, (name,), {}, ("mnist", {}), cost, after=tuple(after))


def test_runner_orders_by_dependencies_and_skips_dependents_of_failures(tmp_path):
    jobs = [_job("b", after=["a"]), _job("a"), _job("c", after=["b"]), _job("d")]
    ex = InlineExecutor()
    res = T.run_jobs(jobs, executor=ex, checkpoint_dir=tmp_path, data_dir=None, log_dir=tmp_path, max_parallel=1,
                     poll_s=0, progress=False)
    assert ex.order == ["a", "b", "c", "d"] or ex.order.index("a") < ex.order.index("b") < ex.order.index("c")
    assert {r["key"] for r in res} == {"a", "b", "c", "d"} and not any(r["error"] for r in res)

    def fail_a(j):
        return {"key": j["names"][0], "trained": [], "loaded": [], "seconds": 0.0,
                "error": "boom" if j["names"][0] == "a" else None}

    res = {r["key"]: r for r in T.run_jobs(jobs, executor=InlineExecutor(fail_a), checkpoint_dir=tmp_path,
                                           data_dir=None, log_dir=tmp_path, poll_s=0, progress=False)}
    assert res["a"]["error"] == "boom" and "skipped" in res["b"]["error"] and "skipped" in res["c"]["error"]
    assert res["d"]["error"] is None


class ThreadedExecutor:
    """Runs tasks on threads; records the largest number in flight at once."""

    def __init__(self):
        self.active, self.peak, self.lock = 0, 0, threading.Lock()

    def submit(self, fn, job, *args):
        f = Future()

        def work():
            with self.lock:
                self.active += 1
                self.peak = max(self.peak, self.active)
            time.sleep(0.05)
            with self.lock:
                self.active -= 1
            f.set_result({"key": job["names"][0], "trained": [], "loaded": [], "seconds": 0.05, "error": None})

        threading.Thread(target=work).start()
        return f


def test_runner_keeps_at_most_max_parallel_jobs_in_flight(tmp_path):
    ex = ThreadedExecutor()
    res = T.run_jobs([_job(str(i)) for i in range(6)], executor=ex, checkpoint_dir=tmp_path, data_dir=None,
                     log_dir=tmp_path, max_parallel=2, poll_s=0.005, progress=False)
    assert len(res) == 6 and ex.peak == 2


@pytest.mark.slow
def test_make_checkpoints_trains_what_is_missing_then_nothing_then_what_went_stale(tmp_path, capsys):
    """A real run (2 worker processes) on a generated MNIST: resumable, and stale when the data changes."""
    data, ckpt = tmp_path / "data", tmp_path / "ckpt"
    write_fixture("mnist", data, n_train=60, n_test=20)
    args = ["--only", "claim1_feature_consistency__mnist", "--jobs", "2", "--checkpoint-dir", str(ckpt),
            "--data-dir", str(data), "--log-dir", str(tmp_path / "logs")]
    assert T.main(args) == 0
    name = "claim1_mnist_denoising-ae"
    assert "training every model into" in (tmp_path / "logs" / f"{name}.log").read_text()   # the job's own log
    first = read_manifest(ckpt, name)
    assert first["data"]["n_train"] == 60 and first["settings"]["n_epochs"] == 100
    assert first["training"]["n_train"] == 54 and first["training"]["n_val"] == 6
    assert first["tracin_checkpoints"] and first["settings"]["checkpoint_every"] == 10
    capsys.readouterr()
    assert T.main(args) == 0                                        # everything current: nothing trained
    assert "1 current, 0 to train" in capsys.readouterr().out
    assert read_manifest(ckpt, name)["file"] == first["file"]
    write_fixture("mnist", data, n_train=80, n_test=20, seed=7)      # other data files: the model is stale
    memo: dict = {}
    (job,) = T.page_jobs(_pages("claim1_feature_consistency__mnist"))
    state, why = J.job_state(job, ckpt, data, memo)
    assert state == "stale" and "other data files" in why
    assert T.main(args) == 0
    again = read_manifest(ckpt, name)
    assert again["data"]["n_train"] == 80 and again["file"]["sha256"] != first["file"]["sha256"]
    listed = {t["name"] for t in again["tracin_checkpoints"]}
    on_disk = {p.stem for p in ckpt.glob(f"{name}_epoch*.json")}
    assert on_disk == listed                                        # no TracIn file of the old model lingers


def test_saving_a_retrained_model_removes_tracin_files_its_manifest_no_longer_lists(tmp_path):
    from lfxai_utils.checkpoints import save_checkpoint
    from lfxai_utils.models import build_model
    from lfxai_utils.training import TrainResult

    model = build_model("mnist_classifier", latent_dim=2)
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def result(epochs):
        return TrainResult(history=[{"epoch": 0}], best_epoch=0, epochs_run=1, best_val_loss=None,
                           final_train_loss=0.0, seed=0, n_train=1, n_val=0,
                           tracin_checkpoints=[(e, state) for e in epochs])

    save_checkpoint(model, tmp_path, "m", settings={}, data_info={}, train_result=result([0, 10, 20]))
    save_checkpoint(model, tmp_path, "m_epoch100x", settings={}, data_info={})        # not one of m's files
    assert {p.name for p in tmp_path.glob("m_epoch*.pt")} == {"m_epoch0.pt", "m_epoch10.pt", "m_epoch20.pt",
                                                              "m_epoch100x.pt"}
    save_checkpoint(model, tmp_path, "m", settings={}, data_info={}, train_result=result([0]))
    assert {p.name for p in tmp_path.glob("m_epoch*")} == {"m_epoch0.pt", "m_epoch0.json", "m_epoch100x.pt",
                                                           "m_epoch100x.json"}
    assert [t["name"] for t in read_manifest(tmp_path, "m")["tracin_checkpoints"]] == ["m_epoch0"]


def test_job_state_reads_manifests_data_and_budget(tmp_path, monkeypatch):
    data, ckpt = tmp_path / "data", tmp_path / "ckpt"
    write_fixture("mnist", data, n_train=40, n_test=20)
    (job,) = T.page_jobs(_pages("claim1_feature_consistency__mnist"))
    memo: dict = {}
    assert J.job_state(job, ckpt, data, memo)[0] == "missing"
    info = J._data_info(job.data, data, memo)
    name = job.names[0]
    ckpt.mkdir()
    manifest = {"format": "lfxai_utils.checkpoint/1", "name": name, "file": {"sha256": "x", "size": 1},
                "settings": dict(job.expect[name]), "data": info}
    (ckpt / f"{name}.json").write_text(json.dumps(manifest))
    (ckpt / f"{name}.pt").write_bytes(b"x")
    assert J.job_state(job, ckpt, data, memo) == ("current", "")
    (ckpt / f"{name}.json").write_text(json.dumps({**manifest, "settings": {**manifest["settings"], "n_epochs": 20}}))
    state, why = J.job_state(job, ckpt, data, memo)
    assert state == "stale" and "n_epochs" in why
    from lfxai_utils import data as D

    monkeypatch.delenv(D.ENV_VAR, raising=False)
    monkeypatch.setattr(D, "DEFAULT_DATA_DIR", tmp_path / "empty")
    assert J.job_state(job, ckpt, tmp_path / "nowhere", {})[0] == "no-data"


def test_pages_follow_the_order_of_the_patterns_and_an_exact_key_selects_one_page():
    pages = [p for c in BOOK_CHAPTERS for p in c.pages]
    keys = [p.key for p in T.select_pages(pages, ["claim2_pretext__cifar10", "claim1_feature_consistency__mnist"])]
    assert keys == ["claim2_pretext__cifar10", "claim1_feature_consistency__mnist"]     # not cifar100
    assert [p.key for p in T.select_pages(pages, ["simclr"])] == [
        "claim1_feature_consistency__cifar10-simclr", "claim1_example_consistency__cifar10-simclr"]
    assert T.select_pages(pages, []) == pages


def test_a_page_epoch_cap_sets_the_budget_the_tracin_interval_and_the_cost():
    (job,) = T.page_jobs(_pages("claim1_feature_consistency__cifar10"))
    name = job.names[0]
    assert job.expect[name]["n_epochs"] == 10 and job.exp_params == {"n_epochs": 10}
    assert job.expect[name]["checkpoint_every"] == 2                  # 5 TracIn checkpoints in 10 epochs
    (full,) = T.page_jobs([p.__class__(p.notebook, p.dataset, p.title, p.model, p.params, {})
                           for p in _pages("claim1_feature_consistency__cifar10")])
    assert full.expect[name]["n_epochs"] == 100 and full.expect[name]["checkpoint_every"] == 10
    assert job.cost_s == pytest.approx(full.cost_s / 10)


def test_capped_checkpoint_interval_keeps_several_tracin_checkpoints():
    from lfxai_utils.experiments.common import capped_checkpoint_every as cap

    assert cap(10, 100, 100) == 10 and cap(10, 100, 200) == 10 and cap(None, 100, 10) is None
    assert cap(10, 100, 10) == 2 and cap(25, 150, 3) == 1 and cap(10, 100, 60) == 10
    assert len(range(0, 10, cap(10, 100, 10))) == 5


_ORPHAN_SCRIPT = r"""
import os, sys, time
from pathlib import Path
from lfxai_utils.book import train

def report_pid(path):
    Path(path).write_text(str(os.getpid()))
    time.sleep(120)

if __name__ == "__main__":
    ex = train.make_executor("local", 1, 1, Path(sys.argv[2]))
    ex.submit(report_pid, sys.argv[1])
    time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")                                   # a zombie has stopped running


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux-only")
def test_killing_the_runner_stops_its_workers(tmp_path):
    """A stopped `make checkpoints` must not leave workers training (a past session found two orphans writing the
    same checkpoints as the restarted run)."""
    script = tmp_path / "runner.py"
    script.write_text(_ORPHAN_SCRIPT)
    pid_file = tmp_path / "worker.pid"
    runner = subprocess.Popen([sys.executable, str(script), str(pid_file), str(tmp_path)], cwd=ROOT)
    try:
        deadline = time.time() + 60
        while not (pid_file.exists() and pid_file.read_text()) and time.time() < deadline:
            time.sleep(0.2)
        worker = int(pid_file.read_text())
        os.kill(worker, 0)                                           # the worker runs
        runner.kill()                                                # SIGKILL: no cleanup code of the runner runs
        runner.wait(10)
        deadline = time.time() + 15
        while time.time() < deadline and _alive(worker):
            time.sleep(0.2)
        if _alive(worker):
            os.kill(worker, signal.SIGKILL)
            pytest.fail("the worker outlived the runner")
    finally:
        if runner.poll() is None:
            runner.kill()


def test_job_patterns_pick_jobs_and_bring_their_dependencies():
    jobs = T.page_jobs(_pages("claim1_roar__mnist", "claim3_disentanglement__mnist"))
    (vae,) = T.select_jobs(jobs, ["beta-vae_beta5_run3"])
    assert vae.key == "claim3-disvae_mnist_beta-vae_beta5_run3" and not vae.after
    picked = T.select_jobs(jobs, ["random-10_run0"])
    assert [j.key for j in picked] == ["claim1-roar_mnist_reconstruction-ae",        # ROAR's base model, first
                                       "claim1-roar_mnist_reconstruction-ae_random-10_run0"]
    assert set(picked[-1].after) <= {n for j in picked for n in j.names}
    assert T.select_jobs(jobs, ["no-such-job"]) == []
    # the jobs train in the order of the patterns (here: run 3 before run 0), each pattern's in the page's order
    keys = [j.key for j in T.select_jobs(jobs, ["_run3", "beta-vae_beta10_run0"])]
    assert keys[:6] == [f"claim3-disvae_mnist_{m}_beta{b}_run3" for m in ("beta-vae", "tc-vae") for b in (1, 5, 10)]
    assert keys[6:] == ["claim3-disvae_mnist_beta-vae_beta10_run0"]
    # a dependency still comes before its dependent, whatever the pattern order
    keys = [j.key for j in T.select_jobs(jobs, ["random-10_run0", "integrated-gradients-10_run0"])]
    assert keys == ["claim1-roar_mnist_reconstruction-ae", "claim1-roar_mnist_reconstruction-ae_random-10_run0",
                    "claim1-roar_mnist_reconstruction-ae_integrated-gradients-10_run0"]


def test_a_job_pattern_that_matches_nothing_is_an_error(capsys):
    assert T.main(["--only", "claim3_disentanglement__mnist", "--job", "no-such-job", "--list"]) == 2
    assert "no job key contains 'no-such-job'" in capsys.readouterr().err
