"""The report: a profile's tables from its own records only, the deviations from the paper's protocol, the
paper-vs-code facts, the lesion-leak comparison, Table 1 fold by fold and the HTML pages."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from conftest import ROOT

from metanet_utils.ops import html as html_report

import nbformat
import pandas as pd
import pytest
from _records import fake_fold_run, probs_for, write_fake_run

from metanet_utils import report
from metanet_utils.config import load_profile
from metanet_utils.constants import DX_CODES
from metanet_utils.dataset import Dataset
from metanet_utils.runs import enumerate_runs

#: Images right per class (of 10) in each fold, by fusion: MCR none 50/60, concat 60/70, metanet 70/80 %.
RIGHT = {"none": 5, "concat": 6, "metanet": 7}


def _dataset(n_per_class: int = 6, fingerprint: str = "fakefp01") -> Dataset:
    rows = []
    for k, dx in enumerate(DX_CODES):
        for i in range(n_per_class):
            rows.append({"image_id": f"ISIC_{k}{i:05d}", "lesion_id": f"HAM_{k}{i // 2:04d}", "dx": dx,
                         "dx_type": "histo", "age": 50.0, "sex": "male", "localization": "back", "path": ""})
    return Dataset(df=pd.DataFrame(rows), data_dir=Path("/nonexistent"), kind="real", fingerprint=fingerprint)


def _fill(runs_dir: Path, profile, ds, offset: int = 0, scheme: str | None = None) -> list[str]:
    """Fake records for every run of the profile (Table 1 and ablations)."""
    prof = dataclasses.replace(profile, split_scheme=scheme) if scheme else profile
    ids = []
    for cfg in enumerate_runs(prof, ds):
        right = RIGHT[cfg.fusion] + cfg.fold - offset
        fake_fold_run(runs_dir, cfg.to_dict(), {c: right for c in range(7)})
        ids.append(cfg.run_id)
    return ids


@pytest.fixture()
def smoke(isolated_root):
    prof = load_profile("smoke")
    ds = _dataset()
    runs = isolated_root / "results" / "runs"
    ids = _fill(runs, prof, ds)
    return prof, ds, runs, ids


def test_write_profile_tables_reads_only_the_profiles_runs(smoke, isolated_root):
    prof, ds, runs, ids = smoke
    # another profile's records in the same folder (other epochs, other numbers) must not mix in
    other = dataclasses.replace(prof, epochs=3)
    for cfg in enumerate_runs(other, ds, ("table1",)):
        fake_fold_run(runs, cfg.to_dict(), {c: 1 for c in range(7)})
    out = report.write_profile_tables(prof, dataset=ds)
    assert out == isolated_root / "results" / "tables"
    for i in (1, 2, 3, 4):
        assert (out / f"table{i}.csv").is_file() and (out / f"table{i}.md").is_file()
    t1 = pd.read_csv(out / "table1.csv")
    assert t1.shape[0] == 3 and t1["backbone"].tolist() == ["test_resnet"] * 3
    assert t1["ours_mean"].round(6).tolist() == [55.0, 65.0, 75.0]
    assert t1["n"].tolist() == [2, 2, 2]
    assert pd.read_csv(out / "table2.csv").shape[0] == 21
    t3 = pd.read_csv(out / "table3.csv")
    assert t3.shape[0] == 8 and (t3["n"] == 2).all()
    assert t3["ours_mean"].round(6).tolist() == [55.0] + [75.0] * 7
    t4 = pd.read_csv(out / "table4.csv")
    assert t4.shape[0] == 8 and (t4["n"] == 2).all()
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["profile"] == "smoke" and prov["runs_found"] == prov["runs_expected"] == len(ids)
    assert "75.00 ± 7.07" in (out / "table1.md").read_text()


def test_completeness_counts_the_profiles_runs_and_profile_records_reads_the_complete_ones(smoke):
    prof, ds, runs, ids = smoke
    import shutil

    shutil.rmtree(runs / ids[0])  # a Table 1 run
    t1 = len(enumerate_runs(prof, ds, ("table1",)))
    done = report.completeness(prof, ds)
    assert (done.table1, done.ablations) == ((t1 - 1, t1), (len(ids) - t1, len(ids) - t1))
    assert (done.profile, done.ablation_tables) == ("smoke", "Tables 3 and 4")
    assert sorted(done.run_ids) == sorted(ids[1:])
    recs = report.profile_records(prof, ds)
    assert sorted(recs["run_id"]) == sorted(ids[1:])
    assert str(done) == (f"Profile 'smoke': Table 1: {t1 - 1} of {t1} runs complete (notebook 04 trains them); "
                         f"ablations (Tables 3 and 4): {len(ids) - t1} of {len(ids) - t1} complete.")


def test_completeness_says_the_ablations_come_later(smoke):
    """Before notebook 07 the ablation runs are missing by design: the line says where they come from."""
    import shutil

    prof, ds, runs, ids = smoke
    table1 = {r.run_id for r in enumerate_runs(prof, ds, ("table1",))}
    ablations = [i for i in ids if i not in table1]
    assert len(table1) == 6 and len(ablations) == 26  # Table 4's MetaNet k=2 run is Table 1's: counted there
    for rid in ablations:
        shutil.rmtree(runs / rid)
    assert str(report.completeness(prof, ds)) == ("Profile 'smoke': Table 1: 6 of 6 runs complete; ablations "
                                                  "(Tables 3 and 4): 0 of 26, trained in notebook 07.")
    shutil.rmtree(runs / ids[0])
    shutil.rmtree(runs / ids[1])
    assert "Table 1: 4 of 6 runs complete (notebook 04 trains them)" in str(report.completeness(prof, ds))
    plain = dataclasses.replace(prof, ablations=dataclasses.replace(prof.ablations, table3=False, table4=False))
    assert str(report.completeness(plain, ds)).endswith("; no ablation runs in this profile.")


def test_run_caption_says_what_produced_the_results():
    smoke, paper = load_profile("smoke"), load_profile("paper")
    assert report.run_caption(smoke, _dataset()) == (
        "smoke profile · HAM10000: 42 of its images · test_resnet from scratch · "
        "64 px → 56 px crop · 2 folds × 1 epoch · not the paper's protocol")
    assert report.shows_mechanics_only(smoke, _dataset()) and report.shows_mechanics_only(load_profile("demo"))
    sample = Dataset(df=pd.DataFrame({"image_id": range(1095)}), data_dir=ROOT / "data" / "sample", kind="sample",
                     fingerprint="x")
    assert "· the shipped sample of HAM10000: 1095 images at 128x96 ·" in report.run_caption(smoke, sample)
    assert ("the shipped sample of HAM10000: 1095 images at 128x96 (the paper: all 10015 images of HAM10000)"
            in report.protocol_differences(smoke, sample))
    full = Dataset(df=pd.DataFrame({"image_id": range(10015)}), data_dir=Path("."), kind="real", fingerprint="x")
    assert report.run_caption(paper, full) == (
        "paper profile · the full set: 10015 images · the paper's six backbones ImageNet-pretrained"
        " · 300 px → 224 px crop (pnasnet5large 441 → 331) · 5 folds × 250 epochs · the paper's protocol")
    assert report.protocol_differences(paper, full) == [] and not report.shows_mechanics_only(paper, full)
    # quick: pretrained, full data, the paper's sizes, a shorter schedule: not the protocol, not a mere demo
    quick = load_profile("quick")
    assert report.run_caption(quick, full).endswith("5 folds × 40 epochs · not the paper's protocol")
    assert report.protocol_differences(quick, full) == ["40 epochs (the paper: 250 epochs)"]
    assert not report.shows_mechanics_only(quick, full)
    for change, word in ((dict(pretrained=False), "from scratch"), (dict(epochs=10), "10 epochs"),
                         (dict(image_size=128, crop_size=96), "-> 96"), (dict(folds=(0,)), "1 of 5 folds")):
        p = dataclasses.replace(load_profile("paper"), **change)
        assert any(word in d for d in report.protocol_differences(p, full)), change
        assert report.run_caption(p, full).endswith("· not the paper's protocol"), change
    assert report.shows_mechanics_only(dataclasses.replace(load_profile("paper"), epochs=10), full)


def test_tables_without_any_record_have_a_row_per_fusion_with_n_0_and_no_mean(isolated_root):
    out = report.write_profile_tables(load_profile("smoke"), dataset=_dataset())
    t1 = pd.read_csv(out / "table1.csv")
    assert t1.shape[0] == 3 and t1["ours_mean"].isna().all() and (t1["n"] == 0).all()


def test_cli_tables_writes_the_runs_tables_and_refuses_other_data_without_touching_them(
        isolated_root, real_data_dir, capsys):
    """``tables`` on the data the runs were trained on writes them; on other data (no ``--data-dir``: the
    shipped sample) it finds none of those runs, says so in one line, exits 2 and leaves the tables as they were."""
    from metanet_utils.ops.cli import main
    from metanet_utils.dataset import profile_dataset

    prof = load_profile("smoke")
    _fill(isolated_root / "results" / "runs", prof, profile_dataset(prof, str(real_data_dir)))
    assert main(["tables", "--profile", "smoke", "--data-dir", str(real_data_dir)]) == 0
    table1 = isolated_root / "results" / "tables" / "table1.csv"
    assert "tables written to" in capsys.readouterr().out
    before = table1.read_bytes()
    assert pd.read_csv(table1)["n"].tolist() == [2, 2, 2]
    assert main(["tables", "--profile", "smoke"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: no complete run of profile 'smoke' on this data (sample")
    assert "give the --data-dir the runs were trained on" in err
    assert table1.read_bytes() == before


def _notebook_cell(name: str, marker: str) -> str:
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    return next(c.source for c in nb.cells if c.cell_type == "code" and marker in c.source)


def test_table1_records_and_the_fold_table_of_notebook_05(smoke, isolated_root):
    """Notebook 05's cell puts each Table 1 run's MCR (%) in a row per backbone / fusion and a column per fold."""
    import matplotlib

    matplotlib.use("Agg")
    from metanet_utils import plots, tables

    prof, ds, runs, ids = smoke
    recs = report.profile_records(prof, ds)
    t1 = tables.table1_records(recs)
    assert sorted(t1["fusion"].value_counts().items()) == [("concat", 2), ("metanet", 2), ("none", 2)]
    cell = _notebook_cell("05_table1_significance.ipynb", "fold_heatmap(")
    folds = {}
    for name, records in (("runs", recs), ("none", recs.iloc[:0])):  # nothing trained yet: an empty table
        scope = {"records": records, "prof": prof, "tables": tables, "plots": plots, "caption": None}
        exec(cell, scope)
        folds[name] = scope["folds"]
    assert folds["none"].empty
    f = folds["runs"]
    assert list(f.index) == ["test_resnet / none", "test_resnet / concat", "test_resnet / metanet"]
    assert list(f.columns) == ["fold 0", "fold 1", "mean", "std"] and f.index.name == "backbone / fusion"
    assert f.loc["test_resnet / metanet", "fold 1"] == pytest.approx(80.0)
    assert f.loc["test_resnet / none", "mean"] == pytest.approx(55.0)
    assert f.loc["test_resnet / none", "std"] == pytest.approx(7.0710678)
    assert (isolated_root / "figures" / "05_mcr_per_fold.png").is_file()


def test_deviations_of_smoke_and_of_the_paper_profile(isolated_root):
    dev = report.deviations(load_profile("smoke"), _dataset())
    assert {"setting", "paper", "this run", "deviates", "note"} <= set(dev.columns)
    flagged = set(dev.loc[dev["deviates"], "setting"])
    assert {"data", "backbones", "pretrained", "epochs", "n_folds", "image_size -> crop_size",
            "ablations.backbone (Tables 2-4)", "lr"} <= flagged
    assert "momentum" not in flagged and "weight_decay" not in flagged  # smoke keeps the paper's 0.9 and 1e-4
    row = dev.set_index("setting").loc["lr"]
    assert (row["paper"], row["this run"]) == ("0.001", "0.01")
    assert "test_resnet" in dev.set_index("setting").loc["backbones", "note"]
    # the paper profile on the full data deviates only where the kit cannot know the paper's setting
    full = Dataset(df=pd.DataFrame({"image_id": range(10015)}), data_dir=Path("."), kind="real", fingerprint="x")
    paper = report.deviations(load_profile("paper"), full)
    assert set(paper.loc[paper["deviates"], "setting"]) == {"precision"}
    assert report.deviations(load_profile("smoke"), _dataset()).set_index("setting").loc["data", "this run"] == \
        "HAM10000: 42 of its images"


def test_deviations_state_the_head_the_augmentation_and_the_measured_lesion_leak(isolated_root, real_data_dir):
    """The choices the paper leaves open are rows (not deviations), and the split's note gives the share of
    validation images with a same-lesion image in training as measured on the data set, counted here again."""
    from metanet_utils.dataset import open_dataset

    ds = open_dataset(real_data_dir)
    dev = report.deviations(load_profile("paper"), ds).set_index("setting")
    assert not dev.loc[["classifier head", "augmentation"], "deviates"].any()
    assert "global average pooling + one linear layer" in dev.loc["classifier head", "this run"]
    assert "rotation ± 30°" in dev.loc["augmentation", "this run"]
    assert not dev.loc[["lr", "milestones", "batch_size", "meta_layers", "n_folds", "epochs"], "deviates"].any()
    folds = ds.folds(5, "image", 0)
    shares = []
    for f in range(5):
        train_lesions = set(ds.df["lesion_id"][folds != f])
        shares.append(100 * ds.df["lesion_id"][folds == f].isin(train_lesions).mean())
    assert f"lets {min(shares):.0f}-{max(shares):.0f} % (this data set)" in dev.loc["split_scheme", "note"]
    no_data = report.deviations(load_profile("paper")).set_index("setting")
    assert "(full HAM10000, seed 0)" in no_data.loc["split_scheme", "note"]


def test_deviations_precision_and_device_from_the_run_records(isolated_root):
    prof, ds = load_profile("smoke"), _dataset()
    runs = isolated_root / "results" / "runs"
    y = list(range(7))
    used = {"bfloat16": "NVIDIA H100 80GB HBM3", "float32": "cpu (x86_64, 16 threads)"}
    cfgs = enumerate_runs(prof, ds)
    for cfg, precision in zip(cfgs, ["bfloat16"] * 3 + ["float32"]):
        write_fake_run(runs, cfg.to_dict(), probs_for(y, y), y,
                       metrics={"precision": precision, "device": used[precision]})
    # another profile's run in the same folder does not count
    other = enumerate_runs(dataclasses.replace(prof, epochs=3), ds, ("table1",))[0]
    write_fake_run(runs, other.to_dict(), probs_for(y, y), y, metrics={"precision": "float16", "device": "T4"})

    row = report.deviations(prof, ds).set_index("setting").loc["precision"]
    assert row["this run"] == "bfloat16 on NVIDIA H100 80GB HBM3 (3 runs), float32 on cpu (1 run)"
    assert row["deviates"] and row["paper"].startswith("float32") and "run records" in row["note"]
    recs = report.profile_records(prof, ds)
    same = report.deviations(prof, ds, records=recs).set_index("setting").loc["precision"]
    assert same["this run"] == row["this run"]
    fp32 = report.deviations(prof, ds, records=recs[recs["run_id"] == cfgs[3].run_id]).set_index("setting")
    assert fp32.loc["precision", "this run"] == "float32 on cpu (1 run)" and not fp32.loc["precision", "deviates"]
    # no records (or no data to name the runs): the profile's setting
    for dev in (report.deviations(prof), report.deviations(prof, ds, records=recs.iloc[:0])):
        row = dev.set_index("setting").loc["precision"]
        assert row["this run"] == "bf16 autocast on a GPU, float32 on a CPU" and row["deviates"]
        assert "no run records" in row["note"]


def test_paper_vs_code_facts_of_notebook_09():
    """The facts table is a cell of notebook 09 (its only reader): run on its own, it holds every checked fact."""
    cell = _notebook_cell("09_report.ipynb", "facts = pd.DataFrame(")
    scope: dict = {}
    exec("import pandas as pd\nfrom metanet_utils.constants import DATA_CLASS_COUNTS, PAPER_CLASS_COUNTS, "
         "PAPER_PROTOCOL\n" + cell, scope)
    facts = scope["facts"]
    text = facts.to_string()
    for needle in ("1099", "142", "1x1", "254", "fold 1 only", "Nesterov", "0.668", "38-40", "0.0625",
                   "pool(F * g) = g * pool(F)", "momentum 0.9, weight decay 0.0001, batch 32, lr / 10 at 50, 120, 200"):
        assert needle in text, needle
    # the authors' trainer: its new layers at 10x the base learning rate through a second SGD parameter group
    row = facts.set_index("topic").loc["learning rate of the new layers"]
    assert "10x the base learning rate" in row["data or authors' code"]
    assert "second SGD parameter group" in row["data or authors' code"] and "Nesterov" in row["data or authors' code"]
    assert "one learning rate" in row["this kit"]
    assert list(facts.columns) == ["topic", "paper", "data or authors' code", "this kit"]


def test_lesion_leak_cell_of_notebook_09_is_empty_without_lesion_split_runs_then_gives_the_mcr_drop(smoke, capsys):
    """Notebook 09's cell puts Table 1 with image-level folds beside Table 1 with lesion-grouped folds."""
    from metanet_utils import tables
    from metanet_utils.splits import lesion_leak

    prof, ds, runs, ids = smoke
    cell = _notebook_cell("09_report.ipynb", "lesion_leak(")
    scope = {"dataclasses": dataclasses, "pd": pd, "report": report, "tables": tables, "lesion_leak": lesion_leak,
             "prof": prof, "ds": ds}
    exec(cell, scope)
    out = capsys.readouterr().out
    assert scope["leak"].empty and "Not run" in out and "split_scheme" in out
    assert "image-level folds: 6 of 6 Table 1 runs complete" in out and "lesion-level folds: 0 of 6" in out
    assert "lesion-level folds: 0 of 6 Table 1 runs complete; 0.0 % of validation images" in out
    _fill(runs, prof, ds, offset=2, scheme="lesion")  # lesion-grouped folds: 2 of 10 fewer right per class
    exec(cell, scope)
    assert "Not run" not in capsys.readouterr().out
    leak = scope["leak"]
    assert leak["fusion"].tolist() == ["none", "concat", "metanet"]
    assert leak["image_mean"].round(6).tolist() == [55.0, 65.0, 75.0]
    assert leak["lesion_mean"].round(6).tolist() == [35.0, 45.0, 55.0]
    assert leak["leak"].round(6).tolist() == [20.0, 20.0, 20.0]
    assert (leak["image_n"] == 2).all() and (leak["lesion_n"] == 2).all()


