"""The training engine and the grid: records, schedule, class weights, resume after SIGKILL,
exactly-once training under concurrent workers, and a smoke grid on the real data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from metanet_utils.config import RunConfig
from metanet_utils.constants import CLASS_CODES
from metanet_utils.train import RECORD_FILES, class_weight_tensor, is_complete, make_scheduler

ROOT = Path(__file__).resolve().parents[1]


def write_profile(path: Path, **overrides) -> Path:
    """A tiny profile: test_resnet, 2 folds, small images, few real images."""
    import yaml

    base = dict(name=path.stem, data="auto", max_images=120, synthetic_images=120, backbones=["test_resnet"],
                fusions=["metanet"], n_folds=2, folds=[0], epochs=1, image_size=40, crop_size=32, batch_size=16,
                lr=0.01, pretrained=False, ablations={"table3": False, "table4": False})
    base.update(overrides)
    path.write_text(yaml.safe_dump(base))
    return path


def run_cli(args, env_root: Path, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "METANET_ROOT": str(env_root), "METANET_RESULTS_DIR": str(env_root / "results"),
           "METANET_CACHE_DIR": str(env_root / "cache"), "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "metanet_utils", *args], env=env, capture_output=True, text=True,
                          **kw)


def test_lr_is_divided_by_ten_at_the_paper_milestones():
    cfg = RunConfig(backbone="test_resnet")
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr, momentum=0.9)
    sched = make_scheduler(opt, cfg)
    lrs = []
    for _ in range(cfg.epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    lrs = np.array(lrs)
    assert np.allclose(lrs[:50], 1e-3) and np.allclose(lrs[50:120], 1e-4)
    assert np.allclose(lrs[120:200], 1e-5) and np.allclose(lrs[200:250], 1e-6)


def test_class_weights_are_inverse_frequency_of_the_training_fold():
    labels = np.array([0] * 6 + [1] * 3 + [2] * 1 + [3, 4, 5, 6])
    w = class_weight_tensor(labels).numpy()
    counts = np.bincount(labels, minlength=7)
    np.testing.assert_allclose(w, len(labels) / (7 * counts), rtol=1e-6)
    # the weighted loss of a uniform prediction is then the same for every class
    assert np.isclose((w * counts).sum() / len(labels), 1.0)


@pytest.fixture(scope="module")
def smoke_grid(real_data_dir, tmp_path_factory):
    """The smoke profile's grid on the real data, fold 0 of Table 1 (plus a check that a rerun trains nothing)."""
    root = tmp_path_factory.mktemp("smoke_root")
    (root / "configs").symlink_to(ROOT / "configs")
    out = run_cli(["grid", "--profile", "smoke", "--data-dir", str(real_data_dir), "--only", "fold=0",
                   "meta_layers=0,2", "meta_features=,age+sex+localization"], root, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return root, out


def test_validation_loss_is_the_class_weighted_mean_over_the_whole_fold_whatever_the_batch():
    """With class weights w, the fold's loss is sum(w_y * -log p_y) / sum(w_y) over all its images: counted here
    from the returned probabilities, for evaluation batches that split the classes unevenly."""
    from torch import nn

    from metanet_utils.augment import BatchAugment
    from metanet_utils.models import build_model
    from metanet_utils.train import DeviceData, evaluate_model

    rng = np.random.default_rng(0)
    n = 40
    labels = np.r_[np.zeros(25, int), rng.integers(1, 7, n - 25)]  # one large class, as NV
    folds = np.r_[np.zeros(30, int), np.ones(n - 30, int)]
    images = rng.integers(0, 256, (n, 36, 36, 3), dtype=np.uint8)
    meta = rng.random((n, 17), dtype=np.float32)
    dev = torch.device("cpu")
    data = DeviceData.build(images, meta, labels, folds, 0, [str(i) for i in range(n)], dev)
    torch.manual_seed(0)
    model = build_model("test_resnet", "metanet", pretrained=False)
    aug = BatchAugment(crop=32, mean=(0.5,) * 3, std=(0.25,) * 3)
    w = torch.tensor([0.2, 1.0, 3.0, 0.5, 2.0, 1.5, 4.0])
    crit = nn.CrossEntropyLoss(weight=w)
    y = labels[folds == 0]
    expected = None
    for bs in (30, 7, 4):
        probs, loss = evaluate_model(model, data, aug, dev, None, False, batch_size=bs, criterion=crit)
        if expected is None:
            wy = w.numpy()[y].astype(np.float64)
            expected = float((wy * -np.log(probs[np.arange(len(y)), y])).sum() / wy.sum())
        assert loss == pytest.approx(expected, rel=1e-5), bs
    assert evaluate_model(model, data, aug, dev, None, False, batch_size=7, criterion=nn.CrossEntropyLoss())[1] == \
        pytest.approx(float(-np.log(probs[np.arange(len(y)), y]).mean()), rel=1e-5)


def test_smoke_grid_writes_complete_records(smoke_grid):
    root, out = smoke_grid
    runs = sorted(p for p in (root / "results" / "runs").iterdir() if not p.name.startswith("."))
    assert {json.loads((r / "config.json").read_text())["fusion"] for r in runs} == {"none", "concat", "metanet"}
    for r in runs:
        assert is_complete(r)
        assert all((r / f).is_file() for f in RECORD_FILES)
        pred = pd.read_csv(r / "predictions.csv")
        assert list(pred.columns) == ["image", *CLASS_CODES]
        np.testing.assert_allclose(pred[list(CLASS_CODES)].sum(axis=1), 1.0, atol=1e-5)
        metrics = json.loads((r / "metrics.json").read_text())
        assert 0.0 <= metrics["mcr"] <= 1.0 and set(metrics["per_class_recall"]) == set(CLASS_CODES)
        assert np.array(metrics["confusion_matrix"]).sum() == len(pred) == metrics["n_val"]
        assert metrics["data_kind"] == "real"
        hist = pd.read_csv(r / "history.csv")
        assert list(hist["epoch"]) == [1]


def test_rerunning_the_grid_trains_nothing(smoke_grid, real_data_dir):
    root, _ = smoke_grid
    out = run_cli(["grid", "--profile", "smoke", "--data-dir", str(real_data_dir), "--only", "fold=0",
                   "meta_layers=0,2", "meta_features=,age+sex+localization"], root, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "trained now 0, already complete 4" in out.stdout  # Table 1 (3) + Table 4 concat k=2


def test_run_killed_with_sigkill_resumes_to_the_same_result(real_data_dir, tmp_path):
    epochs = 25  # long enough that the kill lands mid-run even on an idle machine
    prof = write_profile(tmp_path / "resume.yaml", epochs=epochs, deterministic=True)
    args = ["grid", "--profile", str(prof), "--data-dir", str(real_data_dir)]
    ref_root, int_root = tmp_path / "ref", tmp_path / "int"
    out = run_cli(args, ref_root, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]

    env = {**os.environ, "METANET_ROOT": str(int_root), "METANET_RESULTS_DIR": str(int_root / "results"),
           "METANET_CACHE_DIR": str(int_root / "cache")}
    proc = subprocess.Popen([sys.executable, "-m", "metanet_utils", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    work = int_root / "results" / "runs" / ".work"
    deadline = time.time() + 300
    while time.time() < deadline and not list(work.glob("*/checkpoint.pt")):
        time.sleep(0.05)
    time.sleep(0.1)  # into the next epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ckpt = list(work.glob("*/checkpoint.pt"))
    assert ckpt, "the run finished before it could be killed; make it longer"
    done_before = torch.load(ckpt[0], weights_only=False)["epoch"]
    assert 1 <= done_before < epochs
    out = run_cli(args, int_root, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"resuming after epoch {done_before}/{epochs}" in out.stdout

    (ref_run,) = [p for p in (ref_root / "results" / "runs").iterdir() if not p.name.startswith(".")]
    int_run = int_root / "results" / "runs" / ref_run.name
    assert is_complete(int_run)
    ref_pred = pd.read_csv(ref_run / "predictions.csv")
    int_pred = pd.read_csv(int_run / "predictions.csv")
    pd.testing.assert_frame_equal(ref_pred, int_pred, check_exact=True)
    ref_hist, int_hist = pd.read_csv(ref_run / "history.csv"), pd.read_csv(int_run / "history.csv")
    pd.testing.assert_series_equal(ref_hist["train_loss"], int_hist["train_loss"], check_exact=True)
    assert json.loads((ref_run / "metrics.json").read_text())["mcr"] == \
        json.loads((int_run / "metrics.json").read_text())["mcr"]


def test_two_concurrent_workers_train_each_run_exactly_once(real_data_dir, tmp_path):
    prof = write_profile(tmp_path / "conc.yaml", fusions=["none", "concat", "metanet"], folds=[0, 1], epochs=1)
    root = tmp_path / "root"
    # prepare the cache once so the two workers start training at the same time
    assert run_cli(["data", "prepare", "--profile", str(prof), "--data-dir", str(real_data_dir)], root,
                   timeout=300).returncode == 0
    out = run_cli(["grid", "--profile", str(prof), "--data-dir", str(real_data_dir), "--workers", "2"], root,
                  timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    events = (root / "results" / "runs" / ".events.log").read_text().splitlines()
    starts = pd.Series([e.split()[-1] for e in events if " start " in e])
    completes = pd.Series([e.split()[-1] for e in events if " complete " in e])
    assert len(completes) == 6 and completes.is_unique
    assert starts.is_unique and set(starts) == set(completes)
    pids = {e.split()[2] for e in events if " start " in e}
    assert len(pids) == 2, "both workers should have trained something"


def test_checkpoint_interval_skips_checkpoints_between_the_first_and_the_last_epoch(real_data_dir, tmp_path,
                                                                                    monkeypatch):
    from metanet_utils import train as train_mod
    from metanet_utils.dataset import open_dataset

    ds = open_dataset(real_data_dir, max_images=120)
    saved = []
    real = train_mod._save_checkpoint
    monkeypatch.setattr(train_mod, "_save_checkpoint", lambda path, state: (saved.append(state["epoch"]),
                                                                              real(path, state)))
    base = RunConfig(backbone="test_resnet", fusion="none", meta_features=(), meta_layers=0, n_folds=2, epochs=4,
                     image_size=40, crop_size=32, batch_size=16, pretrained=False, data_kind=ds.kind,
                     data_fingerprint=ds.fingerprint)
    m_every = train_mod.train_run(base, ds, runs_dir=tmp_path / "every", device="cpu", progress=False)
    assert saved == [1, 2, 3, 4]
    saved.clear()
    sparse = base.replace(checkpoint_interval_s=3600.0)
    assert sparse.run_id == base.run_id  # how often it checkpoints is not part of what the run is
    m_sparse = train_mod.train_run(sparse, ds, runs_dir=tmp_path / "sparse", device="cpu", progress=False)
    assert saved == [1, 4] and m_sparse["mcr"] == m_every["mcr"]
    saved.clear()
    # an interruption (stop_after_epochs, the testing hook) always leaves its checkpoint
    r = train_mod.train_run(sparse, ds, runs_dir=tmp_path / "stop", device="cpu", progress=False, stop_after_epochs=3)
    assert r["interrupted"] and saved == [1, 3]


def test_wall_time_of_a_resumed_run_counts_its_earlier_sessions(real_data_dir, tmp_path):
    from metanet_utils import train as train_mod
    from metanet_utils.dataset import open_dataset

    ds = open_dataset(real_data_dir, max_images=120)
    cfg = RunConfig(backbone="test_resnet", fusion="none", meta_features=(), meta_layers=0, n_folds=2, epochs=2,
                    image_size=40, crop_size=32, batch_size=16, pretrained=False, data_kind=ds.kind,
                    data_fingerprint=ds.fingerprint)
    runs = tmp_path / "runs"
    t0 = time.perf_counter()
    assert train_mod.train_run(cfg, ds, runs_dir=runs, device="cpu", progress=False, stop_after_epochs=1)["interrupted"]
    first = time.perf_counter() - t0
    ckpt = runs / ".work" / cfg.run_id / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=False)
    assert 0 < state["wall_time_s"] <= first and state["sessions"] == 1
    state["wall_time_s"] = 1000.0  # as if the interrupted session had taken 1000 s
    torch.save(state, ckpt)
    t0 = time.perf_counter()
    m = train_mod.train_run(cfg, ds, runs_dir=runs, device="cpu", progress=False)
    second = time.perf_counter() - t0
    assert m["sessions"] == 2 and m["epochs_done"] == 2
    assert 1000.0 < m["wall_time_s"] <= 1000.0 + second


def test_grid_progress_runs_prints_one_line_per_finished_run(real_data_dir, isolated_root, capsys):
    """``progress="runs"`` (notebook 07): the grid's first line, one line per run as it finishes (its MCR and
    time), the summary once; no per-epoch lines, alone or trained together. ``progress=True`` is unchanged."""
    import re

    from metanet_utils.config import load_profile
    from metanet_utils.dataset import open_dataset
    from metanet_utils.grid import run_grid

    ds = open_dataset(real_data_dir, max_images=120)
    prof = load_profile("smoke", backbones=["test_resnet"], fusions=["none", "metanet"], n_folds=2, folds=None,
                        epochs=2, milestones=[1], image_size=40, crop_size=32, batch_size=16, runs_together=1,
                        ablations={"table3": False, "table4": False})
    line = re.compile(r"^\[[1-4]/4\] test_resnet (none|metanet age\+sex\+localization k=2) fold [01]: "
                      r"MCR \d+\.\d % \(\d+ s\)$")
    for name, together in (("alone", 1), ("together", 2)):
        s = run_grid(prof, ds, runs_dir=isolated_root / name, device="cpu", progress="runs", together=together)
        assert not s.failed and len(s.trained) == 4
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].startswith("grid smoke: 4 runs, 0 complete, 4 to do"), lines
        assert sum(bool(line.match(x)) for x in lines) == 4, lines
        assert lines[-1] == "grid: 4 runs; trained now 4, already complete 0, failed 0"
        assert len(lines) == 6, lines  # nothing else: no epoch, no "done", no "--- run" line
    again = run_grid(prof, ds, runs_dir=isolated_root / "alone", device="cpu", progress="runs")
    assert again.trained == [] and capsys.readouterr().out.count("trained now 0, already complete 4") == 1
    one = run_grid(prof, ds, runs_dir=isolated_root / "loud", device="cpu", progress=True, only={"fold": ["0"],
                   "fusion": ["none"]})
    out = capsys.readouterr().out
    assert len(one.trained) == 1 and "--- run test_resnet-none" in out and "epoch 2/2" in out and "done: MCR" in out
    with pytest.raises(ValueError, match="progress='loud' is not allowed"):
        run_grid(prof, ds, runs_dir=isolated_root / "x", device="cpu", progress="loud")


def test_grid_progress_auto_is_per_run_for_short_runs_and_per_epoch_for_long_ones():
    """``progress="auto"`` (notebook 07's default): the demo's runs take seconds, a line per run is enough; the
    paper's take hours, and a line per epoch is their only sign of life."""
    from metanet_utils.config import RunConfig, load_profile
    from metanet_utils.grid import SHORT_RUN_EPOCHS, enumerate_runs, resolve_progress

    class Data:  # what enumerate_runs reads of a dataset
        kind, fingerprint = "real", "test"

    assert resolve_progress("auto", enumerate_runs(load_profile("demo"), Data())) == "runs"
    assert resolve_progress("auto", enumerate_runs(load_profile("paper"), Data())) == "epochs"
    short, long = (RunConfig(backbone="test_resnet", epochs=e) for e in (SHORT_RUN_EPOCHS, SHORT_RUN_EPOCHS + 1))
    assert resolve_progress("auto", [short]) == "runs" and resolve_progress("auto", [short, long]) == "epochs"
    assert [resolve_progress(p, [long]) for p in (True, False, "runs", "epochs")] == [True, False, "runs", "epochs"]
    with pytest.raises(ValueError, match="'runs' or 'auto'"):
        resolve_progress("yes", [short])
