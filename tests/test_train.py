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
from metanet_utils.train import RECORD_FILES, class_weight_tensor, is_complete

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_profile(path: Path, **overrides) -> Path:
    """A tiny profile: test_resnet, 2 folds, small images, few real images."""
    import yaml

    base = dict(name=path.stem, data="auto", max_images=120, backbones=["test_resnet"],
                fusions=["metanet"], n_folds=2, folds=[0], epochs=1, image_size=40, crop_size=32, batch_size=16,
                lr=0.01, pretrained=False, ablations={"table3": False, "table4": False})
    base.update(overrides)
    path.write_text(yaml.safe_dump(base))
    return path


def cli_env(env_root: Path) -> dict:
    """A private results and cache folder; one torch thread per process (tiny models on a busy 2-core machine)."""
    return {**os.environ, "METANET_ROOT": str(env_root), "METANET_RESULTS_DIR": str(env_root / "results"),
            "METANET_CACHE_DIR": str(env_root / "cache"), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def run_cli(args, env_root: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "metanet_utils", *args], env=cli_env(env_root), capture_output=True,
                          text=True, **kw)


def test_class_weight_tensor_is_n_over_k_n_c_with_unit_mean_weight_per_image():
    labels = np.array([0] * 6 + [1] * 3 + [2] * 1 + [3, 4, 5, 6])
    w = class_weight_tensor(labels).numpy()
    counts = np.bincount(labels, minlength=7)
    np.testing.assert_allclose(w, len(labels) / (7 * counts), rtol=1e-6)
    # the weighted loss of a uniform prediction is then the same for every class
    assert np.isclose((w * counts).sum() / len(labels), 1.0)


@pytest.mark.parametrize("fusion", ["none", "concat", "metanet", "metablock"])
def test_make_optimizer_is_the_papers_sgd_over_every_trainable_parameter_once(fusion):
    """A default RunConfig gives plain SGD (Sec. 3.1: lr 1e-3, momentum 0.9, weight decay 1e-4, no Nesterov,
    no dampening) whose groups hold each trainable parameter of the model exactly once and nothing else."""
    from metanet_utils.models import build_model
    from metanet_utils.train import make_optimizer

    cfg = RunConfig(backbone="test_resnet", fusion=fusion, meta_features=() if fusion == "none" else
                    ("age", "sex", "localization"))
    model = build_model("test_resnet", fusion, meta_layers=cfg.meta_layers, pretrained=False)
    opt = make_optimizer(model, cfg)
    assert type(opt) is torch.optim.SGD
    for g in opt.param_groups:
        assert (g["lr"], g["momentum"], g["weight_decay"], g["nesterov"], g["dampening"]) == \
            (1e-3, 0.9, 1e-4, False, 0), {k: v for k, v in g.items() if k != "params"}
    in_groups = [id(p) for g in opt.param_groups for p in g["params"]]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert len(in_groups) == len(set(in_groups)), "a parameter appears in two groups"
    assert set(in_groups) == trainable and len(trainable) == len(list(model.parameters()))


def test_device_data_splits_the_rows_by_fold_in_row_order():
    """DeviceData.build on the CPU: training rows are flatnonzero(folds != k), validation rows flatnonzero(folds == k),
    both ascending and disjoint, covering every row; val_ids are the validation images' ids in row order; the
    arrays keep their values (labels int64, metadata float32)."""
    from metanet_utils.train import DeviceData

    rng = np.random.default_rng(3)
    n = 23
    folds = rng.integers(0, 3, n)
    labels = rng.integers(0, 7, n)
    meta = rng.random((n, 5))
    images = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    ids = [f"ISIC_{i:07d}" for i in rng.permutation(10_000)[:n]]
    for k in range(3):
        d = DeviceData.build(images, meta, labels, folds, k, ids, torch.device("cpu"))
        tr, va = d.train_idx.numpy(), d.val_idx.numpy()
        np.testing.assert_array_equal(tr, [i for i in range(n) if folds[i] != k])
        np.testing.assert_array_equal(va, [i for i in range(n) if folds[i] == k])
        assert not set(tr) & set(va) and len(tr) + len(va) == n
        assert d.val_ids == [ids[i] for i in range(n) if folds[i] == k]
        assert d.labels.dtype == torch.long and d.meta.dtype == torch.float32
        np.testing.assert_array_equal(d.labels.numpy(), labels)
        np.testing.assert_array_equal(d.meta.numpy(), meta.astype(np.float32))
        np.testing.assert_array_equal(d.images.numpy(), images)


