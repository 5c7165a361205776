"""metanet_utils.color: Shades of Gray against hand computations and on real dermoscopy images, and the
colour statistics of a set of images (notebook 03)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from _frames import tinted_frame
from PIL import Image

from metanet_utils.color import chromaticity_spread, color_stats, estimate_illuminant, shades_of_gray


def _load(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


@pytest.fixture(scope="module")
def real_image(real_data_dir) -> np.ndarray:
    return _load(real_data_dir / "images_fullres" / "ISIC_0024306.jpg")


@pytest.fixture(scope="module")
def real_batch(real_data_dir) -> np.ndarray:
    names = ["ISIC_0024306", "ISIC_0024307", "ISIC_0024308", "ISIC_0024309"]
    return np.stack([_load(real_data_dir / "images" / f"{n}.jpg") for n in names])


def _balanced_image(seed: int = 0, h: int = 64, w: int = 48) -> np.ndarray:
    """Channels hold the same multiset of values (shuffled): every Minkowski mean is equal."""
    rng = np.random.default_rng(seed)
    v = rng.integers(20, 230, size=h * w).astype(np.uint8)
    return np.stack([rng.permutation(v), rng.permutation(v), rng.permutation(v)], axis=-1).reshape(h, w, 3)


def _reference_sog(img: np.ndarray, p: float) -> tuple[np.ndarray, np.ndarray]:
    """Textbook Shades of Gray in float64, straight from the pixels."""
    x = img.reshape(-1, 3).astype(np.float64)
    e = x.max(axis=0) if math.isinf(p) else np.mean(x ** p, axis=0) ** (1.0 / p)
    e = e / np.linalg.norm(e)
    out = np.clip(np.rint(img.astype(np.float64) / (e * math.sqrt(3.0))), 0, 255).astype(np.uint8)
    return e, out


@pytest.mark.parametrize("p", [1, 6, np.inf])
def test_gray_and_gray_balanced_images_are_left_unchanged(p):
    img = np.full((10, 12, 3), 117, dtype=np.uint8)
    np.testing.assert_array_equal(shades_of_gray(img, p=p), img)
    np.testing.assert_allclose(estimate_illuminant(img, p=p), np.full(3, 1 / math.sqrt(3)))
    # a gray-balanced textured image too
    bal = _balanced_image()
    np.testing.assert_array_equal(shades_of_gray(bal, p=p), bal)


@pytest.mark.parametrize("p", [1, 6])
def test_known_cast_is_estimated_and_becomes_a_brightness_change(p):
    base = _balanced_image(1)
    cast = np.array([1.0, 0.8, 0.55])
    img = np.clip(np.rint(base * cast), 0, 255).astype(np.uint8)
    e = estimate_illuminant(img, p=p)
    np.testing.assert_allclose(e, cast / np.linalg.norm(cast), atol=2e-3)
    out = shades_of_gray(img, p=p).astype(np.float64)
    # the cast becomes a global brightness change: its RMS
    expected = base * np.linalg.norm(cast) / math.sqrt(3.0)
    diff = np.abs(out - expected)
    assert diff.max() <= 1.5
    assert diff.mean() < 0.6
    # channel means equal again (up to rounding)
    means = out.reshape(-1, 3).mean(axis=0)
    assert means.max() - means.min() < 0.5


def test_p1_is_gray_world_corrected_means_equal_the_rms_of_the_means():
    """p = 1: the corrected channel means are exactly the RMS of the original means (up to rounding)."""
    rng = np.random.default_rng(3)
    img = rng.integers(0, 200, size=(50, 40, 3)).astype(np.uint8)
    img[..., 2] //= 2
    m = img.reshape(-1, 3).mean(axis=0)
    e = estimate_illuminant(img, p=1)
    np.testing.assert_allclose(e, m / np.linalg.norm(m), rtol=1e-12)
    out = shades_of_gray(img, p=1)
    ref = np.clip(np.rint(img / (m / np.linalg.norm(m) * math.sqrt(3))), 0, 255)
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1
    target = np.linalg.norm(m) / math.sqrt(3)
    np.testing.assert_allclose(out.reshape(-1, 3).mean(axis=0), target, atol=0.3)


def test_p_inf_is_max_rgb_white_patch():
    rng = np.random.default_rng(4)
    img = rng.integers(0, 120, size=(30, 30, 3)).astype(np.uint8)
    img[3, 4] = (200, 150, 90)
    mx = np.array([200.0, 150.0, float(img[..., 2].max())])  # the random part stays below 120
    assert img[..., 2].max() >= 90
    e = estimate_illuminant(img, p=np.inf)
    np.testing.assert_allclose(e, mx / np.linalg.norm(mx))
    np.testing.assert_array_equal(shades_of_gray(img, p=np.inf), _reference_sog(img, np.inf)[1])


@pytest.mark.parametrize("p", [1, 6, np.inf])
def test_real_image_matches_textbook_shades_of_gray_within_rounding(real_image, p):
    e_ref, out_ref = _reference_sog(real_image, p)
    e = estimate_illuminant(real_image, p=p)
    np.testing.assert_allclose(e, e_ref, rtol=1e-9)
    out = shades_of_gray(real_image, p=p)
    assert out.shape == real_image.shape and out.dtype == np.uint8
    diff = np.abs(out.astype(int) - out_ref.astype(int))
    assert diff.max() <= 1  # float32 vs float64 at .5 boundaries
    assert (diff > 0).mean() < 1e-3
    if p == 6:
        # dermoscopy images are reddish: red illuminant component largest, red gain < 1
        assert e[0] > e[1] and e[0] > e[2]


def test_large_p_is_finite_and_approaches_max_rgb(real_image):
    e = estimate_illuminant(real_image, p=1000)
    assert np.isfinite(e).all() and np.linalg.norm(e) == pytest.approx(1.0)
    # approaches max-RGB
    np.testing.assert_allclose(e, estimate_illuminant(real_image, p=np.inf), atol=0.01)


def test_batch_corrects_each_image_with_its_own_illuminant(real_batch):
    out = shades_of_gray(real_batch, p=6)
    assert out.shape == real_batch.shape
    for i in range(len(real_batch)):
        np.testing.assert_array_equal(out[i], shades_of_gray(real_batch[i], p=6))
    e = estimate_illuminant(real_batch)
    assert e.shape == (4, 3)
    np.testing.assert_allclose(e[2], estimate_illuminant(real_batch[2]))
    # each image its own illuminant
    assert not np.allclose(e[0], e[1])


def test_mask_saturated_estimates_from_unsaturated_pixels_and_still_corrects_every_pixel():
    rng = np.random.default_rng(5)
    # a reddish cast on the lesion, so that the gains are far from 1
    img = (rng.integers(60, 140, size=(40, 40, 3)) * np.array([1.0, 0.85, 0.7])).astype(np.uint8)
    img[:10, :10] = (255, 255, 120)  # a clipped yellowish highlight
    plain = estimate_illuminant(img, p=6)
    masked = estimate_illuminant(img, p=6, mask_saturated=True)
    assert not np.allclose(plain, masked, atol=1e-3)
    # masked estimate equals the estimate of the unsaturated pixels alone, by hand
    keep = ~(img >= 250).any(axis=-1)
    x = img[keep].astype(np.float64)
    ref = np.mean(x ** 6, axis=0) ** (1 / 6)
    np.testing.assert_allclose(masked, ref / np.linalg.norm(ref), rtol=1e-9)
    # no saturated pixels: masking changes nothing
    clean = img.copy()
    clean[:10, :10] = 100
    np.testing.assert_allclose(estimate_illuminant(clean, mask_saturated=True), estimate_illuminant(clean))
    # every pixel, the masked highlight included, is corrected with the masked illuminant's gains: by hand
    out = shades_of_gray(img, p=6, mask_saturated=True)
    gain = 1.0 / (ref / np.linalg.norm(ref) * math.sqrt(3.0))
    expected = np.clip(np.rint(img.astype(np.float64) * gain), 0, 255)
    diff = np.abs(out.astype(int) - expected.astype(int))
    assert out.shape == img.shape and out.dtype == np.uint8
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01  # float32 gains vs float64 at .5 boundaries
    assert gain[0] < 1 < gain[2]  # the estimate without the highlight is still reddish: red down, blue up
    highlight = np.clip(np.rint(np.array([255.0, 255.0, 120.0]) * gain), 0, 255)
    assert np.abs(out[:10, :10].astype(int) - highlight.astype(int)).max() <= 1
    assert not (out[:10, :10] == np.array([255, 255, 120], np.uint8)).all(axis=-1).any()
    # and these are not the unmasked correction
    assert np.abs(shades_of_gray(img, p=6).astype(int) - out.astype(int)).max() >= 2
    # a lower threshold masks more
    assert not np.allclose(estimate_illuminant(img, mask_saturated=True, saturation_threshold=130), masked)


def test_all_saturated_image_falls_back_to_all_pixels_with_a_warning():
    img = np.full((4, 4, 3), 255, dtype=np.uint8)
    with pytest.warns(UserWarning, match="every pixel"):
        e = estimate_illuminant(img, mask_saturated=True)
    np.testing.assert_allclose(e, np.full(3, 1 / math.sqrt(3)))


def test_black_image_and_all_zero_channels_stay_zero_without_warnings():
    black = np.zeros((5, 5, 3), dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(shades_of_gray(black), black)
        red = black.copy()
        red[..., 0] = 90
        out = shades_of_gray(red)
    assert (out[..., 1:] == 0).all() and np.isfinite(estimate_illuminant(red)).all()


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((4, 4, 3), dtype=np.float32), r"uint8.*\(4, 4, 3\)"),
        (np.zeros((4, 4), dtype=np.uint8), r"\(4, 4\)"),
        (np.zeros((4, 4, 4), dtype=np.uint8), r"\(4, 4, 4\)"),
        (np.zeros((2, 3, 4, 4, 3), dtype=np.uint8), r"\(2, 3, 4, 4, 3\)"),
        (np.zeros((0, 4, 3), dtype=np.uint8), r"no pixels.*\(0, 4, 3\)"),
    ],
)
def test_bad_dtype_or_shape_is_refused_naming_the_shape(bad, match):
    with pytest.raises(ValueError, match=match):
        shades_of_gray(bad)
    with pytest.raises(ValueError, match=match):
        estimate_illuminant(bad)


def test_p_below_one_nan_or_text_and_non_arrays_are_refused():
    img = np.full((2, 2, 3), 10, dtype=np.uint8)
    for p in (0.5, 0, -1, float("nan"), "six"):
        with pytest.raises(ValueError, match="p must"):
            shades_of_gray(img, p=p)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        shades_of_gray([[[1, 2, 3]]])  # type: ignore[arg-type]


def test_shades_of_gray_leaves_its_input_unmodified(real_image):
    copy = real_image.copy()
    shades_of_gray(real_image)
    np.testing.assert_array_equal(real_image, copy)


# --------------------------------------------------------------------------- statistics over a set of images


@pytest.fixture(scope="module")
def frame(tmp_path_factory) -> pd.DataFrame:
    """4 images of each class, JPEGs with a reddish cast."""
    return tinted_frame(tmp_path_factory.mktemp("imgs"))


def test_color_stats_sample_and_spread_shrink_after_correction(frame):
    """The sample of ``n`` rows is pandas' ``sample(n, random_state=seed)``, each row keeps its image id and
    class, and the correction makes the cast images' mean colours vary less and lie nearer gray."""
    stats = color_stats(frame, n=10)
    assert len(stats) == 10 and {"r_before", "g_after", "R_before", "B_after", "dx"} <= set(stats)
    picked = frame.sample(10, random_state=0)
    assert stats["image_id"].tolist() == picked["image_id"].tolist()
    assert stats["dx"].tolist() == picked["dx"].astype(str).tolist()
    spread = chromaticity_spread(stats)
    assert spread.loc["after", "sd_r"] < spread.loc["before", "sd_r"]
    assert spread.loc["after", "mean_distance_from_gray"] < spread.loc["before", "mean_distance_from_gray"]
    assert len(color_stats([frame["path"].iloc[0]], n=None)) == 1


