"""A small image frame for the tests of the notebooks' tables and figures (metadata, colour, plots).

4 images of each class (2 lesions of 2 images each), small JPEGs with a reddish cast, and one
missing age, one unknown sex and one unknown site.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from metanet_utils.constants import DX_CODES


def tinted_frame(folder: str | Path) -> pd.DataFrame:
    """Write the images into ``folder`` and return one row per image (``image_id, lesion_id, dx, age, sex,
    localization, path``): classes in the official order; the missing values are in rows 0 (age), 4 (sex)
    and 9 (site)."""
    d = Path(folder)
    rng = np.random.default_rng(0)
    rows = []
    for k, dx in enumerate(DX_CODES):
        for i in range(4):
            img = (rng.integers(60, 200, (30, 40, 3)) * np.array([1.2, 0.9, 0.8])).clip(0, 255).astype(np.uint8)
            path = d / f"ISIC_{k}{i:06d}.jpg"
            Image.fromarray(img).save(path)
            rows.append({"image_id": path.stem, "lesion_id": f"L{k}{i // 2}", "dx": dx,
                         "age": np.nan if (k, i) == (0, 0) else float(20 + 5 * ((k + i) % 12)),
                         "sex": "unknown" if (k, i) == (1, 0) else ("male", "female")[i % 2],
                         "localization": "unknown" if (k, i) == (2, 1) else ("back", "face", "trunk")[(k + i) % 3],
                         "path": str(path)})
    return pd.DataFrame(rows)
