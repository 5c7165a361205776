"""``python -m metanet_utils data verify``: every problem of a data folder at once, and its class counts.

Unlike :func:`metanet_utils.data.load_metadata`, which stops at the first problem, the report lists them all (bad
metadata, missing, extra, broken, grayscale or CMYK images); ``ok`` is False when training would fail (exit 1).

Example:
    >>> from metanet_utils import paths
    >>> report = verify(paths.sample_dir(), decode=False)
    >>> report.ok, report.n_images, report.n_lesions, report.class_counts["df"]
    (True, 1095, 781, 50)
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from ..constants import DATA_CLASS_COUNTS, N_IMAGES, N_LESIONS, PAPER_CLASS_COUNTS, PAPER_ORDER
from ..data import METADATA_FILE, SAMPLE_MARKER, DataError, check_image, find_images, groundtruth_file, load_metadata

CONVERTED_MODES = {"L": "grayscale", "CMYK": "CMYK"}


@dataclass
class VerifyReport:
    """What :func:`verify` found in ``data_dir``."""

    data_dir: Path
    n_images: int = 0
    n_lesions: int = 0
    class_counts: dict[str, int] = field(default_factory=dict)
    missing_images: list[str] = field(default_factory=list)
    files_without_metadata: list[str] = field(default_factory=list)
    bad_images: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sample: bool = False  # the kit's shipped sample: its counts are its own

    @property
    def ok(self) -> bool:
        return not (self.errors or self.missing_images or self.bad_images)

    def format(self) -> str:
        if self.sample:
            lines = [f"the kit's shipped sample of HAM10000 (a subsample, not the official set): {self.n_images} "
                     f"images of {self.n_lesions} whole lesions"]
        else:
            lines = [f"images in metadata: {self.n_images} (official {N_IMAGES}); lesions: {self.n_lesions} "
                     f"(official {N_LESIONS})"]
        if self.class_counts:
            lines.append("class counts (here / paper / official):")
            lines += [f"  {dx:6s} {self.class_counts.get(dx, 0):5d} / {PAPER_CLASS_COUNTS[dx]:5d} / "
                      f"{DATA_CLASS_COUNTS[dx]:5d}" for dx in PAPER_ORDER]
        lines += [f"NOTE: {n}" for n in self.notes]
        if self.missing_images:
            lines.append(f"MISSING: {len(self.missing_images)} image(s) in the metadata have no file: "
                         + _some(self.missing_images))
        if self.files_without_metadata:
            lines.append(f"EXTRA: {len(self.files_without_metadata)} image file(s) have no metadata row (ignored): "
                         + _some(self.files_without_metadata))
        lines += [f"BAD IMAGE: {name} {why}" for name, why in list(self.bad_images.items())[:50]]
        lines += [f"ERROR: {e}" for e in self.errors]
        lines.append("OK" if self.ok else "FAILED: fix the problems above")
        return "\n".join([f"Data folder: {self.data_dir}", *lines])


def _some(names: list[str], n: int = 20) -> str:
    return ", ".join(names[:n]) + (" ..." if len(names) > n else "")


def verify(data_dir: str | Path, *, decode: bool = True, progress: bool = True) -> VerifyReport:
    """Check a data folder: the metadata rules, counts against the paper's, and (``decode``, in threads) every
    image file."""
    data_dir = Path(data_dir)
    report = VerifyReport(data_dir=data_dir, sample=(data_dir / SAMPLE_MARKER).is_file())
    on_disk = find_images(data_dir)
    try:
        df = load_metadata(data_dir, require_images=False)
    except DataError as e:  # broken metadata: say so, and still check the files it lists
        report.errors.append(str(e))
        listed = _listed_ids(data_dir)
        if listed is not None:
            report.missing_images = [i for i in listed if i not in on_disk]
            report.files_without_metadata = sorted(set(on_disk) - set(listed))
        files = [on_disk[i] for i in sorted(on_disk)]
    else:
        report.n_images, report.n_lesions = len(df), df["lesion_id"].nunique()
        report.class_counts = {k: int(v) for k, v in df["dx"].value_counts().items()}
        if len(df) == N_IMAGES:
            report.notes.append("the paper prints BKL 1098 and VASC 143; the official data has 1099 and 142 "
                                "(a misprint or another label version)")
        if df["age"].isna().all() and (df[["sex", "localization"]] == "unknown").all(axis=None):
            report.notes.append("no age, sex or site for any image (ground-truth CSV only): only the image-only "
                                "variant (fusion none) can be trained; add HAM10000_metadata.csv for the others")
        report.missing_images = df.loc[df["path"].isna(), "image_id"].tolist()
        report.files_without_metadata = sorted(set(on_disk) - set(df["image_id"]))
        files = list(df["path"].dropna())
    if decode:
        paths, converted = [Path(p) for p in files], {}
        with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) * 2)) as ex:
            results = tqdm(ex.map(_inspect, paths), total=len(paths), desc="decoding images", unit="img",
                           mininterval=1.0, disable=not progress)
            for path, (why, mode) in zip(paths, results):
                if why:
                    report.bad_images[path.name] = why
                elif mode in CONVERTED_MODES:
                    converted.setdefault(mode, []).append(path.name)
        report.notes += [f"{len(names)} {CONVERTED_MODES[mode]} image(s) will be converted to RGB: {_some(names)}"
                         for mode, names in converted.items()]
    return report


def _listed_ids(data_dir: Path) -> list[str] | None:
    """The image ids the metadata (or ground-truth) file lists, read as plainly as possible."""
    for path, col in ((data_dir / METADATA_FILE, "image_id"), (groundtruth_file(data_dir), "image")):
        if path is not None and path.is_file():
            try:
                raw = pd.read_csv(path, dtype=str)
            except Exception:  # noqa: BLE001 - unreadable: the error is already reported
                return None
            cols = {str(c).strip().lower(): c for c in raw.columns}
            return [str(v).strip() for v in raw[cols[col]].dropna()] if col in cols else None
    return None


def _inspect(path: Path) -> tuple[str | None, str | None]:
    """(what is wrong, colour mode) of one image, fully decoded."""
    why = check_image(path)
    if why:
        return why, None
    with Image.open(path) as im:
        return None, im.mode

