"""One training run: a frozen :class:`~metanet_utils.config.RunConfig` in, a complete record out.

Plain functions in the style of torchvision's reference scripts: :func:`train_one_epoch`,
:func:`evaluate_model`, and :func:`train_run`, which trains with class-weighted
cross-entropy and SGD on the paper's schedule, checkpoints every epoch (atomically) and
resumes after a kill to the same result, then writes the record of DESIGN.md:

``results/runs/<run_id>/``: ``config.json``, ``history.csv``, ``metrics.json``,
``predictions.csv`` (ISIC format), ``labels.csv``, ``checkpoint.pt``, ``manifest.json``.

The record folder is staged and renamed into place, so it is complete or absent. Work in
progress (the per-epoch checkpoint) lives in ``results/runs/.work/<run_id>/``.

Randomness is derived from ``(seed, epoch)`` at the start of every epoch (shuffle order
and augmentation), so a resumed run sees the same batches as an uninterrupted one; with
``deterministic=True`` the two end bit-identical.

Example:
    >>> from metanet_utils.config import RunConfig                                  # doctest: +SKIP
    >>> from metanet_utils.dataset import open_dataset                              # doctest: +SKIP
    >>> ds = open_dataset("../shared/ham10000", max_images=300)                      # doctest: +SKIP
    >>> cfg = RunConfig(backbone="test_resnet", fusion="metanet", n_folds=2, epochs=1,
    ...                 image_size=64, crop_size=56, pretrained=False,
    ...                 data_fingerprint=ds.fingerprint)                            # doctest: +SKIP
    >>> train_run(cfg, ds)["mcr"]                                                    # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from .atomic import FileLock, LockHeld, atomic_write_json, atomic_write_text, atomic_write_with, staged_dir
from .augment import BatchAugment
from .config import RunConfig
from .constants import CLASS_CODES, DX_CODES
from .evaluate import RECORD_FILES, is_complete  # the record format lives with the code that reads it
from .step import TrainStep, cuda_graphs_wanted

__all__ = [
    "RECORD_FILES",
    "record_dir",
    "is_complete",
    "read_metrics",
    "pick_device",
    "autocast_dtype",
    "set_determinism",
    "class_weight_tensor",
    "make_optimizer",
    "uses_channels_last",
    "make_scheduler",
    "iter_train_epoch",
    "EpochIter",
    "train_one_epoch",
    "evaluate_model",
    "train_run",
    "RunBusy",
]

class RunBusy(RuntimeError):
    """Another worker is training this run right now."""


# --------------------------------------------------------------------------- records

def record_dir(cfg: RunConfig | str, runs_dir: str | Path | None = None) -> Path:
    from .paths import runs_dir as default_runs_dir

    run_id = cfg if isinstance(cfg, str) else cfg.run_id
    return Path(runs_dir or default_runs_dir()) / run_id


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / "metrics.json").read_text())


# --------------------------------------------------------------------------- device and numerics

def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on a GPU (``auto``), fp32 on the CPU; explicit choices are honoured."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "fp16":
        return torch.float16
    return torch.bfloat16


def set_determinism(seed: int, deterministic: bool) -> None:
    """Seed every generator; with ``deterministic`` also force deterministic kernels."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:  # undo an earlier deterministic run in the same process
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = True


def class_weight_tensor(train_labels: np.ndarray, n_classes: int = 7) -> torch.Tensor:
    """Inverse-frequency class weights of the training fold (see :func:`metanet_utils.splits.class_weights`)."""
    from .splits import class_weights

    return torch.as_tensor(class_weights(train_labels, n_classes=n_classes), dtype=torch.float32)


def make_optimizer(model: nn.Module, cfg: RunConfig) -> torch.optim.SGD:
    """The paper's SGD: ``cfg.lr``, momentum and weight decay on every parameter."""
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def uses_channels_last(cfg: RunConfig, device: torch.device) -> bool:
    """Whether a run trains in channels_last: on a GPU, ``on``, or ``auto`` where the backbone gains from it."""
    from .models import channels_last_preferred

    return device.type == "cuda" and (
        cfg.channels_last == "on" or (cfg.channels_last == "auto" and channels_last_preferred(cfg.backbone)))


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: RunConfig) -> torch.optim.lr_scheduler.MultiStepLR:
    """lr / 10 at the paper's epochs 50, 120 and 200 (``cfg.milestones``, stepped once per epoch)."""
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.milestones), gamma=cfg.lr_gamma)


