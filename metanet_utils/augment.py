"""Training batches made on the device from the uint8 image cache in device memory; no CPU data loader.

The paper's augmentation (random crop, both flips, rotation, brightness / contrast / saturation jitter) runs on a
batch with per-sample parameters: crop, flips and rotation are one affine ``grid_sample``. Evaluation is a centre
crop. Input: uint8 ``B x H x W x 3``; output: normalised float ``B x 3 x crop x crop``.

Example:
    >>> aug = BatchAugment(crop=56, mean=(0.5,) * 3, std=(0.5,) * 3)
    >>> x = torch.randint(0, 256, (4, 64, 64, 3), dtype=torch.uint8)
    >>> aug(x, train=True, generator=torch.Generator().manual_seed(0)).shape
    torch.Size([4, 3, 56, 56])
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F


def center_crop(x: torch.Tensor, crop: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    if crop > h or crop > w:
        raise ValueError(f"crop {crop} is larger than the image {h}x{w}")
    top, left = (h - crop) // 2, (w - crop) // 2
    return x[..., top:top + crop, left:left + crop]


@dataclass
class BatchAugment:
    """Per-sample augmentation of a uint8 batch on its device: rotation in +-``rotation`` degrees, jitter factors
    in 1 +- strength, each flip with probability 0.5."""

    crop: int
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    rotation: float = 30.0
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hflip: bool = True
    vflip: bool = True

    PARAMS = ("angle", "fx", "fy", "tx", "ty", "brightness", "contrast", "saturation")
    _constants: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def _const(self, name: str, values, device: torch.device, shape: tuple[int, ...]) -> torch.Tensor:
        """A small constant tensor, made once per device (not a blocking host-to-device copy every batch)."""
        key = (name, device, shape, tuple(values))
        if key not in self._constants:
            self._constants[key] = torch.tensor(values, dtype=torch.float32).view(shape).to(device)
        return self._constants[key]

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        scale = self._const("scale", [1.0 / s for s in self.std], x.device, (1, 3, 1, 1))
        bias = self._const("bias", [-m / s for m, s in zip(self.mean, self.std)], x.device, (1, 3, 1, 1))
        return torch.addcmul(bias, x, scale).contiguous()  # (x - mean) / std

    def _to_float(self, x: torch.Tensor) -> torch.Tensor:  # uint8 B x H x W x 3 -> float NCHW in 0..1
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected a uint8 batch B x H x W x 3, got {tuple(x.shape)} {x.dtype}")
        return x.permute(0, 3, 1, 2).float().div_(255.0)

    def draw(self, b: int, h: int, w: int, device: torch.device | str,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Parameters for ``b`` images of ``h x w``, ``b x 8`` (:attr:`PARAMS`: angle in radians, -1 mirrors, crop
        centre offset in normalised coordinates, jitter factors)."""
        if self.crop > h or self.crop > w:
            raise ValueError(f"crop {self.crop} is larger than the cached image {h}x{w}")
        device = torch.device(device)
        r = torch.rand(b, 8, device=device, generator=generator)
        rot = self.rotation * math.pi / 180.0
        sx, sy = (w - self.crop) / w, (h - self.crop) / h
        lo = [-rot, 0.0, 0.0, -sx, -sy, 1 - self.brightness, 1 - self.contrast, 1 - self.saturation]
        span = [2 * rot, 1.0, 1.0, 2 * sx, 2 * sy, 2 * self.brightness, 2 * self.contrast, 2 * self.saturation]
        u = torch.addcmul(self._const("lo", lo, device, (1, 8)), r, self._const("span", span, device, (1, 8)))
        flip_on = self._const("flip_on", [float(self.hflip), float(self.vflip)], device, (1, 2))
        u[:, 1:3] = 1.0 - 2.0 * ((u[:, 1:3] < 0.5) * flip_on)  # -1 mirrors
        return u

    def apply(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Warp, colour-jitter and normalise a uint8 batch with parameters of :meth:`draw`."""
        return self._warp_and_jitter(self._to_float(x), params)

    def _warp_and_jitter(self, img: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        b, _, h, w = img.shape
        angle, fx, fy, tx, ty, bright, contrast, sat = params.unbind(1)
        c, s = torch.cos(angle), torch.sin(angle)
        # output pixel -> source pixel: scale to the crop, rotate, mirror, shift
        rot = torch.stack([c, -s, s, c], dim=1).view(b, 2, 2)
        flips = torch.stack([fx, fy], dim=1).view(b, 1, 2)
        k = self._const("k", [self.crop / w, self.crop / h], img.device, (1, 2, 1))
        theta = torch.cat([rot * flips * k, torch.stack([tx, ty], dim=1).view(b, 2, 1)], dim=2)
        grid = F.affine_grid(theta, (b, 3, self.crop, self.crop), align_corners=False)
        out = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

        # colour jitter as torchvision: blend with black, the mean gray, the grayscale
        weights = self._const("gray", [0.299, 0.587, 0.114], img.device, (1, 3, 1, 1))
        out = out.mul_(bright.view(b, 1, 1, 1)).clamp_(0, 1)
        mean_gray = (out * weights).sum(dim=1, keepdim=True).mean(dim=(2, 3), keepdim=True)
        out = torch.lerp(mean_gray, out, contrast.view(b, 1, 1, 1)).clamp_(0, 1)
        gray = (out * weights).sum(dim=1, keepdim=True)
        out = torch.lerp(gray, out, sat.view(b, 1, 1, 1)).clamp_(0, 1)
        return self._normalise(out)

    def __call__(self, x: torch.Tensor, train: bool, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment (``train``) or centre-crop a uint8 batch."""
        img = self._to_float(x)
        if not train:
            return self._normalise(center_crop(img, self.crop))
        return self._warp_and_jitter(img, self.draw(*x.shape[:3], x.device, generator))


@dataclass
class DeviceData:
    """Images (uint8 NHWC), metadata and labels on the training device, and one fold's rows."""

    images: torch.Tensor
    meta: torch.Tensor
    labels: torch.Tensor
    train_idx: torch.Tensor
    val_idx: torch.Tensor
    val_ids: list[str]

    @classmethod
    def build(cls, images: np.ndarray, meta: np.ndarray, labels: np.ndarray, folds: np.ndarray, fold: int,
              image_ids: list[str], device: torch.device, resident: torch.Tensor | None = None) -> "DeviceData":
        """Upload the arrays; rows with ``folds == fold`` validate; ``resident``: images already on ``device``."""
        if resident is not None:
            imgs = resident
        elif device.type == "cuda":
            free, _total = torch.cuda.mem_get_info(device)
            if images.nbytes > 0.9 * free:
                raise MemoryError(f"the image cache needs {images.nbytes / 2**30:.1f} GiB of GPU memory, "
                                  f"{free / 2**30:.1f} GiB free: use a smaller image_size or a larger GPU")
            imgs = torch.from_numpy(np.ascontiguousarray(images)).to(device, non_blocking=True)
        else:  # read the memory-mapped cache into RAM once
            imgs = torch.from_numpy(np.array(images, copy=True))
        val = folds == fold
        return cls(imgs, torch.as_tensor(np.array(meta), dtype=torch.float32, device=device),
                   torch.as_tensor(np.array(labels), dtype=torch.long, device=device),
                   torch.as_tensor(np.flatnonzero(~val), device=device),
                   torch.as_tensor(np.flatnonzero(val), device=device), [image_ids[i] for i in np.flatnonzero(val)])


def prepare_batch(data: DeviceData, augment: BatchAugment, channels_last: bool = False) -> Callable:
    """``prepare(idx, params) -> (x, meta, y)``: rows ``idx`` augmented with ``params``, metadata and labels."""
    def prepare(idx: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = augment.apply(data.images[idx], params)
        x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        return x, data.meta[idx], data.labels[idx]
    return prepare
