#!/usr/bin/env python3
"""Training throughput: the kit's pipeline against a plain torchvision DataLoader pipeline.

For each backbone (the paper's six by default, at the paper's resolution: resize 300 -> crop 224,
PNASNet 441 -> 331) and each batch size, training images per second (forward + backward + SGD
step, ``metanet`` fusion, random weights) for three pipelines on the same device:

``reference``  what a user would otherwise run (the authors' way): JPEG files decoded by PIL and
               augmented by torchvision transforms in a ``torch.utils.data.DataLoader`` with one
               worker per core and ``pin_memory``; fp32, NCHW; ``loss.item()`` every step.
``kit``        the kit's code path: the uint8 image cache resident on the device, batched
               augmentation on the device (:class:`metanet_utils.augment.BatchAugment`), bf16
               autocast on a GPU, channels_last where the backbone prefers it. Measured by calling
               :func:`metanet_utils.train.train_one_epoch` itself, the function every training run uses.
``ceiling``    the same model, batch, precision and memory layout on a random tensor already on
               the device: what the model alone can do (no data pipeline at all).

Method: per measurement, a first untimed call (cuDNN autotuning, DataLoader workers starting),
a warm-up, then ``--repeats`` timed repeats; the reported number is the median over the repeats.
Timing uses CUDA events on a GPU (with a synchronize before each repeat) and ``perf_counter`` on
the CPU. Repeats of the reference pipeline span whole rounds of the DataLoader's workers when
the loader is the bottleneck (see ``bench/README.md``).

Outputs a Markdown table (``--md``) and a JSON file (``--json``, rewritten after every
measurement so an interrupted run keeps what it measured).

Examples:
    # the paper's six backbones on a GPU (about 4 minutes on an H100)
    python bench/throughput.py --images ../shared/ham10000 --deadline 230
    # CI / CPU smoke: tiny models
    python bench/throughput.py --backbones test_resnet resnet10t --size 64 --crop 56 --batches 8 \\
        --images ../shared/ham10000 --max-seconds 0.5
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
from pathlib import Path
from typing import Any, Callable

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

PAPER_BACKBONES = ("alexnet", "vgg19", "resnet50", "densenet161", "senet154", "pnasnet5large")
DEFAULT_BATCH_CAPS = {"senet154": 64, "pnasnet5large": 64}
PIPELINES = ("reference", "kit", "ceiling")
#: Training images per fold and validation images per fold of the paper's protocol (10015 images, 5 folds).
PAPER_TRAIN_IMAGES, PAPER_VAL_IMAGES, PAPER_EPOCHS = 8012, 2003, 250
#: Evaluation (forward only) is assumed to run this many times faster than training per image.
EVAL_SPEEDUP = 3.0


# --------------------------------------------------------------------------- small helpers

def cpu_count() -> int:
    """Cores this process may use: CPU affinity and the cgroup CPU quota of a container both count
    (``os.cpu_count()`` can report the whole host)."""
    if hasattr(os, "sched_getaffinity"):
        n = len(os.sched_getaffinity(0))
    else:
        n = os.cpu_count() or 1
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


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """Wall time of a block: CUDA events on a GPU (after a synchronize), perf_counter on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = float("nan")

    def __enter__(self) -> "Timer":
        sync(self.device)
        if self.device.type == "cuda":
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)
            self._start.record()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            self._end.record()
            sync(self.device)
            self.seconds = self._start.elapsed_time(self._end) / 1000.0
        else:
            self.seconds = time.perf_counter() - self._t0


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def find_jpegs(folder: Path) -> list[Path]:
    """``ISIC_*.jpg`` (or any ``*.jpg``) in ``folder``, ``folder/images`` or below."""
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
        self.paths = [str(p) for p in paths]
        self.transform = transform
        self.meta = meta
        self.labels = labels

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

    return T.Compose([
        T.Resize((resize, resize)),
        T.RandomCrop(crop),
        T.RandomHorizontalFlip(),
        T.RandomVerticalFlip(),
        T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
        T.RandomRotation(30),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def make_loader(dataset: torch.utils.data.Dataset, batch: int, workers: int, device: torch.device):
    import multiprocessing as mp

    sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=10**9)
    kw: dict[str, Any] = {}
    if workers > 0:
        # fork: workers start in milliseconds (the default of Python <= 3.13 on Linux; 3.14 switched to forkserver)
        if "fork" in mp.get_all_start_methods():
            kw["multiprocessing_context"] = "fork"
    return torch.utils.data.DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers,
                                       pin_memory=device.type == "cuda", drop_last=True, **kw)


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
    reference_cudnn_benchmark: bool


def _result(img_s: list[float], batch: int, n: int, **extra: Any) -> dict[str, Any]:
    return {"img_s": statistics.median(img_s), "repeats_img_s": [round(v, 2) for v in img_s],
            "steps_per_repeat": n, "batch": batch, **extra}


def measure_kit(model: nn.Module, data, augment, cfg, criterion: nn.Module, s: Settings, amp_dtype,
                channels_last: bool, cuda_graph: bool = False) -> dict[str, Any]:
    """The kit's path: :func:`metanet_utils.train.train_one_epoch` over ``n`` batches per call, with one
    :class:`metanet_utils.step.TrainStep` for all calls (eager, or captured once and replayed)."""
    from metanet_utils.step import TrainStep
    from metanet_utils.train import make_optimizer, train_one_epoch

    dev, bs = s.device, cfg.batch_size
    optimizer = make_optimizer(model, cfg)
    step = TrainStep(model, criterion, optimizer, bs, amp_dtype, cuda_graph=cuda_graph)
    epoch = [0]

    def run(n: int) -> float:
        d = _first_n_batches(data, n * bs)
        with Timer(dev) as t:
            train_one_epoch(model, d, augment, criterion, optimizer, cfg, epoch[0], dev, amp_dtype, channels_last,
                            step=step)
        epoch[0] += 1
        return t.seconds

    return _timed_steps(run, bs, s, [step])


def _first_n_batches(data, n_images: int):
    """``data`` with a training order of ``n_images`` cache indices (cycling through the cache)."""
    return dataclasses.replace(data, train_idx=torch.arange(n_images, device=data.meta.device) % data.images.shape[0])


def _timed_steps(run, batch: int, s: "Settings", steps: list) -> dict[str, Any]:
    """:func:`_timed_repeats` of ``run``, with what the steps ran (``execution``); their gradients freed after."""
    try:
        res = _timed_repeats(run, batch, s)
        ex = [st.describe() for st in steps]
        res["execution"] = ex[0] if len(ex) == 1 else ex
        return res
    finally:
        for st in steps:
            st.optimizer.zero_grad(set_to_none=True)


def _timed_repeats(run, batch: int, s: "Settings") -> dict[str, Any]:
    """``run(n)`` times n steps: one untimed first call, warm-up, then the median of ``s.repeats`` timed calls."""
    first = run(2)
    last = warm = run(s.warmup_steps)
    while warm < s.warmup_seconds:
        last = run(s.warmup_steps)
        warm += last
    n = steps_for(s.max_seconds / s.repeats, last / s.warmup_steps, s.min_steps, s.max_steps)
    times = [run(n) for _ in range(s.repeats)]
    return _result([n * batch / t for t in times], batch, n, first_call_s=round(first, 3))


