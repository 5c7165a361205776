"""Metadata preprocessing: the paper's 17-d vector (age, sex, body site), a metadata-only
baseline and how much each field tells about the diagnosis, and the tables notebook 02 shows
of them (:func:`example_rows`, :func:`fill_steps`, :func:`missing_table`, :func:`baseline_summary`).

The paper (Sec. 3.2) encodes the patient metadata of HAM10000 as a 17-d vector: age "normalized to
the range [0, 1]", gender as a 2-d and body location as a 14-d one-hot vector; a missing age is filled
with "the average of the provided age values", a missing gender or location with the most frequent one.
The kit's encoding (details the paper does not give are the kit's choices):

* ``age``: missing ages are replaced by the mean of the known ages, then the ages are
  min-max scaled to [0, 1] by the range of the known ages (the kit's choice of scaling; 1 column);
* ``sex``: one-hot over ``female, male``; ``unknown`` becomes the most frequent sex (2 columns);
* ``localization``: one-hot over the 14 body sites, in alphabetical order (the kit's choice,
  ``constants.SITES``); ``unknown`` becomes the most frequent site (14 columns).

The columns always come in this order, whatever order the fields are asked in, so a
subset (Table 3 of the paper) is a selection of columns of the full vector. The
statistics used to fill and scale (:class:`MetadataStats`) are fitted on the frame being
encoded by default, i.e. on the whole dataset: the kit's choice, since the paper does not say
which images its fill values come from; fit them on a training fold with :func:`fit_stats` and
pass them to :func:`encode` to apply them elsewhere.

Values of ``sex`` and ``localization`` are compared after stripping and lower-casing;
``unknown``, an empty string and NaN count as missing. Any other value not in the
vocabulary raises ``ValueError``.

Example:
    >>> import pandas as pd
    >>> df = pd.DataFrame({"image_id": ["a", "b", "c"], "age": [30.0, None, 50.0],
    ...                    "sex": ["male", "unknown", "Female"],
    ...                    "localization": ["back", "face", "unknown"]})
    >>> x, names = encode(df)
    >>> x.shape, names[:4]
    ((3, 17), ['age', 'sex=female', 'sex=male', 'localization=abdomen'])
    >>> x[:, 0].tolist()
    [0.0, 0.5, 1.0]
    >>> encode(df, features=("localization", "age"))[1][:2]
    ['age', 'localization=abdomen']
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .constants import CLASS_CODES, DX_CODES, DX_TO_INDEX, META_FIELDS, PAPER_ORDER, SEXES, SITES

_NO_METADATA = ("A folder with only the ground-truth CSV has labels but no age, sex or site: add HAM10000_metadata.csv "
                "(`python -m metanet_utils data download`), or train the image-only variant alone (fusions: [none]).")

__all__ = [
    "MetadataStats",
    "MISSING_TOKENS",
    "VOCABULARIES",
    "normalize_features",
    "feature_names",
    "meta_dim",
    "fit_stats",
    "encode",
    "metadata_baseline",
    "mutual_information",
    "mutual_information_bias",
    "mutual_information_table",
    "describe_mi_bias",
    "example_rows",
    "fill_steps",
    "missing_table",
    "baseline_summary",
]

#: Strings (after strip + lower) that count as a missing value, besides NaN / None.
MISSING_TOKENS: frozenset[str] = frozenset({"unknown", "", "nan", "none"})
#: Vocabulary of each categorical field, in the column order of the encoded vector.
VOCABULARIES: dict[str, tuple[str, ...]] = {"sex": SEXES, "localization": SITES}


@dataclass(frozen=True)
class MetadataStats:
    """Statistics used to fill missing values and scale ages.

    Attributes:
        age_mean: mean of the known ages (fills missing ages); None if not fitted.
        age_min: smallest known age (maps to 0).
        age_max: largest known age (maps to 1).
        sex_mode: most frequent known sex (fills ``unknown``).
        site_mode: most frequent known body site (fills ``unknown``).

    Example:
        >>> s = MetadataStats(50.0, 0.0, 85.0, "male", "back")
        >>> MetadataStats.from_dict(s.as_dict()) == s
        True
    """

    age_mean: float | None
    age_min: float | None
    age_max: float | None
    sex_mode: str | None
    site_mode: str | None

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable), e.g. for a run's ``config.json``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "MetadataStats":
        """Inverse of :meth:`as_dict`."""
        return cls(**{k: d.get(k) for k in ("age_mean", "age_min", "age_max", "sex_mode", "site_mode")})


# ----------------------------------------------------------------------------- features


def normalize_features(features: str | Iterable[str] | None) -> tuple[str, ...]:
    """Validate a metadata subset and put it in the fixed order ``age, sex, localization``.

    Args:
        features: field names (any order, duplicates allowed), a single name, or None
            (no metadata).

    Returns:
        The distinct fields in the order of ``constants.META_FIELDS``.

    Raises:
        ValueError: for a name that is not a metadata field.

    Example:
        >>> normalize_features(["localization", "age", "age"])
        ('age', 'localization')
    """
    if features is None:
        return ()
    if isinstance(features, str):
        features = (features,)
    given = [str(f).strip().lower() for f in features]
    bad = sorted({f for f in given if f not in META_FIELDS})
    if bad:
        raise ValueError(f"unknown metadata field(s) {bad}; allowed: {list(META_FIELDS)}")
    return tuple(f for f in META_FIELDS if f in given)


def feature_names(features: str | Iterable[str] | None = META_FIELDS) -> list[str]:
    """Names of the encoded columns, in the fixed order.

    Example:
        >>> feature_names(("sex",))
        ['sex=female', 'sex=male']
        >>> len(feature_names())
        17
    """
    names: list[str] = []
    for f in normalize_features(features):
        if f == "age":
            names.append("age")
        else:
            names.extend(f"{f}={v}" for v in VOCABULARIES[f])
    return names


def meta_dim(features: str | Iterable[str] | None = META_FIELDS) -> int:
    """Width of the encoded metadata vector (17 for all three fields, 0 for none).

    Example:
        >>> meta_dim(), meta_dim(("age", "sex")), meta_dim(())
        (17, 3, 0)
    """
    return len(feature_names(features))


# ----------------------------------------------------------------------------- cleaning


def _row_label(df: pd.DataFrame, pos: int) -> str:
    if "image_id" in df.columns:
        return f"image_id={df['image_id'].iloc[pos]!r}"
    return f"row {df.index[pos]!r}"


def _normalize_strings(s: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Strip + lower-case; returns (values as object array, missing mask)."""
    norm = s.astype("string").str.strip().str.lower()
    isna = norm.isna().to_numpy()
    vals = norm.to_numpy(dtype=object, na_value="")
    missing = isna | np.isin(vals, list(MISSING_TOKENS))
    return vals, missing


