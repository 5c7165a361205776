"""One training run as torchvision's ``references/classification`` writes it: a config in, a record out.

:func:`train_one_epoch` and :func:`evaluate` loop over one fold of the uint8 image cache in device memory, augmented
there a batch at a time. :func:`train_run` uses the paper's class-weighted cross-entropy, SGD and MultiStepLR, saves
one checkpoint dict per epoch (``results/runs/.work/<run_id>/``), resumes from it after a kill and writes the record
``results/runs/<run_id>/`` atomically. Shuffling, augmentation and dropout are seeded by ``(seed, epoch)``, so a
resumed run sees the batches of an uninterrupted one without generator state in the checkpoint.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from .atomic import atomic_write_json, atomic_write_text, atomic_write_with, staged_dir
from .augment import BatchAugment, DeviceData, prepare_batch
from .config import RunConfig
from .constants import CLASS_CODES, DX_CODES
from .evaluate import RECORD_FILES, confusion, is_complete, mean_class_recall, per_class_recall
from .metadata import encode
from .models import build_model, channels_last_preferred, input_spec
from .paths import runs_dir as default_runs_dir
from .splits import class_weights


def record_dir(cfg: RunConfig | str, runs_dir: str | Path | None = None) -> Path:
    """``<runs_dir>/<run_id>`` of a config or run id (default ``results/runs``)."""
    return Path(runs_dir or default_runs_dir()) / (cfg if isinstance(cfg, str) else cfg.run_id)


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / "metrics.json").read_text())


def pick_device(device: str | None = None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """``auto``: bf16 on a GPU, None (fp32) on the CPU."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    return torch.float16 if precision == "fp16" else torch.bfloat16


def set_determinism(seed: int, deterministic: bool) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.benchmark = not deterministic


def class_weight_tensor(train_labels: np.ndarray, n_classes: int = 7) -> torch.Tensor:
    return torch.as_tensor(class_weights(train_labels, n_classes=n_classes), dtype=torch.float32)