def _executed(path: Path, title: str, text: str, code: str = "secret_input_marker = 1") -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {title}\n\nThe variance factor $1/k + n_{{test}}/n_{{train}}$ and\n"
                                              "$$ e_c = \\Big( \\frac{1}{N} \\sum_x I_c(x)^p \\Big)^{1/p} $$\n\n"
                                              "A price: `$5` in code."),
                nbformat.v4.new_code_cell(code)]
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text=text)]
    nb.cells[1].execution_count = 1
    nbformat.write(nb, path)


def test_html_report_links_the_notebook_pages_in_order_with_tables_and_the_protocol_box(smoke, isolated_root):
    prof, ds, runs, ids = smoke
    report.write_profile_tables(prof, dataset=ds)
    executed = isolated_root / "outputs" / "notebooks"
    executed.mkdir(parents=True)
    _executed(executed / "09_report.ipynb", "09 · Report", "report text")
    _executed(executed / "05_table1.ipynb", "05 · Table 1", "hello from 05")
    out = html_report.write_html_report(executed, isolated_root / "outputs" / "report.html")
    assert out == isolated_root / "outputs" / "report.html"
    index = out.read_text()
    pages = sorted((isolated_root / "outputs" / "report").glob("*.html"))
    assert [p.name for p in pages] == ["05_table1.html", "09_report.html"]
    assert index.index("report/05_table1.html") < index.index("report/09_report.html")  # sorted
    assert "05 · Table 1" in index and "75.00 ± 7.07" in index and "55.00 ± 7.07" in index
    assert "SYNTHETIC" not in index
    # smoke is not the paper's protocol: a box says so, with the caption of the run
    assert "NOT THE PAPER'S PROTOCOL: these numbers show how the kit works" in index
    assert report.run_caption(prof, ds) in index  # (the page is written with its apostrophes plain)
    assert "from scratch (the paper: ImageNet-pretrained)" in index
    # test_resnet is no backbone of the paper: a sentence and the paper's own Table 1, not a column of dashes
    assert "The paper used none of these backbones" in index and "85.44 ± 1.09" in index
    assert "paper_backbone" not in index
    assert "Table 1: 6 of 6 runs complete; ablations (Tables 3 and 4): 26 of 26 complete." in index
    page = pages[0].read_text()
    assert "hello from 05" in page and "secret_input_marker" not in page  # outputs kept, code hidden


