"""Cross-validation folds, the lesion leak they carry, and class weights of a training fold.

The paper says only "5-fold cross-validation". The kit's default, scheme ``"image"``, stratifies
the five folds by class at image level, as the authors' 2022 code does.
HAM10000 has several images of many lesions (10015 images of 7470 lesions), so an image
split puts images of one lesion on both sides: about 4 in 10 validation images then have
an image of the same lesion in training (:func:`lesion_leak`). Scheme ``"lesion"`` groups
by ``lesion_id`` (no lesion in two folds) while still stratifying by class.

Folds are a pure function of ``(image ids, labels, lesion ids, n_folds, scheme, seed)``:
rows are sorted by ``image_id`` before splitting, so the same data in another row order
gives every image the same fold. :func:`load_or_make_folds` saves them once per data
fingerprint and reuses them, so every run of a grid sees the same folds.

Example:
    >>> import pandas as pd
    >>> df = pd.DataFrame({"image_id": [f"ISIC_{i:07d}" for i in range(20)],
    ...                    "lesion_id": [f"L{i // 2}" for i in range(20)],
    ...                    "dx": ["nv", "mel"] * 10})
    >>> folds = make_folds(df, n_folds=2, scheme="lesion")
    >>> sorted(set(folds.tolist()))
    [0, 1]
    >>> float(lesion_leak(df, folds).loc["overall", "share"])
    0.0
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from . import paths as _paths
from .atomic import atomic_write_text
from .constants import DX_CODES, DX_TO_INDEX

__all__ = ["SCHEMES", "make_folds", "lesion_leak", "folds_path", "load_or_make_folds", "class_weights"]

#: Split schemes: ``image`` (stratified by class, the kit's default, as the authors' 2022 code) and ``lesion``
#: (also grouped by lesion).
SCHEMES: tuple[str, ...] = ("image", "lesion")

_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _labels(df: pd.DataFrame) -> np.ndarray:
    if "dx" not in df.columns:
        raise KeyError("column 'dx' not in the data")
    dx = df["dx"].astype("string").str.strip().str.lower()
    y = dx.map(DX_TO_INDEX)
    if y.isna().any():
        pos = int(np.flatnonzero(y.isna().to_numpy())[0])
        raise ValueError(f"unknown dx {df['dx'].iloc[pos]!r} in row {pos}; allowed: {list(DX_CODES)}")
    return y.to_numpy(dtype=np.int64)


def _check_ids(df: pd.DataFrame) -> np.ndarray:
    if "image_id" not in df.columns:
        raise KeyError("column 'image_id' not in the data")
    ids = df["image_id"].astype(str).to_numpy()
    if len(np.unique(ids)) != len(ids):
        dup = pd.Series(ids)[pd.Series(ids).duplicated()].iloc[0]
        raise ValueError(f"image_id must be unique; {dup!r} appears more than once")
    return ids


def make_folds(df: pd.DataFrame, n_folds: int = 5, scheme: str = "image", seed: int = 0) -> np.ndarray:
    """Assign each row to one of ``n_folds`` validation folds.

    Args:
        df: one row per image with ``image_id`` and ``dx`` (and ``lesion_id`` for ``lesion``).
        n_folds: number of folds (>= 2).
        scheme: ``"image"``: ``sklearn.model_selection.StratifiedKFold`` by ``dx`` (shuffled,
            ``random_state=seed``), the kit's default (the paper says only "5-fold
            cross-validation"; the authors' 2022 code stratifies at image level);
            ``"lesion"``: ``StratifiedGroupKFold`` by ``dx`` grouped by ``lesion_id``
            (shuffled, ``random_state=seed``), so no lesion is in two folds.
        seed: random state of the shuffle.

    Returns:
        int64 array of length ``len(df)``: the fold of each row, aligned with ``df``'s rows.
        Rows are split in ``image_id`` order, so the result does not depend on row order.

    Raises:
        ValueError: unknown scheme, ``n_folds < 2``, duplicate image ids or unknown ``dx``.

    Example:
        >>> df = pd.DataFrame({"image_id": list("abcdef"), "dx": ["nv"] * 3 + ["mel"] * 3})
        >>> folds = make_folds(df, n_folds=3)
        >>> np.bincount(folds).tolist()
        [2, 2, 2]
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, not {scheme!r}")
    if int(n_folds) != n_folds or n_folds < 2:
        raise ValueError(f"n_folds must be an integer >= 2, not {n_folds!r}")
    n_folds = int(n_folds)
    ids = _check_ids(df)
    y = _labels(df)
    order = np.argsort(ids, kind="stable")
    y_sorted = y[order]
    x_dummy = np.zeros((len(df), 1))
    with warnings.catch_warnings():
        # sklearn warns when a class has fewer members than folds; we warn once ourselves
        warnings.filterwarnings("ignore", message=".*least populated class.*")
        if scheme == "image":
            splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
            splits = splitter.split(x_dummy, y_sorted)
        else:
            if "lesion_id" not in df.columns:
                raise KeyError("scheme 'lesion' needs a 'lesion_id' column")
            groups = df["lesion_id"].astype(str).to_numpy()[order]
            splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
            splits = splitter.split(x_dummy, y_sorted, groups)
        folds_sorted = np.full(len(df), -1, dtype=np.int64)
        for k, (_, val) in enumerate(splits):
            folds_sorted[val] = k
    counts = np.bincount(y, minlength=len(DX_CODES))
    few = [DX_CODES[c] for c in np.flatnonzero((counts > 0) & (counts < n_folds))]
    if few:
        warnings.warn(f"class(es) {few} have fewer than {n_folds} images: some folds lack them", stacklevel=2)
    folds = np.empty_like(folds_sorted)
    folds[order] = folds_sorted
    return folds