def make_optimizer(model: nn.Module, cfg: RunConfig) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def sgd_step(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, prepare: Callable,
             batch_size: int | None = None, amp_dtype: torch.dtype | None = None) -> Callable:
    """The eager training step ``step(idx, params) -> loss`` (the loss stays on the device); ``batch_size`` is
    for a CUDA graph step (:func:`metanet_utils.ops.step.graph_step`, same arguments)."""
    def step(idx: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        x, meta, y = prepare(idx, params)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            loss = criterion(model(x, meta).float(), y)
        loss.backward()
        optimizer.step()
        return loss.detach()
    return step


def iter_train_epoch(model: nn.Module, data: DeviceData, augment: BatchAugment, criterion: nn.Module,
                     optimizer: torch.optim.Optimizer, cfg: RunConfig, epoch: int, device: torch.device,
                     amp_dtype: torch.dtype | None = None, channels_last: bool = False,
                     step: Callable | None = None) -> Iterator[int]:
    """:func:`train_one_epoch` as a generator: yields after each batch, returns the epoch's row."""
    model.train()
    step = step or sgd_step(model, criterion, optimizer, prepare_batch(data, augment, channels_last), None, amp_dtype)
    gen = torch.Generator(device=device).manual_seed(cfg.seed * 100_003 + epoch)
    order = data.train_idx[torch.randperm(len(data.train_idx), device=device, generator=gen)]
    params = augment.draw(len(order), data.images.shape[1], data.images.shape[2], device, gen)
    bs = cfg.batch_size
    n_batches = len(order) // bs + (1 if len(order) % bs >= 2 else 0)  # a batch of one would break BatchNorm
    total, seen, t0 = torch.zeros((), device=device), 0, time.perf_counter()
    for b in range(n_batches):
        idx = order[b * bs:(b + 1) * bs]
        total += step(idx, params[b * bs:(b + 1) * bs]) * len(idx)
        seen += len(idx)
        yield b
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()
    dt = time.perf_counter() - t0
    return {"train_loss": float(total) / max(seen, 1), "epoch_time_s": dt, "images_per_s": seen / max(dt, 1e-9)}


def train_one_epoch(model: nn.Module, data: DeviceData, augment: BatchAugment, criterion: nn.Module,
                    optimizer: torch.optim.Optimizer, cfg: RunConfig, epoch: int, device: torch.device,
                    amp_dtype: torch.dtype | None = None, channels_last: bool = False,
                    step: Callable | None = None) -> dict[str, float]:
    """One pass over the training fold in an order fixed by ``(seed, epoch)``; returns ``{"train_loss",
    "epoch_time_s", "images_per_s"}``."""
    batches = iter_train_epoch(model, data, augment, criterion, optimizer, cfg, epoch, device, amp_dtype,
                               channels_last, step)
    try:
        while True:
            next(batches)
    except StopIteration as end:
        return end.value


@torch.no_grad()
def evaluate(model: nn.Module, data: DeviceData, augment: BatchAugment, device: torch.device,
             amp_dtype: torch.dtype | None = None, channels_last: bool = False, batch_size: int = 128,
             criterion: nn.Module | None = None) -> tuple[np.ndarray, float | None]:
    """Softmax probabilities of the validation fold (centre crops) and the criterion on the whole fold (or None)."""
    model.eval()
    logits = []
    for s in range(0, len(data.val_idx), batch_size):
        idx = data.val_idx[s:s + batch_size]
        x = augment(data.images[idx], train=False)
        x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits.append(model(x, data.meta[idx]).float())
    logits = torch.cat(logits)
    loss = float(criterion(logits, data.labels[data.val_idx])) if criterion is not None else None
    return torch.softmax(logits, dim=1).cpu().numpy().astype(np.float64), loss


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write_with(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path, run_id: str) -> dict[str, Any] | None:
    """The checkpoint dict of ``run_id``, or None (said when it is unreadable, another run's or incomplete)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False) if path.is_file() else None
        if state is None or (isinstance(state, dict) and state.get("run_id") == run_id
                             and {"model", "optimizer", "scheduler", "epoch", "history"} <= set(state)):
            return state
        why = f"does not belong to run {run_id} or is incomplete"
    except Exception as e:  # noqa: BLE001 - a half-written file
        why = f"is unreadable ({type(e).__name__})"
    print(f"[train] checkpoint {path} {why}; starting this run again", flush=True)
    return None


def log_event(runs_dir: Path, run_id: str, event: str) -> None:
    """Append one line to ``<runs_dir>/.events.log``: which worker started, resumed or completed which run."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    with open(runs_dir / ".events.log", "a") as log:
        log.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {os.uname().nodename} pid={os.getpid()} {event} {run_id}\n")


class Run:
    """One run while it trains, resumed from its checkpoint if any; ``images``: the cache already on ``device``."""

    def __init__(self, cfg: RunConfig, dataset, runs_dir: Path, device: torch.device, progress: bool = True,
                 weights_dir: str | Path | None = None, make_step: Callable | None = None,
                 images: torch.Tensor | None = None) -> None:
        if cfg.data_fingerprint and cfg.data_fingerprint != dataset.fingerprint:
            raise ValueError(f"run {cfg.run_id} was configured for data {cfg.data_fingerprint}, "
                             f"but the data given is {dataset.fingerprint}")
        set_determinism(cfg.seed, cfg.deterministic)
        self.cfg, self.runs_dir, self.device, self.progress = cfg, Path(runs_dir), device, progress
        self.started, self.wall_before, self.sessions = time.perf_counter(), 0.0, 1
        self.checkpoint_path = self.runs_dir / ".work" / cfg.run_id / "checkpoint.pt"
        for p in self.checkpoint_path.parent.glob(".checkpoint.pt.tmp-*"):  # what a killed worker left
            p.unlink(missing_ok=True)
        for p in (*self.runs_dir.glob(f".{cfg.run_id}.stage-*"), *self.runs_dir.glob(f".{cfg.run_id}.old-*")):
            shutil.rmtree(p, ignore_errors=True)
        features = cfg.meta_features if cfg.fusion != "none" else ()
        meta = encode(dataset.df, features=features)[0] if features else np.zeros((len(dataset.df), 0), np.float32)
        self.data = DeviceData.build(dataset.images(cfg.image_size, cfg.color_constancy, progress=progress), meta,
                                     dataset.labels, dataset.folds(cfg.n_folds, cfg.split_scheme, cfg.split_seed),
                                     cfg.fold, dataset.image_ids, device, resident=images)
        self.data_kind, spec = dataset.kind, input_spec(cfg.backbone)
        self.augment = BatchAugment(cfg.crop_size, tuple(spec.mean), tuple(spec.std))
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.backbone, cfg.fusion, num_classes=len(CLASS_CODES), meta_dim=meta.shape[1],
                            meta_layers=cfg.meta_layers, pretrained=cfg.pretrained, weights_dir=weights_dir).to(device)
        self.channels_last = device.type == "cuda" and (cfg.channels_last == "on" or (
            cfg.channels_last == "auto" and channels_last_preferred(cfg.backbone)))
        self.amp_dtype = autocast_dtype(cfg.precision, device)
        self.model = model.to(memory_format=torch.channels_last) if self.channels_last else model
        weights = class_weight_tensor(dataset.labels[self.data.train_idx.cpu().numpy()]).to(device)
        self.criterion = nn.CrossEntropyLoss(weight=weights)
        self.optimizer = make_optimizer(self.model, cfg)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, list(cfg.milestones), cfg.lr_gamma)
        self.epoch, self.history, self.probs, self.last_checkpoint = 0, [], None, None
        if (state := load_checkpoint(self.checkpoint_path, cfg.run_id)) is not None:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.epoch, self.history = state["epoch"], state["history"]
            self.wall_before, self.sessions = float(state.get("wall_time_s", 0.0)), int(state.get("sessions", 1)) + 1
            print(f"[{cfg.run_id}] resuming after epoch {self.epoch}/{cfg.epochs}", flush=True)
        log_event(self.runs_dir, cfg.run_id, f"resume@{self.epoch}" if self.epoch else "start")
        self.step = (make_step or sgd_step)(self.model, self.criterion, self.optimizer,
                                            prepare_batch(self.data, self.augment, self.channels_last),
                                            cfg.batch_size, self.amp_dtype)

    def wall_time(self) -> float:
        return self.wall_before + time.perf_counter() - self.started

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.cfg.run_id, "config": self.cfg.to_dict(), "epoch": self.epoch,
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "history": self.history,
                "wall_time_s": self.wall_time(), "sessions": self.sessions}

    def end_epoch(self, row: dict[str, float], force_checkpoint: bool = False) -> None:
        """Step the schedule, evaluate, add to the history, checkpoint (first and last epoch, when forced, else
        every ``cfg.checkpoint_interval_s``)."""
        cfg, lr = self.cfg, self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        self.probs, val_loss = evaluate(self.model, self.data, self.augment, self.device, self.amp_dtype,
                                        self.channels_last, criterion=self.criterion)
        val_mcr = mean_class_recall(self.data.labels[self.data.val_idx].cpu().numpy(), self.probs)
        self.epoch += 1
        self.history.append({"epoch": self.epoch, "lr": lr, "train_loss": row["train_loss"], "val_loss": val_loss,
                             "val_mcr": val_mcr, "epoch_time_s": row["epoch_time_s"],
                             "images_per_s": row["images_per_s"]})
        if force_checkpoint or self.epoch >= cfg.epochs or self.last_checkpoint is None or \
                time.monotonic() - self.last_checkpoint >= cfg.checkpoint_interval_s:
            save_checkpoint(self.checkpoint_path, self.state_dict())
            self.last_checkpoint = time.monotonic()
        if self.progress:
            print(f"[{cfg.backbone}/{cfg.fusion}/fold {cfg.fold}] epoch {self.epoch}/{cfg.epochs} loss "
                  f"{row['train_loss']:.4f} val_loss {val_loss:.4f} val MCR {val_mcr:.4f} lr {lr:.2e} "
                  f"{row['images_per_s']:.0f} img/s", flush=True)

    def write_record(self, trained_together: bool = False) -> dict[str, Any]:
        """Write the record of the last epoch's model; return its metrics."""
        cfg, data, history = self.cfg, self.data, self.history
        probs = self.probs if self.probs is not None else evaluate(  # None: resumed after the last epoch
            self.model, data, self.augment, self.device, self.amp_dtype, self.channels_last)[0]
        y_val = data.labels[data.val_idx].cpu().numpy()
        train_time = sum(h["epoch_time_s"] for h in history)
        metrics = {
            "run_id": cfg.run_id, "mcr": float(mean_class_recall(y_val, probs)),
            "per_class_recall": {c: float(v) for c, v in per_class_recall(y_val, probs).items()},
            "confusion_matrix": np.asarray(confusion(y_val, probs)).astype(int).tolist(),
            "epochs_done": len(history), "wall_time_s": self.wall_time(), "sessions": self.sessions,
            "train_time_s": train_time,
            "images_per_s": sum(h["images_per_s"] * h["epoch_time_s"] for h in history) / max(train_time, 1e-9),
            "device": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else
            f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)", "torch": torch.__version__,
            "n_val": len(y_val), "n_train": len(data.train_idx), "data_kind": self.data_kind,
            "precision": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "float32",
            "channels_last": self.channels_last,
            "execution": {"cuda_graphs": False, **getattr(self.step, "describe", dict)(),
                          "trained_together": trained_together}}
        with staged_dir(self.runs_dir / cfg.run_id) as stage:
            atomic_write_json(stage / "config.json", {**cfg.to_dict(), "run_id": cfg.run_id})
            atomic_write_text(stage / "history.csv", pd.DataFrame(history).to_csv(index=False))
            atomic_write_json(stage / "metrics.json", metrics)
            pred = pd.DataFrame(probs, columns=list(CLASS_CODES))
            pred.insert(0, "image", data.val_ids)
            atomic_write_text(stage / "predictions.csv", pred.to_csv(index=False, float_format="%.8f"))
            atomic_write_text(stage / "labels.csv", pd.DataFrame({"image": data.val_ids, "dx": [
                DX_CODES[i] for i in y_val]}).to_csv(index=False))
            try:  # a hard link keeps the work checkpoint until the record is in place
                os.link(self.checkpoint_path, stage / "checkpoint.pt")
            except OSError:
                shutil.copy2(self.checkpoint_path, stage / "checkpoint.pt")
            atomic_write_json(stage / "manifest.json", {"run_id": cfg.run_id, "files": {
                n: {"bytes": (stage / n).stat().st_size} for n in RECORD_FILES}})
        shutil.rmtree(self.checkpoint_path.parent, ignore_errors=True)
        log_event(self.runs_dir, cfg.run_id, "complete")
        if self.progress:
            print(f"[{cfg.run_id}] done: MCR {metrics['mcr']:.4f} on {metrics['n_val']} validation images "
                  f"({metrics['wall_time_s']:.0f} s, {metrics['device']})", flush=True)
        return metrics


