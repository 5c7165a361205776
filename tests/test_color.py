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
def test_neutral_gray_unchanged(p):
    img = np.full((10, 12, 3), 117, dtype=np.uint8)
    np.testing.assert_array_equal(shades_of_gray(img, p=p), img)
    np.testing.assert_allclose(estimate_illuminant(img, p=p), np.full(3, 1 / math.sqrt(3)))
    # a gray-balanced textured image too
    bal = _balanced_image()
    np.testing.assert_array_equal(shades_of_gray(bal, p=p), bal)


@pytest.mark.parametrize("p", [1, 6])
def test_known_cast_is_removed(p):
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


def test_gray_world_exact():
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


def test_p_inf_is_max_rgb():
    rng = np.random.default_rng(4)
    img = rng.integers(0, 120, size=(30, 30, 3)).astype(np.uint8)
    img[3, 4] = (200, 150, 90)
    mx = np.array([200.0, 150.0, float(img[..., 2].max())])  # the random part stays below 120
    assert img[..., 2].max() >= 90
    e = estimate_illuminant(img, p=np.inf)
    np.testing.assert_allclose(e, mx / np.linalg.norm(mx))
    np.testing.assert_array_equal(shades_of_gray(img, p=np.inf), _reference_sog(img, np.inf)[1])


@pytest.mark.parametrize("p", [1, 6, np.inf])
def test_real_image_vs_numpy(real_image, p):
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


def test_large_p_no_overflow(real_image):
    e = estimate_illuminant(real_image, p=1000)
    assert np.isfinite(e).all() and np.linalg.norm(e) == pytest.approx(1.0)
    # approaches max-RGB
    np.testing.assert_allclose(e, estimate_illuminant(real_image, p=np.inf), atol=0.01)


def test_batch_equals_loop(real_batch):
    out = shades_of_gray(real_batch, p=6)
    assert out.shape == real_batch.shape
    for i in range(len(real_batch)):
        np.testing.assert_array_equal(out[i], shades_of_gray(real_batch[i], p=6))
    e = estimate_illuminant(real_batch)
    assert e.shape == (4, 3)
    np.testing.assert_allclose(e[2], estimate_illuminant(real_batch[2]))
    # each image its own illuminant
    assert not np.allclose(e[0], e[1])


def test_saturated_mask_changes_estimate():
    rng = np.random.default_rng(5)
    img = rng.integers(60, 140, size=(40, 40, 3)).astype(np.uint8)
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
    # the masked pixels are still corrected
    out = shades_of_gray(img, p=6, mask_saturated=True)
    assert out.shape == img.shape
    # a lower threshold masks more
    assert not np.allclose(estimate_illuminant(img, mask_saturated=True, saturation_threshold=130), masked)


def test_all_saturated_falls_back_with_warning():
    img = np.full((4, 4, 3), 255, dtype=np.uint8)
    with pytest.warns(UserWarning, match="every pixel"):
        e = estimate_illuminant(img, mask_saturated=True)
    np.testing.assert_allclose(e, np.full(3, 1 / math.sqrt(3)))


def test_black_and_single_channel_images():
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
def test_input_validation(bad, match):
    with pytest.raises(ValueError, match=match):
        shades_of_gray(bad)
    with pytest.raises(ValueError, match=match):
        estimate_illuminant(bad)


def test_bad_p():
    img = np.full((2, 2, 3), 10, dtype=np.uint8)
    for p in (0.5, 0, -1, float("nan"), "six"):
        with pytest.raises(ValueError, match="p must"):
            shades_of_gray(img, p=p)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        shades_of_gray([[[1, 2, 3]]])  # type: ignore[arg-type]


def test_input_not_modified(real_image):
    copy = real_image.copy()
    shades_of_gray(real_image)
    np.testing.assert_array_equal(real_image, copy)


# --------------------------------------------------------------------------- statistics over a set of images


@pytest.fixture(scope="module")
def frame(tmp_path_factory) -> pd.DataFrame:
    """4 images of each class, JPEGs with a reddish cast."""
    return tinted_frame(tmp_path_factory.mktemp("imgs"))


def test_color_stats_and_chromaticity_spread(frame):
    stats = color_stats(frame, n=10)
    assert len(stats) == 10 and {"r_before", "g_after", "R_before", "B_after", "dx"} <= set(stats)
    spread = chromaticity_spread(stats)
    assert spread.loc["after", "sd_r"] < spread.loc["before", "sd_r"]
    assert spread.loc["after", "mean_distance_from_gray"] < spread.loc["before", "mean_distance_from_gray"]
    assert len(color_stats([frame["path"].iloc[0]], n=None)) == 1
