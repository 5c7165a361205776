"""Class activation maps (Zhou et al., CVPR 2016) of the three fusion variants (paper Sec. 3.6, Fig. 2).

With a global-average-pooling + linear head, the score of class ``c`` is
``logit_c = sum_k w_ck mean_hw(M_k) + b_c`` where ``M`` are the maps the head pools. The class
activation map is the same sum before pooling, ``CAM_c(x, y) = sum_k w_ck M_k(x, y)``, so
``mean_hw(CAM_c) + b_c = logit_c``: the map says where the score comes from.

* ``none``: ``M = F``, the backbone's last convolutional maps.
* ``metanet``: ``M = F * g`` (every channel multiplied by its metadata gate ``g_k``, Sec. 2). The model
  computes ``g * avg(F)`` (the same number, cheaper), but the map needs the gated maps:
  :meth:`~metanet_utils.models.MetaModel.feature_maps_for_cam` gives them. The metadata thus changes
  the map by re-weighting channels, which is what the paper's Fig. 2 shows.
* ``concat``: ``M = F`` and the image part of the head (``head.weight[:, :C]``); the metadata adds a
  per-class constant that no pixel owns.

Grad-CAM (Selvaraju et al. 2017) on these maps equals CAM up to the positive factor ``1 / (h w)``
(its channel weights are ``mean_hw(d logit_c / d M_k) = w_ck / (h w)``); ``tests/test_cam.py`` checks this
against ``pytorch-grad-cam``. Maps are computed at feature-map resolution (7 x 7 for a 224 crop) and
upsampled bilinearly only for display. At small crops the maps are coarse (a 64 px crop gives 2 x 2 maps:
the smooth upsampled picture then has four values, not a localisation);
:func:`~metanet_utils.plots.cam_grid` says the size and warns below 7 x 7.

Typical use (notebook 08)::

    recs = load_records(run_ids=...)                     # this profile's runs
    pairs = paired_runs(recs)                            # none / metanet run of each fold
    cases = pick_cases([load_record(p) for p in pairs.run_none],
                       [load_record(p) for p in pairs.run_metanet], n=4)
    cams = cams_for_cases(cases, dataset)                # images, maps, predictions
    plots.cam_grid(cams)

Example:
    >>> import torch
    >>> from metanet_utils.models import build_model
    >>> model = build_model("test_resnet", "metanet", pretrained=False).eval()
    >>> x, m = torch.randn(2, 3, 64, 64), torch.rand(2, 17)
    >>> cam_maps(model, x, m).shape                      # B x classes x h x w
    torch.Size([2, 7, 2, 2])
    >>> out = class_activation_map(model, x, m)           # the predicted class of each image
    >>> out.cams.shape, out.classes.shape
    ((2, 2, 2), (2,))
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .constants import CLASS_CODES, DX_CODES

__all__ = [
    "CamOutput",
    "cam_maps",
    "class_activation_map",
    "normalise_cam",
    "upsample_cam",
    "overlay",
    "load_run_model",
    "run_inputs",
    "paired_runs",
    "pick_cases",
    "CASE_BOTH_RIGHT",
    "CASE_META_HELPS",
    "CASE_LABELS",
    "case_label",
    "pair_cams",
    "cams_for_cases",
]

#: The two kinds of Figure 2 rows, as stored in :func:`pick_cases`' ``case`` column (stable keys).
CASE_BOTH_RIGHT = "both right"
CASE_META_HELPS = "none wrong, metanet right"
#: How figures and printouts name the cases.
CASE_LABELS: dict[str, str] = {CASE_BOTH_RIGHT: "image-only and MetaNet right",
                               CASE_META_HELPS: "image-only wrong, MetaNet right"}


def case_label(case: Any) -> str:
    """The displayed name of a case key (:data:`CASE_LABELS`; other values as they are)."""
    return CASE_LABELS.get(str(case), str(case))


# --------------------------------------------------------------------------------------------------
# Maps
# --------------------------------------------------------------------------------------------------


class CamOutput(NamedTuple):
    """Result of :func:`class_activation_map`.

    Attributes:
        cams: ``B x h x w`` float array, the raw map of each image's target class (not normalised).
        classes: ``B`` class indices (official order, :data:`~metanet_utils.constants.CLASS_CODES`)
            the maps are for.
        probs: ``B x num_classes`` softmax probabilities of the model.
    """

    cams: np.ndarray
    classes: np.ndarray
    probs: np.ndarray


def _meta_arg(model: Any, meta: torch.Tensor | None, batch: int) -> torch.Tensor | None:
    if getattr(model, "fusion", "none") == "none":
        return None
    if meta is None:
        raise ValueError(f"fusion {model.fusion!r} needs the metadata of the images")
    return meta


@torch.no_grad()
def cam_maps(model: Any, images: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
    """Class activation maps of every class: ``B x num_classes x h x w`` at feature-map resolution.

    ``CAM[b, c] = sum_k W[c, k] M[b, k]`` with ``M = model.feature_maps_for_cam(images, meta)`` (gated
    maps for metanet) and ``W = model.classifier_weight_for_cam()``. For ``none`` and ``metanet``
    ``CAM.mean((2, 3)) + head.bias`` equals the logits (``concat``: plus the metadata's term).

    Args:
        model: a :class:`~metanet_utils.models.MetaModel` (put it in eval mode first).
        images: ``B x 3 x H x W``, normalised as for the model.
        meta: ``B x meta_dim`` metadata (ignored for ``none``).
    """
    if not getattr(model, "cam_is_exact", True):
        warnings.warn(f"fusion {model.fusion!r}: the head is not linear in the pooled maps, so the class "
                      "activation map only approximates where the score comes from", stacklevel=2)
    maps = model.feature_maps_for_cam(images, _meta_arg(model, meta, images.shape[0]))
    weight = model.classifier_weight_for_cam().to(maps.dtype)
    return torch.einsum("kc,bchw->bkhw", weight, maps)


@torch.no_grad()
def class_activation_map(
    model: Any,
    images: torch.Tensor,
    meta: torch.Tensor | None = None,
    target: int | str | Sequence[int | str] | None = None,
) -> CamOutput:
    """The map of one class per image: its predicted class (``target=None``) or a given one.

    Args:
        model: a :class:`~metanet_utils.models.MetaModel` in eval mode.
        images: ``B x 3 x H x W`` normalised images.
        meta: ``B x meta_dim`` metadata (ignored for ``none``).
        target: None (the predicted class), a class index or code (``"MEL"``, ``"mel"``) for every image,
            or one per image.

    Returns:
        :class:`CamOutput` (raw maps ``B x h x w``; use :func:`normalise_cam` to display them).
    """
    meta = _meta_arg(model, meta, images.shape[0])
    probs = torch.softmax(model(images, meta).float(), dim=1).cpu().numpy()
    if target is None:
        classes = probs.argmax(axis=1)
    else:
        from .evaluate import labels_to_indices

        seq = [target] * images.shape[0] if isinstance(target, (int, np.integer, str)) else list(target)
        if len(seq) != images.shape[0]:
            raise ValueError(f"{len(seq)} targets for {images.shape[0]} images")
        classes = labels_to_indices(seq)
    all_maps = cam_maps(model, images, meta)
    idx = torch.as_tensor(classes, device=all_maps.device)
    cams = all_maps[torch.arange(len(idx), device=all_maps.device), idx]
    return CamOutput(cams.float().cpu().numpy(), np.asarray(classes, dtype=np.int64), probs)


def normalise_cam(cam: Any, relu: bool = True, minmax: bool = False) -> np.ndarray:
    """Scale each map (last two axes) to ``[0, 1]`` for display.

    Args:
        cam: ``h x w`` or ``... x h x w`` maps.
        relu: clip negative evidence to 0 first (as Grad-CAM does): the map shows where the class's
            score is raised.
        minmax: subtract each map's minimum before dividing by its maximum (Zhou et al.'s
            visualisation); default: divide by the maximum only, so 0 stays "no evidence".

    A map without any positive value becomes all zeros.
    """
    c = np.asarray(cam, dtype=np.float64)
    if relu:
        c = np.maximum(c, 0.0)
    if minmax:
        c = c - c.min(axis=(-2, -1), keepdims=True)
    top = c.max(axis=(-2, -1), keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(top > 0, c / np.where(top > 0, top, 1.0), 0.0)
    return out.astype(np.float32)


def upsample_cam(cam: Any, size: int | tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of ``h x w`` (or ``... x h x w``) maps to ``size`` (``H`` or ``(H, W)``)."""
    arr = np.asarray(cam, dtype=np.float32)
    hw = (size, size) if isinstance(size, (int, np.integer)) else tuple(int(s) for s in size)
    lead = arr.shape[:-2]
    t = torch.from_numpy(np.ascontiguousarray(arr.reshape(-1, 1, *arr.shape[-2:])))
    up = F.interpolate(t, size=hw, mode="bilinear", align_corners=False)
    return up.reshape(*lead, *hw).numpy()


