"""Finding, loading and verifying HAM10000 / ISIC 2018 Task 3 data.

Layouts understood (DESIGN.md): a folder holding ``HAM10000_metadata.csv`` and the
``ISIC_*.jpg`` images either in the folder itself, in ``images/``, in the official
``HAM10000_images_part_1/2`` folders or in ``ISIC2018_Task3_Training_Input/``. The
official one-hot ground-truth CSV (``ISIC2018_Task3_Training_GroundTruth.csv``) is read
as a label source when the HAM10000 metadata file is absent (then age, sex and site are
unknown, and the lesion groupings CSV supplies ``lesion_id`` when present).

Where data is looked for, in order: the ``data_dir`` argument (``--data-dir``),
``$METANET_DATA_DIR``, ``data/ham10000/``; the demo and smoke profiles then fall back to the
shipped sample ``data/sample/`` (real HAM10000 images, downscaled; see its README).

What is refused and what is repaired (every refusal names the file or row and the value):

* metadata: a missing column, an unknown diagnosis, sex or site, an age that is not a
  number in 0..120, a duplicated ``image_id``, a lesion whose images disagree on the
  diagnosis, a ground-truth CSV row that is not one-hot: refused (:class:`DataError`).
  Extra whitespace and other letter case in headers and values are normalised.
* image files: missing for a metadata row (refused before training), empty, truncated,
  not an image, or not a JPEG (e.g. a PNG named ``.jpg``): refused (``verify`` lists them
  all; the image cache stops at the first one, naming it, and writes nothing).
* colour: grayscale (``L``) and ``CMYK`` JPEGs are converted to RGB when the image cache
  is built, and ``verify`` lists them in a NOTE. (A JPEG cannot hold an alpha channel:
  an RGBA image is always another format under a ``.jpg`` name and is refused as such.)
* image files with no metadata row are ignored, with a NOTE in ``verify``'s report.

Example:
    >>> from metanet_utils.data import load_metadata          # doctest: +SKIP
    >>> df = load_metadata("../shared/ham10000")              # doctest: +SKIP
    >>> df.dx.value_counts()["nv"]                            # doctest: +SKIP
    6705
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from .constants import CLASS_CODES, DATA_CLASS_COUNTS, DX_CODES, N_IMAGES, N_LESIONS, PAPER_CLASS_COUNTS, SEXES, SITES
from .paths import data_dir as default_data_root
from .paths import sample_dir

__all__ = [
    "DataError",
    "METADATA_FILE",
    "GROUNDTRUTH_FILE",
    "REQUIRED_COLUMNS",
    "IMAGE_FOLDERS",
    "DataLocation",
    "find_data_dir",
    "find_images",
    "load_metadata",
    "check_image",
    "read_rgb",
    "VerifyReport",
    "verify",
    "data_fingerprint",
    "stratified_subsample",
    "describe",
    "announce",
]

METADATA_FILE = "HAM10000_metadata.csv"
GROUNDTRUTH_FILE = "ISIC2018_Task3_Training_GroundTruth.csv"
LESION_GROUPINGS_FILE = "ISIC2018_Task3_Training_LesionGroupings.csv"
REQUIRED_COLUMNS: tuple[str, ...] = ("lesion_id", "image_id", "dx", "age", "sex", "localization")
#: Sub-folders searched for images, besides the data folder itself.
IMAGE_FOLDERS: tuple[str, ...] = (
    "images",
    "HAM10000_images_part_1",
    "HAM10000_images_part_2",
    "HAM10000_images",
    "ISIC2018_Task3_Training_Input",
)
AGE_RANGE = (0.0, 120.0)


class DataError(ValueError):
    """The data is missing or malformed; the message names the file or row and the value."""


SAMPLE_MARKER = "sample.json"  # written by `metanet data sample`: the folder is the kit's small sample


@dataclass(frozen=True)
class DataLocation:
    """Where the data was found and what it is: ``real`` (the official data or a copy) or ``sample``."""

    path: Path
    kind: str
    source: str


def _has_metadata(d: Path) -> bool:
    return (d / METADATA_FILE).is_file() or bool(_groundtruth_file(d))


def _groundtruth_file(d: Path) -> Path | None:
    for cand in (d / GROUNDTRUTH_FILE, d / "ISIC2018_Task3_Training_GroundTruth" / GROUNDTRUTH_FILE):
        if cand.is_file():
            return cand
    return None


def _located(d: Path, source: str) -> DataLocation:
    return DataLocation(d.resolve(), "sample" if (d / SAMPLE_MARKER).is_file() else "real", source)


def find_data_dir(data_dir: str | Path | None = None, *, sample_fallback: bool = False) -> DataLocation:
    """Locate the data: ``data_dir``, then ``$METANET_DATA_DIR``, then ``data/ham10000/``.

    With ``sample_fallback`` (the demo and smoke profiles) and nothing found there, the
    shipped sample ``data/sample/`` is used.

    Raises:
        DataError: a given folder does not exist or holds no metadata, or nothing was
            found and there is no fallback; the message says how to get the data.
    """
    if data_dir is not None:
        d = Path(data_dir).expanduser()
        if not d.is_dir():
            raise DataError(f"--data-dir {d} does not exist; give a folder holding {METADATA_FILE} and the ISIC_*.jpg images")
        if not _has_metadata(d):
            raise DataError(f"--data-dir {d} holds neither {METADATA_FILE} nor {GROUNDTRUTH_FILE}")
        return _located(d, "argument")
    env = os.environ.get("METANET_DATA_DIR")
    if env:
        d = Path(env).expanduser()
        if not d.is_dir() or not _has_metadata(d):
            raise DataError(f"$METANET_DATA_DIR={env} does not hold {METADATA_FILE}; fix or unset it")
        return _located(d, "METANET_DATA_DIR")
    d = default_data_root() / "ham10000"
    if d.is_dir() and _has_metadata(d):
        return _located(d, "data/ham10000")
    sample = sample_dir()
    if sample_fallback and _has_metadata(sample):
        return _located(sample, "the shipped sample (no full data found)")
    raise DataError(
        "no HAM10000 data found (looked at --data-dir, $METANET_DATA_DIR and data/ham10000/). "
        "Run `python -m metanet_utils data download` (a 2.6 GB image archive), or download the ISIC 2018 Task 3 training "
        "files and the HAM10000 metadata (Harvard Dataverse doi:10.7910/DVN/DBW86T) by hand into data/ham10000/, "
        "or pass --data-dir PATH.")


def find_images(data_dir: str | Path) -> dict[str, Path]:
    """Map ``image_id`` -> file for every ``ISIC_*.jpg`` in the known layouts."""
    data_dir = Path(data_dir)
    found: dict[str, Path] = {}
    for d in (data_dir, *(data_dir / s for s in IMAGE_FOLDERS)):
        if not d.is_dir():
            continue
        with os.scandir(d) as it:
            for e in it:
                name = e.name
                if name.startswith("ISIC_") and name.lower().endswith(".jpg") and e.is_file():
                    found.setdefault(name[:-4], Path(e.path))
    return found


def _normalise_text(s: pd.Series) -> pd.Series:
    return s.astype("string").str.strip().str.lower()


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
    return pd.DataFrame({"image_id": gt["image"].astype(str),
                         "dx": [DX_CODES[j] for j in onehot.argmax(axis=1)]})


def _metadata_from_groundtruth(data_dir: Path, gt_path: Path) -> pd.DataFrame:
    df = _read_groundtruth(gt_path)
    groupings = data_dir / LESION_GROUPINGS_FILE
    if groupings.is_file():
        g = pd.read_csv(groupings).rename(columns={"image": "image_id"})
        df = df.merge(g[["image_id", "lesion_id"]], on="image_id", how="left")
    if "lesion_id" not in df or df["lesion_id"].isna().any():
        df["lesion_id"] = df.get("lesion_id", pd.Series(index=df.index, dtype=object)).fillna(df["image_id"])
    df["dx_type"] = "unknown"
    df["age"] = np.nan
    df["sex"] = "unknown"
    df["localization"] = "unknown"
    return df


def load_metadata(data_dir: str | Path, *, require_images: bool = True, check_groundtruth: bool = True) -> pd.DataFrame:
    """One row per image: ``image_id, lesion_id, dx, dx_type, age, sex, localization, path``.

    Text values are stripped and lower-cased. Rows are in the file's order.

    Args:
        data_dir: a folder in one of the layouts of this module.
        require_images: raise if a metadata row has no image file (else ``path`` is None).
        check_groundtruth: when the official ground-truth CSV is also present, check that
            it agrees with ``dx``.

    Raises:
        DataError: a missing column, an unknown diagnosis, site or sex, an age that is not
            a number in 0..120, a duplicated ``image_id``, a lesion whose images disagree
            on the diagnosis, or (with ``require_images``) missing image files.
    """
    data_dir = Path(data_dir)
    meta_path = data_dir / METADATA_FILE
    gt_path = _groundtruth_file(data_dir)
    if meta_path.is_file():
        try:
            df = pd.read_csv(meta_path, dtype={"age": object})
        except Exception as e:  # noqa: BLE001 - any parser failure is a data error
            raise DataError(f"{meta_path}: cannot be read as CSV ({e})") from None
        df.columns = [str(c).strip().lower() for c in df.columns]
        missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
        if missing:
            raise DataError(f"{meta_path}: missing column(s) {missing}; found {list(df.columns)}; "
                            f"required: {', '.join(REQUIRED_COLUMNS)}")
        source = meta_path
    elif gt_path is not None:
        df = _metadata_from_groundtruth(data_dir, gt_path)
        source = gt_path
    else:
        raise DataError(f"{data_dir}: neither {METADATA_FILE} nor {GROUNDTRUTH_FILE} found")
    if "dx_type" not in df.columns:
        df["dx_type"] = "unknown"

    df["image_id"] = df["image_id"].astype("string").str.strip()
    df["lesion_id"] = df["lesion_id"].astype("string").str.strip()
    for col in ("dx", "dx_type", "sex", "localization"):
        df[col] = _normalise_text(df[col])
    df["sex"] = df["sex"].fillna("unknown")
    df["localization"] = df["localization"].fillna("unknown")
    _validate(df, source)
    df["age"] = _parse_age(df, source)

    if check_groundtruth and gt_path is not None and source != gt_path:
        gt = _read_groundtruth(gt_path).set_index("image_id")["dx"]
        common = df[df["image_id"].isin(gt.index)]
        disagree = common[common["dx"].to_numpy() != gt.loc[common["image_id"]].to_numpy()]
        if len(disagree):
            r = disagree.iloc[0]
            raise DataError(f"{gt_path}: image {r.image_id} is {gt[r.image_id]!r} there but {r.dx!r} in {meta_path.name} "
                            f"({len(disagree)} such rows)")

    images = find_images(data_dir)
    df["path"] = [str(images[i]) if i in images else None for i in df["image_id"]]
    if require_images:
        absent = df.loc[df["path"].isna(), "image_id"].tolist()
        if absent:
            raise DataError(f"{len(absent)} image(s) listed in {source.name} are missing on disk under {data_dir}, "
                            f"e.g. {', '.join(absent[:5])}; run `python -m metanet_utils data verify --data-dir {data_dir}` "
                            "to list them, or `python -m metanet_utils data download` to finish an interrupted download")
    cols = ["image_id", "lesion_id", "dx", "dx_type", "age", "sex", "localization", "path"]
    return df[cols + [c for c in df.columns if c not in cols]].reset_index(drop=True)


def _row_ref(df: pd.DataFrame, i: int, source: Path) -> str:
    return f"{source.name} row {i + 2} (image_id {df['image_id'].iloc[i]})"


def _validate(df: pd.DataFrame, source: Path) -> None:
    checks = (("dx", DX_CODES, "diagnosis"), ("sex", (*SEXES, "unknown"), "sex"),
              ("localization", (*SITES, "unknown"), "site"))
    for col, allowed, what in checks:
        bad = ~df[col].isin(allowed)
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(f"{_row_ref(df, i, source)}: unknown {what} {df[col].iloc[i]!r}; "
                            f"allowed: {', '.join(allowed)} ({int(bad.sum())} such rows)")
    dup = df["image_id"].duplicated(keep=False)
    if dup.any():
        n_ids = df.loc[dup, "image_id"].nunique()
        i = int(np.flatnonzero(df["image_id"].duplicated(keep="first").to_numpy())[0])  # the first repeat
        first = int(np.flatnonzero((df["image_id"] == df["image_id"].iloc[i]).to_numpy())[0])
        raise DataError(f"{_row_ref(df, i, source)}: duplicated image_id {df['image_id'].iloc[i]!r} (also row "
                        f"{first + 2}; {n_ids} duplicated ids)")
    if df["lesion_id"].isna().any():
        i = int(np.flatnonzero(df["lesion_id"].isna().to_numpy())[0])
        raise DataError(f"{_row_ref(df, i, source)}: empty lesion_id")
    n_dx = df.groupby("lesion_id")["dx"].nunique()
    bad_lesions = n_dx[n_dx > 1]
    if len(bad_lesions):
        lid = bad_lesions.index[0]
        values = sorted(df.loc[df["lesion_id"] == lid, "dx"].unique())
        raise DataError(f"{source.name}: lesion {lid} has images with different diagnoses {values} "
                        f"({len(bad_lesions)} such lesions)")


def _parse_age(df: pd.DataFrame, source: Path) -> pd.Series:
    raw = df["age"]
    text = raw.astype("string").str.strip()
    age = pd.to_numeric(text, errors="coerce").astype(float)  # plain float: a missing age is NaN, never pd.NA
    not_number = age.isna() & text.notna() & ~text.str.lower().isin(["", "nan", "na", "unknown"])
    if not_number.any():
        i = int(np.flatnonzero(not_number.to_numpy())[0])
        raise DataError(f"{_row_ref(df, i, source)}: age {raw.iloc[i]!r} is not a number")
    out = (age < AGE_RANGE[0]) | (age > AGE_RANGE[1])
    if out.any():
        i = int(np.flatnonzero(out.to_numpy())[0])
        raise DataError(f"{_row_ref(df, i, source)}: age {age.iloc[i]} is outside {AGE_RANGE[0]:.0f}-{AGE_RANGE[1]:.0f}")
    return age.astype(float)


#: Colour modes converted to RGB when the cache is built (reported as a NOTE by ``verify``).
CONVERTED_MODES = {"L": "grayscale", "CMYK": "CMYK", "RGBA": "RGBA (alpha dropped)"}


def read_rgb(path: str | Path, max_side: int | None = None) -> np.ndarray:
    """Decode an image file to an RGB uint8 ``HxWx3`` array, shrunk (keeping its shape) to at most ``max_side`` pixels.

    Args:
        path: the image file.
        max_side: None keeps the full size.
    """
    with Image.open(path) as im:
        im = im.convert("RGB")
        if max_side:
            im.thumbnail((max_side, max_side), Image.BILINEAR)
        return np.asarray(im)


def check_image(path: str | Path) -> str | None:
    """Decode one image fully; return None if fine, else what is wrong with it."""
    return _inspect_image(path)[0]


def _inspect_image(path: str | Path) -> tuple[str | None, str | None]:
    """``(problem or None, colour mode or None)`` of one fully decoded image."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        return f"cannot be read ({e.strerror})", None
    if size == 0:
        return "is empty (0 bytes)", None
    try:
        with Image.open(path) as im:
            fmt = im.format
            im.load()
            mode = im.mode
    except Exception as e:  # noqa: BLE001 - PIL raises many types
        return f"is not a readable image ({type(e).__name__}: {e})", None
    if fmt != "JPEG":
        return f"is a {fmt} file ({mode}), not a JPEG; save it as an RGB JPEG or remove it", mode
    if mode != "RGB" and mode not in CONVERTED_MODES:
        return f"has unsupported colour mode {mode}", mode
    return None, mode


