"""Reliability, faults (issue 7, items 3-5): SIGKILL at every write point (image cache, checkpoint,
record), corrupted files, a full disk and too little device memory, and concurrent grid workers.

After every fault the next run ends with the same results as an uninterrupted one, and nothing
half-written is ever read as complete. Kills happen at exact moments: a child process replaces one
library function by a wrapper that sends itself SIGKILL there (no fault hooks in the library).
Training uses a tiny deterministic run (test_resnet, 40 px, about 100 real images, 3 epochs), so a
resumed run must end bit-identical to the reference.

Complements ``tests/test_train.py`` (SIGKILL between epochs of a grid, two concurrent workers).
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter, namedtuple
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from _badcases import good_copy
from metanet_utils import cache as cache_mod
from metanet_utils import train as train_mod
from metanet_utils.atomic import atomic_write_with
from metanet_utils.cache import CacheError, build_cache
from metanet_utils.config import RunConfig
from metanet_utils.dataset import open_dataset
from metanet_utils.train import DeviceData, is_complete, train_run

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 3


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def cli_env(root: Path) -> dict:
    return {**os.environ, "METANET_ROOT": str(root), "METANET_RESULTS_DIR": str(root / "results"),
            "METANET_CACHE_DIR": str(root / "cache"), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def env(real_data_dir, tmp_path_factory):
    """A good copy of ~100 real images, a private results/cache folder, the data set and a run config."""
    root = tmp_path_factory.mktemp("faults")
    data = good_copy(real_data_dir, root / "data")
    mp = pytest.MonkeyPatch()
    for k, v in cli_env(root).items():
        if k.startswith("METANET_"):
            mp.setenv(k, v)
    ds = open_dataset(data)
    cfg = RunConfig(backbone="test_resnet", fusion="metanet", n_folds=2, fold=0, epochs=EPOCHS, image_size=40,
                    crop_size=32, batch_size=16, lr=0.01, pretrained=False, deterministic=True,
                    data_fingerprint=ds.fingerprint)
    yield SimpleNamespace(root=root, data=data, ds=ds, cfg=cfg)
    mp.undo()


@pytest.fixture(scope="module")
def reference(env) -> Path:
    """The uninterrupted run's record."""
    train_run(env.cfg, env.ds, runs_dir=env.root / "ref", device="cpu", progress=False)
    return env.root / "ref" / env.cfg.run_id


def assert_same_record(a: Path, b: Path) -> None:
    assert is_complete(a) and is_complete(b)
    pd.testing.assert_frame_equal(pd.read_csv(a / "predictions.csv"), pd.read_csv(b / "predictions.csv"),
                                  check_exact=True)
    assert (a / "labels.csv").read_bytes() == (b / "labels.csv").read_bytes()
    ha, hb = pd.read_csv(a / "history.csv"), pd.read_csv(b / "history.csv")
    for col in ("epoch", "lr", "train_loss", "val_loss", "val_mcr"):
        pd.testing.assert_series_equal(ha[col], hb[col], check_exact=True)
    ma, mb = (json.loads((p / "metrics.json").read_text()) for p in (a, b))
    assert (ma["mcr"], ma["confusion_matrix"], ma["epochs_done"]) == (mb["mcr"], mb["confusion_matrix"],
                                                                      mb["epochs_done"])


def events(runs_dir: Path) -> list[tuple[str, str, str]]:
    """(pid, event, run_id) per line of runs/.events.log."""
    p = runs_dir / ".events.log"
    return [(ln.split()[2], ln.split()[3], ln.split()[4]) for ln in p.read_text().splitlines()] if p.exists() else []


def tmp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*tmp-*")) if folder.exists() else []


# --------------------------------------------------------------------------- image cache

