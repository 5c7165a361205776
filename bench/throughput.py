#!/usr/bin/env python3
"""Training throughput: the kit's pipeline against a plain torchvision DataLoader pipeline.

For each backbone (the paper's six by default, at the paper's resolution: resize 300 -> crop 224,
PNASNet 441 -> 331) and each batch size, training images per second (forward + backward + SGD
step, ``metanet`` fusion, random weights) on the same device for:

``reference``  what a user would otherwise run (the authors' way): JPEG files decoded by PIL and
               augmented by torchvision transforms in a ``torch.utils.data.DataLoader`` with one
               worker per core and ``pin_memory``; fp32, NCHW; ``loss.item()`` every step.
``kit``        the kit's default path through the loop of :func:`metanet_utils.train.train_one_epoch`:
               the uint8 image cache on the device, batched augmentation on the device, bf16 autocast
               on a GPU, channels_last where the backbone prefers it, eager steps.
``ceiling``    the same model, batch, precision and layout on a random tensor already on the device.

Beside the kit, the opt-in fast paths (off by default): ``--cuda-graphs on`` (steps replayed from a CUDA
graph, GPU only) and ``--together K`` (K runs trained together in one process, as ``grid --together K``).

Method: per measurement a first untimed call (cuDNN autotuning, DataLoader workers starting), a
warm-up, then ``--repeats`` timed repeats; the number reported is their median. Timing uses CUDA
events on a GPU and ``perf_counter`` on the CPU. The JSON (``--json``) and Markdown (``--md``) files
are rewritten after every measurement, so a run cut short keeps what it measured.

Example (the paper's six on a GPU; bench/README.md has more):
    python bench/throughput.py --images ../shared/ham10000 --deadline 230
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as _dt
import functools
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path
from typing import Any, Callable

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from metanet_utils.atomic import atomic_write_text  # noqa: E402
from metanet_utils.constants import BACKBONES  # noqa: E402

PAPER_BACKBONES = tuple(BACKBONES)  # the paper's six, in its order
DEFAULT_BATCH_CAPS = {"senet154": 64, "pnasnet5large": 64}
PIPELINES = ("reference", "kit", "ceiling")
#: Training and validation images per fold of the paper's protocol (10015 images, 5 folds), and its epochs.
PAPER_TRAIN_IMAGES, PAPER_VAL_IMAGES, PAPER_EPOCHS = 8012, 2003, 250
#: Evaluation (forward only) is assumed this many times faster than training per image where not measured.
EVAL_SPEEDUP = 3.0


# --------------------------------------------------------------------------- small helpers

def cpu_count() -> int:
    """Cores this process may use: CPU affinity and a container's cgroup quota both count."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:  # cgroup v2: "max 100000" or "1600000 100000"
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, int(n))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {cpu_count()} cores)"


def log(msg: str) -> None:
    print(f"[throughput {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Timer:
    """Wall time of a block: CUDA events on a GPU (after a synchronize), perf_counter on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.seconds = device, float("nan")

    def __enter__(self) -> "Timer":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self._events = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self._events[0].record()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            self._events[1].record()
            torch.cuda.synchronize(self.device)
            self.seconds = self._events[0].elapsed_time(self._events[1]) / 1000.0
        else:
            self.seconds = time.perf_counter() - self._t0


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def find_jpegs(folder: Path) -> list[Path]:
    """``*.jpg`` in ``folder``, ``folder/images`` or below."""
    for d in (folder, folder / "images"):
        files = sorted(d.glob("*.jpg")) + sorted(d.glob("*.jpeg"))
        if files:
            return files
    return sorted(folder.rglob("*.jpg"))


def steps_for(budget_s: float, step_s: float, lo: int, hi: int) -> int:
    if not math.isfinite(step_s) or step_s <= 0:
        return lo
    return int(min(hi, max(lo, round(budget_s / step_s))))


# --------------------------------------------------------------------------- the reference pipeline

class JpegDataset(torch.utils.data.Dataset):
    """JPEG files -> (augmented float image, metadata vector, label), as a plain PyTorch pipeline does."""

    def __init__(self, paths: list[Path], transform: Callable, meta: torch.Tensor, labels: torch.Tensor) -> None:
        self.paths, self.transform, self.meta, self.labels = [str(p) for p in paths], transform, meta, labels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            img = self.transform(im.convert("RGB"))
        return img, self.meta[i], self.labels[i]


def reference_transform(resize: int, crop: int, mean, std):
    """The paper's training augmentation written with torchvision transforms on PIL images."""
    import torchvision.transforms as T

    return T.Compose([T.Resize((resize, resize)), T.RandomCrop(crop), T.RandomHorizontalFlip(),
                      T.RandomVerticalFlip(), T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
                      T.RandomRotation(30), T.ToTensor(), T.Normalize(mean, std)])


def make_loader(dataset: torch.utils.data.Dataset, batch: int, workers: int, device: torch.device):
    import multiprocessing as mp

    sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=10**9)
    # fork: workers start in milliseconds (the default of Python <= 3.13 on Linux)
    kw = {"multiprocessing_context": "fork"} if workers > 0 and "fork" in mp.get_all_start_methods() else {}
    return torch.utils.data.DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers,
                                       pin_memory=device.type == "cuda", drop_last=True, **kw)