def overlay(image: Any, cam: Any, alpha: float = 0.45, cmap: str = "jet", normalise: bool = True) -> np.ndarray:
    """Blend a heat map over an image: ``(1 - alpha) * image + alpha * colormap(cam)``.

    Args:
        image: ``H x W x 3`` uint8 (or float in [0, 1]).
        cam: a map at any resolution; it is upsampled to ``H x W``.
        alpha: weight of the heat map.
        cmap: a matplotlib colormap (``jet`` as in the CAM paper, or ``turbo``).
        normalise: apply :func:`normalise_cam` (ReLU, divide by the maximum) first.

    Returns:
        ``H x W x 3`` uint8.
    """
    import matplotlib

    img = np.asarray(image)
    img = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)
    c = normalise_cam(cam) if normalise else np.clip(np.asarray(cam, dtype=np.float32), 0, 1)
    c = upsample_cam(c, img.shape[:2]).clip(0, 1)
    heat = matplotlib.colormaps[cmap](c)[..., :3].astype(np.float32)
    out = (1.0 - alpha) * img[..., :3] + alpha * heat
    return (out.clip(0, 1) * 255.0 + 0.5).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# Models and inputs of a run record
# --------------------------------------------------------------------------------------------------


def _run_config(run_dir: str | Path):
    from .config import RunConfig

    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a run record folder")
    return RunConfig.from_dict(json.loads(path.read_text()))


