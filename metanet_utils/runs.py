"""The runs of a profile: Table 1 and the ablations of Tables 3 and 4 (paper Sec. 3), as run configs.

Table 1 is every backbone x fusion x fold (``concat`` on the raw metadata); Table 3 ``metanet`` on the ablation
backbone with each subset of age / sex / localization (the empty one is ``none``); Table 4 ``metanet`` and ``concat``
with 1..4 layers. A run shared by two tables trains once; :func:`metanet_utils.ops.grid.run_grid` trains them.

Example:
    >>> from metanet_utils.config import load_profile
    >>> from types import SimpleNamespace
    >>> runs = enumerate_runs(load_profile("smoke"), SimpleNamespace(kind="real", fingerprint="doc"))
    >>> len(runs), sorted({r.fusion for r in runs})
    (32, ['concat', 'metanet', 'none'])
"""

from __future__ import annotations

import itertools
from dataclasses import fields
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from .config import ConfigError, Profile, RunConfig, Settings
from .constants import META_FIELDS
from .evaluate import is_complete
from .models import input_spec
from .train import record_dir

EXPERIMENTS: tuple[str, ...] = ("table1", "table3", "table4")


def image_sizes(profile: Profile, backbone: str) -> tuple[int, int]:
    """(resize, crop) of a backbone's runs: the profile's, else the backbone's own."""
    if profile.image_size is not None and profile.crop_size is not None:
        return profile.image_size, profile.crop_size
    spec = input_spec(backbone)
    return profile.image_size or spec.resize, profile.crop_size or spec.crop


def _base(profile: Profile, dataset, backbone: str) -> RunConfig:
    resize, crop = image_sizes(profile, backbone)
    shared = {f.name: getattr(profile, f.name) for f in fields(Settings)}
    return RunConfig(**{**shared, "image_size": resize, "crop_size": crop}, backbone=backbone,
                     data_kind=dataset.kind, data_fingerprint=dataset.fingerprint)


def _variant(base: RunConfig, fusion: str, features: tuple[str, ...] = META_FIELDS, k: int | None = None) -> RunConfig:
    if fusion == "none":
        return base.replace(fusion="none", meta_features=(), meta_layers=0)
    if fusion == "concat":  # Table 1: the raw metadata (k = 0); Table 4 sets k
        return base.replace(fusion="concat", meta_features=features, meta_layers=0 if k is None else k)
    return base.replace(fusion=fusion, meta_features=features, meta_layers=base.meta_layers if k is None else k)


def run_config(profile: Profile, dataset, backbone: str, fusion: str, fold: int = 0,
               features: tuple[str, ...] = META_FIELDS, meta_layers: int | None = None,
               **overrides: Any) -> RunConfig:
    """The config of one run of ``profile`` as the grid enumerates it (same ``run_id``); ``overrides``: any other
    setting (e.g. ``epochs``)."""
    base = _base(profile, dataset, backbone).replace(fold=fold, **overrides)
    return _variant(base, fusion, tuple(features), meta_layers)


def enumerate_runs(profile: Profile, dataset, experiments: Iterable[str] = EXPERIMENTS) -> list[RunConfig]:
    """Every run the profile asks for (Table 1, then the ablations), each once."""
    experiments = tuple(experiments)
    if unknown := set(experiments) - set(EXPERIMENTS):
        raise ConfigError(f"unknown experiment(s) {sorted(unknown)}; allowed: {', '.join(EXPERIMENTS)}")
    runs: list[RunConfig] = []
    for backbone in (profile.backbones if "table1" in experiments else ()):
        base = _base(profile, dataset, backbone)
        runs += [_variant(base.replace(fold=fold), fusion)
                 for fusion, fold in itertools.product(profile.fusions, profile.fold_indices)]
    abl = profile.ablations
    do3, do4 = abl.table3 and "table3" in experiments, abl.table4 and "table4" in experiments
    base = _base(profile, dataset, abl.backbone or profile.backbones[-1]) if do3 or do4 else None
    for fold in profile.fold_indices if base is not None else ():
        b = base.replace(fold=fold)
        if do3:
            runs += [_variant(b, "none")] + [_variant(b, "metanet", subset) for r in (1, 2, 3)
                                             for subset in itertools.combinations(META_FIELDS, r)]
        for k in abl.meta_layers if do4 else ():
            runs += [_variant(b, "metanet", META_FIELDS, k), _variant(b, "concat", META_FIELDS, k)]
    return list({r.run_id: r for r in runs}.values())


def filter_runs(runs: list[RunConfig], only: dict[str, list[str]] | None) -> list[RunConfig]:
    """The runs whose every ``only`` setting is one of its values (tuples written ``a+b``)."""
    def text(v: Any) -> str:
        return "+".join(v) if isinstance(v, tuple) else str(v)
    return [r for r in runs if all(text(getattr(r, k)) in vals for k, vals in (only or {}).items())]


def status_table(runs: list[RunConfig], runs_dir: str | Path | None = None) -> pd.DataFrame:
    """One row per run: its settings and whether its record is complete."""
    return pd.DataFrame([{"run_id": r.run_id, "backbone": r.backbone, "fusion": r.fusion,
                          "meta": "+".join(r.meta_features), "k": r.meta_layers, "fold": r.fold,
                          "complete": is_complete(record_dir(r, runs_dir))} for r in runs])
