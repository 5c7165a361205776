"""Cross-validation folds, the lesion leak they carry, and the class weights of a training fold.

The paper says only "5-fold cross-validation". Scheme ``"image"`` (the default, as the authors' 2022 code) stratifies
by class at image level; HAM10000 has 10015 images of 7470 lesions, so about 4 in 10 validation images then have an
image of the same lesion in training (:func:`lesion_leak`). Scheme ``"lesion"`` also groups by ``lesion_id``.

Example:
    >>> df = pd.DataFrame({"image_id": [f"ISIC_{i:07d}" for i in range(20)],
    ...                    "lesion_id": [f"L{i // 2}" for i in range(20)], "dx": ["nv", "mel"] * 10})
    >>> folds = make_folds(df, n_folds=2, scheme="lesion")
    >>> np.bincount(folds).tolist(), float(lesion_leak(df, folds).loc["overall", "share"])
    ([10, 10], 0.0)
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from . import paths
from .atomic import atomic_write_text
from .config import SPLIT_SCHEMES
from .evaluate import labels_to_indices


def _image_ids(df: pd.DataFrame) -> np.ndarray:
    ids = df["image_id"].astype(str)
    if ids.duplicated().any():
        raise ValueError(f"image_id must be unique; {ids[ids.duplicated()].iloc[0]!r} appears more than once")
    return ids.to_numpy()


def make_folds(df: pd.DataFrame, n_folds: int = 5, scheme: str = "image", seed: int = 0) -> np.ndarray:
    """The validation fold of each row: sklearn's ``StratifiedKFold`` by ``dx`` (``"image"``), or
    ``StratifiedGroupKFold`` grouped by ``lesion_id``, split in ``image_id`` order (row order does not matter)."""
    if scheme not in SPLIT_SCHEMES:
        raise ValueError(f"scheme must be one of {SPLIT_SCHEMES}, not {scheme!r}")
    if int(n_folds) != n_folds or n_folds < 2:
        raise ValueError(f"n_folds must be an integer >= 2, not {n_folds!r}")
    if scheme == "lesion" and "lesion_id" not in df.columns:
        raise KeyError("scheme 'lesion' needs a 'lesion_id' column")
    ids, y = _image_ids(df), labels_to_indices(df["dx"])
    order = np.argsort(ids, kind="stable")
    groups = df["lesion_id"].astype(str).to_numpy()[order] if scheme == "lesion" else None
    kfold = (StratifiedKFold if scheme == "image" else StratifiedGroupKFold)(int(n_folds), shuffle=True,
                                                                             random_state=seed)
    folds = np.empty(len(df), dtype=np.int64)
    for k, (_, val) in enumerate(kfold.split(ids[order], y[order], groups)):
        folds[order[val]] = k
    return folds


def lesion_leak(df: pd.DataFrame, folds: Sequence[int]) -> pd.DataFrame:
    """Per fold and ``"overall"``: ``n_val``, ``n_val_with_lesion_in_train`` (a same-lesion image in training),
    ``share``."""
    folds = np.asarray(folds)
    if folds.shape != (len(df),):
        raise ValueError(f"folds has shape {folds.shape}; expected ({len(df)},), one fold per row")
    lesion = df["lesion_id"].astype(str).to_numpy()
    rows = {f.item(): (int((folds == f).sum()), int(np.isin(lesion[folds == f], lesion[folds != f]).sum()))
            for f in np.unique(folds)}
    out = pd.DataFrame.from_dict(rows, orient="index", columns=["n_val", "n_val_with_lesion_in_train"])
    out.loc["overall"] = out.sum()
    out.index.name = "fold"
    out["share"] = out["n_val_with_lesion_in_train"] / out["n_val"].where(out["n_val"] > 0)
    return out


def load_or_make_folds(df: pd.DataFrame, n_folds: int, scheme: str, seed: int, key: str,
                       folds_dir: str | Path | None = None) -> np.ndarray:
    """:func:`make_folds`, saved once per data set (``key``: its fingerprint) as ``image_id,fold`` in
    ``results/folds/<key>-<scheme>-<n_folds>-s<seed>.csv`` and reused, so every run sees the same folds."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", key):
        raise ValueError(f"key {key!r} must be a file-name-safe fingerprint (letters, digits, '.', '_', '-')")
    path = Path(folds_dir or paths.folds_dir()) / f"{key}-{scheme}-{int(n_folds)}-s{int(seed)}.csv"
    ids = _image_ids(df)
    if not path.is_file():
        folds = make_folds(df, n_folds=n_folds, scheme=scheme, seed=seed)
        table = pd.DataFrame({"image_id": ids, "fold": folds}).sort_values("image_id", kind="stable")
        atomic_write_text(path, table.to_csv(index=False))
        return folds
    hint = f"delete {path} to remake it, or pass the key of this data"
    saved = pd.read_csv(path, dtype={"image_id": str})
    if list(saved.columns) != ["image_id", "fold"] or saved["image_id"].duplicated().any():
        raise ValueError(f"saved folds {path} are not one 'image_id,fold' row per image; {hint}")
    if diff := sorted(set(ids) ^ set(saved["image_id"])):
        raise ValueError(f"saved folds {path} do not match the data: {len(diff)} image(s) are in only one of them "
                         f"(e.g. {diff[:3]}); {hint}")
    folds = saved.set_index("image_id")["fold"].reindex(ids).to_numpy()
    if folds.dtype.kind not in "iu" or folds.min() < 0 or folds.max() >= n_folds:
        raise ValueError(f"saved folds {path} hold fold values outside 0..{n_folds - 1}; {hint}")
    return folds.astype(np.int64)


def class_weights(labels: Sequence[int] | Sequence[str], n_classes: int = 7) -> np.ndarray:
    """Inverse-frequency class weights of a training fold, ``w_c = n / (k n_c)`` for ``k`` classes present (sklearn's
    "balanced"); an absent class gets 0, with a warning.

    >>> class_weights([0, 0, 0, 1], n_classes=2).tolist()
    [0.6666666666666666, 2.0]
    """
    y = np.asarray(labels)
    y = labels_to_indices(y) if y.dtype.kind in "OUS" else y
    if y.ndim != 1 or y.size == 0 or y.dtype.kind not in "iu" or y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"labels must be a non-empty 1-d sequence of class indices in 0..{n_classes - 1}")
    counts = np.bincount(y, minlength=n_classes)
    present = counts > 0
    if not present.all():
        warnings.warn(f"class(es) {np.flatnonzero(~present).tolist()} absent from the training labels: weight 0",
                      stacklevel=2)
    w = np.zeros(n_classes)
    w[present] = y.size / (present.sum() * counts[present])
    return w
