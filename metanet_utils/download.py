"""Download the official HAM10000 / ISIC 2018 Task 3 training data.

Sources:

* the ISIC 2018 Task 3 training images, ground truth and lesion groupings from the ISIC
  challenge data page (https://challenge.isic-archive.com/data/#2018), tried at the
  current ISIC archive address first, then at the older challenge-data address;
* the HAM10000 metadata (age, sex, localization) from Harvard Dataverse,
  doi:10.7910/DVN/DBW86T, whose file id, size and MD5 are read from the Dataverse API.

Every transfer is resumable (HTTP ``Range`` on a ``.part`` file), retried with backoff,
checked (size, checksum where one is known, zip integrity, CSV header) and only then
renamed into place. Zips are unpacked into a staging folder and renamed in one step, so
an interrupted run leaves either a complete folder or none. The layout written is the one
:func:`metanet_utils.data.load_metadata` reads::

    dest_dir/
        HAM10000_metadata.csv
        ISIC2018_Task3_Training_LesionGroupings.csv
        ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv
        ISIC2018_Task3_Training_Input/ISIC_*.jpg

The URL tables can be pointed elsewhere (a local mirror, a test server) through the
``base_urls`` / ``dataverse_server`` arguments or the ``METANET_DOWNLOAD_BASE`` /
``METANET_DATAVERSE_SERVER`` environment variables.

Example:
    >>> from metanet_utils.download import download_official
    >>> download_official("data/ham10000")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import csv
import glob
import hashlib
import io
import logging
import os
import re
import shutil
import stat
import time
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Iterator, Sequence

from .atomic import FileLock, atomic_write_json, fsync_dir, staged_dir
from .constants import CLASS_CODES, N_IMAGES

__all__ = [
    "RemoteFile",
    "DownloadError",
    "InsufficientDiskSpace",
    "UnsafeArchiveError",
    "ISIC_BASE_URLS",
    "DATAVERSE_SERVER",
    "HAM10000_DOI",
    "HAM10000_METADATA_MD5",
    "METADATA_FILE",
    "OFFICIAL_FILES",
    "MANUAL_HELP",
    "isic_files",
    "resolve_dataverse_file",
    "download_file",
    "check_free_disk",
    "safe_extract",
    "download_official",
]

log = logging.getLogger(__name__)

#: Where the ISIC 2018 challenge files are served, tried in this order.
ISIC_BASE_URLS: tuple[str, ...] = (
    # Current ISIC archive address (the challenge data page links here since the archive moved).
    "https://isic-archive.s3.amazonaws.com/challenges/2018",
    # Older challenge-data address (the 2018-2023 links; still cited by most papers and code).
    "https://isic-challenge-data.s3.amazonaws.com/2018",
)
#: Harvard Dataverse, home of HAM10000.
DATAVERSE_SERVER = "https://dataverse.harvard.edu"
HAM10000_DOI = "doi:10.7910/DVN/DBW86T"
#: MD5 of the HAM10000 metadata CSV the kit was checked against (10015 rows).
HAM10000_METADATA_MD5 = "70bb67f71bd23dde0bd2eda4bdcc98e5"
METADATA_FILE = "HAM10000_metadata.csv"
#: Columns the metadata file must have (extra columns are allowed).
METADATA_COLUMNS: tuple[str, ...] = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization")

ENV_BASE = "METANET_DOWNLOAD_BASE"
ENV_DATAVERSE = "METANET_DATAVERSE_SERVER"
MARKER = ".metanet_download_complete.json"
USER_AGENT = "metanet-utils (MetaNet reproduction kit; python-requests)"
#: (connect, read) timeouts in seconds for every request.
TIMEOUT: tuple[float, float] = (15.0, 60.0)
_BACKOFF_CAP = 60.0

MANUAL_HELP = (
    "To get the files by hand:\n"
    "  * ISIC 2018 Task 3 training data (ISIC2018_Task3_Training_Input.zip, about 2.6 GB; "
    "ISIC2018_Task3_Training_GroundTruth.zip; ISIC2018_Task3_Training_LesionGroupings.csv) from the "
    "ISIC challenge 2018 data page, https://challenge.isic-archive.com/data/#2018\n"
    f"  * HAM10000_metadata (save it as {METADATA_FILE}) from Harvard Dataverse, {HAM10000_DOI} "
    "(https://doi.org/10.7910/DVN/DBW86T; choose the original CSV format)\n"
    "Unzip the zips and put everything in one folder (HAM10000_metadata.csv at its top, the images in "
    "ISIC2018_Task3_Training_Input/), then pass it with --data-dir PATH (or $METANET_DATA_DIR), "
    "or place it at data/ham10000/ in the project."
)


class DownloadError(RuntimeError):
    """A file could not be downloaded, verified or unpacked."""


class InsufficientDiskSpace(DownloadError):
    """Not enough free disk space for a download or an unzip."""


class UnsafeArchiveError(DownloadError):
    """A zip holds an entry that would be written outside the target folder."""


@dataclass(frozen=True)
class RemoteFile:
    """One official file and where to get it.

    Attributes:
        name: file name as published (also the name saved on disk unless ``target`` is set).
        urls: mirrors, tried in order.
        size: exact size in bytes, or None when not known for sure.
        sha256: expected SHA-256 (hex), or None.
        md5: expected MD5 (hex), or None.
        unzip: unpack into ``dest_dir/<name without .zip>/`` after download.
        target: name to save under (e.g. the Dataverse ``.tab`` saved as ``.csv``); defaults to ``name``.
        approx_size: rough size in bytes, only for the free-disk check when ``size`` is unknown.
        columns: columns the header must contain (of the file itself, or for a zip of the
            first file matching ``expect``).
        expect: for zips, ``(glob, count)`` of files the unpacked folder should hold.
    """

    name: str
    urls: tuple[str, ...]
    size: int | None = None
    sha256: str | None = None
    md5: str | None = None
    unzip: bool = False
    target: str | None = None
    approx_size: int | None = None
    columns: tuple[str, ...] = ()
    expect: tuple[str, int] | None = None

    @property
    def filename(self) -> str:
        """Name of the downloaded file on disk."""
        return self.target or self.name

    @property
    def folder(self) -> str:
        """Folder a zip is unpacked into (its name without ``.zip``)."""
        return self.filename[:-4] if self.filename.lower().endswith(".zip") else self.filename + "_files"


def _base_urls_from_env() -> tuple[str, ...] | None:
    env = os.environ.get(ENV_BASE, "").strip()
    if not env:
        return None
    return tuple(u for u in re.split(r"[\s,]+", env) if u)


def isic_files(base_urls: Sequence[str] | str | None = None) -> tuple[RemoteFile, ...]:
    """The ISIC 2018 Task 3 training files, with URLs built from ``base_urls``.

    Args:
        base_urls: folders holding the files, tried in order; default ``$METANET_DOWNLOAD_BASE``
            (comma or space separated) or :data:`ISIC_BASE_URLS`.
    """
    if isinstance(base_urls, str):
        base_urls = (base_urls,)
    bases = tuple(base_urls) if base_urls else (_base_urls_from_env() or ISIC_BASE_URLS)

    def urls(name: str) -> tuple[str, ...]:
        return tuple(f"{b.rstrip('/')}/{name}" for b in bases)

    # Sizes and checksums of the ISIC files are not published by ISIC; they are left None
    # (never guessed) and the files are checked by Content-Length, zip CRCs and CSV headers.
    return (
        RemoteFile(
            "ISIC2018_Task3_Training_GroundTruth.zip", urls("ISIC2018_Task3_Training_GroundTruth.zip"),
            unzip=True, approx_size=1 << 20, expect=("ISIC2018_Task3_Training_GroundTruth.csv", 1),
            columns=("image", *CLASS_CODES),
        ),
        RemoteFile(
            "ISIC2018_Task3_Training_LesionGroupings.csv", urls("ISIC2018_Task3_Training_LesionGroupings.csv"),
            approx_size=1 << 20, columns=("image", "lesion_id"),
        ),
        RemoteFile(
            "ISIC2018_Task3_Training_Input.zip", urls("ISIC2018_Task3_Training_Input.zip"),
            unzip=True, approx_size=2_600_000_000,  # "2.6 GB" on the ISIC data page; planning only
            expect=("ISIC_*.jpg", N_IMAGES),
        ),
    )


#: The official table with the default addresses (the metadata entry is resolved at run time).
OFFICIAL_FILES: tuple[RemoteFile, ...] = isic_files(ISIC_BASE_URLS)


# --------------------------------------------------------------------------- helpers


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def _new_session():
    import requests

    s = requests.Session()
    s.headers["User-Agent"] = USER_AGENT
    return s


def _hash_file(path: Path, algo: str, chunk: int = 1 << 22) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _existing_ancestor(folder: Path) -> Path:
    folder = Path(folder).absolute()
    for d in (folder, *folder.parents):
        if d.exists():
            return d
    return folder


def check_free_disk(folder: str | Path, needed_bytes: int) -> None:
    """Raise :class:`InsufficientDiskSpace` if ``folder``'s disk has less than ``needed_bytes`` free.

    Args:
        folder: where the data will be written (need not exist yet).
        needed_bytes: bytes that will be written.
    """
    where = _existing_ancestor(Path(folder))
    free = shutil.disk_usage(where).free
    if needed_bytes > free:
        raise InsufficientDiskSpace(
            f"not enough free disk space in {folder}: {_gb(needed_bytes)} needed, {_gb(free)} free "
            f"(on the disk holding {where}). Free some space or choose another folder (--data-dir)."
        )


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """``bytes 10-99/100`` -> (10, 100); ``bytes */100`` -> (None, 100)."""
    if not value:
        return None, None
    m = re.match(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)", value)
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return start, total


def _short(e: BaseException) -> str:
    """A one-line reason for a network error (``requests`` nests them deeply)."""
    text = str(e)
    for pattern, label in ((r"\[Errno -?\d+\] ([^'\")\]]+)", None), (r"Read timed out", "read timed out"),
                           (r"Connect(?:ion)? timed out|ConnectTimeout", "connection timed out"),
                           (r"IncompleteRead\((\d+ bytes read, \d+ more expected)\)", None)):
        m = re.search(pattern, text)
        if m:
            reason = label or m.group(1).strip()
            return f"{type(e).__name__}: {reason}"
    return f"{type(e).__name__}: {text[:200]}"


class _Retry(Exception):
    """Transient failure: retry this URL after a pause."""

    def __init__(self, msg: str, wait: float | None = None) -> None:
        super().__init__(msg)
        self.wait = wait


class _NextUrl(Exception):
    """Permanent failure of this URL: try the next mirror."""


# --------------------------------------------------------------------------- one file


def download_file(
    urls: Sequence[str] | str,
    dest: str | Path,
    expected_size: int | None = None,
    sha256: str | None = None,
    md5: str | None = None,
    retries: int = 3,
    chunk: int = 1 << 20,
    progress: bool = True,
    session=None,
    *,
    backoff: float = 1.0,
    verify: Callable[[Path], None] | None = None,
) -> Path:
    """Download one file, resumably, from the first URL that works.

    The bytes go to ``dest + ".part"``; a ``.part`` left by an earlier attempt is resumed with
    ``Range: bytes=N-`` (a server answering 200 restarts from zero, 416 means already complete).
    Connection errors, timeouts, truncated transfers and 5xx/429 answers are retried
    ``retries`` times per URL with exponential backoff (the count restarts whenever bytes
    arrived); 404 and other client errors move on to the next URL. The finished file is
    checked (size, SHA-256, MD5, then ``verify``) and renamed to ``dest`` in one step. An
    existing ``dest`` that passes the size/checksum checks is returned untouched.

    Args:
        urls: one URL or mirrors tried in order.
        dest: final path.
        expected_size: exact size in bytes, if known.
        sha256: expected SHA-256 hex digest, if known.
        md5: expected MD5 hex digest, if known.
        retries: attempts per URL without progress.
        chunk: bytes per read.
        progress: show a tqdm progress bar.
        session: a ``requests.Session`` to reuse (one is made and closed otherwise).
        backoff: first pause in seconds between retries (doubled each time, capped at 60 s).
        verify: extra check ``verify(part_path)`` raising on a bad file (zip integrity, CSV header).

    Returns:
        ``dest`` as a Path.

    Raises:
        DownloadError: every URL failed (the message lists them), or the file failed a check
            (the ``.part`` is deleted; the message names the file, expected and got values).
        InsufficientDiskSpace: the disk cannot hold the rest of the file.
    """
    if isinstance(urls, str):
        urls = (urls,)
    urls = tuple(urls)
    if not urls:
        raise ValueError("no URL given")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_suffix(dest.suffix + ".part")

    with FileLock(dest.parent / f".{dest.name}.lock"):
        if dest.exists() and _matches(dest, expected_size, sha256, md5):
            log.info("%s already complete", dest)
            return dest
        own_session = session is None
        session = session or _new_session()
        errors: list[str] = []
        try:
            for url in urls:
                try:
                    complete = _fetch_with_retries(url, part, expected_size, retries, chunk, progress,
                                                   session, backoff, dest.name)
                except _NextUrl as e:
                    errors.append(f"{url}: {e}")
                    log.warning("%s: %s%s", url, e, "; trying the next address" if url != urls[-1] else "")
                    continue
                if complete:
                    _finalize(part, dest, expected_size, sha256, md5, verify)
                    return dest
                errors.append(f"{url}: gave up after {retries} attempts")
        finally:
            if own_session:
                session.close()
    tried = "\n".join(f"  - {e}" for e in errors)
    raise DownloadError(f"could not download {dest.name}; tried:\n{tried}")


def _matches(path: Path, size: int | None, sha256: str | None, md5: str | None) -> bool:
    if size is not None and path.stat().st_size != size:
        return False
    if sha256 and _hash_file(path, "sha256") != sha256.lower():
        return False
    if md5 and _hash_file(path, "md5") != md5.lower():
        return False
    return True


def _finalize(part: Path, dest: Path, size: int | None, sha256: str | None, md5: str | None,
              verify: Callable[[Path], None] | None) -> None:
    """Check the finished ``.part`` and rename it to ``dest``; delete it on any failure."""
    try:
        got = part.stat().st_size
        if size is not None and got != size:
            raise DownloadError(f"{dest.name}: size mismatch: expected {size} bytes, got {got} bytes")
        for algo, want in (("sha256", sha256), ("md5", md5)):
            if want:
                have = _hash_file(part, algo)
                if have != want.lower():
                    raise DownloadError(
                        f"{dest.name}: {algo} mismatch: expected {want.lower()}, got {have} "
                        f"(the download is corrupt and was deleted; run again to retry)"
                    )
        if verify is not None:
            try:
                verify(part)
            except DownloadError:
                raise
            except Exception as e:  # noqa: BLE001 - any failed check means a bad file
                raise DownloadError(f"{dest.name}: failed its check ({e}); the download was deleted") from e
        with open(part, "rb+") as fh:
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
        raise
    os.replace(part, dest)
    fsync_dir(dest.parent)


def _fetch_with_retries(url: str, part: Path, expected_size: int | None, retries: int, chunk: int,
                        progress: bool, session, backoff: float, label: str) -> bool:
    """Fetch ``url`` into ``part`` (resuming); True when the part is complete, False when out of retries."""
    import requests
    import urllib3

    transient = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                 requests.exceptions.ContentDecodingError, urllib3.exceptions.HTTPError, _Retry)
    failures = 0
    while True:
        before = part.stat().st_size if part.exists() else 0
        try:
            return _fetch_once(url, part, expected_size, chunk, progress, session, label)
        except transient as e:
            after = part.stat().st_size if part.exists() else 0
            failures = 0 if after > before else failures + 1
            if failures >= max(1, retries):
                if isinstance(e, _Retry):
                    raise _NextUrl(f"{e} ({failures} attempts)") from None
                raise _NextUrl(f"{_short(e)} ({failures} attempts)") from None
            wait = getattr(e, "wait", None)
            if wait is None:
                wait = min(_BACKOFF_CAP, backoff * (2 ** max(0, failures - 1)))
            log.warning("%s: %s; retrying in %.1f s (%d bytes so far)", label, _short(e), wait, after)
            time.sleep(wait)


def _fetch_once(url: str, part: Path, expected_size: int | None, chunk: int, progress: bool,
                session, label: str) -> bool:
    from tqdm.auto import tqdm

    offset = part.stat().st_size if part.exists() else 0
    if expected_size is not None and offset > expected_size:
        part.unlink()
        offset = 0
    if expected_size is not None and offset == expected_size and offset > 0:
        return True
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    with session.get(url, headers=headers, stream=True, timeout=TIMEOUT, allow_redirects=True) as r:
        code = r.status_code
        if code == 416 and offset:
            _, total = _parse_content_range(r.headers.get("Content-Range"))
            if total is None or total == offset:
                return True  # the part already holds the whole file
            part.unlink()
            raise _Retry(f"HTTP 416 with a {offset}-byte part of a {total}-byte file; restarting", wait=0)
        if code in (429,) or code >= 500:
            ra = r.headers.get("Retry-After", "")
            wait = min(_BACKOFF_CAP, float(ra)) if ra.strip().isdigit() else None
            raise _Retry(f"HTTP {code} {r.reason}", wait=wait)
        if code >= 400:
            raise _NextUrl(f"HTTP {code} {r.reason}")
        if code == 206:
            start, total = _parse_content_range(r.headers.get("Content-Range"))
            if start != offset:
                part.unlink(missing_ok=True)
                raise _Retry(f"server resumed at byte {start}, not {offset}; restarting", wait=0)
            mode = "ab"
        elif code == 200:
            if offset:
                log.info("%s: server ignored the Range request; restarting from zero", label)
            offset, mode = 0, "wb"
            cl = r.headers.get("Content-Length")
            total = int(cl) if cl and cl.isdigit() else None
        else:
            raise _NextUrl(f"unexpected HTTP {code} {r.reason}")
        if expected_size is not None and total is not None and total != expected_size:
            raise _NextUrl(f"server offers {total} bytes, expected {expected_size}")
        total = total if total is not None else expected_size
        if total is not None:
            check_free_disk(part.parent, total - offset)
        written = offset
        with open(part, mode) as fh, tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                                          unit_divisor=1024, desc=label, disable=not progress,
                                          leave=False) as bar:
            for block in _blocks(r, chunk):
                if block:
                    fh.write(block)
                    written += len(block)
                    bar.update(len(block))
            fh.flush()
        if total is not None and written < total:
            raise _Retry(f"transfer cut off at {written} of {total} bytes")
        return True


def _blocks(r, chunk: int) -> Iterator[bytes]:
    """Body bytes as they arrive, so a cut-off transfer keeps every byte that came in.

    ``iter_content`` waits for a full ``chunk`` and drops a partial one when the connection
    breaks; urllib3 2's ``read1`` hands over what arrived (raw bytes: no decoding, matching
    Content-Length and Range offsets).
    """
    raw = r.raw
    if hasattr(raw, "read1"):
        while True:
            block = raw.read1(chunk, decode_content=False)
            if not block:
                return
            yield block
    else:  # urllib3 1.26
        yield from r.iter_content(chunk_size=min(chunk, 1 << 16))


# --------------------------------------------------------------------------- checks and unzip


def _check_csv_header(path: Path, columns: Iterable[str], label: str) -> None:
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    text = head.decode("utf-8-sig", errors="replace")
    first = text.splitlines()[0] if text else ""
    dialect_delim = "\t" if first.count("\t") > first.count(",") else ","
    header = [c.strip().strip('"') for c in next(csv.reader(io.StringIO(first), delimiter=dialect_delim), [])]
    missing = [c for c in columns if c not in header]
    if missing or dialect_delim != ",":
        raise DownloadError(
            f"{label}: not the expected CSV (missing columns {missing or 'none'}; header {header[:10]}; "
            f"{'tab' if dialect_delim == chr(9) else 'comma'}-separated)"
        )


def _check_zip(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except zipfile.BadZipFile as e:
        raise DownloadError(f"{path.name}: not a valid zip ({e})") from e
    if bad is not None:
        raise DownloadError(f"{path.name}: corrupt zip (CRC error in {bad})")


def _unsafe_reason(info: zipfile.ZipInfo) -> str | None:
    name = info.filename.replace("\\", "/")
    p = PurePosixPath(name)
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    if ".." in p.parts:
        return "'..' in path"
    mode = info.external_attr >> 16
    if mode and stat.S_ISLNK(mode):
        return "symbolic link"
    return None


def safe_extract(zip_path: str | Path, dest: str | Path, strip_top: str | None = None) -> Path:
    """Unpack ``zip_path`` into the folder ``dest``, atomically and safely.

    Every entry is checked first: absolute paths, ``..`` components and symbolic links are
    refused (zip-slip). The files are written to a staging folder beside ``dest`` that is
    renamed to ``dest`` only when all of them were written (CRCs checked), with a marker file
    recording the source. If every entry lies under one folder named ``strip_top`` that folder
    level is dropped, so ``X.zip`` holding ``X/a.jpg`` gives ``dest/a.jpg``.

    Args:
        zip_path: the archive.
        dest: final folder (replaced if it exists).
        strip_top: top folder name to drop; default ``dest``'s name.

    Returns:
        ``dest``.

    Raises:
        UnsafeArchiveError: an entry would land outside ``dest``.
        InsufficientDiskSpace: the unpacked files would not fit.
        DownloadError: the zip is corrupt.
    """
    zip_path, dest = Path(zip_path), Path(dest)
    strip_top = dest.name if strip_top is None else strip_top
    try:
        zf = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as e:
        raise DownloadError(f"{zip_path.name}: not a valid zip ({e})") from e
    with zf:
        # macOS archivers add resource forks; they are not data.
        infos = [i for i in zf.infolist() if not i.filename.startswith("__MACOSX/")
                 and PurePosixPath(i.filename).name != ".DS_Store"]
        for info in infos:
            why = _unsafe_reason(info)
            if why:
                raise UnsafeArchiveError(f"{zip_path.name}: refusing entry {info.filename!r} ({why})")
        names = [i.filename.replace("\\", "/") for i in infos]
        strip = bool(strip_top) and bool(names) and all(
            n == f"{strip_top}/" or n.startswith(f"{strip_top}/") for n in names)
        check_free_disk(dest.parent, sum(i.file_size for i in infos))
        # Clear staging folders left by a killed earlier run.
        for old in glob.glob(str(dest.parent / f".{glob.escape(dest.name)}.stage-*")):
            shutil.rmtree(old, ignore_errors=True)
        n_files = 0
        try:
            with staged_dir(dest) as stage:
                root = stage.resolve()
                for info, name in zip(infos, names):
                    rel = name[len(strip_top) + 1:] if strip else name
                    if not rel or rel.endswith("/"):
                        if rel:
                            (stage / rel).mkdir(parents=True, exist_ok=True)
                        continue
                    target = (stage / rel).resolve()
                    if not target.is_relative_to(root):  # belt and braces after _unsafe_reason
                        raise UnsafeArchiveError(f"{zip_path.name}: refusing entry {info.filename!r}")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
                    n_files += 1
                atomic_write_json(stage / MARKER, {
                    "source": zip_path.name, "zip_bytes": zip_path.stat().st_size, "files": n_files,
                    "unpacked_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                })
        except zipfile.BadZipFile as e:
            raise DownloadError(f"{zip_path.name}: corrupt zip ({e})") from e
    return dest


# --------------------------------------------------------------------------- Dataverse


def resolve_dataverse_file(
    stem: str = "HAM10000_metadata",
    server: str | None = None,
    doi: str = HAM10000_DOI,
    session=None,
    target: str | None = METADATA_FILE,
    *,
    retries: int = 3,
    backoff: float = 1.0,
) -> RemoteFile:
    """Look a file up in a Dataverse dataset and return how to download it.

    Reads ``GET {server}/api/datasets/:persistentId/?persistentId={doi}`` and picks the file of
    the latest version whose name without extension is ``stem``. A tabular file (ingested by
    Dataverse into ``.tab``) is fetched in its original format (``?format=original``) and
    checked against the original's size and MD5, which is what Dataverse records.

    Args:
        stem: file name without extension.
        server: Dataverse address; default ``$METANET_DATAVERSE_SERVER`` or Harvard Dataverse.
        doi: dataset persistent id.
        session: a ``requests.Session`` to reuse.
        target: name to save the file under.
        retries: attempts on connection errors and 5xx answers.
        backoff: first pause between attempts, in seconds.

    Raises:
        DownloadError: the API cannot be reached or does not list the file.
    """
    import requests

    server = (server or os.environ.get(ENV_DATAVERSE) or DATAVERSE_SERVER).rstrip("/")
    api = f"{server}/api/datasets/:persistentId/"
    own = session is None
    session = session or _new_session()
    try:
        last: Exception | None = None
        for attempt in range(max(1, retries)):
            try:
                r = session.get(api, params={"persistentId": doi}, timeout=TIMEOUT)
                if r.status_code >= 500 or r.status_code == 429:
                    raise _Retry(f"HTTP {r.status_code}")
                r.raise_for_status()
                files = r.json()["data"]["latestVersion"]["files"]
                break
            except (requests.ConnectionError, requests.Timeout, _Retry) as e:
                last = e
                if attempt + 1 < retries:
                    time.sleep(min(_BACKOFF_CAP, backoff * 2 ** attempt))
            except (requests.RequestException, ValueError, KeyError, TypeError) as e:
                raise DownloadError(f"Dataverse API {api}?persistentId={doi} gave no file list: {e}") from e
        else:
            raise DownloadError(f"Dataverse API {api}?persistentId={doi} unreachable "
                                f"({_short(last) if last else 'no answer'}; no network?)")
    finally:
        if own:
            session.close()

    for entry in files:
        df = entry.get("dataFile", {})
        fname = df.get("filename") or entry.get("label") or ""
        orig_name = df.get("originalFileName") or ""
        if stem not in (fname.rsplit(".", 1)[0], orig_name.rsplit(".", 1)[0], fname):
            continue
        tabular = bool(df.get("originalFileFormat"))
        url = f"{server}/api/access/datafile/{df['id']}" + ("?format=original" if tabular else "")
        size = df.get("originalFileSize") if tabular else df.get("filesize")
        checksum = df.get("checksum") or {}
        ctype = str(checksum.get("type", "")).upper().replace("-", "")
        md5 = df.get("md5") or (checksum.get("value") if ctype == "MD5" else None)
        sha256 = checksum.get("value") if ctype == "SHA256" else None
        return RemoteFile(
            name=fname, urls=(url,), size=int(size) if size is not None else None, md5=md5, sha256=sha256,
            target=target or (orig_name or fname), columns=METADATA_COLUMNS if stem == "HAM10000_metadata" else (),
        )
    names = [e.get("dataFile", {}).get("filename") for e in files]
    raise DownloadError(f"Dataverse dataset {doi} at {server} lists no file named {stem}.* (it has {names})")


# --------------------------------------------------------------------------- everything


def _is_complete(item: RemoteFile, dest_dir: Path) -> bool:
    if not item.unzip:
        return (dest_dir / item.filename).is_file()
    folder = dest_dir / item.folder
    if (folder / MARKER).is_file():
        return True
    if item.expect and folder.is_dir():  # unpacked by hand earlier
        pattern, count = item.expect
        return sum(1 for _ in folder.rglob(pattern)) >= count
    return False


def download_complete(dest_dir: str | Path, include_images: bool = True,
                      base_urls: Sequence[str] | str | None = None) -> bool:
    """Whether :func:`download_official` into ``dest_dir`` has finished (an interrupted one has not:
    the metadata arrives first, the images last), without any network access."""
    dest_dir = Path(dest_dir)
    if not (dest_dir / METADATA_FILE).is_file():
        return False
    return all(_is_complete(item, dest_dir) for item in _wanted_files(base_urls, include_images))


def _wanted_files(base_urls: Sequence[str] | str | None, include_images: bool) -> list[RemoteFile]:
    """The ISIC files a download fetches (without the image archive for a metadata-only one)."""
    return [f for f in isic_files(base_urls) if include_images or not f.name.endswith("Training_Input.zip")]


def _probe_size(urls: Sequence[str], session) -> int | None:
    import requests

    for url in urls:
        try:
            r = session.head(url, timeout=(5.0, 15.0), allow_redirects=True,
                             headers={"Accept-Encoding": "identity"})
        except requests.RequestException:
            continue
        cl = r.headers.get("Content-Length", "")
        if r.status_code == 200 and cl.isdigit():
            return int(cl)
    return None


def _say(progress: bool, msg: str) -> None:
    log.info(msg)
    if progress:
        print(msg, flush=True)


def download_official(
    dest_dir: str | Path | None = None,
    include_images: bool = True,
    base_urls: Sequence[str] | str | None = None,
    dataverse_server: str = DATAVERSE_SERVER,
    progress: bool = True,
    *,
    retries: int = 3,
    backoff: float = 1.0,
    keep_zips: bool = False,
    session=None,
) -> Path:
    """Download and unpack the official HAM10000 / ISIC 2018 Task 3 training data.

    Files already complete in ``dest_dir`` are skipped without any network access, so a
    second call downloads nothing. The free disk space is checked before anything is fetched.

    Args:
        dest_dir: target folder; default ``data/ham10000`` in the project.
        include_images: also fetch the 2.6 GB image zip (False: metadata and labels only).
        base_urls: folders serving the ISIC files, tried in order (default ``$METANET_DOWNLOAD_BASE``
            or :data:`ISIC_BASE_URLS`).
        dataverse_server: Dataverse address for the metadata (``$METANET_DATAVERSE_SERVER`` overrides
            the default).
        progress: progress bars and one line per file.
        retries: attempts per URL without progress.
        backoff: first pause between retries, in seconds.
        keep_zips: keep the zips after unpacking (default: delete them).
        session: a ``requests.Session`` to reuse.

    Returns:
        ``dest_dir``, laid out as the module docstring shows.

    Raises:
        DownloadError: something could not be fetched or verified; the message lists the URLs
            tried and how to get the files by hand.
        InsufficientDiskSpace: the disk is too small.
    """
    if dest_dir is None:
        from .paths import data_dir

        dest_dir = data_dir() / "ham10000"
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    if dataverse_server == DATAVERSE_SERVER and os.environ.get(ENV_DATAVERSE):
        dataverse_server = os.environ[ENV_DATAVERSE]

    isic = _wanted_files(base_urls, include_images)
    own = session is None
    session = session or _new_session()
    try:
        with FileLock(dest_dir / ".download.lock"):
            pending: list[RemoteFile] = []
            if not (dest_dir / METADATA_FILE).is_file():
                try:
                    meta = resolve_dataverse_file(server=dataverse_server, session=session,
                                                  retries=retries, backoff=backoff)
                except DownloadError as e:
                    raise DownloadError(f"{e}\n\n{MANUAL_HELP}") from e
                if meta.md5 and meta.md5.lower() != HAM10000_METADATA_MD5:
                    warnings.warn(
                        f"Dataverse serves a HAM10000 metadata file with md5 {meta.md5}, not the "
                        f"{HAM10000_METADATA_MD5} this kit was checked against; it may be a newer release. "
                        "It is downloaded and verified against Dataverse's own checksum.", stacklevel=2)
                pending.append(meta)
            else:
                _say(progress, f"{METADATA_FILE}: already here")
            for item in isic:
                if _is_complete(item, dest_dir):
                    _say(progress, f"{item.folder if item.unzip else item.filename}: already here")
                else:
                    pending.append(item)
            if not pending:
                return dest_dir

            needed = 0
            for item in pending:
                size = item.size
                if size is None and not (dest_dir / item.filename).is_file():
                    size = _probe_size(item.urls, session)
                size = size if size is not None else (item.approx_size or 0)
                have = 0
                if (dest_dir / item.filename).is_file():
                    have = size  # downloaded, only the unzip is left
                elif (part := dest_dir / (item.filename + ".part")).is_file():
                    have = min(size, part.stat().st_size)
                needed += (size - have) + (size if item.unzip else 0)
            check_free_disk(dest_dir, needed)

            for item in pending:
                _fetch_item(item, dest_dir, session, progress, retries, backoff, keep_zips)
    finally:
        if own:
            session.close()
    return dest_dir


def _fetch_item(item: RemoteFile, dest_dir: Path, session, progress: bool, retries: int, backoff: float,
                keep_zips: bool) -> None:
    path = dest_dir / item.filename
    verify: Callable[[Path], None] | None = None
    if item.unzip:
        verify = _check_zip
    elif item.columns:
        cols = item.columns
        verify = lambda p: _check_csv_header(p, cols, item.filename)  # noqa: E731
    _say(progress, f"{item.filename}: downloading from {item.urls[0]}"
         + (f" (+{len(item.urls) - 1} fallback)" if len(item.urls) > 1 else ""))
    try:
        download_file(item.urls, path, expected_size=item.size, sha256=item.sha256, md5=item.md5,
                      retries=retries, progress=progress, session=session, backoff=backoff, verify=verify)
    except InsufficientDiskSpace:
        raise
    except DownloadError as e:
        raise DownloadError(f"{e}\n\n{MANUAL_HELP}") from e
    if item.unzip:
        folder = dest_dir / item.folder
        _say(progress, f"{item.filename}: unpacking into {folder}")
        safe_extract(path, folder, strip_top=item.folder)
        if item.expect:
            pattern, count = item.expect
            found = sum(1 for _ in folder.rglob(pattern))
            if found == 0:
                shutil.rmtree(folder, ignore_errors=True)
                raise DownloadError(f"{item.filename}: holds no {pattern}; not the expected archive\n\n{MANUAL_HELP}")
            if item.columns:
                first = next(iter(sorted(folder.rglob(pattern))))
                try:
                    _check_csv_header(first, item.columns, f"{item.filename}: {first.name}")
                except DownloadError as e:
                    shutil.rmtree(folder, ignore_errors=True)
                    path.unlink(missing_ok=True)
                    raise DownloadError(f"{e}\n\n{MANUAL_HELP}") from e
            if found < count:  # a cut or foreign archive: never marked complete, fetched again next time
                shutil.rmtree(folder, ignore_errors=True)
                path.unlink(missing_ok=True)
                raise DownloadError(f"{item.filename}: holds {found} files {pattern}, expected {count}; removed, "
                                    f"run the download again\n\n{MANUAL_HELP}")
        if not keep_zips:
            path.unlink(missing_ok=True)
