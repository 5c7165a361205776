"""bench/throughput.py keeps working: a tiny CPU run writes a complete table, and the paper
projection counts the runs of Tables 1, 3 and 4 correctly."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "throughput.py"

ROW_KEYS = {"backbone", "batch", "reference_img_s", "kit_img_s", "ceiling_img_s", "ratio_vs_reference",
            "fraction_of_ceiling"}


def _load_module():
    spec = importlib.util.spec_from_file_location("bench_throughput", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _write_jpegs(folder: Path, n: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:150, 0:200]
    for i in range(n):
        cx, cy, r = rng.uniform(60, 140), rng.uniform(40, 110), rng.uniform(20, 50)
        lesion = ((xx - cx) ** 2 + (yy - cy) ** 2 < r**2)[..., None]
        img = np.where(lesion, rng.integers(60, 120, 3), rng.integers(170, 230, 3)).astype(np.uint8)
        Image.fromarray(img).save(folder / f"ISIC_{i:07d}.jpg", quality=75)


def test_throughput_cpu_tiny(tmp_path):
    images = tmp_path / "images"
    _write_jpegs(images, 48)
    out_json, out_md = tmp_path / "t.json", tmp_path / "t.md"
    cmd = [sys.executable, str(SCRIPT), "--device", "cpu", "--backbones", "test_resnet", "resnet10t",
           "--size", "64", "--crop", "56", "--batches", "8", "--images", str(images), "--max-images", "48",
           "--workers", "2", "--warmup-steps", "2", "--warmup-seconds", "0", "--repeats", "3",
           "--min-steps", "1", "--max-seconds", "0.3", "--json", str(out_json), "--md", str(out_md)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out_json.read_text())
    for key in ("device", "torch", "date", "settings", "results"):
        assert key in report, key
    assert report["device_type"] == "cpu"
    rows = report["results"]
    assert [(r["backbone"], r["batch"]) for r in rows] == [("test_resnet", 8), ("resnet10t", 8)]
    for r in rows:
        assert ROW_KEYS <= set(r), set(r) ^ ROW_KEYS
        assert not r["notes"], r["notes"]
        for k in ROW_KEYS - {"backbone", "batch"}:
            assert isinstance(r[k], (int, float)) and r[k] > 0, (r["backbone"], k, r[k])
        assert r["ratio_vs_reference"] == pytest.approx(r["kit_img_s"] / r["reference_img_s"], rel=0.01)
        assert r["fraction_of_ceiling"] == pytest.approx(r["kit_img_s"] / r["ceiling_img_s"], rel=0.01)
        for p in ("reference", "kit", "ceiling", "eval"):
            d = r["details"][p]
            assert len(d["repeats_img_s"]) == 3 and d["steps_per_repeat"] >= 1
        assert r["kit_precision"] == "float32" and r["channels_last"] is False  # the CPU path of train_run
        assert r["kit_execution"] == "eager" and r["kit_eager_img_s"] is None  # no CUDA graphs on the CPU
        assert r["details"]["kit"]["execution"]["cuda_graphs"] is False
        assert r["eval_img_s"] > 0
        # two runs trained together (one process; on the CPU without streams) are measured beside
        assert r["together_runs"] == 2 and r["together_img_s"] > 0 and "together" in r["details"]
        assert r["together_vs_one_run"] == pytest.approx(r["together_img_s"] / r["kit_img_s"], rel=0.01)
        assert r["checkpoint_s"] > 0 and r["checkpoint_mb"] > 0  # one checkpoint written the kit's way
    # the reference ran in its own process, after the kit: its settings say so and its rows merged in
    assert report["settings"]["reference_process"] == "child"
    assert report["caches"]["64"]["images"] == 48 and report["caches"]["64"]["upload_s"] >= 0
    md = out_md.read_text()
    assert "| backbone |" in md and "test_resnet" in md and "resnet10t" in md
    assert "measured in its own process" in md and "## Image cache" in md


def test_throughput_ladder_and_reference_in_the_same_process(tmp_path):
    images = tmp_path / "images"
    _write_jpegs(images, 24)
    out_json, out_md = tmp_path / "t.json", tmp_path / "t.md"
    cmd = [sys.executable, str(SCRIPT), "--device", "cpu", "--backbones", "test_resnet", "--size", "48", "--crop", "40",
           "--batches", "8", "--images", str(images), "--max-images", "24", "--workers", "1", "--warmup-steps", "1",
           "--warmup-seconds", "0", "--repeats", "2", "--min-steps", "1", "--max-seconds", "0.2",
           "--reference-process", "same", "--eval", "off", "--ladder", "test_resnet",
           "--json", str(out_json), "--md", str(out_md)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out_json.read_text())
    assert report["settings"]["reference_process"] == "same"
    (row,) = report["results"]
    assert row["reference_img_s"] > 0 and row["eval_img_s"] is None and "eval" not in row["details"]
    (lad,) = report["ladders"]
    assert lad["backbone"] == "test_resnet" and lad["steps"][0]["step"] == "fp32, NCHW, eager"
    assert lad["steps"][0]["img_s"] > 0
    assert lad["steps"][-1] == {"step": "bf16, channels_last, CUDA graph", "img_s": None, "note": "needs a GPU"}
    assert "## Step by step: test_resnet" in out_md.read_text()


def test_paper_projection_counts_and_hours():
    mod = _load_module()
    runs = mod.paper_protocol_runs()
    assert set(runs) == set(mod.PAPER_BACKBONES)
    assert sum(v["table1"] for v in runs.values()) == 90  # 6 backbones x 3 fusions x 5 folds
    assert sum(v["all"] for v in runs.values()) == 155  # + Table 3 (30) and Table 4 (35) on SENet154
    rows = [{"backbone": b, "batch": 32, "kit_img_s": 1000.0, "reference_img_s": 250.0} for b in mod.PAPER_BACKBONES]
    proj = mod.project_paper_protocol(rows, 32)
    per_run_h = 250 * (8012 + 2003 / mod.EVAL_SPEEDUP) / 1000.0 / 3600
    assert proj["kit_all_hours"] == pytest.approx(155 * per_run_h, rel=1e-3)
    assert proj["reference_all_hours"] == pytest.approx(4 * proj["kit_all_hours"], rel=1e-3)
    partial = mod.project_paper_protocol(rows[:-1], 32)
    assert partial["kit_all_hours"] is None and partial["backbones"]["alexnet"]["kit_all_hours"] is not None

    # a measured evaluation speed replaces the assumption; side-by-side factors divide the kit's hours
    measured = [dict(r, eval_img_s=4000.0) for r in rows]
    proj2 = mod.project_paper_protocol(measured, 32, side_by_side={"resnet50": 2.0})
    per_run_h2 = 250 * (8012 / 1000.0 + 2003 / 4000.0) / 3600
    assert proj2["backbones"]["alexnet"]["kit_all_hours"] == pytest.approx(runs["alexnet"]["all"] * per_run_h2, rel=1e-3)
    assert proj2["backbones"]["resnet50"]["kit_all_hours"] == pytest.approx(runs["resnet50"]["all"] * per_run_h2 / 2,
                                                                            rel=1e-3)
    assert proj2["backbones"]["alexnet"]["kit_eval"] == "measured"
    assert proj2["reference_all_hours"] == proj["reference_all_hours"]  # the reference's evaluation stays assumed


def test_side_by_side_measurement_writes_aggregate_rows(tmp_path):
    """bench/concurrency.py on the CPU with one tiny run: the JSON row sums its processes."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "bench" / "concurrency.py"
    out = subprocess.run([sys.executable, str(script), "--backbones", "test_resnet", "--procs", "1", "--size", "40",
                          "--crop", "32", "--device", "cpu", "--max-seconds", "0.5", "--warmup-seconds", "0.2",
                          "--json", str(tmp_path / "c.json"), "--md", str(tmp_path / "c.md")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    (row,) = json.loads((tmp_path / "c.json").read_text())["rows"]
    assert row["procs"] == 1 and len(row["per_process_img_s"]) == 1
    assert row["aggregate_img_s"] == sum(row["per_process_img_s"]) > 0
    assert "| test_resnet | 1 |" in (tmp_path / "c.md").read_text()


def test_forward_flops_of_a_convolution_match_the_textbook_count():
    import torch
    import torch.nn as nn

    mod = _load_module()

    class OneConv(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 16, 3, padding=1, bias=False)
            self.fc = nn.Linear(16 + 5, 7, bias=False)

        def forward(self, x, meta):
            return self.fc(torch.cat([self.conv(x).mean((2, 3)), meta], 1))

    g = mod.forward_gflop_per_image(OneConv(), 32, 5, torch.device("cpu"))
    conv = 2 * 16 * 3 * 3 * 3 * 32 * 32  # 2 FLOP per multiply-add, one output per pixel and channel
    fc = 2 * 21 * 7
    assert g * 1e9 == pytest.approx(conv + fc)


def test_projection_adds_the_protocol_arithmetic_and_the_bound_at_the_matmul_peak():
    mod = _load_module()
    runs = mod.paper_protocol_runs()
    rows = [{"backbone": b, "batch": 32, "kit_img_s": 1000.0, "reference_img_s": 250.0, "fwd_gflop_per_img": 10.0}
            for b in mod.PAPER_BACKBONES]
    proj = mod.project_paper_protocol(rows, 32, peak_tflop_s=500.0)
    per_run_pflop = 250 * (8012 * 30.0 + 2003 * 10.0) / 1e6
    assert proj["pflop_all"] == round(155 * per_run_pflop)
    assert proj["pflop_table1"] == round(90 * per_run_pflop)
    assert proj["hours_at_matmul_peak_all"] == pytest.approx(155 * per_run_pflop * 1e3 / 500 / 3600, abs=0.05)
    assert runs["senet154"]["all"] == 80


def test_checkpoint_measurement_writes_model_and_momentum_and_the_projection_counts_it():
    mod = _load_module()
    from metanet_utils.config import load_profile
    from metanet_utils.models import build_model

    model = build_model("test_resnet", "metanet", num_classes=7, meta_dim=17, meta_layers=2, pretrained=False)
    c = mod.measure_checkpoint(model, repeats=1)
    n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    assert c["checkpoint_mb"] * 2**20 >= 2 * n_bytes  # weights and one momentum buffer per weight
    assert c["checkpoint_s"] > 0

    interval = load_profile("paper").checkpoint_interval_s
    rows = [{"backbone": b, "batch": 32, "kit_img_s": 1000.0, "reference_img_s": 250.0, "eval_img_s": 4000.0,
             "checkpoint_s": 2.0} for b in mod.PAPER_BACKBONES]
    proj = mod.project_paper_protocol(rows, 32)
    sec = 250 * (8012 / 1000.0 + 2003 / 4000.0)
    n_ckpt = 250 if not interval else min(250, 2 + sec / interval)
    runs = mod.paper_protocol_runs()
    assert proj["backbones"]["vgg19"]["kit_all_hours"] == pytest.approx(
        runs["vgg19"]["all"] * (sec + 2.0 * n_ckpt) / 3600, rel=1e-3)
    assert proj["checkpoint_interval_s"] == interval
