"""Notebooks 04-09 in the smoke profile on the real data copy, in an isolated root, with papermill: 04 (one copy
per backbone, when present) and 05-09, executed once for the module (about 2 minutes on 2 cores). They must skip
complete runs, write Tables 1-4 with the right shapes, save their figures, and feed the HTML report.

The records: Table 1's image-only and concatenation runs (both folds) trained by the CLI grid in a subprocess, so
that the notebooks read what training writes; every other run of the profile written directly as a complete
record (train's layout, random validation predictions of the real folds, a randomly initialised checkpoint), so
that the notebooks run everything but training in seconds."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from conftest import ensure_kernel

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
ANALYSIS = ["05", "06", "07", "08", "09"]

#: Figures each analysis notebook must write (smoke profile: one backbone, test_resnet). 05 shows 04's learning
#: curves again without saving them a second time.
FIGURES: dict[str, list[str]] = {
    "04": ["04_curves_test_resnet"],
    "05": ["05_table1_mcr", "05_mcr_per_fold"],
    "06": ["06_recall_heatmap", "06_confusion_matrices", "06_metadata_gain"],
    "07": ["07_table3_metadata_subsets", "07_table4_fc_depth"],
    "08": ["08_figure2", "08_cam_both_right", "08_cam_metadata_helps"],
}


def _stream(nb) -> str:
    return "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                     if o.get("output_type") == "stream")


def _fake_records(root: Path, data_dir: Path) -> None:
    """A complete record (train's layout and manifest) for every run of the smoke profile that has none, without
    training."""
    import json

    import numpy as np
    import torch

    from metanet_utils.config import load_profile
    from metanet_utils.constants import CLASS_CODES, DX_CODES
    from metanet_utils.evaluate import score_predictions
    from metanet_utils.dataset import profile_dataset
    from metanet_utils.runs import enumerate_runs
    from metanet_utils.metadata import meta_dim
    from metanet_utils.models import build_model
    from metanet_utils.train import RECORD_FILES, is_complete

    prof = load_profile("smoke")
    ds = profile_dataset(prof, data_dir)
    rng = np.random.default_rng(0)
    for cfg in enumerate_runs(prof, ds):
        d = root / "results" / "runs" / cfg.run_id
        if is_complete(d):  # trained by the grid
            continue
        d.mkdir(parents=True)
        val = ds.folds(cfg.n_folds, cfg.split_scheme, cfg.split_seed) == cfg.fold
        ids = [i for i, v in zip(ds.image_ids, val) if v]
        y = ds.labels[val]
        probs = rng.dirichlet(np.ones(7), size=len(ids))
        probs[np.arange(len(ids)), y] += rng.uniform(0, 0.5, len(ids))  # better than chance, not perfect
        probs /= probs.sum(axis=1, keepdims=True)
        pred = pd.DataFrame(np.round(probs, 8), columns=list(CLASS_CODES))
        pred.insert(0, "image", ids)
        labels = pd.DataFrame({"image": ids, "dx": [DX_CODES[i] for i in y]})
        sc = score_predictions(pred, labels)
        (d / "config.json").write_text(json.dumps({**cfg.to_dict(), "run_id": cfg.run_id}))
        (d / "history.csv").write_text("epoch,lr,train_loss,val_loss,val_mcr,epoch_time_s,images_per_s\n"
                                       f"1,0.01,1.95,1.94,{sc['mcr']},1.0,100.0\n")
        (d / "metrics.json").write_text(json.dumps({
            "run_id": cfg.run_id, "mcr": sc["mcr"], "per_class_recall": sc["per_class_recall"],
            "confusion_matrix": sc["confusion_matrix"], "epochs_done": 1, "wall_time_s": 1.0,
            "train_time_s": 1.0, "images_per_s": 100.0, "device": "cpu (fake)", "n_val": len(ids),
            "n_train": int((~val).sum()), "data_kind": ds.kind}).replace("NaN", "null"))
        pred.to_csv(d / "predictions.csv", index=False, float_format="%.8f")
        labels.to_csv(d / "labels.csv", index=False)
        dim = meta_dim(cfg.meta_features) if cfg.fusion != "none" else 0
        model = build_model(cfg.backbone, cfg.fusion, meta_dim=dim, meta_layers=cfg.meta_layers, pretrained=False)
        torch.save({"run_id": cfg.run_id, "epoch": 1, "model": model.state_dict()}, d / "checkpoint.pt")
        (d / "manifest.json").write_text(json.dumps({"run_id": cfg.run_id, "files": {
            n: {"bytes": (d / n).stat().st_size} for n in RECORD_FILES}}))
        assert is_complete(d)


#: The runs the CLI grid trains (--only): Table 1's image-only and concatenation runs, both folds.
TRAINED = ["meta_layers=0"]


@pytest.fixture(scope="module")
def chain(tmp_path_factory, real_data_dir):
    """Records of every smoke run (some trained by the CLI grid, the others written), then 04 (per backbone) and
    05-09 executed; yields (root, executed notebooks, timings)."""
    import papermill as pm

    from metanet_utils.ops.pipeline import plan_jobs

    root = tmp_path_factory.mktemp("analysis")
    (root / "configs").symlink_to(ROOT / "configs")
    env = {"METANET_ROOT": str(root), "METANET_RESULTS_DIR": str(root / "results"),
           "METANET_CACHE_DIR": str(root / "cache"), "METANET_FIGURES_DIR": str(root / "figures")}
    timings: dict[str, float] = {}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():  # papermill's kernels inherit this process's environment
            mp.setenv(k, v)
        t0 = time.perf_counter()
        grid = subprocess.run([sys.executable, "-m", "metanet_utils", "grid", "--profile", "smoke", "--data-dir",
                               str(real_data_dir), "--only", *TRAINED], cwd=root, env={**os.environ, **env},
                              capture_output=True, text=True, timeout=600)
        assert grid.returncode == 0 and "trained now 4," in grid.stdout, grid.stdout[-3000:] + grid.stderr[-3000:]
        timings["records (4 trained)"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        _fake_records(root, real_data_dir)
        timings["records (the others written)"] = time.perf_counter() - t0
        out_dir = root / "outputs" / "notebooks"
        out_dir.mkdir(parents=True)
        jobs = plan_jobs("smoke", str(real_data_dir), NOTEBOOKS, out_dir, only=["04", *ANALYSIS])
        executed = {}
        kernel = ensure_kernel()
        for job in jobs:
            t0 = time.perf_counter()
            nb = pm.execute_notebook(str(job.source), str(job.output), parameters=job.parameters,
                                     kernel_name=kernel, cwd=str(NOTEBOOKS), progress_bar=False)
            timings[job.label] = time.perf_counter() - t0
            executed[job.output.stem] = nb
        print("\n" + "\n".join(f"  {k}: {v:.1f} s" for k, v in timings.items()))
        yield root, executed, timings


def _by_prefix(executed: dict, prefix: str):
    return next(nb for name, nb in executed.items() if name.startswith(prefix))


def test_every_notebook_ran(chain):
    root, executed, _ = chain
    names = sorted(executed)
    assert [n[:2] for n in names if n[:2] in ANALYSIS] == ANALYSIS
    if (NOTEBOOKS / "04_training.ipynb").is_file():
        assert any(n.startswith("04_training-test_resnet") for n in names)
    for name, nb in executed.items():
        for c in nb.cells:
            for o in c.get("outputs", []) if c.cell_type == "code" else []:
                assert o.get("output_type") != "error", f"{name}: {o.get('ename')}: {o.get('evalue')}"
                assert "Traceback" not in o.get("text", ""), f"{name}: {o.get('text')[:500]}"


def test_tables_have_the_right_shapes(chain):
    root, _, _ = chain
    tables = root / "results" / "tables"
    t = {i: pd.read_csv(tables / f"table{i}.csv") for i in (1, 2, 3, 4)}
    for i in (1, 2, 3, 4):
        assert (tables / f"table{i}.md").is_file()
        assert {"ours_mean", "ours_std", "n", "paper_mean", "paper_std", "diff"} <= set(t[i].columns)
    assert t[1].shape[0] == 3 and t[1]["fusion"].tolist() == ["none", "concat", "metanet"]
    assert t[2].shape[0] == 21 and t[3].shape[0] == 8 and t[4].shape[0] == 8
    for i in (1, 2, 3, 4):  # every cell has its 2 smoke folds: the notebooks used this profile's runs
        assert (t[i]["n"] == 2).all(), i
    assert t[1]["ours_mean"].between(0, 100).all()
    assert t[4]["paper_mean"].notna().all()


def test_figures_were_saved(chain):
    root, _, _ = chain
    for nb, figures in FIGURES.items():
        for fig in figures:
            png = root / "figures" / f"{fig}.png"
            assert png.is_file() and png.stat().st_size > 5000, f"notebook {nb} did not write {png.name}"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((root / "figures").glob("05_learning_curves*")), "05 saves 04's learning curves again"


def test_notebooks_skip_complete_runs_and_report(chain):
    root, executed, _ = chain
    assert "nothing to train" in _stream(_by_prefix(executed, "07"))
    text09 = _stream(_by_prefix(executed, "09"))
    assert "settings deviate from the paper's protocol" in text09
    assert "Not run" in text09 and "split_scheme" in text09  # lesion split not run in smoke: says how
    assert "*** SYNTHETIC" not in text09
    text05 = _stream(_by_prefix(executed, "05"))
    assert "0.0625" in text05


def test_notebooks_say_what_produced_the_results(chain):
    """Each analysis notebook prints the run's caption and the runs found, Table 1 and the ablations apart; no
    tqdm warning reaches the output."""
    from metanet_utils import report
    from metanet_utils.config import load_profile

    root, executed, _ = chain
    caption = "smoke profile · HAM10000: 316 of its images · "
    counts = "Profile 'smoke': Table 1: 6 of 6 runs complete; ablations (Tables 3 and 4): 26 of 26 complete."
    for prefix in ("05", "06", "08", "09"):
        text = _stream(_by_prefix(executed, prefix))
        assert caption in text and "· not the paper's protocol" in text, prefix
        assert counts in text, prefix
        assert "runs of profile 'smoke' are complete" not in text, prefix
    assert caption in _stream(_by_prefix(executed, "07")) and caption in _stream(_by_prefix(executed, "04"))
    text06 = _stream(_by_prefix(executed, "06"))
    assert "This run's smallest class" in text06 and "validation images per fold" in text06
    for name, nb in executed.items():
        for c in nb.cells:
            for o in c.get("outputs", []) if c.cell_type == "code" else []:
                assert "IProgress" not in o.get("text", ""), f"{name}: {o.get('text')[:300]}"
    assert report.shows_mechanics_only(load_profile("smoke"))


def test_html_report_of_the_chain(chain):
    from metanet_utils.ops.html import write_html_report

    root, executed, _ = chain
    out = write_html_report(root / "outputs" / "notebooks", root / "outputs" / "report.html")
    pages = sorted((root / "outputs" / "report").glob("*.html"))
    assert len(pages) == len(executed)
    index = out.read_text()
    assert "test_resnet" in index and "report/09_report.html" in index
    assert "SYNTHETIC DATA:" not in index
    assert "NOT THE PAPER'S PROTOCOL" in index and "smoke profile · HAM10000: 316 of its images" in index
    assert "The paper used none of these backbones" in index  # test_resnet: a sentence, not a column of dashes
    page = (root / "outputs" / "report" / "08_cam.html").read_text()
    assert "pair_cams" not in page and "data:image/png;base64" in page  # code hidden, figures kept
    nb = nbformat.read(root / "outputs" / "notebooks" / "08_cam.ipynb", as_version=4)
    assert nb.cells[0].source.startswith("# 08")
