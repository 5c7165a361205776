"""bench/throughput.py and bench/concurrency.py keep working: a tiny CPU run writes a complete table (the kit
against the plain DataLoader pipeline, medians of the repeats, ratios), a run cut off keeps the rows measured
so far, and the paper projection counts the runs of Tables 1, 3 and 4 correctly."""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "throughput.py"
TINY = ["--device", "cpu", "--size", "40", "--crop", "32", "--batches", "8", "--warmup-steps", "1",
        "--warmup-seconds", "0", "--min-steps", "1", "--max-seconds", "0.2"]
#: Tiny CPU models on a busy 2-core machine: one intra-op thread is many times faster than two that contend.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_throughput", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory) -> Path:
    """24 small JPEGs: a dark disc (the lesion) on light skin."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("bench") / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:60, 0:80]
    for i in range(24):
        lesion = ((xx - rng.uniform(25, 55)) ** 2 + (yy - rng.uniform(20, 40)) ** 2 < rng.uniform(8, 20) ** 2)
        img = np.where(lesion[..., None], rng.integers(60, 120, 3), rng.integers(170, 230, 3)).astype(np.uint8)
        Image.fromarray(img).save(folder / f"ISIC_{i:07d}.jpg", quality=75)
    return folder


def test_a_tiny_cpu_run_writes_the_kit_against_the_reference_with_medians_and_ratios(tmp_path, jpegs):
    out_json, out_md = tmp_path / "t.json", tmp_path / "t.md"
    cmd = [sys.executable, str(SCRIPT), *TINY, "--backbones", "test_resnet", "--images", str(jpegs),
           "--max-images", "24", "--workers", "1", "--together", "2", "--cuda-graphs", "on", "--no-print",
           "--json", str(out_json), "--md", str(out_md)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=ONE_THREAD)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out_json.read_text())
    assert report["device_type"] == "cpu" and report["kit_execution"] == "eager"
    assert report["settings"]["cuda_graphs_measured"] is False  # CUDA graphs need a GPU: not measured here
    assert report["caches"]["40"]["images"] == 24 and report["caches"]["40"]["random_bytes"] is False
    rows = report["results"]
    assert [(r["backbone"], r["batch"]) for r in rows] == [("test_resnet", 8)]
    for r in rows:
        assert not r["notes"], r["notes"]
        for p in ("reference", "kit", "ceiling", "eval", "together"):
            d = r["details"][p]
            assert len(d["repeats_img_s"]) == 3 and d["steps_per_repeat"] >= 1 and d["first_call_s"] > 0
            assert r[f"{p}_img_s"] == pytest.approx(statistics.median(d["repeats_img_s"]), rel=0.01)  # the median
        assert r["ratio_vs_reference"] == pytest.approx(r["kit_img_s"] / r["reference_img_s"], rel=0.01)
        assert r["fraction_of_ceiling"] == pytest.approx(r["kit_img_s"] / r["ceiling_img_s"], rel=0.01)
        assert r["together_runs"] == 2 and r["details"]["together"]["runs"] == 2
        assert r["together_vs_one_run"] == pytest.approx(r["together_img_s"] / r["kit_img_s"], rel=0.01)
        assert r["kit_precision"] == "float32" and r["channels_last"] is False  # the CPU path of train_run
        assert r["details"]["kit"]["execution"]["cuda_graphs"] is False and r["kit_graphs_img_s"] is None
        assert r["details"]["reference"]["bottleneck"] in ("loader", "model")
    md = out_md.read_text()
    assert "| backbone |" in md and "| test_resnet | 40->32 | 8 |" in md and "## Image cache" in md


def test_a_run_cut_off_keeps_the_rows_it_measured(bench, tmp_path, monkeypatch):
    """The JSON is rewritten after every measurement: interrupted at the first ceiling, the kit's row is there."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "measure_ceiling", interrupted)
    out = tmp_path / "t.json"
    with pytest.raises(KeyboardInterrupt):
        bench.main([*TINY, "--backbones", "test_resnet", "--pipelines", "kit", "ceiling", "--random-cache",
                    "--max-images", "24", "--json", str(out), "--md", str(tmp_path / "t.md")])
    (row,) = json.loads(out.read_text())["results"]
    assert row["kit_img_s"] > 0 and row["ceiling_img_s"] is None


