"""metanet_utils.color: Shades of Gray against an independent computation (an exact sum over the pixels, one
channel at a time, in Python floats), its special cases (gray, Gray World at p = 1, max-RGB as p -> inf) and real
dermoscopy images; the colour statistics of notebook 03; and the image cache, which applies it to every image."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from metanet_utils.color import chromaticity_spread, color_stats, estimate_illuminant, shades_of_gray


def _load(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _reference_sog(img: np.ndarray, p: float) -> tuple[np.ndarray, np.ndarray]:
    """e_c = (sum_x I_c(x)^p / N)^(1/p) with math.fsum (exact sum) or the channel maximum, and the corrected image
    round(I_c / (sqrt(3) e_c / |e|)) in float64 (the kit's gains rms(e) / e_c, written another way)."""
    e = []
    for c in range(3):
        v = img[..., c].ravel().tolist()
        e.append(max(v) if math.isinf(p) else (math.fsum(x ** p for x in v) / len(v)) ** (1 / p))
    e = np.array(e, dtype=np.float64)
    out = np.clip(np.rint(img / (math.sqrt(3) * e / np.linalg.norm(e))), 0, 255).astype(np.uint8)
    return e, out


@pytest.fixture(scope="module")
def real_image(real_data_dir) -> np.ndarray:
    return _load(real_data_dir / "images" / "ISIC_0024306.jpg")


@pytest.fixture(scope="module")
def real_batch(real_data_dir) -> np.ndarray:
    names = ["ISIC_0024306", "ISIC_0024307", "ISIC_0024308", "ISIC_0024309"]
    return np.stack([_load(real_data_dir / "images" / f"{n}.jpg") for n in names])


@pytest.mark.parametrize("p", [1, 6, 30, np.inf])
def test_real_image_equals_the_p_mean_formula_within_rounding_and_is_left_unmodified(real_image, p):
    e_ref, out_ref = _reference_sog(real_image, p)
    np.testing.assert_allclose(estimate_illuminant(real_image, p=p), e_ref, rtol=1e-12)
    copy = real_image.copy()
    out = shades_of_gray(copy, p=p)
    np.testing.assert_array_equal(copy, real_image)
    assert out.shape == real_image.shape and out.dtype == np.uint8
    diff = np.abs(out.astype(int) - out_ref)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3  # float32 product vs float64 at .5 boundaries
    if p == 6:  # dermoscopy light is reddish: the red gain is below 1
        assert e_ref[0] > e_ref[1] and e_ref[0] > e_ref[2]


def test_full_size_real_image_equals_the_p_mean_formula(real_data_dir):
    img = _load(real_data_dir / "images_fullres" / "ISIC_0024306.jpg")  # 600 x 450, as the image cache reads it
    e_ref, out_ref = _reference_sog(img, 6)
    np.testing.assert_allclose(estimate_illuminant(img), e_ref, rtol=1e-12)
    assert np.abs(shades_of_gray(img).astype(int) - out_ref).max() <= 1


def _balanced_image(seed: int = 0, h: int = 64, w: int = 48) -> np.ndarray:
    """Channels hold the same multiset of values (shuffled): every Minkowski mean is equal."""
    rng = np.random.default_rng(seed)
    v = rng.integers(20, 230, size=h * w).astype(np.uint8)
    return np.stack([rng.permutation(v), rng.permutation(v), rng.permutation(v)], axis=-1).reshape(h, w, 3)


@pytest.mark.parametrize("p", [1, 6, np.inf])
def test_gray_and_gray_balanced_images_are_left_unchanged(p):
    img = np.full((10, 12, 3), 117, dtype=np.uint8)
    np.testing.assert_array_equal(shades_of_gray(img, p=p), img)
    np.testing.assert_allclose(estimate_illuminant(img, p=p), [117.0, 117.0, 117.0])
    bal = _balanced_image()
    np.testing.assert_array_equal(shades_of_gray(bal, p=p), bal)


@pytest.mark.parametrize("p", [1, 6])
def test_known_cast_is_estimated_and_becomes_a_brightness_change(p):
    base = _balanced_image(1)
    cast = np.array([1.0, 0.8, 0.55])
    img = np.clip(np.rint(base * cast), 0, 255).astype(np.uint8)
    e = estimate_illuminant(img, p=p)
    np.testing.assert_allclose(e / np.linalg.norm(e), cast / np.linalg.norm(cast), atol=2e-3)
    out = shades_of_gray(img, p=p).astype(np.float64)
    diff = np.abs(out - base * np.linalg.norm(cast) / math.sqrt(3.0))  # the cast becomes its RMS, a brightness
    assert diff.max() <= 1.5 and diff.mean() < 0.6
    means = out.reshape(-1, 3).mean(axis=0)
    assert means.max() - means.min() < 0.5


def test_p1_is_gray_world_the_corrected_channel_means_equal_the_rms_of_the_means():
    rng = np.random.default_rng(3)
    img = rng.integers(0, 200, size=(50, 40, 3)).astype(np.uint8)
    img[..., 2] //= 2
    m = img.reshape(-1, 3).mean(axis=0)
    np.testing.assert_allclose(estimate_illuminant(img, p=1), m, rtol=1e-12)
    out = shades_of_gray(img, p=1)
    np.testing.assert_allclose(out.reshape(-1, 3).mean(axis=0), np.sqrt(np.mean(m ** 2)), atol=0.3)


def test_p_inf_is_max_rgb_and_growing_p_approaches_it(real_image):
    rng = np.random.default_rng(4)
    img = rng.integers(0, 120, size=(30, 30, 3)).astype(np.uint8)
    img[3, 4] = (200, 150, 90)
    np.testing.assert_array_equal(estimate_illuminant(img, p=np.inf), [200, 150, img[..., 2].max()])
    np.testing.assert_array_equal(shades_of_gray(img, p=np.inf), _reference_sog(img, np.inf)[1])
    unit = [e / np.linalg.norm(e) for e in (estimate_illuminant(real_image, p=p) for p in (1, 6, 30, 100, np.inf))]
    dist = [np.linalg.norm(u - unit[-1]) for u in unit[:-1]]
    assert dist == sorted(dist, reverse=True) and dist[-1] < 0.01


def test_batch_corrects_each_image_with_its_own_illuminant(real_batch):
    out = shades_of_gray(real_batch, p=6)
    assert out.shape == real_batch.shape
    for i in range(len(real_batch)):
        np.testing.assert_array_equal(out[i], shades_of_gray(real_batch[i], p=6))
    e = estimate_illuminant(real_batch)
    assert e.shape == (4, 3) and not np.allclose(e[0], e[1])
    np.testing.assert_allclose(e[2], _reference_sog(real_batch[2], 6)[0], rtol=1e-12)


def test_black_image_and_all_zero_channels_stay_zero_without_warnings():
    black = np.zeros((5, 5, 3), dtype=np.uint8)
    red = black.copy()
    red[..., 0] = 90
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(shades_of_gray(black), black)
        out = shades_of_gray(red)
    assert (out[..., 1:] == 0).all()
    np.testing.assert_array_equal(out[..., 0], round(90 * math.sqrt(90 ** 2 / 3) / 90))  # rms(90, 0, 0) / 90


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((4, 4, 3), dtype=np.float32), r"uint8.*float32.*\(4, 4, 3\)"),
        (np.zeros((4, 4), dtype=np.uint8), r"\(4, 4\)"),
        (np.zeros((4, 4, 4), dtype=np.uint8), r"\(4, 4, 4\)"),
        (np.zeros((2, 3, 4, 4, 3), dtype=np.uint8), r"\(2, 3, 4, 4, 3\)"),
        (np.zeros((0, 4, 3), dtype=np.uint8), r"with pixels.*\(0, 4, 3\)"),
        ([[[1, 2, 3]]], r"list"),
    ],
)
def test_bad_dtype_or_shape_is_refused_naming_the_shape(bad, match):
    with pytest.raises(ValueError, match=match):
        shades_of_gray(bad)
    with pytest.raises(ValueError, match=match):
        estimate_illuminant(bad)


