"""The paper's tables beside ours (metanet_utils.tables)."""

from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _records import fake_fold_run

from metanet_utils import evaluate as ev
from metanet_utils import tables as tb
from metanet_utils.constants import BACKBONES, CLASS_CODES

PAPER_DIR = Path(__file__).resolve().parents[2] / "shared" / "paper"
PAPER_FILES = {
    1: "table1_backbones.csv",
    2: "table2_per_class_senet154.csv",
    3: "table3_metadata_ablation_senet154.csv",
    4: "table4_fc_depth_senet154.csv",
}
ALL = ("age", "sex", "localization")


# --------------------------------------------------------------------------- paper numbers


@pytest.mark.parametrize("i", [1, 2, 3, 4])
def test_paper_numbers_equal_the_shared_csvs(i):
    src = PAPER_DIR / PAPER_FILES[i]
    if not src.is_file():
        pytest.skip(f"{src} not found")
    ours = getattr(tb, f"paper_table{i}")()
    pd.testing.assert_frame_equal(ours, pd.read_csv(src))


def test_paper_tables_shapes_and_values():
    assert tb.paper_table1().shape == (18, 4)
    assert tb.paper_table2().shape == (21, 5)
    assert tb.paper_table3().shape == (8, 5)
    assert tb.paper_table4().shape == (8, 4)
    t1 = tb.paper_table1()
    assert t1.query("backbone == 'PNASNet-5' and fusion == 'metanet'")["mcr_mean"].item() == 89.09
    t = tb.paper_table1()
    t.loc[0, "mcr_mean"] = -1  # callers get copies
    assert tb.paper_table1().loc[0, "mcr_mean"] == 74.68


def test_backbone_aliases():
    assert [tb.paper_backbone(b) for b in BACKBONES] == [b.paper_name for b in BACKBONES.values()]
    assert [tb.paper_alias(b.model) for b in BACKBONES.values()] == list(BACKBONES)  # timm's names, tags pinned
    assert tb.paper_backbone("legacy_senet154") == "SENet154"
    assert tb.paper_backbone("PNASNet5Large") == "PNASNet-5"
    assert tb.paper_backbone("timm/densenet161.tv_in1k") == "DenseNet161"
    assert tb.paper_backbone("resnet10t") is None and tb.paper_backbone("test_resnet") is None


# --------------------------------------------------------------------------- empty: missing, never 0


def test_empty_records_give_missing_cells_never_zero(tmp_path):
    t = {"table1": tb.build_table1(pd.DataFrame()),
         "table2": tb.build_table2(pd.DataFrame(), "senet154"),
         "table3": tb.build_table3(pd.DataFrame(), "senet154"),
         "table4": tb.build_table4(pd.DataFrame(), "senet154")}
    assert t["table1"].shape[0] == 18 and t["table2"].shape[0] == 21
    assert t["table3"].shape[0] == 8 and t["table4"].shape[0] == 8
    for name, df in t.items():
        assert df["ours_mean"].isna().all() and df["ours_std"].isna().all() and df["diff"].isna().all(), name
        assert (df["n"] == 0).all()
        assert df["paper_mean"].notna().all()
        md = tb.to_markdown(tb.format_table(df))
        assert "—" in md and "nan" not in md.lower() and "0.00 ±" not in md
    paths = tb.write_tables(t, tmp_path)
    assert sorted(p.name for p in paths) == sorted(f"table{i}.{e}" for i in range(1, 5) for e in ("csv", "md"))
    back = pd.read_csv(tmp_path / "table1.csv")
    assert back["ours_mean"].isna().all() and back["paper_mean"].notna().all()
    assert "—" in (tmp_path / "table1.md").read_text()
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temporary files


def test_runs_folder_path_is_accepted(tmp_path):
    assert tb.build_table1(tmp_path / "runs").shape == (18, 11)


# --------------------------------------------------------------------------- fake grid