@pytest.fixture(scope="module")
def real_frame(real_data_dir) -> pd.DataFrame:
    """The first image of three classes of the real data (metadata read with pandas)."""
    meta = pd.read_csv(real_data_dir / "HAM10000_metadata.csv")
    rows = meta.groupby("dx", sort=True).head(1)
    rows = rows[rows["dx"].isin(["bkl", "mel", "nv"])].sort_values("dx").reset_index(drop=True)
    return rows.assign(path=[str(real_data_dir / "images" / f"{i}.jpg") for i in rows["image_id"]])


def test_color_stats_are_the_mean_rgb_and_chromaticity_before_and_after_shades_of_gray(real_frame):
    """Each row's numbers recomputed from the JPEG: PIL decode, numpy mean of R, G, B, textbook Shades of Gray
    (p = 6) for "after", and r = R / (R + G + B), g = G / (R + G + B) of the mean colour; list input names
    the rows by the file stem."""
    stats = color_stats(real_frame, n=None)
    assert stats["image_id"].tolist() == real_frame["image_id"].tolist()
    assert stats["dx"].tolist() == ["bkl", "mel", "nv"]
    for i, path in enumerate(real_frame["path"]):
        img = _load(path)
        for when, arr in (("before", img), ("after", _reference_sog(img, 6)[1])):
            m = arr.reshape(-1, 3).astype(np.float64).mean(axis=0)
            # "after": the float32 product may round 1 away from the float64 one on a few pixels
            tol = 1e-9 if when == "before" else 0.01
            got = stats.loc[i, [f"R_{when}", f"G_{when}", f"B_{when}"]].to_numpy(dtype=float)
            np.testing.assert_allclose(got, m, atol=tol, rtol=0)
            np.testing.assert_allclose(stats.loc[i, [f"r_{when}", f"g_{when}"]].to_numpy(dtype=float),
                                       m[:2] / m.sum(), atol=tol / 100, rtol=0)
        # dermoscopy is reddish before, and the correction brings the mean colour towards gray
        assert stats.loc[i, "r_before"] > 0.35 and stats.loc[i, "g_before"] < 0.32
        assert abs(stats.loc[i, "r_after"] - 1 / 3) < abs(stats.loc[i, "r_before"] - 1 / 3) / 2
    by_list = color_stats(list(real_frame["path"]), n=None)
    assert by_list["image_id"].tolist() == real_frame["image_id"].tolist() and (by_list["dx"] == "").all()
    np.testing.assert_allclose(by_list["R_after"], stats["R_after"])


