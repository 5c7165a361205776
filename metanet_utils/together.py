"""How many runs to train at once on one GPU (``runs_together: auto``), decided by measuring.

At the paper's batch of 32 one run may leave a large GPU partly idle; several runs trained together
(:func:`metanet_utils.train.train_runs_together`, one CUDA stream each) then fill it. Whether they do
depends on the backbone, the GPU and the step execution (CUDA graphs already remove most launch
gaps), so ``auto`` does not guess: before a backbone's first run the grid trains 1, 2, ... copies of
it together for a few batches on random images of the run's size (the real training loop, the real
step), and keeps the number with the highest total images per second, adding a run only while it
gains at least ``min_gain`` (10 %) and the runs plus the image cache fit in memory. A GPU that runs
out of memory ends the search. The decision is written to ``runs/.together.json`` (keyed by device,
backbone and everything that sets the speed) and reused by later grids.

On a CPU ``auto`` is 1 without measuring: the cores are busy with one run already.

Example:
    >>> import torch
    >>> from metanet_utils.config import RunConfig
    >>> choose_runs_together(RunConfig(backbone="test_resnet"), torch.device("cpu")).k
    1
"""

from __future__ import annotations

import contextlib
import gc
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .atomic import FileLock, atomic_write_json
from .config import RunConfig

__all__ = ["TogetherChoice", "choose_runs_together", "measure_together_rate", "probe_key"]


@dataclass
class TogetherChoice:
    """The decision: ``k`` runs at once; ``rates`` the measured total img/s per number of runs tried."""

    k: int
    reason: str
    rates: dict[int, float] = field(default_factory=dict)
    peak_bytes: dict[int, int] = field(default_factory=dict)
    cached: bool = False

    def describe(self) -> str:
        tried = ", ".join(f"{k}: {r:.0f} img/s" for k, r in sorted(self.rates.items()))
        return f"{self.k} at a time ({self.reason}{'; measured earlier' if self.cached else ''}" + \
            (f"; {tried}" if tried else "") + ")"


