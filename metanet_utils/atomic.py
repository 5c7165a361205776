"""Crash-safe files: a reader sees the old complete file or the new one, never half of one.

A file is written to a temporary name beside it, fsync'ed, then renamed over the target; a folder likewise.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> atomic_write_json(d / "m.json", {"mcr": float("nan")})
    >>> (d / "m.json").read_text()
    '{\\n  "mcr": null\\n}\\n'
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # a folder on some filesystems
        pass
    finally:
        os.close(fd)


def atomic_write_with(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_with(path, lambda tmp: tmp.write_bytes(text.encode("utf-8")))


def _plain(o: Any) -> Any:
    """Strict JSON values: numpy to Python, tuples and sets to lists, paths to text, NaN and infinity to None."""
    o = o.tolist() if hasattr(o, "tolist") else o
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple, set)):
        return [_plain(v) for v in o]
    return str(o) if isinstance(o, Path) else o


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Strict JSON: a NaN (the recall of a class absent from a fold) is ``null``."""
    atomic_write_text(path, json.dumps(_plain(obj), indent=2, sort_keys=True, allow_nan=False) + "\n")


@contextlib.contextmanager
def staged_dir(final: str | Path) -> Iterator[Path]:
    """Build a folder under a temporary name, then rename it to ``final``, replacing an old one."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.stage-", dir=final.parent))
    try:
        yield stage
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        if final.exists():
            os.replace(final, old)
        os.replace(stage, final)
        _fsync(final.parent)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
