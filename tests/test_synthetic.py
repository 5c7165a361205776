"""The synthetic HAM10000 look-alike: counts, metadata, images, folder, determinism."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats as sps

from metanet_utils.constants import DATA_CLASS_COUNTS, DX_CODES, SEXES, SITES
from metanet_utils.synthetic import (
    MARKER_NAME,
    METADATA_NAME,
    STATS_FILE,
    class_counts,
    class_stats_from_metadata,
    is_synthetic,
    load_class_stats,
    make_synthetic,
    read_marker,
    render_images,
    sample_metadata,
)

COLUMNS = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"]


def _sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def _tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): _sha1(p) for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------
# class counts and the counts table
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [56, 100, 200, 700, 3000, 10015])
def test_class_counts_proportional_with_floor(n: int) -> None:
    counts = class_counts(n)
    assert list(counts) == list(DX_CODES)
    assert sum(counts.values()) == n
    assert min(counts.values()) >= 8
    # the classes above the floor share the rest in proportion (within one image)
    free = [dx for dx in DX_CODES if counts[dx] > 8]
    rest = sum(counts[dx] for dx in free)
    weight = sum(DATA_CLASS_COUNTS[dx] for dx in free)
    for dx in free:
        assert abs(counts[dx] - rest * DATA_CLASS_COUNTS[dx] / weight) < 1.0
    # the floor only lifts classes whose proportional share is small
    for dx in set(DX_CODES) - set(free):
        assert n * DATA_CLASS_COUNTS[dx] / sum(DATA_CLASS_COUNTS.values()) < 12 or n == 56
    ordered = sorted(DX_CODES, key=lambda dx: -DATA_CLASS_COUNTS[dx])
    assert all(counts[a] >= counts[b] for a, b in zip(ordered, ordered[1:]))


def test_class_counts_full_size_is_ham10000_and_small_sizes_are_refused() -> None:
    assert class_counts(10015) == DATA_CLASS_COUNTS
    with pytest.raises(ValueError):
        class_counts(55)


def test_shipped_table_is_tidy_and_totals_match_ham10000() -> None:
    s = load_class_stats()
    assert list(s.columns) == ["dx", "field", "value", "count"]
    assert set(s["field"]) == {"sex", "localization", "age"}
    assert (s["count"] > 0).all()
    for field in ("sex", "localization", "age"):
        totals = s[s["field"] == field].groupby("dx")["count"].sum().to_dict()
        assert totals == DATA_CLASS_COUNTS, field
    assert set(s.loc[s["field"] == "sex", "value"]) <= {*SEXES, "unknown"}
    assert set(s.loc[s["field"] == "localization", "value"]) <= {*SITES, "unknown"}
    ages = set(s.loc[s["field"] == "age", "value"])
    assert ages <= {str(a) for a in range(0, 90, 5)} | {"nan"}
    # the real data's missing values are carried, so synthetic data has some to fill
    assert {"unknown"} <= set(s.loc[s["field"] == "sex", "value"])
    assert {"unknown"} <= set(s.loc[s["field"] == "localization", "value"])
    assert "nan" in ages


def test_shipped_table_equals_recomputation_from_real_metadata(real_data_dir: Path) -> None:
    real = pd.read_csv(real_data_dir / "HAM10000_metadata.csv")
    recomputed = class_stats_from_metadata(real)
    pd.testing.assert_frame_equal(recomputed, load_class_stats())
    shipped = Path(__file__).resolve().parents[1] / "metanet_utils" / "resources" / STATS_FILE
    assert shipped.read_text() == recomputed.to_csv(index=False, lineterminator="\n")


# ---------------------------------------------------------------------------------------------
# metadata
# ---------------------------------------------------------------------------------------------
def test_metadata_columns_values_and_lesions() -> None:
    m = sample_metadata(700, seed=0)
    assert list(m.columns) == COLUMNS
    assert len(m) == 700 and m["image_id"].is_unique
    assert m["lesion_id"].map(lambda s: bool(re.fullmatch(r"HAM_9\d{6}", s))).all()
    assert m["image_id"].map(lambda s: bool(re.fullmatch(r"ISIC_9\d{6}", s))).all()
    assert set(m["dx"]) == set(DX_CODES)
    assert m["dx"].value_counts().to_dict() == class_counts(700)
    assert (m["dx_type"] == "synthetic").all()
    assert set(m["sex"]) <= {*SEXES, "unknown"}
    assert set(m["localization"]) <= {*SITES, "unknown"}
    assert m["age"].dtype == np.float64
    known = m["age"].dropna()
    assert ((known % 5 == 0) & (known >= 0) & (known <= 85)).all()
    # images of one lesion share everything but the image
    per_lesion = m.fillna({"age": -1}).groupby("lesion_id")[["dx", "age", "sex", "localization"]].nunique()
    assert (per_lesion == 1).all().all()
    sizes = m.groupby("lesion_id").size()
    assert sizes.max() <= 6 and (sizes > 1).any()
    assert abs(len(sizes) / len(m) - 0.75) < 0.02


def test_metadata_has_missing_values_to_fill() -> None:
    m = sample_metadata(3000, seed=1)
    assert (m["sex"] == "unknown").any()
    assert (m["localization"] == "unknown").any()
    assert m["age"].isna().any()


def test_metadata_is_deterministic_per_seed() -> None:
    pd.testing.assert_frame_equal(sample_metadata(300, seed=4), sample_metadata(300, seed=4))
    assert not sample_metadata(300, seed=4).equals(sample_metadata(300, seed=5))


def _age_bin(a: float) -> str:
    return "nan" if np.isnan(a) else str(int(a // 5 * 5))


@pytest.mark.parametrize("field", ["localization", "sex", "age"])
def test_per_class_distributions_follow_real_metadata(real_data_dir: Path, field: str) -> None:
    """Lesion-level chi-square per class against the real frequencies, computed here from the CSV."""
    real = pd.read_csv(real_data_dir / "HAM10000_metadata.csv")
    syn = sample_metadata(5000, seed=3)
    for df in (real, syn):
        df["age"] = df["age"].map(_age_bin)
        df["sex"] = df["sex"].fillna("unknown")
        df["localization"] = df["localization"].fillna("unknown")
    real_freq = pd.crosstab(real["dx"], real[field], normalize="index")
    lesions = syn.drop_duplicates("lesion_id")
    pooled_tv = 0.0
    for dx in DX_CODES:
        p = real_freq.loc[dx]
        observed = lesions.loc[lesions["dx"] == dx, field].value_counts().reindex(p.index, fill_value=0)
        assert observed[p == 0].sum() == 0, f"{dx}: {field} values absent from the real class"
        n = observed.sum()
        expected = p * n
        big = expected >= 5  # merge the rare categories so the chi-square approximation holds
        obs = np.append(observed[big].to_numpy(), observed[~big].sum())
        exp = np.append(expected[big].to_numpy(), expected[~big].sum())
        keep = exp > 0
        if keep.sum() > 1:
            pval = sps.chisquare(obs[keep], exp[keep]).pvalue
            assert pval > 1e-3, f"{dx}/{field}: p={pval:.2g}"
        img = syn.loc[syn["dx"] == dx, field].value_counts(normalize=True).reindex(p.index, fill_value=0)
        pooled_tv += 0.5 * np.abs(img - p).sum() * (syn["dx"] == dx).mean()
    assert pooled_tv < 0.06, pooled_tv


def test_site_distribution_follows_shipped_table() -> None:
    """Same check without the real copy: total-variation distance to the shipped table."""
    table = load_class_stats()
    syn = sample_metadata(5000, seed=2)
    for dx in ("nv", "mel", "bkl"):
        t = table[(table["dx"] == dx) & (table["field"] == "localization")].set_index("value")["count"]
        p = t / t.sum()
        q = syn.loc[syn["dx"] == dx, "localization"].value_counts(normalize=True).reindex(p.index, fill_value=0)
        assert 0.5 * np.abs(p - q).sum() < 0.1, dx


# ---------------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------------
def test_render_images_shape_and_thread_independence() -> None:
    dx = [d for d in DX_CODES for _ in range(6)]
    a = render_images(dx, seed=2, image_size=(64, 48), workers=1)
    b = render_images(dx, seed=2, image_size=(64, 48), workers=2)
    assert a.shape == (42, 48, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert a.std() > 10  # not blank


def test_colour_cast_varies_channel_ratios() -> None:
    dx = ["nv", "mel", "bkl", "bcc", "akiec", "df", "vasc"] * 8
    def log_ratios(imgs: np.ndarray) -> np.ndarray:
        m = imgs.reshape(len(imgs), -1, 3).astype(np.float64).mean(1)
        return np.log(m[:, [0, 2]] / m[:, [1]])

    cast = log_ratios(render_images(dx, seed=5, image_size=(80, 60)))
    neutral = log_ratios(render_images(dx, seed=5, image_size=(80, 60), colour_cast=0.0))
    assert cast.std(0).min() > 0.05
    # the cast adds spread on top of the variation of skin and lesion colours
    assert (cast.std(0) > 1.3 * neutral.std(0)).all()
    assert cast.max(0).min() - cast.min(0).max() > 0  # ratios really differ between images


def _features(imgs: np.ndarray) -> np.ndarray:
    a = imgs.astype(np.float32) / 255.0
    n, h, w, _ = a.shape
    hs, ws = h // 8 * 8, w // 8 * 8
    blocks = a[:, :hs, :ws].reshape(n, 8, hs // 8, 8, ws // 8, 3).mean((2, 4)).reshape(n, -1)
    grey = a.mean(-1).reshape(n, -1)
    centre = a[:, h // 4:3 * h // 4, w // 4:3 * w // 4]
    chroma = centre / (centre.sum(-1, keepdims=True) + 1e-3)
    stats = [a.mean((1, 2)), a.std((1, 2)), centre.mean((1, 2)), centre.std((1, 2)),
             np.percentile(grey, [5, 25, 50, 75, 95], axis=1).T, chroma.mean((1, 2))]
    return np.concatenate([blocks, *stats], axis=1)


def test_classes_are_separable_by_a_simple_model() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n_train, n_test = 24, 12
    dx = [d for d in DX_CODES for _ in range(n_train + n_test)]
    y = np.repeat(np.arange(len(DX_CODES)), n_train + n_test)
    x = _features(render_images(dx, seed=11, image_size=(96, 72)))  # one lesion per image
    test = np.tile(np.arange(n_train + n_test) >= n_train, len(DX_CODES))
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000))
    clf.fit(x[~test], y[~test])
    bacc = balanced_accuracy_score(y[test], clf.predict(x[test]))
    assert bacc > 0.3, bacc  # chance is 1/7


# ---------------------------------------------------------------------------------------------
# the dataset folder
# ---------------------------------------------------------------------------------------------
def test_make_synthetic_layout_and_marker(tmp_path: Path) -> None:
    d = make_synthetic(tmp_path / "syn", n_images=70, seed=5)
    assert d == tmp_path / "syn"
    m = pd.read_csv(d / METADATA_NAME)
    assert list(m.columns) == COLUMNS and len(m) == 70
    files = sorted(p.name for p in (d / "images").glob("*.jpg"))
    assert files == sorted(f"{i}.jpg" for i in m["image_id"])
    with Image.open(d / "images" / files[0]) as im:
        assert im.format == "JPEG" and im.mode == "RGB" and im.size == (200, 150)
    assert is_synthetic(d)
    marker = read_marker(d)
    assert marker is not None and marker["synthetic"] is True
    assert marker["seed"] == 5 and marker["n_images"] == 70 and marker["image_size"] == [200, 150]
    assert marker["class_counts"] == class_counts(70)
    assert "SYNTHETIC DATA" in marker["note"]
    assert json.loads((d / MARKER_NAME).read_text()) == marker
    # nothing left over from staging
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["syn"]


def test_make_synthetic_is_byte_identical_per_seed(tmp_path: Path) -> None:
    a = _tree_hashes(make_synthetic(tmp_path / "a", n_images=60, seed=9, image_size=(120, 90)))
    b = _tree_hashes(make_synthetic(tmp_path / "b", n_images=60, seed=9, image_size=(120, 90)))
    assert len(a) == 62 and a == b  # metadata, marker and every image


def test_make_synthetic_reuses_and_protects_folders(tmp_path: Path) -> None:
    d = make_synthetic(tmp_path / "syn", n_images=56, seed=1, image_size=(80, 60))
    stamp = (d / METADATA_NAME).stat().st_mtime_ns, (d / METADATA_NAME).stat().st_ino
    make_synthetic(d, n_images=56, seed=1, image_size=(80, 60))  # same request: untouched
    assert ((d / METADATA_NAME).stat().st_mtime_ns, (d / METADATA_NAME).stat().st_ino) == stamp
    before = _tree_hashes(d)
    with pytest.raises(FileExistsError):
        make_synthetic(d, n_images=56, seed=2, image_size=(80, 60))
    make_synthetic(d, n_images=56, seed=2, image_size=(80, 60), overwrite=True)
    assert read_marker(d)["seed"] == 2
    after = _tree_hashes(d)
    assert after[METADATA_NAME] != before[METADATA_NAME]
    assert not set(after.items()) & {(k, v) for k, v in before.items() if k.startswith("images/")}
    real_like = tmp_path / "real"
    real_like.mkdir()
    (real_like / METADATA_NAME).write_text("lesion_id,image_id\n")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError):
            make_synthetic(real_like, n_images=56, overwrite=overwrite)
    assert (real_like / METADATA_NAME).read_text() == "lesion_id,image_id\n"
    assert not is_synthetic(real_like)


def test_real_copy_is_not_synthetic(real_data_dir: Path) -> None:
    assert not is_synthetic(real_data_dir)
    assert read_marker(real_data_dir) is None