def _categorical_codes(df: pd.DataFrame, field: str) -> tuple[np.ndarray, np.ndarray]:
    """Index of each value in the field's vocabulary (-1 where missing), and the missing mask.

    Raises:
        KeyError: the column is absent.
        ValueError: a value is neither in the vocabulary nor missing.
    """
    if field not in df.columns:
        raise KeyError(f"metadata column {field!r} not in the data (columns: {list(df.columns)})")
    vocab = VOCABULARIES[field]
    vals, missing = _normalize_strings(df[field])
    lookup = {v: i for i, v in enumerate(vocab)}
    codes = np.fromiter((lookup.get(v, -1) for v in vals), dtype=np.int64, count=len(vals))
    bad = np.flatnonzero((codes < 0) & ~missing)
    if bad.size:
        pos = int(bad[0])
        raise ValueError(
            f"unknown {field} value {df[field].iloc[pos]!r} at {_row_label(df, pos)} "
            f"({bad.size} row(s) in all); allowed: {list(vocab)} or 'unknown' / missing"
        )
    codes[missing] = -1
    return codes, missing


def _ages(df: pd.DataFrame) -> np.ndarray:
    """Ages as float64 with NaN where missing.

    Raises:
        KeyError: no ``age`` column.
        ValueError: a non-numeric (and non-missing) or negative age.
    """
    if "age" not in df.columns:
        raise KeyError(f"metadata column 'age' not in the data (columns: {list(df.columns)})")
    s = df["age"]
    ages = pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    if s.dtype.kind not in "biuf":
        _, missing = _normalize_strings(s)
        bad = np.flatnonzero(np.isnan(ages) & ~missing)
        if bad.size:
            pos = int(bad[0])
            raise ValueError(f"non-numeric age {s.iloc[pos]!r} at {_row_label(df, pos)}")
    neg = np.flatnonzero(ages < 0)
    if neg.size:
        pos = int(neg[0])
        raise ValueError(f"negative age {ages[pos]} at {_row_label(df, pos)}")
    return ages


