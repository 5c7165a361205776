"""One loaded data set: metadata rows, fingerprint, and the image caches and folds, built once per process."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .cache import build_cache
from .constants import DX_TO_INDEX
from .data import DataError, data_fingerprint, find_data_dir, load_metadata, stratified_subsample
from .metadata import encode
from .splits import load_or_make_folds


@dataclass
class Dataset:
    """Metadata rows (``df``) and the arrays derived from them, built when first asked for."""

    df: pd.DataFrame
    data_dir: Path
    kind: str  # "real" or "sample" (the shipped sample)
    fingerprint: str
    _built: dict = field(default_factory=dict, repr=False)

    @property
    def labels(self) -> np.ndarray:
        return self.df["dx"].map(DX_TO_INDEX).to_numpy(dtype=np.int64)

    @property
    def image_ids(self) -> list[str]:
        return [str(i) for i in self.df["image_id"]]

    def images(self, size: int, color_constancy: bool = True, progress: bool = True) -> np.ndarray:
        """``N x size x size x 3`` uint8, memory-mapped from the on-disk cache."""
        key = ("images", size, color_constancy)
        if key not in self._built:
            self._built[key] = build_cache(self.df, size, color_constancy, fingerprint=self.fingerprint,
                                           progress=progress)
        return self._built[key]

    def folds(self, n_folds: int = 5, scheme: str = "image", seed: int = 0) -> np.ndarray:
        """Fold index per row, saved once per data set and scheme under ``results/folds``."""
        key = ("folds", n_folds, scheme, seed)
        if key not in self._built:
            self._built[key] = load_or_make_folds(self.df, n_folds, scheme, seed, key=self.fingerprint)
        return self._built[key]

    def meta(self, features: tuple[str, ...]) -> tuple[np.ndarray, list[str]]:
        """The encoded metadata and its feature names (statistics of all rows)."""
        return encode(self.df, features=tuple(features))


def open_dataset(data_dir: str | Path | None = None, *, max_images: int | None = None, seed: int = 0,
                 data: str = "auto") -> Dataset:
    """Find, load and subsample the data to about ``max_images``; ``data="real"`` refuses the shipped sample."""
    loc = find_data_dir(data_dir, sample_fallback=data == "auto")
    if data == "real" and loc.kind == "sample":
        raise DataError(f"{loc.path} is the kit's small sample, but this profile needs the full HAM10000")
    df = stratified_subsample(load_metadata(loc.path), max_images, seed=seed)
    return Dataset(df=df, data_dir=loc.path, kind=loc.kind, fingerprint=data_fingerprint(df))


def profile_dataset(profile, data_dir: str | Path | None = None) -> Dataset:
    """The data set a profile trains on."""
    return open_dataset(data_dir, max_images=profile.max_images, seed=profile.seed, data=profile.data)