def load_run_model(run_dir: str | Path, device: str | torch.device = "cpu"):
    """Rebuild the trained model of a run record: ``(model in eval mode, RunConfig)``.

    The architecture comes from ``config.json`` (built with ``pretrained=False``: no download), the
    weights from ``checkpoint.pt`` (the last epoch's, i.e. the reported model).

    Example:
        >>> model, cfg = load_run_model("results/runs/test_resnet-metanet-...")   # doctest: +SKIP
    """
    from .metadata import meta_dim
    from .models import build_model

    run_dir = Path(run_dir)
    cfg = _run_config(run_dir)
    ckpt = run_dir / "checkpoint.pt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"{ckpt} not found: the record has no trained weights")
    dim = meta_dim(cfg.meta_features) if cfg.fusion != "none" else 0
    model = build_model(cfg.backbone, cfg.fusion, num_classes=len(CLASS_CODES), meta_dim=dim,
                        meta_layers=cfg.meta_layers, pretrained=False)
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - older checkpoints hold objects the safe loader refuses
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
    sd = state["model"] if isinstance(state, dict) and "model" in state else state
    sd = {k.removeprefix("_orig_mod."): v for k, v in sd.items()}
    model.load_state_dict(sd)
    return model.to(device).eval(), cfg


def _positions(dataset: Any, image_ids: Sequence[str]) -> np.ndarray:
    index = {str(i): k for k, i in enumerate(dataset.image_ids)}
    missing = [i for i in image_ids if str(i) not in index]
    if missing:
        raise KeyError(f"{len(missing)} image(s) not in the data set, e.g. {missing[:3]}")
    return np.array([index[str(i)] for i in image_ids], dtype=np.int64)


