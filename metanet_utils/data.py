"""Finding and loading HAM10000 / ISIC 2018 Task 3 data (layouts and lookup order: DESIGN.md, "Data").

A bad folder is refused with one line naming the file or row and the value; ``metanet data verify`` lists them all.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from PIL import Image

from . import paths
from .constants import CLASS_CODES, DX_CODES, N_IMAGES, SEXES, SITES

METADATA_FILE = "HAM10000_metadata.csv"
GROUNDTRUTH_FILE = "ISIC2018_Task3_Training_GroundTruth.csv"
LESION_GROUPINGS_FILE = "ISIC2018_Task3_Training_LesionGroupings.csv"
REQUIRED_COLUMNS = ("lesion_id", "image_id", "dx", "age", "sex", "localization")
IMAGE_FOLDERS = ("images", "HAM10000_images_part_1", "HAM10000_images_part_2", "HAM10000_images",
                 "ISIC2018_Task3_Training_Input")
SAMPLE_MARKER = "sample.json"  # marks the kit's small sample (`metanet data sample`)


class DataError(ValueError):
    """The data is missing or malformed; the message names the file or row and the value."""


class DataLocation(NamedTuple):
    """Where the data was found, ``real`` or ``sample`` (``kind``), and how (``source``)."""
    path: Path
    kind: str
    source: str


def groundtruth_file(d: Path) -> Path | None:
    """The official one-hot ground-truth CSV of folder ``d``, or None."""
    return next((p for p in (d / GROUNDTRUTH_FILE, d / GROUNDTRUTH_FILE[:-4] / GROUNDTRUTH_FILE) if p.is_file()), None)


def _has_metadata(d: Path) -> bool:
    return (d / METADATA_FILE).is_file() or groundtruth_file(d) is not None


def find_data_dir(data_dir: str | Path | None = None, *, sample_fallback: bool = False) -> DataLocation:
    """``data_dir``, else ``$METANET_DATA_DIR``, else ``data/ham10000/``, else (``sample_fallback``) the shipped
    sample; else a DataError saying what to do."""
    env = os.environ.get("METANET_DATA_DIR")
    if data_dir is not None:
        d, source = Path(data_dir).expanduser(), "argument"
        if not d.is_dir():
            raise DataError(f"--data-dir {d} does not exist; give a folder holding {METADATA_FILE} and the ISIC_*.jpg "
                            "images")
        if not _has_metadata(d):
            raise DataError(f"--data-dir {d} holds neither {METADATA_FILE} nor {GROUNDTRUTH_FILE}")
    elif env:
        d, source = Path(env).expanduser(), "METANET_DATA_DIR"
        if not _has_metadata(d):
            raise DataError(f"$METANET_DATA_DIR={env} does not hold {METADATA_FILE}; fix or unset it")
    elif _has_metadata(paths.data_dir() / "ham10000"):
        d, source = paths.data_dir() / "ham10000", "data/ham10000"
    elif sample_fallback and _has_metadata(paths.sample_dir()):
        d, source = paths.sample_dir(), "the shipped sample (no full data found)"
    else:
        raise DataError("no HAM10000 data found (looked at --data-dir, $METANET_DATA_DIR and data/ham10000/). Run "
                        "`python -m metanet_utils data download` (2.6 GB), or put the ISIC 2018 Task 3 training images "
                        "and HAM10000_metadata.csv (doi:10.7910/DVN/DBW86T) in data/ham10000/, or pass --data-dir PATH")
    return DataLocation(d.resolve(), "sample" if (d / SAMPLE_MARKER).is_file() else "real", source)


def find_images(data_dir: str | Path) -> dict[str, Path]:
    """``image_id -> file`` for every ``ISIC_*.jpg`` in the known layouts."""
    found: dict[str, Path] = {}
    for d in (Path(data_dir), *(Path(data_dir) / s for s in IMAGE_FOLDERS)):
        for p in d.iterdir() if d.is_dir() else ():
            if p.name.startswith("ISIC_") and p.suffix.lower() == ".jpg":
                found.setdefault(p.stem, p)
    return found


def _read_groundtruth(path: Path) -> pd.DataFrame:
    gt = pd.read_csv(path)
    missing = [c for c in ("image", *CLASS_CODES) if c not in gt.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; expected image,{','.join(CLASS_CODES)}")
    onehot = gt[list(CLASS_CODES)].to_numpy(dtype=float)
    bad = ~(np.isin(onehot, (0.0, 1.0)).all(axis=1) & (onehot.sum(axis=1) == 1))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: row {i + 2} (image {gt['image'].iloc[i]}) is not one-hot: {onehot[i].tolist()}")
    return pd.DataFrame({"image_id": gt["image"].astype(str), "dx": [DX_CODES[j] for j in onehot.argmax(axis=1)]})


def _read_table(data_dir: Path) -> tuple[pd.DataFrame, Path]:
    """The metadata file, else the ground-truth CSV's labels with unknown metadata."""
    meta_path, gt_path = data_dir / METADATA_FILE, groundtruth_file(data_dir)
    if meta_path.is_file():
        try:
            df = pd.read_csv(meta_path, dtype={"age": object})
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{meta_path}: cannot be read as CSV ({e})") from None
        df.columns = [str(c).strip().lower() for c in df.columns]
        missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
        if missing:
            raise DataError(f"{meta_path}: missing column(s) {missing}; found {list(df.columns)}; "
                            f"required: {', '.join(REQUIRED_COLUMNS)}")
        return df, meta_path
    if gt_path is None:
        raise DataError(f"{data_dir}: neither {METADATA_FILE} nor {GROUNDTRUTH_FILE} found")
    df = _read_groundtruth(gt_path)
    if (data_dir / LESION_GROUPINGS_FILE).is_file():
        groups = pd.read_csv(data_dir / LESION_GROUPINGS_FILE).rename(columns={"image": "image_id"})
        df = df.merge(groups[["image_id", "lesion_id"]], on="image_id", how="left")
    df["lesion_id"] = df.get("lesion_id", df["image_id"]).fillna(df["image_id"])
    return df.assign(age=np.nan, sex="unknown", localization="unknown"), gt_path