def test_a_runs_loss_weights_come_from_its_training_fold_only_and_its_lr_drops_at_the_milestones(real_data_dir,
                                                                                                 isolated_root):
    """The class weights a run trains with are n / (k * n_c) over the dx of the images whose saved fold is not
    the run's fold (counted here from the folds file and the metadata), not those of the whole data set; its
    schedule divides the paper's lr by ten at epochs 50, 120 and 200."""
    from metanet_utils import train as train_mod
    from metanet_utils.dataset import open_dataset

    ds = open_dataset(real_data_dir, max_images=120)
    official = pd.read_csv(real_data_dir / "HAM10000_metadata.csv").set_index("image_id")["dx"]
    for fold in (0, 1):
        cfg = RunConfig(backbone="test_resnet", fusion="none", meta_features=(), meta_layers=0, n_folds=2, fold=fold,
                        epochs=1, image_size=40, crop_size=32, batch_size=16, pretrained=False, data_kind=ds.kind,
                        data_fingerprint=ds.fingerprint)
        session = train_mod.Run(cfg, ds, isolated_root / "runs", torch.device("cpu"), progress=False)
        saved = pd.read_csv(isolated_root / "results" / "folds" / f"{ds.fingerprint}-image-2-s0.csv",
                            dtype={"image_id": str})
        train_dx = official.loc[saved.loc[saved["fold"] != fold, "image_id"]].to_numpy()
        counts = np.array([(train_dx == c.lower()).sum() for c in CLASS_CODES], dtype=float)
        k = (counts > 0).sum()
        expected = np.where(counts > 0, len(train_dx) / (k * np.maximum(counts, 1)), 0.0)
        got = session.criterion.weight.numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-6)
        all_dx = ds.df["dx"].to_numpy()
        all_counts = np.array([(all_dx == c.lower()).sum() for c in CLASS_CODES], dtype=float)
        whole = len(all_dx) / ((all_counts > 0).sum() * np.maximum(all_counts, 1))
        assert not np.allclose(got, whole, rtol=1e-3), "weights of the whole data set would pass too"
        assert session.data.train_idx.numel() == len(train_dx)
    lrs = []
    for _ in range(250):
        lrs.append(session.optimizer.param_groups[0]["lr"])
        session.optimizer.step()
        session.scheduler.step()
    lrs = np.array(lrs)
    assert np.allclose(lrs[:50], 1e-3) and np.allclose(lrs[50:120], 1e-4)
    assert np.allclose(lrs[120:200], 1e-5) and np.allclose(lrs[200:250], 1e-6)


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
    from metanet_utils.train import DeviceData, evaluate

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
        probs, loss = evaluate(model, data, aug, dev, None, False, batch_size=bs, criterion=crit)
        if expected is None:
            wy = w.numpy()[y].astype(np.float64)
            expected = float((wy * -np.log(probs[np.arange(len(y)), y])).sum() / wy.sum())
        assert loss == pytest.approx(expected, rel=1e-5), bs
    assert evaluate(model, data, aug, dev, None, False, batch_size=7, criterion=nn.CrossEntropyLoss())[1] == \
        pytest.approx(float(-np.log(probs[np.arange(len(y)), y]).mean()), rel=1e-5)


def test_smoke_grid_writes_complete_records_of_every_fusion(smoke_grid):
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