def test_html_pages_read_right_offline_no_script_from_the_network_and_the_math_as_mathml(isolated_root):
    """Opened without network (a classroom, a cluster), a page needs nothing from a CDN: no script or style is
    loaded from http(s), and the math is MathML the browser draws itself, not raw $...$ for MathJax."""
    import re

    executed = isolated_root / "outputs" / "notebooks"
    executed.mkdir(parents=True)
    _executed(executed / "05_table1.ipynb", "05 · Table 1", "hello")
    out = html_report.write_html_report(executed, isolated_root / "outputs" / "report.html")
    for page in (out, isolated_root / "outputs" / "report" / "05_table1.html"):
        text = page.read_text()
        assert not re.search(r"<script[^>]+src=", text), page  # no script file at all, local or remote
        assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", text), page
        assert not re.search(r"@import|url\(\s*['\"]?(?:https?:)?//", text), page
    page = (isolated_root / "outputs" / "report" / "05_table1.html").read_text()
    assert "$1/k" not in page and "n_{test}" not in page and "\\frac" not in page  # no TeX left for a script
    assert page.count("<math") == 2 and re.search(r'<math [^>]*display="block"', page)
    inline = page[page.index("<math"):page.index("</math>")]
    assert "<mfrac>" not in inline and "<msub><mi>n</mi><mrow><mi>t</mi><mi>e</mi><mi>s</mi><mi>t</mi>" in inline
    assert "<mfrac><mrow><mn>1</mn></mrow><mrow><mi>N</mi></mrow></mfrac>" in page  # the display formula's 1/N
    assert "<code>$5</code>" in page  # a dollar in code stays text