def train_run(cfg: RunConfig, dataset, runs_dir: str | Path | None = None, device: str | None = None,
              progress: bool = True, weights_dir: str | Path | None = None, make_step: Callable | None = None,
              stop_after_epochs: int | None = None) -> dict[str, Any]:
    """Train (or resume, or skip) one run into ``runs_dir`` (default ``results/runs``); return its metrics.
    ``make_step``: as :func:`sgd_step`; ``stop_after_epochs`` (testing): stop as a kill would."""
    runs_dir = Path(runs_dir or default_runs_dir())
    if is_complete(runs_dir / cfg.run_id):
        return read_metrics(runs_dir / cfg.run_id)
    run = Run(cfg, dataset, runs_dir, pick_device(device), progress, weights_dir, make_step)
    for n in range(1, cfg.epochs - run.epoch + 1):
        torch.manual_seed(cfg.seed * 100_003 + run.epoch)  # dropout: the same draws after a resume
        row = train_one_epoch(run.model, run.data, run.augment, run.criterion, run.optimizer, cfg, run.epoch,
                              run.device, run.amp_dtype, run.channels_last, run.step)
        run.end_epoch(row, force_checkpoint=n == stop_after_epochs)
        if n == stop_after_epochs and run.epoch < cfg.epochs:
            return {"interrupted": True, "epochs_done": run.epoch}
    return run.write_record()