@dataclass
class VerifyReport:
    """What ``verify`` found; ``ok`` is False when anything would break training."""

    data_dir: Path
    n_images: int = 0
    n_lesions: int = 0
    class_counts: dict[str, int] = field(default_factory=dict)
    missing_images: list[str] = field(default_factory=list)
    files_without_metadata: list[str] = field(default_factory=list)
    bad_images: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sample: bool = False  # the kit's shipped sample: its counts are its own, not the official ones

    @property
    def ok(self) -> bool:
        return not (self.errors or self.missing_images or self.bad_images)

    def counts_table(self) -> pd.DataFrame:
        """Class counts here vs the paper's (Sec. 3.1) and the official data."""
        rows = []
        for dx in sorted(DATA_CLASS_COUNTS, key=lambda k: -DATA_CLASS_COUNTS[k]):
            rows.append({"dx": dx, "here": self.class_counts.get(dx, 0), "paper": PAPER_CLASS_COUNTS[dx],
                         "official": DATA_CLASS_COUNTS[dx]})
        t = pd.DataFrame(rows)
        t["here_minus_paper"] = t["here"] - t["paper"]
        return t

    def format(self) -> str:
        lines = [f"Data folder: {self.data_dir}", f"images in metadata: {self.n_images} (official {N_IMAGES}); "
                 f"lesions: {self.n_lesions} (official {N_LESIONS})"]
        if self.sample:
            lines[1:] = [f"the kit's shipped sample of HAM10000 (a subsample, not the official set): {self.n_images} "
                         f"images of {self.n_lesions} whole lesions", "class counts (sample / full set):"]
            lines += [f"  {r.dx:6s} {r.here:5d} / {r.official:5d}" for r in self.counts_table().itertuples()]
        elif self.class_counts:
            lines.append("class counts (here / paper / official):")
            for r in self.counts_table().itertuples():
                flag = ("  <- the paper prints %d, the official data has %d (misprint or other label version)"
                        % (r.paper, r.official) if r.paper != r.official else "")
                lines.append(f"  {r.dx:6s} {r.here:5d} / {r.paper:5d} / {r.official:5d}{flag}")
        lines += [f"NOTE: {n}" for n in self.notes]
        if self.missing_images:
            lines.append(f"MISSING: {len(self.missing_images)} image(s) in the metadata have no file: "
                         + ", ".join(self.missing_images[:20]) + (" ..." if len(self.missing_images) > 20 else ""))
        if self.files_without_metadata:
            lines.append(f"EXTRA: {len(self.files_without_metadata)} image file(s) have no metadata row (ignored): "
                         + ", ".join(self.files_without_metadata[:20]))
        for name, why in list(self.bad_images.items())[:50]:
            lines.append(f"BAD IMAGE: {name} {why}")
        lines += [f"ERROR: {e}" for e in self.errors]
        lines.append("OK" if self.ok else "FAILED: fix the problems above")
        return "\n".join(lines)


