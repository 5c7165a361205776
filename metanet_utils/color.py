"""Colour constancy: Shades of Gray (Finlayson & Trezzi 2004), the kit's reading of the paper's reference [19].

Per channel the light colour is the Minkowski p-mean ``e_c = mean(I_c ** p) ** (1 / p)`` (p = 1 Gray World, 6 Shades
of Gray, ``np.inf`` max-RGB); each channel is multiplied by ``rms(e) / e_c``, so a colour cast becomes a change of
brightness only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .data import read_rgb


def estimate_illuminant(image: np.ndarray, p: float = 6) -> np.ndarray:
    """The light colour ``e`` (float64 ``(3,)``) of a uint8 RGB image ``HxWx3`` (``(N, 3)`` of ``NxHxWx3``).

    >>> estimate_illuminant(np.array([[[10, 20, 0], [30, 20, 0]]], np.uint8), p=1).tolist()
    [20.0, 20.0, 0.0]
    """
    ok = isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim in (3, 4)
    if not (ok and image.shape[-1] == 3 and image.shape[-3] * image.shape[-2] > 0):
        raise ValueError(f"image must be a uint8 RGB array HxWx3 or NxHxWx3 with pixels, got "
                         f"{getattr(image, 'dtype', type(image).__name__)} of shape {getattr(image, 'shape', '?')}")
    if not (isinstance(p, (int, float, np.number)) and (1 <= p <= 100 or p == np.inf)):
        raise ValueError(f"p must be in [1, 100] (1: Gray World, 6: Shades of Gray) or np.inf (max-RGB), got {p!r}")
    if p == np.inf:
        return image.max(axis=(-3, -2)).astype(np.float64)
    x = np.power(image, p, dtype=np.float64)  # summed over rows, then columns: fast
    return (x.sum(axis=-3).sum(axis=-2) / (x.shape[-3] * x.shape[-2])) ** (1 / p)


def shades_of_gray(image: np.ndarray, p: float = 6) -> np.ndarray:
    """Colour-correct a uint8 RGB image ``HxWx3`` (or each of ``NxHxWx3``): each channel times ``rms(e) / e_c``.

    >>> img = np.full((4, 4, 3), 100, np.uint8)
    >>> img[..., 0] = 150                       # a reddish cast
    >>> shades_of_gray(img)[0, 0].tolist()      # gray; brightness = RMS of (150, 100, 100)
    [119, 119, 119]
    """
    e = estimate_illuminant(image, p)
    rms = np.sqrt(np.mean(e ** 2, axis=-1, keepdims=True))
    gain = np.divide(rms, e, out=np.ones_like(e), where=e > 0).astype(np.float32)
    out = image * gain[..., None, None, :]
    return np.rint(out, out=out).clip(0, 255, out=out).astype(np.uint8)


def color_stats(images: pd.DataFrame | Sequence[str | Path], p: float = 6, *, n: int | None = 300,
                seed: int = 0) -> pd.DataFrame:
    """Per image (at most ``n``, drawn with ``seed``): ``image_id``, ``dx``, the mean ``R, G, B`` and chromaticities
    ``r = R / (R + G + B)``, ``g``, each ``_before`` and ``_after`` :func:`shades_of_gray`."""
    frame = images if isinstance(images, pd.DataFrame) else pd.DataFrame({"path": [str(q) for q in images]})
    if n is not None and len(frame) > n:
        frame = frame.sample(n, random_state=seed)
    rows = []
    for r in frame.itertuples():
        img = read_rgb(r.path)
        row = {"image_id": getattr(r, "image_id", Path(r.path).stem), "dx": str(getattr(r, "dx", ""))}
        for when, arr in (("before", img), ("after", shades_of_gray(img, p))):
            m = arr.reshape(-1, 3).mean(axis=0)
            row |= {f"{c}_{when}": v for c, v in zip("RGB", m)}
            row |= {f"r_{when}": m[0] / max(m.sum(), 1e-9), f"g_{when}": m[1] / max(m.sum(), 1e-9)}
        rows.append(row)
    return pd.DataFrame(rows)


def chromaticity_spread(stats: pd.DataFrame) -> pd.DataFrame:
    """Rows ``before, after`` of :func:`color_stats`: sample sd of ``r`` and ``g``, mean distance from gray."""
    out = {}
    for when in ("before", "after"):
        r, g = stats[f"r_{when}"], stats[f"g_{when}"]
        out[when] = {"sd_r": r.std(), "sd_g": g.std(), "mean_distance_from_gray": np.hypot(r - 1 / 3, g - 1 / 3).mean()}
    return pd.DataFrame(out).T