CACHE_CHILD = r'''
import os, signal, sys
from metanet_utils import cache
from metanet_utils.data import load_metadata

point, data_dir, cache_dir = sys.argv[1:]
df = load_metadata(data_dir)
die = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
if point == "decoding":  # SIGKILL after 30 of ~100 images are in the (temporary) array
    real, n = cache.load_image, [0]
    def load_image(*a, **k):
        n[0] += 1
        if n[0] == 30:
            die()
        return real(*a, **k)
    cache.load_image = load_image
elif point == "before-sidecar":  # the array is renamed into place, its sidecar not yet written
    cache.atomic_write_json = die
cache.build_cache(df, 40, True, cache_dir=cache_dir, workers=1, progress=False)
print("NOT KILLED")
'''


def cache_files(d: Path) -> dict[str, list[str]]:
    return {"npy": sorted(p.name for p in d.glob("*.npy")), "json": sorted(p.name for p in d.glob("*.json")),
            "tmp": tmp_files(d)}


@pytest.fixture(scope="module")
def reference_cache(env) -> np.ndarray:
    return np.array(build_cache(env.ds.df, 40, True, cache_dir=env.root / "refcache", progress=False))


@pytest.mark.parametrize("point", ["decoding", "before-sidecar"])
def test_cache_build_killed_is_never_read_and_is_rebuilt_the_same(env, reference_cache, tmp_path, point, capsys):
    cdir = tmp_path / "cache"
    out = subprocess.run([sys.executable, "-c", CACHE_CHILD, point, str(env.data), str(cdir)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == -signal.SIGKILL, out.stdout + out.stderr
    files = cache_files(cdir)
    if point == "decoding":
        assert files["npy"] == [] and files["json"] == [] and len(files["tmp"]) == 1  # killed mid-write
    else:
        assert len(files["npy"]) == 1 and files["json"] == [] and files["tmp"] == []  # array without sidecar
    ids = list(env.ds.df["image_id"])
    npy = cdir / f"{cache_mod.cache_key(env.ds.fingerprint, 40, True)}.npy"
    assert not cache_mod._valid(npy, ids)

    arr = build_cache(env.ds.df, 40, True, cache_dir=cdir, progress=False)
    np.testing.assert_array_equal(arr, reference_cache)
    files = cache_files(cdir)
    assert files["tmp"] == [] and files["npy"] == [npy.name] and files["json"] == [npy.with_suffix(".json").name]
    assert cache_mod._valid(npy, ids)


@pytest.mark.parametrize("damage", ["sidecar-missing", "sidecar-garbage", "sidecar-other-ids", "array-truncated",
                                    "array-grown"])
def test_damaged_cache_is_rebuilt(env, reference_cache, tmp_path, damage):
    cdir = tmp_path / "cache"
    build_cache(env.ds.df, 40, True, cache_dir=cdir, progress=False)
    npy = next(cdir.glob("*.npy"))
    side = npy.with_suffix(".json")
    if damage == "sidecar-missing":
        side.unlink()
    elif damage == "sidecar-garbage":
        side.write_text('{"image_ids": [')
    elif damage == "sidecar-other-ids":
        info = json.loads(side.read_text())
        side.write_text(json.dumps({**info, "image_ids": info["image_ids"][::-1]}))
    elif damage == "array-truncated":
        os.truncate(npy, npy.stat().st_size // 2)
    elif damage == "array-grown":
        with open(npy, "ab") as fh:
            fh.write(b"\0" * 10)
    assert not cache_mod._valid(npy, list(env.ds.df["image_id"]))
    np.testing.assert_array_equal(build_cache(env.ds.df, 40, True, cache_dir=cdir, progress=False), reference_cache)
    assert cache_mod._valid(npy, list(env.ds.df["image_id"])) and tmp_files(cdir) == []


# --------------------------------------------------------------------------- disk and memory

Usage = namedtuple("Usage", "total used free")


def test_cache_checks_free_disk_first_and_says_how_much_it_needs(env, tmp_path, monkeypatch, capsys):
    from metanet_utils.ops import cli

    monkeypatch.setattr(cache_mod.shutil, "disk_usage", lambda p: Usage(10**12, 10**12 - 1000, 1000))
    cdir = tmp_path / "cache"
    n = len(env.ds.df)
    needed_kb = (n * 40 * 40 * 3 + 4096) * 1.1 / 1000
    with pytest.raises(CacheError) as e:
        build_cache(env.ds.df, 40, True, cache_dir=cdir, progress=False)
    assert str(e.value) == (f"not enough free disk for the image cache in {cdir}: needs {needed_kb:.1f} kB, 1.0 kB "
                            "free; free space or set METANET_CACHE_DIR to another disk")
    assert cache_files(cdir) == {"npy": [], "json": [], "tmp": []}

    # the same through the command line: one line, exit 2
    prof = tmp_path / "p.yaml"
    prof.write_text(yaml.safe_dump(dict(data="real", backbones=["test_resnet"], fusions=["none"], n_folds=2,
                                        folds=[0], epochs=1, image_size=40, crop_size=32, pretrained=False)))
    monkeypatch.setenv("METANET_CACHE_DIR", str(cdir))
    assert cli.main(["data", "prepare", "--profile", str(prof), "--data-dir", str(env.data)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: not enough free disk for the image cache") and "needs" in err
    assert cache_files(cdir) == {"npy": [], "json": [], "tmp": []}


def test_disk_filling_up_during_the_cache_build_leaves_nothing(env, tmp_path, monkeypatch):
    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_mod.os, "posix_fallocate", no_space)
    cdir = tmp_path / "cache"
    with pytest.raises(CacheError, match=r"not enough free disk for the image cache .*: needs .* free; free space"):
        build_cache(env.ds.df, 40, True, cache_dir=cdir, progress=False)
    assert cache_files(cdir) == {"npy": [], "json": [], "tmp": []}


def test_gpu_resident_data_checks_device_memory_first(monkeypatch):
    gib = 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1 * gib, 80 * gib))
    n = 10015
    images = np.broadcast_to(np.zeros((), np.uint8), (n, 300, 300, 3))  # 2.5 GiB, nothing allocated
    with pytest.raises(MemoryError) as e:
        DeviceData.build(images, np.zeros((n, 17), np.float32), np.zeros(n, np.int64), np.zeros(n, np.int64), 0,
                         [str(i) for i in range(n)], torch.device("cuda"))
    assert str(e.value) == ("the image cache needs 2.5 GiB of GPU memory, 1.0 GiB free: use a smaller image_size "
                            "or a larger GPU")


def _failing_save(fail_epoch: int | None, seen: dict):
    """A torch.save that, for ``fail_epoch`` (or always), writes half the bytes and then finds the disk full."""
    real = torch.save

    def save(obj, f, *a, **k):
        if fail_epoch is None or (isinstance(obj, dict) and obj.get("epoch") == fail_epoch):
            target = Path(f)
            seen["previous"] = (target.parent / "checkpoint.pt").read_bytes() if (
                target.parent / "checkpoint.pt").exists() else None
            buf = io.BytesIO()
            real(obj, buf)
            target.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *a, **k)
    return save


def test_full_disk_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "work" / "checkpoint.pt"
    train_mod.save_checkpoint(path, {"epoch": 1, "weights": torch.arange(1000.0)})
    before = path.read_bytes()
    seen: dict = {}
    monkeypatch.setattr(torch, "save", _failing_save(None, seen))
    with pytest.raises(OSError) as e:
        train_mod.save_checkpoint(path, {"epoch": 2, "weights": torch.arange(2000.0)})
    assert e.value.errno == errno.ENOSPC
    assert path.read_bytes() == before and seen["previous"] == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint.pt"]  # no temporary file left
    # the generic writer behaves the same for any file
    with pytest.raises(OSError):
        atomic_write_with(path, lambda tmp: (tmp.write_bytes(b"partial"), (_ for _ in ()).throw(
            OSError(errno.ENOSPC, "No space left on device"))))
    assert path.read_bytes() == before and sorted(p.name for p in path.parent.iterdir()) == ["checkpoint.pt"]


def test_run_whose_disk_fills_up_keeps_its_last_checkpoint_and_resumes_the_same(env, reference, tmp_path, monkeypatch,
                                                                                 capsys):
    runs = tmp_path / "runs"
    seen: dict = {}
    with monkeypatch.context() as m:
        m.setattr(torch, "save", _failing_save(2, seen))
        with pytest.raises(OSError, match="No space left"):
            train_run(env.cfg, env.ds, runs_dir=runs, device="cpu", progress=False)
    work = runs / ".work" / env.cfg.run_id
    assert (work / "checkpoint.pt").read_bytes() == seen["previous"]
    assert torch.load(work / "checkpoint.pt", weights_only=False)["epoch"] == 1
    assert tmp_files(runs) == [] and not (runs / env.cfg.run_id).exists()
    capsys.readouterr()
    train_run(env.cfg, env.ds, runs_dir=runs, device="cpu", progress=False)
    assert f"resuming after epoch 1/{EPOCHS}" in capsys.readouterr().out
    assert_same_record(reference, runs / env.cfg.run_id)


# --------------------------------------------------------------------------- training and records

TRAIN_CHILD = r'''
import json, os, signal, sys
from pathlib import Path
import torch
from metanet_utils import train
from metanet_utils.config import RunConfig
from metanet_utils.dataset import open_dataset

point, data_dir, runs_dir, cfg = sys.argv[1], sys.argv[2], sys.argv[3], RunConfig(**json.loads(sys.argv[4]))
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
if point == "during-checkpoint-write":  # epoch 2's checkpoint is half on disk (temporary name)
    real_save = torch.save
    def save(obj, f, *a, **k):
        if isinstance(obj, dict) and obj.get("epoch") == 2:
            real_save(obj, f)
            os.truncate(f, os.path.getsize(f) // 2)
            die()
        return real_save(obj, f, *a, **k)
    torch.save = save
elif point == "after-checkpoint-write":  # epoch 2's checkpoint is complete, epoch 3 not begun
    real_ckpt = train.save_checkpoint
    def save_checkpoint(path, state):
        real_ckpt(path, state)
        if state["epoch"] == 2:
            die()
    train.save_checkpoint = save_checkpoint
elif point == "during-record-write":  # config, history and metrics are staged; predictions not yet
    real_text = train.atomic_write_text
    def write_text(path, text):
        if Path(path).name == "predictions.csv":
            die()
        return real_text(path, text)
    train.atomic_write_text = write_text
train.train_run(cfg, open_dataset(data_dir), runs_dir=runs_dir, device="cpu", progress=True)
print("NOT KILLED")
'''


def test_training_killed_at_every_write_point_resumes_to_the_same_record(env, reference, tmp_path, capsys):
    runs = tmp_path / "runs"
    work = runs / ".work" / env.cfg.run_id
    final = runs / env.cfg.run_id
    cfg_json = json.dumps({k: v for k, v in env.cfg.to_dict().items()})

    def child(point: str) -> str:
        out = subprocess.run([sys.executable, "-c", TRAIN_CHILD, point, str(env.data), str(runs), cfg_json],
                             capture_output=True, text=True, env=cli_env(env.root), timeout=300)
        assert out.returncode == -signal.SIGKILL, out.stdout[-2000:] + out.stderr[-3000:]
        return out.stdout

    def ckpt_epoch() -> int:
        return torch.load(work / "checkpoint.pt", weights_only=False)["epoch"]

    child("during-checkpoint-write")
    assert ckpt_epoch() == 1  # epoch 1's checkpoint is intact
    assert len(tmp_files(work)) == 1  # the half-written epoch-2 file, under its temporary name
    assert not final.exists()

    out = child("after-checkpoint-write")
    assert "resuming after epoch 1/3" in out
    assert ckpt_epoch() == 2 and tmp_files(work) == []  # the killed worker's temporary file is cleaned up

    out = child("during-record-write")
    assert "resuming after epoch 2/3" in out
    staged = list(runs.glob(f".{env.cfg.run_id}.stage-*"))
    assert len(staged) == 1 and {p.name for p in staged[0].iterdir()} == {"config.json", "history.csv",
                                                                          "metrics.json"}
    assert not final.exists() and not is_complete(final) and ckpt_epoch() == 3

    capsys.readouterr()
    train_run(env.cfg, env.ds, runs_dir=runs, device="cpu", progress=True)
    assert "resuming after epoch 3/3" in capsys.readouterr().out
    assert_same_record(reference, final)
    assert list(runs.glob(".*stage-*")) == [] and not work.exists()
    assert [e[1] for e in events(runs)] == ["start", "resume@1", "resume@2", "resume@3", "complete"]


def test_half_written_checkpoint_is_discarded_and_the_run_restarts(env, reference, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert train_run(env.cfg, env.ds, runs_dir=runs, device="cpu", progress=False, stop_after_epochs=2)["interrupted"]
    ckpt = runs / ".work" / env.cfg.run_id / "checkpoint.pt"
    os.truncate(ckpt, ckpt.stat().st_size // 2)
    capsys.readouterr()
    train_run(env.cfg, env.ds, runs_dir=runs, device="cpu", progress=False)
    out = capsys.readouterr().out
    assert f"[train] checkpoint {ckpt} is unreadable" in out and "starting this run again" in out
    assert "resuming" not in out
    assert [e[1] for e in events(runs)] == ["start", "start", "complete"]
    assert_same_record(reference, runs / env.cfg.run_id)


def test_checkpoint_of_another_run_is_discarded(env, reference, tmp_path, capsys):
    runs = tmp_path / "runs"
    ckpt = runs / ".work" / env.cfg.run_id / "checkpoint.pt"
    train_mod.save_checkpoint(ckpt, {"run_id": "someone-else", "epoch": 2})
    train_run(env.cfg, env.ds, runs_dir=runs, device="cpu", progress=False)
    assert "does not belong to run" in capsys.readouterr().out
    assert_same_record(reference, runs / env.cfg.run_id)


def _damage_record(rec: Path, damage: str) -> None:
    if damage == "file-missing":
        (rec / "history.csv").unlink()
    elif damage == "size-mismatch":
        with open(rec / "predictions.csv", "a") as fh:
            fh.write("ISIC_0000000,1,0,0,0,0,0,0\n")
    elif damage == "manifest-missing":
        (rec / "manifest.json").unlink()
    elif damage == "manifest-garbage":
        (rec / "manifest.json").write_text("{")
    elif damage == "manifest-without-a-file":
        man = json.loads((rec / "manifest.json").read_text())
        del man["files"]["checkpoint.pt"]
        (rec / "manifest.json").write_text(json.dumps(man))
    elif damage == "checkpoint-missing":
        (rec / "checkpoint.pt").unlink()


@pytest.mark.parametrize("damage", ["file-missing", "size-mismatch", "manifest-missing", "manifest-garbage",
                                    "manifest-without-a-file", "checkpoint-missing"])
def test_damaged_record_is_not_complete(reference, tmp_path, damage):
    rec = tmp_path / reference.name
    shutil.copytree(reference, rec)
    assert is_complete(rec)
    _damage_record(rec, damage)
    assert not is_complete(rec)


@pytest.mark.parametrize("damage", ["file-missing", "size-mismatch"])
def test_incomplete_record_is_retrained(env, reference, tmp_path, damage):
    runs = tmp_path / "runs"
    rec = runs / env.cfg.run_id
    shutil.copytree(reference, rec)
    _damage_record(rec, damage)
    train_run(env.cfg, env.ds, runs_dir=runs, device="cpu", progress=False)
    assert [e[1] for e in events(runs)] == ["start", "complete"]  # trained again, from scratch
    assert_same_record(reference, rec)
    assert [p.name for p in runs.iterdir() if p.name.startswith(f".{env.cfg.run_id}")] == []  # no .old-* left


# --------------------------------------------------------------------------- concurrent workers


def _grid_profile(path: Path) -> Path:
    path.write_text(yaml.safe_dump(dict(
        name=path.stem, data="real", max_images=None, backbones=["test_resnet"], fusions=["none", "concat", "metanet"],
        n_folds=2, folds=[0, 1], epochs=1, image_size=40, crop_size=32, batch_size=16, lr=0.01, pretrained=False,
        deterministic=True, ablations={"table3": False, "table4": False})))
    return path


def test_three_workers_started_at_once_train_each_run_once_and_match_one_worker(env, tmp_path):
    from metanet_utils.config import load_profile
    from metanet_utils.evaluate import load_records
    from metanet_utils.dataset import profile_dataset
    from metanet_utils.ops.grid import run_grid

    prof = _grid_profile(tmp_path / "conc.yaml")
    args = [sys.executable, "-m", "metanet_utils", "grid", "--profile", str(prof), "--data-dir", str(env.data)]
    one, three = tmp_path / "one", tmp_path / "three"
    # one worker: this process (one torch thread, as each worker below)
    profile = load_profile(prof)
    assert not run_grid(profile, profile_dataset(profile, env.data), runs_dir=one, device="cpu", progress=False).failed
    # three independent workers on the same profile, started together, nothing prepared: they race for the
    # image cache too (one builds it, the others wait for it)
    procs = [subprocess.Popen(args, env=cli_env(three), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (o, e) in zip(procs, outs):
        assert p.returncode == 0, o[-2000:] + e[-2000:]
    assert sum("image cache 40px" in e for _, e in outs) == 1  # built once

    ev = events(three / "results" / "runs")
    kinds = Counter((e[1], e[2]) for e in ev)
    run_ids = {e[2] for e in ev}
    assert len(run_ids) == 6
    assert all(kinds[("start", r)] == 1 and kinds[("complete", r)] == 1 for r in run_ids), ev
    assert not [e for e in ev if e[1] not in ("start", "complete")]  # no resume: nobody took a run over
    assert len({e[0] for e in ev}) >= 2, "the work should be shared"

    a = load_records(one).set_index("run_id")
    b = load_records(three / "results" / "runs").set_index("run_id")
    assert sorted(a.index) == sorted(b.index) == sorted(run_ids)
    recall = [c for c in a.columns if c.startswith("recall_")]
    pd.testing.assert_frame_equal(a.loc[sorted(a.index), ["mcr", *recall]], b.loc[sorted(a.index), ["mcr", *recall]],
                                  check_exact=True)


# --------------------------------------------------------------------------- notebook chain


def test_notebook_chain_killed_midway_completes_on_rerun(real_data_dir, tmp_path):
    """``python -m metanet_utils.ops.pipeline --profile smoke --only 04``, SIGKILLed once notebook 04 has finished
    a run, then rerun: it completes, writes the executed notebook and reuses the records. (That the notebooks which
    ended before a kill stay in place is pinned on small notebooks by the next test.)"""
    import contextlib

    import nbformat
    psutil = pytest.importorskip("psutil")
    from conftest import ensure_kernel

    ensure_kernel()
    root = tmp_path / "root"
    root.mkdir()
    for sub in ("configs", "notebooks"):
        (root / sub).symlink_to(ROOT / sub)
    (root / "pyproject.toml").symlink_to(ROOT / "pyproject.toml")
    args = [sys.executable, "-m", "metanet_utils.ops.pipeline", "--profile", "smoke", "--data-dir", str(real_data_dir),
            "--kernel", "metanet-kit", "--only", "04"]
    runs = root / "results" / "runs"
    proc = subprocess.Popen(args, env=cli_env(root), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not [e for e in events(runs) if e[1] == "complete"]:
        time.sleep(0.2)
    assert proc.poll() is None, "the chain ended before it could be killed"
    # SIGKILL the pipeline and its kernel (which training is running in), as a crash of the machine would
    kernel = psutil.Process(proc.pid).children(recursive=True)
    assert kernel, "no kernel found"
    for p in (proc, *kernel):
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGKILL)
    proc.wait()
    psutil.wait_procs(kernel, timeout=30)
    done_before = {e[2] for e in events(runs) if e[1] == "complete"}
    assert 1 <= len(done_before) < 6  # killed in the middle of notebook 04
    executed = root / "outputs" / "notebooks"
    # the killed notebook is only in the live folder, half-written
    assert not (executed / "04_training-test_resnet.ipynb").exists()
    assert (executed / ".running" / "04_training-test_resnet.ipynb").is_file()

    out = subprocess.run(args, env=cli_env(root), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    ev = events(runs)
    completes = Counter(e[2] for e in ev if e[1] == "complete")
    assert len(completes) == 6 and set(completes.values()) == {1}  # each run finished once
    for rid in done_before:  # records of the killed chain are reused, not retrained
        assert [e[1] for e in ev if e[2] == rid] == ["start", "complete"]
    assert not list((executed / ".running").iterdir())
    for name in ("04_training-test_resnet.ipynb",):  # written, every cell run, no error
        nb = nbformat.read(executed / name, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(c.execution_count for c in code), name
        assert not [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"], name
        assert not nb.metadata["papermill"].get("exception"), name


def _notebook(path: Path, *sources: str) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell('profile = "smoke"\ndata_dir = ""')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# test"), params, *(nbformat.v4.new_code_cell(s) for s in sources)]
    nbformat.write(nb, path)


def test_notebook_chain_moves_each_notebook_in_place_only_when_it_ends(tmp_path, monkeypatch, capsys):
    """A notebook executes in ``outputs/notebooks/.running/``; passed or failed, it then replaces the
    executed copy; a partial copy left there by a killed chain is cleared at the next start."""
    import nbformat

    from conftest import ensure_kernel
    from metanet_utils.ops.pipeline import run_chain

    root = tmp_path / "root"
    (root / "notebooks").mkdir(parents=True)
    (root / "configs").symlink_to(ROOT / "configs")
    _notebook(root / "notebooks" / "00_fine.ipynb", "print('fine', profile)")
    _notebook(root / "notebooks" / "01_broken.ipynb", "x = 1", "raise ValueError('broken on purpose')")
    for k, v in cli_env(root).items():
        monkeypatch.setenv(k, v)
    executed = root / "outputs" / "notebooks"
    (executed / ".running").mkdir(parents=True)
    (executed / ".running" / "00_fine.ipynb").write_text("{half a notebo")  # a killed chain's leftover
    _notebook(executed / "01_broken.ipynb", "print('the previous run')")

    assert run_chain("smoke", None, ensure_kernel(), root=root) == 1
    err = capsys.readouterr().err
    assert "01_broken.ipynb stopped at cell" in err and "ValueError: broken on purpose" in err
    assert str(executed / "01_broken.ipynb") in err
    fine = nbformat.read(executed / "00_fine.ipynb", as_version=4)
    assert any("fine smoke" in o.get("text", "") for c in fine.cells for o in c.get("outputs", []))
    broken = nbformat.read(executed / "01_broken.ipynb", as_version=4)  # the failed run replaced the old copy
    assert broken.metadata["papermill"]["exception"]
    assert [o["ename"] for c in broken.cells for o in c.get("outputs", []) if o["output_type"] == "error"] == \
        ["ValueError"]
    assert not list((executed / ".running").iterdir())


def test_records_are_strict_json_with_null_for_an_undefined_recall(tmp_path):
    """A class missing from a validation fold has no recall (NaN): the record says ``null``, which every JSON
    reader accepts, and the analysis reads it back as NaN."""
    from metanet_utils.atomic import atomic_write_json
    from metanet_utils.evaluate import _float

    path = tmp_path / "metrics.json"
    atomic_write_json(path, {"per_class_recall": {"MEL": 0.5, "DF": float("nan")}, "mcr": np.float64(0.25),
                             "x": [np.float32("inf"), 1.5, (2, float("-inf"))], "a": np.array([np.nan, 2.0])})

    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    back = json.loads(path.read_text(), parse_constant=refuse)
    assert back == {"per_class_recall": {"MEL": 0.5, "DF": None}, "mcr": 0.25, "x": [None, 1.5, [2, None]],
                    "a": [None, 2.0]}
    assert np.isnan(_float(back["per_class_recall"]["DF"]))