def verify(data_dir: str | Path, *, decode: bool = True, workers: int | None = None, progress: bool = True) -> VerifyReport:
    """Check a data folder: metadata rules, counts against the paper's, files on disk.

    Every problem is collected (not only the first), each naming the file or row and
    the value. ``decode`` fully decodes every image (parallel) to find truncated or
    unreadable files.
    """
    data_dir = Path(data_dir)
    report = VerifyReport(data_dir=data_dir, sample=(data_dir / SAMPLE_MARKER).is_file())
    try:
        df = load_metadata(data_dir, require_images=False)
    except DataError as e:
        # the metadata is broken: say so, and still check what can be checked without it (the files)
        report.errors.append(str(e))
        on_disk = find_images(data_dir)
        listed = _listed_ids(data_dir)
        if listed is not None:
            report.missing_images = [i for i in listed if i not in on_disk]
            report.files_without_metadata = sorted(set(on_disk) - set(listed))
        if decode:
            _decode_into(report, [str(on_disk[i]) for i in sorted(on_disk)], workers, progress)
        return report
    report.n_images = len(df)
    report.n_lesions = int(df["lesion_id"].nunique())
    report.class_counts = {k: int(v) for k, v in df["dx"].value_counts().items()}
    if report.n_images == N_IMAGES:
        report.notes.append("the paper prints BKL 1098 and VASC 143; the official data has 1099 and 142 "
                            "(a misprint or another label version)")
    if df["age"].isna().all() and (df["sex"] == "unknown").all() and (df["localization"] == "unknown").all():
        report.notes.append("no age, sex or site for any image (ground-truth CSV only): only the image-only variant "
                            "(fusion none) can be trained; add HAM10000_metadata.csv for concat and metanet")
    report.missing_images = df.loc[df["path"].isna(), "image_id"].tolist()
    on_disk = find_images(data_dir)
    report.files_without_metadata = sorted(set(on_disk) - set(df["image_id"]))
    if decode:
        _decode_into(report, [p for p in df["path"].dropna()], workers, progress)
    return report


