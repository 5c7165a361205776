"""Several runs trained at once in one process (opt-in: ``runs_together: K`` or ``grid --together K``).

At the paper's batch of 32 one run may leave a large GPU partly idle; folds or variants trained
together can fill it (their kernels overlap, one CUDA stream per run) and share one copy of the image
cache in device memory. Each run keeps everything of its own: model, optimizer, schedule, shuffle and
augmentation streams, checkpoint, record. The default is one run at a time (``runs_together: 1``) until a
dated GPU record in ``bench/results/`` shows runs trained together correct and faster
(``bench/throughput.py --together K`` measures them).

This module builds on :mod:`metanet_utils.train` and nothing builds on it but the grid.

Example:
    >>> from metanet_utils.dataset import open_dataset                                  # doctest: +SKIP
    >>> ds = open_dataset("../shared/ham10000", max_images=300)                          # doctest: +SKIP
    >>> cfgs = [RunConfig(backbone="test_resnet", n_folds=2, fold=f, epochs=1, image_size=64, crop_size=56,
    ...                   pretrained=False, data_fingerprint=ds.fingerprint) for f in (0, 1)]   # doctest: +SKIP
    >>> sorted(m["mcr"] > 0 for m in train_runs_together(cfgs, ds).values())            # doctest: +SKIP
    [True, True]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .atomic import FileLock, LockHeld
from .config import RunConfig
from .paths import runs_dir as default_runs_dir
from .train import (EpochIter, RunBusy, _check_fingerprint, _device_name, _log, _remove_leftovers, _RunSession,
                    is_complete, pick_device, read_metrics)

__all__ = ["train_runs_together", "run_interleaved"]


def train_runs_together(cfgs: list[RunConfig], dataset, runs_dir: str | Path | None = None,
                        device: str | None = None, progress: bool = True,
                        weights_dir: str | Path | None = None) -> dict[str, dict[str, Any] | BaseException]:
    """Train several runs at once in this process, one batch of each in turn, one CUDA stream each.

    A run's numbers are those of the run trained alone, except where a model draws from the global
    random generator (dropout: AlexNet and VGG), whose draws now interleave; a deterministic run is
    therefore trained alone.

    Returns run_id -> ``metrics.json`` content, or the exception that stopped that run
    (:class:`~metanet_utils.train.RunBusy` where another worker holds it). Complete runs are read back.
    """
    runs_dir = Path(runs_dir or default_runs_dir())
    dev = pick_device(device)
    out: dict[str, dict[str, Any] | BaseException] = {}
    locks: list[FileLock] = []
    try:
        sessions = _open_sessions(cfgs, dataset, runs_dir, dev, progress, weights_dir, out, locks)
        if progress and len(sessions) > 1:
            _log(f"[together] training {len(sessions)} runs at once on {_device_name(dev)}: "
                 + ", ".join(x.cfg.run_id for x in sessions))
        _train_epochs(sessions, out)
        for x in sessions:
            if x.failed is None:
                try:
                    out[x.cfg.run_id] = x.finish()
                except Exception as e:  # noqa: BLE001 - one bad run must not stop the others
                    out[x.cfg.run_id] = e
    finally:
        for lk in locks:
            lk.release()
    return out


def _open_sessions(cfgs: list[RunConfig], dataset, runs_dir: Path, dev: torch.device, progress: bool,
                   weights_dir, out: dict, locks: list[FileLock]) -> list[_RunSession]:
    """Lock and open every run not complete yet (one image cache shared by all); what stops a run goes to ``out``."""
    sessions: list[_RunSession] = []
    shared: dict[tuple, torch.Tensor] = {}
    for cfg in {c.run_id: c for c in cfgs}.values():  # each run once, in order
        final = runs_dir / cfg.run_id
        if is_complete(final):
            out[cfg.run_id] = read_metrics(final)
            continue
        if cfg.deterministic and len(cfgs) > 1:
            out[cfg.run_id] = ValueError("a deterministic run is trained alone (train_run), not together")
            continue
        try:
            _check_fingerprint(cfg, dataset)
            lk = FileLock(runs_dir / ".locks" / f"{cfg.run_id}.lock", blocking=False)
            try:
                lk.acquire()
            except LockHeld:
                raise RunBusy(f"run {cfg.run_id} is being trained by another worker") from None
            locks.append(lk)
            if is_complete(final):  # finished by another worker before we got the lock
                out[cfg.run_id] = read_metrics(final)
                continue
            _remove_leftovers(runs_dir, cfg.run_id)
            sessions.append(_RunSession(cfg, dataset, runs_dir, dev, progress, weights_dir, shared=shared,
                                        together=True))
        except Exception as e:  # noqa: BLE001 - one bad run must not stop the others
            out[cfg.run_id] = e
    return sessions


def _train_epochs(sessions: list[_RunSession], out: dict) -> None:
    """Every session's epochs, one batch of each in turn. A run is evaluated once every run's epoch is over:
    an evaluation between the others' last batches would stall them and count in their epoch times."""

    def fail(x: _RunSession, e: BaseException) -> None:
        x.failed = e
        out[x.cfg.run_id] = e
        _log(f"!!! run {x.cfg.run_id} failed: {type(e).__name__}: {e}")

    active = [x for x in sessions if not x.done]
    while active:
        epochs = {x: x.run_epoch_iter() for x in active}
        ended: dict[_RunSession, dict[str, float]] = {}
        while epochs:
            for x in list(epochs):
                try:
                    if not epochs[x].advance():
                        ended[x] = epochs.pop(x).result
                except Exception as e:  # noqa: BLE001
                    epochs.pop(x, None)
                    fail(x, e)
        for x, row in ended.items():
            try:
                x.end_epoch(row)
            except Exception as e:  # noqa: BLE001
                fail(x, e)
        active = [x for x in active if not x.done and x.failed is None]


def run_interleaved(epochs: list[EpochIter], device: torch.device) -> None:
    """Run several epochs to their end, one batch of each in turn; each ``EpochIter`` queues its work on its
    own stream, and the current stream then waits for all of them (``bench/throughput.py --together``)."""
    cur = torch.cuda.current_stream(device) if device.type == "cuda" else None
    for it in epochs:
        if it.stream is not None:
            it.stream.wait_stream(cur)
    live = list(epochs)
    while live:
        live = [it for it in live if it.advance()]
    for it in epochs:
        if it.stream is not None:
            cur.wait_stream(it.stream)