def test_smoke_grid_metrics_equal_sklearn_on_the_saved_predictions_and_labels(smoke_grid):
    """For every run record of the smoke grid, recomputed independently of the kit:
    ``mcr`` is sklearn's balanced accuracy of labels.csv's true classes against the argmax of predictions.csv
    (columns in the official order MEL,NV,BCC,AKIEC,BKL,DF,VASC), each per-class recall is sklearn's recall, and
    the confusion matrix is sklearn's."""
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix, recall_score

    order = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]  # ISIC 2018 Task 3, written out
    assert list(CLASS_CODES) == order
    root, _ = smoke_grid
    runs = sorted(p for p in (root / "results" / "runs").iterdir() if not p.name.startswith("."))
    assert len(runs) == 4
    for r in runs:
        pred = pd.read_csv(r / "predictions.csv")
        labels = pd.read_csv(r / "labels.csv")
        assert list(labels.columns) == ["image", "dx"]
        assert list(pred["image"]) == list(labels["image"]), r.name  # same images, same order
        p = pred[order].to_numpy()
        top2 = np.sort(p, axis=1)[:, -2:]
        assert (top2[:, 1] - top2[:, 0] > 1e-7).all(), "a near tie: the 8-decimal CSV cannot settle the argmax"
        y_pred = p.argmax(axis=1)
        y_true = labels["dx"].map({c.lower(): i for i, c in enumerate(order)}).to_numpy()
        assert not np.isnan(y_true.astype(float)).any()
        metrics = json.loads((r / "metrics.json").read_text())
        assert metrics["mcr"] == pytest.approx(balanced_accuracy_score(y_true, y_pred), abs=1e-12), r.name
        present = np.unique(y_true)
        rec = recall_score(y_true, y_pred, labels=present, average=None, zero_division=0)
        expected = {order[c]: v for c, v in zip(present, rec)}
        for code in order:
            if code in expected:
                assert metrics["per_class_recall"][code] == pytest.approx(expected[code], abs=1e-12), (r.name, code)
            else:  # a class absent from the validation fold has no recall
                assert np.isnan(metrics["per_class_recall"][code]), (r.name, code)
        np.testing.assert_array_equal(np.array(metrics["confusion_matrix"]),
                                      confusion_matrix(y_true, y_pred, labels=range(7)))


def test_smoke_grid_validates_each_run_on_exactly_the_images_of_its_saved_fold(smoke_grid, real_data_dir):
    """labels.csv of every run holds exactly the images whose saved fold (results/folds/<data>-<scheme>-<n>-s<seed>.csv)
    equals the run's fold, each with the dx of HAM10000_metadata.csv; the training count is the rest of the
    saved folds."""
    root, _ = smoke_grid
    official = pd.read_csv(real_data_dir / "HAM10000_metadata.csv").set_index("image_id")["dx"]
    runs = sorted(p for p in (root / "results" / "runs").iterdir() if not p.name.startswith("."))
    assert runs
    for r in runs:
        cfg = json.loads((r / "config.json").read_text())
        folds_file = (root / "results" / "folds" /
                      f"{cfg['data_fingerprint']}-{cfg['split_scheme']}-{cfg['n_folds']}-s{cfg['split_seed']}.csv")
        assert folds_file.is_file(), sorted(p.name for p in (root / "results" / "folds").iterdir())
        saved = pd.read_csv(folds_file, dtype={"image_id": str})
        assert saved["image_id"].is_unique and set(saved["fold"]) == set(range(cfg["n_folds"]))
        in_fold = set(saved.loc[saved["fold"] == cfg["fold"], "image_id"])
        labels = pd.read_csv(r / "labels.csv", dtype={"image": str})
        assert labels["image"].is_unique
        assert set(labels["image"]) == in_fold, r.name
        np.testing.assert_array_equal(labels["dx"].to_numpy(), official.loc[labels["image"]].to_numpy())
        metrics = json.loads((r / "metrics.json").read_text())
        assert metrics["n_val"] == len(in_fold) and metrics["n_train"] == len(saved) - len(in_fold)


