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


# --------------------------------------------------------------------------- runs_together: auto

def _fake_measure(rates: dict[int, float], peaks: dict[int, int] | None = None, fail_at: int | None = None,
                  error: Exception | None = None):
    calls = []

    def measure(cfg, k, device):
        calls.append(k)
        if k == fail_at:
            raise error
        return rates[k], (peaks or {}).get(k, 0)
    return measure, calls


def test_auto_on_a_cpu_trains_one_run_at_a_time_without_measuring():
    import torch

    from metanet_utils.together import choose_runs_together

    measure, calls = _fake_measure({})
    c = choose_runs_together(RunConfig(backbone="test_resnet"), torch.device("cpu"), measure=measure)
    assert c.k == 1 and calls == [] and "cpu" in c.reason
    c = choose_runs_together(RunConfig(backbone="test_resnet", deterministic=True), torch.device("cpu"),
                             measure=measure, measure_on_cpu=True)
    assert c.k == 1 and calls == [] and "deterministic" in c.reason


def test_auto_adds_runs_while_each_raises_the_total_by_ten_percent():
    import torch

    from metanet_utils.together import choose_runs_together

    measure, calls = _fake_measure({1: 100.0, 2: 150.0, 3: 160.0, 4: 400.0})
    c = choose_runs_together(RunConfig(backbone="test_resnet"), torch.device("cpu"), measure=measure,
                             measure_on_cpu=True, log=None)
    assert (c.k, calls) == (2, [1, 2, 3])  # 3 gains 7 % over 2: the search stops there
    assert c.rates == {1: 100.0, 2: 150.0, 3: 160.0} and "3 runs gain less than 10 % over 2" in c.reason
    measure, calls = _fake_measure({1: 100.0, 2: 105.0})
    assert choose_runs_together(RunConfig(backbone="test_resnet"), torch.device("cpu"), measure=measure,
                                measure_on_cpu=True, log=None).k == 1


def test_auto_stops_where_memory_runs_out_or_would_not_hold_the_image_cache():
    import torch

    from metanet_utils.together import choose_runs_together

    cfg, cpu, gib = RunConfig(backbone="test_resnet"), torch.device("cpu"), 2 ** 30
    rates = {1: 100.0, 2: 200.0, 3: 300.0, 4: 400.0}
    measure, calls = _fake_measure(rates, fail_at=3, error=torch.cuda.OutOfMemoryError("CUDA out of memory"))
    c = choose_runs_together(cfg, cpu, measure=measure, measure_on_cpu=True, log=None)
    assert (c.k, calls) == (2, [1, 2, 3]) and c.reason == "3 runs ran out of memory"
    measure, calls = _fake_measure(rates, peaks={k: 30 * gib * k for k in rates})
    c = choose_runs_together(cfg, cpu, measure=measure, measure_on_cpu=True, log=None, reserve_bytes=5 * gib,
                             total_bytes=80 * gib)
    assert (c.k, calls) == (2, [1, 2, 3]) and "95.0 GiB of 80.0" in c.reason  # 3 x 30 + 5 > 90 % of 80
    measure, calls = _fake_measure(rates, fail_at=1, error=RuntimeError("no kernel image"))
    c = choose_runs_together(cfg, cpu, measure=measure, measure_on_cpu=True, log=None)
    assert c.k == 1 and "the probe failed (RuntimeError: no kernel image)" in c.reason


def test_auto_decision_is_kept_per_setting_and_reused(tmp_path):
    import torch

    from metanet_utils.together import choose_runs_together

    cfg, cpu = RunConfig(backbone="test_resnet"), torch.device("cpu")
    measure, calls = _fake_measure({1: 100.0, 2: 150.0, 3: 160.0})
    first = choose_runs_together(cfg, cpu, measure=measure, measure_on_cpu=True, runs_dir=tmp_path, log=None)
    again = choose_runs_together(cfg, cpu, measure=measure, measure_on_cpu=True, runs_dir=tmp_path, log=None)
    assert calls == [1, 2, 3] and again.cached and (again.k, again.rates) == (first.k, first.rates)
    other, calls2 = _fake_measure({1: 100.0, 2: 101.0})  # another batch size is another decision
    assert choose_runs_together(cfg.replace(batch_size=64), cpu, measure=other, measure_on_cpu=True,
                                runs_dir=tmp_path, log=None).k == 1 and calls2 == [1, 2]
    assert len(json.loads((tmp_path / ".together.json").read_text())) == 2
    (tmp_path / ".together.json").write_text("{damaged")
    measure3, calls3 = _fake_measure({1: 100.0, 2: 150.0, 3: 160.0})
    assert choose_runs_together(cfg, cpu, measure=measure3, measure_on_cpu=True, runs_dir=tmp_path,
                                log=None).k == 2 and calls3 == [1, 2, 3]
    failing, _ = _fake_measure({}, fail_at=1, error=RuntimeError("busy"))
    choose_runs_together(cfg.replace(batch_size=8), cpu, measure=failing, measure_on_cpu=True, runs_dir=tmp_path,
                         log=None)
    assert len(json.loads((tmp_path / ".together.json").read_text())) == 1  # a failed probe is not kept


