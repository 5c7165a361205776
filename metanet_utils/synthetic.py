"""A synthetic HAM10000 look-alike: the offline default of the demo and smoke profiles.

Everything is deterministic from a seed:

- seven classes with HAM10000's imbalance (6705/1113/1099/514/327/142/115), with a floor per
  class so that 5-fold stratified cross-validation works at small sizes;
- lesions with one to a few images each (like HAM10000, about 0.75 lesions per image); the images
  of one lesion share diagnosis, age, sex, site and appearance;
- metadata drawn per class from HAM10000's real per-class frequencies of sex, site and age, which
  are shipped as a small table of counts (``resources/ham10000_class_stats.csv``, computed once
  from the real metadata by :func:`write_class_stats`), ``unknown`` and missing ages included;
- procedurally drawn dermoscopy-like images whose appearance depends on the class (colour, size,
  border irregularity, pigment network, dots and globules, vessels, lacunae, scale, a white
  centre ...), with intra-class variation and a fifth of hard cases half-way to a class they are
  often mistaken for, hair, vignetting and a random per-image illumination colour cast, so that
  colour constancy has something to correct.

The dataset is written in the real layout (``HAM10000_metadata.csv`` and ``images/ISIC_*.jpg``),
so everything downstream runs the same code, plus a marker file ``synthetic.json`` that every
notebook checks with :func:`is_synthetic` to announce SYNTHETIC DATA. Identifiers start with a 9
(``HAM_9xxxxxx``, ``ISIC_9xxxxxx``) and never collide with real ones. The same arguments give
byte-identical files with the same numpy and Pillow on the same kind of CPU (whatever the number
of threads).

Example:
    >>> import tempfile, pathlib
    >>> d = make_synthetic(pathlib.Path(tempfile.mkdtemp()) / "synthetic", n_images=60)
    >>> is_synthetic(d), len(list((d / "images").glob("ISIC_9*.jpg")))
    (True, 60)
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import math
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from .atomic import FileLock, atomic_write_text, staged_dir
from .constants import DATA_CLASS_COUNTS, DX_CODES, SEXES, SITES

__all__ = [
    "MARKER_NAME",
    "MIN_IMAGES",
    "MIN_PER_CLASS",
    "METADATA_NAME",
    "STATS_FILE",
    "STATS_FIELDS",
    "SYNTHETIC_DX_TYPE",
    "GENERATOR_VERSION",
    "COLOUR_CAST",
    "class_stats_from_metadata",
    "load_class_stats",
    "write_class_stats",
    "class_counts",
    "sample_metadata",
    "render_images",
    "make_synthetic",
    "is_synthetic",
    "read_marker",
    "main",
]

#: Marker file written at the top of a synthetic dataset (JSON: seed, size, class counts ...).
MARKER_NAME = "synthetic.json"
#: Metadata file name, as in the official release.
METADATA_NAME = "HAM10000_metadata.csv"
#: The shipped per-class counts table, inside the package's ``resources/`` folder.
STATS_FILE = "ham10000_class_stats.csv"
#: Fields of the counts table, in their order there.
STATS_FIELDS: tuple[str, ...] = ("sex", "localization", "age")
#: Value of ``dx_type`` in synthetic metadata (real values: histo, follow_up, consensus, confocal).
SYNTHETIC_DX_TYPE = "synthetic"
#: Default standard deviation of the log illumination gain per channel (gains clipped to [0.75, 1.25]).
COLOUR_CAST = 0.08
#: Bumped whenever the generator's output changes; part of the marker, so old folders are redone.
GENERATOR_VERSION = 1

_META_COLUMNS = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"]
_AGE_BINS: tuple[str, ...] = tuple(str(a) for a in range(0, 90, 5)) + ("nan",)
_ID_BASE = 9_000_000
_MAX_IMAGES_PER_LESION = 6
_CHUNK = 8  # images rendered together (small: temporaries stay in cache); part of the random stream
_JPEG_QUALITY = 90


# ----------------------------------------------------------------------------------------------
# The per-class counts table
# ----------------------------------------------------------------------------------------------
def _age_bin(age: Any) -> str:
    if age is None or (isinstance(age, float) and math.isnan(age)):
        return "nan"
    return str(int(math.floor(float(age) / 5.0) * 5))


def _value_order(field: str) -> tuple[str, ...]:
    if field == "sex":
        return (*SEXES, "unknown")
    if field == "localization":
        return (*SITES, "unknown")
    return _AGE_BINS


def class_stats_from_metadata(df: pd.DataFrame) -> pd.DataFrame:
    """Per-class counts of sex, localization and 5-year age bin of a HAM10000 metadata table.

    Counts are over images (rows). Missing sex or site counts as ``unknown``, a missing age as
    the bin ``nan``; bins are labelled by their lower bound (``"0"``, ``"5"``, ... ``"85"``).
    Zero counts are left out.

    Args:
        df: metadata with columns ``dx``, ``sex``, ``localization``, ``age``.

    Returns:
        A tidy frame with columns ``dx, field, value, count`` (``value`` a string), rows in the
        order of ``DX_CODES``, ``STATS_FIELDS`` and the fixed vocabularies.

    Example:
        >>> df = pd.DataFrame({"dx": ["nv", "nv", "mel"], "sex": ["male", "unknown", "female"],
        ...                    "localization": ["back", "back", "face"], "age": [40.0, None, 72.0]})
        >>> class_stats_from_metadata(df).query("dx == 'nv' and field == 'age'")["value"].tolist()
        ['40', 'nan']
    """
    d = pd.DataFrame({
        "dx": df["dx"].astype(str).str.lower(),
        "sex": df["sex"].fillna("unknown").astype(str),
        "localization": df["localization"].fillna("unknown").astype(str),
        "age": [_age_bin(a) for a in pd.to_numeric(df["age"], errors="coerce")],
    })
    unknown_dx = sorted(set(d["dx"]) - set(DX_CODES))
    if unknown_dx:
        raise ValueError(f"unknown diagnoses in metadata: {unknown_dx}")
    rows: list[tuple[str, str, str, int]] = []
    for dx in DX_CODES:
        sub = d[d["dx"] == dx]
        for field in STATS_FIELDS:
            counts = sub[field].value_counts()
            extra = sorted(set(counts.index) - set(_value_order(field)))
            if extra:
                raise ValueError(f"unexpected values of {field}: {extra}")
            for value in _value_order(field):
                c = int(counts.get(value, 0))
                if c:
                    rows.append((dx, field, value, c))
    out = pd.DataFrame(rows, columns=["dx", "field", "value", "count"])
    out["count"] = out["count"].astype("int64")
    return out


def _read_stats_csv(text: str) -> pd.DataFrame:
    df = pd.read_csv(io.StringIO(text), dtype={"dx": str, "field": str, "value": str},
                     keep_default_na=False)
    df["count"] = df["count"].astype("int64")
    return df


@functools.lru_cache(maxsize=1)
def _shipped_stats_text() -> str:
    return (resources.files("metanet_utils") / "resources" / STATS_FILE).read_text("utf-8")


def load_class_stats() -> pd.DataFrame:
    """The shipped per-class counts table (see :func:`class_stats_from_metadata`).

    Example:
        >>> s = load_class_stats()
        >>> int(s.query("field == 'sex'")["count"].sum())
        10015
    """
    return _read_stats_csv(_shipped_stats_text())


def _stats_to_csv(stats: pd.DataFrame) -> str:
    return stats.to_csv(index=False, lineterminator="\n")


def write_class_stats(metadata_csv: str | Path, dest: str | Path | None = None) -> Path:
    """Recompute the counts table from a real ``HAM10000_metadata.csv`` and write it.

    Args:
        metadata_csv: the real metadata file.
        dest: output file; default the package's ``resources/ham10000_class_stats.csv``.

    Returns:
        The path written.

    Example:
        >>> write_class_stats("../shared/ham10000/HAM10000_metadata.csv", "/tmp/stats.csv")  # doctest: +SKIP
        PosixPath('/tmp/stats.csv')
    """
    dest = Path(dest) if dest is not None else Path(__file__).resolve().parent / "resources" / STATS_FILE
    stats = class_stats_from_metadata(pd.read_csv(metadata_csv))
    atomic_write_text(dest, _stats_to_csv(stats))
    _shipped_stats_text.cache_clear()
    return dest


# ----------------------------------------------------------------------------------------------
# Metadata
# ----------------------------------------------------------------------------------------------
#: Images per class at least, by default, and so the smallest synthetic data set.
MIN_PER_CLASS = 8
MIN_IMAGES = len(DX_CODES) * MIN_PER_CLASS


def class_counts(n_images: int, min_per_class: int = MIN_PER_CLASS) -> dict[str, int]:
    """Images per class: proportional to HAM10000's counts, at least ``min_per_class`` each.

    Classes whose proportional share falls below the floor get the floor; the rest is shared
    out in proportion by largest remainders. The counts sum to ``n_images``.

    Example:
        >>> class_counts(700)
        {'mel': 78, 'nv': 468, 'bcc': 36, 'akiec': 23, 'bkl': 77, 'df': 8, 'vasc': 10}
        >>> class_counts(100)["df"]
        8
    """
    k = len(DX_CODES)
    if n_images < k * min_per_class:
        raise ValueError(f"n_images={n_images} is below {k} classes x min_per_class={min_per_class}")
    weight = {dx: DATA_CLASS_COUNTS[dx] for dx in DX_CODES}
    floored: set[str] = set()
    while True:
        free = [dx for dx in DX_CODES if dx not in floored]
        rest = n_images - min_per_class * len(floored)
        total = sum(weight[dx] for dx in free)
        share = {dx: rest * weight[dx] / total for dx in free}
        low = {dx for dx in free if share[dx] < min_per_class}
        if not low:
            break
        floored |= low
    out = {dx: min_per_class for dx in floored}
    base = {dx: int(math.floor(share[dx])) for dx in free}
    left = rest - sum(base.values())
    by_remainder = sorted(free, key=lambda dx: (-(share[dx] - base[dx]), DX_CODES.index(dx)))
    for dx in by_remainder[:left]:
        base[dx] += 1
    out.update(base)
    return {dx: out[dx] for dx in DX_CODES}


def _lesion_sizes(rng: np.random.Generator, n_img: int, n_les: int) -> np.ndarray:
    sizes = np.ones(n_les, dtype=np.int64)
    extra = n_img - n_les
    if extra > 0:
        sizes += np.bincount(rng.integers(0, n_les, extra), minlength=n_les)
    cap = _MAX_IMAGES_PER_LESION
    while sizes.max() > cap and sizes.sum() <= cap * n_les:
        over = int(np.sum(np.maximum(sizes - cap, 0)))
        sizes = np.minimum(sizes, cap)
        room = np.flatnonzero(sizes < cap)
        sizes += np.bincount(rng.choice(room, over), minlength=n_les)
    return sizes


def _draw(rng: np.random.Generator, stats: pd.DataFrame, dx: str, field: str, n: int) -> np.ndarray:
    sub = stats[(stats["dx"] == dx) & (stats["field"] == field)]
    if sub.empty:
        raise ValueError(f"class stats have no {field} counts for {dx}")
    p = sub["count"].to_numpy(dtype=np.float64)
    return sub["value"].to_numpy()[rng.choice(len(p), size=n, p=p / p.sum())]


def sample_metadata(
    n_images: int,
    seed: int = 0,
    lesions_per_image_ratio: float = 0.75,
    min_per_class: int = MIN_PER_CLASS,
    stats: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Draw a synthetic ``HAM10000_metadata.csv`` table (no images).

    Class sizes come from :func:`class_counts`; each class has about
    ``lesions_per_image_ratio`` lesions per image, the extra images going to random lesions
    (at most 6 images a lesion). Sex, site and age are drawn per lesion, independently, from the
    class's real frequencies (``stats``, default the shipped table), so ``unknown`` and missing
    ages occur as often as in HAM10000.

    Args:
        n_images: number of rows (images).
        seed: random seed (non-negative integer).
        lesions_per_image_ratio: lesions / images, in (0, 1].
        min_per_class: floor of images per class.
        stats: counts table as returned by :func:`class_stats_from_metadata`.

    Returns:
        A frame with columns ``lesion_id, image_id, dx, dx_type, age, sex, localization``, rows
        sorted by ``lesion_id``; ``age`` is float with NaN for missing.

    Example:
        >>> m = sample_metadata(200, seed=1)
        >>> len(m), int((m["dx"] == "nv").sum()), bool(m["image_id"].str.startswith("ISIC_9").all())
        (200, 125, True)
    """
    if not 0 < lesions_per_image_ratio <= 1:
        raise ValueError("lesions_per_image_ratio must be in (0, 1]")
    if seed < 0:
        raise ValueError("seed must be a non-negative integer")
    stats = load_class_stats() if stats is None else stats
    counts = class_counts(n_images, min_per_class)
    rng = np.random.default_rng([int(seed), 0])
    les_dx, les_sizes, les_sex, les_site, les_age = [], [], [], [], []
    for dx in DX_CODES:
        n_c = counts[dx]
        n_les = int(min(n_c, max(1, round(lesions_per_image_ratio * n_c))))
        les_sizes.append(_lesion_sizes(rng, n_c, n_les))
        les_dx.append(np.full(n_les, dx, dtype=object))
        les_sex.append(_draw(rng, stats, dx, "sex", n_les))
        les_site.append(_draw(rng, stats, dx, "localization", n_les))
        les_age.append(_draw(rng, stats, dx, "age", n_les))
    sizes = np.concatenate(les_sizes)
    n_les_total = len(sizes)
    # lesion numbers are shuffled across classes, image numbers across everything
    les_no = rng.permutation(n_les_total)
    img_no = rng.permutation(n_images)
    ages = np.array([np.nan if a == "nan" else float(a) for a in np.concatenate(les_age)])
    rep = np.repeat(np.arange(n_les_total), sizes)
    df = pd.DataFrame({
        "lesion_id": [f"HAM_{_ID_BASE + i:07d}" for i in les_no[rep]],
        "image_id": [f"ISIC_{_ID_BASE + i:07d}" for i in img_no],
        "dx": np.concatenate(les_dx)[rep],
        "dx_type": SYNTHETIC_DX_TYPE,
        "age": ages[rep],
        "sex": np.concatenate(les_sex)[rep],
        "localization": np.concatenate(les_site)[rep],
    })
    df = df.sort_values(["lesion_id", "image_id"], kind="stable").reset_index(drop=True)
    for col in ("lesion_id", "image_id", "dx", "dx_type", "sex", "localization"):
        df[col] = df[col].astype(str)
    df["age"] = df["age"].astype("float64")
    return df[_META_COLUMNS]


