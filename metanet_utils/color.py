"""Colour constancy: Shades of Gray (Finlayson & Trezzi 2004), as used for dermoscopy by
Barata, Celebi & Marques (2014). The paper "applied the color constancy algorithm [19]" (Barata et
al.) without naming the variant; Shades of Gray with Minkowski norm p = 6 is the kit's reading of [19].

The illuminant of an image is estimated per channel as the Minkowski p-mean of the pixel
values, ``e_c = (mean_x I_c(x)^p)^(1/p)``, normalised to unit length. Each channel is
then multiplied by ``1 / (e_c * sqrt(3))``: a gray illuminant ``(1, 1, 1) / sqrt(3)`` gives
gain 1 and leaves the image unchanged, and a colour cast becomes a change of overall
brightness only. ``p = 1`` is Gray World, ``p = inf`` is max-RGB (White Patch).

The illuminant comes from each image's exact per-channel histogram (uint8 has 256
values), evaluated in float64 in log space, so any p is exact and free of overflow; the
correction is the float32 product ``value * gain`` (rounded half to even, clipped), applied
through a 256-entry lookup table per channel. A batch ``N x H x W x 3`` is
corrected image by image (each its own illuminant) in one call.

Over a set of image files, :func:`color_stats` gives each image's mean colour before and after
the correction and :func:`chromaticity_spread` how much those colours vary (notebook 03).

Example:
    >>> import numpy as np
    >>> img = np.full((4, 4, 3), 100, np.uint8)
    >>> img[..., 0] = 150                       # a reddish cast
    >>> out = shades_of_gray(img, p=6)
    >>> out[0, 0].tolist()                      # neutral; brightness = RMS of (150, 100, 100)
    [119, 119, 119]
    >>> estimate_illuminant(img, p=1).round(3).tolist()
    [0.728, 0.485, 0.485]
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

__all__ = ["estimate_illuminant", "shades_of_gray", "color_stats", "chromaticity_spread"]

_SQRT3 = math.sqrt(3.0)


def _check_image(image: np.ndarray) -> tuple[np.ndarray, bool]:
    """Validate a uint8 ``HxWx3`` or ``NxHxWx3`` array; return it as a batch and whether it was one."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got dtype {image.dtype} with shape {image.shape}")
    if image.ndim not in (3, 4) or image.shape[-1] != 3:
        raise ValueError(f"image must have shape HxWx3 or NxHxWx3 (RGB), got shape {image.shape}")
    if image.shape[-3] == 0 or image.shape[-2] == 0:
        raise ValueError(f"image has no pixels: shape {image.shape}")
    if image.ndim == 3:
        return image[None], False
    return image, True


def _check_p(p: float) -> float:
    try:
        p = float(p)
    except (TypeError, ValueError):
        raise ValueError(f"p must be a number >= 1 or np.inf, got {p!r}") from None
    if not (p >= 1):  # also rejects NaN
        raise ValueError(f"p must be >= 1 (1: Gray World, inf: max-RGB), got {p}")
    return p


def _histograms(batch: np.ndarray, mask_saturated: bool, saturation_threshold: int) -> np.ndarray:
    """Per-image, per-channel 256-bin histograms of a uint8 ``NxHxWx3`` batch: int64 ``(N, 3, 256)``.

    With ``mask_saturated`` only pixels whose channels are all below the threshold count
    (an image with none left counts all its pixels, with a warning).
    """
    n = batch.shape[0]
    pix = batch.reshape(n, -1, 3)
    hist = np.zeros((n, 3, 256), dtype=np.int64)
    n_empty = 0
    for i in range(n):
        px = pix[i]
        for c in range(3):
            hist[i, c] = np.bincount(px[:, c], minlength=256)
        if mask_saturated:
            sat = np.maximum(np.maximum(px[:, 0], px[:, 1]), px[:, 2]) >= saturation_threshold
            if sat.all():
                n_empty += 1
            elif sat.any():
                sub = np.compress(sat, px, axis=0)
                for c in range(3):
                    hist[i, c] -= np.bincount(sub[:, c], minlength=256)
    if n_empty:
        warnings.warn(
            f"{n_empty} image(s) have every pixel at or above {saturation_threshold} in some channel: "
            "their illuminant is estimated from all pixels",
            stacklevel=3,
        )
    return hist


