"""The uint8 image cache: decode, colour-correct and resize every image once.

Images are decoded in parallel, optionally colour-corrected with Shades of Gray
(before resizing, as in the paper), resized to a square ``size x size`` (a plain
resize, as the paper's 600x450 -> 300x300) and stored as one ``N x size x size x 3``
uint8 ``.npy`` file keyed by (data fingerprint, size, colour constancy). The array is
written under a temporary name and renamed; a JSON sidecar written after it lists the
image ids and the file size, and a cache is used only when both agree, so an
interrupted build is never read as complete. Before writing, the free disk is checked
(the message says how much is needed) and the file's space is reserved, so a full disk
stops the build with a message instead of a crash; temporary files of an interrupted
build are removed by the next one. A file that is not a readable JPEG stops the build,
naming it, and nothing is written.

Example:
    >>> from metanet_utils.cache import build_cache                      # doctest: +SKIP
    >>> arr = build_cache(df, size=64, color_constancy=True)             # doctest: +SKIP
    >>> arr.shape                                                         # doctest: +SKIP
    (10015, 64, 64, 3)
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

from .atomic import FileLock, atomic_write_json, atomic_write_with

__all__ = ["CACHE_VERSION", "cache_key", "load_image", "build_cache", "CacheError"]

CACHE_VERSION = 1


class CacheError(RuntimeError):
    """The cache cannot be built (disk space, unreadable image)."""


def cache_key(fingerprint: str, size: int, color_constancy: bool, p: float = 6.0) -> str:
    blob = json.dumps([CACHE_VERSION, fingerprint, int(size), bool(color_constancy), float(p)]).encode()
    return f"{fingerprint}-{size}px-{'sog' if color_constancy else 'raw'}-{hashlib.sha1(blob).hexdigest()[:8]}"


def load_image(path: str | Path, size: int, color_constancy: bool = True, p: float = 6.0) -> np.ndarray:
    """Decode one image to RGB uint8, Shades of Gray (optional), resize to ``size x size``.

    Grayscale, RGBA and CMYK JPEGs are converted to RGB (the alpha channel is dropped).
    """
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        arr = np.asarray(im)
    if color_constancy:
        from .color import shades_of_gray

        arr = shades_of_gray(arr, p=p)
    out = Image.fromarray(arr).resize((size, size), Image.BILINEAR)
    return np.asarray(out, dtype=np.uint8)


def _size(nbytes: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if nbytes < 1000 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    return ""  # pragma: no cover


def _data_folder(image: str | Path) -> Path:
    """The data folder (the one with the metadata) of an image file, for messages."""
    from .data import _has_metadata

    image = Path(image)
    for d in (image.parent, image.parent.parent):
        if _has_metadata(d):
            return d
    return image.parent


def _is_jpeg(path: str | Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(3) == b"\xff\xd8\xff"


def _reserve(path: Path, no_space: str) -> None:
    """Allocate the file's blocks now: a full disk is then an error here, not a crash
    (SIGBUS) when the memory map is written."""
    if not hasattr(os, "posix_fallocate"):  # pragma: no cover - macOS
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise CacheError(no_space) from None
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):  # filesystems without fallocate
            raise
    finally:
        os.close(fd)


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def _valid(path: Path, image_ids: list[str]) -> bool:
    side = _sidecar(path)
    if not (path.is_file() and side.is_file()):
        return False
    try:
        info = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return info.get("image_ids") == image_ids and info.get("nbytes") == path.stat().st_size


def build_cache(df: pd.DataFrame, size: int, color_constancy: bool = True, *, fingerprint: str | None = None,
                cache_dir: str | Path | None = None, workers: int | None = None, progress: bool = True,
                p: float = 6.0) -> np.ndarray:
    """Return the ``len(df) x size x size x 3`` uint8 array of the images of ``df`` (in order),
    building it on first use and memory-mapping it afterwards.

    Raises:
        CacheError: not enough free disk (the message says how much is needed), or an
            image cannot be decoded (the message names it).
    """
    from .data import check_image, data_fingerprint
    from .paths import cache_dir as default_cache_dir

    fingerprint = fingerprint or data_fingerprint(df)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{cache_key(fingerprint, size, color_constancy, p)}.npy"
    ids = [str(i) for i in df["image_id"]]
    if _valid(path, ids):
        return np.load(path, mmap_mode="r")
    with FileLock(path.with_suffix(".lock")):
        if _valid(path, ids):  # another process built it while we waited
            return np.load(path, mmap_mode="r")
        for stale in cache_dir.glob(f".{path.name}.tmp-*"):  # left by a killed build (we hold the lock)
            stale.unlink(missing_ok=True)
        n = len(df)
        needed = n * size * size * 3 + 4096
        free = shutil.disk_usage(cache_dir).free
        no_space = (f"not enough free disk for the image cache in {cache_dir}: needs {_size(needed * 1.1)}, "
                    f"{_size(free)} free; free space or set METANET_CACHE_DIR to another disk")
        if free < needed * 1.1:
            raise CacheError(no_space)
        paths = list(df["path"])

        def one(i: int) -> np.ndarray:
            try:
                if not _is_jpeg(paths[i]):
                    raise ValueError("not a JPEG")
                return load_image(paths[i], size, color_constancy, p)
            except Exception as e:  # noqa: BLE001
                why = check_image(paths[i]) or f"{type(e).__name__}: {e}"
                raise CacheError(f"image {paths[i]} {why}; `python -m metanet_utils data verify --data-dir "
                                 f"{_data_folder(paths[i])}` lists every broken file") from None

        def write(tmp: Path) -> None:
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
            _reserve(tmp, no_space)
            ex = ThreadPoolExecutor(max_workers=workers or max(1, os.cpu_count() or 1))
            try:
                it = ex.map(one, range(n))
                if progress:
                    from tqdm.auto import tqdm

                    it = tqdm(it, total=n, desc=f"image cache {size}px{' +SoG' if color_constancy else ''}",
                              unit="img", mininterval=1.0)
                for i, img in enumerate(it):
                    arr[i] = img
            finally:  # on an error, do not decode the rest first
                ex.shutdown(wait=True, cancel_futures=True)
            arr.flush()
            del arr

        _sidecar(path).unlink(missing_ok=True)  # the sidecar marks a complete array: never beside another one
        atomic_write_with(path, write)
        atomic_write_json(_sidecar(path), {"image_ids": ids, "nbytes": path.stat().st_size, "size": size,
                                           "color_constancy": color_constancy, "p": p, "fingerprint": fingerprint,
                                           "version": CACHE_VERSION})
    return np.load(path, mmap_mode="r")