@pytest.fixture()
def one_torch_thread():
    """Tiny CPU models on a busy 2-core machine: one intra-op thread is 10-50x faster than two that contend."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("k, fusion", [(1, "metanet"), (2, "none"), (3, "metanet")])
def test_auto_probe_trains_k_copies_in_turn_for_a_warm_up_and_each_timed_epoch_and_reports_the_median_rate(
        k, fusion, monkeypatch, one_torch_thread):
    """measure_together_rate(cfg, k) builds k models, each with its own step, and trains them through the grid's
    interleaved loop: one warm-up epoch then ``repeats`` timed epochs of ``batches`` full batches per run, one
    batch of each run in turn. The rate is k x batches x batch_size images over the median timed epoch (a
    fake clock here: epochs of 100 (warm-up), 2, 6 and 3 s)."""
    from types import SimpleNamespace

    import torch

    from metanet_utils import step as step_mod
    from metanet_utils import together
    from metanet_utils import train as train_mod

    made, calls = [], []  # the steps built; (which step, batch size) per step taken

    class CountingStep(step_mod.TrainStep):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

        def __call__(self, *inputs):
            calls.append((made.index(self), len(inputs[0])))
            return super().__call__(*inputs)

    monkeypatch.setattr(step_mod, "TrainStep", CountingStep)
    together_epochs, real_interleaved = [], train_mod.run_interleaved
    monkeypatch.setattr(train_mod, "run_interleaved",
                        lambda epochs, device: together_epochs.append(len(epochs)) or real_interleaved(epochs, device))
    ticks = iter([0.0, 100.0, 100.0, 102.0, 102.0, 108.0, 108.0, 111.0])  # (start, end) of each epoch
    monkeypatch.setattr(together, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))

    meta = {} if fusion == "metanet" else {"meta_features": ()}
    cfg = RunConfig(backbone="test_resnet", fusion=fusion, image_size=40, crop_size=32, batch_size=8,
                    pretrained=False, **meta)
    rate, peak = together.measure_together_rate(cfg, k, torch.device("cpu"), batches=2, repeats=3)
    assert len(made) == k  # k runs ...
    assert len({id(st.model) for st in made}) == k and len({id(st.optimizer) for st in made}) == k  # ... apart
    assert together_epochs == [k] * 4  # trained together: warm-up + 3 timed epochs
    assert calls == [(i, 8) for _ in range(4 * 2) for i in range(k)]  # 2 full batches per run and epoch, in turn
    assert [st.stats["eager"] for st in made] == [4 * 2] * k  # the real step ran each of them (no graphs on a CPU)
    assert rate == pytest.approx(k * 2 * 8 / 3.0) and peak == 0  # median of 2, 6, 3 s; no device memory on a CPU
    with pytest.raises(StopIteration):  # the clock was read exactly twice per epoch
        next(ticks)


def test_groups_with_a_number_per_backbone_keep_backbones_apart():
    def r(bb, fold):
        return RunConfig(backbone=bb, image_size=64, crop_size=32, fold=fold, pretrained=False)

    runs = [r("big", 0), r("small", 0), r("big", 1), r("small", 1), r("small", 2), r("big", 2)]
    groups = _groups(runs, lambda c: {"big": 1, "small": 2}[c.backbone])
    assert [[(c.backbone, c.fold) for c in g] for g in groups] == [
        [("big", 0)], [("small", 0), ("small", 1)], [("big", 1)], [("small", 2)], [("big", 2)]]


def test_grid_with_auto_on_a_cpu_trains_one_run_at_a_time(small_ds, tmp_path, capsys):
    prof = load_profile("smoke", backbones=["test_resnet"], fusions=["none", "metanet"], n_folds=2, folds=[0],
                        epochs=1, image_size=40, crop_size=32, batch_size=16, runs_together="auto",
                        ablations={"table3": False, "table4": False})
    s = run_grid(prof, small_ds, runs_dir=tmp_path, device="cpu", progress=True)
    assert not s.failed and len(s.trained) == 2
    out = capsys.readouterr().out
    assert "at a time" not in out and "at once" not in out and "[together]" not in out
    assert not [rid for rid in s.trained
                if json.loads((tmp_path / rid / "metrics.json").read_text())["execution"]["trained_together"]]
    assert not (tmp_path / ".together.json").exists()


@pytest.mark.parametrize("value", ["two", 0, True, 1.5])
def test_runs_together_must_be_a_whole_number_or_auto(value):
    from metanet_utils.config import ConfigError

    with pytest.raises(ConfigError, match="runs_together=.* is not allowed; use a whole number >= 1 or auto"):
        load_profile("smoke", runs_together=value)
    assert load_profile("smoke", runs_together="auto").runs_together == "auto"


def test_grid_command_takes_together_auto_or_a_number():
    from metanet_utils.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["grid", "--profile", "smoke", "--together", "auto"]).together == "auto"
    assert parse(["grid", "--profile", "smoke", "--together", "3"]).together == 3
    with pytest.raises(SystemExit):
        parse(["grid", "--profile", "smoke", "--together", "two"])


def test_runs_together_evaluate_only_after_every_run_has_ended_its_epoch(small_ds, tmp_path, monkeypatch):
    """An evaluation between the last batches of the others would stall them and count in their epoch times."""
    from metanet_utils import train as train_mod

    events = []
    real_advance, real_end = train_mod.EpochIter.advance, train_mod._RunSession.end_epoch

    def advance(self):
        more = real_advance(self)
        if not more:
            events.append("epoch over")
        return more

    def end_epoch(self, row, force_checkpoint=False):
        events.append("evaluate")
        return real_end(self, row, force_checkpoint)

    monkeypatch.setattr(train_mod.EpochIter, "advance", advance)
    monkeypatch.setattr(train_mod._RunSession, "end_epoch", end_epoch)
    cfgs = [_cfg(small_ds, fold=0), _cfg(small_ds, fold=1), _cfg(small_ds, fusion="none", meta_features=())]
    out = train_runs_together(cfgs, small_ds, runs_dir=tmp_path, device="cpu", progress=False)
    assert all(isinstance(m, dict) for m in out.values())
    assert events == (["epoch over"] * 3 + ["evaluate"] * 3) * 2  # two epochs