def _listed_ids(data_dir: Path) -> list[str] | None:
    """The image ids a metadata (or ground-truth) file lists, read as plainly as possible."""
    for path, col in ((data_dir / METADATA_FILE, "image_id"), (_groundtruth_file(data_dir), "image")):
        if path is None or not path.is_file():
            continue
        try:
            raw = pd.read_csv(path, dtype=str)
        except Exception:  # noqa: BLE001 - unreadable: the error is already reported
            return None
        cols = {str(c).strip().lower(): c for c in raw.columns}
        if col in cols:
            return [str(v).strip() for v in raw[cols[col]].dropna()]
        return None
    return None


def _decode_into(report: "VerifyReport", paths: list[str], workers: int | None, progress: bool) -> None:
    """Decode every image (in parallel): broken ones into ``report.bad_images``, conversions into its notes."""
    converted: dict[str, list[str]] = {}
    with ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 2) * 2)) as ex:
        results = ex.map(_inspect_image, paths)
        if progress:
            from tqdm.auto import tqdm

            results = tqdm(results, total=len(paths), desc="decoding images", unit="img", mininterval=1.0)
        for p, (why, mode) in zip(paths, results):
            if why:
                report.bad_images[Path(p).name] = why
            elif mode in CONVERTED_MODES:
                converted.setdefault(mode, []).append(Path(p).name)
    for mode, names in converted.items():
        report.notes.append(f"{len(names)} {CONVERTED_MODES[mode]} image(s) will be converted to RGB: "
                            + ", ".join(names[:20]) + (" ..." if len(names) > 20 else ""))


