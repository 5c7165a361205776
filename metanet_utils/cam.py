"""Class activation maps (Zhou et al., CVPR 2016) of the three fusion variants (paper Sec. 3.6, Fig. 2).

With global average pooling and a linear head the score of class ``c`` is
``z_c = sum_k w_ck mean_hw(M_k) + b_c``, where ``M`` are the maps the head pools. The class activation map
is the same sum before pooling, ``CAM_c(x, y) = sum_k w_ck M_k(x, y)``, so ``mean_hw(CAM_c) + b_c = z_c``.

* ``none``: ``M = F``, the backbone's last feature maps.
* ``metanet``: ``M = F * g``, every channel times its metadata gate (Sec. 2): the metadata re-weights the
  channels, and with them the map.
* ``concat``: ``M = F`` and the image rows of the head; the metadata adds a per-class constant no pixel owns.

Grad-CAM on these maps equals CAM up to the positive factor ``1 / (h w)`` (``tests/test_cam.py`` checks it
against ``pytorch-grad-cam``). Maps have the feature maps' resolution (7 x 7 at a 224 crop, 2 x 2 at 64 px)
and are upsampled only for display. Notebook 08 picks the cases of Fig. 2 from paired runs and draws them.

Example:
    >>> from metanet_utils.models import build_model
    >>> model = build_model("test_resnet", "metanet", pretrained=False).eval()
    >>> x, m = torch.randn(2, 3, 64, 64), torch.rand(2, 17)
    >>> cam_maps(model, x, m).shape                      # B x classes x h x w
    torch.Size([2, 7, 2, 2])
    >>> class_activation_map(model, x, m).cams.shape      # the map of each image's predicted class
    (2, 2, 2)
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import matplotlib
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .augment import BatchAugment, center_crop
from .cache import load_image
from .config import RunConfig
from .constants import CLASS_CODES, META_FIELDS
from .evaluate import labels_to_indices, load_record, predicted_classes
from .metadata import meta_dim
from .models import build_model, input_spec

__all__ = ["CamOutput", "cam_maps", "class_activation_map", "normalise_cam", "upsample_cam", "overlay",
           "load_run_model", "run_inputs", "paired_runs", "Picked", "pick_cases", "CASE_BOTH_RIGHT",
           "CASE_META_HELPS", "pair_cams", "cams_for_cases"]

#: The two rows of Figure 2 (the ``case`` column of :func:`pick_cases`).
CASE_BOTH_RIGHT = "image-only and MetaNet right"
CASE_META_HELPS = "image-only wrong, MetaNet right"
#: Side in pixels of the displayed images (redrawn from the file when the model's crop is smaller).
DISPLAY_SIZE = 224


# ----------------------------------------------------------------------------- maps


class CamOutput(NamedTuple):
    """:func:`class_activation_map`: raw maps ``B x h x w``, their class indices ``B`` (official order),
    softmax probabilities ``B x classes``."""

    cams: np.ndarray
    classes: np.ndarray
    probs: np.ndarray


@torch.no_grad()
def cam_maps(model: Any, images: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
    """Class activation maps of every class, ``B x classes x h x w``: ``CAM[b, c] = sum_k w_ck M[b, k]``.

    Args:
        model: a :func:`~metanet_utils.models.build_model` model in eval mode.
        images: ``B x 3 x H x W`` normalised images.
        meta: ``B x meta_dim`` metadata (not used by ``none``).
    """
    if model.fusion not in ("none", "concat", "metanet"):
        warnings.warn(f"fusion {model.fusion!r}: the head is not linear in the pooled maps, so the class "
                      "activation map only approximates where the score comes from", stacklevel=2)
    if model.fusion != "none" and meta is None:
        raise ValueError(f"fusion {model.fusion!r} needs the metadata of the images")
    maps = model.forward_features(images)  # F: B x C x h x w
    if model.fusion == "metanet":
        maps = maps * model.gate(meta).to(maps.dtype)[:, :, None, None]  # the gated maps the head pools
    weight = model.head.weight[:, : maps.shape[1]].to(maps.dtype)  # the rows that multiply image features
    return torch.einsum("kc,bchw->bkhw", weight, maps)


@torch.no_grad()
def class_activation_map(model: Any, images: torch.Tensor, meta: torch.Tensor | None = None,
                         target: int | str | Sequence[int | str] | None = None) -> CamOutput:
    """The map of one class per image: its predicted class (``target=None``), or a class index or code
    (``"MEL"``, ``"mel"``) for every image, or one per image."""
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
    """Each map (last two axes) for display: negative evidence clipped to 0, divided by the map's maximum
    (0 stays "no evidence"; a map without a positive value becomes all zeros)."""
    c = np.maximum(np.asarray(cam, dtype=np.float64), 0.0)
    top = c.max(axis=(-2, -1), keepdims=True)
    return np.where(top > 0, c / np.where(top > 0, top, 1.0), 0.0).astype(np.float32)


def upsample_cam(cam: Any, size: int | tuple[int, int]) -> np.ndarray:
    """Bilinear (half-pixel) upsampling of ``... x h x w`` maps to ``size`` (``H`` or ``(H, W)``)."""
    arr = np.asarray(cam, dtype=np.float32)
    hw = (size, size) if isinstance(size, (int, np.integer)) else tuple(int(s) for s in size)
    t = torch.from_numpy(np.ascontiguousarray(arr.reshape(-1, 1, *arr.shape[-2:])))
    return F.interpolate(t, size=hw, mode="bilinear", align_corners=False).reshape(*arr.shape[:-2], *hw).numpy()


def overlay(image: Any, cam: Any, alpha: float = 0.45, cmap: str = "jet") -> np.ndarray:
    """``(1 - alpha) * image + alpha * cmap(map)``, the map normalised and upsampled to the image: uint8."""
    img = np.asarray(image)
    img = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)
    c = upsample_cam(normalise_cam(cam), img.shape[:2]).clip(0, 1)
    heat = matplotlib.colormaps[cmap](c)[..., :3].astype(np.float32)
    return (((1.0 - alpha) * img[..., :3] + alpha * heat).clip(0, 1) * 255.0 + 0.5).astype(np.uint8)


# ----------------------------------------------------------------------------- a run's model and inputs


def load_run_model(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[Any, RunConfig]:
    """The trained model of a run record (last epoch, eval mode) and its :class:`RunConfig`.

    Example:
        >>> model, cfg = load_run_model("results/runs/test_resnet-metanet-...")   # doctest: +SKIP
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file() or not (run_dir / "checkpoint.pt").is_file():
        raise FileNotFoundError(f"{run_dir} holds no config.json and checkpoint.pt: not a trained run")
    cfg = RunConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    dim = meta_dim(cfg.meta_features) if cfg.fusion != "none" else 0
    model = build_model(cfg.backbone, cfg.fusion, num_classes=len(CLASS_CODES), meta_dim=dim,
                        meta_layers=cfg.meta_layers, pretrained=False)
    state = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)  # our own record
    model.load_state_dict(state["model"])
    return model.to(device).eval(), cfg