# ----------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------
# Per-class recipes: uniform ranges of a lesion's parameters (lesion frame: radius about 1).
# Missing keys are 0. The ranges overlap between classes on purpose: learnable, not trivial.
#   size: radius in half image heights; elong: aspect; irr / asym / frag: border irregularity
#   (Fourier harmonics, a one-sided bulge, noise); edge: border softness; opacity: lesion alpha;
#   centre: a blotch (dark, white or red) of radius r_centre, off-centre by up to ofs;
#   multi / multi2: colour regions; net: pigment network (freq, line width); glob: globules,
#   nests or lacunae (density d_glob, radius r_glob); d_dots / d_milia: dark dots and white
#   milia-like dots; ves: vessels; scale: white-yellow scale; rough: surface texture; halo: erythema.
_Range = tuple[float, float]
_RECIPES: dict[str, dict[str, _Range]] = {
    "nv": dict(size=(0.30, 0.62), elong=(1.0, 1.35), irr=(0.02, 0.06), asym=(0.0, 0.04),
               frag=(0.0, 0.08), edge=(0.04, 0.12), opacity=(0.8, 0.97),
               w_centre=(0.1, 0.6), r_centre=(0.35, 0.8), ofs=(0.0, 0.12),
               w_multi=(0.0, 0.3), w_multi2=(0.0, 0.15),
               w_net=(0.25, 0.8), net_freq=(35.0, 55.0), net_width=(0.1, 0.25), chaos=(0.02, 0.08),
               w_glob=(0.0, 0.8), d_glob=(0.1, 0.5), r_glob=(0.15, 0.28), d_dots=(0.0, 0.12)),
    "mel": dict(size=(0.45, 0.9), elong=(1.0, 1.5), irr=(0.08, 0.2), asym=(0.04, 0.15),
                frag=(0.08, 0.3), edge=(0.03, 0.14), opacity=(0.88, 1.0),
                w_centre=(0.3, 0.85), r_centre=(0.25, 0.6), ofs=(0.15, 0.55),
                w_multi=(0.2, 0.7), w_multi2=(0.2, 0.7),
                w_net=(0.2, 0.7), net_freq=(25.0, 45.0), net_width=(0.2, 0.4), chaos=(0.06, 0.15),
                w_glob=(0.0, 0.8), d_glob=(0.05, 0.3), r_glob=(0.1, 0.3), d_dots=(0.1, 0.4),
                w_ves=(0.0, 0.25), w_rough=(0.0, 0.2), w_halo=(0.0, 0.2)),
    "bcc": dict(size=(0.35, 0.75), elong=(1.0, 1.5), irr=(0.05, 0.15), asym=(0.0, 0.08),
                frag=(0.05, 0.2), edge=(0.1, 0.25), opacity=(0.55, 0.9),
                w_centre=(0.1, 0.5), r_centre=(0.3, 0.7), ofs=(0.0, 0.3),
                w_multi=(0.1, 0.4), w_multi2=(0.0, 0.5), chaos=(0.03, 0.1),
                w_glob=(0.5, 1.0), d_glob=(0.08, 0.3), r_glob=(0.22, 0.35), glob_scale=(1.2, 1.7),
                d_dots=(0.0, 0.1),
                d_milia=(0.0, 0.1), w_ves=(0.5, 1.0), w_halo=(0.1, 0.4)),
    "akiec": dict(size=(0.4, 0.85), elong=(1.0, 1.6), irr=(0.06, 0.18), asym=(0.0, 0.1),
                  frag=(0.15, 0.4), edge=(0.12, 0.3), opacity=(0.5, 0.85),
                  w_centre=(0.0, 0.3), r_centre=(0.3, 0.7), ofs=(0.0, 0.3),
                  w_multi=(0.0, 0.5), w_multi2=(0.0, 0.3), chaos=(0.05, 0.12),
                  d_dots=(0.1, 0.4), d_milia=(0.15, 0.5), w_ves=(0.1, 0.5),
                  w_scale=(0.4, 0.95), w_rough=(0.2, 0.5), w_halo=(0.3, 0.6)),
    "bkl": dict(size=(0.45, 0.95), elong=(1.0, 1.6), irr=(0.06, 0.18), asym=(0.0, 0.1),
                frag=(0.02, 0.2), edge=(0.02, 0.06), opacity=(0.6, 0.95),
                w_centre=(0.0, 0.4), r_centre=(0.3, 0.8), ofs=(0.0, 0.3),
                w_multi=(0.1, 0.5), w_multi2=(0.0, 0.3),
                w_net=(0.0, 0.3), net_freq=(25.0, 40.0), net_width=(0.2, 0.35), chaos=(0.04, 0.12),
                w_glob=(0.0, 0.4), d_glob=(0.05, 0.2), r_glob=(0.15, 0.3), d_dots=(0.05, 0.3),
                d_milia=(0.1, 0.4), w_scale=(0.1, 0.5), w_rough=(0.4, 0.9)),
    "df": dict(size=(0.28, 0.55), elong=(1.0, 1.3), irr=(0.02, 0.08), asym=(0.0, 0.04),
               frag=(0.0, 0.1), edge=(0.15, 0.3), opacity=(0.6, 0.9),
               w_centre=(0.6, 1.0), r_centre=(0.3, 0.55), ofs=(0.0, 0.1), w_multi=(0.0, 0.3),
               w_net=(0.3, 0.8), net_freq=(40.0, 60.0), net_width=(0.1, 0.2), chaos=(0.03, 0.08),
               d_dots=(0.0, 0.1), w_ves=(0.0, 0.15), w_halo=(0.2, 0.5)),
    "vasc": dict(size=(0.2, 0.5), elong=(1.0, 1.4), irr=(0.03, 0.12), asym=(0.0, 0.06),
                 frag=(0.0, 0.15), edge=(0.03, 0.08), opacity=(0.85, 1.0),
                 w_centre=(0.0, 0.5), r_centre=(0.3, 0.6), ofs=(0.0, 0.2), w_multi=(0.0, 0.4),
                 chaos=(0.02, 0.08),
                 w_glob=(0.85, 1.0), d_glob=(0.75, 1.0), r_glob=(0.28, 0.35), glob_scale=(1.4, 1.8),
                 d_milia=(0.0, 0.05),
                 w_halo=(0.1, 0.4)),
}
_RGB = tuple[float, float, float]
# Per-class colours (sRGB, before the illumination cast): each drawn between two end points.
_COLOURS: dict[str, dict[str, tuple[_RGB, _RGB]]] = {
    "nv": dict(base=((175, 120, 90), (95, 60, 45)), centre=((115, 72, 52), (70, 45, 35)),
               multi=((150, 105, 85), (120, 85, 70)), multi2=((100, 70, 60), (80, 60, 55)),
               glob=((110, 70, 50), (75, 48, 38))),
    "mel": dict(base=((120, 75, 55), (70, 42, 35)), centre=((45, 30, 30), (30, 22, 25)),
                multi=((120, 115, 140), (90, 90, 115)), multi2=((195, 120, 120), (215, 190, 185)),
                glob=((60, 40, 35), (80, 85, 110)), dots=((45, 30, 28), (35, 25, 25))),
    "bcc": dict(base=((215, 160, 170), (200, 140, 155)), centre=((238, 222, 225), (228, 208, 215)),
                multi=((200, 130, 140), (190, 120, 135)), multi2=((130, 50, 45), (90, 35, 35)),
                glob=((95, 100, 125), (75, 80, 105)), dots=((95, 100, 125), (80, 85, 110))),
    "akiec": dict(base=((205, 115, 110), (185, 125, 115)), centre=((190, 100, 95), (175, 95, 95)),
                  multi=((150, 100, 80), (120, 80, 65)), multi2=((215, 150, 140), (205, 140, 135)),
                  dots=((150, 55, 60), (130, 45, 55))),
    "bkl": dict(base=((175, 130, 95), (100, 68, 52)), centre=((130, 90, 70), (90, 60, 48)),
                multi=((150, 110, 85), (110, 80, 65)), multi2=((185, 150, 125), (175, 140, 115)),
                glob=((120, 85, 65), (90, 62, 50)), dots=((70, 50, 40), (50, 38, 32)),
                scale=((215, 200, 170), (200, 185, 160))),
    "df": dict(base=((170, 120, 95), (140, 95, 75)), centre=((235, 220, 215), (220, 200, 195)),
               multi=((185, 130, 120), (175, 120, 115)), dots=((110, 75, 60), (95, 65, 55))),
    "vasc": dict(base=((205, 140, 150), (185, 120, 140)), centre=((80, 20, 40), (60, 20, 45)),
                 multi=((130, 40, 80), (115, 35, 70)), glob=((175, 35, 55), (95, 35, 85))),
}
_DEFAULT_COLOURS: dict[str, tuple[_RGB, _RGB]] = dict(
    base=((150, 100, 80), (150, 100, 80)), centre=((100, 70, 55), (100, 70, 55)),
    multi=((130, 90, 70), (130, 90, 70)), multi2=((130, 90, 70), (130, 90, 70)),
    glob=((100, 70, 55), (100, 70, 55)), dots=((75, 50, 40), (55, 38, 32)),
    milia=((240, 236, 222), (228, 222, 205)), ves=((180, 40, 50), (150, 30, 45)),
    scale=((235, 225, 200), (220, 210, 185)), halo=((228, 150, 150), (215, 140, 145)),
)
# Skin tones under a dermoscope (class-independent); a lesion's skin lies between two of them.
_SKINS = np.array([(228, 190, 180), (225, 195, 172), (232, 172, 165), (215, 205, 205),
                   (220, 186, 164), (205, 160, 142), (230, 182, 188)], dtype=np.float64)