def _mode(codes: np.ndarray, vocab: Sequence[str]) -> str | None:
    known = codes[codes >= 0]
    if known.size == 0:
        return None
    counts = np.bincount(known, minlength=len(vocab))
    return vocab[int(np.argmax(counts))]  # ties -> first in vocabulary order


def fit_stats(df: pd.DataFrame, features: str | Iterable[str] | None = META_FIELDS) -> MetadataStats:
    """Fit the fill and scale statistics on ``df`` (known values only).

    Fields not asked for, or whose column is absent, or with no known value, get None;
    :func:`encode` raises if it then needs them. Ties for the mode go to the value that
    comes first in the vocabulary.

    Args:
        df: metadata with columns ``age``, ``sex``, ``localization`` (any of them).
        features: the fields to fit.

    Returns:
        The fitted :class:`MetadataStats`.

    Example:
        >>> df = pd.DataFrame({"age": [20.0, None, 60.0], "sex": ["male", "male", "female"],
        ...                    "localization": ["back", "unknown", "face"]})
        >>> fit_stats(df)
        MetadataStats(age_mean=40.0, age_min=20.0, age_max=60.0, sex_mode='male', site_mode='back')
    """
    fields = normalize_features(features)
    age_mean = age_min = age_max = None
    sex_mode = site_mode = None
    if "age" in fields and "age" in df.columns:
        a = _ages(df)
        a = a[~np.isnan(a)]
        if a.size:
            age_mean, age_min, age_max = float(a.mean()), float(a.min()), float(a.max())
    if "sex" in fields and "sex" in df.columns:
        sex_mode = _mode(_categorical_codes(df, "sex")[0], SEXES)
    if "localization" in fields and "localization" in df.columns:
        site_mode = _mode(_categorical_codes(df, "localization")[0], SITES)
    return MetadataStats(age_mean, age_min, age_max, sex_mode, site_mode)


# ----------------------------------------------------------------------------- encoding


