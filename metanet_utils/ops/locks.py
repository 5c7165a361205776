"""The lock per run that keeps workers (processes, machines, Slurm jobs) off each other's runs.

``<runs_dir>/.locks/<run_id>.lock`` is a ``filelock`` (``flock``) lock, freed by the kernel when its process dies:
a killed worker leaves no stale lock.

Example:
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> with run_lock(d, "run-a"):
    ...     try:
    ...         with run_lock(d, "run-a"):
    ...             pass
    ...     except RunBusy as e:
    ...         print(e)
    run run-a is being trained by another worker
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import filelock


class RunBusy(RuntimeError):
    """Another worker is training this run right now."""


@contextlib.contextmanager
def run_lock(runs_dir: str | Path, run_id: str) -> Iterator[None]:
    """Hold the run's lock while the block runs; :class:`RunBusy` at once if another worker holds it."""
    lock = filelock.FileLock(Path(runs_dir) / ".locks" / f"{run_id}.lock")
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        raise RunBusy(f"run {run_id} is being trained by another worker") from None
    try:
        yield
    finally:
        lock.release()
