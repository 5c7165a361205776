"""The shared figures and the footer every figure ends with: each function draws the expected axes and bars on a
small frame and saves a PNG, and the bars of the data figures are the numbers counted again here (pandas) on the
real HAM10000 metadata. The figures one notebook draws are cells of that notebook, run by test_notebooks_*."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from _frames import tinted_frame  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from metanet_utils import plots  # noqa: E402
from conftest import ROOT  # noqa: E402
from metanet_utils.constants import PAPER_CLASS_COUNTS  # noqa: E402
from metanet_utils.data import announce, locate_data  # noqa: E402


@pytest.fixture()
def figdir(tmp_path, monkeypatch):
    d = tmp_path / "figures"
    monkeypatch.setenv("METANET_FIGURES_DIR", str(d))
    return d


@pytest.fixture(scope="module")
def frame(tmp_path_factory) -> pd.DataFrame:
    """4 images of each class (2 lesions of 2 images), tinted JPEGs, some missing metadata."""
    return tinted_frame(tmp_path_factory.mktemp("imgs"))


def n_bars(ax) -> int:
    return sum(len(c) for c in ax.containers if hasattr(c, "patches"))


def bar_heights(ax, group: int = 0) -> np.ndarray:
    """Heights of the ``group``-th bar group (``ax.bar`` call) of ``ax``."""
    groups = [c for c in ax.containers if hasattr(c, "patches")]
    return np.array([p.get_height() for p in groups[group].patches], dtype=float)


#: The paper's order of the classes (Sec. 3.1, largest first), written out rather than taken from the kit.
ORDER = ["nv", "mel", "bkl", "bcc", "akiec", "vasc", "df"]


@pytest.fixture(scope="module")
def real_meta(real_data_dir) -> pd.DataFrame:
    """The real HAM10000 metadata (10015 images, 7470 lesions; 57 missing ages, 57 unknown sexes)."""
    return pd.read_csv(real_data_dir / "HAM10000_metadata.csv")


def test_class_counts_draws_ours_and_the_papers_bars_on_a_log_axis_and_saves_a_png(frame, figdir):
    fig = plots.class_counts(frame, log=True, save="00_class_counts")
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    assert n_bars(fig.axes[0]) == 14
    assert fig.axes[0].get_yscale() == "log"
    assert (figdir / "00_class_counts.png").is_file()


def test_class_counts_bars_are_the_real_images_per_class_beside_the_papers_starred_counts(real_meta):
    """On the full real data (same total as the paper: counts) our bars are the value_counts of ``dx`` and the
    paper's bars its printed counts, both in the paper's order; the two misprinted paper bars are starred."""
    ax = plots.class_counts(real_meta).axes[0]
    vc = real_meta["dx"].value_counts()
    assert ax.get_ylabel() == "images"
    np.testing.assert_array_equal(bar_heights(ax, 0), [vc[c] for c in ORDER])
    np.testing.assert_array_equal(bar_heights(ax, 0), [6705, 1113, 1099, 514, 327, 142, 115])  # the official data
    np.testing.assert_array_equal(bar_heights(ax, 1), [PAPER_CLASS_COUNTS[c] for c in ORDER])
    assert [t.get_text() for t in ax.get_xticklabels()] == [c.upper() for c in ORDER]
    labels = [t.get_text() for t in ax.texts]
    assert labels[:14] == ["6705", "1113", "1099", "514", "327", "142", "115",
                           "6705", "1113", "1098*", "514", "327", "143*", "115"]


def test_class_counts_of_a_real_subsample_are_shares_of_its_images_and_of_the_papers(real_meta):
    """A subsample's total differs from the paper's: both bar groups become % of their own total."""
    sub = real_meta.sample(n=2003, random_state=0)
    ax = plots.class_counts(sub).axes[0]
    assert ax.get_ylabel() == "% of images"
    vc = sub["dx"].value_counts()
    np.testing.assert_allclose(bar_heights(ax, 0), [100 * vc.get(c, 0) / 2003 for c in ORDER], rtol=1e-12)
    paper = np.array([PAPER_CLASS_COUNTS[c] for c in ORDER], dtype=float)
    assert paper.sum() == 10015
    np.testing.assert_allclose(bar_heights(ax, 1), 100 * paper / 10015, rtol=1e-12)
    assert bar_heights(ax, 0).sum() == pytest.approx(100) and bar_heights(ax, 1).sum() == pytest.approx(100)
    assert [t.get_text() for t in ax.texts][7:14] == ["66.9%", "11.1%", "11.0%*", "5.1%", "3.3%", "1.4%*", "1.1%"]


def test_class_counts_auto_scale_is_counts_for_the_papers_total_else_shares_and_paper_none_drops_its_bars(frame):
    ax = plots.class_counts(PAPER_CLASS_COUNTS).axes[0]
    assert ax.get_ylabel() == "images"  # same total as the paper: counts
    assert plots.class_counts(frame).axes[0].get_ylabel() == "% of images"  # a subsample: shares
    assert n_bars(plots.class_counts(frame, paper=None).axes[0]) == 7
    with pytest.raises(ValueError, match="scale"):
        plots.class_counts(frame, scale="bogus")


def test_finish_stamps_the_caption_once_and_saves(frame, figdir):
    fig = plots.finish(plots.class_counts(frame), save="00_finished", caption="smoke profile · the sample")
    plots.finish(fig, caption="smoke profile · the sample")
    assert [t.get_gid() for t in fig.texts].count("figure-caption") == 1
    assert (figdir / "00_finished.png").stat().st_size > 1000


def test_announce_names_the_sample_and_the_full_set(capsys):
    import types

    from metanet_utils.data import SAMPLE_MARKER

    sample = ROOT / "data" / "sample"
    df = pd.read_csv(sample / "HAM10000_metadata.csv")
    announce(types.SimpleNamespace(kind="sample", df=df, data_dir=sample))
    out = capsys.readouterr().out
    assert out.startswith("Data: the shipped sample of HAM10000: 1095 images at 128x96") and "CC BY-NC 4.0" in out
    assert (sample / SAMPLE_MARKER).is_file()
    announce(types.SimpleNamespace(kind="real", df=pd.DataFrame(index=range(10015)), data_dir="/x"))
    assert capsys.readouterr().out.startswith("Data: the full set: 10015 images")


def test_locate_data_falls_back_to_the_sample_or_downloads(isolated_root, monkeypatch):
    import shutil

    import metanet_utils.download as download
    from metanet_utils.config import load_profile
    from metanet_utils.data import DataError

    monkeypatch.delenv("METANET_DATA_DIR", raising=False)
    loc = locate_data(load_profile("smoke"), "")  # nothing in this project root: the kit's own data/sample/
    assert loc.kind == "sample" and loc.path == (ROOT / "data" / "sample").resolve()
    calls = []

    def fake_download(dest, *args, **kwargs):  # quick never uses the sample: it downloads
        calls.append(dest)
        shutil.copytree(ROOT / "data" / "sample", dest, ignore=shutil.ignore_patterns("sample.json"))
        return dest

    monkeypatch.setattr(download, "download_official", fake_download)
    monkeypatch.setattr(download, "download_complete", lambda dest, *a, **k: True)
    loc = locate_data(load_profile("quick"), "")
    assert calls == [isolated_root / "data" / "ham10000"] and loc.path == calls[0].resolve() and loc.kind == "real"
    with pytest.raises(DataError, match="needs the full HAM10000"):
        locate_data(load_profile("quick"), str(ROOT / "data" / "sample"))


# ----------------------------------------------------------------------------- captions, result figures, CAM grid


_LONG = ("Demo run: 804 of the shipped sample's 1095 HAM10000 images at 128x96, tiny CNNs trained from scratch at "
         "64 px for 3 epochs, 5 folds; numbers are far from the paper's and only show that the pipeline runs. ") * 2


def _drawn(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def _footer(fig):
    (text,) = [t for t in fig.texts if t.get_gid() == "figure-caption"]
    return text


def _assert_clear_footer(fig, caption):
    """The footer holds the caption, lies inside the figure and touches no axes (with its tick labels,
    titles, colour bars) and no supxlabel."""
    r = _drawn(fig)
    text = _footer(fig)
    assert " ".join(text.get_text().split()) == " ".join(caption.split())
    ext = text.get_window_extent(r)
    assert ext.x0 >= 0 and ext.y0 >= 0 and ext.x1 <= fig.bbox.x1 and ext.y1 <= fig.bbox.y1
    for ax in fig.axes:
        assert not ax.get_tightbbox(r).overlaps(ext), ax
    if fig._supxlabel is not None:
        label = fig._supxlabel.get_window_extent(r)
        assert not label.overlaps(ext) and label.y0 > ext.y1
        assert not any(ax.get_tightbbox(r).overlaps(label) for ax in fig.axes)
    return ext


def test_every_plotting_function_takes_a_caption():
    import inspect

    with_save = [n for n in plots.__all__ if callable(getattr(plots, n))
                 and "save" in inspect.signature(getattr(plots, n)).parameters]
    assert "class_counts" in with_save
    for name in with_save:
        p = inspect.signature(getattr(plots, name)).parameters.get("caption")
        assert p is not None and p.default is None and p.kind == p.KEYWORD_ONLY, name


def _heatmaps(**finish) -> Figure:
    """Two heat maps with long tick labels rotated at the bottom, in a constrained layout (as notebook 01 draws)."""
    fig = Figure(figsize=(9, 3), layout="constrained")
    for ax in fig.subplots(1, 2):
        ax.imshow(np.arange(21).reshape(3, 7))
        ax.set_xticks(range(7), [f"lower extremity {i}" for i in range(7)], rotation=60)
    return plots.finish(fig, **finish)


def test_caption_is_a_wrapped_grey_footer_clear_of_the_axes(figdir):
    fig = _heatmaps(caption=_LONG, save="01_caption")  # rotated tick labels at the bottom
    ext = _assert_clear_footer(fig, _LONG)
    text = _footer(fig)
    assert text.get_text().count("\n") >= 1 and ext.width <= fig.bbox.width  # wrapped to the figure's width
    assert text.get_fontsize() <= 9 and matplotlib.colors.to_rgb(text.get_color())[0] == pytest.approx(0.4)
    no_caption = _heatmaps()
    assert fig.get_figheight() > no_caption.get_figheight()  # room added, the panels keep their size
    assert not [t for t in no_caption.texts if t.get_gid() == "figure-caption"]
    # saved with the figure: the PNG is taller by the footer, whose grey text is in its bottom rows
    from PIL import Image

    _heatmaps(save="01_plain")
    with_png = np.asarray(Image.open(figdir / "01_caption.png").convert("L"))
    plain_png = np.asarray(Image.open(figdir / "01_plain.png").convert("L"))
    assert with_png.shape[0] > plain_png.shape[0] + 20
    bottom = with_png[-int(0.6 * (with_png.shape[0] - plain_png.shape[0])):]
    assert (bottom < 160).sum() > 50


def test_caption_moves_a_supxlabel_above_it_and_works_with_colour_bars():
    fig = Figure(figsize=(8, 4), layout="constrained")  # panels sharing one x label, as notebook 01's ages
    for ax in fig.subplots(2, 4, sharex=True, sharey=True).ravel():
        ax.hist(np.arange(0, 90, 5), bins=np.arange(0, 95, 5), density=True)
    fig.supxlabel("age (years)")
    plots.add_caption(fig, "Ages of the test frame.")
    _assert_clear_footer(fig, "Ages of the test frame.")
    assert fig._supxlabel.get_text() == "age (years)"
    cm = {f: np.diag([5, 3, 2, 2, 1, 1, 1]) + 1 for f in ("none", "metanet")}
    fig = plots.confusion_matrices(cm, caption=_LONG)
    _assert_clear_footer(fig, _LONG)
    assert len(fig.axes) == 3  # two matrices and the colour bar: the caption adds no axes


@pytest.mark.parametrize("layout", ["tight", None])
def test_add_caption_with_tight_layout_or_none(layout):
    fig = Figure(figsize=(6, 3), layout=layout)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1])
    ax.set_xlabel("x label")
    if layout is None:  # room for the x label in the figure itself; the footer goes below it
        fig.subplots_adjust(bottom=0.2)
    plots.add_caption(fig, "a footer " * 30)
    plots.add_caption(fig, "a second call changes nothing")
    _assert_clear_footer(fig, "a footer " * 30)


def _history_records(tmp_path, spike: float = 59.0) -> pd.DataFrame:
    rows = []
    for fusion, k in (("none", 0), ("concat", 0), ("metanet", 2)):
        for fold in range(2):
            d = tmp_path / f"{fusion}-f{fold}"
            d.mkdir()
            val_loss = [2.1, spike if fold else 2.3, 2.0]
            pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [2.0, 1.9, 1.8], "val_loss": val_loss,
                          "val_mcr": [0.15, 0.2, 0.25]}).to_csv(d / "history.csv", index=False)
            rows.append({"backbone": "test_resnet", "fusion": fusion, "meta_features": "age+sex+localization",
                         "meta_layers": k, "fold": fold, "n_folds": 2, "path": str(d)})
    return pd.DataFrame(rows)


def test_learning_curves_log_loss_axis_and_labelled_chance(tmp_path):
    fig = plots.learning_curves(_history_records(tmp_path), caption="curves")
    loss_axes, mcr_axes = fig.axes[:3], fig.axes[3:6]
    assert all(ax.get_yscale() == "log" for ax in loss_axes)  # a spike of 59 does not squash 1.8-2.0
    lo, hi = loss_axes[0].get_ylim()
    assert np.log(2.0 / 1.8) / np.log(hi / lo) > 0.02  # the training curve spans a visible part of the axis
    assert "log" in loss_axes[0].get_ylabel()
    chance = [t.get_text() for t in mcr_axes[0].get_legend().get_texts()]
    assert chance == [f"chance ({100 / 7:.1f} %)"] == ["chance (14.3 %)"]
    assert [ln.get_ydata()[0] for ln in mcr_axes[0].lines if ln.get_label().startswith("chance")] == \
        [pytest.approx(100 / 7)]


def _table1() -> pd.DataFrame:
    return pd.DataFrame({"backbone": ["test_resnet"] * 3, "fusion": ["none", "concat", "metanet"],
                         "ours_mean": [15.0, 20.0, 25.0], "ours_std": [3.0, 4.0, 5.0]})


def test_mcr_bars_chance_is_in_the_legend_not_on_a_bar():
    ax = plots.mcr_bars(_table1()).axes[0]
    assert not [t for t in ax.texts if "chance" in t.get_text()]
    assert "chance (14.3 %)" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(ax.patches) == 3


def _ablation_records() -> pd.DataFrame:
    rows = []
    for fusion, meta, values in (("none", "none", [20, 25, 30]), ("metanet", "age", [22, 26, 34]),
                                 ("metanet", "age+sex+localization", [21, 29, 29])):
        for fold, v in enumerate(values):
            rows.append({"backbone": "test_resnet", "fusion": fusion, "meta_features": meta,
                         "meta_layers": 0 if fusion == "none" else 2, "fold": fold, "n_folds": 3, "mcr": v / 100})
    return pd.DataFrame(rows)


def _err_halves(ax, container_index: int) -> np.ndarray:
    """Half lengths of the error bars of the ``container_index``-th bar group of ``ax``."""
    bars = [c for c in ax.containers if hasattr(c, "errorbar")][container_index]
    segs = bars.errorbar.lines[2][0].get_segments()
    return np.array([abs(s[1][1] - s[0][1]) / 2 for s in segs])


def test_table3_plot_bars_from_zero_and_changes_with_error_bars():
    from metanet_utils.tables import build_table3

    recs = _ablation_records()
    t3 = build_table3(recs, "test_resnet")
    fig = plots.table3_plot(t3)
    ax_a, ax_d = fig.axes
    assert ax_a.get_ylim()[0] == 0  # bars start at 0
    sd = t3["ours_std"].to_numpy()
    ours = _err_halves(ax_d, 0)  # unpaired: sqrt(sd_row^2 + sd_none^2); none for the reference and empty rows
    expected = np.r_[0, np.nan_to_num(np.sqrt(sd[1:] ** 2 + sd[0] ** 2))]
    assert np.count_nonzero(expected) == 2
    np.testing.assert_allclose(ours, expected, rtol=1e-6)
    assert "not paired" in ax_d.get_ylabel()
    psd = t3["paper_std"].to_numpy()
    np.testing.assert_allclose(_err_halves(ax_d, 1), np.r_[0, np.sqrt(psd[1:] ** 2 + psd[0] ** 2)], rtol=1e-6)
    # with the records: the sd of the per-fold differences, paired by fold (much smaller here)
    paired = plots.table3_plot(t3, records=recs, meta_layers=2).axes[1]
    np.testing.assert_allclose(_err_halves(paired, 0)[[0, 1, 7]],
                               [0, np.std([2, 1, 4], ddof=1), np.std([1, 4, -1], ddof=1)], rtol=1e-6)
    assert "paired by fold" in paired.get_ylabel()
    heights = [p.get_height() for p in [c for c in paired.containers if hasattr(c, "patches")][0].patches]
    assert heights[1] == pytest.approx(np.mean([2, 1, 4])) and heights[7] == pytest.approx(np.mean([1, 4, -1]))
    # records that are not the table's runs (another fold's values): back to the unpaired bars
    other = recs.assign(mcr=recs["mcr"] + 0.01 * (recs["fold"] == 0))
    assert "not paired" in plots.table3_plot(t3, records=other).axes[1].get_ylabel()


def test_recall_heatmap_rows_carry_the_images_per_class_and_columns_the_folds():
    from metanet_utils.tables import build_table2

    t2 = build_table2(pd.DataFrame(), "test_resnet")
    left, right = plots.recall_heatmap(t2).axes[:2]
    assert [t.get_text() for t in right.get_yticklabels()][:2] == ["NV (6705)", "MEL (1113)"]  # the paper's
    assert [t.get_text() for t in left.get_yticklabels()][:2] == ["NV", "MEL"]  # ours: not in the frame
    counts = {"NV": 536, "MEL": 91, "BKL": 88, "BCC": 42, "AKIEC": 26, "VASC": 12, "DF": 11}
    t2 = t2.assign(n_images=t2["class"].map(counts), n=5)
    left = plots.recall_heatmap(t2).axes[0]
    assert [t.get_text() for t in left.get_yticklabels()][-1] == "DF (11)"
    assert left.get_ylabel() == "class (validation images)"
    assert [t.get_text() for t in left.get_xticklabels()][0] == "no metadata\n(5 folds)"


def test_confusion_matrices_title_says_pooled_over_folds():
    cm = {"none": np.eye(7) + 1}
    assert plots.confusion_matrices(cm, title="Run A")._suptitle.get_text() == "Run A (pooled over folds)"
    for title in ("Run A, summed over folds", "Run A, Pooled"):
        assert plots.confusion_matrices(cm, title=title)._suptitle.get_text() == title
    assert "summed over folds" in plots.confusion_matrices(cm)._suptitle.get_text()


def test_fusion_labels_name_the_variants_plainly():
    assert plots.FUSION_LABELS["metanet"] == "MetaNet"
    assert not any("ours" in v for v in plots.FUSION_LABELS.values())


def _cam_entry(hw: int, case: str = "", backbone: str | None = "test_resnet") -> dict:
    def fusion(pred, ok):
        e = {"cam": np.arange(hw * hw, dtype=float).reshape(hw, hw), "pred": pred, "p_pred": 0.6, "target": pred,
             "correct": ok}
        return e | ({"backbone": backbone} if backbone else {})

    return {"image": "ISIC_1", "true": "DF", "case": case, "picture": np.zeros((48, 48, 3), np.uint8),
            "none": fusion("NV", False), "metanet": fusion("DF", True)}


def test_cam_grid_says_the_map_size_backbone_and_scale():
    from metanet_utils import cam

    fig = plots.cam_grid([_cam_entry(2, cam.CASE_BOTH_RIGHT), _cam_entry(2, cam.CASE_META_HELPS)],
                         title="Figure 2", caption="CAMs of the demo run")
    title = fig._suptitle.get_text()
    assert title.startswith("Figure 2\n")  # the caller's title, then the facts
    assert "CAM from 2x2 feature maps of test_resnet" in title and "red = evidence for the mapped class" in title
    assert "coarse: feature maps of 2x2, upsampled" in fig._supxlabel.get_text()
    assert fig._supxlabel.get_color() != "black"
    assert len(fig.axes) == 6  # the colour bar is a child of a panel: the grid's axes are unchanged
    (cax,) = [c for ax in fig.axes for c in ax.child_axes]
    assert cax.get_ylabel() == "fraction of the panel's maximum" and cax.get_ylim() == (0.0, 1.0)
    assert fig.axes[0].get_title().startswith("image-only and MetaNet right\n")
    assert fig.axes[3].get_title().startswith("image-only wrong, MetaNet right\n")
    _assert_clear_footer(fig, "CAMs of the demo run")
    fine = plots.cam_grid([_cam_entry(7, backbone=None)])
    assert fine._supxlabel is None  # 7 x 7 (a 224 crop): no warning
    assert "CAM from 7x7 feature maps; red = evidence for the mapped class" in fine._suptitle.get_text()
