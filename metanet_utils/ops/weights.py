"""Pretrained weights for machines without internet: ``python -m metanet_utils weights fetch --weights-dir DIR``.

timm (torchvision for AlexNet) downloads into DIR as into its own cache (the Hugging Face hub layout, which holds
symlinks: copy it with ``cp -r`` or ``rsync -a``); ``build_backbone(weights_dir=DIR)`` then reads it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import timm
from timm.models import get_pretrained_cfg

from ..constants import BACKBONES
from ..models import WeightsUnavailable, build_backbone, resolve_backbone


def fetch_weights(weights_dir: str | os.PathLike, backbones: Iterable[str] = tuple(BACKBONES)) -> None:
    """Download the backbones' pretrained weights into a folder (what is there is kept); each is read back offline,
    so that a broken download shows here."""
    weights_dir = Path(weights_dir).expanduser()
    for backbone in backbones:
        try:
            build_backbone(backbone, pretrained=True, weights_dir=weights_dir)  # a release URL's file: fetched here
            print(f"{backbone}: in {weights_dir}", flush=True)
            continue
        except WeightsUnavailable:
            model = resolve_backbone(backbone)
            if model == "alexnet" or not get_pretrained_cfg(model).hf_hub_id:
                raise
        print(f"{backbone}: downloading {model} into {weights_dir}", flush=True)
        try:
            timm.create_model(model, pretrained=True, cache_dir=weights_dir)
        except Exception as e:
            raise WeightsUnavailable(f"could not download the weights of {backbone} ({model}) into {weights_dir} "
                                     f"({type(e).__name__}); this needs internet") from e
        build_backbone(backbone, pretrained=True, weights_dir=weights_dir)


_LOADED: set[tuple[str, str | None]] = set()  # (backbone, folder) loaded in this process: `grid` checks, then run_grid


def ensure_weights(backbones: Iterable[str], weights_dir: str | os.PathLike | None = None,
                   progress: bool = True) -> None:
    """Load every backbone's pretrained weights once, so that a grid without them stops before any work."""
    folder = weights_dir or os.environ.get("METANET_WEIGHTS_DIR")
    for backbone in dict.fromkeys(backbones):
        if (backbone, str(folder) if folder else None) in _LOADED:
            continue
        if progress:
            print(f"pretrained weights of {backbone}: checking", flush=True)
        build_backbone(backbone, pretrained=True, weights_dir=weights_dir)
        _LOADED.add((backbone, str(folder) if folder else None))