def data_fingerprint(df: pd.DataFrame) -> str:
    """A short hash of what the data is: ids, labels, metadata and file sizes.

    Two folders with the same images and metadata give the same fingerprint; any change
    (a subsample, a different resolution, an edited row) gives another.
    """
    h = hashlib.sha256()
    cols = ["image_id", "lesion_id", "dx", "age", "sex", "localization"]
    h.update(pd.util.hash_pandas_object(df[cols].astype(str), index=False).to_numpy().tobytes())
    sizes = [os.path.getsize(p) if isinstance(p, str) and os.path.exists(p) else -1 for p in df["path"]]
    h.update(np.asarray(sizes, dtype=np.int64).tobytes())
    return h.hexdigest()[:12]


def stratified_subsample(df: pd.DataFrame, n: int | None, seed: int = 0, min_per_class: int = 10) -> pd.DataFrame:
    """Keep about ``n`` images, whole lesions at a time, with HAM10000's class proportions
    and at least ``min_per_class`` images per class (so 5-fold CV still has every class).
    """
    if n is None or n >= len(df):
        return df.reset_index(drop=True)
    rng = np.random.default_rng(seed)
    share = df["dx"].value_counts(normalize=True).sort_index()
    keep: list[str] = []
    for dx, frac in share.items():
        target = max(min_per_class, int(round(frac * n)))
        lesions = np.array(sorted(df.loc[df["dx"] == dx, "lesion_id"].unique()), dtype=object)
        rng.shuffle(lesions)
        sizes = df[df["dx"] == dx].groupby("lesion_id").size()
        total = 0
        for lid in lesions:
            if total >= target:
                break
            keep.append(lid)
            total += int(sizes[lid])
    out = df[df["lesion_id"].isin(set(keep))]
    return out.reset_index(drop=True)