def load_metadata(data_dir: str | Path, *, require_images: bool = True) -> pd.DataFrame:
    """One row per image: ``image_id, lesion_id, dx, dx_type, age, sex, localization, path``; a bad value, a
    missing column or (``require_images``) a missing image is a DataError."""
    data_dir = Path(data_dir)
    df, source = _read_table(data_dir)
    if "dx_type" not in df.columns:
        df["dx_type"] = "unknown"
    for col in ("image_id", "lesion_id"):
        df[col] = df[col].astype("string").str.strip()
    for col in ("dx", "dx_type", "sex", "localization"):
        df[col] = df[col].astype("string").str.strip().str.lower()
    df[["sex", "localization"]] = df[["sex", "localization"]].fillna("unknown")
    df["age"] = _validate(df, source)

    gt_path = groundtruth_file(data_dir)
    if gt_path is not None and source != gt_path:  # both files must agree
        both = df.merge(_read_groundtruth(gt_path), on="image_id", suffixes=("", "_gt"))
        bad = both[both["dx"] != both["dx_gt"]]
        if len(bad):
            raise DataError(f"{gt_path}: image {bad.image_id.iloc[0]} is {bad.dx_gt.iloc[0]!r} there but "
                            f"{bad.dx.iloc[0]!r} in {source.name} ({len(bad)} such rows)")

    images = find_images(data_dir)
    df["path"] = [str(images[i]) if i in images else None for i in df["image_id"]]
    absent = df.loc[df["path"].isna(), "image_id"].tolist()
    if require_images and absent:
        raise DataError(f"{len(absent)} image(s) listed in {source.name} are missing on disk under {data_dir}, e.g. "
                        f"{', '.join(absent[:5])}; `python -m metanet_utils data verify --data-dir {data_dir}` lists "
                        "them, `python -m metanet_utils data download` finishes an interrupted download")
    cols = ["image_id", "lesion_id", "dx", "dx_type", "age", "sex", "localization", "path"]
    return df[cols + [c for c in df.columns if c not in cols]].reset_index(drop=True)


