"""The shipped sample data/sample/: real HAM10000 rows and images, whole lesions, every class, within budget,
rebuilt byte for byte from the full data by `data sample --from`."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT
from PIL import Image

from metanet_utils.constants import DATA_CLASS_COUNTS
from metanet_utils.data import SAMPLE_MARKER, find_data_dir, load_metadata
from metanet_utils.ops.sample import write_sample
from metanet_utils.ops.verify import verify
from metanet_utils.splits import make_folds

SAMPLE = ROOT / "data" / "sample"
META = "HAM10000_metadata.csv"


@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    return load_metadata(SAMPLE)


def test_sample_metadata_rows_are_the_official_rows_in_the_official_order(real_data_dir):
    official = (real_data_dir / META).read_bytes().splitlines()
    ours = (SAMPLE / META).read_bytes().splitlines()
    assert ours[0] == official[0]
    position = {line: i for i, line in enumerate(official)}
    assert all(line in position for line in ours[1:]), "a sample row differs from every official row"
    order = [position[line] for line in ours[1:]]
    assert order == sorted(order) and len(set(order)) == len(order)


def test_each_sample_image_is_the_real_image_downscaled(real_data_dir, sample):
    """Compared with the same image of the full copy resized to 128x96: JPEG rounding only (and far from any
    other image of the sample, so the comparison can tell images apart)."""
    diffs, others = [], []
    previous = None
    for image_id in sample["image_id"]:
        ours = np.asarray(Image.open(SAMPLE / f"{image_id}.jpg").convert("RGB"), dtype=np.float32)
        with Image.open(real_data_dir / "images" / f"{image_id}.jpg") as im:
            ref = np.asarray(im.convert("RGB").resize((128, 96), Image.Resampling.LANCZOS), dtype=np.float32)
        assert ours.shape == (96, 128, 3)
        diffs.append(np.abs(ours - ref).mean())
        if previous is not None:
            others.append(np.abs(ours - previous).mean())
        previous = ref
    print(f"mean |difference| per image: median {np.median(diffs):.2f}, max {max(diffs):.2f} grey levels; "
          f"between neighbours {np.median(others):.1f}")
    assert max(diffs) < 5.0 and np.median(diffs) < 3.0
    assert np.median(others) > 5 * np.median(diffs)


def test_sample_holds_whole_lesions_every_class_and_the_natural_order(real_data_dir, sample):
    full = pd.read_csv(real_data_dir / META)
    lesions = set(sample["lesion_id"])
    assert set(full.loc[full["lesion_id"].isin(lesions), "image_id"]) == set(sample["image_id"])
    counts = sample["dx"].value_counts()
    assert 1000 <= len(sample) <= 1500 and counts.min() >= 50
    natural = sorted(DATA_CLASS_COUNTS, key=lambda k: -DATA_CLASS_COUNTS[k])
    assert all(counts[a] >= counts[b] or counts[b] <= 51 for a, b in zip(natural, natural[1:]))
    drawn = json.loads((SAMPLE / SAMPLE_MARKER).read_text())
    assert drawn["class_counts"] == counts.to_dict() and drawn["images"] == len(sample)
    readme = (SAMPLE / "README.md").read_text()
    assert "CC BY-NC 4.0" in readme and "https://doi.org/10.1038/sdata.2018.161" in readme


def test_every_fold_of_five_holds_ten_of_each_class_and_the_lesion_split_works(sample):
    for scheme in ("image", "lesion"):
        folds = make_folds(sample, 5, scheme)
        per_fold = pd.crosstab(folds, sample["dx"])
        assert per_fold.to_numpy().min() >= 10 if scheme == "image" else per_fold.to_numpy().min() >= 5, per_fold
    lesion_folds = pd.Series(make_folds(sample, 5, "lesion")).groupby(sample["lesion_id"].to_numpy()).nunique()
    assert lesion_folds.max() == 1


def test_tracked_sample_stays_within_8_mb():
    files = subprocess.run(["git", "ls-files", "-z", "data/sample"], cwd=ROOT, capture_output=True,
                           check=True).stdout.split(b"\0")
    sizes = [(ROOT / f.decode()).stat().st_size for f in files if f]
    assert len(sizes) >= 1000 and sum(sizes) <= 8 * 2**20, sum(sizes)


def test_sample_rebuilds_byte_for_byte_from_the_full_data(real_data_dir, tmp_path):
    dest = tmp_path / "sample"
    rc = subprocess.run([sys.executable, "-m", "metanet_utils", "data", "sample", "--from", str(real_data_dir),
                         "--dest", str(dest)], capture_output=True, text=True)
    assert rc.returncode == 0 and "sample of 1095 images (781 lesions)" in rc.stdout, rc.stderr
    built = sorted(p.name for p in dest.iterdir())
    assert built == sorted(p.name for p in SAMPLE.iterdir())
    assert all((dest / n).read_bytes() == (SAMPLE / n).read_bytes() for n in built)


def test_sample_refuses_a_source_that_is_not_the_full_set(tmp_path):
    with pytest.raises(Exception, match="draw the sample from the full HAM10000"):
        write_sample(SAMPLE, tmp_path / "again")


def test_verify_reports_the_samples_own_counts_without_an_error(sample):
    report = verify(SAMPLE, progress=False)
    text = report.format()
    assert report.ok and text.endswith("OK") and "a subsample, not the official set" in text
    assert f"  nv       {(sample['dx'] == 'nv').sum()} /  6705" in text
    assert find_data_dir(SAMPLE).kind == "sample"