def test_protocol_box_warns_for_a_demo_cautions_for_a_shorter_schedule_and_is_empty_for_the_paper():
    assert html_report._protocol_box({}) == "" and html_report._protocol_box({"protocol_differences": []}) == ""
    demo = html_report._protocol_box({"caption": "demo profile · x", "protocol_differences": ["3 epochs (the paper: 250)"],
                                 "mechanics_only": True})
    assert "#c00" in demo and "how the kit works, not the paper's results" in demo
    assert "demo profile · x" in demo and "3 epochs (the paper: 250)" in demo
    quick = html_report._protocol_box({"caption": "quick", "protocol_differences": ["40 epochs (the paper: 250)"],
                                  "mechanics_only": False})
    assert "#c80" in quick and "#c00" not in quick and "how the kit works" not in quick and "40 epochs" in quick


# ----------------------------------------------------------------------------- the result figures (plots.py)


def test_result_figures_from_records_and_from_nothing(smoke, isolated_root):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from metanet_utils import plots

    prof, ds, runs, ids = smoke
    recs = report.profile_records(prof, ds)
    tabs = report.profile_tables(prof, ds, recs)
    empty = report.profile_tables(prof, ds, recs.iloc[:0])
    figs = {
        "t_mcr": plots.mcr_bars(tabs["table1"], save="t_mcr"),
        "t_curves": plots.learning_curves(recs, save="t_curves"),
        # nothing trained yet: every figure still draws, saying so
        "e_mcr": plots.mcr_bars(empty["table1"], save="e_mcr"),
        "e_curves": plots.learning_curves(recs.iloc[:0], save="e_curves"),
    }
    for name, fig in figs.items():
        assert isinstance(fig, Figure)
        png = isolated_root / "figures" / f"{name}.png"
        assert png.is_file() and png.stat().st_size > 3000, name
    ours, paper = figs["t_mcr"].axes[:2]
    assert len(ours.patches) == 3 and len(paper.patches) == 18  # 1 backbone x 3 fusions; the paper's 6 x 3
    assert [round(p.get_height(), 6) for p in ours.patches] == [55.0, 65.0, 75.0]
