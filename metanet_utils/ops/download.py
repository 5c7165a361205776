"""Download the official HAM10000 / ISIC 2018 Task 3 training data (every step resumes or is atomic): images,
labels and lesion groupings from the ISIC challenge, the metadata from Harvard Dataverse (file id and MD5 read from
its API), into the layout :func:`metanet_utils.data.load_metadata` reads::

    dest_dir/
        HAM10000_metadata.csv
        ISIC2018_Task3_Training_LesionGroupings.csv
        ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv
        ISIC2018_Task3_Training_Input/ISIC_*.jpg
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import warnings
import zipfile
from pathlib import Path, PurePosixPath
from typing import Sequence

import requests
from filelock import FileLock
from tqdm.auto import tqdm

from ..data import METADATA_FILE, DataError, DataLocation, find_data_dir
from ..paths import data_dir as default_data_root

#: The ISIC 2018 files, tried in order: the current ISIC archive, then the older address most papers cite.
ISIC_BASE_URLS: tuple[str, ...] = (
    "https://isic-archive.s3.amazonaws.com/challenges/2018",
    "https://isic-challenge-data.s3.amazonaws.com/2018",
)
#: The ISIC files, images last (ISIC publishes no checksums: the zips are checked by their CRCs).
ISIC_FILES: tuple[str, ...] = (
    "ISIC2018_Task3_Training_GroundTruth.zip",
    "ISIC2018_Task3_Training_LesionGroupings.csv",
    "ISIC2018_Task3_Training_Input.zip",
)
IMAGES_ZIP_BYTES = 2_600_000_000  # "2.6 GB" on the ISIC data page; for the free-space check only
DATAVERSE_SERVER = "https://dataverse.harvard.edu"
HAM10000_DOI = "doi:10.7910/DVN/DBW86T"
HAM10000_METADATA_MD5 = "70bb67f71bd23dde0bd2eda4bdcc98e5"
INCOMPLETE = ".download_incomplete"  # present while a download into the folder is unfinished
TIMEOUT = (15.0, 60.0)  # (connect, read) seconds
CHUNK = 1 << 16  # a transfer cut mid-chunk loses at most this many bytes before its resume

MANUAL_HELP = (
    "To get the data by hand: download ISIC2018_Task3_Training_Input.zip (2.6 GB), "
    "ISIC2018_Task3_Training_GroundTruth.zip and ISIC2018_Task3_Training_LesionGroupings.csv from "
    "https://challenge.isic-archive.com/data/#2018 and HAM10000_metadata (original CSV format) from "
    f"https://doi.org/10.7910/DVN/DBW86T, unzip them into one folder with {METADATA_FILE} at its top, "
    "and pass it with --data-dir PATH (or put it at data/ham10000/)."
)


class DownloadError(RuntimeError):
    """A file could not be downloaded, verified or unpacked (a rerun resumes)."""


class UnsafeArchiveError(DownloadError):
    """A zip holds a member that would be written outside its folder."""


def _reason(e: BaseException) -> str:
    """A one-line reason for a network error (``requests`` nests them deeply)."""
    m = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(e))
    return m.group(1).strip() if m else (str(e).splitlines() or [type(e).__name__])[0][:160]


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fetch(url: str, part: Path, progress: bool) -> bool:
    """Append ``url``'s bytes to ``part`` from where it stops; True when cut off after some progress."""
    start = part.stat().st_size if part.exists() else 0
    with requests.get(url, headers={"Range": f"bytes={start}-"} if start else {}, stream=True,
                      timeout=TIMEOUT) as r:
        if r.status_code == 416:  # the part already holds the whole file
            return False
        r.raise_for_status()
        if r.status_code == 200:  # no Range asked, or the server ignored it: start over
            start = 0
        length = r.headers.get("Content-Length")
        total = start + int(length) if length and length.isdigit() else None
        with open(part, "ab" if start else "wb") as fh, tqdm(
                total=total, initial=start, unit="B", unit_scale=True, desc=part.name.removesuffix(".part"),
                disable=not progress) as bar:
            with contextlib.suppress(requests.ConnectionError, requests.exceptions.ChunkedEncodingError):
                for block in r.iter_content(CHUNK):
                    fh.write(block)
                    bar.update(len(block))
            done = fh.tell()
    if total is None or done == total:
        return False
    if done > start:
        return True
    raise DownloadError(f"transfer cut off at byte {done} of {total}")


