"""A corpus of broken data folders for the reliability tests, built from the real HAM10000 copy.

:func:`good_copy` writes a small, valid folder (about 100 images of every class, whole lesions,
``HAM10000_metadata.csv`` + ``images/``); :func:`make_case` writes the same folder and then breaks it
in one named way (see :data:`CASES`). Each case says how the kit must react (``kind``) and which
strings the message must hold (the file or row, and the value):

* ``metadata``: :func:`load_metadata` refuses the folder; ``verify`` exits 1 with an ``ERROR:`` line;
  ``grid`` / ``train`` exit 2 with ``error: ...`` before any cache or record is written;
* ``image``: a file is broken; ``verify`` exits 1 with a ``BAD IMAGE:`` line; the image cache (``grid``)
  stops at it, exit 2, naming it, and no cache file or record is left;
* ``missing``: an image listed in the metadata is not on disk; ``verify`` exits 1 (``MISSING:``);
  ``grid`` exits 2 before training;
* ``converted``: a grayscale or CMYK JPEG; converted to RGB in the cache, with a ``NOTE:`` in ``verify``
  (exit 0);
* ``ignored``: an image with no metadata row; ignored, with an ``EXTRA: ... (ignored)`` line (exit 0);
* ``normalised``: extra whitespace / other letter case; read as the clean values.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

CODES = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
#: Images per class in the good copy (whole lesions are taken, so a few more may come).
QUOTA = {"nv": 30, "mel": 16, "bkl": 16, "bcc": 12, "akiec": 10, "vasc": 8, "df": 8}


def good_copy(src: Path, dest: Path, quota: dict[str, int] | None = None) -> Path:
    """A valid folder of about 100 real images (every class, whole lesions, file order), in ``dest``."""
    meta = pd.read_csv(src / "HAM10000_metadata.csv", dtype=str, keep_default_na=False)
    keep: list[str] = []
    for dx, n in (quota or QUOTA).items():
        got = 0
        for lid, rows in meta[meta["dx"] == dx].groupby("lesion_id", sort=False):
            if got >= n:
                break
            keep.append(lid)
            got += len(rows)
    meta = meta[meta["lesion_id"].isin(set(keep))]
    (dest / "images").mkdir(parents=True, exist_ok=True)
    meta.to_csv(dest / "HAM10000_metadata.csv", index=False)
    for i in meta["image_id"]:
        shutil.copyfile(src / "images" / f"{i}.jpg", dest / "images" / f"{i}.jpg")
    return dest


def read_meta(d: Path) -> pd.DataFrame:
    return pd.read_csv(d / "HAM10000_metadata.csv", dtype=str, keep_default_na=False)


def write_meta(d: Path, meta: pd.DataFrame) -> None:
    meta.to_csv(d / "HAM10000_metadata.csv", index=False)


def image_path(d: Path, image_id: str) -> Path:
    return d / "images" / f"{image_id}.jpg"


@dataclass(frozen=True)
class BadCase:
    kind: str
    #: breaks the folder; returns facts (``file``, ``row``, ``value``...) the expected strings use
    apply: Callable[[Path], dict]
    #: strings the message must hold, formatted with the facts
    expect: tuple[str, ...]


# --------------------------------------------------------------------------- image files

def _victim(d: Path, k: int = 0) -> str:
    """The k-th image of the (file-ordered) metadata."""
    return str(read_meta(d)["image_id"].iloc[k])


def _truncate(d: Path) -> dict:
    i = _victim(d, 3)
    p = image_path(d, i)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return {"file": p.name, "id": i}


def _zero_bytes(d: Path) -> dict:
    i = _victim(d, 4)
    image_path(d, i).write_bytes(b"")
    return {"file": f"{i}.jpg", "id": i}


def _png(mode: str) -> Callable[[Path], dict]:
    def apply(d: Path) -> dict:
        from PIL import Image

        i = _victim(d, 5)
        p = image_path(d, i)
        with Image.open(p) as im:
            im.convert(mode).save(p, format="PNG")
        return {"file": p.name, "id": i}
    return apply


def _text(d: Path) -> dict:
    i = _victim(d, 6)
    image_path(d, i).write_text("this is not an image\n")
    return {"file": f"{i}.jpg", "id": i}


def _jpeg_mode(mode: str, k: int) -> Callable[[Path], dict]:
    def apply(d: Path) -> dict:
        from PIL import Image

        i = _victim(d, k)
        p = image_path(d, i)
        with Image.open(p) as im:
            im.convert(mode).save(p, format="JPEG", quality=90)
        return {"file": p.name, "id": i}
    return apply


def _missing(d: Path) -> dict:
    i = _victim(d, 8)
    image_path(d, i).unlink()
    return {"file": f"{i}.jpg", "id": i}


def _extra(d: Path) -> dict:
    i = _victim(d, 9)
    shutil.copyfile(image_path(d, i), image_path(d, "ISIC_9999999"))
    return {"file": "ISIC_9999999.jpg", "id": "ISIC_9999999"}


# --------------------------------------------------------------------------- metadata

def _edit_row(col: str, value: str, k: int = 2) -> Callable[[Path], dict]:
    def apply(d: Path) -> dict:
        meta = read_meta(d)
        meta.loc[meta.index[k], col] = value
        write_meta(d, meta)
        return {"row": k + 2, "id": meta["image_id"].iloc[k], "value": value, "value_low": value.strip().lower()}
    return apply


def _drop_column(col: str) -> Callable[[Path], dict]:
    def apply(d: Path) -> dict:
        write_meta(d, read_meta(d).drop(columns=[col]))
        return {"column": col}
    return apply


def _rename_column(col: str, to: str) -> Callable[[Path], dict]:
    def apply(d: Path) -> dict:
        write_meta(d, read_meta(d).rename(columns={col: to}))
        return {"column": col, "to": to}
    return apply


def _duplicate(d: Path) -> dict:
    meta = read_meta(d)
    write_meta(d, pd.concat([meta, meta.iloc[[10]]]))
    return {"id": meta["image_id"].iloc[10], "row": len(meta) + 2}


def _lesion_disagrees(d: Path) -> dict:
    meta = read_meta(d)
    sizes = meta.groupby("lesion_id").size()
    lid = sizes[sizes > 1].index[0]
    k = meta.index[meta["lesion_id"] == lid][-1]
    other = "mel" if meta.loc[k, "dx"] != "mel" else "nv"
    meta.loc[k, "dx"] = other
    write_meta(d, meta)
    return {"lesion": lid, "value": other}


def _normalise(d: Path) -> dict:
    meta = read_meta(d)
    meta = meta.rename(columns={"dx": " dx ", "sex": "sex "})
    meta[" dx "] = " " + meta[" dx "].str.upper() + "  "
    meta["sex "] = meta["sex "].str.title() + " "
    meta["localization"] = "  " + meta["localization"].str.title()
    meta["image_id"] = meta["image_id"] + " "
    meta["lesion_id"] = " " + meta["lesion_id"]
    meta["age"] = " " + meta["age"] + " "
    write_meta(d, meta)
    return {}


def _groundtruth(edit: str) -> Callable[[Path], dict]:
    """Replace (``not_onehot``, ``soft``) or accompany (``disagrees``) the metadata by the official
    one-hot ground-truth CSV, with row 4 (file row 5) broken."""
    def apply(d: Path) -> dict:
        meta = read_meta(d)
        gt = pd.DataFrame({"image": meta["image_id"]})
        for c in CODES:
            gt[c] = (meta["dx"].str.upper() == c).astype(float)
        k = 3
        facts = {"row": k + 2, "id": meta["image_id"].iloc[k]}
        if edit == "not_onehot":
            gt.loc[k, CODES] = [1.0, 1.0, 0, 0, 0, 0, 0]
        elif edit == "soft":
            gt.loc[k, CODES] = [0.5, 0.5, 0, 0, 0, 0, 0]
        elif edit == "disagrees":
            true = meta["dx"].iloc[k]
            wrong = "mel" if true != "mel" else "nv"
            gt.loc[k, CODES] = [float(c.lower() == wrong) for c in CODES]
            facts.update(true=true, wrong=wrong)
        gt.to_csv(d / "ISIC2018_Task3_Training_GroundTruth.csv", index=False)
        if edit != "disagrees":
            (d / "HAM10000_metadata.csv").unlink()
        return facts
    return apply


def _unreadable_csv(d: Path) -> dict:
    (d / "HAM10000_metadata.csv").write_bytes(b"")
    return {}


CASES: dict[str, BadCase] = {
    # image files
    "truncated_jpeg": BadCase("image", _truncate, ("{file}", "truncated")),
    "zero_bytes": BadCase("image", _zero_bytes, ("{file}", "is empty (0 bytes)")),
    "png_named_jpg": BadCase("image", _png("RGB"), ("{file}", "is a PNG file (RGB), not a JPEG")),
    "rgba_png_named_jpg": BadCase("image", _png("RGBA"), ("{file}", "is a PNG file (RGBA), not a JPEG")),
    "text_named_jpg": BadCase("image", _text, ("{file}", "is not a readable image")),
    "grayscale_jpeg": BadCase("converted", _jpeg_mode("L", 7), ("{file}", "grayscale", "converted to RGB")),
    "cmyk_jpeg": BadCase("converted", _jpeg_mode("CMYK", 11), ("{file}", "CMYK", "converted to RGB")),
    "missing_image": BadCase("missing", _missing, ("{id}",)),
    "image_without_metadata": BadCase("ignored", _extra, ("{id}", "no metadata row (ignored)")),
    # metadata
    "missing_column": BadCase("metadata", _drop_column("sex"), ("missing column(s) ['sex']", "required:")),
    "renamed_column": BadCase("metadata", _rename_column("localization", "site"),
                              ("missing column(s) ['localization']", "'site'", "required:")),
    "unknown_diagnosis": BadCase("metadata", _edit_row("dx", "Melanoma"),
                                 ("row {row}", "{id}", "unknown diagnosis '{value_low}'", "allowed:")),
    "unknown_site": BadCase("metadata", _edit_row("localization", "elbow"),
                            ("row {row}", "{id}", "unknown site 'elbow'", "allowed:")),
    "unknown_sex": BadCase("metadata", _edit_row("sex", "x"), ("row {row}", "{id}", "unknown sex 'x'", "allowed:")),
    "age_above_120": BadCase("metadata", _edit_row("age", "150"), ("row {row}", "{id}", "age 150.0 is outside 0-120")),
    "age_negative": BadCase("metadata", _edit_row("age", "-5"), ("row {row}", "{id}", "age -5.0 is outside 0-120")),
    "age_not_a_number": BadCase("metadata", _edit_row("age", "forty"),
                                ("row {row}", "{id}", "age 'forty' is not a number")),
    "duplicated_image_id": BadCase("metadata", _duplicate, ("row {row}", "duplicated image_id '{id}'")),
    "lesion_disagrees": BadCase("metadata", _lesion_disagrees, ("lesion {lesion}", "different diagnoses", "{value}")),
    "groundtruth_not_onehot": BadCase("metadata", _groundtruth("not_onehot"),
                                      ("row {row}", "{id}", "is not one-hot", "[1.0, 1.0, 0.0")),
    "groundtruth_soft_labels": BadCase("metadata", _groundtruth("soft"),
                                       ("row {row}", "{id}", "is not one-hot", "0.5")),
    "groundtruth_disagrees": BadCase("metadata", _groundtruth("disagrees"),
                                     ("{id}", "is '{wrong}' there but '{true}' in HAM10000_metadata.csv")),
    "metadata_unreadable": BadCase("metadata", _unreadable_csv, ("HAM10000_metadata.csv", "cannot be read as CSV")),
    # normalised
    "whitespace_and_case": BadCase("normalised", _normalise, ()),
}


def names(*kinds: str) -> list[str]:
    return [n for n, c in CASES.items() if c.kind in kinds]


def make_case(src: Path, dest: Path, name: str) -> tuple[Path, list[str], dict]:
    """Write the good copy into ``dest``, break it as ``name`` says; return the folder, the strings
    the message must hold, and the facts."""
    good_copy(src, dest)
    facts, expect = apply_case(dest, name)
    return dest, expect, facts


def apply_case(d: Path, name: str) -> tuple[dict, list[str]]:
    """Break an existing good copy ``d`` as ``name`` says (cases on different rows combine)."""
    case = CASES[name]
    facts = case.apply(d)
    return facts, [e.format(**facts) for e in case.expect]
