"""Class activation maps (Zhou et al., CVPR 2016) of the three fusion variants (paper Sec. 3.6, Fig. 2).

With global average pooling and a linear head the score of class ``c`` is ``z_c = sum_k w_ck mean_hw(M_k) + b_c``
for the maps ``M`` the head pools; the map is the same sum before pooling, ``CAM_c(x, y) = sum_k w_ck M_k(x, y)``.
``M = F``, the last feature maps, for ``none`` and ``concat``; ``M = F * g``, each channel times its gate, for
``metanet``. Maps have the feature maps' resolution (7 x 7 at a 224 crop).

Example:
    >>> model = build_model("test_resnet", "metanet", pretrained=False).eval()
    >>> cam_maps(model, torch.randn(2, 3, 64, 64), torch.rand(2, 17)).shape  # B x classes x h x w
    torch.Size([2, 7, 2, 2])
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F

from .augment import BatchAugment, center_crop
from .cache import load_image
from .config import RunConfig
from .constants import CLASS_CODES
from .evaluate import labels_to_indices
from .metadata import meta_dim
from .models import build_model, input_spec


class CamOutput(NamedTuple):
    """Maps ``B x h x w`` of one class per image, their class indices and softmax probabilities."""

    cams: np.ndarray
    classes: np.ndarray
    probs: np.ndarray


@torch.no_grad()
def cam_maps(model: Any, images: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
    """Class activation maps of every class, ``B x classes x h x w``."""
    if model.fusion not in ("none", "concat", "metanet"):
        warnings.warn(f"fusion {model.fusion!r}: the head is not linear in the pooled maps, so the class "
                      "activation map only approximates where the score comes from", stacklevel=2)
    if model.fusion != "none" and meta is None:
        raise ValueError(f"fusion {model.fusion!r} needs the metadata of the images")
    maps = model.forward_features(images)
    if model.fusion == "metanet":
        maps = maps * model.gate(meta).to(maps.dtype)[:, :, None, None]
    weight = model.head.weight[:, : maps.shape[1]].to(maps.dtype)  # the columns of the image features
    return torch.einsum("kc,bchw->bkhw", weight, maps)


@torch.no_grad()
def class_activation_map(model: Any, images: torch.Tensor, meta: torch.Tensor | None = None,
                         target: int | str | Sequence[int | str] | None = None) -> CamOutput:
    """The map of one class per image: the predicted class (``target=None``), a class for all, or one per image."""
    meta = None if model.fusion == "none" else meta
    all_maps = cam_maps(model, images, meta)
    probs = torch.softmax(model(images, meta).float(), dim=1).cpu().numpy()
    if target is None:
        classes = probs.argmax(axis=1)
    else:
        seq = [target] * len(images) if isinstance(target, (int, np.integer, str)) else list(target)
        if len(seq) != len(images):
            raise ValueError(f"{len(seq)} targets for {len(images)} images")
        classes = labels_to_indices(seq)
    idx = torch.as_tensor(classes, device=all_maps.device)
    cams = all_maps[torch.arange(len(idx), device=all_maps.device), idx]
    return CamOutput(cams.float().cpu().numpy(), np.asarray(classes, dtype=np.int64), probs)


def normalise_cam(cam: Any) -> np.ndarray:
    """Each map for display: negative evidence clipped to 0, divided by the map's maximum."""
    c = np.maximum(np.asarray(cam, dtype=np.float64), 0.0)
    top = c.max(axis=(-2, -1), keepdims=True)
    return np.where(top > 0, c / np.where(top > 0, top, 1.0), 0.0).astype(np.float32)


def upsample_cam(cam: Any, size: int | tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of ``... x h x w`` maps to ``size`` (``H`` or ``(H, W)``)."""
    arr = np.asarray(cam, dtype=np.float32)
    hw = (size, size) if isinstance(size, (int, np.integer)) else tuple(int(s) for s in size)
    t = torch.from_numpy(np.ascontiguousarray(arr.reshape(-1, 1, *arr.shape[-2:])))
    return F.interpolate(t, size=hw, mode="bilinear", align_corners=False).reshape(*arr.shape[:-2], *hw).numpy()


def overlay(image: Any, cam: Any, alpha: float = 0.45, cmap: str = "jet") -> np.ndarray:
    """``(1 - alpha) * image + alpha * cmap(map)`` as uint8, the map normalised and upsampled to the image."""
    img = np.asarray(image)
    img = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)
    heat = matplotlib.colormaps[cmap](upsample_cam(normalise_cam(cam), img.shape[:2]).clip(0, 1))[..., :3]
    return (((1.0 - alpha) * img[..., :3] + alpha * heat).clip(0, 1) * 255.0 + 0.5).astype(np.uint8)


def load_run_model(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[Any, RunConfig]:
    """The trained model of a run record (last epoch, eval mode) and its :class:`RunConfig`."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file() or not (run_dir / "checkpoint.pt").is_file():
        raise FileNotFoundError(f"{run_dir} holds no config.json and checkpoint.pt: not a trained run")
    cfg = RunConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    dim = meta_dim(cfg.meta_features) if cfg.fusion != "none" else 0
    model = build_model(cfg.backbone, cfg.fusion, num_classes=len(CLASS_CODES), meta_dim=dim,
                        meta_layers=cfg.meta_layers, pretrained=False)
    state = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), cfg