@pytest.mark.parametrize("p", [0.5, 0, -1, float("nan"), "six", None, 101])
def test_p_below_one_above_100_nan_or_not_a_number_is_refused(p):
    with pytest.raises(ValueError, match="p must"):
        shades_of_gray(np.full((2, 2, 3), 10, dtype=np.uint8), p=p)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- statistics over a set of images


@pytest.fixture(scope="module")
def real_frame(real_data_dir) -> pd.DataFrame:
    """The first image of each class of the real data, classes in alphabetical order (metadata read with pandas)."""
    meta = pd.read_csv(real_data_dir / "HAM10000_metadata.csv")
    rows = meta.groupby("dx", sort=True).head(1).sort_values("dx").reset_index(drop=True)
    return rows.assign(path=[str(real_data_dir / "images" / f"{i}.jpg") for i in rows["image_id"]])


def test_color_stats_are_the_mean_rgb_and_chromaticity_before_and_after_shades_of_gray(real_frame):
    """Each row's numbers recomputed from the JPEG: PIL decode, numpy mean of R, G, B, the reference Shades of
    Gray (p = 6) for "after", and r = R / (R + G + B), g = G / (R + G + B) of the mean colour; list input names
    the rows by the file stem; ``n`` samples with pandas' ``sample(n, random_state=seed)``."""
    stats = color_stats(real_frame, n=None)
    assert stats["image_id"].tolist() == real_frame["image_id"].tolist() and stats["dx"].tolist() == sorted(stats["dx"])
    for i, path in enumerate(real_frame["path"]):
        img = _load(path)
        for when, arr in (("before", img), ("after", _reference_sog(img, 6)[1])):
            m = arr.reshape(-1, 3).astype(np.float64).mean(axis=0)
            tol = 1e-9 if when == "before" else 0.01  # "after": a few pixels may round 1 apart
            np.testing.assert_allclose(stats.loc[i, [f"R_{when}", f"G_{when}", f"B_{when}"]].to_numpy(dtype=float),
                                       m, atol=tol, rtol=0)
            np.testing.assert_allclose(stats.loc[i, [f"r_{when}", f"g_{when}"]].to_numpy(dtype=float),
                                       m[:2] / m.sum(), atol=tol / 100, rtol=0)
    spread = chromaticity_spread(stats)  # the correction brings the reddish mean colours near gray
    assert (stats["r_before"] > 0.35).all() and spread.loc["after", "sd_r"] < spread.loc["before", "sd_r"] / 2
    assert spread.loc["after", "mean_distance_from_gray"] < spread.loc["before", "mean_distance_from_gray"] / 2
    by_list = color_stats(list(real_frame["path"]), n=None)
    assert by_list["image_id"].tolist() == real_frame["image_id"].tolist() and (by_list["dx"] == "").all()
    np.testing.assert_allclose(by_list["R_after"], stats["R_after"])
    sample = color_stats(real_frame, n=3, seed=1)
    assert sample["image_id"].tolist() == real_frame.sample(3, random_state=1)["image_id"].tolist()


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
        assert spread.loc[when, "mean_distance_from_gray"] == pytest.approx(np.hypot(r - 1 / 3, g - 1 / 3).mean())
    assert spread.loc["before", "sd_r"] == pytest.approx(0.07637626158259733)  # sd of (.5, .45, .6)