def download_file(urls: Sequence[str] | str, dest: str | Path, md5: str | None = None,
                  progress: bool = True) -> Path:
    """Download ``dest`` from the first of ``urls`` that answers, resuming its ``.part`` (``Range: bytes=N-``) where
    a transfer was cut off; a bad ``md5`` deletes the file; an existing ``dest`` is returned untouched."""
    dest = Path(dest)
    if dest.is_file():
        return dest
    part = dest.with_name(dest.name + ".part")
    errors = []
    for url in [urls] if isinstance(urls, str) else urls:
        try:
            while _fetch(url, part, progress):
                pass
            break
        except (requests.RequestException, DownloadError) as e:
            errors.append(f"{url}: {_reason(e)}")
    else:
        raise DownloadError(f"could not download {dest.name} ({'; '.join(errors)}). {MANUAL_HELP}")
    if md5 and (got := _md5(part)) != md5.lower():
        part.unlink()
        raise DownloadError(f"{dest.name}: md5 {got} is not the expected {md5}; the download was deleted, "
                            "run again to retry")
    os.replace(part, dest)
    return dest


def safe_extract(zip_path: str | Path, dest: str | Path) -> Path:
    """Unpack ``zip_path`` into the new folder ``dest``, all or nothing (through a hidden folder), refusing absolute
    and ``..`` members; ``X.zip`` holding ``X/a.jpg`` gives ``dest/a.jpg``; a corrupt zip is deleted."""
    zip_path, dest = Path(zip_path), Path(dest)
    stage = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(stage, ignore_errors=True)
    try:
        with zipfile.ZipFile(zip_path) as zf:
            for name in zf.namelist():
                parts = PurePosixPath(name.replace("\\", "/")).parts
                if name.startswith(("/", "\\")) or ".." in parts or re.match(r"[A-Za-z]:", name):
                    raise UnsafeArchiveError(f"{zip_path.name}: refusing member {name!r} (outside its folder)")
            stage.mkdir()
            zf.extractall(stage)
    except zipfile.BadZipFile as e:
        shutil.rmtree(stage, ignore_errors=True)
        zip_path.unlink(missing_ok=True)
        raise DownloadError(f"{zip_path.name}: corrupt zip ({e}); deleted, run again to download it anew") from e
    inner = stage / dest.name
    os.replace(inner if inner.is_dir() else stage, dest)
    shutil.rmtree(stage, ignore_errors=True)
    return dest


def dataverse_file(server: str = DATAVERSE_SERVER) -> tuple[str, str | None]:
    """The download URL and MD5 of the HAM10000 metadata in its Dataverse dataset's file list; Dataverse ingested
    it as a ``.tab``, so its original CSV format is asked for."""
    api, doi, stem = f"{server.rstrip('/')}/api", HAM10000_DOI, Path(METADATA_FILE).stem
    try:
        r = requests.get(f"{api}/datasets/:persistentId/", params={"persistentId": doi}, timeout=TIMEOUT)
        r.raise_for_status()
        files = [f["dataFile"] for f in r.json()["data"]["latestVersion"]["files"]]
    except (requests.RequestException, ValueError, KeyError, TypeError) as e:
        raise DownloadError(f"could not read the file list of {doi} at {server} ({_reason(e)}). "
                            f"{MANUAL_HELP}") from e
    for f in files:
        if Path(f.get("originalFileName") or f["filename"]).stem == stem:
            checksum = f.get("checksum") or {}
            md5 = f.get("md5") or (checksum.get("value") if checksum.get("type") == "MD5" else None)
            fmt = "?format=original" if f.get("originalFileFormat") else ""
            return f"{api}/access/datafile/{f['id']}{fmt}", md5
    raise DownloadError(f"{doi} at {server} lists no file named {stem}.*. {MANUAL_HELP}")