def _epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(int(seed) * 100_003 + int(epoch))
    return g


# --------------------------------------------------------------------------- data on the device

@dataclass
class DeviceData:
    """Images (uint8 NHWC), metadata and labels of one fold, resident where training runs."""

    images: torch.Tensor
    meta: torch.Tensor
    labels: torch.Tensor
    train_idx: torch.Tensor
    val_idx: torch.Tensor
    val_ids: list[str]

    @classmethod
    def build(cls, images: np.ndarray, meta: np.ndarray, labels: np.ndarray, folds: np.ndarray, fold: int,
              image_ids: list[str], device: torch.device, resident: torch.Tensor | None = None) -> "DeviceData":
        """Upload one fold's data; ``resident`` reuses an image tensor already on ``device`` (runs trained
        together share one copy of the cache)."""
        if resident is not None:
            if tuple(resident.shape) != tuple(images.shape) or resident.device.type != device.type:
                raise ValueError(f"the shared image tensor {tuple(resident.shape)} on {resident.device} does not match "
                                 f"the cache {tuple(images.shape)} for {device}")
            imgs = resident
        elif device.type == "cuda":
            need = images.nbytes
            free, _total = torch.cuda.mem_get_info(device)
            if need > 0.9 * free:
                raise MemoryError(f"the image cache needs {need / 2**30:.1f} GiB of GPU memory, "
                                  f"{free / 2**30:.1f} GiB free: use a smaller image_size or a larger GPU")
            imgs = torch.from_numpy(np.ascontiguousarray(images)).to(device, non_blocking=True)
        else:  # read the memory-mapped cache into RAM once
            imgs = torch.from_numpy(np.array(images, copy=True))
        val_mask = folds == fold
        return cls(
            images=imgs,
            meta=torch.as_tensor(np.array(meta), dtype=torch.float32, device=device),
            labels=torch.as_tensor(np.array(labels), dtype=torch.long, device=device),
            train_idx=torch.as_tensor(np.flatnonzero(~val_mask), device=device),
            val_idx=torch.as_tensor(np.flatnonzero(val_mask), device=device),
            val_ids=[image_ids[i] for i in np.flatnonzero(val_mask)],
        )


# --------------------------------------------------------------------------- loops

def iter_train_epoch(model: nn.Module, data: DeviceData, augment: BatchAugment, criterion: nn.Module,
                     optimizer: torch.optim.Optimizer, cfg: RunConfig, epoch: int, device: torch.device,
                     amp_dtype: torch.dtype | None, channels_last: bool,
                     on_batch: Callable[[int, int], None] | None = None, step: TrainStep | None = None):
    """:func:`train_one_epoch` as a generator: yields after each batch is queued, returns the epoch's row.

    Several runs trained together interleave their batches through these generators (see
    :mod:`metanet_utils.together`); device work goes to whatever CUDA stream is current at each ``next``.
    """
    model.train()
    if step is None:
        step = TrainStep(model, criterion, optimizer, cfg.batch_size, amp_dtype)
    gen = _epoch_generator(cfg.seed, epoch, device)
    order = data.train_idx[torch.randperm(len(data.train_idx), device=device, generator=gen)]
    # the whole epoch's augmentation parameters in one draw; the step gathers and augments each batch
    # itself (inside its CUDA graph, when it has one)
    _n, h, w, _c = data.images.shape
    params = augment.draw_matrix(len(order), h, w, device, gen)

    def prepare(idx: torch.Tensor, p: torch.Tensor):
        x = augment.apply(data.images[idx], p)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, data.meta[idx], data.labels[idx]

    step.set_prepare(prepare, key=(data.images.data_ptr(), data.meta.data_ptr(), data.labels.data_ptr(),
                                   id(augment), channels_last))
    bs = cfg.batch_size
    n_batches = len(order) // bs + (1 if len(order) % bs >= 2 else 0)  # a batch of one would break BatchNorm
    total_loss = torch.zeros((), device=device)
    seen = 0
    t0 = time.perf_counter()
    for b in range(n_batches):
        idx = order[b * bs:(b + 1) * bs]
        loss = step(idx, params[b * bs:(b + 1) * bs])
        total_loss += loss * len(idx)
        seen += len(idx)
        if on_batch is not None:
            on_batch(b + 1, n_batches)
        yield b
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()
    dt = time.perf_counter() - t0
    return {"train_loss": float(total_loss) / max(seen, 1), "epoch_time_s": dt, "images_per_s": seen / max(dt, 1e-9)}