# --------------------------------------------------------------------------- the image cache (cache.py)


def _reference_cache_image(path, size: int, color_constancy: bool) -> np.ndarray:
    """What the cache documents, from PIL and numpy: decode to RGB, Shades of Gray (p = 6) on the full image, then
    one plain bilinear resize of the whole image to ``size x size`` (aspect not kept)."""
    img = _load(path)
    if color_constancy:
        img = _reference_sog(img, 6)[1]
    return np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))


def test_cache_image_is_shades_of_gray_then_bilinear_resize_of_the_jpeg(real_data_dir):
    from metanet_utils.cache import load_image

    path = real_data_dir / "images" / "ISIC_0024306.jpg"
    corrected = _reference_sog(_load(path), 6)[1]
    for size in (64, 48):
        out = load_image(path, size, True)
        assert out.shape == (size, size, 3) and out.dtype == np.uint8
        diff = np.abs(out.astype(int) - _reference_cache_image(path, size, True).astype(int))
        # the library's float32 gains may round 1 away from float64 on a few pixels before the resize
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01
        # the order matters and is pinned: resizing first, then correcting, is another image
        small = np.asarray(Image.fromarray(_load(path)).resize((size, size), Image.BILINEAR))
        assert (np.abs(out.astype(int) - _reference_sog(small, 6)[1].astype(int)) > 0).mean() > 0.1
        # and so is the filter: PIL's other resamplers give other images
        for resample in (Image.NEAREST, Image.BICUBIC, Image.LANCZOS, Image.BOX):
            alt = np.asarray(Image.fromarray(corrected).resize((size, size), resample))
            assert (np.abs(out.astype(int) - alt.astype(int)) > 1).mean() > 0.03, resample
    # color_constancy=False: the plain resize, exactly
    np.testing.assert_array_equal(load_image(path, 64, False), _reference_cache_image(path, 64, False))


def test_cache_with_and_without_colour_constancy_are_separate_files_with_the_documented_images(real_frame,
                                                                                                tmp_path):
    """build_cache stores row i of the frame as image i, keyed by (fingerprint, size, colour constancy, p): the
    corrected and the plain cache are two files with different keys and different contents."""
    import hashlib
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
    assert (k_sog, k_raw) == ("fp-test-32px-sog-e76338ef", "fp-test-32px-raw-492fd0b5")  # names of existing caches
    # byte for byte the files the kit wrote before its cache was rewritten (sha256 of each .npy)
    pinned = {k_sog: "df5753183d960de84b4a7175f16bf598bd7164daac78bde1064a0b4f0a62ad9a",
              k_raw: "ee5f683d983f5a7a487574ea378cfdf6034c0416aec48bd3e19167ee9b1c4122"}
    for key, digest in pinned.items():
        assert hashlib.sha256((tmp_path / f"{key}.npy").read_bytes()).hexdigest() == digest, key
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