def run_inputs(cfg: Any, dataset: Any, image_ids: Sequence[str], device: str | torch.device = "cpu"):
    """What a run's model saw at evaluation: ``(images, meta, crops)`` for some images.

    ``images``: ``B x 3 x crop x crop`` normalised centre crops of the run's image cache; ``meta``:
    ``B x meta_dim`` encoded metadata (None for ``none``); ``crops``: the same crops as uint8
    ``B x crop x crop x 3`` for display.
    """
    from .augment import BatchAugment, center_crop
    from .metadata import encode
    from .models import input_spec

    if getattr(cfg, "data_fingerprint", "") and cfg.data_fingerprint != dataset.fingerprint:
        warnings.warn(f"run {cfg.run_id} was trained on data {cfg.data_fingerprint}, the data set given is "
                      f"{dataset.fingerprint}: the metadata encoding may differ from training", stacklevel=2)
    pos = _positions(dataset, image_ids)
    cache = dataset.images(cfg.image_size, cfg.color_constancy, progress=False)
    raw = torch.from_numpy(np.array(cache[pos], copy=True))
    spec = input_spec(cfg.backbone)
    x = BatchAugment(crop=cfg.crop_size, mean=tuple(spec.mean), std=tuple(spec.std))(raw, train=False)
    crops = center_crop(raw.permute(0, 3, 1, 2), cfg.crop_size).permute(0, 2, 3, 1).numpy()
    meta = None
    if cfg.fusion != "none":
        m, _ = encode(dataset.df, features=tuple(cfg.meta_features))
        meta = torch.as_tensor(np.asarray(m)[pos], dtype=torch.float32, device=device)
    return x.to(device), meta, np.ascontiguousarray(crops)


def _display_image(row: pd.Series | None, cfg: Any, crop: np.ndarray, size: int) -> np.ndarray:
    """The model's centre crop, redrawn from the original file at ``size`` px when it can be read."""
    if size <= crop.shape[0] or row is None or not isinstance(row.get("path", None), str):
        return crop
    try:
        from .augment import center_crop
        from .cache import load_image

        full = int(round(size * cfg.image_size / cfg.crop_size))
        img = load_image(row["path"], full, cfg.color_constancy)
        t = torch.from_numpy(np.array(img, copy=True)).permute(2, 0, 1)
        return np.ascontiguousarray(center_crop(t, size).permute(1, 2, 0).numpy())
    except Exception:  # noqa: BLE001 - the cached crop is a fine fallback
        return crop


# --------------------------------------------------------------------------------------------------
# Choosing the cases of Figure 2
# --------------------------------------------------------------------------------------------------


def paired_runs(records: pd.DataFrame, backbone: str | None = None, meta_layers: int | None = None,
                a: str = "none", b: str = "metanet", with_concat: bool = False) -> pd.DataFrame:
    """The ``a`` (image only) and ``b`` (MetaNet) run of every (backbone, fold): their record folders.

    Args:
        records: :func:`~metanet_utils.evaluate.load_records` frame (one profile's runs).
        backbone: only this backbone (default: all).
        meta_layers: depth of the ``b`` runs (default: 2, the paper's Table 1 setting, when such runs exist,
            else the most frequent depth among runs with all metadata fields).
        with_concat: add ``run_concat``, the fold's Table 1 concatenation run (all fields, raw metadata),
            empty where there is none.

    Returns:
        Columns ``backbone, fold, run_<a>, run_<b>`` (paths; and ``run_concat``); empty when no fold has both.
    """
    from .constants import META_FIELDS

    cols = ["backbone", "fold", f"run_{a}", f"run_{b}"] + (["run_concat"] if with_concat else [])
    if records is None or len(records) == 0 or "fusion" not in records.columns:
        return pd.DataFrame(columns=cols)
    df = records if backbone is None else records[records["backbone"] == backbone]
    left = df[df["fusion"] == a]
    right = df[df["fusion"] == b]
    if b != "none" and "meta_features" in right.columns:
        right = right[right["meta_features"].astype(str) == "+".join(META_FIELDS)]
        if meta_layers is None and len(right):
            ks = pd.to_numeric(right["meta_layers"])
            meta_layers = 2 if (ks == 2).any() else int(ks.mode().iloc[0])
        if meta_layers is not None:
            right = right[pd.to_numeric(right["meta_layers"]) == int(meta_layers)]
    keys = [c for c in ("backbone", "fold", "n_folds", "split_scheme", "split_seed", "data_fingerprint")
            if c in df.columns]
    out = (left[[*keys, "path"]].drop_duplicates(keys).rename(columns={"path": f"run_{a}"})
           .merge(right[[*keys, "path"]].drop_duplicates(keys).rename(columns={"path": f"run_{b}"}), on=keys))
    if with_concat:
        cat = df[df["fusion"] == "concat"]
        if "meta_features" in cat.columns:
            cat = cat[cat["meta_features"].astype(str) == "+".join(META_FIELDS)]
        if "meta_layers" in cat.columns:
            cat = cat[pd.to_numeric(cat["meta_layers"]) == 0]
        out = out.merge(cat[[*keys, "path"]].drop_duplicates(keys).rename(columns={"path": "run_concat"}),
                        on=keys, how="left")
    return out[cols].sort_values(["backbone", "fold"], kind="stable").reset_index(drop=True)