def train_one_epoch(model: nn.Module, data: DeviceData, augment: BatchAugment, criterion: nn.Module,
                    optimizer: torch.optim.Optimizer, cfg: RunConfig, epoch: int, device: torch.device,
                    amp_dtype: torch.dtype | None, channels_last: bool,
                    on_batch: Callable[[int, int], None] | None = None, step: TrainStep | None = None) -> dict[str, float]:
    """One pass over the training fold in a shuffled order fixed by ``(seed, epoch)``.

    ``step`` runs each batch (see :class:`metanet_utils.step.TrainStep`; pass the same one every
    epoch so a CUDA graph is captured once); default: an eager step.
    """
    return EpochIter(iter_train_epoch(model, data, augment, criterion, optimizer, cfg, epoch, device, amp_dtype,
                                      channels_last, on_batch, step)).drain()


@torch.no_grad()
def evaluate_model(model: nn.Module, data: DeviceData, augment: BatchAugment, device: torch.device,
                   amp_dtype: torch.dtype | None, channels_last: bool, batch_size: int = 128,
                   criterion: nn.Module | None = None) -> tuple[np.ndarray, float]:
    """Softmax probabilities of the validation fold (centre crop) and its loss: for a class-weighted
    cross-entropy the weighted mean over the whole fold (``sum w_y l / sum w_y``, what the criterion gives
    on the fold in one batch), whatever ``batch_size``."""
    model.eval()
    probs, loss_sum = [], torch.zeros((), dtype=torch.float64, device=device)
    weight_sum = torch.zeros((), dtype=torch.float64, device=device)
    class_w = criterion.weight if isinstance(criterion, nn.CrossEntropyLoss) else None
    for s in range(0, len(data.val_idx), batch_size):
        idx = data.val_idx[s:s + batch_size]
        x = augment(data.images[idx.cpu() if data.images.device.type == "cpu" else idx].to(device), train=False)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = model(x, data.meta[idx]).float()
        if criterion is not None:  # the criterion's batch mean, weighted back to a sum
            y = data.labels[idx]
            n = class_w[y].double().sum() if class_w is not None else torch.tensor(float(len(idx)), device=device)
            loss_sum += criterion(logits, y).double() * n
            weight_sum += n
        probs.append(torch.softmax(logits, dim=1))  # stays on the device: one copy to the host at the end
    p = torch.cat(probs).cpu().numpy().astype(np.float64) if probs else np.zeros((0, len(CLASS_CODES)))
    return p, float(loss_sum / weight_sum) if float(weight_sum) > 0 else 0.0


# --------------------------------------------------------------------------- one run

def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write_with(path, lambda tmp: torch.save(state, tmp))