def _check_space(dest: Path, zip_path: Path) -> None:
    """Refuse to start the image zip without room for it and its unpacked copy."""
    have = sum(p.stat().st_size for p in (zip_path, zip_path.with_name(zip_path.name + ".part")) if p.exists())
    need, free = 2 * IMAGES_ZIP_BYTES - have, shutil.disk_usage(dest).free
    if free < need:
        raise DownloadError(f"not enough free disk space in {dest}: {need / 1e9:.1f} GB needed for the images "
                            f"(the zip and its unpacked copy), {free / 1e9:.1f} GB free")


def download_official(dest_dir: str | Path, include_images: bool = True, progress: bool = True) -> Path:
    """Download and unpack the official data into ``dest_dir`` (``include_images=False``: not the 2.6 GB zip).

    Files in place are skipped without network access; until the images are unpacked the folder is marked
    incomplete (:func:`download_complete`); one download per folder at a time.
    """
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    with FileLock(dest / ".download.lock"):
        (dest / INCOMPLETE).touch()
        if not (dest / METADATA_FILE).is_file():
            url, md5 = dataverse_file(DATAVERSE_SERVER)
            if md5 and md5 != HAM10000_METADATA_MD5:  # a newer release? Dataverse's own MD5 checks it
                warnings.warn(f"Dataverse's HAM10000 metadata has md5 {md5}, not the {HAM10000_METADATA_MD5} "
                              "this kit was checked against", stacklevel=2)
            download_file(url, dest / METADATA_FILE, md5=md5 or HAM10000_METADATA_MD5, progress=progress)
        for name in ISIC_FILES if include_images else ISIC_FILES[:-1]:
            target = dest / name.removesuffix(".zip")
            if target.exists():
                continue
            if name == ISIC_FILES[-1]:
                _check_space(dest, dest / name)
            path = download_file([f"{b.rstrip('/')}/{name}" for b in ISIC_BASE_URLS], dest / name,
                                 progress=progress)
            if path.suffix == ".zip":
                safe_extract(path, target)
                path.unlink()
        if (dest / ISIC_FILES[-1].removesuffix(".zip")).is_dir():
            (dest / INCOMPLETE).unlink()
    return dest


def download_complete(dest_dir: str | Path) -> bool:
    """Whether ``dest_dir`` holds the metadata and no unfinished :func:`download_official` (a folder laid out by
    hand counts as complete)."""
    dest = Path(dest_dir)
    return (dest / METADATA_FILE).is_file() and not (dest / INCOMPLETE).exists()


def locate_data(profile, data_dir: str | Path | None = "") -> DataLocation:
    """Find the profile's data (``data_dir`` empty: the default places); demo and smoke (``data: auto``) fall back
    to the shipped sample, quick and paper (``data: real``) download the official files if none is found."""
    own = default_data_root() / "ham10000"
    try:
        found = find_data_dir(data_dir or None, sample_fallback=profile.data == "auto")
    except DataError:
        if data_dir or profile.data != "real":
            raise
        print(f"No data found: profile {profile.name!r} needs the official HAM10000, downloading it "
              "(a 2.6 GB image archive) ...")
    else:
        if profile.data == "real" and found.kind == "sample":
            raise DataError(f"{found.path} is the kit's small sample; profile {profile.name!r} needs the full "
                            "HAM10000: python -m metanet_utils data download, or --data-dir PATH")
        # the kit's own folder gets its metadata first: an interrupted download is finished here
        if data_dir or profile.data != "real" or found.path != own.resolve() or download_complete(own):
            return found
        print(f"The download into {own} was interrupted: continuing it ...")
    download_official(own)
    return find_data_dir(None)