def _train_step(model, x, meta, y, criterion, optimizer, device, amp_dtype) -> torch.Tensor:
    """The reference's step, written the plain way (a user's training loop)."""
    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        logits = model(x, meta)
        loss = criterion(logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss


def measure_ceiling(model: nn.Module, batch: int, crop: int, meta_dim: int, criterion: nn.Module, s: Settings,
                    amp_dtype, channels_last: bool, cuda_graph: bool = False, lr: float = 1e-3) -> dict[str, Any]:
    """Model only: a random batch already on the device, same precision, layout and step execution
    (eager or CUDA graph) as the kit."""
    from metanet_utils.step import TrainStep

    dev = s.device
    g = torch.Generator(device="cpu").manual_seed(1)
    x = torch.randn(batch, 3, crop, crop, generator=g).to(dev)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    meta = torch.rand(batch, meta_dim, generator=g).to(dev)
    y = torch.randint(0, 7, (batch,), generator=g).to(dev)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    step = TrainStep(model, criterion, optimizer, batch, amp_dtype, cuda_graph=cuda_graph)
    model.train()

    def run(n: int) -> float:
        with Timer(dev) as t:
            for _ in range(n):
                step(x, meta, y)
        return t.seconds

    return _timed_steps(run, batch, s, [step])


def measure_together(models: list[nn.Module], data, augment, cfg, criterion: nn.Module, s: Settings, amp_dtype,
                     channels_last: bool, cuda_graph: bool = True) -> dict[str, Any]:
    """Several runs trained together the way :func:`metanet_utils.train.train_runs_together` does: one
    model, optimizer, CUDA-graph step and CUDA stream per run, one shared image cache, their batches
    interleaved through :func:`metanet_utils.train.iter_train_epoch`. The img/s is the sum over the runs."""
    from metanet_utils.step import TrainStep
    from metanet_utils.train import EpochIter, iter_train_epoch, make_optimizer, run_interleaved

    dev, bs = s.device, cfg.batch_size
    opts = [make_optimizer(m, cfg) for m in models]
    steps = [TrainStep(m, criterion, o, bs, amp_dtype, cuda_graph=cuda_graph and dev.type == "cuda")
             for m, o in zip(models, opts)]
    streams = [torch.cuda.Stream(dev) if dev.type == "cuda" else None for _ in models]
    epoch = [0]

    def run(n: int) -> float:
        d = _first_n_batches(data, n * bs)
        with Timer(dev) as t:  # one batch of each run in turn, as train_runs_together interleaves them
            run_interleaved([EpochIter(iter_train_epoch(m, d, augment, criterion, o, cfg, epoch[0], dev, amp_dtype,
                                                        channels_last, step=st), stream)
                             for m, o, st, stream in zip(models, opts, steps, streams)], dev)
        epoch[0] += 1
        return t.seconds

    res = _timed_steps(run, bs * len(models), s, steps)
    res["runs"] = len(models)
    return res


def measure_checkpoint(model: nn.Module, repeats: int = 2) -> dict[str, Any]:
    """One checkpoint written the kit's way (model and SGD momentum state, atomic write with fsync, as
    ``train_run`` writes it every epoch or interval); median seconds of ``repeats`` writes."""
    import tempfile

    from metanet_utils.train import _save_checkpoint

    params = [p for p in model.parameters() if p.requires_grad]
    state = {"model": model.state_dict(),
             "optimizer": {"state": {i: {"momentum_buffer": torch.zeros_like(p)} for i, p in enumerate(params)},
                           "param_groups": [{"params": list(range(len(params)))}]}}
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "checkpoint.pt"
        for _ in range(repeats):
            t0 = time.perf_counter()
            _save_checkpoint(path, state)
            times.append(time.perf_counter() - t0)
        size = path.stat().st_size
    del state
    return {"checkpoint_s": round(statistics.median(times), 3), "checkpoint_mb": round(size / 2**20, 1),
            "repeats_s": [round(t, 3) for t in times]}


def measure_eval(model: nn.Module, data, augment, s: Settings, amp_dtype, channels_last: bool,
                 batch: int = 128) -> dict[str, Any]:
    """The kit's evaluation pass (:func:`metanet_utils.train.evaluate_model`: centre crop, no gradients,
    softmax to the host), ``n`` batches of ``batch`` images per call."""
    from metanet_utils.train import evaluate_model

    n_cache = int(data.images.shape[0])

    def run(n: int) -> float:
        d = dataclasses.replace(data, val_idx=torch.arange(n * batch, device=data.meta.device) % n_cache)
        with Timer(s.device) as t:
            evaluate_model(model, d, augment, s.device, amp_dtype, channels_last, batch_size=batch)
        return t.seconds

    res = _timed_repeats(run, batch, dataclasses.replace(s, warmup_steps=2, min_steps=1, max_steps=64))
    model.train()
    return res


def measure_reference(model: nn.Module, dataset: JpegDataset, batch: int, crop: int, criterion: nn.Module,
                      s: Settings, lr: float = 1e-3) -> dict[str, Any]:
    """PIL + torchvision transforms in a DataLoader, fp32, NCHW, ``loss.item()`` every step.

    The model is first warmed up on a random batch (so the loader's start does not overlap cuDNN
    set-up and fill its prefetch queue). When the loader is (or may be) the bottleneck, a repeat is
    one whole round of the workers (``workers`` batches): batches arrive in rounds, and the time
    between the ends of two rounds is the loader's true period whatever the workers' phases.
    """
    dev = s.device
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    g = torch.Generator(device="cpu").manual_seed(2)
    xr = torch.randn(batch, 3, crop, crop, generator=g).to(dev)
    mr = torch.rand(batch, dataset.meta.shape[1], generator=g).to(dev)
    yr = torch.randint(0, 7, (batch,), generator=g).to(dev)
    it = None
    try:
        with Timer(dev) as t_first_model:
            for _ in range(2):
                _train_step(model, xr, mr, yr, criterion, optimizer, dev, None).item()
        with Timer(dev) as t_model:
            for _ in range(max(2, s.min_steps)):
                _train_step(model, xr, mr, yr, criterion, optimizer, dev, None).item()
        model_step_s = t_model.seconds / max(2, s.min_steps)
        del xr, mr, yr

        loader = make_loader(dataset, batch, s.workers, dev)
        t0 = time.perf_counter()
        it = iter(loader)

        def step() -> None:
            x, meta, y = next(it)
            x = x.to(dev, non_blocking=True)
            meta = meta.to(dev, non_blocking=True)
            y = y.to(dev, non_blocking=True)
            _train_step(model, x, meta, y, criterion, optimizer, dev, None).item()

        step()
        first_batch_s = time.perf_counter() - t0
        round_n = max(1, s.workers)
        # Is the loader (possibly) the bottleneck? first_batch_s (start-up + one worker making one batch)
        # gives a lower bound of the loader's rate.
        loader_img_s_est = round_n * batch / max(first_batch_s, 1e-9)
        model_img_s = batch / max(model_step_s, 1e-9)
        loader_bound = loader_img_s_est < 1.5 * model_img_s
        # warm-up: when the loader may be the bottleneck, the rest of the first round of workers (their
        # first batches arrive together, a burst that must not be timed); else the usual warm-up steps
        warm_steps = max(s.warmup_steps, round_n if loader_bound else 0) - 1
        with Timer(dev) as t_warm:
            for _ in range(warm_steps):
                step()
        budget_per_repeat = s.max_seconds / s.repeats
        per_step = max(model_step_s, t_warm.seconds / warm_steps) if warm_steps > 0 else model_step_s
        n_time = steps_for(budget_per_repeat, per_step, s.min_steps, s.max_steps)
        if loader_bound and round_n * model_step_s <= 3 * budget_per_repeat:
            n, mode = round_n * max(1, round(n_time / round_n)), "worker rounds"
        else:
            n, mode = n_time, "time"
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
    return _result(img_s, batch, n, first_batch_s=round(first_batch_s, 3), first_call_s=round(t_first_model.seconds, 3),
                   model_only_fp32_img_s=round(model_img_s, 1), repeat_mode=mode,
                   bottleneck="loader" if statistics.median(img_s) < 0.8 * model_img_s else "model")


# --------------------------------------------------------------------------- arithmetic

def forward_gflop_per_image(model: nn.Module, crop: int, meta_dim: int, device: torch.device) -> float:
    """Forward GFLOP per image (2 per multiply-add) counted by ``torch.utils.flop_counter`` on one image.

    A training step is taken as 3x the forward (forward + the two products of the backward), the usual
    estimate; the counter's own backward count is not used (it overcounts grouped and depthwise
    convolutions, e.g. 5x the forward for SENet154 and 14x for PNASNet).
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    x = torch.randn(1, 3, crop, crop, device=device)
    meta = torch.rand(1, meta_dim, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x, meta)
    model.train(was_training)
    return fc.get_total_flops() / 1e9


def measure_matmul_tflop_s(device: torch.device, n: int = 8192, reps: int = 10) -> float | None:
    """bf16 n x n x n matrix product on random data: the device's usable dense peak (GPU only)."""
    if device.type != "cuda":
        return None
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        with Timer(device) as t:
            a @ b
        times.append(t.seconds)
    del a, b
    return 2 * n**3 / statistics.median(times) / 1e12


# --------------------------------------------------------------------------- caches

def build_device_cache(paths: list[Path], resize: int, n_images: int, meta_dim: int, device: torch.device,
                       synthetic: bool, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """A :class:`metanet_utils.train.DeviceData` holding ``n_images`` uint8 images on ``device``, and the
    times of decoding (JPEG -> Shades of Gray -> resize, in threads) and of the upload to the device."""
    from metanet_utils.train import DeviceData

    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    if synthetic or not paths:
        images = rng.integers(0, 256, size=(n_images, resize, resize, 3), dtype=np.uint8)
    else:
        from metanet_utils.cache import load_image

        chosen = [paths[i % len(paths)] for i in range(n_images)]
        images = np.empty((n_images, resize, resize, 3), dtype=np.uint8)

        def one(i: int) -> None:
            images[i] = load_image(chosen[i], resize, color_constancy=True)

        with ThreadPoolExecutor(max_workers=cpu_count()) as ex:
            list(ex.map(one, range(n_images)))
    decode_s = time.perf_counter() - t0
    meta = rng.random((n_images, meta_dim), dtype=np.float32)
    labels = rng.integers(0, 7, size=n_images)
    folds = np.ones(n_images, dtype=np.int64)  # every image in the training part (fold 0 is empty)
    sync(device)
    t1 = time.perf_counter()
    data = DeviceData.build(images, meta, labels, folds, 0, [f"img{i}" for i in range(n_images)], device)
    sync(device)
    upload_s = time.perf_counter() - t1
    info = {"images": n_images, "side": resize, "bytes": int(images.nbytes), "synthetic": bool(synthetic or not paths),
            "decode_s": round(decode_s, 3), "decode_img_s": round(n_images / max(decode_s, 1e-9), 1),
            "upload_s": round(upload_s, 4), "upload_gb_s": round(images.nbytes / 1e9 / max(upload_s, 1e-9), 2)}
    return data, info


# --------------------------------------------------------------------------- projection of the paper's protocol

@functools.lru_cache(maxsize=1)
def paper_protocol_runs() -> dict[str, dict[str, int]]:
    """Runs per backbone of the paper profile: Table 1 only, and Tables 1, 3 and 4 together."""
    from types import SimpleNamespace

    from metanet_utils.config import Ablations, load_profile
    from metanet_utils.grid import enumerate_runs

    prof = load_profile("paper")
    ds = SimpleNamespace(kind="real", fingerprint="projection")
    out: dict[str, dict[str, int]] = {}
    t1 = enumerate_runs(dataclasses.replace(prof, ablations=Ablations()), ds)
    for r in t1:
        out.setdefault(r.backbone, {"table1": 0, "all": 0})["table1"] += 1
    for r in enumerate_runs(prof, ds):
        out.setdefault(r.backbone, {"table1": 0, "all": 0})["all"] += 1
    return out


def project_paper_protocol(rows: list[dict[str, Any]], batch: int = 32,
                           side_by_side: dict[str, float] | None = None,
                           peak_tflop_s: float | None = None) -> dict[str, Any] | None:
    """Hours of the paper's protocol on this device from the measured img/s at ``batch``.

    Per run: ``PAPER_EPOCHS x (training images / training img/s + validation images / evaluation img/s)``.
    The kit's evaluation speed is the measured ``eval_img_s`` where the row has one, else
    ``EVAL_SPEEDUP`` x its training speed; the reference's is always assumed (``EVAL_SPEEDUP`` x).
    Where a row has ``checkpoint_s`` (one checkpoint written the kit's way), the kit's checkpoints are
    added: every epoch, or with the paper profile's ``checkpoint_interval_s`` about one per interval.
    ``side_by_side`` maps a backbone to a measured factor (aggregate img/s of several runs at once /
    one run alone) that divides the kit's hours; backbones without one keep factor 1.
    Where the rows carry ``fwd_gflop_per_img``, the protocol's arithmetic (PFLOP) is added, and with
    ``peak_tflop_s`` (a measured dense bf16 matrix-product rate) the hours it would take at that rate:
    a lower bound no pipeline can beat on this device.
    """
    try:
        runs = paper_protocol_runs()
    except Exception as e:  # noqa: BLE001 - a projection must never break the benchmark
        return {"error": f"{type(e).__name__}: {e}"}
    try:
        from metanet_utils.config import load_profile

        interval = float(load_profile("paper").checkpoint_interval_s)
    except Exception:  # noqa: BLE001
        interval = 0.0
    out: dict[str, Any] = {"checkpoint_interval_s": interval,
                           "batch": batch, "epochs": PAPER_EPOCHS, "train_images_per_fold": PAPER_TRAIN_IMAGES,
                           "val_images_per_fold": PAPER_VAL_IMAGES, "eval_speedup_assumed": EVAL_SPEEDUP,
                           "side_by_side": dict(side_by_side or {}), "backbones": {}}
    totals = {f"{p}_{scope}": 0.0 for p in ("kit", "reference") for scope in ("table1", "all")}
    complete = {k: True for k in totals}
    for bb, n in runs.items():
        row = next((r for r in rows if r["backbone"] == bb and r["batch"] == batch), None)
        entry: dict[str, Any] = {"runs_table1": n["table1"], "runs_all": n["all"]}
        for p in ("kit", "reference"):
            v = row.get(f"{p}_img_s") if row else None
            measured_eval = next((r["eval_img_s"] for r in rows if r["backbone"] == bb and r.get("eval_img_s")), None)
            ckpt_s = next((r["checkpoint_s"] for r in rows if r["backbone"] == bb and r.get("checkpoint_s")), None)
            ev = (measured_eval if p == "kit" else None) or (v * EVAL_SPEEDUP if v else None)
            if p == "kit":
                entry["kit_eval"] = "measured" if measured_eval else f"assumed {EVAL_SPEEDUP:g}x training"
            factor = float((side_by_side or {}).get(bb, 1.0)) if p == "kit" else 1.0
            for scope in ("table1", "all"):
                key = f"{p}_{scope}"
                if v:
                    sec = PAPER_EPOCHS * (PAPER_TRAIN_IMAGES / v + PAPER_VAL_IMAGES / ev)
                    if p == "kit" and ckpt_s:  # the kit's checkpoints under the paper profile's interval
                        n_ckpt = PAPER_EPOCHS if not interval else min(PAPER_EPOCHS, 2 + sec / interval)
                        sec += n_ckpt * ckpt_s
                    h = n[scope] * sec / factor / 3600.0
                    entry[f"{key}_hours"] = round(h, 2)
                    totals[key] += h
                else:
                    entry[f"{key}_hours"] = None
                    complete[key] = False
        out["backbones"][bb] = entry
    out["runs_table1"] = sum(n["table1"] for n in runs.values())
    out["runs_all"] = sum(n["all"] for n in runs.values())
    for k, v in totals.items():
        out[f"{k}_hours"] = round(v, 1) if complete[k] else None
    # arithmetic of the protocol: training 3x forward per image, evaluation 1x
    pflop = {"table1": 0.0, "all": 0.0}
    for bb, n in runs.items():
        fwd = next((r["fwd_gflop_per_img"] for r in rows if r["backbone"] == bb and r.get("fwd_gflop_per_img")), None)
        if fwd is None:
            pflop = None
            break
        per_run = PAPER_EPOCHS * (PAPER_TRAIN_IMAGES * 3 * fwd + PAPER_VAL_IMAGES * fwd) / 1e6
        out["backbones"][bb]["pflop_per_run"] = round(per_run, 2)
        for scope in pflop:
            pflop[scope] += n[scope] * per_run
    if pflop is not None:
        out["pflop_table1"], out["pflop_all"] = round(pflop["table1"]), round(pflop["all"])
        if peak_tflop_s:
            out["matmul_peak_tflop_s"] = round(peak_tflop_s, 1)
            out["hours_at_matmul_peak_all"] = round(pflop["all"] * 1e3 / peak_tflop_s / 3600, 1)
            out["hours_at_matmul_peak_table1"] = round(pflop["table1"] * 1e3 / peak_tflop_s / 3600, 1)
    return out


# --------------------------------------------------------------------------- report

def _fmt(v: Any, nd: int = 0) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:,.{nd}f}"


def _together_cell(r: dict[str, Any]) -> str:
    if not r.get("together_img_s"):
        return "-"
    return f"{r['together_runs']}: {_fmt(r['together_img_s'])} ({_fmt(r.get('together_vs_one_run'), 2)}x)"


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [f"# Training throughput: {report['device']}", "",
             f"{report['date']} · torch {report['torch']} · timm {report.get('timm')} · "
             f"{s['workers']} DataLoader workers · fusion {s['fusion']} · random weights", "",
             "Images per second (forward + backward + SGD step), median of "
             f"{s['repeats']} repeats after warm-up. `kit` is the kit's training path as runs use it "
             f"(step execution: {report.get('kit_execution', '?')}); `kit eager` the same path without CUDA graphs; "
             "`ceiling` the model alone with the kit's precision, layout and step execution; `eval` the kit's "
             "evaluation pass (batch 128).", "",
             "| backbone | input | batch | reference | kit eager | kit | ceiling | kit / reference | "
             "kit / ceiling | eval | runs together | notes |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in report["results"]:
        notes = "; ".join(r.get("notes", []))
        lines.append(
            f"| {r['backbone']} | {r['resize']}->{r['crop']} | {r['batch']} | {_fmt(r['reference_img_s'])} | "
            f"{_fmt(r.get('kit_eager_img_s'))} | {_fmt(r['kit_img_s'])} | {_fmt(r['ceiling_img_s'])} | "
            f"{_fmt(r['ratio_vs_reference'], 2)} | {_fmt(r['fraction_of_ceiling'], 2)} | {_fmt(r.get('eval_img_s'))} | "
            f"{_together_cell(r)} | {notes} |")
    lines += ["",
              f"reference: PIL + torchvision transforms, DataLoader({s['workers']} workers, pin_memory), fp32, NCHW, "
              f"cudnn.benchmark={s['reference_cudnn_benchmark']}, loss.item() every step"
              f"{', measured in its own process after the kit' if s.get('reference_process') == 'child' else ''}; "
              f"kit: device-resident uint8 cache + BatchAugment via train_one_epoch, precision {report['kit_precision']}, "
              "channels_last where preferred, cudnn.benchmark=True.", ""]
    if any(r.get("kit_compiled_img_s") for r in report["results"]):
        lines += ["| backbone | batch | kit compiled img/s | compile s |", "|---|---:|---:|---:|"]
        for r in report["results"]:
            if r.get("kit_compiled_img_s"):
                lines.append(f"| {r['backbone']} | {r['batch']} | {_fmt(r['kit_compiled_img_s'])} | {_fmt(r['compile_s'], 1)} |")
        lines.append("")
    layouts = [r for r in report["results"] if r.get("kit_other_layout_img_s")]
    if layouts:
        lines += ["## Memory layout per backbone (kit, same step execution)", "",
                  "| backbone | batch | kit's layout | img/s | other layout | img/s | kit's choice faster by |",
                  "|---|---:|---|---:|---|---:|---:|"]
        for r in layouts:
            mine = "channels_last" if r["channels_last"] else "NCHW"
            lines.append(f"| {r['backbone']} | {r['batch']} | {mine} | {_fmt(r['kit_img_s'])} | {r['other_layout']} | "
                         f"{_fmt(r['kit_other_layout_img_s'])} | {_fmt(r['kit_img_s'] / r['kit_other_layout_img_s'], 2)}x |")
        lines.append("")
    for lad in report.get("ladders", []):
        lines += [f"## Step by step: {lad['backbone']}, batch {lad['batch']} (kit data path)", "",
                  "| step | img/s | vs previous | vs first | notes |", "|---|---:|---:|---:|---|"]
        first = prev = None
        for st in lad["steps"]:
            v = st.get("img_s")
            lines.append(f"| {st['step']} | {_fmt(v)} | {_fmt(v / prev if v and prev else None, 2)} | "
                         f"{_fmt(v / first if v and first else None, 2)} | {st.get('note', '')} |")
            first = first or v
            prev = v or prev
        lines.append("")
    if report.get("caches"):
        lines += ["## Image cache", "", "| side | images | MiB | decode img/s (threads) | upload s | upload GB/s |",
                  "|---:|---:|---:|---:|---:|---:|"]
        for c in report["caches"].values():
            lines.append(f"| {c['side']} | {c['images']} | {c['bytes'] / 2**20:,.0f} | "
                         f"{'synthetic' if c['synthetic'] else _fmt(c['decode_img_s'])} | {c['upload_s']:.3f} | "
                         f"{_fmt(c['upload_gb_s'], 1)} |")
        lines.append("")
    proj = report.get("projection")
    if proj and "backbones" in proj:
        lines += [f"## The paper's protocol on this device (projected from batch {proj['batch']})", "",
                  f"{proj['epochs']} epochs x ({proj['train_images_per_fold']} training images + "
                  f"{proj['val_images_per_fold']} validation images) per run; the kit's evaluation speed as measured "
                  f"(`eval`), the reference's assumed {proj['eval_speedup_assumed']:g}x its training speed; the kit's "
                  f"checkpoints as measured (`checkpoint s`), {'every epoch' if not proj.get('checkpoint_interval_s') else 'about one per %g s (the paper profile)' % proj['checkpoint_interval_s']}; "
                  "one run at a time.", "",
                  "| backbone | runs Table 1 | runs Tables 1+3+4 | checkpoint s (MiB) | kit h (T1) | kit h (all) | "
                  "reference h (all) |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for bb, e in proj["backbones"].items():
            r = next((r for r in report["results"] if r["backbone"] == bb and r.get("checkpoint_s")), {})
            ck = f"{r['checkpoint_s']:.2f} ({r['checkpoint_mb']:,.0f})" if r else "-"
            lines.append(f"| {bb} | {e['runs_table1']} | {e['runs_all']} | {ck} | {_fmt(e['kit_table1_hours'], 1)} | "
                         f"{_fmt(e['kit_all_hours'], 1)} | {_fmt(e['reference_all_hours'], 1)} |")
        lines.append(f"| **total** | {proj['runs_table1']} | {proj['runs_all']} | | {_fmt(proj['kit_table1_hours'], 1)} | "
                     f"{_fmt(proj['kit_all_hours'], 1)} | {_fmt(proj['reference_all_hours'], 1)} |")
        lines.append("")
        pt = report.get("projection_together")
        if pt and "backbones" in pt:
            fac = ", ".join(f"{b} {f:.2f}x" for b, f in pt["side_by_side"].items())
            lines += [f"With runs trained together where that measured faster ({fac}; `grid --together "
                      f"{report['settings'].get('together')}`): kit {_fmt(pt['kit_all_hours'], 1)} h for Tables 1+3+4, "
                      f"{_fmt(pt['kit_table1_hours'], 1)} h for Table 1.", ""]
        if proj.get("pflop_all"):
            lines += ["### Arithmetic", "",
                      f"The protocol is {proj['pflop_all']:,} PFLOP (Table 1: {proj['pflop_table1']:,}), counting 2 FLOP "
                      "per multiply-add, training 3x the forward, evaluation 1x (forward GFLOP per image counted by "
                      "torch.utils.flop_counter)."]
            if proj.get("matmul_peak_tflop_s"):
                lines.append(f"At this device's measured bf16 matrix-product rate ({proj['matmul_peak_tflop_s']:,.0f} "
                             f"TFLOP/s, 8192^3, random data) it would take at least {proj['hours_at_matmul_peak_all']:,.1f} h "
                             f"(Table 1: {proj['hours_at_matmul_peak_table1']:,.1f} h): a bound no pipeline beats.")
            lines += ["", "| backbone | forward GFLOP/img | kit TFLOP/s (batch 32) | PFLOP per run |", "|---|---:|---:|---:|"]
            for bb, e in proj["backbones"].items():
                r = next((r for r in report["results"] if r["backbone"] == bb and r["batch"] == proj["batch"]), {})
                lines.append(f"| {bb} | {_fmt(r.get('fwd_gflop_per_img'), 1)} | {_fmt(r.get('kit_tflop_s'), 1)} | "
                             f"{_fmt(e.get('pflop_per_run'), 1)} |")
            lines.append("")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main

def parse_caps(items: list[str]) -> dict[str, int]:
    caps = dict(DEFAULT_BATCH_CAPS)
    for item in items or ():
        if "=" not in item:
            raise SystemExit(f"--batch-cap {item!r}: expected BACKBONE=N")
        k, v = item.split("=", 1)
        caps[k] = int(v)
    return caps


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", nargs="+", default=list(PAPER_BACKBONES))
    ap.add_argument("--batches", nargs="+", type=int, default=[32, 128],
                    help="batch sizes (default: 32, the paper's, and 128)")
    ap.add_argument("--batch-cap", nargs="*", default=[], metavar="BACKBONE=N",
                    help="largest batch per backbone (default: senet154=64 pnasnet5large=64)")
    ap.add_argument("--size", type=int, default=None, help="resize side for every backbone (default: the backbone's, 300/441)")
    ap.add_argument("--crop", type=int, default=None, help="crop side for every backbone (default: 224/331)")
    ap.add_argument("--images", type=Path, default=None,
                    help="folder of JPEG files (or a data folder with images/): the reference reads them, the kit "
                         "caches them (default: $METANET_BENCH_DATA, then ../shared/ham10000)")
    ap.add_argument("--max-images", type=int, default=2000, help="images used (reference files and kit cache)")
    ap.add_argument("--synthetic-cache", action="store_true", help="random uint8 kit cache instead of decoding")
    ap.add_argument("--pipelines", nargs="+", default=list(PIPELINES), choices=PIPELINES)
    ap.add_argument("--cuda-graphs", default="auto", choices=["auto", "on", "off"],
                    help="step execution of the kit and the ceiling (auto: CUDA graphs on a GPU, as train_run)")
    ap.add_argument("--kit-eager", default="auto", choices=["auto", "on", "off"],
                    help="also measure the kit without CUDA graphs (auto: when the kit uses them)")
    ap.add_argument("--eval", default="on", choices=["on", "off"], help="measure the kit's evaluation pass")
    ap.add_argument("--reference-process", default="child", choices=["child", "same"],
                    help="measure the reference in its own process after the kit (default), or in this one")
    ap.add_argument("--reference-share", type=float, default=0.3,
                    help="share of --deadline kept for the reference (its own process)")
    ap.add_argument("--together", type=int, default=2, metavar="K",
                    help="also measure K runs trained together (one process, K streams) at the first batch size; "
                         "1 turns it off (default: 2)")
    ap.add_argument("--ladder", nargs="*", default=[], metavar="BACKBONE",
                    help="step-by-step measurements (fp32 eager -> bf16 -> channels_last -> CUDA graph) for these "
                         "backbones at the first batch size, after the table")
    ap.add_argument("--ladder-streams", nargs="*", type=int, default=[2, 4], metavar="K",
                    help="ladder's last steps on a GPU: K runs trained together in one process, one CUDA stream "
                         "and graph each (default: 2 4)")
    ap.add_argument("--layouts", nargs="*", default=None, metavar="BACKBONE",
                    help="also measure the kit in the layout it does not choose (first batch size), after the table: "
                         "for these backbones, or all when none is named")
    ap.add_argument("--extras-share", type=float, default=0.15,
                    help="share of --deadline kept for --ladder, --layouts and --compile")
    ap.add_argument("--matmul-peak", default="on", choices=["on", "off"],
                    help="measure the device's bf16 matrix-product rate (GPU only; bounds the projection)")
    ap.add_argument("--fusion", default="metanet", choices=["none", "concat", "metanet"])
    ap.add_argument("--meta-dim", type=int, default=17)
    ap.add_argument("--device", default=None, help="cuda, cpu, ... (default: the GPU if there is one)")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: one per core)")
    ap.add_argument("--warmup-steps", type=int, default=5)
    ap.add_argument("--warmup-seconds", type=float, default=1.0, help="minimum warm-up time per measurement")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-seconds", type=float, default=3.0,
                    help="time budget of the timed repeats of one measurement (all repeats together)")
    ap.add_argument("--min-steps", type=int, default=2, help="least steps per repeat")
    ap.add_argument("--max-steps", type=int, default=400, help="most steps per repeat")
    ap.add_argument("--deadline", type=float, default=None,
                    help="soft budget for the whole run in seconds: measurements not started in time are skipped")
    ap.add_argument("--compile", nargs="*", default=None, metavar="BACKBONE",
                    help="also measure the kit with torch.compile (all backbones, or those named), after the table")
    ap.add_argument("--compile-batches", nargs="*", type=int, default=None,
                    help="batches measured with --compile (default: all)")
    ap.add_argument("--compile-min-seconds", type=float, default=60.0,
                    help="start a compiled measurement only with this much of --deadline left")
    ap.add_argument("--reference-cudnn-benchmark", action="store_true",
                    help="cudnn.benchmark=True for the reference too (default: PyTorch's default, False)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arithmetic", action="store_true",
                    help="only print the paper protocol's FLOPs (forward FLOPs of the six backbones counted on "
                         "--device) and the hours it needs at --peak-tflops (default: the measured bf16 matmul rate)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="rate for --arithmetic, TFLOP/s")
    ap.add_argument("--no-print", action="store_true", help=argparse.SUPPRESS)  # the reference's own process
    ap.add_argument("--json", type=Path, default=_ROOT / "results" / "bench" / "throughput.json")
    ap.add_argument("--md", type=Path, default=_ROOT / "results" / "bench" / "throughput.md")
    return ap


def _child_reference_args(args: argparse.Namespace, deadline: float | None, json_path: Path, md_path: Path) -> list[str]:
    """Command line of the process that measures the reference rows (same data, models and timing)."""
    a = [sys.executable, str(Path(__file__).resolve()), "--pipelines", "reference", "--reference-process", "same",
         "--backbones", *args.backbones, "--batches", *map(str, args.batches), "--max-images", str(args.max_images),
         "--fusion", args.fusion, "--meta-dim", str(args.meta_dim), "--warmup-steps", str(args.warmup_steps),
         "--warmup-seconds", str(args.warmup_seconds), "--repeats", str(args.repeats),
         "--max-seconds", str(args.max_seconds), "--min-steps", str(args.min_steps), "--max-steps", str(args.max_steps),
         "--seed", str(args.seed), "--eval", "off", "--no-print", "--json", str(json_path), "--md", str(md_path)]
    if args.batch_cap:
        a += ["--batch-cap", *args.batch_cap]
    for flag, v in (("--size", args.size), ("--crop", args.crop), ("--images", args.images), ("--device", args.device),
                    ("--workers", args.workers)):
        if v is not None:
            a += [flag, str(v)]
    if args.reference_cudnn_benchmark:
        a.append("--reference-cudnn-benchmark")
    if deadline is not None:
        a += ["--deadline", f"{max(deadline, 0.0):.1f}"]
    return a


def arithmetic_only(args: argparse.Namespace) -> int:
    """``--arithmetic``: the protocol's FLOPs from the forward FLOPs of the six backbones (no timing)."""
    from metanet_utils.models import build_model, input_spec
    from metanet_utils.train import pick_device

    device = pick_device(args.device)
    rows = []
    for bb in PAPER_BACKBONES:
        spec = input_spec(bb)
        model = build_model(bb, args.fusion, num_classes=7, meta_dim=args.meta_dim,
                            meta_layers=None if args.fusion != "metanet" else 2, pretrained=False).to(device)
        rows.append({"backbone": bb, "batch": 32, "crop": args.crop or spec.crop,
                     "fwd_gflop_per_img": round(forward_gflop_per_image(model, args.crop or spec.crop, args.meta_dim,
                                                                        device), 3)})
        del model
    peak = args.peak_tflops or measure_matmul_tflop_s(device)
    proj = project_paper_protocol(rows, 32, peak_tflop_s=peak)
    print("| backbone | crop | forward GFLOP/img | runs (Tables 1+3+4) | PFLOP per run | PFLOP |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        e = proj["backbones"][r["backbone"]]
        print(f"| {r['backbone']} | {r['crop']} | {r['fwd_gflop_per_img']:.1f} | {e['runs_all']} | "
              f"{e['pflop_per_run']:,.1f} | {e['pflop_per_run'] * e['runs_all']:,.0f} |")
    print(f"\nTables 1+3+4: {proj['pflop_all']:,} PFLOP; Table 1: {proj['pflop_table1']:,} PFLOP "
          "(2 FLOP per multiply-add; training 3x the forward, evaluation 1x).")
    if peak:
        print(f"At {peak:,.0f} TFLOP/s ({'given' if args.peak_tflops else 'measured bf16 matmul'}): at least "
              f"{proj['hours_at_matmul_peak_all']:,.1f} h for Tables 1+3+4, {proj['hours_at_matmul_peak_table1']:,.1f} h "
              "for Table 1.")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.arithmetic:
        return arithmetic_only(args)
    from metanet_utils.augment import BatchAugment
    from metanet_utils.config import RunConfig
    from metanet_utils.models import build_model, channels_last_preferred, input_spec
    from metanet_utils.step import cuda_graphs_wanted
    from metanet_utils.train import autocast_dtype, class_weight_tensor, pick_device, set_determinism

    t_start = time.monotonic()
    device = pick_device(args.device)
    if device.type == "cpu":
        # random-label training drives some values into denormal floats, which x86 CPUs process up to
        # 100x slower; flush them to zero (same for all three pipelines; GPUs are not affected)
        torch.set_flush_denormal(True)
    workers = args.workers if args.workers is not None else cpu_count()
    caps = parse_caps(args.batch_cap)
    amp_dtype = autocast_dtype("auto", device)
    graphs = cuda_graphs_wanted(args.cuda_graphs, device)
    kit_eager = graphs and args.kit_eager != "off" and "kit" in args.pipelines
    reference_child = "reference" in args.pipelines and args.reference_process == "child" and \
        bool(set(args.pipelines) - {"reference"})
    extras_wanted = bool(args.ladder or args.layouts is not None or args.compile is not None)

    def left() -> float:
        return float("inf") if args.deadline is None else args.deadline - (time.monotonic() - t_start)

    def share(x: float) -> float:
        return 0.0 if args.deadline is None else x * args.deadline

    reserve_extras = share(args.extras_share) if extras_wanted else 0.0
    reserve_reference = share(args.reference_share) if reference_child else 0.0

    # data
    img_dir = args.images
    if img_dir is None:
        env = os.environ.get("METANET_BENCH_DATA")
        for cand in ([Path(env)] if env else []) + [_ROOT.parent / "shared" / "ham10000"]:
            if cand.is_dir():
                img_dir = cand
                break
    paths: list[Path] = []
    if img_dir is not None:
        if not Path(img_dir).is_dir():
            print(f"error: --images {img_dir} does not exist", file=sys.stderr)
            return 2
        paths = find_jpegs(Path(img_dir))
    if not paths and "reference" in args.pipelines:
        print("error: the reference pipeline needs JPEG files: give --images FOLDER (e.g. ../shared/ham10000), "
              "or --pipelines kit ceiling --synthetic-cache", file=sys.stderr)
        return 2
    if paths and args.max_images and len(paths) > args.max_images:
        rng = np.random.default_rng(args.seed)
        paths = [paths[i] for i in sorted(rng.choice(len(paths), size=args.max_images, replace=False))]
    n_cache = min(args.max_images, max(len(paths), 1)) if paths and not args.synthetic_cache else args.max_images

    settings = Settings(device=device, warmup_steps=args.warmup_steps, warmup_seconds=args.warmup_seconds,
                        repeats=args.repeats, max_seconds=args.max_seconds, min_steps=args.min_steps,
                        max_steps=args.max_steps, workers=workers,
                        reference_cudnn_benchmark=args.reference_cudnn_benchmark)
    report: dict[str, Any] = {
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "timm": _version("timm"),
        "torchvision": _version("torchvision"),
        "python": platform.python_version(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "kit_precision": str(amp_dtype).replace("torch.", "") if amp_dtype else "float32",
        "kit_execution": "CUDA graph" if graphs else "eager",
        "settings": {
            "backbones": args.backbones, "batches": args.batches, "batch_caps": caps, "size": args.size,
            "crop": args.crop, "images": str(img_dir) if img_dir else None, "n_jpegs": len(paths),
            "cache_images": n_cache, "synthetic_cache": args.synthetic_cache or not paths,
            "pipelines": args.pipelines, "fusion": args.fusion, "meta_dim": args.meta_dim, "workers": workers,
            "cores": cpu_count(), "os_cpu_count": os.cpu_count(), "warmup_steps": args.warmup_steps,
            "warmup_seconds": args.warmup_seconds, "repeats": args.repeats, "max_seconds": args.max_seconds,
            "min_steps": args.min_steps, "max_steps": args.max_steps, "deadline": args.deadline,
            "cuda_graphs": args.cuda_graphs, "kit_eager": kit_eager, "eval": args.eval, "together": args.together,
            "reference_process": "child" if reference_child else "same",
            "reference_cudnn_benchmark": args.reference_cudnn_benchmark,
            "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
            "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
            "timing": "cuda events" if device.type == "cuda" else "perf_counter", "seed": args.seed,
            "pretrained": False, "flush_denormal": device.type == "cpu",
        },
        "results": [],
        "caches": {},
        "ladders": [],
    }

    def save() -> None:
        report["elapsed_s"] = round(time.monotonic() - t_start, 1)
        if all(b in args.backbones for b in PAPER_BACKBONES) and 32 in args.batches:
            report["projection"] = project_paper_protocol(report["results"], 32,
                                                          peak_tflop_s=report.get("matmul_bf16_tflop_s"))
            factors = {r["backbone"]: r["together_vs_one_run"] for r in report["results"]
                       if r["batch"] == 32 and (r.get("together_vs_one_run") or 0) > 1}
            if factors:
                report["projection_together"] = project_paper_protocol(report["results"], 32, side_by_side=factors)
        write_atomic(args.json, json.dumps(report, indent=2, default=str) + "\n")
        write_atomic(args.md, markdown(report))

    # rows in priority order: every backbone at the first batch size, then the next batch size, ...
    plan: list[tuple[str, int]] = []
    for b in args.batches:
        for bb in args.backbones:
            bsz = min(b, caps.get(bb, b))
            if (bb, bsz) not in plan:
                plan.append((bb, bsz))
    compile_set = None if args.compile is None else (set(args.compile) if args.compile else set(args.backbones))
    compile_plan = [(bb, b) for bb, b in plan if compile_set is not None and bb in compile_set
                    and (args.compile_batches is None or b in args.compile_batches)]

    models: dict[str, nn.Module] = {}
    caches: dict[int, Any] = {}
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    log(f"device {report['device']}, torch {torch.__version__}, {workers} loader workers, {len(paths)} JPEGs, "
        f"{len(plan)} rows, step execution {report['kit_execution']}, deadline {args.deadline}")

    def spec_of(bb: str):
        spec = input_spec(bb)
        return (args.size or spec.resize, args.crop or spec.crop, tuple(spec.mean), tuple(spec.std))

    def get_model(bb: str) -> nn.Module:
        if bb not in models:
            torch.manual_seed(args.seed)
            t = time.perf_counter()
            models[bb] = build_model(bb, args.fusion, num_classes=7, meta_dim=args.meta_dim,
                                     meta_layers=None if args.fusion != "metanet" else 2, pretrained=False)
            log(f"{bb}: built in {time.perf_counter() - t:.1f} s")
        return models[bb]

    def get_cache(resize: int):
        if resize not in caches:
            caches[resize], info = build_device_cache(paths, resize, n_cache, args.meta_dim, device,
                                                      synthetic=args.synthetic_cache or not paths, seed=args.seed)
            report["caches"][str(resize)] = info
            log(f"kit cache: {n_cache} images at {resize} px: decoded in {info['decode_s']:.1f} s, "
                f"uploaded to {device} in {info['upload_s']:.3f} s ({info['upload_gb_s']} GB/s)")
        return caches[resize]

    def kit_cfg(bb: str, b: int) -> RunConfig:
        resize, crop, _, _ = spec_of(bb)
        return RunConfig(backbone=bb, fusion=args.fusion, batch_size=b, image_size=resize, crop_size=crop,
                         pretrained=False, seed=args.seed,  # meta_layers: the variant's default (2 / 0)
                         meta_features=("age", "sex", "localization") if args.fusion != "none" else ())

    def new_row(bb: str, b: int) -> dict[str, Any]:
        resize, crop, _, _ = spec_of(bb)
        try:
            from metanet_utils.models import resolve_backbone

            name = resolve_backbone(bb)
        except Exception:  # noqa: BLE001 - only a label
            name = bb
        row = {"backbone": bb, "model": name, "batch": b, "resize": resize, "crop": crop,
               "channels_last": device.type == "cuda" and channels_last_preferred(bb),
               "kit_precision": report["kit_precision"], "kit_execution": report["kit_execution"],
               "reference_img_s": None, "kit_img_s": None, "kit_eager_img_s": None, "ceiling_img_s": None,
               "eval_img_s": None, "ratio_vs_reference": None, "fraction_of_ceiling": None,
               "eager_ratio_vs_reference": None, "kit_compiled_img_s": None, "compile_s": None,
               "kit_other_layout_img_s": None, "other_layout": None, "fwd_gflop_per_img": None,
               "together_runs": args.together if args.together > 1 else None, "together_img_s": None,
               "together_vs_one_run": None, "checkpoint_s": None, "checkpoint_mb": None,
               "kit_tflop_s": None, "details": {}, "notes": []}
        report["results"].append(row)
        return row

    def finish(row: dict[str, Any]) -> None:
        k, r, c, e = row["kit_img_s"], row["reference_img_s"], row["ceiling_img_s"], row["kit_eager_img_s"]
        row["ratio_vs_reference"] = round(k / r, 3) if k and r else None
        row["fraction_of_ceiling"] = round(k / c, 3) if k and c else None
        row["eager_ratio_vs_reference"] = round(e / r, 3) if e and r else None
        f = row.get("fwd_gflop_per_img")
        row["kit_tflop_s"] = round(k * 3 * f / 1e3, 2) if k and f else None
        t = row.get("together_img_s")
        row["together_vs_one_run"] = round(t / k, 3) if t and k else None

    def run_one(row: dict[str, Any], pipeline: str, fn: Callable[[], dict[str, Any]], key: str,
                until: float = 0.0) -> None:
        if left() <= until:
            row["notes"].append(f"{pipeline} skipped (time budget)")
            log(f"{row['backbone']} b{row['batch']} {pipeline}: skipped (deadline)")
            return
        t = time.perf_counter()
        try:
            res = fn()
            row[key] = round(res["img_s"], 1)
            row["details"][pipeline] = res
            ex = res.get("execution") or {}
            for e in (ex if isinstance(ex, list) else [ex])[:1]:  # several runs fail alike: say it once
                if e.get("cuda_graphs_failure"):
                    row["notes"].append(f"{pipeline}: CUDA graph failed, eager ({e['cuda_graphs_failure'][:120]})")
            log(f"{row['backbone']} b{row['batch']} {pipeline}: {res['img_s']:.1f} img/s "
                f"(repeats {res['repeats_img_s']}, {res['steps_per_repeat']} steps each, "
                f"{time.perf_counter() - t:.1f} s)")
        except Exception as e:  # noqa: BLE001 - one failing measurement must not stop the table
            what = "out of memory" if is_oom(e) else f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            row["notes"].append(f"{pipeline}: {what}")
            log(f"{row['backbone']} b{row['batch']} {pipeline}: FAILED {what}")
        finally:
            free_memory(device)
        finish(row)
        save()

    def criterion_for() -> nn.Module:
        return nn.CrossEntropyLoss(weight=class_weight_tensor(np.arange(7).repeat(10)).to(device))

    # ---------------------------------------------------------------- 1. the table (kit, ceiling, eval; reference if in-process)
    main_until = reserve_reference + reserve_extras
    eval_done: set[str] = set()
    ckpt_done: set[str] = set()
    gflops: dict[str, float] = {}
    if device.type == "cuda" and set(args.pipelines) - {"reference"} and args.matmul_peak == "on":
        try:
            report["matmul_bf16_tflop_s"] = round(measure_matmul_tflop_s(device), 1)
            log(f"bf16 8192^3 matrix product: {report['matmul_bf16_tflop_s']} TFLOP/s")
        except Exception as e:  # noqa: BLE001
            log(f"matrix-product peak: FAILED {type(e).__name__}: {e}")
        free_memory(device)
    # Rows are filled in passes, most needed first, because the first call of each model (cuDNN autotuning of
    # every convolution shape) can take a minute: (A) kit and ceiling at the first batch size for every
    # backbone, then (B) what explains them (eager kit, two runs together, evaluation, checkpoint), then (C) the
    # larger batch sizes. A reference measured in this process goes with pass A.
    for bb, b in plan:
        rows[(bb, b)] = new_row(bb, b)
    first_b = {bb: min(args.batches[0], caps.get(bb, args.batches[0])) for bb in args.backbones}
    passes = [("A", [(bb, b) for bb, b in plan if b == first_b[bb]]), ("B", [(bb, b) for bb, b in plan if b == first_b[bb]]),
              ("C", [(bb, b) for bb, b in plan if b != first_b[bb]])]
    broken: set[str] = set()
    for pass_name, pass_rows in passes:
        for bb, b in pass_rows:
            row = rows[(bb, b)]
            if bb in broken:
                continue
            if left() <= main_until:
                if not row["details"]:
                    row["notes"].append("skipped (time budget)")
                save()
                continue
            resize, crop, mean, std = spec_of(bb)
            try:
                model = get_model(bb).to(device)
            except Exception as e:  # noqa: BLE001
                row["notes"].append(f"model: {type(e).__name__}: {e}")
                log(f"{bb}: cannot build the model: {e}")
                broken.add(bb)
                save()
                continue
            channels_last = row["channels_last"]
            criterion = criterion_for()
            if pass_name == "A" or (pass_name == "C" and bb not in gflops):
                try:
                    if bb not in gflops:
                        gflops[bb] = round(forward_gflop_per_image(model, crop, args.meta_dim, device), 3)
                except Exception as e:  # noqa: BLE001 - arithmetic is a by-product
                    row["notes"].append(f"FLOP count: {type(e).__name__}")
            if bb in gflops:
                row["fwd_gflop_per_img"] = gflops[bb]
            if pass_name in ("A", "C") and "reference" in args.pipelines and not reference_child:
                torch.backends.cudnn.benchmark = args.reference_cudnn_benchmark
                model.to(memory_format=torch.contiguous_format)
                g = torch.Generator().manual_seed(args.seed)
                ds = JpegDataset(paths, reference_transform(resize, crop, mean, std),
                                 torch.rand(len(paths), args.meta_dim, generator=g),
                                 torch.randint(0, 7, (len(paths),), generator=g))
                run_one(row, "reference", lambda: measure_reference(model, ds, b, crop, criterion, settings),
                        "reference_img_s", main_until)
            set_determinism(args.seed, False)  # what train_run does: seeds, cudnn.benchmark = True
            model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
            aug = BatchAugment(crop=crop, mean=mean, std=std)
            cfg = kit_cfg(bb, b)
            if pass_name in ("A", "C"):
                if "kit" in args.pipelines:
                    run_one(row, "kit", lambda: measure_kit(model, get_cache(resize), aug, cfg, criterion, settings,
                                                            amp_dtype, channels_last, cuda_graph=graphs),
                            "kit_img_s", main_until)
                if "ceiling" in args.pipelines:
                    run_one(row, "ceiling", lambda: measure_ceiling(model, b, crop, args.meta_dim, criterion, settings,
                                                                    amp_dtype, channels_last, cuda_graph=graphs),
                            "ceiling_img_s", main_until)
                if pass_name == "C" and kit_eager and args.kit_eager == "on" and "kit" in args.pipelines:
                    run_one(row, "kit_eager", lambda: measure_kit(model, get_cache(resize), aug, cfg, criterion,
                                                                  settings, amp_dtype, channels_last, cuda_graph=False),
                            "kit_eager_img_s", main_until)
            elif "kit" in args.pipelines:  # pass B
                if args.eval == "on" and bb not in eval_done:  # batch 128 whatever the row's
                    eval_done.add(bb)
                    run_one(row, "eval", lambda: measure_eval(model, get_cache(resize), aug, settings, amp_dtype,
                                                              channels_last), "eval_img_s", main_until)
                if kit_eager:
                    run_one(row, "kit_eager", lambda: measure_kit(model, get_cache(resize), aug, cfg, criterion,
                                                                  settings, amp_dtype, channels_last, cuda_graph=False),
                            "kit_eager_img_s", main_until)
                if args.together > 1:
                    def together() -> dict[str, Any]:
                        copies = [model] + [copy.deepcopy(model) for _ in range(args.together - 1)]
                        try:
                            return measure_together(copies, get_cache(resize), aug, cfg, criterion, settings,
                                                    amp_dtype, channels_last, cuda_graph=graphs)
                        finally:
                            del copies

                    run_one(row, "together", together, "together_img_s", main_until)
                if args.eval == "on" and bb not in ckpt_done and left() > main_until:
                    ckpt_done.add(bb)
                    try:
                        c = measure_checkpoint(model)
                        row.update(checkpoint_s=c["checkpoint_s"], checkpoint_mb=c["checkpoint_mb"])
                        row["details"]["checkpoint"] = c
                        log(f"{bb}: checkpoint {c['checkpoint_mb']} MiB written in {c['checkpoint_s']} s")
                    except Exception as e:  # noqa: BLE001
                        row["notes"].append(f"checkpoint: {type(e).__name__}: {e}"[:200])
                    finish(row)
                    save()
            model.zero_grad(set_to_none=True)
            if device.type != "cuda":
                model.to("cpu")
            free_memory(device)

    # ---------------------------------------------------------------- 2. the reference, in its own process
    if reference_child:
        until = reserve_extras
        if left() <= until:
            for row in report["results"]:
                row["notes"].append("reference skipped (time budget)")
        else:
            import subprocess
            import tempfile

            for c in list(caches):  # the reference process gets the device to itself
                del caches[c]
            free_memory(device)
            with tempfile.TemporaryDirectory() as tmp:
                cj, cm = Path(tmp) / "reference.json", Path(tmp) / "reference.md"
                child_deadline = None if args.deadline is None else left() - until
                cmd = _child_reference_args(args, child_deadline, cj, cm)
                log(f"reference: measured in its own process (deadline {child_deadline})")
                proc = subprocess.run(cmd, cwd=str(_ROOT), text=True)
                if proc.returncode != 0:
                    log(f"reference process exited with {proc.returncode}")
                child = json.loads(cj.read_text()) if cj.is_file() else {"results": []}
            by_key = {(r["backbone"], r["batch"]): r for r in child.get("results", [])}
            for row in report["results"]:
                cr = by_key.get((row["backbone"], row["batch"]))
                if cr is None:
                    row["notes"].append("reference: no result from its process")
                    continue
                row["reference_img_s"] = cr.get("reference_img_s")
                if "reference" in cr.get("details", {}):
                    row["details"]["reference"] = cr["details"]["reference"]
                row["notes"] += [n if n.startswith("reference") else f"reference: {n}" for n in cr.get("notes", [])]
                finish(row)
            save()

    # ---------------------------------------------------------------- 3. extras: ladder, layouts, compile
    def needs(seconds: float = 0.0) -> bool:
        return left() > seconds

    for bb in args.ladder:
        b = min(plan[0][1], caps.get(bb, plan[0][1]))
        resize, crop, mean, std = spec_of(bb)
        lad: dict[str, Any] = {"backbone": bb, "batch": b, "steps": []}
        report["ladders"].append(lad)
        steps = [("fp32, NCHW, eager", None, False, False)]
        if device.type == "cuda":
            steps += [("bf16, NCHW, eager", amp_dtype, False, False), ("bf16, channels_last, eager", amp_dtype, True, False),
                      ("bf16, channels_last, CUDA graph", amp_dtype, True, True)]
            steps += [(f"{k} runs together (train_runs_together: {k} streams, one process; summed)", amp_dtype, True, k)
                      for k in args.ladder_streams]
        for name, amp, cl, gr in steps:
            entry: dict[str, Any] = {"step": name, "img_s": None}
            lad["steps"].append(entry)
            if not needs():
                entry["note"] = "skipped (time budget)"
                continue
            try:
                model = get_model(bb).to(device)
                model.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
                set_determinism(args.seed, False)
                if not isinstance(gr, bool):  # k runs side by side in this process
                    copies = [model]
                    try:  # the copies go even when one of them did not fit
                        copies += [copy.deepcopy(model) for _ in range(gr - 1)]
                        res = measure_together(copies, get_cache(resize), BatchAugment(crop=crop, mean=mean, std=std),
                                               kit_cfg(bb, b), criterion_for(), settings, amp, cl, cuda_graph=graphs)
                    finally:
                        del copies
                else:
                    res = measure_kit(model, get_cache(resize), BatchAugment(crop=crop, mean=mean, std=std),
                                      kit_cfg(bb, b), criterion_for(), settings, amp, cl, cuda_graph=gr)
                entry["img_s"] = round(res["img_s"], 1)
                entry["repeats_img_s"] = res["repeats_img_s"]
                log(f"ladder {bb} b{b} {name}: {res['img_s']:.1f} img/s")
            except Exception as e:  # noqa: BLE001
                entry["note"] = "out of memory" if is_oom(e) else f"{type(e).__name__}: {e}"[:200]
                log(f"ladder {bb} b{b} {name}: FAILED {entry['note']}")
            finally:
                models[bb].to("cpu").zero_grad(set_to_none=True)
                free_memory(device)
            save()
        if device.type != "cuda":
            lad["steps"].append({"step": "bf16, channels_last, CUDA graph", "img_s": None, "note": "needs a GPU"})

    if args.layouts is not None and device.type == "cuda":
        for (bb, b), row in rows.items():
            if (args.layouts and bb not in args.layouts) or b != first_b[bb] or not row["kit_img_s"]:
                continue
            resize, crop, mean, std = spec_of(bb)
            other = not row["channels_last"]
            row["other_layout"] = "channels_last" if other else "NCHW"
            model = get_model(bb).to(device)
            model.to(memory_format=torch.channels_last if other else torch.contiguous_format)
            set_determinism(args.seed, False)
            run_one(row, "kit_other_layout",
                    lambda: measure_kit(model, get_cache(resize), BatchAugment(crop=crop, mean=mean, std=std),
                                        kit_cfg(bb, b), criterion_for(), settings, amp_dtype, other, cuda_graph=graphs),
                    "kit_other_layout_img_s")
            model.to("cpu").zero_grad(set_to_none=True)
            free_memory(device)

    for bb, b in compile_plan:
        row = rows.get((bb, b))
        if row is None or row["kit_img_s"] is None:
            continue
        if left() < args.compile_min_seconds:
            row["notes"].append("compiled: skipped (time budget)")
            log(f"{bb} b{b} compiled: skipped ({left():.0f} s left, need {args.compile_min_seconds:.0f})")
            save()
            continue
        resize, crop, mean, std = spec_of(bb)
        model = get_model(bb).to(device)
        if row["channels_last"]:
            model.to(memory_format=torch.channels_last)
        set_determinism(args.seed, False)
        aug = BatchAugment(crop=crop, mean=mean, std=std)
        compiled = torch.compile(model)  # as train_run does with cfg.compile (CUDA graphs off there)

        def run_compiled() -> dict[str, Any]:
            return measure_kit(compiled, get_cache(resize), aug, kit_cfg(bb, b), criterion_for(), settings, amp_dtype,
                               row["channels_last"], cuda_graph=False)

        run_one(row, "kit_compiled", run_compiled, "kit_compiled_img_s")
        if "kit_compiled" in row["details"]:
            row["compile_s"] = row["details"]["kit_compiled"].get("first_call_s")
        try:
            torch._dynamo.reset()
        except Exception:  # noqa: BLE001
            pass
        model.to("cpu").zero_grad(set_to_none=True)
        free_memory(device)
        save()

    save()
    log(f"done in {time.monotonic() - t_start:.0f} s: {args.json}, {args.md}")
    if not args.no_print:
        print(markdown(report))
    return 0


def _version(mod: str) -> str | None:
    try:
        return __import__(mod).__version__
    except Exception:  # noqa: BLE001
        return None


if __name__ == "__main__":
    raise SystemExit(main())
