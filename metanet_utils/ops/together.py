"""Several runs trained at once in one process (opt-in: ``runs_together: K`` or ``grid --together K``).

At the paper's batch of 32 one run may leave a large GPU partly idle; folds or variants trained
together can fill it (their kernels overlap, one CUDA stream per run) and share one copy of the image
cache in device memory. Each run keeps everything of its own: model, optimizer, schedule, shuffle and
augmentation streams, checkpoint, record. The default is one run at a time (``runs_together: 1``) until a
dated GPU record in ``bench/results/`` shows runs trained together correct and faster
(``bench/throughput.py --together K`` measures them).

Built on the public pieces of :mod:`metanet_utils.train` (:class:`~metanet_utils.train.Run` and its epoch
generator) and the run lock of :mod:`.locks`; nothing builds on it but the grid.

Example:
    >>> from metanet_utils.dataset import open_dataset                                  # doctest: +SKIP
    >>> ds = open_dataset("../shared/ham10000", max_images=300)                          # doctest: +SKIP
    >>> cfgs = [RunConfig(backbone="test_resnet", n_folds=2, fold=f, epochs=1, image_size=64, crop_size=56,
    ...                   pretrained=False, data_fingerprint=ds.fingerprint) for f in (0, 1)]   # doctest: +SKIP
    >>> sorted(m["mcr"] > 0 for m in train_runs_together(cfgs, ds).values())            # doctest: +SKIP
    [True, True]
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import torch

from ..config import RunConfig
from ..paths import runs_dir as default_runs_dir
from .step import graph_step
from ..train import Run, is_complete, iter_train_epoch, pick_device, read_metrics
from .locks import run_lock

__all__ = ["train_runs_together", "EpochIter", "run_interleaved"]


class EpochIter:
    """One epoch of one run (an :func:`~metanet_utils.train.iter_train_epoch` generator), advanced a batch at a
    time, its device work queued on ``stream`` (a CUDA stream of its own; None: the current one)."""

    def __init__(self, gen: Iterator[int], stream: torch.cuda.Stream | None = None) -> None:
        self.gen, self.stream, self.result, self.error = gen, stream, None, None

    def advance(self) -> bool:
        """Queue the next batch; False once the epoch is over (``result`` set) or has failed (``error`` set)."""
        with torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext():
            try:
                next(self.gen)
                return True
            except StopIteration as done:
                self.result = done.value
            except Exception as e:  # noqa: BLE001 - one failing run must not stop the others
                self.error = e
            return False


def run_interleaved(epochs: list[EpochIter], device: torch.device) -> None:
    """Run several epochs to their end, one batch of each in turn. Each run's stream first waits for what the
    current stream queued (uploads, evaluations), and the current stream then waits for all of them."""
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


def train_runs_together(cfgs: list[RunConfig], dataset, runs_dir: str | Path | None = None,
                        device: str | None = None, progress: bool = True,
                        weights_dir: str | Path | None = None) -> dict[str, dict[str, Any] | BaseException]:
    """Train several runs at once in this process, one batch of each in turn, one CUDA stream each.

    A run's numbers are those of the run trained alone, except where a model draws from the global
    random generator (dropout: AlexNet and VGG), whose draws now interleave; a deterministic run is
    therefore trained alone. ``cuda_graphs: on`` runs replay their steps from CUDA graphs.

    Returns run_id -> ``metrics.json`` content, or the exception that stopped that run
    (:class:`~metanet_utils.ops.locks.RunBusy` where another worker holds it). Complete runs are read back.
    """
    runs_dir, dev = Path(runs_dir or default_runs_dir()), pick_device(device)
    out: dict[str, dict[str, Any] | BaseException] = {}
    with contextlib.ExitStack() as locks:
        runs = _open_runs(cfgs, dataset, runs_dir, dev, progress, weights_dir, out, locks)
        if progress and len(runs) > 1:
            print(f"[together] training {len(runs)} runs at once on {dev}: "
                  + ", ".join(r.cfg.run_id for r in runs), flush=True)
        streams = {r: torch.cuda.Stream(dev) if dev.type == "cuda" else None for r in runs}
        active = [r for r in runs if r.epoch < r.cfg.epochs]
        while active:
            its = {r: EpochIter(iter_train_epoch(r.model, r.data, r.augment, r.criterion, r.optimizer, r.cfg, r.epoch,
                                                 dev, r.amp_dtype, r.channels_last, r.step), streams[r])
                   for r in active}
            run_interleaved(list(its.values()), dev)
            for r, it in its.items():  # evaluations once every epoch has ended: one between the others' last
                try:                   # batches would stall them and count in their epoch times
                    if it.error is not None:
                        raise it.error
                    r.end_epoch(it.result)
                except Exception as e:  # noqa: BLE001 - one failing run must not stop the others
                    out[r.cfg.run_id] = e
            active = [r for r in active if r.epoch < r.cfg.epochs and r.cfg.run_id not in out]
        for r in runs:
            if r.cfg.run_id not in out:
                try:
                    out[r.cfg.run_id] = r.write_record(trained_together=True)
                except Exception as e:  # noqa: BLE001
                    out[r.cfg.run_id] = e
    return out


def _open_runs(cfgs: list[RunConfig], dataset, runs_dir: Path, dev: torch.device, progress: bool, weights_dir,
               out: dict, locks: contextlib.ExitStack) -> list[Run]:
    """Lock and open every run not complete yet (one image cache shared by all); what stops a run goes to ``out``."""
    runs: list[Run] = []
    shared: dict[tuple, torch.Tensor] = {}
    for cfg in {c.run_id: c for c in cfgs}.values():  # each run once, in order
        final, key = runs_dir / cfg.run_id, (cfg.image_size, cfg.color_constancy)
        if is_complete(final):
            out[cfg.run_id] = read_metrics(final)
            continue
        if cfg.deterministic and len(cfgs) > 1:
            out[cfg.run_id] = ValueError("a deterministic run is trained alone (train_run), not together")
            continue
        try:
            locks.enter_context(run_lock(runs_dir, cfg.run_id))
            if is_complete(final):  # finished by another worker before we got the lock
                out[cfg.run_id] = read_metrics(final)
                continue
            runs.append(Run(cfg, dataset, runs_dir, dev, progress, weights_dir,
                            graph_step if cfg.cuda_graphs == "on" else None, images=shared.get(key)))
            shared.setdefault(key, runs[-1].data.images)
        except Exception as e:  # noqa: BLE001 - one bad run must not stop the others
            out[cfg.run_id] = e
    return runs