def test_rows_come_in_passes_and_a_deadline_skips_what_would_start_after_it(bench, tmp_path, monkeypatch):
    """First batch size for every backbone, then the opt-in paths there, then the other batch sizes; with the
    deadline passed, every later measurement is skipped and says so."""
    order = []
    monkeypatch.setattr(bench.Bench, "measure", lambda self, row, name, fn: order.append((row["batch"], name)))
    bench.main([*TINY, "--backbones", "test_resnet", "--batches", "8", "16", "--pipelines", "kit", "ceiling",
                "--random-cache", "--together", "2", "--json", str(tmp_path / "a.json"), "--md", str(tmp_path / "a.md"),
                "--no-print"])
    assert order == [(8, "kit"), (8, "ceiling"), (8, "together"), (8, "eval"), (16, "kit"), (16, "ceiling")]
    monkeypatch.undo()
    bench.main([*TINY, "--backbones", "test_resnet", "--pipelines", "kit", "--random-cache", "--deadline", "0",
                "--json", str(tmp_path / "b.json"), "--md", str(tmp_path / "b.md"), "--no-print"])
    (row,) = json.loads((tmp_path / "b.json").read_text())["results"]
    assert row["kit_img_s"] is None and row["notes"] == ["kit skipped (time budget)", "eval skipped (time budget)"]


def test_paper_projection_counts_and_hours(bench):
    runs = bench.paper_protocol_runs()
    assert set(runs) == set(bench.PAPER_BACKBONES) and runs["senet154"]["all"] == 80
    assert sum(v["table1"] for v in runs.values()) == 90  # 6 backbones x 3 fusions x 5 folds
    assert sum(v["all"] for v in runs.values()) == 155  # + Table 3 (30) and Table 4 (35) on SENet154
    rows = [{"backbone": b, "batch": 32, "kit_img_s": 1000.0, "reference_img_s": 250.0} for b in bench.PAPER_BACKBONES]
    proj = bench.project_paper_protocol(rows, 32)
    per_run_h = 250 * (8012 + 2003 / bench.EVAL_SPEEDUP) / 1000.0 / 3600
    assert proj["kit_all_hours"] == pytest.approx(155 * per_run_h, rel=1e-3)
    assert proj["kit_table1_hours"] == pytest.approx(90 * per_run_h, rel=1e-3)
    assert proj["reference_all_hours"] == pytest.approx(4 * proj["kit_all_hours"], rel=1e-3)
    partial = bench.project_paper_protocol(rows[:-1], 32)
    assert partial["kit_all_hours"] is None and partial["backbones"]["alexnet"]["kit_all_hours"] is not None

    # a measured evaluation speed replaces the assumption; side-by-side factors divide the kit's hours
    measured = [dict(r, eval_img_s=4000.0) for r in rows]
    proj2 = bench.project_paper_protocol(measured, 32, side_by_side={"resnet50": 2.0})
    per_run_h2 = 250 * (8012 / 1000.0 + 2003 / 4000.0) / 3600
    assert proj2["backbones"]["alexnet"]["kit_all_hours"] == pytest.approx(runs["alexnet"]["all"] * per_run_h2, rel=1e-3)
    assert proj2["backbones"]["resnet50"]["kit_all_hours"] == pytest.approx(runs["resnet50"]["all"] * per_run_h2 / 2,
                                                                             rel=1e-3)
    assert proj2["backbones"]["alexnet"]["kit_eval"] == "measured"
    assert proj2["reference_all_hours"] == proj["reference_all_hours"]  # the reference's evaluation stays assumed


def test_side_by_side_measurement_writes_aggregate_rows(tmp_path):
    """bench/concurrency.py on the CPU with one tiny run: the JSON row sums its processes."""
    script = ROOT / "bench" / "concurrency.py"
    out = subprocess.run([sys.executable, str(script), "--backbones", "test_resnet", "--procs", "1", "--size", "40",
                          "--crop", "32", "--device", "cpu", "--max-seconds", "0.3", "--warmup-seconds", "0.1",
                          "--json", str(tmp_path / "c.json"), "--md", str(tmp_path / "c.md")],
                         capture_output=True, text=True, timeout=300, env=ONE_THREAD)
    assert out.returncode == 0, out.stderr[-2000:]
    (row,) = json.loads((tmp_path / "c.json").read_text())["rows"]
    assert row["procs"] == 1 and len(row["per_process_img_s"]) == 1
    assert row["aggregate_img_s"] == sum(row["per_process_img_s"]) > 0
    assert "| test_resnet | 1 |" in (tmp_path / "c.md").read_text()
