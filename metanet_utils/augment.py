"""Batched augmentation on whatever device the images are on (no CPU data loader).

The paper's training augmentation (random crop 224 from 300, horizontal and vertical
flips, random rotation, brightness/contrast/saturation jitter) is done for a whole
batch at once with per-sample random parameters: crop, flips and rotation are one
affine transform per sample, applied by a single ``grid_sample``; the colour jitter is
per-sample arithmetic. Evaluation is a centre crop. Input is the uint8 cache layout
``B x S x S x 3``; output is normalised float ``B x 3 x crop x crop``.

:meth:`BatchAugment.draw` draws every per-sample parameter in one call on the device, and
:meth:`BatchAugment.apply` applies given parameters; constants live on the device, so a batch costs
a few dozen small kernels and never blocks the CPU.

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

    # ------------------------------------------------------------------ constants on the device

    def _const(self, name: str, values, device: torch.device, shape: tuple[int, ...]) -> torch.Tensor:
        """A small constant tensor, made once per device: a tensor built from Python numbers on a GPU is
        a blocking host-to-device copy, which would stall the CPU until the GPU has finished all queued
        work, every batch."""
        key = (name, device, shape, tuple(values))
        t = self._constants.get(key)
        if t is None:
            t = self._constants[key] = torch.tensor(values, dtype=torch.float32).view(shape).to(device)
        return t

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        scale = self._const("scale", [1.0 / s for s in self.std], x.device, (1, 3, 1, 1))
        bias = self._const("bias", [-m / s for m, s in zip(self.mean, self.std)], x.device, (1, 3, 1, 1))
        return torch.addcmul(bias, x, scale)  # (x - mean) / std in one kernel

    @staticmethod
    def _check_batch(x: torch.Tensor) -> None:
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected a uint8 batch B x H x W x 3, got {tuple(x.shape)} {x.dtype}")

    def _check_crop(self, h: int, w: int) -> None:
        if self.crop > h or self.crop > w:
            raise ValueError(f"crop {self.crop} is larger than the cached image {h}x{w}")

    @classmethod
    def _to_float(cls, x: torch.Tensor) -> torch.Tensor:
        cls._check_batch(x)
        return x.permute(0, 3, 1, 2).float().div_(255.0)

    # ------------------------------------------------------------------ random parameters

    PARAMS = ("angle", "fx", "fy", "tx", "ty", "brightness", "contrast", "saturation")

    def draw(self, b: int, h: int, w: int, device: torch.device | str,
             generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Per-sample random parameters for ``b`` images of ``h x w``, drawn in one call on ``device``.

        Returns tensors of length ``b``: ``angle`` (radians, uniform in +-rotation), ``fx``/``fy``
        (-1 mirrors, 1 keeps; probability 0.5 each when enabled), ``tx``/``ty`` (crop centre offset in
        normalised coordinates, uniform, the crop window stays inside the image), ``brightness``,
        ``contrast``, ``saturation`` (factors uniform in 1 +- strength). They are the columns of
        :meth:`draw_matrix`.
        """
        m = self.draw_matrix(b, h, w, device, generator)
        return {name: m[:, i] for i, name in enumerate(self.PARAMS)}

    def draw_matrix(self, b: int, h: int, w: int, device: torch.device | str,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """The parameters of :meth:`draw` as one ``b x 8`` tensor, columns in :attr:`PARAMS` order
        (a training epoch draws all its batches' parameters at once and slices them)."""
        self._check_crop(h, w)
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

    # ------------------------------------------------------------------ the transform

    def apply(self, x: torch.Tensor, params: dict[str, torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """Warp (crop, flips, rotation: one ``grid_sample``), colour-jitter and normalise a uint8 batch
        with the given per-sample parameters (:meth:`draw`'s dict or :meth:`draw_matrix`'s tensor)."""
        if isinstance(params, torch.Tensor):
            params = {name: params[:, i] for i, name in enumerate(self.PARAMS)}
        img = self._to_float(x)
        b, _, h, w = img.shape
        self._check_crop(h, w)
        dev = img.device
        angle = params["angle"]
        c, s = torch.cos(angle), torch.sin(angle)
        # output pixel -> source pixel: scale to the crop, rotate, mirror, shift
        rot = torch.stack([c, -s, s, c], dim=1).view(b, 2, 2)
        flips = torch.stack([params["fx"], params["fy"]], dim=1).view(b, 1, 2)
        k = self._const("k", [self.crop / w, self.crop / h], dev, (1, 2, 1))
        theta = torch.cat([rot * flips * k, torch.stack([params["tx"], params["ty"]], dim=1).view(b, 2, 1)], dim=2)
        grid = F.affine_grid(theta, (b, 3, self.crop, self.crop), align_corners=False)
        out = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

        # colour jitter, per sample (torchvision's definitions: blend with black, the mean gray, the grayscale)
        weights = self._const("gray", [0.299, 0.587, 0.114], dev, (1, 3, 1, 1))
        out = out.mul_(params["brightness"].view(b, 1, 1, 1)).clamp_(0, 1)
        mean_gray = (out * weights).sum(dim=1, keepdim=True).mean(dim=(2, 3), keepdim=True)
        out = torch.lerp(mean_gray, out, params["contrast"].view(b, 1, 1, 1)).clamp_(0, 1)
        gray = (out * weights).sum(dim=1, keepdim=True)
        out = torch.lerp(gray, out, params["saturation"].view(b, 1, 1, 1)).clamp_(0, 1)
        return self._normalise(out).contiguous()

    def __call__(self, x: torch.Tensor, train: bool, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment (``train``) or centre-crop a uint8 ``B x S x S x 3`` batch; returns float NCHW."""
        if not train:
            return self._normalise(center_crop(self._to_float(x), self.crop)).contiguous()
        self._check_batch(x)
        return self.apply(x, self.draw_matrix(x.shape[0], x.shape[1], x.shape[2], x.device, generator))