_LOG_V = np.log(np.maximum(np.arange(256, dtype=np.float64), 1.0))


def _illuminant(batch: np.ndarray, p: float, mask_saturated: bool, saturation_threshold: int) -> np.ndarray:
    """Unit illuminant per image of a uint8 ``NxHxWx3`` batch: float64 ``(N, 3)``.

    Works on the exact per-channel histograms (uint8 input has 256 values), so the p-mean
    ``(sum_v h_c(v) v^p / count)^(1/p)`` is evaluated in float64 in log space, free of
    overflow, underflow or rounding in the pixel sums, for any p.
    """
    hist = _histograms(batch, mask_saturated, saturation_threshold)  # (N, 3, 256)
    count = hist[:, :1, :].sum(axis=2)  # (N, 1): pixels used per image
    nonzero = (hist > 0) & (np.arange(256) > 0)  # bins that contribute to the sum
    if math.isinf(p):
        e = np.where(nonzero, np.arange(256, dtype=np.float64), 0.0).max(axis=2)
    else:
        terms = np.where(nonzero, np.log(np.maximum(hist, 1)) + p * _LOG_V, -np.inf)
        top = terms.max(axis=2, keepdims=True)
        top_safe = np.where(np.isfinite(top), top, 0.0)
        with np.errstate(divide="ignore"):  # log(0) = -inf for an all-zero channel
            log_sum = np.log(np.exp(terms - top_safe).sum(axis=2)) + top_safe[..., 0]
        e = np.exp((log_sum - np.log(count)) / p)  # 0 for an all-zero channel
    norm = np.linalg.norm(e, axis=1, keepdims=True)
    gray = np.full((1, 3), 1.0 / _SQRT3)
    # a black image has no colour information: call its illuminant gray
    return np.where(norm > 0, e / np.where(norm > 0, norm, 1.0), gray)


def estimate_illuminant(
    image: np.ndarray,
    p: float = 6,
    mask_saturated: bool = False,
    saturation_threshold: int = 250,
) -> np.ndarray:
    """Shades-of-Gray estimate of the illuminant colour, as a unit RGB vector.

    Args:
        image: uint8 RGB image ``HxWx3``, or a batch ``NxHxWx3``.
        p: Minkowski norm (>= 1); 1 is Gray World, ``np.inf`` is max-RGB.
        mask_saturated: leave out of the estimate the pixels with any channel
            ``>= saturation_threshold`` (specular highlights, clipped areas). An image with
            no pixel left falls back to all pixels, with a warning.
        saturation_threshold: threshold for ``mask_saturated``.

    Returns:
        float64 array ``(3,)`` (or ``(N, 3)`` for a batch) of unit length. A black image
        gets the gray illuminant ``(1, 1, 1) / sqrt(3)``.

    Raises:
        ValueError: wrong dtype or shape (the message gives the shape), or p < 1.

    Example:
        >>> img = np.zeros((2, 2, 3), np.uint8); img[..., 1] = 200
        >>> estimate_illuminant(img, p=np.inf).tolist()
        [0.0, 1.0, 0.0]
    """
    batch, is_batch = _check_image(image)
    e = _illuminant(batch, _check_p(p), mask_saturated, saturation_threshold)
    return e if is_batch else e[0]


