"""One loaded data set: metadata, its fingerprint, the image caches, folds and metadata vectors.

This is what the grid and a training run share: loading and caching happen once per
process, whatever number of runs use them.

Example:
    >>> from metanet_utils.dataset import open_dataset                       # doctest: +SKIP
    >>> ds = open_dataset("../shared/ham10000", max_images=400)               # doctest: +SKIP
    >>> ds.images(64, True).shape, ds.folds(5, "image").max()                # doctest: +SKIP
    ((416, 64, 64, 3), 4)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .constants import DX_TO_INDEX
from .cache import build_cache
from .metadata import encode
from .splits import load_or_make_folds
from .data import DataError, data_fingerprint, find_data_dir, load_metadata, stratified_subsample

__all__ = ["Dataset", "open_dataset", "profile_dataset"]


@dataclass
class Dataset:
    """Metadata rows (``df``) plus lazily built, memoised derived arrays."""

    df: pd.DataFrame
    data_dir: Path
    kind: str
    fingerprint: str
    _images: dict = field(default_factory=dict, repr=False)
    _folds: dict = field(default_factory=dict, repr=False)

    @property
    def labels(self) -> np.ndarray:
        return self.df["dx"].map(DX_TO_INDEX).to_numpy(dtype=np.int64)

    @property
    def image_ids(self) -> list[str]:
        return [str(i) for i in self.df["image_id"]]

    def images(self, size: int, color_constancy: bool = True, progress: bool = True) -> np.ndarray:
        """``N x size x size x 3`` uint8 (memory-mapped from the on-disk cache)."""
        key = (size, color_constancy)
        if key not in self._images:
            self._images[key] = build_cache(self.df, size, color_constancy, fingerprint=self.fingerprint,
                                            progress=progress)
        return self._images[key]

    def folds(self, n_folds: int = 5, scheme: str = "image", seed: int = 0) -> np.ndarray:
        """Fold index per row, saved once per data set and scheme under ``results/folds``."""
        key = (n_folds, scheme, seed)
        if key not in self._folds:
            self._folds[key] = load_or_make_folds(self.df, n_folds=n_folds, scheme=scheme, seed=seed,
                                                  key=self.fingerprint)
        return self._folds[key]

    def meta(self, features: tuple[str, ...]) -> tuple[np.ndarray, list[str]]:
        """The encoded metadata (paper's rules, statistics of the whole data set)."""
        return encode(self.df, features=tuple(features))


def open_dataset(data_dir: str | Path | None = None, *, max_images: int | None = None, seed: int = 0,
                 data: str = "auto") -> Dataset:
    """Find, load and (optionally) subsample the data.

    Args:
        data_dir: folder of the data; None looks in the default places (see
            :func:`metanet_utils.data.find_data_dir`).
        max_images: keep about this many images (whole lesions, class proportions kept).
        data: ``auto`` (the full data if found, else the shipped sample) or ``real`` (never the sample).
    """
    loc = find_data_dir(data_dir, sample_fallback=data == "auto")
    if data == "real" and loc.kind == "sample":
        raise DataError(f"{loc.path} is the kit's small sample, but this profile needs the full HAM10000")
    df = stratified_subsample(load_metadata(loc.path), max_images, seed=seed)
    return Dataset(df=df, data_dir=loc.path, kind=loc.kind, fingerprint=data_fingerprint(df))


def profile_dataset(profile, data_dir: str | Path | None = None) -> Dataset:
    """The data set a profile trains on: its data (the full set, or the shipped sample for ``data: auto``),
    subsampled to its ``max_images`` (whole lesions, same seed: every notebook opens the same images)."""
    return open_dataset(data_dir, max_images=profile.max_images, seed=profile.seed, data=profile.data)
