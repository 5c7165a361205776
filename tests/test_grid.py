"""The grid's bookkeeping (metanet_utils.ops.grid): ``status_table`` (the run list of notebooks 04 and 07) and the
longest-first order in which ``run_grid`` trains, by ``estimated_cost`` (GMACs x (crop / 224)^2 x epochs)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from _records import probs_for, write_fake_run

from metanet_utils import runs as profile_runs
from metanet_utils.ops import grid
from metanet_utils.config import RunConfig, load_profile
from metanet_utils.train import is_complete

#: The files of a finished record as the training engine writes them, written out here (train.RECORD_FILES).
ENGINE_FILES = ("config.json", "history.csv", "metrics.json", "predictions.csv", "labels.csv", "checkpoint.pt")
#: Forward GMACs at 224 px of the paper's backbones, written out here from the paper's models (timm / torchvision).
GMACS = {"alexnet": 0.71, "vgg19": 19.63, "resnet50": 4.11, "densenet161": 7.79, "senet154": 20.77,
         "pnasnet5large": 25.04}


def _dataset() -> SimpleNamespace:
    """What enumerating and ordering runs reads of a data set: its kind, fingerprint and images."""
    return SimpleNamespace(kind="real", fingerprint="gridtest", df=pd.DataFrame({"image_id": range(10)}))


def _record(runs_dir: Path, cfg: RunConfig, state: str) -> None:
    """A record of ``cfg`` in one of the states a run folder can be found in."""
    if state == "absent":
        return
    y = list(range(7))
    d = write_fake_run(runs_dir, cfg.to_dict(), probs_for(y, y), y, omit=["checkpoint.pt"])  # no checkpoint
    if state == "no checkpoint":
        return
    (d / "checkpoint.pt").write_bytes(b"\0" * 64)
    (d / "manifest.json").write_text(json.dumps({"run_id": cfg.run_id, "files": {
        n: {"bytes": (d / n).stat().st_size} for n in ENGINE_FILES}}))
    if state == "truncated":  # damaged after it was written: a size no longer matches
        (d / "predictions.csv").write_text((d / "predictions.csv").read_text()[:-5])
    elif state == "bad manifest":
        (d / "manifest.json").write_text("{not json")
    elif state == "no manifest":
        (d / "manifest.json").unlink()
    else:
        assert state == "complete"


STATES = ["complete", "absent", "no checkpoint", "truncated", "complete", "bad manifest"]


def test_status_table_says_complete_only_for_records_whose_manifest_matches_every_engine_file(isolated_root):
    """One row per run in the given order, with its settings; ``complete`` is True exactly for the records
    written whole (manifest listing every engine file at its size), as train.is_complete says, and it reads the
    default runs folder (the notebooks call ``status_table(runs)``)."""
    prof = load_profile("smoke", ablations={"table3": False, "table4": False})
    runs = profile_runs.enumerate_runs(prof, _dataset())
    runs_dir = isolated_root / "results" / "runs"
    assert len(runs) == len(STATES) == 6
    for cfg, state in zip(runs, STATES):
        _record(runs_dir, cfg, state)
    _record(runs_dir, runs[0].replace(fold=1, epochs=7), "complete")  # another run's record: no row of its own

    table = profile_runs.status_table(runs)  # the default folder: $METANET_RESULTS_DIR/runs
    assert list(table.columns) == ["run_id", "backbone", "fusion", "meta", "k", "fold", "complete"]
    assert table["run_id"].tolist() == [r.run_id for r in runs]
    assert table["complete"].tolist() == [s == "complete" for s in STATES]
    assert table["complete"].tolist() == [is_complete(runs_dir / r.run_id) for r in runs]
    all3 = "age+sex+localization"
    assert list(table[["fusion", "meta", "k", "fold"]].itertuples(index=False, name=None)) == [
        ("none", "", 0, 0), ("none", "", 0, 1), ("concat", all3, 0, 0), ("concat", all3, 0, 1),
        ("metanet", all3, 2, 0), ("metanet", all3, 2, 1)]
    assert (table["backbone"] == "test_resnet").all()
    # an explicit folder, a record gone missing and one finished since
    other = isolated_root / "elsewhere"
    _record(other, runs[1], "complete")
    _record(other, runs[0], "no manifest")
    assert profile_runs.status_table(runs, other)["complete"].tolist() == [False, True, False, False, False, False]


@pytest.mark.parametrize("backbone, crop, epochs, expected", [
    ("vgg19", 224, 250, 19.63 * 250),
    ("pnasnet5large", 331, 250, 25.04 * (331 / 224) ** 2 * 250),
    ("alexnet", 112, 10, 0.71 * 0.25 * 10),
    ("resnet50.a1_in1k", 224, 3, 4.11 * 3),  # a timm tag after the dot: the architecture's GMACs
    ("test_resnet", 56, 2, 1.0 * (56 / 224) ** 2 * 2),  # not a backbone of the paper: 1 GMAC
])
def test_estimated_cost_is_gmacs_times_the_crops_pixels_over_224_squared_times_epochs(backbone, crop, epochs,
                                                                                          expected):
    cfg = RunConfig(backbone=backbone, image_size=max(crop, 64), crop_size=crop, epochs=epochs)
    assert grid.estimated_cost(cfg) == pytest.approx(expected, rel=1e-12)


def test_run_grid_trains_the_missing_runs_longest_first_by_estimated_cost(isolated_root, monkeypatch):
    """run_grid hands its runs to train_run in decreasing cost, the cost recomputed here by hand (same crop and
    epochs for all, so the backbones' GMACs decide: vgg19, resnet50, test_resnet (1), alexnet); runs of equal cost
    keep the enumeration order (fusion, then fold), and a complete record is skipped."""
    trained = []

    def fake_train_run(cfg, dataset, **kwargs):
        trained.append(cfg)
        return {"mcr": 0.5, "wall_time_s": 1.0}

    monkeypatch.setattr(grid, "train_run", fake_train_run)
    prof = load_profile("smoke", backbones=["test_resnet", "alexnet", "vgg19", "resnet50"], fusions=["none", "metanet"],
                        ablations={"table3": False, "table4": False}, runs_together=1)
    ds = _dataset()
    runs = profile_runs.enumerate_runs(prof, ds)
    runs_dir = isolated_root / "results" / "runs"
    done = next(r for r in runs if r.backbone == "resnet50" and r.fusion == "metanet" and r.fold == 0)
    _record(runs_dir, done, "complete")

    summary = grid.run_grid(prof, ds, runs_dir=runs_dir, device="cpu", progress=False)

    def by_hand(r: RunConfig) -> float:
        return GMACS.get(r.backbone, 1.0) * (r.crop_size / 224) ** 2 * r.epochs

    assert summary.skipped == [done.run_id] and summary.total == 16 and not summary.failed
    assert [by_hand(r) for r in trained] == sorted((by_hand(r) for r in trained), reverse=True)
    assert [(r.backbone, r.fusion, r.fold) for r in trained] == [
        (b, f, k) for b in ("vgg19", "resnet50", "test_resnet", "alexnet") for f in ("none", "metanet")
        for k in (0, 1) if (b, f, k) != ("resnet50", "metanet", 0)]
    assert summary.trained == [r.run_id for r in trained]
    assert math.isclose(by_hand(trained[0]), 19.63 * (56 / 224) ** 2 * 1)


def test_run_grid_waits_for_busy_runs_logs_failures_and_stops_on_a_cache_error(isolated_root, monkeypatch, capsys):
    """A run another worker holds (RunBusy) is tried again after ``poll_s`` with ``wait`` and left with
    ``wait=False``; a failing run is logged to ``runs/.failed/<run_id>.log`` while the others go on (the log goes
    once it trains); a bad image or a full disk (CacheError) stops the grid at once."""
    from metanet_utils.cache import CacheError
    from metanet_utils.ops.locks import RunBusy

    prof = load_profile("smoke", fusions=["none", "metanet"], folds=[0], ablations={"table3": False, "table4": False})
    runs_dir = isolated_root / "results" / "runs"
    none, metanet = profile_runs.enumerate_runs(prof, _dataset())
    calls, behaviour = [], {}

    def fake_train_run(cfg, dataset, **kwargs):
        calls.append(cfg.run_id)
        outcome = behaviour[cfg.run_id].pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return {"mcr": 0.5, "wall_time_s": 1.0}

    monkeypatch.setattr(grid, "train_run", fake_train_run)
    behaviour.update({none.run_id: [RunBusy("held"), "ok"], metanet.run_id: [ValueError("bad run")]})
    s = grid.run_grid(prof, _dataset(), runs_dir=runs_dir, device="cpu", progress=True, poll_s=0)
    assert s.trained == [none.run_id] and list(s.failed) == [metanet.run_id]
    assert calls == [none.run_id, metanet.run_id, none.run_id]  # the busy run again, after the others
    log = runs_dir / ".failed" / f"{metanet.run_id}.log"
    assert s.failed[metanet.run_id] == str(log) and "ValueError: bad run" in log.read_text()
    out = capsys.readouterr().out
    assert "waiting for 1 run(s) trained by other workers" in out and f"!!! run {metanet.run_id} failed" in out

    calls.clear()
    behaviour.update({none.run_id: [RunBusy("held")], metanet.run_id: ["ok"]})
    s = grid.run_grid(prof, _dataset(), runs_dir=runs_dir, device="cpu", progress=False, wait=False)
    assert calls == [none.run_id, metanet.run_id] and s.trained == [metanet.run_id] and not s.failed
    assert not log.exists()  # trained since: its failure log is gone

    behaviour.update({none.run_id: [CacheError("not enough free disk")], metanet.run_id: ["ok"]})
    with pytest.raises(CacheError, match="free disk"):
        grid.run_grid(prof, _dataset(), runs_dir=runs_dir, device="cpu", progress=False)