def _n_correct(seed: int) -> dict[int, int]:
    rng = np.random.default_rng(seed)
    return {c: int(rng.integers(3, 11)) for c in range(7)}


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """Fake records: 'senet154' and 'resnet10t', the three fusions, 5 folds (resnet10t concat: 3),
    the metadata subsets and the depths 1..4 for senet154, plus distractors the tables must ignore."""
    runs = tmp_path_factory.mktemp("runs")
    exp: dict[tuple, list[dict]] = {}
    seed = 0

    def add(key, folds, **cfg):
        nonlocal seed
        for fold in folds:
            seed += 1
            r = fake_fold_run(runs, {"fold": fold, **cfg}, _n_correct(seed))
            exp.setdefault(key, []).append(r)

    for bb in ("senet154", "resnet10t"):
        for fusion in ("none", "concat", "metanet"):
            folds = range(3) if (bb, fusion) == ("resnet10t", "concat") else range(5)
            k = {"none": 0, "concat": 0, "metanet": 2}[fusion]  # Table 1: concat on the raw metadata
            add(("t1", bb, fusion), folds, backbone=bb, fusion=fusion, meta_layers=k)
    for subset in [("age",), ("sex",), ("localization",), ("age", "sex"), ("sex", "localization"),
                   ("age", "localization")]:
        add(("t3", subset), range(5), backbone="senet154", fusion="metanet", meta_features=subset)
    for fusion in ("metanet", "concat"):
        for k in ((1, 3, 4) if fusion == "metanet" else (1, 2, 3, 4)):
            add(("t4", fusion, k), range(5), backbone="senet154", fusion=fusion, meta_layers=k)
    records = ev.load_records(runs)
    return records, exp


def _mean_std(results, key="mcr", code=None):
    vals = [100 * (r["per_class_recall"][code] if code else r[key]) for r in results]
    return statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else float("nan")), len(vals)


def test_table1_ours_equals_independent_mean_and_std(grid):
    records, exp = grid
    t = tb.build_table1(records)
    # the paper's six (senet154 among them) plus resnet10t
    assert t.shape == (7 * 3, 11)
    assert t["backbone"].tolist()[::3] == ["alexnet", "vgg19", "resnet50", "densenet161", "senet154",
                                           "pnasnet5large", "resnet10t"]
    for bb in ("senet154", "resnet10t"):
        for fusion in ("none", "concat", "metanet"):
            row = t[(t.backbone == bb) & (t.fusion == fusion)].iloc[0]
            m, s, n = _mean_std(exp[("t1", bb, fusion)])
            assert row["ours_mean"] == pytest.approx(m) and row["ours_std"] == pytest.approx(s)
            assert row["n"] == n and row["n_expected"] == 5
    sen = t[(t.backbone == "senet154") & (t.fusion == "metanet")].iloc[0]
    assert sen["paper_backbone"] == "SENet154" and sen["paper_mean"] == 87.64 and sen["paper_std"] == 0.52
    assert sen["diff"] == pytest.approx(sen["ours_mean"] - 87.64)
    tiny = t[t.backbone == "resnet10t"]
    assert tiny["paper_mean"].isna().all() and tiny["diff"].isna().all() and tiny["paper_backbone"].isna().all()
    empty = t[t.backbone == "alexnet"]
    assert empty["ours_mean"].isna().all() and (empty["n"] == 0).all() and empty["paper_mean"].notna().all()


def test_incomplete_cell_is_marked(grid, tmp_path):
    records, _ = grid
    t = tb.build_table1(records, backbones=["resnet10t"])
    view = tb.format_table(t)
    assert view.loc[view.fusion == "concat", "n"].item() == "3/5 *"
    assert view.loc[view.fusion == "metanet", "n"].item() == "5"
    tb.write_tables({"table1": t}, tmp_path)
    md = (tmp_path / "table1.md").read_text()
    assert "3/5 *" in md and "fewer folds than expected" in md


def test_table2_per_class_recall(grid):
    records, exp = grid
    t = tb.build_table2(records, "senet154")
    assert t.shape == (21, 14)
    assert t["class"].drop_duplicates().tolist() == ["NV", "MEL", "BKL", "BCC", "AKIEC", "VASC", "DF"]
    assert set(t["class"]) == set(CLASS_CODES)
    for _, row in t.iterrows():
        m, s, n = _mean_std(exp[("t1", "senet154", row["fusion"])], code=row["class"])
        assert row["ours_mean"] == pytest.approx(m) and row["ours_std"] == pytest.approx(s) and row["n"] == n
    p = tb.paper_table2()
    assert t["paper_mean"].tolist() == p["recall_mean"].tolist()
    assert "SENet154" in tb.caption(t) and "different backbone" not in tb.caption(t)


