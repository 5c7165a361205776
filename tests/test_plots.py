"""The notebooks' figures: each function draws the expected axes and bars on a small frame and saves a PNG
(the tables shown beside them are tested in test_metadata.py and test_color.py)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from _frames import tinted_frame  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from metanet_utils import plots  # noqa: E402
from metanet_utils.color import color_stats  # noqa: E402
from metanet_utils.constants import PAPER_CLASS_COUNTS  # noqa: E402
from metanet_utils.data import announce, locate_data  # noqa: E402
from metanet_utils.metadata import encode, example_rows, fit_stats, metadata_baseline, mutual_information  # noqa: E402
from metanet_utils.splits import lesion_leak, make_folds  # noqa: E402


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


def test_class_counts_ours_and_paper_saved(frame, figdir):
    fig = plots.class_counts(frame, log=True, save="00_class_counts")
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    assert n_bars(fig.axes[0]) == 14
    assert fig.axes[0].get_yscale() == "log"
    assert (figdir / "00_class_counts.png").is_file()


def test_class_counts_scale_auto_and_paper_off(frame):
    ax = plots.class_counts(PAPER_CLASS_COUNTS).axes[0]
    assert ax.get_ylabel() == "images"  # same total as the paper: counts
    assert plots.class_counts(frame).axes[0].get_ylabel() == "% of images"  # a subsample: shares
    assert n_bars(plots.class_counts(frame, paper=None).axes[0]) == 7
    with pytest.raises(ValueError, match="scale"):
        plots.class_counts(frame, scale="bogus")


def test_age_by_class_one_panel_per_class_plus_all(frame, figdir):
    fig = plots.age_by_class(frame, save="01_age")
    assert len(fig.axes) == 8
    assert (figdir / "01_age.png").is_file()
    three = frame[frame["dx"].isin(["nv", "mel", "df"])]
    assert len(plots.age_by_class(three).axes) == 4


def test_sex_site_by_class_two_heatmaps(frame, figdir):
    fig = plots.sex_site_by_class(frame, save="01_sex_site")
    assert len(fig.axes) == 2
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["female", "male", "unknown"]
    assert len(fig.axes[1].get_xticklabels()) == 15  # 14 sites + unknown
    assert (figdir / "01_sex_site.png").is_file()


def test_sample_grid_rows_are_classes(frame, figdir):
    fig = plots.sample_grid(frame, n_per_class=3, save="01_samples")
    assert len(fig.axes) == 7 * 3
    assert sum(len(ax.images) for ax in fig.axes) == 21
    assert fig.axes[0].get_ylabel() == "NV"
    assert (figdir / "01_samples.png").is_file()
    fig = plots.sample_grid(frame, n_per_class=6)  # classes have 4: empty slots stay blank
    assert sum(len(ax.images) for ax in fig.axes) == 28


def test_images_per_lesion_and_leak(frame, figdir):
    fig = plots.images_per_lesion(frame, save="01_lesions")
    assert len(fig.axes) == 2
    assert n_bars(fig.axes[0]) == 1  # every lesion has 2 images
    assert n_bars(fig.axes[1]) == 7
    leaks = {s: lesion_leak(frame, make_folds(frame, 2, s)) for s in ("image", "lesion")}
    fig = plots.lesion_leak_bars(leaks, save="01_leak")
    assert n_bars(fig.axes[0]) == 3 * 2  # (2 folds + all) x 2 schemes
    assert (figdir / "01_lesions.png").is_file() and (figdir / "01_leak.png").is_file()


def test_color_constancy_grid_and_statistics(frame, figdir):
    fig = plots.color_constancy_grid(frame.groupby("dx").head(1).iloc[:3], ps=(1, 6, np.inf), save="03_grid")
    assert len(fig.axes) == 3 * 4
    assert [ax.get_title() for ax in fig.axes[:4]][0] == "original"
    fig = plots.color_statistics(color_stats(frame, n=10), save="03_stats")
    assert len(fig.axes) == 3
    assert (figdir / "03_grid.png").is_file() and (figdir / "03_stats.png").is_file()


def test_metadata_figures(frame, figdir):
    rows = example_rows(frame)
    x, names = encode(rows, stats=fit_stats(frame))
    fig = plots.metadata_vectors(x, names, rows["image_id"], save="02_vectors")
    assert len(fig.axes) == 1 and len(fig.axes[0].get_xticklabels()) == 17
    mi = mutual_information(frame)
    assert n_bars(plots.mutual_information_bars(mi, h_dx=2.8, save="02_mi").axes[0]) == 3
    both = pd.DataFrame({"a": mi, "b": mi / 2})
    assert n_bars(plots.mutual_information_bars(both).axes[0]) == 6
    res = metadata_baseline(frame, make_folds(frame, 2, "image"))
    fig = plots.recall_bars(res, save="02_recall")
    assert n_bars(fig.axes[0]) == 7
    assert n_bars(plots.recall_bars({"all": res, "again": res}).axes[0]) == 14
    for name in ("02_vectors", "02_mi", "02_recall"):
        assert (figdir / f"{name}.png").is_file()


def test_synthetic_banner_once_and_saved(frame, figdir):
    fig = plots.class_counts(frame, synthetic=True, save="00_synthetic")
    texts = [t.get_text() for t in fig.texts]
    assert "SYNTHETIC DATA" in texts
    plots.synthetic_banner(fig)
    assert [t.get_text() for t in fig.texts].count("SYNTHETIC DATA") == 1
    assert "SYNTHETIC DATA" not in [t.get_text() for t in plots.class_counts(frame).texts]
    assert (figdir / "00_synthetic.png").stat().st_size > 1000


def test_announce_is_loud_for_synthetic(capsys, tmp_path):
    from metanet_utils.data import DataLocation

    announce(DataLocation(tmp_path, "synthetic", "fallback"))
    out = capsys.readouterr().out
    assert "SYNTHETIC DATA" in out and out.startswith("***")
    announce(DataLocation(tmp_path, "real", "argument"))
    assert capsys.readouterr().out.startswith("Real data")


def test_locate_data_falls_back_or_downloads(isolated_root, monkeypatch):
    import metanet_utils.download as download
    from metanet_utils.config import load_profile
    from metanet_utils.synthetic import make_synthetic

    monkeypatch.delenv("METANET_DATA_DIR", raising=False)
    loc = locate_data(load_profile("smoke", synthetic_images=60), "")
    assert loc.kind == "synthetic" and loc.path.parent == (isolated_root / "data").resolve()
    calls = []

    def fake_download(dest, *args, **kwargs):
        calls.append(dest)
        return make_synthetic(dest, n_images=60)

    monkeypatch.setattr(download, "download_official", fake_download)
    loc = locate_data(load_profile("quick"), "")
    assert calls == [isolated_root / "data" / "ham10000"] and loc.path == calls[0].resolve()
    with pytest.raises(Exception, match="does not exist"):
        locate_data(load_profile("quick"), isolated_root / "nowhere")
    assert len(calls) == 1