_PARAM_KEYS: tuple[str, ...] = tuple(sorted(
    {k for r in _RECIPES.values() for k in r}
    | {"w_glob", "d_glob", "r_glob", "d_dots", "d_milia", "w_ves", "w_scale", "w_rough",
       "w_halo", "w_net", "net_freq", "net_width", "w_multi2", "glob_scale", "chaos"}))
_COLOUR_KEYS: tuple[str, ...] = tuple(_DEFAULT_COLOURS)
_PARAM_DEFAULTS: dict[str, _Range] = {"glob_scale": (1.0, 1.0), "elong": (1.0, 1.0)}
# Lesions that look half-way like a class they are clinically confused with (with _MIMIC_P).
_MIMICS: dict[str, tuple[str, ...]] = {
    "mel": ("nv", "bkl"), "nv": ("mel", "bkl"), "bcc": ("akiec", "nv"), "akiec": ("bcc", "bkl"),
    "bkl": ("mel", "nv", "akiec"), "df": ("nv",), "vasc": ("bcc", "mel"),
}
_MIMIC_P = 0.2
_N_HARM = 7  # border harmonics 2..8 (plus the one-sided first harmonic)
_N_ANGLES = 256  # the border radius is tabulated at this many angles
_COARSE = 4  # smooth fields are computed every _COARSE pixels, then interpolated
_EXTENT = 2.0  # lattices cover [-2, 2]^2 of the lesion frame
# lattices of one lesion: (cells over [-2, 2], channels)
_VAL_LO = (6, 4)  # value noise: fragmentation, colour regions 1 and 2, vessels
_VAL_MID = (12, 4)  # value noise: fine vessels, scale, warp x and y
_VAL_HI = (26, 1)  # value noise: surface texture
_CELL_GLOB = 9  # jittered-grid blobs: globules / nests / lacunae
_CELL_DOTS = 24  # jittered-grid blobs: dots and milia-like cysts