def _positions(dataset: Any, image_ids: Sequence[str]) -> np.ndarray:
    index = {i: k for k, i in enumerate(dataset.image_ids)}
    missing = [i for i in image_ids if i not in index]
    if missing:
        raise KeyError(f"{len(missing)} image(s) not in the data set, e.g. {missing[:3]}")
    return np.array([index[i] for i in image_ids], dtype=np.int64)


def run_inputs(cfg: RunConfig, dataset: Any, image_ids: Sequence[str], device: str | torch.device = "cpu"):
    """What a run's model saw at evaluation: ``(images, meta, crops)``: normalised centre crops of the run's
    image cache, the encoded metadata (None for ``none``), and the crops as uint8 ``B x crop x crop x 3``."""
    if cfg.data_fingerprint and cfg.data_fingerprint != dataset.fingerprint:
        warnings.warn(f"run {cfg.run_id} was trained on data {cfg.data_fingerprint}, not on {dataset.fingerprint}: "
                      "the metadata encoding may differ from training", stacklevel=2)
    pos = _positions(dataset, [str(i) for i in image_ids])
    raw = torch.from_numpy(np.array(dataset.images(cfg.image_size, cfg.color_constancy, progress=False)[pos]))
    spec = input_spec(cfg.backbone)
    x = BatchAugment(crop=cfg.crop_size, mean=tuple(spec.mean), std=tuple(spec.std))(raw, train=False)
    crops = center_crop(raw.permute(0, 3, 1, 2), cfg.crop_size).permute(0, 2, 3, 1).numpy()
    meta = None
    if cfg.fusion != "none":
        meta = torch.as_tensor(dataset.meta(tuple(cfg.meta_features))[0][pos], dtype=torch.float32, device=device)
    return x.to(device), meta, np.ascontiguousarray(crops)