def test_table2_counts_this_runs_validation_images_of_each_class(grid):
    """``n_images``: the validation images of the class summed over the cell's folds, as the runs' labels.csv
    files list them (every fake fold has 10 of each class; resnet10t's concat cell has 3 folds)."""
    records, exp = grid
    for bb in ("senet154", "resnet10t"):
        t = tb.build_table2(records, bb)
        for _, row in t.iterrows():
            labels = pd.concat([pd.read_csv(r["path"] / "labels.csv") for r in exp[("t1", bb, row["fusion"])]])
            assert row["n_images"] == (labels["dx"].str.upper() == row["class"]).sum()
    assert tb.build_table2(records, "resnet10t").query("fusion == 'concat'")["n_images"].eq(30).all()
    assert tb.build_table2(pd.DataFrame(), "senet154")["n_images"].isna().all()
    support = {f"n_val_{c}" for c in CLASS_CODES}
    assert support <= set(records.columns) and not support & ev.SETTINGS  # outcomes, not settings


def test_folds_that_differ_only_in_execution_settings_form_one_cell(grid):
    """``cuda_graphs`` and ``checkpoint_interval_s`` are not part of ``run_id`` (a finished run is reused after
    they change), so a grid whose folds ran with different values is still one cell of five folds: not an
    error in the tables (Table 1 and the ablations alike)."""
    records, _ = grid
    mixed = records.assign(cuda_graphs=np.where(records["fold"] % 2 == 0, "on", "off"),
                           checkpoint_interval_s=np.where(records["fold"] < 2, 600.0, 60.0))
    for build in (tb.build_table1, lambda r: tb.build_table4(r, "senet154")):
        a, b = build(mixed), build(records)
        np.testing.assert_allclose(a["ours_mean"], b["ours_mean"], equal_nan=True)
        assert a["n"].tolist() == b["n"].tolist()
    assert {"cuda_graphs", "checkpoint_interval_s"}.isdisjoint(ev.SETTINGS)


def test_table2_other_backbone_is_labelled(grid):
    records, exp = grid
    t = tb.build_table2(records, "resnet10t")
    assert (t["backbone"] == "resnet10t").all() and (t["paper_backbone"] == "SENet154").all()
    assert "different backbone" in tb.caption(t)
    row = t[(t["class"] == "DF") & (t.fusion == "metanet")].iloc[0]
    m, s, _ = _mean_std(exp[("t1", "resnet10t", "metanet")], code="DF")
    assert row["ours_mean"] == pytest.approx(m) and row["paper_mean"] == 84.55


def test_table3_metadata_subsets(grid):
    records, exp = grid
    t = tb.build_table3(records, "senet154")
    assert t.shape == (8, 15)
    for _, row in t.iterrows():
        used = tuple(f for f in ALL if row[f])
        if not used:
            key = ("t1", "senet154", "none")
            assert row["fusion"] == "none"
        elif used == ALL:
            key = ("t1", "senet154", "metanet")
        else:
            key = ("t3", used)
        m, s, n = _mean_std(exp[key])
        assert row["ours_mean"] == pytest.approx(m) and row["ours_std"] == pytest.approx(s) and row["n"] == n
    p = tb.paper_table3()
    assert t["paper_mean"].tolist() == p["mcr_mean"].tolist()
    view = tb.format_table(t)
    assert view.loc[1, "age"] == "✓" and view.loc[1, "sex"] == ""
    # the caption names the mark the table shows (and the CSV's 1)
    assert "✓ = field used" in tb.caption(t) and "1 = field used" not in tb.caption(t)
    md = tb.render_markdown(t)
    assert "✓ = field used" in md and "| ✓ |  |  | metanet | age |" in md


