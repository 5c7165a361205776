"""The paper's metadata vector (Sec. 3.2): age, sex and body site of each image as 17 numbers.

A missing age becomes the mean known age, then ages are min-max scaled to [0, 1] (1 column); sex (2) and body site
(14, alphabetical) are one-hot, ``unknown`` filled with the most frequent value. The columns keep this order, so a
Table 3 subset is a selection of columns. A value off the vocabulary raises, naming the row.

Example:
    >>> df = pd.DataFrame({"age": [30.0, None, 50.0], "sex": ["male", "unknown", "Female"],
    ...                    "localization": ["back", "face", "unknown"]})
    >>> x, names = encode(df)
    >>> x.shape, names[:3], x[:, 0].tolist()
    ((3, 17), ['age', 'sex=female', 'sex=male'], [0.0, 0.5, 1.0])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import pandas as pd

from .constants import META_FIELDS, SEXES, SITES
from .data import DataError

VOCABULARIES = {"sex": SEXES, "localization": SITES}
MISSING = ("unknown", "", "nan", "none")  # and NaN
_NO_METADATA = ("A folder with only the ground-truth CSV has labels but no age, sex or site: add "
                "HAM10000_metadata.csv (`python -m metanet_utils data download`), or train the image-only variant "
                "alone (fusions: [none]).")


@dataclass(frozen=True)
class MetadataStats:
    """What fills the gaps and scales the ages; None where nothing was known."""

    age_mean: float | None
    age_min: float | None
    age_max: float | None
    sex_mode: str | None
    site_mode: str | None


def _fields(features: str | Iterable[str] | None) -> tuple[str, ...]:
    given = [] if features is None else [features] if isinstance(features, str) else list(features)
    given = [str(f).strip().lower() for f in given]
    if bad := sorted(set(given) - set(META_FIELDS)):
        raise ValueError(f"unknown metadata field(s) {bad}; allowed: {list(META_FIELDS)}")
    return tuple(f for f in META_FIELDS if f in given)


def feature_names(features: str | Iterable[str] | None = META_FIELDS) -> list[str]:
    """Names of the encoded columns, in the fixed order.

    >>> feature_names(["localization", "age"])[:2], feature_names("sex"), len(feature_names())
    (['age', 'localization=abdomen'], ['sex=female', 'sex=male'], 17)
    """
    return [n for f in _fields(features) for n in (["age"] if f == "age" else [f"{f}={v}" for v in VOCABULARIES[f]])]


def meta_dim(features: str | Iterable[str] | None = META_FIELDS) -> int:
    """Width of the encoded vector (17 for the three fields)."""
    return len(feature_names(features))


def _values(df: pd.DataFrame, field: str) -> pd.Series:
    """One field's values, NA where missing; a bad value raises, naming its row."""
    if field not in df.columns:
        raise KeyError(f"metadata column {field!r} not in the data (columns: {list(df.columns)})")
    raw = df[field]
    text = raw.astype("string").str.strip().str.lower()
    missing = text.isna() | text.isin(MISSING)
    if field == "age":
        values = pd.to_numeric(raw, errors="coerce").astype(np.float64)
        checks, allowed = [(values.isna() & ~missing, "non-numeric age"), (values < 0, "negative age")], ""
    else:
        values = text.mask(missing)
        checks = [(~missing & ~text.isin(VOCABULARIES[field]), f"unknown {field} value")]
        allowed = f"; allowed: {list(VOCABULARIES[field])} or 'unknown' / missing"
    for bad, what in checks:
        if (rows := np.flatnonzero(bad.to_numpy())).size:
            v, i = raw.iloc[rows[0]], rows[0]
            where = f"image_id={df['image_id'].iloc[i]!r}" if "image_id" in df.columns else f"row {df.index[i]!r}"
            raise ValueError(f"{what} {v if isinstance(v, float) else repr(v)} at {where} ({rows.size} row(s) in "
                             f"all){allowed}")
    return values


def fit_stats(df: pd.DataFrame, features: str | Iterable[str] | None = META_FIELDS) -> MetadataStats:
    """The fill and scale statistics of the known values of ``df``; a tie of modes goes to the vocabulary's order.

    >>> fit_stats(pd.DataFrame({"age": [20.0, None, 60.0], "sex": ["male", "male", "female"],
    ...                         "localization": ["back", "unknown", "face"]}))
    MetadataStats(age_mean=40.0, age_min=20.0, age_max=60.0, sex_mode='male', site_mode='back')
    """
    fields = [f for f in _fields(features) if f in df.columns]
    age = _values(df, "age").dropna() if "age" in fields else pd.Series(dtype=np.float64)
    modes = []
    for f in ("sex", "localization"):
        counts = _values(df, f).value_counts().reindex(VOCABULARIES[f], fill_value=0) if f in fields else None
        modes.append(str(counts.idxmax()) if counts is not None and counts.max() > 0 else None)
    ages = (float(age.mean()), float(age.min()), float(age.max())) if len(age) else (None, None, None)
    return MetadataStats(*ages, *modes)


def encode(df: pd.DataFrame, features: str | Iterable[str] | None = META_FIELDS,
           stats: MetadataStats | None = None) -> tuple[np.ndarray, list[str]]:
    """``(x, names)``: each row as the paper's vector (or a subset's columns), float32, and the column names;
    ``stats`` None: :func:`fit_stats` of ``df``."""
    fields = _fields(features)
    st = fit_stats(df, fields) if stats is None else stats
    blocks = []
    for f in fields:
        values = _values(df, f)
        if f == "age":
            if st.age_mean is None or st.age_min is None or st.age_max is None:
                raise DataError(f"no image has a known age, so ages cannot be filled and scaled. {_NO_METADATA}")
            age, span = values.fillna(st.age_mean).to_numpy(), st.age_max - st.age_min
            blocks.append(((age - st.age_min) / span if span > 0 else np.zeros_like(age))[:, None])
            continue
        vocab, mode = VOCABULARIES[f], st.sex_mode if f == "sex" else st.site_mode
        if values.isna().any():
            if mode is None:
                raise DataError(f"no image has a known {f}, so {int(values.isna().sum())} missing one(s) cannot be "
                                f"filled. {_NO_METADATA}")
            if mode not in vocab:
                raise ValueError(f"stats fill value {mode!r} for {f} not in {list(vocab)}")
            values = values.fillna(mode)
        blocks.append(values.to_numpy(dtype=object)[:, None] == np.array(vocab, dtype=object))
    x = np.concatenate(blocks, axis=1) if blocks else np.zeros((len(df), 0))
    return np.ascontiguousarray(x, dtype=np.float32), feature_names(fields)