def test_chromaticity_spread_is_sample_sd_and_mean_distance_from_gray():
    """By hand: pandas' sample standard deviation (ddof 1) of r and g, and the mean Euclidean distance of
    (r, g) from (1/3, 1/3)."""
    stats = pd.DataFrame({"r_before": [0.5, 0.45, 0.6], "g_before": [0.3, 0.25, 0.2],
                          "r_after": [0.34, 0.33, 0.35], "g_after": [0.33, 0.34, 0.32]})
    spread = chromaticity_spread(stats)
    for when in ("before", "after"):
        r, g = stats[f"r_{when}"].to_numpy(), stats[f"g_{when}"].to_numpy()
        assert spread.loc[when, "sd_r"] == pytest.approx(np.std(r, ddof=1))
        assert spread.loc[when, "sd_g"] == pytest.approx(np.std(g, ddof=1))
        dist = np.sqrt((r - 1 / 3) ** 2 + (g - 1 / 3) ** 2).mean()
        assert spread.loc[when, "mean_distance_from_gray"] == pytest.approx(dist)
    assert spread.loc["before", "sd_r"] == pytest.approx(0.07637626158259733)  # sd of (.5, .45, .6)


# --------------------------------------------------------------------------- the image cache (cache.py)


def _reference_cache_image(path, size: int, color_constancy: bool) -> np.ndarray:
    """What the cache documents, from PIL and numpy: decode to RGB, textbook Shades of Gray (p = 6) on the
    full image, then one plain bilinear resize of the whole image to ``size x size`` (aspect not kept)."""
    img = _load(path)
    if color_constancy:
        img = _reference_sog(img, 6)[1]
    return np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))