def _plain_step(model, x, meta, y, criterion, optimizer) -> float:
    """The reference's step, written the plain way (fp32, a user's training loop that logs its loss)."""
    loss = criterion(model(x, meta).float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


# --------------------------------------------------------------------------- measurements

@dataclasses.dataclass
class Settings:
    device: torch.device
    warmup_steps: int
    warmup_seconds: float
    repeats: int
    max_seconds: float
    min_steps: int
    max_steps: int
    workers: int


def _result(img_s: list[float], batch: int, n: int, **extra: Any) -> dict[str, Any]:
    return {"img_s": statistics.median(img_s), "repeats_img_s": [round(v, 2) for v in img_s],
            "steps_per_repeat": n, "batch": batch, **extra}


def _timed_repeats(run: Callable[[int], float], batch: int, s: Settings) -> dict[str, Any]:
    """``run(n)`` times n steps: one untimed first call, warm-up, then the median of ``s.repeats`` timed calls."""
    first = run(2)
    last = warm = run(s.warmup_steps)
    while warm < s.warmup_seconds:
        last = run(s.warmup_steps)
        warm += last
    n = steps_for(s.max_seconds / s.repeats, last / s.warmup_steps, s.min_steps, s.max_steps)
    times = [run(n) for _ in range(s.repeats)]
    return _result([n * batch / t for t in times], batch, n, first_call_s=round(first, 3))


def measure_kit(models: list[nn.Module], data, augment, cfg, criterion: nn.Module, s: Settings, amp_dtype,
                channels_last: bool, cuda_graph: bool = False) -> dict[str, Any]:
    """The kit's path: :func:`metanet_utils.train.iter_train_epoch` over ``n`` batches per call, one
    :class:`metanet_utils.ops.step.TrainStep` per model for all calls (eager, or captured once and replayed).
    Several models are trained together as :mod:`metanet_utils.ops.together` does (one CUDA stream each, their
    batches interleaved, one image cache); the img/s is then the sum over the runs."""
    from metanet_utils.ops.step import TrainStep
    from metanet_utils.ops.together import EpochIter, run_interleaved
    from metanet_utils.train import iter_train_epoch, make_optimizer, prepare_batch

    dev, bs = s.device, cfg.batch_size
    opts = [make_optimizer(m, cfg) for m in models]
    steps = [TrainStep(m, criterion, o, bs, amp_dtype, cuda_graph=cuda_graph) for m, o in zip(models, opts)]
    for st in steps:  # each call's data differs in its training order only: the same cache tensors
        st.set_prepare(prepare_batch(data, augment, channels_last))
    streams = [torch.cuda.Stream(dev) if dev.type == "cuda" and len(models) > 1 else None for _ in models]
    epoch = [0]

    def run(n: int) -> float:  # n batches per run: a training order cycling through the cache
        d = dataclasses.replace(data, train_idx=torch.arange(n * bs, device=data.meta.device) % data.images.shape[0])
        with Timer(dev) as t:
            run_interleaved([EpochIter(iter_train_epoch(m, d, augment, criterion, o, cfg, epoch[0], dev, amp_dtype,
                                                        channels_last, step=st), stream)
                             for m, o, st, stream in zip(models, opts, steps, streams)], dev)
        epoch[0] += 1
        return t.seconds

    try:
        res = _timed_repeats(run, bs * len(models), s)
    finally:
        for o in opts:
            o.zero_grad(set_to_none=True)
    ex = [st.describe() for st in steps]
    return {**res, "execution": ex[0] if len(ex) == 1 else ex, "runs": len(models)}


def measure_ceiling(model: nn.Module, batch: int, crop: int, meta_dim: int, criterion: nn.Module, s: Settings,
                    amp_dtype, channels_last: bool) -> dict[str, Any]:
    """Model only: a random batch already on the device, the kit's precision, layout and (eager) step."""
    from metanet_utils.ops.step import TrainStep

    g = torch.Generator(device="cpu").manual_seed(1)
    x = torch.randn(batch, 3, crop, crop, generator=g).to(s.device)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    meta = torch.rand(batch, meta_dim, generator=g).to(s.device)
    y = torch.randint(0, 7, (batch,), generator=g).to(s.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    step = TrainStep(model, criterion, optimizer, batch, amp_dtype)
    model.train()

    def run(n: int) -> float:
        with Timer(s.device) as t:
            for _ in range(n):
                step(x, meta, y)
        return t.seconds

    try:
        return _timed_repeats(run, batch, s)
    finally:
        optimizer.zero_grad(set_to_none=True)


def measure_eval(model: nn.Module, data, augment, s: Settings, amp_dtype, channels_last: bool,
                 batch: int = 128) -> dict[str, Any]:
    """The kit's evaluation pass (:func:`metanet_utils.train.evaluate`), ``n`` batches of ``batch``."""
    from metanet_utils.train import evaluate

    def run(n: int) -> float:
        d = dataclasses.replace(data, val_idx=torch.arange(n * batch, device=data.meta.device) % data.images.shape[0])
        with Timer(s.device) as t:
            evaluate(model, d, augment, s.device, amp_dtype, channels_last, batch_size=batch)
        return t.seconds

    return _timed_repeats(run, batch, dataclasses.replace(s, warmup_steps=2, min_steps=1, max_steps=64))


def _reference_model_rate(model, batch: int, crop: int, meta_dim: int, criterion, optimizer, s: Settings):
    """The model's fp32 step on a random batch (warms it up, so the loader's start does not overlap cuDNN
    set-up): (seconds of the first two steps, seconds per step after)."""
    g = torch.Generator(device="cpu").manual_seed(2)
    batch_ = (torch.randn(batch, 3, crop, crop, generator=g).to(s.device),
              torch.rand(batch, meta_dim, generator=g).to(s.device), torch.randint(0, 7, (batch,), generator=g).to(s.device))
    with Timer(s.device) as first:
        for _ in range(2):
            _plain_step(model, *batch_, criterion, optimizer)
    n = max(2, s.min_steps)
    with Timer(s.device) as t:
        for _ in range(n):
            _plain_step(model, *batch_, criterion, optimizer)
    return first.seconds, t.seconds / n


def measure_reference(model: nn.Module, dataset: JpegDataset, batch: int, crop: int, criterion: nn.Module,
                      s: Settings) -> dict[str, Any]:
    """PIL + torchvision transforms in a DataLoader, fp32, NCHW, ``loss.item()`` every step.

    When the loader may be the bottleneck (its rate, bounded from below by the first batch's arrival, is
    under 1.5x the model's), the first round of the workers' batches (a burst) is consumed before timing
    and every repeat spans whole rounds (``workers`` batches): the loader's true period.
    """
    dev = s.device
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    it = None
    try:
        first_s, model_step_s = _reference_model_rate(model, batch, crop, dataset.meta.shape[1], criterion, optimizer, s)
        t0 = time.perf_counter()
        it = iter(make_loader(dataset, batch, s.workers, dev))

        def step() -> None:
            x, meta, y = (v.to(dev, non_blocking=True) for v in next(it))
            _plain_step(model, x, meta, y, criterion, optimizer)

        step()
        first_batch_s, rounds = time.perf_counter() - t0, max(1, s.workers)
        model_img_s = batch / max(model_step_s, 1e-9)
        loader_bound = rounds * batch / max(first_batch_s, 1e-9) < 1.5 * model_img_s
        warm = max(s.warmup_steps, rounds if loader_bound else 0) - 1
        with Timer(dev) as t_warm:
            for _ in range(warm):
                step()
        per_step = max(model_step_s, t_warm.seconds / warm) if warm > 0 else model_step_s
        n = steps_for(s.max_seconds / s.repeats, per_step, s.min_steps, s.max_steps)
        mode = "worker rounds" if loader_bound and rounds * model_step_s <= 3 * s.max_seconds / s.repeats else "time"
        n = rounds * max(1, round(n / rounds)) if mode == "worker rounds" else n
        times = []
        for _ in range(s.repeats):
            with Timer(dev) as t:
                for _ in range(n):
                    step()
            times.append(t.seconds)
    finally:
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()  # stop the workers now, not whenever the iterator is collected
        optimizer.zero_grad(set_to_none=True)
    img_s = [n * batch / t for t in times]
    return _result(img_s, batch, n, first_batch_s=round(first_batch_s, 3), first_call_s=round(first_s, 3),
                   model_only_fp32_img_s=round(model_img_s, 1), repeat_mode=mode,
                   bottleneck="loader" if statistics.median(img_s) < 0.8 * model_img_s else "model")


def build_device_cache(paths: list[Path], resize: int, n_images: int, meta_dim: int, device: torch.device,
                       random_bytes: bool, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """A :class:`metanet_utils.train.DeviceData` of ``n_images`` uint8 images on ``device``, and the times of
    decoding (JPEG -> Shades of Gray -> resize, in threads) and of the upload."""
    from metanet_utils.cache import load_image
    from metanet_utils.train import DeviceData

    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    if random_bytes or not paths:
        images = rng.integers(0, 256, size=(n_images, resize, resize, 3), dtype=np.uint8)
    else:
        images = np.empty((n_images, resize, resize, 3), dtype=np.uint8)

        def one(i: int) -> None:
            images[i] = load_image(paths[i % len(paths)], resize, color_constancy=True)

        with ThreadPoolExecutor(max_workers=cpu_count()) as ex:
            list(ex.map(one, range(n_images)))
    decode_s = time.perf_counter() - t0
    folds = np.ones(n_images, dtype=np.int64)  # every image in the training part (fold 0 is empty)
    with Timer(device) as up:
        data = DeviceData.build(images, rng.random((n_images, meta_dim), dtype=np.float32),
                                rng.integers(0, 7, size=n_images), folds, 0, [f"img{i}" for i in range(n_images)],
                                device)
    return data, {"images": n_images, "side": resize, "bytes": int(images.nbytes),
                  "random_bytes": bool(random_bytes or not paths), "decode_s": round(decode_s, 3),
                  "decode_img_s": round(n_images / max(decode_s, 1e-9), 1), "upload_s": round(up.seconds, 4),
                  "upload_gb_s": round(images.nbytes / 1e9 / max(up.seconds, 1e-9), 2)}


# --------------------------------------------------------------------------- projection of the paper's protocol

@functools.lru_cache(maxsize=1)
def paper_protocol_runs() -> dict[str, dict[str, int]]:
    """Runs per backbone of the paper profile: Table 1 only, and Tables 1, 3 and 4 together."""
    from types import SimpleNamespace

    from metanet_utils.config import Ablations, load_profile
    from metanet_utils.runs import enumerate_runs

    prof = load_profile("paper")
    ds = SimpleNamespace(kind="real", fingerprint="projection")
    out: dict[str, dict[str, int]] = {}
    for scope, p in (("table1", dataclasses.replace(prof, ablations=Ablations())), ("all", prof)):
        for r in enumerate_runs(p, ds):
            out.setdefault(r.backbone, {"table1": 0, "all": 0})[scope] += 1
    return out


def _first(rows: list[dict], bb: str, key: str, batch: int | None = None):
    return next((r[key] for r in rows if r["backbone"] == bb and r.get(key)
                 and (batch is None or r["batch"] == batch)), None)


def _seconds_per_run(rows: list[dict], bb: str, batch: int, pipeline: str) -> float | None:
    """One run of the protocol: epochs x (training + validation images at their rates)."""
    v = _first(rows, bb, f"{pipeline}_img_s", batch)
    if not v:
        return None
    ev = (_first(rows, bb, "eval_img_s") if pipeline == "kit" else None) or v * EVAL_SPEEDUP
    return PAPER_EPOCHS * (PAPER_TRAIN_IMAGES / v + PAPER_VAL_IMAGES / ev)


def project_paper_protocol(rows: list[dict[str, Any]], batch: int = 32,
                           side_by_side: dict[str, float] | None = None) -> dict[str, Any]:
    """Hours of the paper's protocol on this device from the measured img/s at ``batch``, one run at a time.

    The kit's evaluation speed is the measured ``eval_img_s`` where there is one, else ``EVAL_SPEEDUP`` x its
    training speed (the reference's always); ``side_by_side`` maps a backbone to a measured factor (several
    runs together / one run) dividing the kit's hours. Checkpoints and start-up are left out.
    """
    try:
        runs = paper_protocol_runs()
    except Exception as e:  # noqa: BLE001 - a projection must never break the benchmark
        return {"error": f"{type(e).__name__}: {e}"}
    out: dict[str, Any] = {"batch": batch, "epochs": PAPER_EPOCHS,
                           "train_images_per_fold": PAPER_TRAIN_IMAGES, "val_images_per_fold": PAPER_VAL_IMAGES,
                           "eval_speedup_assumed": EVAL_SPEEDUP, "side_by_side": dict(side_by_side or {}),
                           "backbones": {}, "runs_table1": sum(n["table1"] for n in runs.values()),
                           "runs_all": sum(n["all"] for n in runs.values())}
    totals: dict[str, list] = {}
    for bb, n in runs.items():
        entry = out["backbones"][bb] = {"runs_table1": n["table1"], "runs_all": n["all"], "kit_eval":
                                        "measured" if _first(rows, bb, "eval_img_s") else
                                        f"assumed {EVAL_SPEEDUP:g}x training"}
        for p in ("kit", "reference"):
            sec = _seconds_per_run(rows, bb, batch, p)
            factor = float((side_by_side or {}).get(bb, 1.0)) if p == "kit" else 1.0
            for scope in ("table1", "all"):
                h = None if sec is None else n[scope] * sec / factor / 3600.0
                entry[f"{p}_{scope}_hours"] = None if h is None else round(h, 2)
                totals.setdefault(f"{p}_{scope}_hours", []).append(h)
    out.update({k: None if None in hs else round(sum(hs), 1) for k, hs in totals.items()})
    return out


# --------------------------------------------------------------------------- report

def _fmt(v: Any, nd: int = 0) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:,.{nd}f}"


def _beside(r: dict[str, Any], key: str, ratio: str, runs: str | None = None) -> str:
    if not r.get(key):
        return "-"
    return f"{f'{r[runs]}: ' if runs else ''}{_fmt(r[key])} ({_fmt(r.get(ratio), 2)}x)"


def _table_md(report: dict[str, Any]) -> list[str]:
    s = report["settings"]
    lines = [f"# Training throughput: {report['device']}", "",
             f"{report['date']} · torch {report['torch']} · timm {report.get('timm')} · {s['workers']} DataLoader "
             f"workers · fusion {s['fusion']} · random weights", "",
             f"Images per second (forward + backward + SGD step), median of {s['repeats']} repeats after warm-up. "
             "`kit` is the kit's default training path (eager steps); `ceiling` the model alone with the kit's "
             "precision and layout; `eval` the kit's evaluation pass (batch 128). Beside it, the opt-in paths and "
             "their ratio to `kit`: `CUDA graphs` (`cuda_graphs: on`) and `runs together` (`runs_together: K`).", "",
             "| backbone | input | batch | reference | kit | ceiling | kit / reference | kit / ceiling | eval | "
             "CUDA graphs | runs together | notes |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in report["results"]:
        lines.append(f"| {r['backbone']} | {r['resize']}->{r['crop']} | {r['batch']} | {_fmt(r['reference_img_s'])} | "
                     f"{_fmt(r['kit_img_s'])} | {_fmt(r['ceiling_img_s'])} | {_fmt(r['ratio_vs_reference'], 2)} | "
                     f"{_fmt(r['fraction_of_ceiling'], 2)} | {_fmt(r['eval_img_s'])} | "
                     f"{_beside(r, 'kit_graphs_img_s', 'graphs_vs_kit')} | "
                     f"{_beside(r, 'together_img_s', 'together_vs_one_run', 'together_runs')} | {'; '.join(r['notes'])} |")
    return lines + ["", f"reference: PIL + torchvision transforms, DataLoader({s['workers']} workers, pin_memory), fp32, "
                    f"NCHW, cudnn.benchmark={s['reference_cudnn_benchmark']}, loss.item() every step; kit: "
                    f"device-resident uint8 cache + BatchAugment via train_one_epoch's loop, precision "
                    f"{report['kit_precision']}, channels_last where preferred, cudnn.benchmark=True.", ""]


def _cache_md(report: dict[str, Any]) -> list[str]:
    return ["## Image cache", "", "| side | images | MiB | decode img/s (threads) | upload s | upload GB/s |",
            "|---:|---:|---:|---:|---:|---:|"] + [
        f"| {c['side']} | {c['images']} | {c['bytes'] / 2**20:,.0f} | "
        f"{'random bytes' if c['random_bytes'] else _fmt(c['decode_img_s'])} | {c['upload_s']:.3f} | "
        f"{_fmt(c['upload_gb_s'], 1)} |" for c in report["caches"].values()] + [""]


def _projection_md(report: dict[str, Any]) -> list[str]:
    proj = report.get("projection")
    if not proj or "backbones" not in proj:
        return []
    lines = [f"## The paper's protocol on this device (projected from batch {proj['batch']})", "",
             f"{proj['epochs']} epochs x ({proj['train_images_per_fold']} training + {proj['val_images_per_fold']} "
             f"validation images) per run, one run at a time; the kit's evaluation as measured (`eval`), the "
             f"reference's assumed {proj['eval_speedup_assumed']:g}x its training.", "",
             "| backbone | runs Table 1 | runs Tables 1+3+4 | kit h (T1) | kit h (all) | reference h (all) |",
             "|---|---:|---:|---:|---:|---:|"]
    for bb, e in proj["backbones"].items():
        lines.append(f"| {bb} | {e['runs_table1']} | {e['runs_all']} | {_fmt(e['kit_table1_hours'], 1)} | "
                     f"{_fmt(e['kit_all_hours'], 1)} | {_fmt(e['reference_all_hours'], 1)} |")
    lines += [f"| **total** | {proj['runs_table1']} | {proj['runs_all']} | {_fmt(proj['kit_table1_hours'], 1)} | "
              f"{_fmt(proj['kit_all_hours'], 1)} | {_fmt(proj['reference_all_hours'], 1)} |", ""]
    pt = report.get("projection_together")
    if pt and "backbones" in pt:
        fac = ", ".join(f"{b} {f:.2f}x" for b, f in pt["side_by_side"].items())
        lines += [f"With runs trained together where that measured faster ({fac}): kit {_fmt(pt['kit_all_hours'], 1)} h "
                  f"for Tables 1+3+4, {_fmt(pt['kit_table1_hours'], 1)} h for Table 1.", ""]
    return lines


def markdown(report: dict[str, Any]) -> str:
    return "\n".join(_table_md(report) + _cache_md(report) + _projection_md(report)) + "\n"


# --------------------------------------------------------------------------- the run

class Bench:
    """One benchmark run: its settings, the models and image caches built once, and the report, saved after
    every measurement."""

    def __init__(self, args: argparse.Namespace, paths: list[Path]) -> None:
        from metanet_utils.train import autocast_dtype, pick_device

        self.args, self.paths, self.t0 = args, paths, time.monotonic()
        self.device = pick_device(args.device)
        self.amp = autocast_dtype("auto", self.device)
        self.graphs = args.cuda_graphs == "on" and self.device.type == "cuda"
        self.models: dict[str, nn.Module] = {}
        self.caches: dict[int, Any] = {}
        self.n_cache = min(args.max_images, len(paths)) if paths and not args.random_cache else args.max_images
        workers = args.workers if args.workers is not None else cpu_count()
        self.settings = Settings(self.device, args.warmup_steps, args.warmup_seconds, args.repeats, args.max_seconds,
                                 args.min_steps, args.max_steps, workers)
        self.report: dict[str, Any] = {
            "device": device_name(self.device), "device_type": self.device.type, "torch": torch.__version__,
            "timm": version("timm"), "torchvision": version("torchvision"), "python": platform.python_version(),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "kit_precision": str(self.amp).replace("torch.", "") if self.amp else "float32", "kit_execution": "eager",
            "settings": {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                         "workers": workers, "cores": cpu_count(), "n_jpegs": len(paths), "cache_images": self.n_cache,
                         "cuda_graphs_measured": self.graphs, "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
                         "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32), "pretrained": False,
                         "timing": "cuda events" if self.device.type == "cuda" else "perf_counter",
                         "flush_denormal": self.device.type == "cpu"},
            "results": [], "caches": {}}

    def left(self) -> float:
        return float("inf") if self.args.deadline is None else self.args.deadline - (time.monotonic() - self.t0)

    def spec(self, bb: str) -> tuple[int, int, tuple, tuple]:
        from metanet_utils.models import input_spec

        spec = input_spec(bb)
        return self.args.size or spec.resize, self.args.crop or spec.crop, tuple(spec.mean), tuple(spec.std)

    def model(self, bb: str, channels_last: bool) -> nn.Module:
        """``bb``'s model (built once) on the device in the asked layout, the previous one back on the CPU;
        seeds and ``cudnn.benchmark=True`` as ``train_run`` sets them."""
        from metanet_utils.models import build_model
        from metanet_utils.train import set_determinism

        if bb not in self.models:
            torch.manual_seed(self.args.seed)
            self.models[bb] = build_model(bb, self.args.fusion, num_classes=7, meta_dim=self.args.meta_dim,
                                          pretrained=False)
        for other, m in self.models.items():
            if other != bb:
                m.to("cpu")
        set_determinism(self.args.seed, False)
        layout = torch.channels_last if channels_last else torch.contiguous_format
        return self.models[bb].to(self.device).to(memory_format=layout)

    def cache(self, resize: int):
        if resize not in self.caches:
            self.caches[resize], info = build_device_cache(self.paths, resize, self.n_cache, self.args.meta_dim,
                                                           self.device, self.args.random_cache, self.args.seed)
            self.report["caches"][str(resize)] = info
            log(f"kit cache: {self.n_cache} images at {resize} px: decoded in {info['decode_s']:.1f} s, "
                f"uploaded in {info['upload_s']:.3f} s")
        return self.caches[resize]

    def criterion(self) -> nn.Module:
        from metanet_utils.train import class_weight_tensor

        return nn.CrossEntropyLoss(weight=class_weight_tensor(np.arange(7).repeat(10)).to(self.device))

    def kit(self, bb: str, batch: int, amp_dtype, channels_last: bool, graphs: bool = False, k: int = 1):
        """The kit's training path for ``bb`` (``k`` runs together when ``k > 1``)."""
        from metanet_utils.augment import BatchAugment
        from metanet_utils.config import RunConfig

        resize, crop, mean, std = self.spec(bb)
        model = self.model(bb, channels_last)
        cfg = RunConfig(backbone=bb, fusion=self.args.fusion, batch_size=batch, image_size=resize, crop_size=crop,
                        pretrained=False, seed=self.args.seed)
        models = [model] + [copy.deepcopy(model) for _ in range(k - 1)]
        return measure_kit(models, self.cache(resize), BatchAugment(crop=crop, mean=mean, std=std), cfg,
                           self.criterion(), self.settings, amp_dtype, channels_last, cuda_graph=graphs)

    def save(self) -> None:
        rep, a = self.report, self.args
        rep["elapsed_s"] = round(time.monotonic() - self.t0, 1)
        if set(PAPER_BACKBONES) <= set(a.backbones) and 32 in a.batches:
            rep["projection"] = project_paper_protocol(rep["results"], 32)
            factors = {r["backbone"]: r["together_vs_one_run"] for r in rep["results"]
                       if r["batch"] == 32 and (r.get("together_vs_one_run") or 0) > 1}
            if factors:
                rep["projection_together"] = project_paper_protocol(rep["results"], 32, side_by_side=factors)
        atomic_write_text(a.json, json.dumps(rep, indent=2, default=str) + "\n")
        atomic_write_text(a.md, markdown(rep))

    def new_row(self, bb: str, batch: int) -> dict[str, Any]:
        from metanet_utils.models import channels_last_preferred

        resize, crop, _, _ = self.spec(bb)
        row = {"backbone": bb, "batch": batch, "resize": resize, "crop": crop,
               "channels_last": self.device.type == "cuda" and channels_last_preferred(bb),
               "kit_precision": self.report["kit_precision"], "kit_execution": "eager",
               "together_runs": self.args.together if self.args.together > 1 else None, "details": {}, "notes": []}
        row.update(dict.fromkeys(["reference_img_s", "kit_img_s", "ceiling_img_s", "eval_img_s", "kit_graphs_img_s",
                                  "together_img_s", "ratio_vs_reference", "fraction_of_ceiling", "graphs_vs_kit",
                                  "together_vs_one_run"]))
        self.report["results"].append(row)
        return row

    def measure(self, row: dict[str, Any], name: str, fn: Callable[[], dict[str, Any]]) -> None:
        """``fn()`` into ``row[name + "_img_s"]`` and its details (a failure into the row's notes), then the
        row's ratios, and the report written."""
        what = f"{row['backbone']} b{row['batch']} {name}"
        if self.left() <= 0:
            row["notes"].append(f"{name} skipped (time budget)")
            log(f"{what}: skipped (deadline)")
            return self.save()
        t = time.perf_counter()
        try:
            res = fn()
            row[f"{name}_img_s"], row["details"][name] = round(res["img_s"], 1), res
            ex = res.get("execution") or {}
            failure = (ex[0] if isinstance(ex, list) else ex).get("cuda_graphs_failure")
            if failure:
                row["notes"].append(f"{name}: CUDA graph failed, eager ({failure[:120]})")
            log(f"{what}: {res['img_s']:.1f} img/s (repeats {res['repeats_img_s']}, {res['steps_per_repeat']} steps "
                f"each, {time.perf_counter() - t:.1f} s)")
        except Exception as e:  # noqa: BLE001 - one failing measurement must not stop the table
            msg = "out of memory" if is_oom(e) else f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            row["notes"].append(f"{name}: {msg}")
            log(f"{what}: FAILED {msg}")
        finally:
            free_memory(self.device)
        _ratios(row)
        self.save()


def _ratios(row: dict[str, Any]) -> None:
    k = row["kit_img_s"]
    for key, num, den in (("ratio_vs_reference", k, row["reference_img_s"]), ("fraction_of_ceiling", k,
                          row["ceiling_img_s"]), ("graphs_vs_kit", row["kit_graphs_img_s"], k),
                          ("together_vs_one_run", row["together_img_s"], k)):
        row[key] = round(num / den, 3) if num and den else None


def fill_row(bench: Bench, row: dict[str, Any], names: list[str]) -> None:
    """The measurements ``names`` of one row (backbone, batch), in that order."""
    a, bb, b, cl, amp, s = bench.args, row["backbone"], row["batch"], row["channels_last"], bench.amp, bench.settings
    resize, crop, mean, std = bench.spec(bb)

    def reference() -> dict[str, Any]:
        model = bench.model(bb, channels_last=False)
        torch.backends.cudnn.benchmark = a.reference_cudnn_benchmark
        g = torch.Generator().manual_seed(a.seed)
        ds = JpegDataset(bench.paths, reference_transform(resize, crop, mean, std),
                         torch.rand(len(bench.paths), a.meta_dim, generator=g),
                         torch.randint(0, 7, (len(bench.paths),), generator=g))
        return measure_reference(model, ds, b, crop, bench.criterion(), s)

    def evaluate() -> dict[str, Any]:
        from metanet_utils.augment import BatchAugment

        return measure_eval(bench.model(bb, cl), bench.cache(resize), BatchAugment(crop=crop, mean=mean, std=std), s,
                            amp, cl)

    runs = {"kit": lambda: bench.kit(bb, b, amp, cl), "kit_graphs": lambda: bench.kit(bb, b, amp, cl, graphs=True),
            "together": lambda: bench.kit(bb, b, amp, cl, k=a.together), "eval": evaluate, "reference": reference,
            "ceiling": lambda: measure_ceiling(bench.model(bb, cl), b, crop, a.meta_dim, bench.criterion(), s, amp, cl)}
    for name in names:
        bench.measure(row, name, runs[name])


def run_table(bench: Bench) -> None:
    """Rows filled in passes, most needed first (the first call of a model on a GPU autotunes cuDNN for every
    convolution shape, up to a minute): kit, ceiling and reference at the first batch size for every
    backbone; then the opt-in paths and the evaluation there; then the other batch sizes."""
    a = bench.args
    caps = {**DEFAULT_BATCH_CAPS, **dict((k, int(v)) for k, v in (c.split("=", 1) for c in a.batch_cap))}
    plan = list(dict.fromkeys((bb, min(b, caps.get(bb, b))) for b in a.batches for bb in a.backbones))
    rows = {key: bench.new_row(*key) for key in plan}
    first = [key for key in plan if key[1] == min(a.batches[0], caps.get(key[0], a.batches[0]))]
    main = [p for p in ("kit", "ceiling", "reference") if p in a.pipelines]
    opt_in = ["kit_graphs"] if bench.graphs else []
    more = opt_in + (["together"] if a.together > 1 else []) + (["eval"] if a.eval == "on" else [])
    for names, keys in ((main, first), (more if "kit" in a.pipelines else [], first),
                        (main + (opt_in if "kit" in a.pipelines else []), [k for k in plan if k not in first])):
        for key in keys:
            fill_row(bench, rows[key], names)


# --------------------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add = ap.add_argument
    add("--backbones", nargs="+", default=list(PAPER_BACKBONES))
    add("--batches", nargs="+", type=int, default=[32, 128], help="batch sizes (default: 32, the paper's, and 128)")
    add("--batch-cap", nargs="*", default=[], metavar="BACKBONE=N",
        help="largest batch per backbone (default: senet154=64 pnasnet5large=64)")
    add("--size", type=int, default=None, help="resize side for every backbone (default: the backbone's, 300/441)")
    add("--crop", type=int, default=None, help="crop side for every backbone (default: 224/331)")
    add("--images", type=Path, default=None, help="folder of JPEG files (or a data folder with images/); default: "
        "$METANET_DATA_DIR, then ../shared/ham10000")
    add("--max-images", type=int, default=2000, help="images used (reference files and kit cache)")
    add("--random-cache", action="store_true", help="a kit cache of random bytes instead of decoded images")
    add("--pipelines", nargs="+", default=list(PIPELINES), choices=PIPELINES)
    add("--cuda-graphs", default="off", choices=["off", "on"],
        help="on: also measure the kit with its steps replayed from CUDA graphs (opt-in path; GPU only)")
    add("--together", type=int, default=1, metavar="K",
        help="also measure K runs trained together in one process (opt-in path; 1: not measured)")
    add("--eval", default="on", choices=["on", "off"], help="measure the kit's evaluation pass")
    add("--fusion", default="metanet", choices=["none", "concat", "metanet"])
    add("--meta-dim", type=int, default=17)
    add("--device", default=None, help="cuda, cpu, ... (default: the GPU if there is one)")
    add("--workers", type=int, default=None, help="DataLoader workers (default: one per core)")
    add("--warmup-steps", type=int, default=5)
    add("--warmup-seconds", type=float, default=1.0, help="minimum warm-up time per measurement")
    add("--repeats", type=int, default=3)
    add("--max-seconds", type=float, default=3.0, help="timed budget of one measurement (all its repeats)")
    add("--min-steps", type=int, default=2, help="least steps per repeat")
    add("--max-steps", type=int, default=400, help="most steps per repeat")
    add("--deadline", type=float, default=None, help="soft budget in seconds: later measurements are skipped")
    add("--reference-cudnn-benchmark", action="store_true", help="cudnn.benchmark=True for the reference too")
    add("--seed", type=int, default=0)
    add("--no-print", action="store_true", help="do not print the Markdown table at the end")
    add("--json", type=Path, default=_ROOT / "results" / "bench" / "throughput.json")
    add("--md", type=Path, default=_ROOT / "results" / "bench" / "throughput.md")
    return ap


def jpeg_paths(args: argparse.Namespace) -> list[Path] | None:
    """The JPEG files the reference reads and the kit caches (``--max-images`` of them, drawn with the seed)."""
    env = os.environ.get("METANET_DATA_DIR")
    folder = args.images or next((c for c in [*([Path(env)] if env else []), _ROOT.parent / "shared" / "ham10000"]
                                  if c.is_dir()), None)
    if folder is not None and not Path(folder).is_dir():
        print(f"error: --images {folder} does not exist", file=sys.stderr)
        return None
    paths = find_jpegs(Path(folder)) if folder is not None else []
    if not paths and "reference" in args.pipelines:
        print("error: the reference pipeline needs JPEG files: give --images FOLDER (e.g. ../shared/ham10000), "
              "or --pipelines kit ceiling --random-cache", file=sys.stderr)
        return None
    if args.max_images and len(paths) > args.max_images:
        pick = np.random.default_rng(args.seed).choice(len(paths), size=args.max_images, replace=False)
        paths = [paths[i] for i in sorted(pick)]
    return paths


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    paths = jpeg_paths(args)
    if paths is None:
        return 2
    bench = Bench(args, paths)
    if bench.device.type == "cpu":  # random-label training reaches denormal floats, up to 100x slower on x86
        torch.set_flush_denormal(True)
    log(f"device {bench.report['device']}, torch {torch.__version__}, {bench.settings.workers} loader workers, "
        f"{len(paths)} JPEGs, deadline {args.deadline}")
    run_table(bench)
    bench.save()
    log(f"done in {time.monotonic() - bench.t0:.0f} s: {args.json}, {args.md}")
    if not args.no_print:
        print(markdown(bench.report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
