"""Several runs trained together in one process (metanet_utils.ops.together, grid --together K): opt-in.

On the CPU there are no streams, but the interleaving, the shared image cache, the per-run state and
records are the same code as on a GPU; the numbers of a run trained together must be those of the
run trained alone (test_resnet draws nothing from the global random generator while training).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from filelock import FileLock
from metanet_utils.config import ConfigError, Profile, RunConfig, list_profiles, load_profile
from metanet_utils.ops.grid import _groups, run_grid
from metanet_utils.ops.together import EpochIter, run_interleaved, train_runs_together
from metanet_utils.ops.locks import RunBusy
from metanet_utils.train import is_complete, record_dir, train_run


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def small_ds(tmp_path_factory, real_data_dir):
    """140 real images; their image cache in a folder of this module's own."""
    from metanet_utils.dataset import open_dataset

    mp = pytest.MonkeyPatch()
    mp.setenv("METANET_CACHE_DIR", str(tmp_path_factory.mktemp("together") / "cache"))
    yield open_dataset(real_data_dir, max_images=140)
    mp.undo()


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
    lk = FileLock(tmp_path / ".locks" / f"{held.run_id}.lock")
    lk.acquire(timeout=0)
    try:
        out = train_runs_together([good, wrong_data, held], small_ds, runs_dir=tmp_path, device="cpu", progress=False)
    finally:
        lk.release()
    assert isinstance(out[good.run_id], dict) and is_complete(record_dir(good, tmp_path))
    assert isinstance(out[wrong_data.run_id], ValueError) and "configured for data" in str(out[wrong_data.run_id])
    assert isinstance(out[held.run_id], RunBusy)
    again = FileLock(tmp_path / ".locks" / f"{good.run_id}.lock")
    again.acquire(timeout=0)  # the run's lock was released (filelock.Timeout otherwise)
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


# --------------------------------------------------------------------------- opt-in

def test_runs_together_is_one_unless_a_profile_or_the_command_asks_for_more():
    assert Profile(name="x").runs_together == 1
    for name in list_profiles():
        assert load_profile(name).runs_together == 1, name
    assert load_profile("smoke", runs_together=3).runs_together == 3


@pytest.mark.parametrize("value", ["auto", "two", 0, True, 1.5])
def test_runs_together_must_be_a_whole_number_of_at_least_one(value):
    with pytest.raises(ConfigError, match="runs_together=.* is not allowed; .*whole number"):
        load_profile("smoke", runs_together=value)


def test_grid_command_takes_together_as_a_number_only():
    from metanet_utils.ops.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["grid", "--profile", "smoke", "--together", "3"]).together == 3
    assert parse(["grid", "--profile", "smoke"]).together is None  # the profile's runs_together
    for bad in ("auto", "two", "0"):
        with pytest.raises(SystemExit):
            parse(["grid", "--profile", "smoke", "--together", bad])


def test_the_grid_trains_one_run_at_a_time_by_default(small_ds, tmp_path, capsys):
    prof = load_profile("smoke", backbones=["test_resnet"], fusions=["none", "metanet"], n_folds=2, folds=[0],
                        epochs=1, image_size=40, crop_size=32, batch_size=16,
                        ablations={"table3": False, "table4": False})
    s = run_grid(prof, small_ds, runs_dir=tmp_path, device="cpu", progress=True)
    assert not s.failed and len(s.trained) == 2
    assert "at a time" not in capsys.readouterr().out
    assert not [rid for rid in s.trained
                if json.loads((tmp_path / rid / "metrics.json").read_text())["execution"]["trained_together"]]


def test_run_interleaved_takes_one_batch_of_each_epoch_in_turn_to_their_ends_past_a_failing_one():
    seen = []

    def epoch(name: str, n: int):
        for b in range(n):
            seen.append(f"{name}{b}")
            yield b
        return {"batches": n}

    def failing():
        seen.append("d0")
        yield 0
        raise RuntimeError("out of memory")

    its = [EpochIter(epoch("a", 3)), EpochIter(epoch("b", 1)), EpochIter(failing()), EpochIter(epoch("c", 2))]
    run_interleaved(its, torch.device("cpu"))
    assert seen == ["a0", "b0", "d0", "c0", "a1", "c1", "a2"]  # a failing epoch stops, the others go on
    assert [it.result for it in its] == [{"batches": 3}, {"batches": 1}, None, {"batches": 2}]
    assert [str(it.error) for it in its] == ["None", "None", "out of memory", "None"]


def test_runs_together_evaluate_only_after_every_run_has_ended_its_epoch(small_ds, tmp_path, monkeypatch):
    """An evaluation between the last batches of the others would stall them and count in their epoch times."""
    from metanet_utils import train
    from metanet_utils.ops import together

    events = []
    real_advance, real_end = together.EpochIter.advance, train.Run.end_epoch

    def advance(self):
        more = real_advance(self)
        if not more:
            events.append("epoch over")
        return more

    def end_epoch(self, row, force_checkpoint=False):
        events.append("evaluate")
        return real_end(self, row, force_checkpoint)

    monkeypatch.setattr(together.EpochIter, "advance", advance)
    monkeypatch.setattr(train.Run, "end_epoch", end_epoch)
    cfgs = [_cfg(small_ds, fold=0), _cfg(small_ds, fold=1), _cfg(small_ds, fusion="none", meta_features=())]
    out = train_runs_together(cfgs, small_ds, runs_dir=tmp_path, device="cpu", progress=False)
    assert all(isinstance(m, dict) for m in out.values())
    assert events == (["epoch over"] * 3 + ["evaluate"] * 3) * 2  # two epochs