def shades_of_gray(
    image: np.ndarray,
    p: float = 6,
    mask_saturated: bool = False,
    saturation_threshold: int = 250,
) -> np.ndarray:
    """Colour-correct an image (or a batch) with Shades of Gray.

    Each channel is multiplied by ``1 / (e_c * sqrt(3))`` where ``e`` is
    :func:`estimate_illuminant`'s unit vector; the result is rounded (half to even) and
    clipped to 0..255. A channel that is zero everywhere stays zero.

    Args:
        image: uint8 RGB image ``HxWx3``, or a batch ``NxHxWx3`` (each image gets its own
            illuminant).
        p: Minkowski norm (>= 1); the kit uses 6 (its reading of the paper's [19]); 1 is Gray World,
            ``np.inf`` max-RGB.
        mask_saturated: estimate the illuminant without the pixels having a channel
            ``>= saturation_threshold`` (they are still corrected).
        saturation_threshold: threshold for ``mask_saturated``.

    Returns:
        uint8 array of the input's shape.

    Raises:
        ValueError: wrong dtype or shape (the message gives the shape), or p < 1.

    Example:
        >>> img = np.full((2, 2, 3), 90, np.uint8)
        >>> bool((shades_of_gray(img) == img).all())   # a gray image is unchanged
        True
    """
    batch, is_batch = _check_image(image)
    e = _illuminant(batch, _check_p(p), mask_saturated, saturation_threshold)
    with np.errstate(divide="ignore"):
        gain = np.where(e > 0, 1.0 / (e * _SQRT3), 1.0).astype(np.float32)  # (N, 3)
    # uint8 in, uint8 out: the float32 product v * gain, rounded and clipped, for all 256
    # values v of each channel, applied as a lookup table (no full-size float temporaries)
    values = np.arange(256, dtype=np.float32)
    lut = np.clip(np.rint(values[None, None, :] * gain[:, :, None]), 0, 255).astype(np.uint8)  # (N, 3, 256)
    out = np.empty_like(batch)
    for i in range(batch.shape[0]):
        for c in range(3):
            np.take(lut[i, c], batch[i, ..., c], out=out[i, ..., c])
    return out if is_batch else out[0]


# ----------------------------------------------------------------------------- over a set of images


def color_stats(images: pd.DataFrame | Sequence[str | Path], p: float = 6, *, n: int | None = 300,
                seed: int = 0) -> pd.DataFrame:
    """Mean colour of each image before and after colour constancy.

    Args:
        images: a frame with ``path`` (and ``dx``, ``image_id``) or a list of paths.
        p: Minkowski norm of the correction (6: Shades of Gray, the kit's reading of the paper's [19]).
        n: use a random sample of at most ``n`` images (None: all).
        seed: random state of the sample.

    Returns:
        One row per image: ``image_id``, ``dx``, mean ``R, G, B`` before and after
        (``R_before`` ...), and the chromaticities ``r = R / (R + G + B)``, ``g = G / (R + G + B)``
        of the mean colour (``r_before``, ``g_before``, ``r_after``, ``g_after``).
    """
    from .data import read_rgb

    frame = images if isinstance(images, pd.DataFrame) else pd.DataFrame({"path": [str(q) for q in images]})
    if n is not None and len(frame) > n:
        frame = frame.sample(n, random_state=seed)
    rows = []
    for r in frame.itertuples():
        img = read_rgb(r.path)
        rec = {"image_id": getattr(r, "image_id", Path(r.path).stem), "dx": str(getattr(r, "dx", ""))}
        for when, arr in (("before", img), ("after", shades_of_gray(img, p=p))):
            m = arr.reshape(-1, 3).mean(axis=0)
            rec.update({f"{c}_{when}": v for c, v in zip("RGB", m)})
            rec.update({f"r_{when}": m[0] / max(m.sum(), 1e-9), f"g_{when}": m[1] / max(m.sum(), 1e-9)})
        rows.append(rec)
    return pd.DataFrame(rows)


def chromaticity_spread(stats: pd.DataFrame) -> pd.DataFrame:
    """How much the images' mean colours vary, before and after (from :func:`color_stats`).

    Returns:
        Index ``before, after``; columns: standard deviations of ``r`` and ``g``, and the mean
        distance of ``(r, g)`` from gray ``(1/3, 1/3)``.
    """
    out = {}
    for when in ("before", "after"):
        r, g = stats[f"r_{when}"], stats[f"g_{when}"]
        out[when] = {"sd_r": r.std(), "sd_g": g.std(),
                     "mean_distance_from_gray": np.hypot(r - 1 / 3, g - 1 / 3).mean()}
    return pd.DataFrame(out).T