def _display_image(path: Any, cfg: RunConfig, crop: np.ndarray) -> np.ndarray:
    """The model's centre crop, redrawn from the original file at :data:`DISPLAY_SIZE` px when it can be."""
    if DISPLAY_SIZE <= crop.shape[0] or not isinstance(path, str) or not Path(path).is_file():
        return crop
    img = np.array(load_image(path, round(DISPLAY_SIZE * cfg.image_size / cfg.crop_size), cfg.color_constancy))
    return np.ascontiguousarray(center_crop(torch.from_numpy(img).permute(2, 0, 1), DISPLAY_SIZE).permute(1, 2, 0))


# ----------------------------------------------------------------------------- the cases of Figure 2


def paired_runs(records: pd.DataFrame, backbone: str | None = None, meta_layers: int = 2) -> pd.DataFrame:
    """The Table 1 runs of every (backbone, fold): ``backbone, fold, run_none, run_metanet, run_concat``
    (record folders; MetaNet with all fields at ``meta_layers``, concatenation with all fields on the raw
    metadata, NaN where a fold has none). Folds without both an image-only and a MetaNet run are left out."""
    cols = ["backbone", "fold", "run_none", "run_metanet", "run_concat"]
    if records is None or len(records) == 0:
        return pd.DataFrame(columns=cols)
    df = records if backbone is None else records[records["backbone"] == backbone]
    all_fields = df["meta_features"].astype(str) == "+".join(META_FIELDS)
    layers = pd.to_numeric(df["meta_layers"])
    keys = [c for c in ("backbone", "fold", "n_folds", "split_scheme", "split_seed", "data_fingerprint")
            if c in df.columns]

    def runs(mask: pd.Series, name: str) -> pd.DataFrame:
        return df.loc[mask, [*keys, "path"]].drop_duplicates(keys).rename(columns={"path": name})

    out = (runs(df["fusion"] == "none", "run_none")
           .merge(runs((df["fusion"] == "metanet") & all_fields & (layers == meta_layers), "run_metanet"), on=keys)
           .merge(runs((df["fusion"] == "concat") & all_fields & (layers == 0), "run_concat"), on=keys, how="left"))
    return out[cols].sort_values(["backbone", "fold"], kind="stable").reset_index(drop=True)


class Picked(NamedTuple):
    """:func:`pick_cases`: the picked rows, how many images each case has, the paired validation images."""

    cases: pd.DataFrame
    available: dict[str, int]
    n_images: int


def _outcomes(run_none: str, run_metanet: str) -> pd.DataFrame:
    """Per validation image of a fold: true class, each model's prediction and probability of the true class."""
    a, b = load_record(run_none), load_record(run_metanet)
    both = a["predictions"].merge(b["predictions"], on="image", suffixes=("_none", "_metanet"))
    y = labels_to_indices(a["labels"].set_index("image")["dx"].loc[both["image"]])
    out = {"image": both["image"].to_numpy(), "true": [CLASS_CODES[i] for i in y]}
    for side in ("none", "metanet"):
        p = both[[f"{c}_{side}" for c in CLASS_CODES]].to_numpy(dtype=float)
        out[f"pred_{side}"] = [CLASS_CODES[i] if i >= 0 else "tie" for i in predicted_classes(p)]  # a tie is wrong
        out[f"p_true_{side}"] = p[np.arange(len(y)), y]
    return pd.DataFrame(out)