def test_cache_image_is_shades_of_gray_then_bilinear_resize_of_the_jpeg(real_data_dir):
    from metanet_utils.cache import load_image

    path = real_data_dir / "images" / "ISIC_0024306.jpg"
    for size in (64, 48):
        out = load_image(path, size, True)
        assert out.shape == (size, size, 3) and out.dtype == np.uint8
        ref = _reference_cache_image(path, size, True)
        diff = np.abs(out.astype(int) - ref.astype(int))
        # the library's float32 gains may round 1 away from float64 on a few pixels before the resize
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01
        # the order matters and is pinned: resizing first, then correcting, is another image
        small = np.asarray(Image.fromarray(_load(path)).resize((size, size), Image.BILINEAR))
        other_order = _reference_sog(small, 6)[1]
        assert (np.abs(out.astype(int) - other_order.astype(int)) > 0).mean() > 0.1
        # and so is the filter: PIL's other resamplers give other images
        corrected = _reference_sog(_load(path), 6)[1]
        for resample in (Image.NEAREST, Image.BICUBIC, Image.LANCZOS, Image.BOX):
            alt = np.asarray(Image.fromarray(corrected).resize((size, size), resample))
            assert (np.abs(out.astype(int) - alt.astype(int)) > 1).mean() > 0.03, resample
    # color_constancy=False: the plain resize, exactly
    np.testing.assert_array_equal(load_image(path, 64, False), _reference_cache_image(path, 64, False))