def describe(data: Any) -> str:
    """What data this is, in the words every notebook, figure footer and report uses.

    ``the shipped sample: 1095 images at 128x96`` or ``the full set: 10015 images`` (or ``N images`` for a
    subsample of the full set).

    Args:
        data: a :class:`metanet_utils.dataset.Dataset` (anything with ``kind``, ``df`` and ``data_dir``).
    """
    n = len(data.df)
    if data.kind == "sample":
        drawn = json.loads((Path(data.data_dir) / SAMPLE_MARKER).read_text())
        size = "x".join(map(str, drawn["size"]))
        if n == drawn["images"]:
            return f"the shipped sample of HAM10000: {n} images at {size}"
        return f"{n} of the shipped sample's {drawn['images']} HAM10000 images at {size}"
    return f"the full set: {n} images" if n == N_IMAGES else f"HAM10000: {n} of its images"


def announce(data: Any) -> None:
    """Print what data a notebook runs on and where it lies."""
    path = getattr(data, "path", None) or getattr(data, "data_dir", "")
    print(f"Data: {describe(data)} ({path}).")
    if data.kind == "sample":
        print("The sample is real (CC BY-NC 4.0, see data/sample/README.md) but small: for the paper's numbers use the "
              "full set (python -m metanet_utils data download, or --data-dir PATH).")
