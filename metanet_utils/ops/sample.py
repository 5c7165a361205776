"""Draw the kit's small sample ``data/sample/`` from the full HAM10000 (``metanet data sample --from DIR``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from ..constants import DATA_CLASS_COUNTS, DX_CODES, N_IMAGES
from ..data import METADATA_FILE, SAMPLE_MARKER, DataError, load_metadata, stratified_subsample

SAMPLE_SIZE = (128, 96)  # width x height of the shipped sample's images (HAM10000's 4:3)


def write_sample(src: str | Path, dest: str | Path, *, n: int = 1000, min_per_class: int = 50, seed: int = 0,
                 size: tuple[int, int] = SAMPLE_SIZE, quality: int = 90) -> pd.DataFrame:
    """Draw the sample from the full HAM10000 in ``src`` into ``dest`` (the same ``src`` gives the same bytes):
    whole lesions, about ``n`` images, at least ``min_per_class`` per class, the metadata rows byte for byte, a README
    with licence and attribution, ``sample.json``. Returns the sample's rows as :func:`load_metadata` reads them.
    """
    src, dest = Path(src), Path(dest)
    df = load_metadata(src)
    if len(df) != N_IMAGES:
        raise DataError(f"{src} holds {len(df)} images: draw the sample from the full HAM10000 ({N_IMAGES} images)")
    keep = stratified_subsample(df, n, seed=seed, min_per_class=min_per_class)
    ids = set(keep["image_id"])
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("ISIC_*.jpg"):
        if old.stem not in ids:
            old.unlink()
    lines = (src / METADATA_FILE).read_bytes().splitlines(keepends=True)
    column = [c.strip().lower() for c in lines[0].decode().split(",")].index("image_id")
    rows = [ln for ln in lines[1:] if ln.decode().split(",")[column].strip() in ids]
    (dest / METADATA_FILE).write_bytes(b"".join([lines[0], *rows]))
    for row in keep.itertuples():
        with Image.open(row.path) as im:
            im.convert("RGB").resize(size, Image.Resampling.LANCZOS).save(dest / f"{row.image_id}.jpg", quality=quality)
    drawn = dict(source_images=N_IMAGES, n_target=n, min_per_class=min_per_class, seed=seed, size=list(size),
                 jpeg_quality=quality, images=len(keep), lesions=int(keep["lesion_id"].nunique()),
                 class_counts={dx: int(keep["dx"].eq(dx).sum()) for dx in DX_CODES})
    (dest / SAMPLE_MARKER).write_text(json.dumps(drawn, indent=1) + "\n")
    (dest / "README.md").write_text(_sample_readme(drawn))
    return keep


def _sample_readme(d: dict[str, Any]) -> str:
    counts = "\n".join(f"| {dx} | {d['class_counts'][dx]} | {DATA_CLASS_COUNTS[dx]} |"
                        for dx in sorted(DATA_CLASS_COUNTS, key=lambda k: -DATA_CLASS_COUNTS[k]))
    w, h = d["size"]
    return f"""# A small sample of HAM10000 (real images, downscaled)

This folder is **not** under the kit's MIT licence. It is a subsample of the HAM10000 dataset, licensed
**CC BY-NC 4.0** (https://creativecommons.org/licenses/by-nc/4.0/): non-commercial use, with attribution.

> HAM10000 Dataset: (c) by ViDIR Group, Department of Dermatology, Medical University of Vienna;
> https://doi.org/10.1038/sdata.2018.161

Cite: Tschandl P., Rosendahl C., Kittler H. "The HAM10000 dataset, a large collection of multi-source dermatoscopic
images of common pigmented skin lesions." Sci. Data 5, 180161 (2018); and Codella N. et al. "Skin lesion analysis
toward melanoma detection 2018: a challenge hosted by the International Skin Imaging Collaboration (ISIC)."
arXiv:1902.03368 (2019).

## What was changed
- **Subsampled**: {d['images']} of the {d['source_images']} images ({d['lesions']} whole lesions: every image of a
  chosen lesion is here), drawn with seed {d['seed']}: per class, lesions in a seeded random order until the class
  holds its share of about {d['n_target']} images, and at least {d['min_per_class']} images.
- **Downscaled** to {w}x{h} pixels (Lanczos) and saved as JPEG quality {d['jpeg_quality']}.
- File names and the rows of `HAM10000_metadata.csv` are exactly as in the official data (same order).

The kit's demo and smoke profiles use this folder when no full copy is found. Its numbers are real but small:
at most {d['images']} images, so 5-fold results have wide spreads, and a rare class holds about 10 images a fold.

## Class counts
| dx | here | full set |
|---|---|---|
{counts}

## How it was drawn
`python -m metanet_utils data sample --from DIR` (DIR: the full HAM10000, here the 200x150 copy of the kit's
developers; `sample.json` records the settings). From the same copy it rebuilds this folder byte for byte; from
the 600x450 originals the images differ by resampling and JPEG rounding only.
"""