def encode(
    df: pd.DataFrame,
    features: str | Iterable[str] | None = META_FIELDS,
    stats: MetadataStats | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Encode the metadata of each row as the paper's vector (or a subset of it).

    Args:
        df: one row per image, columns ``age``, ``sex``, ``localization`` (those asked for);
            ``image_id`` is used in error messages when present.
        features: the fields to encode, any order (the columns come in the fixed order
            ``age, sex, localization``); empty gives an ``(n, 0)`` array.
        stats: fill / scale statistics; None fits them on ``df`` itself (the kit's default).
            With statistics from another set, ages outside that set's range fall outside
            [0, 1] (they are not clipped).

    Returns:
        ``(x, names)``: ``x`` float32 of shape ``(len(df), meta_dim(features))``, and the
        column names (:func:`feature_names`).

    Raises:
        KeyError: a needed column is absent.
        ValueError: an unknown sex / site value (naming the row's image_id, the value and
            the allowed values), a non-numeric or negative age, or nothing to fill with.

    Example:
        >>> df = pd.DataFrame({"age": [20.0, 60.0], "sex": ["male", "unknown"],
        ...                    "localization": ["back", "face"]})
        >>> x, names = encode(df, ("sex", "age"))
        >>> names, x.tolist()
        (['age', 'sex=female', 'sex=male'], [[0.0, 0.0, 1.0], [1.0, 0.0, 1.0]])
    """
    fields = normalize_features(features)
    n = len(df)
    names = feature_names(fields)
    if stats is None:
        stats = fit_stats(df, fields)
    blocks: list[np.ndarray] = []
    for f in fields:
        if f == "age":
            ages = _ages(df)
            if stats.age_mean is None or stats.age_min is None or stats.age_max is None:
                from .data import DataError

                raise DataError(f"no image has a known age, so ages cannot be filled and scaled. {_NO_METADATA}")
            ages = np.where(np.isnan(ages), stats.age_mean, ages)
            span = stats.age_max - stats.age_min
            scaled = (ages - stats.age_min) / span if span > 0 else np.zeros_like(ages)
            blocks.append(scaled.astype(np.float32)[:, None])
        else:
            vocab = VOCABULARIES[f]
            codes, missing = _categorical_codes(df, f)
            mode = stats.sex_mode if f == "sex" else stats.site_mode
            if missing.any():
                if mode is None:
                    from .data import DataError

                    raise DataError(f"no image has a known {f}, so {int(missing.sum())} missing one(s) cannot be "
                                    f"filled. {_NO_METADATA}")
                if mode not in vocab:
                    raise ValueError(f"stats fill value {mode!r} for {f} not in {list(vocab)}")
                codes[missing] = vocab.index(mode)
            blocks.append(np.eye(len(vocab), dtype=np.float32)[codes])
    x = np.concatenate(blocks, axis=1) if blocks else np.zeros((n, 0), dtype=np.float32)
    return np.ascontiguousarray(x, dtype=np.float32), names


# ----------------------------------------------------------------------------- analyses


def _dx_labels(df: pd.DataFrame) -> np.ndarray:
    """Class index (official ISIC order) of each row's ``dx``."""
    if "dx" not in df.columns:
        raise KeyError("column 'dx' not in the data")
    vals, missing = _normalize_strings(df["dx"])
    y = np.fromiter((DX_TO_INDEX.get(v, -1) for v in vals), dtype=np.int64, count=len(vals))
    bad = np.flatnonzero(y < 0)
    if bad.size:
        pos = int(bad[0])
        raise ValueError(f"unknown dx {df['dx'].iloc[pos]!r} at {_row_label(df, pos)}; allowed: {list(DX_CODES)}")
    return y


def metadata_baseline(
    df: pd.DataFrame,
    folds: Sequence[int] | np.ndarray,
    features: str | Iterable[str] | None = META_FIELDS,
    C: float = 1.0,
    class_weight: str | Mapping[int, float] | None = "balanced",
    *,
    fit_stats_on: str = "all",
    max_iter: int = 2000,
    ddof: int = 1,
) -> dict[str, Any]:
    """Cross-validated metadata-only classifier: multinomial logistic regression on :func:`encode`.

    Shows how far the metadata alone goes (what the fusion has to add on top). For each
    fold ``k`` it trains on the rows with ``folds != k`` and predicts those with
    ``folds == k``.

    Args:
        df: metadata with ``dx`` and the fields asked for.
        folds: fold index of each row (e.g. from :func:`metanet_utils.splits.make_folds`).
        features: metadata fields (at least one).
        C: inverse L2 regularisation strength of ``sklearn.linear_model.LogisticRegression``.
        class_weight: passed to LogisticRegression (``"balanced"`` mirrors the weighted loss).
        fit_stats_on: ``"all"`` fills / scales with statistics of the whole ``df`` (the
            kit's default; the paper does not say); ``"train"`` fits them on each training fold.
        max_iter: solver iterations.
        ddof: delta degrees of freedom of the standard deviations over folds (1: sample std).

    Returns:
        A dict: ``features``, ``feature_names``, ``folds`` (fold ids), ``n_train``, ``n_val``,
        ``mcr`` (per fold, mean recall over the classes present in the validation fold, i.e.
        balanced accuracy), ``recall`` (per fold, dict class code -> recall, NaN for a class
        absent from the fold), ``confusion`` (per fold, 7x7 lists, rows true, columns
        predicted, official class order), ``mcr_mean``, ``mcr_std``, ``recall_mean``,
        ``recall_std`` (dicts by class code), ``ddof``.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> df = pd.DataFrame({"age": rng.integers(0, 17, 200) * 5.0,
        ...                    "sex": rng.choice(["male", "female"], 200),
        ...                    "localization": rng.choice(["back", "face"], 200),
        ...                    "dx": rng.choice(["nv", "mel"], 200)})
        >>> res = metadata_baseline(df, np.arange(200) % 2)
        >>> len(res["mcr"]), sorted(res["recall"][0])[:2]
        (2, ['AKIEC', 'BCC'])
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import confusion_matrix
    from threadpoolctl import threadpool_limits

    fields = normalize_features(features)
    if not fields:
        raise ValueError("metadata_baseline needs at least one metadata field")
    if fit_stats_on not in ("all", "train"):
        raise ValueError(f"fit_stats_on must be 'all' or 'train', not {fit_stats_on!r}")
    folds = np.asarray(folds)
    if folds.shape != (len(df),):
        raise ValueError(f"folds has shape {folds.shape}; expected ({len(df)},), one fold per row")
    y = _dx_labels(df)
    k = len(CLASS_CODES)
    x_all = encode(df, fields)[0] if fit_stats_on == "all" else None

    res: dict[str, Any] = {
        "features": list(fields), "feature_names": feature_names(fields), "folds": [],
        "n_train": [], "n_val": [], "mcr": [], "recall": [], "confusion": [], "ddof": ddof,
    }
    for f in np.unique(folds):
        tr, va = folds != f, folds == f
        if x_all is not None:
            x_tr, x_va = x_all[tr], x_all[va]
        else:
            st = fit_stats(df[tr], fields)
            x_tr, x_va = encode(df[tr], fields, st)[0], encode(df[va], fields, st)[0]
        clf = LogisticRegression(C=C, class_weight=class_weight, max_iter=max_iter)
        # a 17-feature problem: BLAS threads only contend (30x slower on a busy 2-core box)
        with threadpool_limits(limits=1):
            clf.fit(x_tr, y[tr])
        pred = clf.predict(x_va)
        cm = confusion_matrix(y[va], pred, labels=np.arange(k))
        support = cm.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            rec = np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)
        res["folds"].append(int(f) if np.issubdtype(folds.dtype, np.integer) else f)
        res["n_train"].append(int(tr.sum()))
        res["n_val"].append(int(va.sum()))
        res["mcr"].append(float(np.nanmean(rec)))
        res["recall"].append({c: float(r) for c, r in zip(CLASS_CODES, rec)})
        res["confusion"].append(cm.tolist())

    def _std(v: np.ndarray) -> float:
        v = v[~np.isnan(v)]
        return float(np.std(v, ddof=ddof)) if v.size > ddof else float("nan")

    mcr = np.asarray(res["mcr"], dtype=np.float64)
    res["mcr_mean"] = float(mcr.mean())
    res["mcr_std"] = _std(mcr)
    res["recall_mean"], res["recall_std"] = {}, {}
    for c in CLASS_CODES:
        r = np.asarray([d[c] for d in res["recall"]], dtype=np.float64)
        res["recall_mean"][c] = float(np.nanmean(r)) if np.any(~np.isnan(r)) else float("nan")
        res["recall_std"][c] = _std(r)
    return res


def _mi_bits(x: np.ndarray, y: np.ndarray) -> float:
    """Mutual information (bits) of two integer-coded variables, from their contingency table."""
    n = x.size
    if n == 0:
        return float("nan")
    xi = np.unique(x, return_inverse=True)[1].ravel()
    yi = np.unique(y, return_inverse=True)[1].ravel()
    nx, ny = int(xi.max()) + 1, int(yi.max()) + 1
    table = np.bincount(xi * ny + yi, minlength=nx * ny).reshape(nx, ny).astype(np.float64)
    p = table / n
    px = p.sum(axis=1, keepdims=True)
    py = p.sum(axis=0, keepdims=True)
    nz = p > 0
    return float(np.sum(p[nz] * np.log2(p[nz] / (px @ py)[nz])))


def _mi_codes(df: pd.DataFrame, age_bin: float,
              missing: str) -> tuple[np.ndarray, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """``dx`` codes and, per field present, ``(field codes, rows kept)`` as :func:`mutual_information` uses them."""
    if missing not in ("category", "drop", "fill"):
        raise ValueError(f"missing must be 'category', 'drop' or 'fill', not {missing!r}")
    if not age_bin > 0:
        raise ValueError(f"age_bin must be positive, not {age_bin}")
    y = _dx_labels(df)
    fields = [f for f in META_FIELDS if f in df.columns]
    stats = fit_stats(df, fields) if missing == "fill" else None
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for f in fields:
        if f == "age":
            a = _ages(df)
            miss = np.isnan(a)
            if stats is not None and stats.age_mean is not None:
                a = np.where(miss, stats.age_mean, a)
                miss = np.zeros_like(miss)
            codes = np.where(miss, -1, np.floor(np.where(miss, 0, a) / age_bin)).astype(np.int64)
        else:
            codes, miss = _categorical_codes(df, f)
            mode = None if stats is None else (stats.sex_mode if f == "sex" else stats.site_mode)
            if mode is not None:
                codes = np.where(miss, VOCABULARIES[f].index(mode), codes)
                miss = np.zeros_like(miss)
        out[f] = (codes, ~miss if missing == "drop" else np.ones(len(codes), dtype=bool))
    return y, out


def mutual_information(
    df: pd.DataFrame,
    age_bin: float = 5.0,
    missing: str = "category",
) -> pd.Series:
    """Mutual information of each metadata field with the diagnosis ``dx``, in bits.

    ``I(F; dx) = sum_{f,d} p(f,d) log2(p(f,d) / (p(f) p(d)))`` from the contingency table
    of counts. Ages are binned into ``age_bin``-year bins (``floor(age / age_bin)``); in
    HAM10000 the ages are already multiples of 5, so 5-year bins keep every value.
    For scale: the entropy of ``dx`` on HAM10000 is about 1.63 bits. This is the plug-in
    estimate, biased upwards by about ``(|F| - 1)(|dx| - 1) / (2 N ln 2)`` bits (under 0.01
    bits for each field on HAM10000, about 0.1 for the age of 800 images):
    :func:`mutual_information_bias` computes it, :func:`mutual_information_table` subtracts it.

    Args:
        df: metadata with ``dx`` and any of ``age``, ``sex``, ``localization``.
        age_bin: width of the age bins in years.
        missing: ``"category"`` keeps missing / unknown as a value of its own (its
            information counts), ``"drop"`` leaves those rows out for that field, ``"fill"``
            fills them as :func:`encode` does (mean age, most frequent sex / site).

    Returns:
        A Series indexed by the fields present in ``df`` (fixed order), named ``mi_bits``.

    Example:
        >>> df = pd.DataFrame({"dx": ["nv", "nv", "mel", "mel"], "sex": ["male", "male", "female", "female"]})
        >>> float(mutual_information(df)["sex"])
        1.0
    """
    y, fields = _mi_codes(df, age_bin, missing)
    out = {f: _mi_bits(codes[keep], y[keep]) for f, (codes, keep) in fields.items()}
    return pd.Series(out, name="mi_bits", dtype=np.float64)


def _miller_madow_bits(kx: int, ky: int, n: int) -> float:
    """``(K_x - 1)(K_y - 1) / (2 N ln 2)``: K the values seen, N the pairs."""
    return float((kx - 1) * (ky - 1) / (2.0 * n * math.log(2.0))) if n else float("nan")


def mutual_information_bias(
    df: pd.DataFrame,
    age_bin: float = 5.0,
    missing: str = "category",
) -> pd.Series:
    """The small-sample bias of :func:`mutual_information`'s plug-in estimate, in bits (Miller-Madow).

    The plug-in entropy of a variable with K values seen in N samples is low by about (K - 1) / (2N) nats
    (Miller 1955); for ``I = H(F) + H(dx) - H(F, dx)`` the three terms leave
    ``(K_F - 1)(K_dx - 1) / (2 N ln 2)`` bits when F and dx are independent: what the plug-in MI shows on
    average even where the field tells nothing. K counts the values seen (missing as a value with
    ``missing="category"``), N the rows used. A first-order term: with few images per cell of the
    ``K_F x K_dx`` table it underestimates the bias.

    Returns:
        A Series indexed like :func:`mutual_information`'s, named ``bias_bits``.

    Example:
        >>> df = pd.DataFrame({"dx": ["nv", "mel"] * 4, "sex": ["male"] * 4 + ["female"] * 4})
        >>> round(float(mutual_information_bias(df)["sex"]), 4)   # (2 - 1)(2 - 1) / (2 * 8 * ln 2)
        0.0902
    """
    return mutual_information_table(df, age_bin, missing)["bias_bits"].astype(np.float64)


def mutual_information_table(
    df: pd.DataFrame,
    age_bin: float = 5.0,
    missing: str = "category",
) -> pd.DataFrame:
    """Plug-in mutual information of each field with ``dx``, its Miller-Madow bias and the difference.

    Returns:
        One row per field: ``mi_bits`` (:func:`mutual_information`), ``bias_bits``
        (:func:`mutual_information_bias`), ``mi_corrected_bits`` (their difference, at least 0), ``n`` (rows
        used), ``values`` (K_F, values seen), ``classes`` (K_dx) and ``per_cell`` (n / (K_F K_dx): images per
        cell of the table; the bias term is reliable only with several). ``attrs``: ``h_dx`` (entropy of
        ``dx`` in bits), ``n`` (rows).

    Example:
        >>> df = pd.DataFrame({"dx": ["nv", "mel"] * 4, "sex": ["male"] * 4 + ["female"] * 4})
        >>> mutual_information_table(df).loc["sex", ["mi_bits", "n", "values", "classes"]].tolist()
        [0.0, 8.0, 2.0, 2.0]
    """
    y, fields = _mi_codes(df, age_bin, missing)
    rows = {}
    for f, (codes, keep) in fields.items():
        x, yy = codes[keep], y[keep]
        kx, ky = np.unique(x).size, np.unique(yy).size
        mi, bias = _mi_bits(x, yy), _miller_madow_bits(kx, ky, x.size)
        rows[f] = {"mi_bits": mi, "bias_bits": bias, "mi_corrected_bits": max(mi - bias, 0.0), "n": int(x.size),
                   "values": int(kx), "classes": int(ky), "per_cell": x.size / max(kx * ky, 1)}
    out = pd.DataFrame.from_dict(rows, orient="index",
                                 columns=["mi_bits", "bias_bits", "mi_corrected_bits", "n", "values", "classes",
                                          "per_cell"])
    counts = np.bincount(y, minlength=len(DX_CODES)) if y.size else np.zeros(0)
    p = counts[counts > 0] / max(y.size, 1)
    out.attrs["h_dx"] = float(-(p * np.log2(p)).sum()) if p.size else float("nan")
    out.attrs["n"] = int(y.size)
    return out


def describe_mi_bias(tables: Mapping[str, pd.DataFrame]) -> str:
    """A few printed lines on :func:`mutual_information_table` results of several data sets (name -> table):
    each field's plug-in MI, its Miller-Madow bias and the difference, the entropy of ``dx``, and how the
    last data set compares with the first after the correction.

    Example:
        >>> df = pd.DataFrame({"dx": ["nv", "mel"] * 4, "sex": ["male"] * 4 + ["female"] * 4})
        >>> print(describe_mi_bias({"toy": mutual_information_table(df)}).splitlines()[1])
          toy (8 images, H(dx) = 1.000 bits): sex 0.000 - 0.090 = 0.000
    """
    lines = ["Plug-in MI minus its small-sample bias (K_F - 1)(K_dx - 1) / (2 N ln 2) (Miller-Madow), in bits:"]
    for name, t in tables.items():
        cells = "; ".join(f"{f} {r.mi_bits:.3f} - {r.bias_bits:.3f} = {r.mi_corrected_bits:.3f}"
                          for f, r in t.iterrows())
        lines.append(f"  {name} ({t.attrs.get('n', '?')} images, H(dx) = {t.attrs.get('h_dx', float('nan')):.3f} "
                     f"bits): {cells}")
    names = list(tables)
    if len(names) > 1:
        first, last = tables[names[0]], tables[names[-1]]
        ratios = []
        for f in last.index.intersection(first.index):
            a, b = first.loc[f], last.loc[f]
            if a.mi_bits > 0 and a.mi_corrected_bits > 0:
                ratios.append(f"{f} {b.mi_bits / a.mi_bits:.1f}x plug-in, "
                              f"{b.mi_corrected_bits / a.mi_corrected_bits:.1f}x corrected")
        if ratios:
            lines.append(f"  {names[-1]} against {names[0]}: " + "; ".join(ratios) + ".")
        sparse = [f for f, r in last.iterrows() if r.per_cell < 5]
        if sparse:
            lines.append(f"  {names[-1]}: fewer than 5 images per cell of the field x dx table for "
                         f"{', '.join(sparse)}; there the first-order term underestimates the bias.")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- tables of notebook 02


def example_rows(df: pd.DataFrame, n: int = 3) -> pd.DataFrame:
    """``n`` rows to show an encoding with: a missing age, an unknown sex and an unknown site first.

    Args:
        df: metadata rows.
        n: how many rows.

    Returns:
        The chosen rows of ``df`` (index kept).
    """
    picked: list[Any] = []
    for idx in (df.index[df["age"].isna()], df.index[df["sex"].astype(str) == "unknown"],
                df.index[df["localization"].astype(str) == "unknown"]):
        picked += [i for i in idx if i not in picked][:1]
    picked += [i for i in df.index if i not in picked][: max(0, n - len(picked))]
    return df.loc[picked[:n]]


def fill_steps(rows: pd.DataFrame, stats: MetadataStats) -> pd.DataFrame:
    """Each field of ``rows`` as given, as filled and (age) as scaled, with :func:`encode`'s rules.

    Args:
        rows: metadata rows (``image_id``, ``age``, ``sex``, ``localization``).
        stats: the :class:`MetadataStats` used to fill and scale.

    Returns:
        One row per image: ``age``, ``age filled``, ``age scaled``, ``sex``, ``sex filled``,
        ``localization``, ``localization filled``.
    """
    age = pd.to_numeric(rows["age"], errors="coerce")

    def filled(field: str, mode: str | None) -> pd.Series:
        return rows[field].astype(str).where(~_normalize_strings(rows[field])[1], mode)

    return pd.DataFrame({
        "age": age, "age filled": age.fillna(stats.age_mean),
        "age scaled": encode(rows, ("age",), stats)[0][:, 0],
        "sex": rows["sex"], "sex filled": filled("sex", stats.sex_mode),
        "localization": rows["localization"], "localization filled": filled("localization", stats.site_mode),
    }).set_axis(rows["image_id"].astype(str) if "image_id" in rows else rows.index)


def missing_table(df: pd.DataFrame, stats: MetadataStats) -> pd.DataFrame:
    """How many values of each field are missing and what the encoding puts in their place.

    Args:
        df: metadata rows.
        stats: the :class:`MetadataStats` used to fill.

    Returns:
        Index ``age, sex, localization``; columns ``missing``, ``% of images``, ``filled with``.
    """
    span = (stats.age_max - stats.age_min) or 1.0
    miss = {"age": int(pd.to_numeric(df["age"], errors="coerce").isna().sum()),
            "sex": int(_normalize_strings(df["sex"])[1].sum()),
            "localization": int(_normalize_strings(df["localization"])[1].sum())}
    fill = {"age": f"mean known age {stats.age_mean:.2f} (scaled {(stats.age_mean - stats.age_min) / span:.3f})",
            "sex": f"most frequent: {stats.sex_mode}", "localization": f"most frequent: {stats.site_mode}"}
    t = pd.DataFrame({"missing": pd.Series(miss), "filled with": pd.Series(fill)}).reindex(list(META_FIELDS))
    t.insert(1, "% of images", (100 * t["missing"] / max(len(df), 1)).round(2))
    return t


def baseline_summary(results: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """MCR and per-class recall (%, mean ± sd over folds) of several metadata baselines.

    Args:
        results: name -> :func:`metadata_baseline` result.

    Returns:
        One row per name: ``MCR`` then one column per class (paper order: largest class first),
        as ``"mean ± sd"`` strings.
    """
    def cell(m: float, s: float) -> str:
        return f"{100 * m:.1f} ± {100 * s:.1f}" if not math.isnan(s) else f"{100 * m:.1f}"

    paper_order = [c.upper() for c in PAPER_ORDER]
    rows = {name: {"MCR": cell(r["mcr_mean"], r["mcr_std"]),
                   **{c: cell(r["recall_mean"][c], r["recall_std"][c]) for c in paper_order}}
            for name, r in results.items()}
    return pd.DataFrame(rows).T