def _as_records(rec: Any) -> list[dict[str, Any]]:
    """A record, a run folder, a predictions frame, or a list of these -> list of record-like dicts."""
    from .evaluate import load_record

    if rec is None:
        return []
    if isinstance(rec, pd.DataFrame):
        return [{"predictions": rec, "labels": None, "path": None}]
    if isinstance(rec, (str, Path)):
        return [load_record(rec)]
    if isinstance(rec, Mapping):
        return [dict(rec)]
    out: list[dict[str, Any]] = []
    for r in rec:
        out.extend(_as_records(r))
    return out


def _stack(recs: list[dict[str, Any]], side: str) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    preds, labels = [], []
    for r in recs:
        p = r["predictions"].copy()
        p["image"] = p["image"].astype(str)
        p[f"run_{side}"] = r.get("path")
        preds.append(p)
        if r.get("labels") is not None:
            labels.append(r["labels"])
    if not preds:
        return pd.DataFrame(columns=["image", *CLASS_CODES, f"run_{side}"]), None
    pred = pd.concat(preds, ignore_index=True).drop_duplicates("image", keep="first")
    lab = pd.concat(labels, ignore_index=True).drop_duplicates("image") if labels else None
    return pred, lab


def _diverse(df: pd.DataFrame, score: str, n: int) -> pd.DataFrame:
    """The ``n`` best rows by ``score``, taking classes in turn (best of each class first)."""
    if n <= 0 or df.empty:
        return df.iloc[:0]
    ranked = df.sort_values([score, "image"], ascending=[False, True], kind="stable")
    ranked = ranked.assign(_rank=ranked.groupby("true").cumcount())
    first = ranked.groupby("true")[score].transform("max")
    ranked = ranked.assign(_first=first).sort_values(["_rank", "_first", score, "image"],
                                                      ascending=[True, False, False, True], kind="stable")
    return ranked.head(n).drop(columns=["_rank", "_first"])