def probe_key(cfg: RunConfig, device: torch.device) -> str:
    """What sets a run's speed: the device, the model and input, precision and step execution."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return "|".join(str(v) for v in (name, torch.__version__, cfg.backbone, cfg.fusion, len(cfg.meta_features),
                                     cfg.meta_layers, cfg.image_size, cfg.crop_size, cfg.batch_size, cfg.precision,
                                     cfg.channels_last, cfg.cuda_graphs, cfg.compile))


def measure_together_rate(cfg: RunConfig, k: int, device: torch.device, batches: int = 10,
                          repeats: int = 3) -> tuple[float, int]:
    """Total training img/s of ``k`` copies of ``cfg``'s model trained together on random images, and the
    peak device memory (bytes; 0 on a CPU). One warm-up epoch (cuDNN autotuning, graph capture), then the
    median of ``repeats`` epochs of ``batches`` batches per run, through the loop the grid trains with.
    """
    from .augment import BatchAugment
    from .metadata import meta_dim as dims_of
    from .models import build_model, input_spec
    from .step import TrainStep, cuda_graphs_wanted
    from .train import (DeviceData, EpochIter, autocast_dtype, iter_train_epoch, make_optimizer, run_interleaved,
                        uses_channels_last)

    n, size, bs = batches * cfg.batch_size, cfg.image_size, cfg.batch_size
    meta_dim = dims_of(cfg.meta_features) if cfg.fusion != "none" else 0
    gen = torch.Generator(device="cpu").manual_seed(0)
    data = DeviceData(images=torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=gen).to(device),
                      meta=torch.rand(n, meta_dim, generator=gen).to(device),
                      labels=torch.randint(0, 7, (n,), generator=gen).to(device),
                      train_idx=torch.arange(n, device=device), val_idx=torch.arange(0, device=device), val_ids=[])
    spec = input_spec(cfg.backbone)
    augment = BatchAugment(crop=cfg.crop_size, mean=tuple(spec.mean), std=tuple(spec.std))
    channels_last = uses_channels_last(cfg, device)
    amp = autocast_dtype(cfg.precision, device)
    criterion = torch.nn.CrossEntropyLoss()
    graphs = cuda_graphs_wanted(cfg.cuda_graphs, device, cfg.deterministic, cfg.compile)
    runs = []
    for _ in range(k):
        model = build_model(cfg.backbone, cfg.fusion, num_classes=7, meta_dim=meta_dim, meta_layers=cfg.meta_layers,
                            pretrained=False).to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        opt = make_optimizer(model, cfg)
        step = TrainStep(model, criterion, opt, bs, amp, cuda_graph=graphs)
        stream = torch.cuda.Stream(device) if device.type == "cuda" and k > 1 else None
        runs.append((model, opt, step, stream))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def epoch(e: int) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        run_interleaved([EpochIter(iter_train_epoch(m, data, augment, criterion, o, cfg, e, device, amp, channels_last,
                                                    step=st), s) for m, o, st, s in runs], device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    epoch(0)  # warm-up: autotuning, CUDA graph capture
    failed = [st.failure for _m, _o, st, _s in runs if st.failure]
    if failed:  # k captures that did not fit (or broke) would be measured eager: say so instead
        raise RuntimeError(f"CUDA graph capture failed with {k} run(s): {failed[0]}")
    seconds = statistics.median(epoch(e) for e in range(1, repeats + 1))
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    return k * n / seconds, int(peak)


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def choose_runs_together(cfg: RunConfig, device: torch.device, *, max_k: int = 4, min_gain: float = 1.10,
                         reserve_bytes: int = 0, runs_dir: str | Path | None = None, measure_on_cpu: bool = False,
                         measure: Callable[[RunConfig, int, torch.device], tuple[float, int]] | None = None,
                         total_bytes: int | None = None, log: Callable[[str], None] | None = print) -> TogetherChoice:
    """Decide how many runs like ``cfg`` to train at once on ``device`` (see the module docstring).

    Args:
        cfg: a run of the backbone (its size, batch, precision and execution settings count).
        device: where the grid trains.
        max_k: the most runs at once to try.
        min_gain: a further run must raise the total img/s by this factor.
        reserve_bytes: device memory the runs need besides what the probe sees (the image cache).
        runs_dir: where ``.together.json`` keeps decisions (None: not kept).
        measure_on_cpu: measure on a CPU too (tests).
        measure: ``(cfg, k, device) -> (img/s, peak bytes)``; default :func:`measure_together_rate`.
        total_bytes: the device's memory (default: what CUDA reports).
    """
    if cfg.deterministic:
        return TogetherChoice(1, "a deterministic run is trained alone")
    if device.type != "cuda" and not measure_on_cpu:
        return TogetherChoice(1, f"{device.type}: one run keeps the cores busy")
    key = probe_key(cfg, device)
    store = Path(runs_dir) / ".together.json" if runs_dir is not None else None
    # one worker measures, the others wait for its decision (two probes at once would measure each other)
    with FileLock(store.with_suffix(".lock")) if store is not None else contextlib.nullcontext():
        known = _read(store).get(key) if store is not None else None
        if known:
            choice = TogetherChoice(int(known["k"]), known["reason"], {int(a): b for a, b in known["rates"].items()},
                                    {int(a): b for a, b in known.get("peak_bytes", {}).items()}, cached=True)
        else:
            choice = _search(cfg, device, max_k, min_gain, reserve_bytes, measure or measure_together_rate,
                             total_bytes)
            if store is not None and choice.rates:  # a probe that failed is tried again next time
                atomic_write_json(store, {**_read(store), key: {
                    "k": choice.k, "reason": choice.reason, "rates": choice.rates, "peak_bytes": choice.peak_bytes,
                    "measured": time.strftime("%Y-%m-%dT%H:%M:%S")}})
    if log is not None:
        log(f"[together] {cfg.backbone}: {choice.describe()}")
    return choice


def _read(store: Path) -> dict[str, Any]:
    try:
        return json.loads(store.read_text()) if store.is_file() else {}
    except ValueError:  # a damaged file: measure again
        return {}


def _search(cfg: RunConfig, device: torch.device, max_k: int, min_gain: float, reserve_bytes: int,
            measure: Callable[[RunConfig, int, torch.device], tuple[float, int]],
            total_bytes: int | None) -> TogetherChoice:
    if total_bytes is None and device.type == "cuda":
        total_bytes = torch.cuda.get_device_properties(device).total_memory
    rates: dict[int, float] = {}
    peaks: dict[int, int] = {}
    best, reason = 1, "1 run alone"
    for k in range(1, max_k + 1):
        try:
            rate, peak = measure(cfg, k, device)
        except Exception as e:  # noqa: BLE001 - a failed probe never stops the grid: fewer runs at once
            if k == 1:
                return TogetherChoice(1, f"the probe failed ({type(e).__name__}: {str(e)[:120]})")
            reason = f"{k} runs ran out of memory" if _is_oom(e) else \
                f"{k} runs failed ({type(e).__name__}: {str(e)[:120]})"
            break
        finally:  # the k models, their graphs and memory pools go before the next try
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rates[k], peaks[k] = rate, peak
        if total_bytes and peak + reserve_bytes > 0.9 * total_bytes:
            reason = f"{k} runs and the image cache would need {(peak + reserve_bytes) / 2**30:.1f} GiB " \
                     f"of {total_bytes / 2**30:.1f}"
            break
        if k > 1:
            if rate < min_gain * rates[best]:
                reason = f"{k} runs gain less than {100 * (min_gain - 1):.0f} % over {best}"
                break
            best = k
            reason = f"{k} runs gain {100 * (rate / rates[1] - 1):.0f} % over one"
    return TogetherChoice(best, reason, rates, peaks)

