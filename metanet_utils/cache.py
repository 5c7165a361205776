"""The uint8 image cache: every image decoded, colour-corrected (Shades of Gray, before resizing) and resized once
into one ``N x size x size x 3`` ``.npy`` file, built under a lock, renamed into place, then marked complete by a
JSON sidecar.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from filelock import FileLock
from PIL import Image
from tqdm.auto import tqdm

from . import paths
from .atomic import atomic_write_json, atomic_write_with
from .color import shades_of_gray
from .data import IMAGE_FOLDERS, check_image, data_fingerprint, read_rgb

CACHE_VERSION = 1


class CacheError(RuntimeError):
    """The cache cannot be built (disk space, an unreadable image)."""


def cache_key(fingerprint: str, size: int, color_constancy: bool, p: float = 6.0) -> str:
    blob = json.dumps([CACHE_VERSION, fingerprint, int(size), bool(color_constancy), float(p)]).encode()
    return f"{fingerprint}-{size}px-{'sog' if color_constancy else 'raw'}-{hashlib.sha1(blob).hexdigest()[:8]}"


def load_image(path: str | Path, size: int, color_constancy: bool = True) -> np.ndarray:
    """One image as the cache holds it: RGB uint8, Shades of Gray (p = 6), resized to ``size x size``."""
    img = read_rgb(path)
    if color_constancy:
        img = shades_of_gray(img, p=6)
    return np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR), dtype=np.uint8)


def _checked_image(path: str, size: int, color_constancy: bool) -> np.ndarray:
    try:
        with open(path, "rb") as fh:
            if fh.read(3) != b"\xff\xd8\xff":
                raise ValueError("not a JPEG")
        return load_image(path, size, color_constancy)
    except Exception as e:  # noqa: BLE001
        why, folder = check_image(path) or f"{type(e).__name__}: {e}", Path(path).parent
        folder = folder.parent if folder.name in IMAGE_FOLDERS else folder
        raise CacheError(f"image {path} {why}; `python -m metanet_utils data verify --data-dir {folder}` lists every "
                         "broken file") from None


def _size(nbytes: float) -> str:
    k = 1 if nbytes < 1e6 else 2 if nbytes < 1e9 else 3
    return f"{nbytes / 1000 ** k:.1f} {('kB', 'MB', 'GB')[k - 1]}"


def _reserve(path: Path, no_space: str) -> None:
    """Allocate the file's blocks now: a full disk is this error, not a SIGBUS when the memory map is written."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except AttributeError:  # pragma: no cover - macOS
        pass
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise CacheError(no_space) from None
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    finally:
        os.close(fd)


def _valid(path: Path, image_ids: list[str]) -> bool:
    """Whether the array and its sidecar are both there and agree (ids, size in bytes)."""
    try:
        info = json.loads(path.with_suffix(".json").read_text())
        return info.get("image_ids") == image_ids and info.get("nbytes") == path.stat().st_size
    except (OSError, ValueError, AttributeError):
        return False


def build_cache(df: pd.DataFrame, size: int, color_constancy: bool = True, *, fingerprint: str | None = None,
                cache_dir: str | Path | None = None, workers: int | None = None, progress: bool = True) -> np.ndarray:
    """The ``len(df) x size x size x 3`` uint8 images of ``df``'s rows, in order; CacheError for a full disk or a
    broken image."""
    cache_dir = Path(cache_dir or paths.cache_dir())
    cache_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = fingerprint or data_fingerprint(df)
    path = cache_dir / f"{cache_key(fingerprint, size, color_constancy)}.npy"
    ids, files = [str(i) for i in df["image_id"]], [str(f) for f in df["path"]]
    if _valid(path, ids):
        return np.load(path, mmap_mode="r")
    with FileLock(path.with_suffix(".lock")):
        if _valid(path, ids):  # built by another process while this one waited
            return np.load(path, mmap_mode="r")
        for stale in cache_dir.glob(f".{path.name}.tmp-*"):  # a killed build's
            stale.unlink(missing_ok=True)
        needed, free = (len(ids) * size * size * 3 + 4096) * 1.1, shutil.disk_usage(cache_dir).free
        no_space = (f"not enough free disk for the image cache in {cache_dir}: needs {_size(needed)}, "
                    f"{_size(free)} free; free space or set METANET_CACHE_DIR to another disk")
        if free < needed:
            raise CacheError(no_space)

        def write(tmp: Path) -> None:
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(ids), size, size, 3))
            _reserve(tmp, no_space)
            pool = ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1)
            try:
                images = pool.map(lambda f: _checked_image(f, size, color_constancy), files)
                for i, img in enumerate(tqdm(images, total=len(ids), disable=not progress, unit="img",
                                             desc=f"image cache {size}px{' +SoG' if color_constancy else ''}",
                                             mininterval=1.0)):
                    arr[i] = img
            finally:  # on an error, stop decoding
                pool.shutdown(wait=True, cancel_futures=True)
            arr.flush()

        path.with_suffix(".json").unlink(missing_ok=True)
        atomic_write_with(path, write)
        atomic_write_json(path.with_suffix(".json"), {
            "image_ids": ids, "nbytes": path.stat().st_size, "size": size, "color_constancy": color_constancy,
            "p": 6.0, "fingerprint": fingerprint, "version": CACHE_VERSION})
    return np.load(path, mmap_mode="r")