def _validate(df: pd.DataFrame, source: Path) -> pd.Series:
    """Refuse the first bad row (naming it and its value); return the ages as floats."""
    def refuse(bad: pd.Series, why) -> None:
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(f"{source.name} row {i + 2} (image_id {df['image_id'].iloc[i]}): {why(i)}")

    for col, allowed, what in (("dx", DX_CODES, "diagnosis"), ("sex", (*SEXES, "unknown"), "sex"),
                               ("localization", (*SITES, "unknown"), "site")):
        bad = ~df[col].isin(allowed)
        refuse(bad, lambda i: f"unknown {what} {df[col].iloc[i]!r}; allowed: {', '.join(allowed)} "
                              f"({int(bad.sum())} such rows)")
    ids = df["image_id"]
    refuse(ids.duplicated(), lambda i: f"duplicated image_id {ids.iloc[i]!r} (also row "
                                       f"{int(np.flatnonzero(ids == ids.iloc[i])[0]) + 2})")
    refuse(df["lesion_id"].isna(), lambda i: "empty lesion_id")
    n_dx = df.groupby("lesion_id")["dx"].nunique()
    if (n_dx > 1).any():
        lid = n_dx[n_dx > 1].index[0]
        raise DataError(f"{source.name}: lesion {lid} has images with different diagnoses "
                        f"{sorted(df.loc[df['lesion_id'] == lid, 'dx'].unique())} ({(n_dx > 1).sum()} such lesions)")
    text = df["age"].astype("string").str.strip()
    age = pd.to_numeric(text, errors="coerce").astype(float)  # a missing age is NaN, never pd.NA
    refuse(age.isna() & text.notna() & ~text.str.lower().isin(["", "nan", "na", "unknown"]),
           lambda i: f"age {df['age'].iloc[i]!r} is not a number")
    refuse((age < 0) | (age > 120), lambda i: f"age {age.iloc[i]} is outside 0-120")
    return age


def read_rgb(path: str | Path, max_side: int | None = None) -> np.ndarray:
    """Decode an image to RGB uint8 ``HxWx3``, shrunk to at most ``max_side``."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        if max_side:
            im.thumbnail((max_side, max_side), Image.BILINEAR)
        return np.asarray(im)


def check_image(path: str | Path) -> str | None:
    """None if the file is a readable JPEG, else what is wrong with it."""
    try:
        if os.path.getsize(path) == 0:
            return "is empty (0 bytes)"
        with Image.open(path) as im:
            im.load()
            fmt, mode = im.format, im.mode
    except Exception as e:  # noqa: BLE001
        return f"is not a readable image ({type(e).__name__}: {e})"
    return None if fmt == "JPEG" else f"is a {fmt} file ({mode}), not a JPEG; save it as an RGB JPEG or remove it"


def data_fingerprint(df: pd.DataFrame) -> str:
    """A short hash of ids, labels, metadata and file sizes: other data get another image cache and other folds."""
    h = hashlib.sha256()
    cols = ["image_id", "lesion_id", "dx", "age", "sex", "localization"]
    h.update(pd.util.hash_pandas_object(df[cols].astype(str), index=False).to_numpy().tobytes())
    sizes = [os.path.getsize(p) if isinstance(p, str) and os.path.exists(p) else -1 for p in df["path"]]
    h.update(np.asarray(sizes, dtype=np.int64).tobytes())
    return h.hexdigest()[:12]


def stratified_subsample(df: pd.DataFrame, n: int | None, seed: int = 0, min_per_class: int = 10) -> pd.DataFrame:
    """About ``n`` images, whole lesions, in the class proportions of ``df``, at least ``min_per_class`` per class."""
    if n is None or n >= len(df):
        return df.reset_index(drop=True)
    rng = np.random.default_rng(seed)
    keep: list[str] = []
    for dx, frac in df["dx"].value_counts(normalize=True).sort_index().items():
        sizes = df[df["dx"] == dx].groupby("lesion_id").size()
        lesions = np.array(sorted(sizes.index), dtype=object)
        rng.shuffle(lesions)
        n_images = sizes[lesions].to_numpy()
        keep += list(lesions[np.cumsum(n_images) - n_images < max(min_per_class, round(frac * n))])
    return df[df["lesion_id"].isin(set(keep))].reset_index(drop=True)


def describe(data: Any) -> str:
    """What a ``Dataset`` is, e.g. ``the shipped sample of HAM10000: 1095 images at 128x96``."""
    n = len(data.df)
    if data.kind != "sample":
        return f"the full set: {n} images" if n == N_IMAGES else f"HAM10000: {n} of its images"
    drawn = json.loads((Path(data.data_dir) / SAMPLE_MARKER).read_text())
    size = "x".join(map(str, drawn["size"]))
    if n == drawn["images"]:
        return f"the shipped sample of HAM10000: {n} images at {size}"
    return f"{n} of the shipped sample's {drawn['images']} HAM10000 images at {size}"


def announce(data: Any) -> None:
    print(f"Data: {describe(data)} ({data.data_dir}).")
    if data.kind == "sample":
        print("The sample is real (CC BY-NC 4.0, see data/sample/README.md) but small: for the paper's numbers use the "
              "full set (python -m metanet_utils data download, or --data-dir PATH).")