def pick_cases(records_none: Any, records_metanet: Any, labels: Any = None, n: int = 4) -> pd.DataFrame:
    """Validation images for Figure 2: both variants right (its first row) and the image-only model wrong
    but MetaNet right (its second row).

    Args:
        records_none, records_metanet: the paired runs (same backbone and folds): each a record of
            :func:`~metanet_utils.evaluate.load_record`, a run folder, a predictions frame (ISIC format),
            or a list of these (several folds; each image is in one fold's validation set).
        labels: ``image,dx`` frame, Series or mapping image -> class; default the records' ``labels.csv``.
        n: images per case (fewer when fewer exist).

    Cases are ranked by confidence: :data:`CASE_BOTH_RIGHT` ("image-only and MetaNet right") by the smaller
    of the two probabilities of the true class, :data:`CASE_META_HELPS` ("image-only wrong, MetaNet
    right") by how much MetaNet raises it; classes are taken in turn so the
    picks are not all nevi. Ties of the top probability count as wrong (the ISIC rule).

    Returns:
        One row per picked image: ``case, image, true, pred_none, pred_metanet, p_true_none,
        p_true_metanet, run_none, run_metanet``; ``attrs["available"]`` counts the images of each case
        and ``attrs["n_images"]`` the paired validation images.
    """
    from .evaluate import _labels_series, predicted_classes

    cols = ["case", "image", "true", "pred_none", "pred_metanet", "p_true_none", "p_true_metanet",
            "run_none", "run_metanet"]
    pn, lab_n = _stack(_as_records(records_none), "none")
    pm, lab_m = _stack(_as_records(records_metanet), "metanet")
    if labels is None:
        labels = lab_n if lab_n is not None else lab_m
    if labels is None:
        raise ValueError("no labels: pass labels= or records with labels.csv")
    y_all = _labels_series(labels)
    both = pn.merge(pm, on="image", suffixes=("_none", "_metanet"))
    both = both[both["image"].isin(y_all.index)].reset_index(drop=True)
    out = pd.DataFrame(columns=cols)
    out.attrs["available"] = {CASE_BOTH_RIGHT: 0, CASE_META_HELPS: 0}
    out.attrs["n_images"] = int(len(both))
    if both.empty:
        return out
    y = y_all.loc[both["image"]].to_numpy()
    rows = np.arange(len(both))
    res = {}
    for side in ("none", "metanet"):
        p = both[[f"{c}_{side}" for c in CLASS_CODES]].to_numpy(dtype=float)
        res[side] = (predicted_classes(p), p[rows, y])
    frame = pd.DataFrame({
        "image": both["image"].to_numpy(), "true": [CLASS_CODES[i] for i in y],
        "pred_none": [CLASS_CODES[i] if i >= 0 else "tie" for i in res["none"][0]],
        "pred_metanet": [CLASS_CODES[i] if i >= 0 else "tie" for i in res["metanet"][0]],
        "p_true_none": res["none"][1], "p_true_metanet": res["metanet"][1],
        "run_none": both["run_none"].to_numpy(), "run_metanet": both["run_metanet"].to_numpy(),
    })
    right_n, right_m = res["none"][0] == y, res["metanet"][0] == y
    both_right = frame[right_n & right_m].assign(_score=lambda d: np.minimum(d.p_true_none, d.p_true_metanet))
    helps = frame[~right_n & right_m].assign(_score=lambda d: d.p_true_metanet - d.p_true_none)
    picked = [_diverse(both_right, "_score", n).assign(case=CASE_BOTH_RIGHT),
              _diverse(helps, "_score", n).assign(case=CASE_META_HELPS)]
    out = pd.concat([p for p in picked if len(p)] or [out], ignore_index=True)
    out = out.drop(columns=["_score"], errors="ignore")[cols].reset_index(drop=True)
    out.attrs["available"] = {CASE_BOTH_RIGHT: int(len(both_right)), CASE_META_HELPS: int(len(helps))}
    out.attrs["n_images"] = int(len(both))
    return out


# --------------------------------------------------------------------------------------------------
# CAMs of chosen images
# --------------------------------------------------------------------------------------------------


def _fusion_entry(out: CamOutput, i: int, y: int | None) -> dict[str, Any]:
    k = int(out.classes[i])
    pred = int(out.probs[i].argmax())
    return {"cam": out.cams[i], "target": CLASS_CODES[k], "pred": CLASS_CODES[pred],
            "p_pred": float(out.probs[i, pred]), "p_true": float(out.probs[i, y]) if y is not None else float("nan"),
            "correct": (pred == y) if y is not None else None}