def _cells(rng: np.random.Generator, n: int, density: float, radius: tuple[float, float],
           white: float = 0.0, jitter: float = 0.15) -> np.ndarray:
    """A jittered grid of round blobs: (n, n, 4) = centre x, y (in the cell), radius, is-white.

    Blobs stay inside their cell when radius + jitter <= 0.5.
    """
    out = np.empty((n, n, 4), dtype=np.float32)
    out[..., :2] = rng.uniform(0.5 - jitter, 0.5 + jitter, (n, n, 2))
    u = rng.random((n, n))
    out[..., 2] = np.where(u < density, rng.uniform(radius[0], radius[1], (n, n)), 0.0)
    out[..., 3] = rng.random((n, n)) < white
    return out


@functools.lru_cache(maxsize=None)
def _recipe_arrays(dx: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A class's parameter ranges and colour end points as arrays, in key order."""
    lo, hi = np.array([_RECIPES[dx].get(k, _PARAM_DEFAULTS.get(k, (0.0, 0.0))) for k in _PARAM_KEYS]).T
    cols = {**_DEFAULT_COLOURS, **_COLOURS[dx]}
    c0, c1 = (np.array([cols[k][e] for k in _COLOUR_KEYS], dtype=np.float64) for e in (0, 1))
    return lo, hi, c0, c1


@functools.lru_cache(maxsize=512)
def _lesion(dx: str, seed: int, lesion_no: int) -> tuple[dict[str, Any], tuple[np.ndarray, ...]]:
    """Parameters and texture lattices of one lesion, from its own random stream."""
    rng = np.random.default_rng([int(seed), 1, int(lesion_no)])
    lo, hi, c0, c1 = _recipe_arrays(dx)
    if rng.random() < _MIMIC_P:  # a hard case: half-way to a class it is often mistaken for
        others = _MIMICS[dx]
        t = rng.uniform(0.3, 0.7)
        lo, hi, c0, c1 = (a + t * (o - a) for a, o in
                          zip((lo, hi, c0, c1), _recipe_arrays(others[rng.integers(len(others))])))
    p: dict[str, Any] = dict(zip(_PARAM_KEYS, rng.uniform(lo, hi).tolist()))
    t = rng.uniform(size=(len(_COLOUR_KEYS), 1))
    cols = c0 + t * (c1 - c0) + rng.normal(0.0, 6.0, c0.shape)
    p.update({"c_" + k: cols[i] for i, k in enumerate(_COLOUR_KEYS)})
    i, j = rng.choice(len(_SKINS), 2, replace=False)
    p["skin"] = _SKINS[i] + rng.uniform() * (_SKINS[j] - _SKINS[i]) + rng.normal(0.0, 4.0, 3)
    k = np.arange(2, 2 + _N_HARM)
    amp = p["irr"] * rng.uniform(0.4, 1.0, _N_HARM) / k ** 0.7
    coef = np.zeros(_N_HARM + 1, dtype=np.complex128)
    coef[0] = p["asym"] * np.exp(1j * rng.uniform(0, 2 * np.pi))
    coef[1:] = amp * np.exp(1j * rng.uniform(0, 2 * np.pi, _N_HARM))
    p["coef"] = coef
    p["centre_ofs"] = p["ofs"] * np.exp(1j * rng.uniform(0, 2 * np.pi))
    p["pos"] = rng.normal(0.0, 0.08, 2)
    lats = tuple(rng.standard_normal((c + 1, c + 1, ch)).astype(np.float32)
                 for c, ch in (_VAL_LO, _VAL_MID, _VAL_HI))
    glob = _cells(rng, _CELL_GLOB, p["d_glob"], (0.7 * p["r_glob"], p["r_glob"]))
    d_small = p["d_dots"] + p["d_milia"]
    dots = _cells(rng, _CELL_DOTS, d_small, (0.15, 0.3), p["d_milia"] / d_small if d_small else 0.0)
    return p, (*lats, glob, dots)


def _smoothstep(e0: Any, e1: Any, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -40.0, 40.0)))


