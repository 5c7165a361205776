"""Several runs trained at once in one process (opt-in: ``runs_together: K`` or ``grid --together K``).

At batch 32 one run may leave a large GPU partly idle; runs trained together fill it (one CUDA stream each) and
share one copy of the image cache. Opt-in until a dated GPU record in ``bench/results/`` shows it correct and faster.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import torch

from ..config import RunConfig
from ..paths import runs_dir as default_runs_dir
from ..train import Run, is_complete, iter_train_epoch, pick_device, read_metrics
from .locks import run_lock
from .step import graph_step


class EpochIter:
    """One epoch of one run (an ``iter_train_epoch`` generator), a batch at a time on ``stream`` (None: current)."""

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
    """Run several epochs to their end, one batch of each in turn, their streams ordered after the current one's
    work (uploads, evaluations) and before what comes next."""
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
    """Train several runs at once, one batch of each in turn; return run_id -> ``metrics.json`` content, or the
    exception that stopped that run. The numbers are those of each run alone, except for draws from the global
    random generator (dropout: AlexNet, VGG), which interleave: a deterministic run is trained alone.
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
            for r, it in its.items():  # evaluate once every epoch has ended, not between the others' batches
                try:
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
    """Lock and open every run not complete yet, sharing one image cache; what stops a run goes to ``out``."""
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