def test_cache_with_and_without_colour_constancy_are_separate_files_with_the_documented_images(real_frame,
                                                                                                tmp_path):
    """build_cache stores row i of the frame as image i, keyed by (fingerprint, size, colour constancy, p): the
    corrected and the plain cache are two files with different keys and different contents."""
    import json

    from metanet_utils.cache import build_cache, cache_key

    kw = dict(fingerprint="fp-test", cache_dir=tmp_path, workers=1, progress=False)
    sog = build_cache(real_frame, 32, True, **kw)
    raw = build_cache(real_frame, 32, False, **kw)
    assert sog.shape == raw.shape == (len(real_frame), 32, 32, 3) and sog.dtype == raw.dtype == np.uint8
    for i, path in enumerate(real_frame["path"]):
        np.testing.assert_array_equal(raw[i], _reference_cache_image(path, 32, False))
        assert np.abs(sog[i].astype(int) - _reference_cache_image(path, 32, True).astype(int)).max() <= 1
    assert np.abs(sog.astype(int) - raw.astype(int)).mean() > 5  # the correction shows
    k_sog, k_raw = cache_key("fp-test", 32, True), cache_key("fp-test", 32, False)
    assert k_sog != k_raw
    assert {p.name for p in tmp_path.glob("*.npy")} == {f"{k_sog}.npy", f"{k_raw}.npy"}
    for key, cc in ((k_sog, True), (k_raw, False)):
        side = json.loads((tmp_path / f"{key}.json").read_text())
        assert side["color_constancy"] is cc and side["image_ids"] == real_frame["image_id"].tolist()
        assert side["size"] == 32 and side["p"] == 6.0
    # every part of the key counts
    keys = {k_sog, k_raw, cache_key("fp-other", 32, True), cache_key("fp-test", 64, True),
            cache_key("fp-test", 32, True, p=1.0)}
    assert len(keys) == 5
    # a second call reads the file (memory-mapped), it does not rebuild
    again = build_cache(real_frame, 32, True, **kw)
    assert isinstance(again, np.memmap) and np.array_equal(again, sog)
