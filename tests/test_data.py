"""Finding, loading and verifying data: the real copy's counts and every kind of broken copy."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from metanet_utils.data import (DataError, data_fingerprint, find_data_dir, find_images, load_metadata,
                                stratified_subsample)
from metanet_utils.ops.verify import verify


def small_copy(src: Path, dest: Path, n: int = 40, layout: str = "images") -> Path:
    """Copy the first ``n`` metadata rows and their images into ``dest`` (``layout`` sub-folder)."""
    meta = pd.read_csv(src / "HAM10000_metadata.csv")
    # whole lesions of every class, so the lesion/dx checks stay valid
    per_class = max(1, n // 7)
    lesions = meta.drop_duplicates("lesion_id").groupby("dx").head(per_class)["lesion_id"]
    meta = meta[meta["lesion_id"].isin(set(lesions))].head(n)
    dest.mkdir(parents=True, exist_ok=True)
    meta.to_csv(dest / "HAM10000_metadata.csv", index=False)
    img_dir = dest / layout if layout else dest
    img_dir.mkdir(parents=True, exist_ok=True)
    for i in meta["image_id"]:
        shutil.copy(src / "images" / f"{i}.jpg", img_dir / f"{i}.jpg")
    return dest


def test_real_copy_counts_match_the_official_data(real_data_dir):
    df = load_metadata(real_data_dir)
    assert len(df) == 10015
    assert df["dx"].value_counts().to_dict() == {"nv": 6705, "mel": 1113, "bkl": 1099, "bcc": 514, "akiec": 327,
                                                 "vasc": 142, "df": 115}
    assert df["lesion_id"].nunique() == 7470
    assert df["age"].isna().sum() == 57
    assert (df["sex"] == "unknown").sum() == 57
    assert df["path"].notna().all()


def test_verify_cli_reports_counts_and_the_misprint(real_data_dir):
    out = subprocess.run([sys.executable, "-m", "metanet_utils", "data", "verify", "--data-dir", str(real_data_dir),
                          "--no-decode"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for dx, n in {"nv": 6705, "mel": 1113, "bkl": 1099, "bcc": 514, "akiec": 327, "vasc": 142, "df": 115}.items():
        assert f"{dx:6s} {n:5d}" in out.stdout
    assert "lesions: 7470" in out.stdout
    assert "misprint" in out.stdout and "1098" in out.stdout and "143" in out.stdout


@pytest.mark.parametrize("layout", ["", "images", "HAM10000_images_part_1", "ISIC2018_Task3_Training_Input"])
def test_images_are_found_in_every_official_layout(real_data_dir, tmp_path, layout):
    d = small_copy(real_data_dir, tmp_path / "d", n=10, layout=layout)
    df = load_metadata(d)
    assert df["path"].notna().all()
    assert all(Path(p).parent == (d / layout if layout else d) for p in df["path"])


def test_groundtruth_csv_is_a_label_source(real_data_dir, tmp_path):
    d = small_copy(real_data_dir, tmp_path / "d", n=12)
    meta = pd.read_csv(d / "HAM10000_metadata.csv")
    codes = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    gt = pd.DataFrame({"image": meta["image_id"]})
    for c in codes:
        gt[c] = (meta["dx"].str.upper() == c).astype(float)
    (d / "HAM10000_metadata.csv").unlink()
    gt.to_csv(d / "ISIC2018_Task3_Training_GroundTruth.csv", index=False)
    df = load_metadata(d)
    assert list(df["dx"]) == list(meta["dx"])
    assert (df["sex"] == "unknown").all() and df["age"].isna().all()


def _broken(real_data_dir, tmp_path, edit) -> Path:
    d = small_copy(real_data_dir, tmp_path / "broken", n=20)
    meta = pd.read_csv(d / "HAM10000_metadata.csv", dtype={"age": object})
    meta = edit(meta, d)
    if meta is not None:
        meta.to_csv(d / "HAM10000_metadata.csv", index=False)
    return d


@pytest.mark.parametrize("edit, expected", [
    (lambda m, d: m.drop(columns=["localization"]), "missing column(s) ['localization']"),
    (lambda m, d: m.rename(columns={"dx": "diagnosis"}), "missing column(s) ['dx']"),
    (lambda m, d: m.assign(dx=["melanomaX"] + list(m.dx[1:])), "unknown diagnosis 'melanomax'"),
    (lambda m, d: m.assign(localization=["elbow"] + list(m.localization[1:])), "unknown site 'elbow'"),
    (lambda m, d: m.assign(age=["abc"] + list(m.age[1:])), "age 'abc' is not a number"),
    (lambda m, d: m.assign(age=["150"] + list(m.age[1:])), "age 150.0 is outside 0-120"),
    (lambda m, d: pd.concat([m, m.iloc[[3]]]), "duplicated image_id"),
    (lambda m, d: m.assign(lesion_id=["HAM_X"] * len(m)), "has images with different diagnoses"),
])
def test_bad_metadata_is_named_with_row_and_value(real_data_dir, tmp_path, edit, expected):
    d = _broken(real_data_dir, tmp_path, edit)
    with pytest.raises(DataError) as e:
        load_metadata(d)
    assert expected in str(e.value)


def test_whitespace_and_case_in_values_are_normalised(real_data_dir, tmp_path):
    d = _broken(real_data_dir, tmp_path, lambda m, d: m.assign(dx=" " + m.dx.str.upper() + " ",
                                                                localization=m.localization.str.title()))
    df = load_metadata(d)
    assert set(df["dx"]) <= {"mel", "nv", "bcc", "akiec", "bkl", "df", "vasc"}
    d2 = _broken(real_data_dir, tmp_path / "hdr", lambda m, d: m.rename(columns={"dx": " DX", "image_id": "Image_ID"}))
    assert load_metadata(d2)["dx"].tolist() == df["dx"].tolist()  # header spaces and case too


def test_verify_names_each_broken_file_and_fails(real_data_dir, tmp_path):
    d = small_copy(real_data_dir, tmp_path / "v", n=20)
    ids = sorted(p.stem for p in (d / "images").glob("*.jpg"))
    (d / "images" / f"{ids[0]}.jpg").unlink()                                   # missing on disk
    data = (d / "images" / f"{ids[1]}.jpg").read_bytes()
    (d / "images" / f"{ids[1]}.jpg").write_bytes(data[: len(data) // 2])          # truncated
    (d / "images" / f"{ids[2]}.jpg").write_bytes(b"")                             # empty
    (d / "images" / f"{ids[3]}.jpg").write_text("not an image")                  # text named .jpg
    shutil.copy(d / "images" / f"{ids[4]}.jpg", d / "images" / "ISIC_9999999.jpg")  # no metadata row
    report = verify(d, progress=False)
    text = report.format()
    assert not report.ok
    assert ids[0] in report.missing_images
    assert "ISIC_9999999" in report.files_without_metadata
    assert set(report.bad_images) == {f"{ids[1]}.jpg", f"{ids[2]}.jpg", f"{ids[3]}.jpg"}
    assert "0 bytes" in report.bad_images[f"{ids[2]}.jpg"]
    assert f"{ids[1]}.jpg" in text
    out = subprocess.run([sys.executable, "-m", "metanet_utils", "data", "verify", "--data-dir", str(d)],
                         capture_output=True, text=True)
    assert out.returncode == 1
    assert ids[0] in out.stdout and f"{ids[3]}.jpg" in out.stdout


def test_verify_with_broken_metadata_still_names_each_broken_file(real_data_dir, tmp_path):
    """One bad metadata row does not hide the files: a user fixes everything in one go."""
    d = small_copy(real_data_dir, tmp_path / "vm", n=12)
    meta = pd.read_csv(d / "HAM10000_metadata.csv")
    meta.loc[2, "dx"] = "melanoma"
    meta.to_csv(d / "HAM10000_metadata.csv", index=False)
    ids = sorted(p.stem for p in (d / "images").glob("*.jpg"))
    (d / "images" / f"{ids[0]}.jpg").unlink()
    data = (d / "images" / f"{ids[1]}.jpg").read_bytes()
    (d / "images" / f"{ids[1]}.jpg").write_bytes(data[: len(data) // 2])
    (d / "images" / f"{ids[2]}.jpg").write_bytes(b"")
    report = verify(d, progress=False)
    assert not report.ok and len(report.errors) == 1 and "unknown diagnosis 'melanoma'" in report.errors[0]
    assert report.missing_images == [ids[0]]
    assert set(report.bad_images) == {f"{ids[1]}.jpg", f"{ids[2]}.jpg"}


def test_verify_says_a_ground_truth_only_folder_trains_the_image_only_variant_alone(real_data_dir, tmp_path):
    from metanet_utils.data import DataError
    from metanet_utils.metadata import encode

    d = small_copy(real_data_dir, tmp_path / "gt", n=12)
    meta = pd.read_csv(d / "HAM10000_metadata.csv")
    gt = pd.DataFrame({"image": meta["image_id"]})
    for code, dx in zip(("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"),
                        ("mel", "nv", "bcc", "akiec", "bkl", "df", "vasc")):
        gt[code] = (meta["dx"] == dx).astype(float)
    gt.to_csv(d / "ISIC2018_Task3_Training_GroundTruth.csv", index=False)
    (d / "HAM10000_metadata.csv").unlink()
    report = verify(d, progress=False)
    assert report.ok and any("only the image-only variant" in n for n in report.notes)
    with pytest.raises(DataError, match="no image has a known age.*fusions: \\[none\\]"):
        encode(load_metadata(d))


def test_missing_images_stop_loading_for_training(real_data_dir, tmp_path):
    d = small_copy(real_data_dir, tmp_path / "m", n=10)
    victim = sorted((d / "images").glob("*.jpg"))[0]
    victim.unlink()
    with pytest.raises(DataError, match=victim.stem):
        load_metadata(d)
    assert load_metadata(d, require_images=False)["path"].isna().sum() == 1


def test_data_dir_lookup_order(real_data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("METANET_ROOT", str(tmp_path))
    monkeypatch.delenv("METANET_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="no HAM10000 data found"):
        find_data_dir()
    monkeypatch.setenv("METANET_DATA_DIR", str(real_data_dir))
    assert find_data_dir().source == "METANET_DATA_DIR"
    assert find_data_dir(real_data_dir).source == "argument"
    with pytest.raises(DataError, match="does not exist"):
        find_data_dir(tmp_path / "nope")


def test_fingerprint_changes_with_the_data(real_data_dir):
    df = load_metadata(real_data_dir)
    sub = stratified_subsample(df, 300, seed=0)
    assert data_fingerprint(sub) == data_fingerprint(sub.copy())
    assert data_fingerprint(sub) != data_fingerprint(df)
    edited = sub.copy()
    edited.loc[0, "age"] = 5.0 if edited.loc[0, "age"] != 5.0 else 10.0
    assert data_fingerprint(edited) != data_fingerprint(sub)


def test_subsample_keeps_whole_lesions_and_every_class(real_data_dir):
    df = load_metadata(real_data_dir)
    sub = stratified_subsample(df, 300, seed=0)
    assert 280 <= len(sub) <= 360
    assert sub["dx"].value_counts().min() >= 10
    full_sizes = df.groupby("lesion_id").size()
    sub_sizes = sub.groupby("lesion_id").size()
    assert (sub_sizes.to_numpy() == full_sizes.loc[sub_sizes.index].to_numpy()).all()
    assert sub.equals(stratified_subsample(df, 300, seed=0))
    assert find_images(Path(sub["path"][0]).parent)
    assert np.isclose(sub["dx"].eq("nv").mean(), df["dx"].eq("nv").mean(), atol=0.1)