def lesion_leak(df: pd.DataFrame, folds: Sequence[int] | np.ndarray) -> pd.DataFrame:
    """How many validation images have an image of the same lesion in training, per fold.

    Args:
        df: one row per image with ``lesion_id``.
        folds: fold index of each row.

    Returns:
        A DataFrame indexed by fold (then ``"overall"``), columns ``n_val``,
        ``n_val_with_lesion_in_train`` and ``share`` (their ratio; overall = pooled counts).

    Example:
        >>> df = pd.DataFrame({"lesion_id": ["a", "a", "b", "c"]})
        >>> lesion_leak(df, [0, 1, 0, 1])["share"].tolist()
        [0.5, 0.5, 0.5]
    """
    if "lesion_id" not in df.columns:
        raise KeyError("column 'lesion_id' not in the data")
    folds = np.asarray(folds)
    if folds.shape != (len(df),):
        raise ValueError(f"folds has shape {folds.shape}; expected ({len(df)},), one fold per row")
    lesion = pd.factorize(df["lesion_id"].astype(str))[0]
    n_les = int(lesion.max()) + 1 if lesion.size else 0
    rows = []
    fold_ids = np.unique(folds)
    # images of each lesion in each fold: a (n_lesions, n_folds) count table
    fi = np.searchsorted(fold_ids, folds)
    table = np.zeros((n_les, len(fold_ids)), dtype=np.int64)
    np.add.at(table, (lesion, fi), 1)
    total = table.sum(axis=1)
    for j, f in enumerate(fold_ids):
        val = fi == j
        in_train = (total - table[:, j]) > 0
        n_val = int(val.sum())
        n_leak = int(in_train[lesion[val]].sum())
        rows.append((f.item() if hasattr(f, "item") else f, n_val, n_leak))
    n_val_all = sum(r[1] for r in rows)
    n_leak_all = sum(r[2] for r in rows)
    rows.append(("overall", n_val_all, n_leak_all))
    out = pd.DataFrame(rows, columns=["fold", "n_val", "n_val_with_lesion_in_train"]).set_index("fold")
    out["share"] = out["n_val_with_lesion_in_train"] / out["n_val"].where(out["n_val"] > 0)
    return out


def folds_path(key: str, scheme: str, n_folds: int, seed: int, folds_dir: str | Path | None = None) -> Path:
    """Where :func:`load_or_make_folds` keeps a split: ``<folds_dir>/<key>-<scheme>-<n_folds>-s<seed>.csv``.

    Example:
        >>> folds_path("ham10000-abc", "image", 5, 0, "/tmp/f").as_posix()
        '/tmp/f/ham10000-abc-image-5-s0.csv'
    """
    if not _KEY_RE.match(key):
        raise ValueError(f"key {key!r} must be a file-name-safe fingerprint (letters, digits, '.', '_', '-')")
    base = Path(folds_dir) if folds_dir is not None else _paths.folds_dir()
    return base / f"{key}-{scheme}-{int(n_folds)}-s{int(seed)}.csv"


