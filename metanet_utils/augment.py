"""Batched augmentation on whatever device the images are on (no CPU data loader).

The paper's training augmentation (random crop 224 from 300, horizontal and vertical
flips, random rotation, brightness/contrast/saturation jitter) is done for a whole
batch at once with per-sample random parameters: crop, flips and rotation are one
affine transform per sample, applied by a single ``grid_sample``; the colour jitter is
per-sample arithmetic. Evaluation is a centre crop. Input is the uint8 cache layout
``B x S x S x 3``; output is normalised float ``B x 3 x crop x crop``.

Example:
    >>> import torch
    >>> aug = BatchAugment(crop=56, mean=(0.5,) * 3, std=(0.5,) * 3)
    >>> x = torch.randint(0, 256, (4, 64, 64, 3), dtype=torch.uint8)
    >>> aug(x, train=True, generator=torch.Generator().manual_seed(0)).shape
    torch.Size([4, 3, 56, 56])
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

__all__ = ["BatchAugment", "center_crop"]


def center_crop(x: torch.Tensor, crop: int) -> torch.Tensor:
    """Centre ``crop x crop`` of an ``B x C x H x W`` tensor."""
    h, w = x.shape[-2:]
    if crop > h or crop > w:
        raise ValueError(f"crop {crop} is larger than the image {h}x{w}")
    top, left = (h - crop) // 2, (w - crop) // 2
    return x[..., top:top + crop, left:left + crop]


@dataclass
class BatchAugment:
    """Per-sample random augmentation of a uint8 batch, on its own device.

    Attributes:
        crop: output side (224, or 331 for PNASNet).
        mean, std: normalisation of the backbone's pretraining, in 0..1 units.
        rotation: maximum absolute rotation in degrees (uniform in +-rotation).
        brightness, contrast, saturation: jitter strengths (factor uniform in 1 +- value).
        hflip, vflip: probability 0.5 each when True.
    """

    crop: int
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    rotation: float = 30.0
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hflip: bool = True
    vflip: bool = True

    _constants: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        # made once per device: a tensor built from Python numbers on a GPU is a blocking host-to-device
        # copy, which would stall the CPU until the GPU has finished all queued work, every batch
        key = (x.device, x.dtype)
        if key not in self._constants:
            self._constants[key] = (torch.tensor(self.mean, dtype=x.dtype).view(1, 3, 1, 1).to(x.device),
                                    torch.tensor(self.std, dtype=x.dtype).view(1, 3, 1, 1).to(x.device))
        mean, std = self._constants[key]
        return (x - mean) / std

    @staticmethod
    def _to_float(x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected a uint8 batch B x H x W x 3, got {tuple(x.shape)} {x.dtype}")
        return x.permute(0, 3, 1, 2).float().div_(255.0)

    def __call__(self, x: torch.Tensor, train: bool, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment (``train``) or centre-crop a uint8 ``B x S x S x 3`` batch; returns float NCHW."""
        img = self._to_float(x)
        if not train:
            return self._normalise(center_crop(img, self.crop)).contiguous()
        b, _, h, w = img.shape
        if self.crop > h or self.crop > w:
            raise ValueError(f"crop {self.crop} is larger than the cached image {h}x{w}")
        dev = img.device

        def u(lo: float, hi: float) -> torch.Tensor:
            return torch.rand(b, device=dev, generator=generator) * (hi - lo) + lo

        angle = u(-self.rotation, self.rotation) * (math.pi / 180.0)
        sx = torch.where(u(0, 1) < 0.5, -1.0, 1.0) if self.hflip else torch.ones(b, device=dev)
        sy = torch.where(u(0, 1) < 0.5, -1.0, 1.0) if self.vflip else torch.ones(b, device=dev)
        # crop offset in normalised coordinates: the crop window's centre stays inside the image
        tx = u(-1, 1) * (w - self.crop) / w
        ty = u(-1, 1) * (h - self.crop) / h
        kx, ky = self.crop / w, self.crop / h
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack([
            torch.stack([kx * cos * sx, -kx * sin * sy, tx], dim=1),
            torch.stack([ky * sin * sx, ky * cos * sy, ty], dim=1),
        ], dim=1)
        grid = F.affine_grid(theta, (b, 3, self.crop, self.crop), align_corners=False)
        out = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

        # colour jitter, per sample (torchvision's definitions: blend with black / mean gray / grayscale)
        bf = u(1 - self.brightness, 1 + self.brightness).view(b, 1, 1, 1)
        out = (out * bf).clamp_(0, 1)
        gray = (0.299 * out[:, 0] + 0.587 * out[:, 1] + 0.114 * out[:, 2]).unsqueeze(1)
        cf = u(1 - self.contrast, 1 + self.contrast).view(b, 1, 1, 1)
        out = ((out - gray.mean(dim=(2, 3), keepdim=True)) * cf + gray.mean(dim=(2, 3), keepdim=True)).clamp_(0, 1)
        gray = (0.299 * out[:, 0] + 0.587 * out[:, 1] + 0.114 * out[:, 2]).unsqueeze(1)
        sf = u(1 - self.saturation, 1 + self.saturation).view(b, 1, 1, 1)
        out = ((out - gray) * sf + gray).clamp_(0, 1)
        return self._normalise(out).contiguous()
