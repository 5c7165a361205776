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
from metanet_utils.data import announce  # noqa: E402
from metanet_utils.ops.download import locate_data  # noqa: E402


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


def test_class_counts_are_counts_for_the_papers_total_else_shares_and_paper_none_drops_its_bars(frame):
    ax = plots.class_counts(PAPER_CLASS_COUNTS).axes[0]
    assert ax.get_ylabel() == "images"  # same total as the paper: counts
    assert plots.class_counts(frame).axes[0].get_ylabel() == "% of images"  # a subsample: shares
    ax = plots.class_counts(frame, paper=None).axes[0]
    assert n_bars(ax) == 7 and ax.get_ylabel() == "images"


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

    import metanet_utils.ops.download as download
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

    public = [n for n, f in inspect.getmembers(plots, inspect.isfunction)
              if f.__module__ == plots.__name__ and not n.startswith("_")]
    with_save = [n for n in public if "save" in inspect.signature(getattr(plots, n)).parameters]
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
    plots.finish(fig, caption="Ages of the test frame.")
    _assert_clear_footer(fig, "Ages of the test frame.")
    assert fig._supxlabel.get_text() == "age (years)"
    fig = Figure(figsize=(9.6, 4.4), layout="constrained")  # two heat maps and a colour bar, as notebook 06's
    axes = fig.subplots(1, 2, sharey=True)
    for ax in axes:
        im = ax.imshow(np.diag([5, 3, 2, 2, 1, 1, 1]) + 1, cmap="Blues")
        ax.set_xlabel("predicted")
    fig.colorbar(im, ax=list(axes), label="% of the true class", shrink=0.9)
    plots.finish(fig, caption=_LONG)
    _assert_clear_footer(fig, _LONG)
    assert len(fig.axes) == 3  # two matrices and the colour bar: the caption adds no axes


@pytest.mark.parametrize("layout", ["tight", None])
def test_caption_with_tight_layout_or_none(layout):
    fig = Figure(figsize=(6, 3), layout=layout)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1])
    ax.set_xlabel("x label")
    if layout is None:  # room for the x label in the figure itself; the footer goes below it
        fig.subplots_adjust(bottom=0.2)
    plots.finish(fig, caption="a footer " * 30)
    plots.finish(fig, caption="a second call changes nothing")
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


def test_fusion_labels_name_the_variants_plainly():
    assert plots.FUSION_LABELS["metanet"] == "MetaNet"
    assert not any("ours" in v for v in plots.FUSION_LABELS.values())