def load_or_make_folds(
    df: pd.DataFrame,
    n_folds: int,
    scheme: str,
    seed: int,
    key: str,
    folds_dir: str | Path | None = None,
) -> np.ndarray:
    """Folds saved once and reused: read ``folds_path(...)`` if it exists, else make and save them.

    The file is a CSV ``image_id,fold`` written atomically (never half-written). On reading,
    its image ids must be exactly those of ``df`` (any row order); the folds are returned
    aligned with ``df``'s rows.

    Args:
        df: one row per image (``image_id``, ``dx``, and ``lesion_id`` for ``lesion``).
        n_folds: number of folds.
        scheme: ``"image"`` or ``"lesion"`` (see :func:`make_folds`).
        seed: random state of the split.
        key: a fingerprint of the data given by the caller (e.g. dataset name + hash of
            the metadata), so different data never share a file.
        folds_dir: folder of the files; default ``paths.folds_dir()`` (``results/folds``).

    Returns:
        int64 fold index per row of ``df``.

    Raises:
        ValueError: the saved file does not match ``df`` (other image ids, duplicates,
            folds out of range) or is malformed; the message names the file to delete.

    Example:
        >>> import tempfile
        >>> df = pd.DataFrame({"image_id": list("abcd"), "dx": ["nv", "mel"] * 2})
        >>> d = tempfile.mkdtemp()
        >>> a = load_or_make_folds(df, 2, "image", 0, key="toy", folds_dir=d)
        >>> b = load_or_make_folds(df.iloc[::-1], 2, "image", 0, key="toy", folds_dir=d)
        >>> bool((a[::-1] == b).all())
        True
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, not {scheme!r}")
    path = folds_path(key, scheme, n_folds, seed, folds_dir)
    ids = _check_ids(df)
    if path.is_file():
        return _read_folds(path, ids, n_folds)
    folds = make_folds(df, n_folds=n_folds, scheme=scheme, seed=seed)
    table = pd.DataFrame({"image_id": ids, "fold": folds}).sort_values("image_id", kind="stable")
    atomic_write_text(path, table.to_csv(index=False))
    return folds


def _read_folds(path: Path, ids: np.ndarray, n_folds: int) -> np.ndarray:
    hint = f"delete {path} to remake it, or pass the key of this data"
    try:
        saved = pd.read_csv(path, dtype={"image_id": str})
    except Exception as e:  # noqa: BLE001 - any parse error is reported the same way
        raise ValueError(f"cannot read saved folds {path}: {e}; {hint}") from e
    if list(saved.columns) != ["image_id", "fold"]:
        raise ValueError(f"saved folds {path} has columns {list(saved.columns)}, expected ['image_id', 'fold']; {hint}")
    if saved["image_id"].duplicated().any():
        raise ValueError(f"saved folds {path} lists an image twice; {hint}")
    saved_ids = set(saved["image_id"])
    want = set(ids.tolist())
    if saved_ids != want:
        missing = sorted(want - saved_ids)
        extra = sorted(saved_ids - want)
        raise ValueError(
            f"saved folds {path} do not match the data: {len(missing)} image(s) of the data are not in it "
            f"(e.g. {missing[:3]}), {len(extra)} image(s) in it are not in the data (e.g. {extra[:3]}); {hint}"
        )
    fold_map = pd.Series(saved["fold"].to_numpy(), index=saved["image_id"])
    folds = fold_map.reindex(ids).to_numpy()
    if not np.issubdtype(folds.dtype, np.integer) or folds.min() < 0 or folds.max() >= n_folds:
        raise ValueError(f"saved folds {path} hold fold values outside 0..{n_folds - 1}; {hint}")
    return folds.astype(np.int64)


def class_weights(labels: Sequence[int] | Sequence[str] | np.ndarray, n_classes: int = 7) -> np.ndarray:
    """Inverse-frequency class weights of a training fold, for the weighted cross-entropy.

    ``w_c = n / (k * n_c)`` where ``n`` is the number of training labels, ``n_c`` that of
    class ``c`` and ``k`` the number of classes present. Every present class then carries
    the same total weight ``n / k`` and the mean weight per training image is 1, so the
    loss keeps its scale (this is sklearn's ``compute_class_weight("balanced")``). A class
    absent from ``labels`` gets weight 0, with a warning.

    Args:
        labels: class index per training image (``0 .. n_classes - 1``, official ISIC order),
            or ``dx`` strings (``"nv"``, ...).
        n_classes: length of the weight vector.

    Returns:
        float64 array of shape ``(n_classes,)``.

    Example:
        >>> class_weights([0, 0, 0, 1], n_classes=2).tolist()
        [0.6666666666666666, 2.0]
    """
    y = np.asarray(labels)
    if y.dtype.kind in "OUS":
        vals = [str(v).strip().lower() for v in y.ravel()]
        bad = [v for v in vals if v not in DX_TO_INDEX]
        if bad:
            raise ValueError(f"unknown dx label {bad[0]!r}; allowed: {list(DX_CODES)}")
        y = np.asarray([DX_TO_INDEX[v] for v in vals], dtype=np.int64)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"labels must be a non-empty 1-d sequence, got shape {y.shape}")
    if y.dtype.kind not in "iu" or y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"labels must be integers in 0..{n_classes - 1}")
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    present = counts > 0
    k = int(present.sum())
    w = np.zeros(n_classes, dtype=np.float64)
    w[present] = y.size / (k * counts[present])
    if not present.all():
        warnings.warn(
            f"class(es) {np.flatnonzero(~present).tolist()} absent from the training labels: weight 0",
            stacklevel=2,
        )
    return w