def _positions(dataset: Any, image_ids: Sequence[str]) -> np.ndarray:
    index = {i: k for k, i in enumerate(dataset.image_ids)}
    missing = [i for i in image_ids if i not in index]
    if missing:
        raise KeyError(f"{len(missing)} image(s) not in the data set, e.g. {missing[:3]}")
    return np.array([index[i] for i in image_ids], dtype=np.int64)


def run_inputs(cfg: RunConfig, dataset: Any, image_ids: Sequence[str], device: str | torch.device = "cpu"):
    """What a run's model saw at evaluation: normalised centre crops, metadata (None for ``none``), uint8 crops."""
    if cfg.data_fingerprint and cfg.data_fingerprint != dataset.fingerprint:
        warnings.warn(f"run {cfg.run_id} was trained on data {cfg.data_fingerprint}, not on {dataset.fingerprint}: "
                      "the metadata encoding may differ from training", stacklevel=2)
    pos = _positions(dataset, [str(i) for i in image_ids])
    raw = torch.from_numpy(np.array(dataset.images(cfg.image_size, cfg.color_constancy, progress=False)[pos]))
    spec = input_spec(cfg.backbone)
    x = BatchAugment(crop=cfg.crop_size, mean=tuple(spec.mean), std=tuple(spec.std))(raw, train=False)
    crops = center_crop(raw.permute(0, 3, 1, 2), cfg.crop_size).permute(0, 2, 3, 1).numpy()
    meta = None if cfg.fusion == "none" else torch.as_tensor(dataset.meta(tuple(cfg.meta_features))[0][pos],
                                                             dtype=torch.float32, device=device)
    return x.to(device), meta, np.ascontiguousarray(crops)


def _picture(path: Any, cfg: RunConfig, crop: np.ndarray, size: int = 224) -> np.ndarray:
    """The model's centre crop, redrawn from the original file at ``size`` px where it can be."""
    if size <= crop.shape[0] or not isinstance(path, str) or not Path(path).is_file():
        return crop
    img = torch.from_numpy(np.array(load_image(path, round(size * cfg.image_size / cfg.crop_size),
                                               cfg.color_constancy)))
    return np.ascontiguousarray(center_crop(img.permute(2, 0, 1), size).permute(1, 2, 0))


def pair_cams(runs: Mapping[str, str | Path], image_ids: Sequence[str], dataset: Any, target: str = "pred",
              device: str | torch.device = "cpu") -> list[dict[str, Any]]:
    """Maps of some images under the runs of one fold (``{"none": folder, ...}``), of each model's predicted class
    (the paper does not say which) or the true class: per image ``image``, ``true``, ``picture`` and per fusion
    ``cam``, ``target``, ``pred``, ``p_pred``, ``p_true``, ``correct``, ``backbone``."""
    if target not in ("pred", "true"):
        raise ValueError(f"target={target!r}: use 'pred' or 'true'")
    image_ids = [str(i) for i in image_ids]
    pos = _positions(dataset, image_ids)
    labels = np.asarray(dataset.labels)[pos]
    paths = dataset.df["path"].to_numpy()[pos] if "path" in dataset.df else [None] * len(pos)
    out: list[dict[str, Any]] = [{"image": i, "true": CLASS_CODES[y]} for i, y in zip(image_ids, labels)]
    for fusion, run in runs.items():
        model, cfg = load_run_model(run, device)
        x, meta, crops = run_inputs(cfg, dataset, image_ids, device)
        res = class_activation_map(model, x, meta, target=None if target == "pred" else labels)
        for i, entry in enumerate(out):
            pred, y = int(res.probs[i].argmax()), int(labels[i])
            entry[fusion] = {"cam": res.cams[i], "target": CLASS_CODES[res.classes[i]], "pred": CLASS_CODES[pred],
                             "p_pred": float(res.probs[i, pred]), "p_true": float(res.probs[i, y]),
                             "correct": pred == y, "backbone": cfg.backbone}
            entry.setdefault("picture", _picture(paths[i], cfg, crops[i]))
    return out
