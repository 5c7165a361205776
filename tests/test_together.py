"""Several runs trained together in one process (metanet_utils.train.train_runs_together, grid --together).

On the CPU there are no streams, but the interleaving, the shared image cache, the per-run state and
records are the same code as on a GPU; the numbers of a run trained together must be those of the
run trained alone (test_resnet draws nothing from the global random generator while training).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from metanet_utils.atomic import FileLock
from metanet_utils.config import RunConfig, load_profile
from metanet_utils.grid import _groups, run_grid
from metanet_utils.train import RunBusy, is_complete, record_dir, train_run, train_runs_together


@pytest.fixture(scope="module")
def small_ds(tmp_path_factory):
    import os

    from metanet_utils.dataset import open_dataset

    root = tmp_path_factory.mktemp("together")
    old = {k: os.environ.get(k) for k in ("METANET_CACHE_DIR", "METANET_RESULTS_DIR")}
    os.environ["METANET_CACHE_DIR"] = str(root / "cache")
    os.environ["METANET_RESULTS_DIR"] = str(root / "results")
    try:
        yield open_dataset(None, data="synthetic", synthetic_images=140)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _cfg(ds, **kw) -> RunConfig:
    base = dict(backbone="test_resnet", fusion="metanet", n_folds=2, fold=0, epochs=2, milestones=(1,),
                image_size=40, crop_size=32, batch_size=16, lr=0.02, pretrained=False,
                data_kind=ds.kind, data_fingerprint=ds.fingerprint)
    base.update(kw)
    return RunConfig(**base)


def test_runs_trained_together_write_the_records_they_write_alone(small_ds, tmp_path):
    cfgs = [_cfg(small_ds, fold=0), _cfg(small_ds, fold=1), _cfg(small_ds, fold=0, fusion="none", meta_features=(),
                                                                   meta_layers=0)]
    alone, together = tmp_path / "alone", tmp_path / "together"
    for c in cfgs:
        train_run(c, small_ds, runs_dir=alone, device="cpu", progress=False)
    out = train_runs_together(cfgs, small_ds, runs_dir=together, device="cpu", progress=False)
    assert set(out) == {c.run_id for c in cfgs}
    for c in cfgs:
        m = out[c.run_id]
        assert isinstance(m, dict) and m["execution"]["trained_together"] is True, m
        a, t = record_dir(c, alone), record_dir(c, together)
        assert is_complete(t)
        pa, pt = pd.read_csv(a / "predictions.csv"), pd.read_csv(t / "predictions.csv")
        assert list(pa["image"]) == list(pt["image"])
        np.testing.assert_allclose(pa.iloc[:, 1:].to_numpy(), pt.iloc[:, 1:].to_numpy(), rtol=0, atol=1e-6)
        ha, ht = pd.read_csv(a / "history.csv"), pd.read_csv(t / "history.csv")
        np.testing.assert_allclose(ha[["lr", "train_loss", "val_loss", "val_mcr"]].to_numpy(),
                                   ht[["lr", "train_loss", "val_loss", "val_mcr"]].to_numpy(), rtol=1e-6, atol=1e-7)
        assert json.loads((t / "metrics.json").read_text())["mcr"] == pytest.approx(m["mcr"])
    # complete runs are read back, not trained again
    again = train_runs_together(cfgs, small_ds, runs_dir=together, device="cpu", progress=False)
    assert all(again[c.run_id] == out[c.run_id] for c in cfgs)


def test_a_failing_or_busy_run_does_not_stop_the_others(small_ds, tmp_path):
    good = _cfg(small_ds, fold=1, epochs=1)
    wrong_data = _cfg(small_ds, fold=0, epochs=1, data_fingerprint="not-this-data")
    held = _cfg(small_ds, fold=0, epochs=1, seed=3)
    lk = FileLock(tmp_path / ".locks" / f"{held.run_id}.lock", blocking=False)
    lk.acquire()
    try:
        out = train_runs_together([good, wrong_data, held], small_ds, runs_dir=tmp_path, device="cpu", progress=False)
    finally:
        lk.release()
    assert isinstance(out[good.run_id], dict) and is_complete(record_dir(good, tmp_path))
    assert isinstance(out[wrong_data.run_id], ValueError) and "configured for data" in str(out[wrong_data.run_id])
    assert isinstance(out[held.run_id], RunBusy)
    again = FileLock(tmp_path / ".locks" / f"{good.run_id}.lock", blocking=False)
    again.acquire()  # the run's lock was released (LockHeld otherwise)
    again.release()


def test_deterministic_runs_are_not_trained_together(small_ds, tmp_path):
    a, b = _cfg(small_ds, fold=0, epochs=1, deterministic=True), _cfg(small_ds, fold=1, epochs=1, deterministic=True)
    out = train_runs_together([a, b], small_ds, runs_dir=tmp_path, device="cpu", progress=False)
    assert all(isinstance(v, ValueError) and "trained alone" in str(v) for v in out.values())


def test_groups_share_image_size_and_keep_the_order():
    def r(size, fold):
        return RunConfig(backbone="test_resnet", image_size=size, crop_size=32, fold=fold, pretrained=False)

    runs = [r(64, 0), r(40, 0), r(64, 1), r(64, 2), r(40, 1), r(64, 3)]
    groups = _groups(runs, 2)
    assert [[(c.image_size, c.fold) for c in g] for g in groups] == [
        [(64, 0), (64, 1)], [(40, 0), (40, 1)], [(64, 2), (64, 3)]]
    assert _groups(runs, 1) == [[c] for c in runs]
    assert sum(len(g) for g in _groups(runs, 4)) == len(runs)


def test_grid_together_trains_every_run_once(small_ds, tmp_path):
    prof = load_profile("smoke", backbones=["test_resnet"], fusions=["none", "metanet"], n_folds=2, folds=None,
                        epochs=1, image_size=40, crop_size=32, batch_size=16, runs_together=3,
                        ablations={"table3": False, "table4": False})
    s = run_grid(prof, small_ds, runs_dir=tmp_path, device="cpu", progress=False)
    assert not s.failed and len(s.trained) == 4 and s.total == 4
    together = [json.loads((tmp_path / rid / "metrics.json").read_text())["execution"]["trained_together"]
                for rid in s.trained]
    assert sorted(together) == [False, True, True, True]  # a group of 3, then the last run alone
    again = run_grid(prof, small_ds, runs_dir=tmp_path, device="cpu", progress=False, together=2)
    assert again.trained == [] and len(again.skipped) == 4
    with pytest.raises(ValueError, match="together=0"):
        run_grid(prof, small_ds, runs_dir=tmp_path, device="cpu", progress=False, together=0)