def pair_cams(run_none: str | Path, run_metanet: str | Path, image_ids: Sequence[str], dataset: Any,
              target: str = "pred", device: str | torch.device = "cpu", display_size: int = 224,
              models: Mapping[str, Any] | None = None, run_concat: str | Path | None = None) -> list[dict[str, Any]]:
    """Class activation maps of some images under the paired image-only and MetaNet runs (and the
    concatenation run of the same fold, when given: all three variants).

    Args:
        run_none, run_metanet: record folders of the two runs (same backbone and fold).
        run_concat: record folder of the fold's concatenation run (optional).
        image_ids: images to map (usually validation images of that fold).
        dataset: the :class:`~metanet_utils.dataset.Dataset` the runs were trained on.
        target: ``"pred"`` (each model's predicted class, the kit's default: the paper does not say which
            class its Fig. 2 maps) or ``"true"``.
        display_size: side of the displayed image (redrawn from the file when larger than the crop).
        models: already loaded ``{"none": (model, cfg), "metanet": (model, cfg)}`` (optional).

    Returns:
        One dict per image: ``image`` (id), ``true`` (code), ``picture`` (uint8 ``S x S x 3``, the
        centre crop the models saw), and per fusion ``"none"`` / ``"metanet"`` (/ ``"concat"``): ``cam`` (raw
        map at feature resolution: 2 x 2 for a 64 px crop of a stride-32 backbone, 7 x 7 for 224 px),
        ``target`` (the class mapped), ``pred``, ``p_pred``, ``p_true``, ``correct``, ``backbone`` and
        ``crop`` (the model's input side in pixels).
    """
    if target not in ("pred", "true"):
        raise ValueError(f"target={target!r}: use 'pred' or 'true'")
    image_ids = [str(i) for i in image_ids]
    if not image_ids:
        return []
    loaded = dict(models or {})
    runs = (("none", run_none), ("concat", run_concat), ("metanet", run_metanet))
    for name, run in runs:
        if name not in loaded and run is not None and not (isinstance(run, float) and np.isnan(run)):
            loaded[name] = load_run_model(run, device)
    pos = _positions(dataset, image_ids)
    labels = np.asarray(dataset.labels)[pos]
    rows = dataset.df.iloc[pos]
    result: list[dict[str, Any]] = [
        {"image": i, "true": CLASS_CODES[int(y)], "dx": DX_CODES[int(y)]} for i, y in zip(image_ids, labels)]
    for name, (model, cfg) in loaded.items():
        x, meta, crops = run_inputs(cfg, dataset, image_ids, device)
        tgt = None if target == "pred" else [int(v) for v in labels]
        out = class_activation_map(model, x, meta, target=tgt)
        for i, entry in enumerate(result):
            entry[name] = {**_fusion_entry(out, i, int(labels[i])), "backbone": str(cfg.backbone),
                           "crop": int(cfg.crop_size)}
            if "picture" not in entry:
                entry["picture"] = _display_image(rows.iloc[i], cfg, crops[i], display_size)
    return result


def cams_for_cases(cases: pd.DataFrame, dataset: Any, target: str = "pred", device: str | torch.device = "cpu",
                   display_size: int = 224, pairs: pd.DataFrame | None = None) -> list[dict[str, Any]]:
    """:func:`pair_cams` for every row of :func:`pick_cases` (grouped by run pair), in the rows' order.

    Each dict also carries the row's ``case``. Rows without run folders (cases picked from bare
    prediction frames) are skipped with a warning. With ``pairs`` from :func:`paired_runs`
    (``with_concat=True``) the fold's concatenation run is mapped too.
    """
    concat_of = {}
    if pairs is not None and "run_concat" in pairs.columns:
        concat_of = {(str(r.run_none), str(r.run_metanet)): r.run_concat for r in pairs.itertuples()
                     if isinstance(r.run_concat, (str, Path))}
    if cases is None or len(cases) == 0:
        return []
    out: dict[int, dict[str, Any]] = {}
    usable = cases.dropna(subset=["run_none", "run_metanet"])
    if len(usable) < len(cases):
        warnings.warn(f"{len(cases) - len(usable)} case(s) have no run folder and were skipped", stacklevel=2)
    for (rn, rm), g in usable.groupby(["run_none", "run_metanet"], sort=False):
        maps = pair_cams(rn, rm, g["image"].tolist(), dataset, target=target, device=device,
                         display_size=display_size, run_concat=concat_of.get((str(rn), str(rm))))
        for idx, entry in zip(g.index, maps):
            entry["case"] = g.loc[idx, "case"]
            out[idx] = entry
    return [out[i] for i in usable.index]

