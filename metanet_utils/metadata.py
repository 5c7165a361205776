"""The paper's metadata vector: age, sex and body site of each image as 17 numbers.

The paper (Sec. 3.2) encodes the patient metadata of HAM10000 as a 17-d vector: age "normalized to the range
[0, 1]", gender as a 2-d and body location as a 14-d one-hot vector; a missing age is filled with "the average of
the provided age values", a missing gender or location with the most frequent one. The kit's encoding (what the
paper does not say is the kit's choice):

* ``age``: a missing age becomes the mean of the known ages, then ages are min-max scaled to [0, 1] by the range
  of the known ages (1 column);
* ``sex``: one-hot over ``female, male``; ``unknown`` becomes the most frequent sex (2 columns);
* ``localization``: one-hot over the 14 body sites in alphabetical order (``constants.SITES``); ``unknown``
  becomes the most frequent site (14 columns).

The columns always come in this order, whatever order the fields are asked in, so a subset (Table 3 of the
paper) is a selection of columns of the full vector. The fill and scale statistics (:class:`MetadataStats`)
are fitted on the frame being encoded by default, i.e. on the whole data set (the paper does not say over which
images); fit them on a training fold with :func:`fit_stats` and pass them to :func:`encode` to apply them to
its validation fold.

Values are compared after stripping and lower-casing; ``unknown``, an empty string and NaN count as missing.
Any other value outside the vocabulary raises ``ValueError``, naming the row. Notebook 02 walks through the
encoding on real rows.

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

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import pandas as pd

from .constants import META_FIELDS, SEXES, SITES
from .data import DataError

__all__ = ["MetadataStats", "feature_names", "meta_dim", "fit_stats", "encode"]

#: Vocabulary of each categorical field, in the column order of the encoded vector.
VOCABULARIES: dict[str, tuple[str, ...]] = {"sex": SEXES, "localization": SITES}
#: Values (after strip + lower-case) that count as missing, besides NaN.
MISSING = ("unknown", "", "nan", "none")

_NO_METADATA = ("A folder with only the ground-truth CSV has labels but no age, sex or site: add "
                "HAM10000_metadata.csv (`python -m metanet_utils data download`), or train the image-only variant "
                "alone (fusions: [none]).")


@dataclass(frozen=True)
class MetadataStats:
    """What fills the gaps and scales the ages; None where nothing was known to fit it.

    Attributes:
        age_mean: mean of the known ages (fills a missing age).
        age_min: smallest known age (scaled to 0).
        age_max: largest known age (scaled to 1).
        sex_mode: most frequent known sex (fills ``unknown``).
        site_mode: most frequent known body site (fills ``unknown``).
    """

    age_mean: float | None
    age_min: float | None
    age_max: float | None
    sex_mode: str | None
    site_mode: str | None


def _fields(features: str | Iterable[str] | None) -> tuple[str, ...]:
    """The distinct fields asked for, in the fixed order ``age, sex, localization``."""
    given = [] if features is None else [features] if isinstance(features, str) else list(features)
    given = [str(f).strip().lower() for f in given]
    bad = sorted(set(given) - set(META_FIELDS))
    if bad:
        raise ValueError(f"unknown metadata field(s) {bad}; allowed: {list(META_FIELDS)}")
    return tuple(f for f in META_FIELDS if f in given)


def feature_names(features: str | Iterable[str] | None = META_FIELDS) -> list[str]:
    """Names of the encoded columns, in the fixed order (any order of ``features`` in).

    Example:
        >>> feature_names(("sex",))
        ['sex=female', 'sex=male']
        >>> feature_names(["localization", "age"])[:2], len(feature_names())
        (['age', 'localization=abdomen'], 17)
    """
    return [name for f in _fields(features)
            for name in (["age"] if f == "age" else [f"{f}={v}" for v in VOCABULARIES[f]])]


def meta_dim(features: str | Iterable[str] | None = META_FIELDS) -> int:
    """Width of the encoded vector: 17 for the three fields, 0 for none.

    Example:
        >>> meta_dim(), meta_dim(("age", "sex")), meta_dim(())
        (17, 3, 0)
    """
    return len(feature_names(features))


def _column(df: pd.DataFrame, field: str) -> pd.Series:
    if field not in df.columns:
        raise KeyError(f"metadata column {field!r} not in the data (columns: {list(df.columns)})")
    return df[field]


def _where(df: pd.DataFrame, pos: int) -> str:
    return f"image_id={df['image_id'].iloc[pos]!r}" if "image_id" in df.columns else f"row {df.index[pos]!r}"


def _normalise(s: pd.Series) -> tuple[pd.Series, pd.Series]:
    """The values stripped and lower-cased, and where they are missing (NaN or one of :data:`MISSING`)."""
    text = s.astype("string").str.strip().str.lower()
    return text, text.isna() | text.isin(MISSING)


def _categories(df: pd.DataFrame, field: str) -> pd.Series:
    """The field's values, stripped and lower-cased, NA where missing.

    Raises:
        KeyError: no such column.
        ValueError: a value that is neither in the vocabulary nor missing.
    """
    s = _column(df, field)
    text, missing = _normalise(s)
    bad = np.flatnonzero((~missing & ~text.isin(VOCABULARIES[field])).to_numpy())
    if bad.size:
        raise ValueError(f"unknown {field} value {s.iloc[bad[0]]!r} at {_where(df, bad[0])} ({bad.size} row(s) in "
                         f"all); allowed: {list(VOCABULARIES[field])} or 'unknown' / missing")
    return text.mask(missing)


def _ages(df: pd.DataFrame) -> pd.Series:
    """Ages as float64, NaN where missing.

    Raises:
        KeyError: no ``age`` column.
        ValueError: an age that is neither a number nor missing, or a negative one.
    """
    s = _column(df, "age")
    ages = pd.to_numeric(s, errors="coerce").astype(np.float64)
    bad = np.flatnonzero((ages.isna() & ~_normalise(s)[1]).to_numpy())
    if bad.size:
        raise ValueError(f"non-numeric age {s.iloc[bad[0]]!r} at {_where(df, bad[0])}")
    negative = np.flatnonzero((ages < 0).to_numpy())
    if negative.size:
        raise ValueError(f"negative age {ages.iloc[negative[0]]} at {_where(df, negative[0])}")
    return ages


def _mode(values: pd.Series, vocab: tuple[str, ...]) -> str | None:
    """The most frequent known value; a tie goes to the value first in the vocabulary."""
    counts = values.value_counts().reindex(vocab, fill_value=0)
    return str(counts.idxmax()) if counts.max() > 0 else None


def fit_stats(df: pd.DataFrame, features: str | Iterable[str] | None = META_FIELDS) -> MetadataStats:
    """Fit the fill and scale statistics on the known values of ``df`` (e.g. a training fold).

    A field not asked for, or whose column is absent, or with no known value gets None; :func:`encode` raises if
    it then needs it.

    Example:
        >>> df = pd.DataFrame({"age": [20.0, None, 60.0], "sex": ["male", "male", "female"],
        ...                    "localization": ["back", "unknown", "face"]})
        >>> fit_stats(df)
        MetadataStats(age_mean=40.0, age_min=20.0, age_max=60.0, sex_mode='male', site_mode='back')
    """
    fields = [f for f in _fields(features) if f in df.columns]
    age = _ages(df).dropna() if "age" in fields else pd.Series(dtype=np.float64)
    age_stats = (float(age.mean()), float(age.min()), float(age.max())) if len(age) else (None, None, None)
    sex, site = (_mode(_categories(df, f), VOCABULARIES[f]) if f in fields else None for f in ("sex", "localization"))
    return MetadataStats(*age_stats, sex, site)


def _age_column(df: pd.DataFrame, stats: MetadataStats) -> np.ndarray:
    if stats.age_mean is None or stats.age_min is None or stats.age_max is None:
        raise DataError(f"no image has a known age, so ages cannot be filled and scaled. {_NO_METADATA}")
    age = _ages(df).fillna(stats.age_mean).to_numpy()
    span = stats.age_max - stats.age_min
    return (age - stats.age_min) / span if span > 0 else np.zeros_like(age)


def _one_hot(df: pd.DataFrame, field: str, mode: str | None) -> np.ndarray:
    vocab = VOCABULARIES[field]
    values = _categories(df, field)
    if values.isna().any():
        if mode is None:
            raise DataError(f"no image has a known {field}, so {int(values.isna().sum())} missing one(s) cannot be "
                            f"filled. {_NO_METADATA}")
        if mode not in vocab:
            raise ValueError(f"stats fill value {mode!r} for {field} not in {list(vocab)}")
        values = values.fillna(mode)
    return values.to_numpy(dtype=object)[:, None] == np.array(vocab, dtype=object)


def encode(df: pd.DataFrame, features: str | Iterable[str] | None = META_FIELDS,
           stats: MetadataStats | None = None) -> tuple[np.ndarray, list[str]]:
    """Encode the metadata of each row as the paper's vector (or the columns of a subset of it).

    Args:
        df: one row per image with the columns asked for (``age``, ``sex``, ``localization``); ``image_id``, when
            present, names a bad row in errors.
        features: the fields to encode, any order (the columns come in the fixed order); empty gives ``(n, 0)``.
        stats: fill and scale statistics (:func:`fit_stats` of a training fold); None fits them on ``df``.
            Ages outside the fitted range fall outside [0, 1] (they are not clipped).

    Returns:
        ``(x, names)``: ``x`` float32 of shape ``(len(df), meta_dim(features))`` and the column names.

    Raises:
        KeyError: a needed column is absent.
        ValueError: a sex or site outside the vocabulary, a non-numeric or negative age; ``DataError`` (a
            ``ValueError``) when a field has no known value to fill with.

    Example:
        >>> df = pd.DataFrame({"age": [20.0, 60.0], "sex": ["male", "unknown"], "localization": ["back", "face"]})
        >>> x, names = encode(df, ("sex", "age"))
        >>> names, x.tolist()
        (['age', 'sex=female', 'sex=male'], [[0.0, 0.0, 1.0], [1.0, 0.0, 1.0]])
    """
    fields = _fields(features)
    stats = fit_stats(df, fields) if stats is None else stats
    modes = {"sex": stats.sex_mode, "localization": stats.site_mode}
    blocks = [_age_column(df, stats)[:, None] if f == "age" else _one_hot(df, f, modes[f]) for f in fields]
    x = np.concatenate(blocks, axis=1) if blocks else np.zeros((len(df), 0))
    return np.ascontiguousarray(x, dtype=np.float32), feature_names(fields)