def test_rerunning_the_grid_trains_nothing(smoke_grid, real_data_dir, monkeypatch, capsys):
    """The same grid again (here in this process, on the command's folders) finds every record complete."""
    from metanet_utils.config import load_profile
    from metanet_utils.dataset import profile_dataset
    from metanet_utils.ops.grid import parse_only, run_grid

    root, _ = smoke_grid
    for k, v in cli_env(root).items():
        if k.startswith("METANET_"):
            monkeypatch.setenv(k, v)
    profile = load_profile("smoke")
    only = parse_only(["fold=0", "meta_layers=0,2", "meta_features=,age+sex+localization"])
    summary = run_grid(profile, profile_dataset(profile, real_data_dir), only=only, device="cpu")
    assert summary.trained == [] and not summary.failed and len(summary.skipped) == 4  # Table 1 (3) + Table 4's
    assert "trained now 0, already complete 4" in capsys.readouterr().out              # concat k=2


def test_run_killed_with_sigkill_resumes_to_the_same_result(real_data_dir, tmp_path, monkeypatch):
    """A grid worker SIGKILLed at a random moment after its first checkpoint, then run again: it resumes from
    the checkpoint and writes the record of the same run trained without a break (here, in this process)."""
    from metanet_utils.config import load_profile
    from metanet_utils.dataset import profile_dataset
    from metanet_utils.runs import enumerate_runs
    from metanet_utils.train import train_run

    epochs = 10  # long enough that the kill lands mid-run even on an idle machine
    prof = write_profile(tmp_path / "resume.yaml", epochs=epochs, deterministic=True)
    args = ["grid", "--profile", str(prof), "--data-dir", str(real_data_dir)]
    ref_root, int_root = tmp_path / "ref", tmp_path / "int"
    proc = subprocess.Popen([sys.executable, "-m", "metanet_utils", *args], env=cli_env(int_root),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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

    for k, v in cli_env(ref_root).items():
        if k.startswith("METANET_"):
            monkeypatch.setenv(k, v)
    profile = load_profile(prof)  # one torch thread here as in the worker: the same kernels, the same numbers
    ds = profile_dataset(profile, real_data_dir)
    (cfg,) = enumerate_runs(profile, ds)
    train_run(cfg, ds, device="cpu", progress=False)
    ref_run, int_run = ref_root / "results" / "runs" / cfg.run_id, int_root / "results" / "runs" / cfg.run_id
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
    root = tmp_path / "root"  # the grid prepares the image cache once, then starts both workers
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
    real = train_mod.save_checkpoint
    monkeypatch.setattr(train_mod, "save_checkpoint", lambda path, state: (saved.append(state["epoch"]),
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
    from metanet_utils.ops.grid import run_grid

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
    from metanet_utils.runs import enumerate_runs
    from metanet_utils.ops.grid import SHORT_RUN_EPOCHS, resolve_progress

    class Data:  # what enumerate_runs reads of a dataset
        kind, fingerprint = "real", "test"

    assert resolve_progress("auto", enumerate_runs(load_profile("demo"), Data())) == "runs"
    assert resolve_progress("auto", enumerate_runs(load_profile("paper"), Data())) == "epochs"
    short, long = (RunConfig(backbone="test_resnet", epochs=e) for e in (SHORT_RUN_EPOCHS, SHORT_RUN_EPOCHS + 1))
    assert resolve_progress("auto", [short]) == "runs" and resolve_progress("auto", [short, long]) == "epochs"
    assert [resolve_progress(p, [long]) for p in (True, False, "runs", "epochs")] == ["epochs", None, "runs", "epochs"]
    with pytest.raises(ValueError, match="'runs' or 'auto'"):
        resolve_progress("yes", [short])