def test_table1_says_where_the_paper_has_no_backbone(grid, tmp_path):
    records, _ = grid
    paper_only = tb.build_table1(records, backbones=["senet154"])
    assert tb.table1_paper_note(paper_only) == ""
    mixed = tb.build_table1(records, backbones=["senet154", "resnet10t"])
    assert tb.table1_paper_note(mixed) == "The paper did not use resnet10t: its paper and diff cells are empty (—)."
    none = tb.build_table1(records, backbones=["resnet10t"])
    assert tb.table1_paper_note(none).startswith("The paper used none of these backbones (it reports AlexNet, VGG19, ")
    tb.write_tables({"table1": none, "table1_mixed": mixed}, tmp_path)
    md = (tmp_path / "table1.md").read_text()
    assert "The paper used none of these backbones" in md and "**The paper's Table 1**" in md
    assert "| backbone | fusion | ours | n |" in md and "paper_backbone" not in md  # no column of dashes
    mixed_md = (tmp_path / "table1_mixed.md").read_text()
    assert "| backbone | paper_backbone | fusion | ours | n | paper | diff |" in mixed_md
    assert {"paper_mean", "paper_std", "diff"} <= set(pd.read_csv(tmp_path / "table1.csv").columns)  # CSV: all
    wide = md.split("**The paper's Table 1**")[1].splitlines()[2:]  # the paper's Table 1 as printed
    assert wide[0] == "| backbone | none | concat | metanet |"
    assert [line.split(" | ")[0][2:] for line in wide[2:]] == [b.paper_name for b in BACKBONES.values()]
    p = tb.paper_table1().set_index(["backbone", "fusion"])
    for line in wide[2:]:  # every paper cell, in the order none, concat, metanet
        name, *cells = line.strip("| ").split(" | ")
        assert cells == [f"{p.loc[(name, f), 'mcr_mean']:.2f} ± {p.loc[(name, f), 'mcr_std']:.2f}"
                         for f in ("none", "concat", "metanet")]
    assert tb.table1_paper_note(pd.read_csv(tmp_path / "table1.csv")) == tb.table1_paper_note(none)  # from the CSV
    assert "did not use resnet10t" in (tmp_path / "table1_mixed.md").read_text()


def test_table4_depth(grid):
    records, exp = grid
    t = tb.build_table4(records, "senet154")
    assert t.shape == (8, 12)
    assert list(zip(t.fusion, t.fc_layers)) == [(f, k) for f in ("metanet", "concat") for k in (1, 2, 3, 4)]
    for _, row in t.iterrows():
        key = (("t1", "senet154", "metanet") if (row["fusion"], row["fc_layers"]) == ("metanet", 2)
               else ("t4", row["fusion"], row["fc_layers"]))
        m, s, n = _mean_std(exp[key])
        assert row["ours_mean"] == pytest.approx(m) and row["ours_std"] == pytest.approx(s) and row["n"] == n
    assert t["paper_mean"].tolist() == tb.paper_table4()["mcr_mean"].tolist()
    # no runs for this backbone's depth ablation: missing, not 0
    t_tiny = tb.build_table4(records, "resnet10t")
    assert t_tiny.loc[(t_tiny.fc_layers != 2) | (t_tiny.fusion == "concat"), "ours_mean"].isna().all()


def test_mixed_settings_are_refused(grid, tmp_path):
    records, _ = grid
    other = records[(records.backbone == "senet154") & (records.fusion == "metanet")].copy()
    other["epochs"] = 3
    other["run_id"] = other["run_id"] + "-x"
    mixed = pd.concat([records, other], ignore_index=True)
    with pytest.raises(ValueError, match="epochs"):
        tb.build_table1(mixed)
    only = mixed[mixed["epochs"] == 3]
    t = tb.build_table1(only, backbones=["senet154"])
    assert t.loc[t.fusion == "metanet", "n"].item() == 5


def test_to_markdown_without_tabulate(monkeypatch):
    monkeypatch.setitem(sys.modules, "tabulate", None)  # importing it would fail
    df = pd.DataFrame({"name": ["a|b", None], "x": [1.234, float("nan")], "k": [1, 2]})
    md = tb.to_markdown(df)
    lines = md.splitlines()
    assert lines[0] == "| name | x | k |"
    assert lines[1] == "|:--|--:|--:|"
    assert lines[2] == "| a\\|b | 1.23 | 1 |"
    assert lines[3] == "| — | — | 2 |"


def test_format_table_cells():
    df = pd.DataFrame([{"backbone": "x", "fusion": "none", "n": 1, "n_expected": 5, "folds": "0",
                        "ours_mean": 80.0, "ours_std": float("nan"), "paper_mean": 81.5, "paper_std": 1.0,
                        "diff": -1.5}])
    v = tb.format_table(df).iloc[0]
    assert v["ours"] == "80.00 ± —" and v["n"] == "1/5 *" and v["paper"] == "81.50 ± 1.00" and v["diff"] == "-1.50"
    assert math.isnan(df["ours_std"].iloc[0])