def _diverse(df: pd.DataFrame, n: int) -> pd.DataFrame:
    """The ``n`` best rows by ``_score``, classes in turn (the best of each class first)."""
    ranked = df.sort_values(["_score", "image"], ascending=[False, True], kind="stable")
    ranked = ranked.assign(_rank=ranked.groupby("true").cumcount(),
                           _first=ranked.groupby("true")["_score"].transform("max"))
    ranked = ranked.sort_values(["_rank", "_first", "_score", "image"], ascending=[True, False, False, True],
                                kind="stable")
    return ranked.head(n).drop(columns=["_rank", "_first", "_score"])


def pick_cases(pairs: pd.DataFrame, n: int = 4) -> Picked:
    """Validation images of Figure 2's two rows, from the :func:`paired_runs` of each fold.

    :data:`CASE_BOTH_RIGHT` images are ranked by the lower of the two probabilities of the true class,
    :data:`CASE_META_HELPS` images by how much MetaNet raises it; classes are taken in turn, so the picks
    are not all nevi. ``n`` images per case at most.

    Returns:
        :class:`Picked`: ``cases`` (``case, image, true, pred_none, pred_metanet, p_true_none,
        p_true_metanet, run_none, run_metanet, run_concat``), ``available`` (images of each case) and
        ``n_images`` (validation images with both predictions).
    """
    cols = ["case", "image", "true", "pred_none", "pred_metanet", "p_true_none", "p_true_metanet",
            "run_none", "run_metanet", "run_concat"]
    folds = [_outcomes(r.run_none, r.run_metanet).assign(run_none=r.run_none, run_metanet=r.run_metanet,
                                                         run_concat=r.run_concat) for r in pairs.itertuples()]
    if not folds:
        return Picked(pd.DataFrame(columns=cols), {CASE_BOTH_RIGHT: 0, CASE_META_HELPS: 0}, 0)
    table = pd.concat(folds, ignore_index=True)
    right_none, right_meta = table["pred_none"] == table["true"], table["pred_metanet"] == table["true"]
    both_right = table[right_none & right_meta].assign(_score=lambda d: np.minimum(d.p_true_none, d.p_true_metanet))
    helps = table[~right_none & right_meta].assign(_score=lambda d: d.p_true_metanet - d.p_true_none)
    cases = pd.concat([_diverse(both_right, n).assign(case=CASE_BOTH_RIGHT),
                       _diverse(helps, n).assign(case=CASE_META_HELPS)], ignore_index=True)
    return Picked(cases[cols], {CASE_BOTH_RIGHT: len(both_right), CASE_META_HELPS: len(helps)}, len(table))


# ----------------------------------------------------------------------------- maps of the picked images


def pair_cams(runs: Mapping[str, str | Path], image_ids: Sequence[str], dataset: Any, target: str = "pred",
              device: str | torch.device = "cpu") -> list[dict[str, Any]]:
    """Class activation maps of some images under the runs of one fold (``{"none": folder, "metanet": folder,
    "concat": folder}``, any of them).

    Args:
        target: ``"pred"`` (each model's predicted class: the paper does not say which class its Fig. 2 maps)
            or ``"true"``.

    Returns:
        One dict per image: ``image``, ``true`` (code), ``picture`` (uint8, the centre crop the models saw) and
        per fusion ``cam`` (raw map at feature resolution), ``target`` (class mapped), ``pred``, ``p_pred``,
        ``p_true``, ``correct`` and ``backbone``.
    """
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
            entry.setdefault("picture", _display_image(paths[i], cfg, crops[i]))
    return out


def cams_for_cases(cases: pd.DataFrame, dataset: Any, target: str = "pred",
                   device: str | torch.device = "cpu") -> list[dict[str, Any]]:
    """:func:`pair_cams` of every row of :func:`pick_cases` (all three variants where the fold has a
    concatenation run), in the rows' order; each dict also carries the row's ``case``."""
    out: dict[int, dict[str, Any]] = {}
    for (rn, rm), g in cases.groupby(["run_none", "run_metanet"], sort=False):
        runs = {"none": rn, "concat": g["run_concat"].iloc[0], "metanet": rm}
        runs = {f: r for f, r in runs.items() if isinstance(r, (str, Path))}
        for idx, entry in zip(g.index, pair_cams(runs, g["image"].tolist(), dataset, target, device)):
            out[idx] = {**entry, "case": g.loc[idx, "case"]}
    return [out[i] for i in cases.index]