def _load_checkpoint(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - a corrupt checkpoint is discarded, never half-used
        print(f"[train] checkpoint {path} is unreadable ({type(e).__name__}); starting this run again", flush=True)
        return None


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _log(msg: str) -> None:
    print(msg, flush=True)


def log_event(runs_dir: Path, run_id: str, event: str) -> None:
    """Append one line to ``runs/.events.log`` (audit trail: which worker did what, when)."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {os.uname().nodename} pid={os.getpid()} {event} {run_id}\n"
    fd = os.open(runs_dir / ".events.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def train_run(cfg: RunConfig, dataset, runs_dir: str | Path | None = None, device: str | None = None,
              progress: bool = True, weights_dir: str | Path | None = None, lock: bool = True,
              stop_after_epochs: int | None = None) -> dict[str, Any]:
    """Train (or resume, or skip) one run and return its ``metrics.json`` content.

    Args:
        cfg: the run's settings; ``cfg.data_fingerprint`` must match ``dataset``.
        dataset: a :class:`metanet_utils.dataset.Dataset`.
        runs_dir: where records go (default ``results/runs``).
        device: ``cuda``, ``cpu``...; default: the GPU if there is one.
        lock: hold ``runs/.locks/<run_id>.lock`` while training; raise :class:`RunBusy` if
            another worker holds it.
        stop_after_epochs: testing hook: return after this many epochs of this call,
            leaving the checkpoint (as an interruption would).
    """
    from .paths import runs_dir as default_runs_dir

    runs_dir = Path(runs_dir or default_runs_dir())
    final = runs_dir / cfg.run_id
    if is_complete(final):
        return read_metrics(final)
    _check_fingerprint(cfg, dataset)
    lk = FileLock(runs_dir / ".locks" / f"{cfg.run_id}.lock", blocking=False)
    if lock:
        try:
            lk.acquire()
        except LockHeld:
            raise RunBusy(f"run {cfg.run_id} is being trained by another worker") from None
    try:
        if is_complete(final):  # finished by another worker before we got the lock
            return read_metrics(final)
        if lock:
            _remove_leftovers(runs_dir, cfg.run_id)
        session = _RunSession(cfg, dataset, runs_dir, pick_device(device), progress, weights_dir)
        epochs_this_call = 0
        while not session.done:
            stopping = stop_after_epochs is not None and epochs_this_call + 1 >= stop_after_epochs
            session.end_epoch(session.run_epoch_iter().drain(), force_checkpoint=stopping)
            epochs_this_call += 1
            if stopping and not session.done:
                return {"interrupted": True, "epochs_done": session.epoch}
        return session.finish()
    finally:
        if lock:
            lk.release()


def _check_fingerprint(cfg: RunConfig, dataset) -> None:
    if cfg.data_fingerprint and cfg.data_fingerprint != dataset.fingerprint:
        raise ValueError(f"run {cfg.run_id} was configured for data {cfg.data_fingerprint}, "
                         f"but the data given is {dataset.fingerprint}")


def _remove_leftovers(runs_dir: Path, run_id: str) -> None:
    """Remove what a killed worker of this run left behind (we hold the run's lock): temporary
    checkpoint files and half-staged record folders. The last complete checkpoint is kept."""
    for p in (runs_dir / ".work" / run_id).glob(".checkpoint.pt.tmp-*"):
        p.unlink(missing_ok=True)
    for p in (*runs_dir.glob(f".{run_id}.stage-*"), *runs_dir.glob(f".{run_id}.old-*")):
        shutil.rmtree(p, ignore_errors=True)


class EpochIter:
    """One epoch of one run (an :func:`iter_train_epoch` generator), advanced a batch at a time, its device
    work queued on ``stream`` (a CUDA stream of its own when runs are trained together; None: the current one)."""

    def __init__(self, gen, stream: torch.cuda.Stream | None = None) -> None:
        self.gen, self.stream, self.result = gen, stream, None

    def advance(self) -> bool:
        """Queue the next batch; False (and ``result`` set) when the epoch is over."""
        with torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext():
            try:
                next(self.gen)
                return True
            except StopIteration as done:
                self.result = done.value
                return False

    def drain(self) -> dict[str, float]:
        while self.advance():
            pass
        return self.result


class _RunSession:
    """Everything of one run while it trains: data on the device, model, optimizer, schedule, step,
    history and checkpoint. ``train_run`` drives one; :mod:`metanet_utils.together` several."""

    def __init__(self, cfg: RunConfig, dataset, runs_dir: Path, device: torch.device, progress: bool,
                 weights_dir, shared: dict | None = None, together: bool = False) -> None:
        from .metadata import encode
        from .models import build_model, input_spec

        self.cfg, self.dataset, self.runs_dir, self.device = cfg, dataset, runs_dir, device
        self.progress, self.together, self.failed = progress, together, None
        self.work = runs_dir / ".work" / cfg.run_id
        self.work.mkdir(parents=True, exist_ok=True)
        self.ckpt_path = self.work / "checkpoint.pt"
        set_determinism(cfg.seed, cfg.deterministic)
        self.t_start = time.perf_counter()

        images = dataset.images(cfg.image_size, cfg.color_constancy, progress=progress)
        folds = dataset.folds(cfg.n_folds, cfg.split_scheme, cfg.split_seed)
        features = cfg.meta_features if cfg.fusion != "none" else ()
        meta = encode(dataset.df, features=features)[0] if features else np.zeros((len(dataset.df), 0), np.float32)
        key = (dataset.fingerprint, cfg.image_size, cfg.color_constancy)
        resident = shared.get(key) if shared is not None else None
        self.data = DeviceData.build(images, meta, dataset.labels, folds, cfg.fold, dataset.image_ids, device,
                                     resident=resident)
        if shared is not None:
            shared.setdefault(key, self.data.images)
        spec = input_spec(cfg.backbone)
        self.augment = BatchAugment(crop=cfg.crop_size, mean=tuple(spec.mean), std=tuple(spec.std))

        torch.manual_seed(cfg.seed)
        model = build_model(cfg.backbone, cfg.fusion, num_classes=len(CLASS_CODES), meta_dim=meta.shape[1],
                            meta_layers=cfg.meta_layers, pretrained=cfg.pretrained, weights_dir=weights_dir)
        self.channels_last = uses_channels_last(cfg, device)
        model = model.to(device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.amp_dtype = autocast_dtype(cfg.precision, device)
        weights = (class_weight_tensor(dataset.labels[self.data.train_idx.cpu().numpy()]).to(device)
                   if cfg.class_weighted_loss else None)
        self.criterion = nn.CrossEntropyLoss(weight=weights)
        self.optimizer = make_optimizer(model, cfg)
        self.scheduler = make_scheduler(self.optimizer, cfg)

        self.history: list[dict[str, Any]] = []
        self.epoch = 0
        self.wall_before = 0.0  # wall time of earlier sessions of this run, up to their last checkpoint
        self.sessions = 1
        state = _load_checkpoint(self.ckpt_path)
        if state is not None and (not isinstance(state, dict) or state.get("run_id") != cfg.run_id
                                  or not {"model", "optimizer", "scheduler", "history", "epoch"} <= set(state)):
            _log(f"[train] checkpoint {self.ckpt_path} does not belong to run {cfg.run_id} or is incomplete; "
                 "starting this run again")
            state = None
        if state is not None:
            model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.history = state["history"]
            self.epoch = state["epoch"]
            self.wall_before = float(state.get("wall_time_s", 0.0))
            self.sessions = int(state.get("sessions", 1)) + 1
            _log(f"[{cfg.run_id}] resuming after epoch {self.epoch}/{cfg.epochs}")
        log_event(runs_dir, cfg.run_id, f"resume@{self.epoch}" if self.epoch else "start")
        self.train_model = torch.compile(model) if cfg.compile else model
        self.step = TrainStep(self.train_model, self.criterion, self.optimizer, cfg.batch_size, self.amp_dtype,
                              cuda_graph=cuda_graphs_wanted(cfg.cuda_graphs, device))
        self.stream = torch.cuda.Stream(device) if together and device.type == "cuda" else None
        self.probs: np.ndarray | None = None
        self._bar = None
        self._last_ckpt: float | None = None

    @property
    def done(self) -> bool:
        return self.epoch >= self.cfg.epochs

    def run_epoch_iter(self) -> EpochIter:
        """Start the next epoch (its batches are queued by the returned iterator)."""
        cfg, epoch = self.cfg, self.epoch
        self._bar = None
        if self.progress and sys.stderr.isatty() and not self.together:
            from tqdm import tqdm

            self._bar = tqdm(total=0, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False)

        def on_batch(i: int, n: int, bar=self._bar) -> None:
            if bar is not None:
                bar.total = n
                bar.update(1)

        if not self.together:  # dropout etc.: same stream after a resume (together, runs share the generator)
            torch.manual_seed(cfg.seed * 100_003 + epoch)
        if self.stream is not None:  # the run's stream sees everything queued before (uploads, evaluation)
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
        gen = iter_train_epoch(self.train_model, self.data, self.augment, self.criterion, self.optimizer, cfg, epoch,
                               self.device, self.amp_dtype, self.channels_last, on_batch, step=self.step)
        return EpochIter(gen, self.stream)

    def save_checkpoint(self) -> None:
        """The whole state after ``self.epoch`` epochs, written atomically."""
        _save_checkpoint(self.ckpt_path, {"run_id": self.cfg.run_id, "epoch": self.epoch,
                                          "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                                          "scheduler": self.scheduler.state_dict(), "history": self.history,
                                          "config": self.cfg.to_dict(), "wall_time_s": self.wall_time(),
                                          "sessions": self.sessions})
        self._last_ckpt = time.monotonic()

    def wall_time(self) -> float:
        """Seconds this run has taken so far, earlier (interrupted) sessions included."""
        return self.wall_before + time.perf_counter() - self.t_start

    def end_epoch(self, row: dict[str, float], force_checkpoint: bool = False) -> None:
        """Schedule, evaluate, record and checkpoint the epoch that just ended.

        The checkpoint is written after the first and the last epoch, when ``force_checkpoint``, and
        otherwise once ``cfg.checkpoint_interval_s`` have passed since the last one (0: every epoch).
        """
        from .evaluate import mean_class_recall

        cfg = self.cfg
        if self._bar is not None:
            self._bar.close()
        if self.stream is not None:
            torch.cuda.current_stream(self.device).wait_stream(self.stream)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        self.probs, val_loss = evaluate_model(self.model, self.data, self.augment, self.device, self.amp_dtype,
                                              self.channels_last, criterion=self.criterion)
        val_mcr = mean_class_recall(self.data.labels[self.data.val_idx].cpu().numpy(), self.probs)
        self.epoch += 1
        row = {"epoch": self.epoch, "lr": lr, "train_loss": row["train_loss"], "val_loss": val_loss,
               "val_mcr": val_mcr, "epoch_time_s": row["epoch_time_s"], "images_per_s": row["images_per_s"]}
        self.history.append(row)
        if force_checkpoint or self.done or self._last_ckpt is None or \
                time.monotonic() - self._last_ckpt >= cfg.checkpoint_interval_s:
            self.save_checkpoint()
        if self.progress:
            _log(f"[{cfg.backbone}/{cfg.fusion}/fold {cfg.fold}] epoch {self.epoch}/{cfg.epochs} "
                 f"loss {row['train_loss']:.4f} val_loss {val_loss:.4f} val MCR {val_mcr:.4f} lr {lr:.2e} "
                 f"{row['images_per_s']:.0f} img/s")

    def finish(self) -> dict[str, Any]:
        """Write the record of the last epoch's model (the reported model, as DESIGN.md says)."""
        from .evaluate import confusion, mean_class_recall, per_class_recall

        cfg, data, runs_dir = self.cfg, self.data, self.runs_dir
        probs = self.probs
        if probs is None:  # resumed after the last epoch's checkpoint
            probs, _ = evaluate_model(self.model, data, self.augment, self.device, self.amp_dtype, self.channels_last)
        y_val = data.labels[data.val_idx].cpu().numpy()
        history = self.history
        train_time = sum(h["epoch_time_s"] for h in history)
        n_train_seen = sum(h["images_per_s"] * h["epoch_time_s"] for h in history)
        metrics = {
            "run_id": cfg.run_id,
            "mcr": float(mean_class_recall(y_val, probs)),
            "per_class_recall": {c: float(v) for c, v in per_class_recall(y_val, probs).items()},
            "confusion_matrix": np.asarray(confusion(y_val, probs)).astype(int).tolist(),
            "epochs_done": len(history),
            "wall_time_s": self.wall_time(),
            "sessions": self.sessions,
            "train_time_s": train_time,
            "images_per_s": n_train_seen / max(train_time, 1e-9),
            "device": _device_name(self.device),
            "torch": torch.__version__,
            "n_val": int(len(y_val)),
            "n_train": int(len(data.train_idx)),
            "data_kind": self.dataset.kind,
            "precision": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "float32",
            "channels_last": self.channels_last,
            "execution": {**self.step.describe(), "trained_together": self.together},
        }
        final = runs_dir / cfg.run_id
        with staged_dir(final) as stage:
            atomic_write_json(stage / "config.json", {**cfg.to_dict(), "run_id": cfg.run_id})
            atomic_write_text(stage / "history.csv", pd.DataFrame(history).to_csv(index=False))
            atomic_write_json(stage / "metrics.json", metrics)
            pred = pd.DataFrame(probs, columns=list(CLASS_CODES))
            pred.insert(0, "image", data.val_ids)
            atomic_write_text(stage / "predictions.csv", pred.to_csv(index=False, float_format="%.8f"))
            atomic_write_text(stage / "labels.csv", pd.DataFrame({"image": data.val_ids,
                                                                  "dx": [DX_CODES[i] for i in y_val]}).to_csv(index=False))
            try:  # a hard link keeps the work checkpoint until the record is in place
                os.link(self.ckpt_path, stage / "checkpoint.pt")
            except OSError:
                shutil.copy2(self.ckpt_path, stage / "checkpoint.pt")
            atomic_write_json(stage / "manifest.json", {"run_id": cfg.run_id, "files": {
                n: {"bytes": (stage / n).stat().st_size} for n in RECORD_FILES}})
        shutil.rmtree(self.work, ignore_errors=True)
        log_event(runs_dir, cfg.run_id, "complete")
        if self.progress:
            _log(f"[{cfg.run_id}] done: MCR {metrics['mcr']:.4f} on {metrics['n_val']} validation images "
                 f"({metrics['wall_time_s']:.0f} s, {metrics['device']})")
        return metrics