class _Grid:
    """Where the points (u, v) of the lesion frame fall on a lattice of ``cells`` cells."""

    def __init__(self, u: np.ndarray, v: np.ndarray, cells: int, nodes: int) -> None:
        scale = cells / (2.0 * _EXTENT)
        s = np.clip((u + _EXTENT) * scale, 0.0, cells - 1e-3)
        t = np.clip((v + _EXTENT) * scale, 0.0, cells - 1e-3)
        i = np.floor(s)
        j = np.floor(t)
        self.fs, self.ft = s - i, t - j
        self.nodes = nodes
        self._corners: tuple[np.ndarray, ...] | None = None
        self._w: tuple[np.ndarray, np.ndarray] = (self.fs, self.ft)
        b = u.shape[0]
        self.idx = (np.arange(b, dtype=np.intp) * (nodes * nodes))[:, None, None] + (
            j * nodes + i).astype(np.intp)

    def value(self, lat: np.ndarray, ch: int) -> np.ndarray:
        """Smooth value noise from lattice channel ``ch`` of (B, g, g, C) lattices."""
        flat = np.ascontiguousarray(lat[..., ch]).ravel()
        if self._corners is None:
            g = self.nodes
            self._corners = (self.idx, self.idx + 1, self.idx + g, self.idx + (g + 1))
            self._w = (self.fs * self.fs * (3.0 - 2.0 * self.fs), self.ft * self.ft * (3.0 - 2.0 * self.ft))
        fs, ft = self._w
        a, b, c, d = (flat.take(k) for k in self._corners)
        top = a + fs * (b - a)
        bot = c + fs * (d - c)
        return top + ft * (bot - top)

    def blobs(self, lat: np.ndarray, soft: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
        """Round blobs of a jittered grid (B, n, n, 4): coverage in [0, 1] and is-white flag."""
        take = [np.ascontiguousarray(lat[..., c]).ravel().take(self.idx) for c in range(4)]
        px, py, r, white = take
        d2 = (self.fs - px) ** 2 + (self.ft - py) ** 2
        r2 = r * r
        inner = (soft * soft) * r2
        t = np.clip((d2 - inner) / (r2 - inner + 1e-6), 0.0, 1.0)
        return 1.0 - t * t * (3.0 - 2.0 * t), white


def _axis_weights(n_out: int, n_in: int, smooth: bool) -> tuple[np.ndarray, np.ndarray]:
    """Interpolation from n_in evenly spaced samples to n_out spanning the same ends: (i0, f)."""
    pos = np.linspace(0.0, n_in - 1.0, n_out)
    i0 = np.minimum(np.floor(pos).astype(np.intp), n_in - 2)
    f = pos - i0
    if smooth:
        f = f * f * (3.0 - 2.0 * f)
    return i0, f.astype(np.float32)


def _resize(a: np.ndarray, h: int, w: int, smooth: bool = False) -> np.ndarray:
    """Separable (smoothstep-)linear upsampling of (B, h0, w0) to (B, h, w); no BLAS involved."""
    ix, fx = _axis_weights(w, a.shape[2], smooth)
    iy, fy = _axis_weights(h, a.shape[1], smooth)
    a = a.astype(np.float32, copy=False)
    left = a[:, :, ix]
    t = left + fx * (a[:, :, ix + 1] - left)
    top = t[:, iy, :]
    return top + fy[:, None] * (t[:, iy + 1, :] - top)


def _image_noise(rng: np.random.Generator, b: int, h: int, w: int, cells_h: int) -> np.ndarray:
    """Smooth value noise in the image frame, (B, H, W), ``cells_h`` lattice cells over the height."""
    cells_w = max(1, round(cells_h * w / h))
    lat = rng.standard_normal((b, cells_h + 1, cells_w + 1)).astype(np.float32)
    return _resize(lat, h, w, smooth=True)


def _mix(img: np.ndarray, colour: np.ndarray, weight: np.ndarray) -> None:
    """In place: img += weight * (colour - img); img (B,3,H,W), colour (B,3), weight (B,H,W).

    Channels first, so numpy's inner loops run along image rows, not over 3 channels.
    """
    img += weight[:, None] * (colour[:, :, None, None] - img)


def _render_chunk(
    dx: Sequence[str],
    lesion_no: Sequence[int],
    seed: int,
    chunk_index: int,
    size: tuple[int, int],
    colour_cast: float,
    vignetting: bool,
) -> np.ndarray:
    """Render one chunk of images: (B, H, W, 3) uint8."""
    w_px, h_px = size
    b = len(dx)
    parts = [_lesion(d, seed, n) for d, n in zip(dx, lesion_no)]
    P = {k: np.asarray([p[0][k] for p in parts]) for k in parts[0][0]}
    F = {k: v.astype(np.float32) for k, v in P.items() if v.dtype.kind == "f"}
    lat_lo, lat_mid, lat_hi, cell_glob, cell_dots = (np.stack([p[1][i] for p in parts]) for i in range(5))
    rng = np.random.default_rng([int(seed), 2, int(chunk_index)])

    def per(key: str) -> np.ndarray:
        return F[key][:, None, None]

    def need(key: str) -> bool:
        return bool(np.any(F[key] > 0))

    # --- this photograph of the lesion: placement, rotation, zoom ---
    theta = rng.uniform(0, 2 * np.pi, b)
    zoom = F["size"] * np.exp(rng.normal(0.0, 0.08, b)).astype(np.float32)
    centre = (P["pos"] + rng.normal(0.0, 0.05, (b, 2))).astype(np.float32)
    y1 = (np.arange(h_px, dtype=np.float32) + 0.5 - h_px / 2) / np.float32(h_px / 2)
    x1 = (np.arange(w_px, dtype=np.float32) + 0.5 - w_px / 2) / np.float32(h_px / 2)
    c = (np.cos(theta) / zoom).astype(np.float32)[:, None, None]
    s = (np.sin(theta) / zoom).astype(np.float32)[:, None, None]
    elong = per("elong")

    def frame(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dxp = xs[None, None, :] - centre[:, 0, None, None]
        dyp = ys[None, :, None] - centre[:, 1, None, None]
        return c * dxp + s * dyp, c * dyp - s * dxp

    u, v = frame(x1, y1)
    ue = u / elong
    ve = v * elong
    rho = np.sqrt(ue * ue + ve * ve)
    x, y = x1[None, None, :], y1[None, :, None]

    # --- smooth fields on a coarse grid (every _COARSE pixels), then upsampled ---
    hc, wc = -(-h_px // _COARSE) + 1, -(-w_px // _COARSE) + 1
    uc, vc = frame(np.linspace(x1[0], x1[-1], wc, dtype=np.float32),
                   np.linspace(y1[0], y1[-1], hc, dtype=np.float32))

    def up(a: np.ndarray) -> np.ndarray:
        return _resize(a, h_px, w_px)

    # border: radius as Fourier harmonics of the angle (tabulated), fragmented by noise
    uec, vec = uc / elong, vc * elong
    angles = np.linspace(-np.pi, np.pi, _N_ANGLES + 1)
    order = np.concatenate([[1], np.arange(2, 2 + _N_HARM)])
    basis = np.exp(1j * order[:, None] * angles[None, :])
    table = (1.0 + (P["coef"][:, :, None] * basis[None]).sum(axis=1).real).astype(np.float32)
    pos = (np.arctan2(vec, uec) + np.float32(np.pi)) * np.float32(_N_ANGLES / (2 * np.pi))
    ia = np.minimum(np.floor(pos), _N_ANGLES - 1)
    fa = pos - ia
    ia = ia.astype(np.intp) + (np.arange(b, dtype=np.intp) * (_N_ANGLES + 1))[:, None, None]
    r0 = table.ravel().take(ia)
    rb_c = r0 + fa * (table.ravel().take(ia + 1) - r0)
    g_lo = _Grid(uc, vc, _VAL_LO[0], _VAL_LO[0] + 1)
    n_frag_c = g_lo.value(lat_lo, 0)
    rb = up(rb_c)
    n_frag = up(n_frag_c)
    n_multi = up(g_lo.value(lat_lo, 1))
    n_multi2 = up(g_lo.value(lat_lo, 2))
    gap_c = np.sqrt(uec * uec + vec * vec) * (1.0 + per("frag") * n_frag_c) - rb_c  # > 0 outside
    co = P["centre_ofs"]
    centre_w = up(np.exp(-((uc - co.real.astype(np.float32)[:, None, None]) ** 2
                           + (vc - co.imag.astype(np.float32)[:, None, None]) ** 2) / per("r_centre") ** 2))
    rho_eff = rho * (1.0 + per("frag") * n_frag)
    mask = per("opacity") * _sigmoid((rb - rho_eff) / per("edge"))
    # structures are drawn in a warped frame, so no lattice shows; "chaos" adds irregularity
    g_mid_c = _Grid(uc, vc, _VAL_MID[0], _VAL_MID[0] + 1)
    uw = u + 0.12 * n_multi + per("chaos") * up(g_mid_c.value(lat_mid, 2))
    vw = v + 0.12 * n_multi2 + per("chaos") * up(g_mid_c.value(lat_mid, 3))

    # --- lesion colour and structures ---
    les = np.broadcast_to(F["c_base"][:, :, None, None], (b, 3, h_px, w_px)).copy()
    _mix(les, F["c_multi"], per("w_multi") * _smoothstep(-0.2, 0.5, n_multi))
    _mix(les, F["c_multi2"], per("w_multi2") * _smoothstep(0.2, 0.8, n_multi2))
    _mix(les, F["c_centre"], per("w_centre") * centre_w)
    if need("w_net"):
        # three plane waves at 120 degrees: bright holes on a hexagonal lattice, dark lines between
        f = per("net_freq")
        wave = np.cos(f * uw) + np.cos(f * (-0.5 * uw + 0.8660254 * vw)) + np.cos(f * (-0.5 * uw - 0.8660254 * vw))
        edge = 2.0 * per("net_width") - 1.2
        net = _smoothstep(edge, edge - 0.5, wave)
        les *= (1.0 - 0.5 * per("w_net") * net)[:, None]
    if need("w_glob"):
        gs = per("glob_scale")
        blob, _ = _Grid(uw / gs, vw / gs, _CELL_GLOB, _CELL_GLOB).blobs(cell_glob)
        _mix(les, F["c_glob"], per("w_glob") * blob)
    if need("d_dots") or need("d_milia"):
        blob, white = _Grid(uw, vw, _CELL_DOTS, _CELL_DOTS).blobs(cell_dots)
        _mix(les, F["c_dots"], 0.85 * blob * (1.0 - white))
        _mix(les, F["c_milia"], 0.9 * blob * white)
    g_mid = _Grid(uw, vw, _VAL_MID[0], _VAL_MID[0] + 1) if need("w_scale") or need("w_ves") else None
    n_rough = None
    if need("w_scale") or need("w_rough"):
        n_rough = _Grid(uw, vw, _VAL_HI[0], _VAL_HI[0] + 1).value(lat_hi, 0)
    if need("w_scale"):
        assert g_mid is not None and n_rough is not None
        flakes = _smoothstep(0.3, 0.9, 0.5 * g_mid.value(lat_mid, 1) + n_rough)
        _mix(les, F["c_scale"], per("w_scale") * flakes)
    if n_rough is not None and need("w_rough"):
        les *= (1.0 + 0.22 * per("w_rough") * n_rough)[:, None]

    # --- skin: tone, texture, freckles, erythema around the lesion ---
    img = np.broadcast_to(F["skin"][:, :, None, None], (b, 3, h_px, w_px)).copy()
    tex = 0.04 * _image_noise(rng, b, h_px, w_px, 3) + 0.02 * _image_noise(rng, b, h_px, w_px, max(4, h_px // 6))
    img *= (1.0 + tex)[:, None]
    n_fr = 36
    freckles = np.stack([_cells(rng, n_fr, d, (0.08, 0.2), jitter=0.3) for d in
                         rng.uniform(0.0, 0.3, b) * (rng.random(b) < 0.4)])
    spots, _ = _Grid(np.broadcast_to(x, (b, h_px, w_px)), np.broadcast_to(y, (b, h_px, w_px)),
                     n_fr, n_fr).blobs(freckles, soft=0.2)
    _mix(img, F["skin"] * np.array([0.86, 0.74, 0.64], np.float32), 0.45 * spots)
    if need("w_halo"):
        _mix(img, F["c_halo"], per("w_halo") * up(np.exp(-(np.maximum(gap_c, 0.0) * (1 / 0.4)) ** 2)))
    img += mask[:, None] * (les - img)
    if need("w_ves"):
        assert g_mid is not None
        n_v1 = up(g_lo.value(lat_lo, 3))
        n_v2 = g_mid.value(lat_mid, 0)
        ves = np.exp(-(n_v1 * (1 / 0.035)) ** 2) + 0.7 * np.exp(-(n_v2 * (1 / 0.025)) ** 2)
        region = up(_sigmoid((0.05 * rb_c - gap_c) * (1 / 0.08)))
        _mix(img, F["c_ves"], np.minimum(per("w_ves") * ves * region, 1.0))

    # --- hair ---
    n_hair = np.where(rng.random(b) < 0.3, rng.integers(1, 9, b), 0)
    hair_col = rng.uniform(15, 70, (b, 1)) * np.array([1.0, 0.85, 0.75])
    hair_alpha = rng.uniform(0.55, 0.9, b)
    for k in range(8):
        hx, hy = rng.uniform(-1.3, 1.3, b), rng.uniform(-1.0, 1.0, b)
        alpha = rng.uniform(0, np.pi, b)
        curv = rng.normal(0.0, 0.5, b)
        width = rng.uniform(0.006, 0.012, b)
        length = rng.uniform(0.25, 1.0, b)
        sel = np.flatnonzero(k < n_hair)
        if sel.size == 0:
            continue

        def pick(a: np.ndarray) -> np.ndarray:
            return a[sel].astype(np.float32)[:, None, None]

        ca, sa_ = pick(np.cos(alpha)), pick(np.sin(alpha))
        ds, dt = x - pick(hx), y - pick(hy)
        along = ca * ds + sa_ * dt
        across = ca * dt - sa_ * ds - pick(curv) * along * along
        wgt = np.exp(-(across / pick(width)) ** 2) * (np.abs(along) < pick(length)) * pick(hair_alpha)
        part = img[sel]
        _mix(part, hair_col[sel].astype(np.float32), wgt)
        img[sel] = part

    # --- illumination: colour cast, exposure, vignetting, the dermoscope's dark rim ---
    temp, tint, other = rng.normal(0.0, 1.0, (3, b, 1))
    log_gain = colour_cast * (temp * np.array([1.0, 0.0, -1.0]) + 0.3 * tint * np.array([-0.5, 1.0, -0.5])
                              + 0.3 * other * rng.normal(0.0, 1.0, (b, 3)))
    log_gain = np.clip(log_gain, np.log(0.75), np.log(1.25))
    gains = np.exp(log_gain) * rng.uniform(0.92, 1.06, (b, 1))
    img *= gains.astype(np.float32)[:, :, None, None]
    if vignetting:
        r2 = x * x + y * y
        vig = rng.uniform(0.0, 0.3, b).astype(np.float32)[:, None, None]
        shade = 1.0 - vig * r2 / np.float32(1.0 + (w_px / h_px) ** 2)
        rim = (rng.random(b) < 0.25).astype(np.float32)[:, None, None]
        rc = rng.uniform(1.15, 1.6, b).astype(np.float32)[:, None, None]
        dark = 1.0 - 0.93 * rim * _sigmoid((np.sqrt(r2) - rc) * (1 / 0.03))
        img *= (shade * dark)[:, None]
    sigma = rng.uniform(1.5, 3.5, b).astype(np.float32)[:, None, None, None]
    img += sigma * rng.standard_normal((b, 1, h_px, w_px), dtype=np.float32)
    img += 0.5
    np.clip(img, 0, 255, out=img)
    return np.ascontiguousarray(img.astype(np.uint8).transpose(0, 2, 3, 1))


def _workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def _iter_render(
    dx: Sequence[str],
    lesion_no: Sequence[int],
    seed: int,
    image_size: tuple[int, int],
    colour_cast: float,
    vignetting: bool,
    workers: int | None = None,
) -> Iterator[np.ndarray]:
    """Render chunk after chunk, in order, a few chunks ahead on worker threads.

    numpy releases the GIL in its array loops, so threads use all cores; every chunk has its own
    random stream, so the result does not depend on the number of threads.
    """
    starts = range(0, len(dx), _CHUNK)

    def job(start: int) -> np.ndarray:
        return _render_chunk(dx[start:start + _CHUNK], lesion_no[start:start + _CHUNK], seed,
                             start // _CHUNK, image_size, colour_cast, vignetting)

    workers = _workers() if workers is None else max(1, workers)
    if workers == 1 or len(starts) == 1:
        for start in starts:
            yield job(start)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="synthetic") as pool:
        pending: deque[Future[np.ndarray]] = deque()
        it = iter(starts)
        for start in it:
            pending.append(pool.submit(job, start))
            if len(pending) >= 2 * workers:
                break
        while pending:
            out = pending.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(job, nxt))
            yield out


def _render_order(dx: Sequence[str], lesion_no: Sequence[int]) -> np.ndarray:
    """Render order: by class, then lesion (chunks of one class skip the others' structures)."""
    cls = np.array([DX_CODES.index(d) for d in dx])
    return np.lexsort((np.arange(len(dx)), np.asarray(lesion_no), cls))


def render_images(
    dx: Sequence[str],
    lesion: Sequence[int] | None = None,
    seed: int = 0,
    image_size: tuple[int, int] = (200, 150),
    colour_cast: float = COLOUR_CAST,
    vignetting: bool = True,
    workers: int | None = None,
) -> np.ndarray:
    """Draw dermoscopy-like images of the given classes (numpy only, vectorised, threaded).

    A lesion's appearance (shape, colours, structures, skin) comes from its own random stream
    (``seed``, lesion number), so images with the same ``lesion`` number show the same lesion,
    photographed at another angle, zoom and lighting. Photograph-level randomness (pose, hair,
    colour cast, vignetting, noise) comes from ``seed`` and the image's place in the rendering
    order (by class, then lesion, then position in the list).

    Args:
        dx: class of each image (``DX_CODES``).
        lesion: lesion number of each image (default: one lesion per image, numbered 0..N-1).
        seed: random seed.
        image_size: (width, height) in pixels.
        colour_cast: standard deviation of the per-image, per-channel log illumination gain
            (gains are clipped to [0.75, 1.25]); 0 for neutral light.
        vignetting: darken towards the corners, sometimes with the dermoscope's black rim.
        workers: threads (default: the usable cores, at most 8); the result does not depend on it.

    Returns:
        uint8 array (N, height, width, 3).

    Example:
        >>> render_images(["mel", "nv", "vasc"], seed=0).shape
        (3, 150, 200, 3)
    """
    dx = [str(d).lower() for d in dx]
    bad = sorted(set(dx) - set(DX_CODES))
    if bad:
        raise ValueError(f"unknown classes: {bad}")
    lesion_no = list(range(len(dx))) if lesion is None else [int(n) for n in lesion]
    if len(lesion_no) != len(dx):
        raise ValueError("dx and lesion differ in length")
    w, h = (int(image_size[0]), int(image_size[1]))
    out = np.zeros((len(dx), h, w, 3), dtype=np.uint8)
    order = _render_order(dx, lesion_no)
    done = 0
    for chunk in _iter_render([dx[i] for i in order], [lesion_no[i] for i in order], seed, (w, h),
                              colour_cast, vignetting, workers):
        out[order[done:done + len(chunk)]] = chunk
        done += len(chunk)
    return out


# ----------------------------------------------------------------------------------------------
# The dataset folder
# ----------------------------------------------------------------------------------------------
def read_marker(data_dir: str | Path) -> dict[str, Any] | None:
    """The content of a dataset's ``synthetic.json`` marker, or None if it has none.

    Example:
        >>> read_marker("/nonexistent") is None
        True
    """
    path = Path(data_dir) / MARKER_NAME
    try:
        return json.loads(path.read_text("utf-8"))
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError):
        return {}


def is_synthetic(data_dir: str | Path) -> bool:
    """True if ``data_dir`` holds a synthetic dataset (its marker file is there).

    Example:
        >>> is_synthetic("../shared/ham10000")
        False
    """
    return (Path(data_dir) / MARKER_NAME).is_file()


def _marker(n_images: int, seed: int, image_size: tuple[int, int], ratio: float,
            min_per_class: int, meta: pd.DataFrame | None = None) -> dict[str, Any]:
    m: dict[str, Any] = {
        "synthetic": True,
        "generator": "metanet_utils.synthetic",
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "n_images": int(n_images),
        "image_size": [int(image_size[0]), int(image_size[1])],
        "lesions_per_image_ratio": float(ratio),
        "min_per_class": int(min_per_class),
    }
    if meta is not None:
        m["n_lesions"] = int(meta["lesion_id"].nunique())
        m["class_counts"] = {dx: int((meta["dx"] == dx).sum()) for dx in DX_CODES}
        m["note"] = ("SYNTHETIC DATA: procedurally generated images and metadata drawn from "
                     "HAM10000's per-class frequencies; not real dermoscopy, results are not "
                     "comparable with the paper.")
    return m


_KEY_FIELDS = ("generator_version", "seed", "n_images", "image_size", "lesions_per_image_ratio",
               "min_per_class")


def _is_complete(dest: Path, want: Mapping[str, Any]) -> bool:
    have = read_marker(dest)
    if not have or any(have.get(k) != want[k] for k in _KEY_FIELDS):
        return False
    if not (dest / METADATA_NAME).is_file():
        return False
    images = dest / "images"
    return images.is_dir() and sum(1 for _ in images.glob("ISIC_*.jpg")) == want["n_images"]


def _save_jpeg(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(arr).save(path, format="JPEG", quality=_JPEG_QUALITY)


def make_synthetic(
    dest: str | Path,
    n_images: int = 700,
    seed: int = 0,
    image_size: tuple[int, int] = (200, 150),
    lesions_per_image_ratio: float = 0.75,
    overwrite: bool = False,
    *,
    min_per_class: int = 8,
) -> Path:
    """Write a synthetic HAM10000-like dataset to ``dest`` (atomically) and return ``dest``.

    ``dest`` gets ``HAM10000_metadata.csv`` (see :func:`sample_metadata`), ``images/ISIC_*.jpg``
    (see :func:`render_images`, JPEG quality 90) and the marker ``synthetic.json``. The folder is
    built under a temporary name and renamed into place, so it is complete or absent. If ``dest``
    already holds a complete dataset made with the same parameters it is returned untouched
    (unless ``overwrite``). The same arguments give byte-identical files.

    Args:
        dest: the dataset folder.
        n_images: number of images (at least 7 x ``min_per_class``).
        seed: random seed (non-negative integer).
        image_size: (width, height), like the real copy's 200x150.
        lesions_per_image_ratio: lesions / images, about 0.75 in HAM10000.
        overwrite: rebuild even if ``dest`` holds this dataset, or replace a synthetic dataset
            made with other parameters. One made by an older generator version with the same
            parameters is rebuilt anyway; a non-empty folder without the marker is never replaced.
        min_per_class: floor of images per class (8 lets 5-fold stratified CV work).

    Returns:
        ``dest``.

    Raises:
        FileExistsError: ``dest`` holds something else and ``overwrite`` is false, or ``dest``
            is a non-empty folder without the synthetic marker.

    Example:
        >>> import tempfile, pathlib
        >>> d = make_synthetic(pathlib.Path(tempfile.mkdtemp()) / "syn", n_images=60, seed=3)
        >>> pd.read_csv(d / "HAM10000_metadata.csv").shape
        (60, 7)
    """
    dest = Path(dest)
    size = (int(image_size[0]), int(image_size[1]))
    want = _marker(n_images, seed, size, lesions_per_image_ratio, min_per_class)
    if not overwrite and _is_complete(dest, want):
        return dest
    with FileLock(dest.parent / f".{dest.name}.lock"):
        if not overwrite and _is_complete(dest, want):
            return dest
        if dest.exists():
            if not dest.is_dir():
                raise FileExistsError(f"{dest} exists and is not a folder")
            synthetic = is_synthetic(dest)
            if not synthetic and any(dest.iterdir()):
                raise FileExistsError(
                    f"{dest} is a non-empty folder without a {MARKER_NAME} marker; refusing to "
                    "replace it with synthetic data (choose another folder)")
            have = read_marker(dest) or {}
            # a folder from an older generator with the same request is a stale cache: redo it
            same = all(have.get(k) == want[k] for k in _KEY_FIELDS if k != "generator_version")
            if synthetic and not same and not overwrite:
                raise FileExistsError(
                    f"{dest} holds a synthetic dataset made with other parameters "
                    f"({ {k: have.get(k) for k in _KEY_FIELDS} }); pass overwrite=True to replace it")
        meta = sample_metadata(n_images, seed, lesions_per_image_ratio, min_per_class)
        lesion_no = [int(s[4:]) - _ID_BASE for s in meta["lesion_id"]]
        with staged_dir(dest) as stage:
            (stage / "images").mkdir()
            ids = meta["image_id"].tolist()
            done = 0
            dxs = meta["dx"].tolist()
            order = _render_order(dxs, lesion_no)
            for chunk in _iter_render([dxs[i] for i in order], [lesion_no[i] for i in order],
                                      seed, size, COLOUR_CAST, True):
                for arr in chunk:
                    _save_jpeg(stage / "images" / f"{ids[order[done]]}.jpg", arr)
                    done += 1
            (stage / METADATA_NAME).write_text(
                meta.to_csv(index=False, lineterminator="\n"), encoding="utf-8")
            marker = _marker(n_images, seed, size, lesions_per_image_ratio, min_per_class, meta)
            (stage / MARKER_NAME).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n",
                                             encoding="utf-8")
    return dest


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m metanet_utils.synthetic {make,stats} ...``.

    ``make DEST [--n N] [--seed S]`` writes a dataset; ``stats METADATA_CSV [--out FILE]``
    regenerates the shipped counts table from the real metadata.

    Example:
        >>> main(["stats", "../shared/ham10000/HAM10000_metadata.csv", "--out", "/tmp/s.csv"])  # doctest: +SKIP
        0
    """
    ap = argparse.ArgumentParser(prog="python -m metanet_utils.synthetic", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make", help="write a synthetic dataset")
    mk.add_argument("dest", type=Path)
    mk.add_argument("--n", type=int, default=700)
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--overwrite", action="store_true")
    st = sub.add_parser("stats", help="regenerate resources/ham10000_class_stats.csv")
    st.add_argument("metadata_csv", type=Path)
    st.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.cmd == "make":
        d = make_synthetic(args.dest, n_images=args.n, seed=args.seed, overwrite=args.overwrite)
        print(f"SYNTHETIC DATA written to {d}")
    else:
        print(f"wrote {write_class_stats(args.metadata_csv, args.out)}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
