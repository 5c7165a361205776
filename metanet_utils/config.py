"""Settings as frozen dataclasses: :class:`RunConfig` is one training run, :class:`Profile` one
``configs/<name>.yaml``, both :class:`Settings`, by default the paper's. A bad value stops with one line.

Example:
    >>> cfg = RunConfig(backbone="resnet50", fusion="metanet", fold=1)
    >>> cfg.run_id == RunConfig(backbone="resnet50", fusion="metanet", fold=1).run_id
    True
    >>> RunConfig(backbone="resnet50", fusion="sum")
    Traceback (most recent call last):
    metanet_utils.config.ConfigError: fusion='sum' is not allowed; choose one of: none, concat, metanet, metablock
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from . import paths
from .constants import META_FIELDS, PAPER_PROTOCOL as P

FUSIONS: tuple[str, ...] = ("none", "concat", "metanet", "metablock")
#: Metadata layers when a run does not say (Table 1's concatenation: the raw metadata, Sec. 3.5).
DEFAULT_META_LAYERS: dict[str, int] = {"none": 0, "concat": 0, "metanet": 2, "metablock": 1}
SPLIT_SCHEMES: tuple[str, ...] = ("image", "lesion")
#: Run settings that change how a step is launched, not what it computes: not part of ``run_id``.
EXECUTION_ONLY: frozenset[str] = frozenset({"cuda_graphs", "checkpoint_interval_s"})
#: Dropped settings, hashed at the only value they had, so older run ids stay valid.
_RETIRED: dict[str, Any] = {"compile": False, "class_weighted_loss": True}
_WORDS = {str: ("text", "names"), int: ("a whole number", "whole numbers"), float: ("a number", "numbers"),
          bool: ("true or false", "true/false values")}


class ConfigError(ValueError):
    """A configuration value is not allowed; the message says what is."""


def _choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not allowed; choose one of: {', '.join(map(str, allowed))}")


def _refuse(*checks: tuple[bool, str]) -> None:
    for bad, message in checks:
        if bad:
            raise ConfigError(message)


def _check_types(obj: Any) -> None:
    """Refuse a YAML value of the wrong type (``epochs: ten``); ``1e-4``, text to YAML, is taken as a number."""
    for name, hint in typing.get_type_hints(type(obj)).items():
        value = getattr(obj, name)
        if isinstance(hint, types.UnionType):  # X | None
            if value is None:
                continue
            hint = typing.get_args(hint)[0]
        many = typing.get_origin(hint) is tuple
        kind = typing.get_args(hint)[0] if many else hint
        if kind not in _WORDS:
            continue
        if kind is float and isinstance(value, str):
            with contextlib.suppress(ValueError):
                object.__setattr__(obj, name, value := float(value))
        if many and not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}={value!r} is not allowed; it must be a list, e.g. [{value}]")
        want = (int, float) if kind is float else kind
        if any(not isinstance(v, want) or (isinstance(v, bool) and kind is not bool) for v in
               (value if many else [value])):
            raise ConfigError(f"{name}={value!r} is not allowed; it must be "
                              + (f"a list of {_WORDS[kind][1]}" if many else _WORDS[kind][0]))


@dataclass(frozen=True, kw_only=True)
class Settings:
    """The training settings a profile gives its runs; ``image_size`` / ``crop_size`` None: each backbone's own."""

    n_folds: int = P.n_folds
    split_scheme: str = "image"
    split_seed: int = 0
    color_constancy: bool = True
    image_size: int | None = None
    crop_size: int | None = None
    epochs: int = P.epochs
    milestones: tuple[int, ...] = P.milestones
    lr_gamma: float = P.lr_gamma
    batch_size: int = P.batch_size
    lr: float = P.lr
    momentum: float = P.momentum
    weight_decay: float = P.weight_decay
    meta_layers: int | None = P.meta_layers
    pretrained: bool = True
    seed: int = 0
    precision: str = "auto"
    cuda_graphs: str = "off"
    checkpoint_interval_s: float = 0.0
    deterministic: bool = False

    def __post_init__(self) -> None:
        _choice("split_scheme", self.split_scheme, SPLIT_SCHEMES)
        _choice("precision", self.precision, ("auto", "bf16", "fp16", "fp32"))
        _choice("cuda_graphs", self.cuda_graphs, ("off", "on"))
        size, crop, every = self.image_size, self.crop_size, self.checkpoint_interval_s
        _refuse((None not in (size, crop) and crop > size,
                 f"crop_size={crop} is larger than image_size={size}; allowed: crop_size <= image_size"),
                (every < 0, f"checkpoint_interval_s={every} is not allowed; use 0 (every epoch) or more seconds"))


@dataclass(frozen=True, kw_only=True)
class RunConfig(Settings):
    """Every setting of one training run; the same config is the same run (:attr:`run_id`)."""

    backbone: str
    fusion: str = "metanet"
    meta_features: tuple[str, ...] = META_FIELDS
    meta_layers: int | None = None  # None: the variant's paper setting (DEFAULT_META_LAYERS)
    fold: int = 0
    image_size: int = 300
    crop_size: int = 224
    channels_last: str = "auto"
    data_kind: str = "real"
    data_fingerprint: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "meta_features", tuple(self.meta_features))
        object.__setattr__(self, "milestones", tuple(int(m) for m in self.milestones))
        _choice("fusion", self.fusion, FUSIONS)
        if self.meta_layers is None:
            object.__setattr__(self, "meta_layers", DEFAULT_META_LAYERS[self.fusion])
        if self.cuda_graphs == "auto":  # config.json of records written before CUDA graphs became opt-in
            object.__setattr__(self, "cuda_graphs", "off")
        _choice("channels_last", self.channels_last, ("auto", "on", "off"))
        super().__post_init__()
        if unknown := [f for f in self.meta_features if f not in META_FIELDS]:
            raise ConfigError(f"meta feature {unknown[0]!r} is unknown; allowed: {', '.join(META_FIELDS)}")
        feats, n, k, fusion = self.meta_features, self.n_folds, self.meta_layers, self.fusion
        _refuse((len(set(feats)) != len(feats), f"meta_features {feats!r} lists a field twice"),
                (n < 2, f"n_folds={n} is not allowed; use at least 2"),
                (not 0 <= self.fold < n, f"fold={self.fold} is out of range; allowed: 0..{n - 1} (n_folds={n})"),
                (not 0 <= k <= 4, f"meta_layers={k} is not allowed; choose 0..4 (metanet needs >= 1)"),
                (fusion in ("metanet", "metablock") and k < 1, f"fusion={fusion!r} needs meta_layers >= 1 (got {k})"),
                (fusion != "none" and not feats, f"fusion={fusion!r} needs a meta feature; use fusion='none' for none"),
                (self.epochs < 1 or self.batch_size < 1, "epochs and batch_size must be >= 1"))

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """The config of a record's ``config.json``."""
        names = {f.name for f in fields(cls)}
        if unknown := sorted(set(d) - names - {"run_id"} - set(_RETIRED)):
            raise ConfigError(f"unknown run setting(s) {unknown}; allowed: {', '.join(sorted(names))}")
        for k in set(d) & set(_RETIRED):
            if d[k] != _RETIRED[k]:
                raise ConfigError(f"{k}={d[k]!r} is no longer a setting; the kit runs {k}={_RETIRED[k]!r}")
        return cls(**{k: v for k, v in d.items() if k in names})

    @property
    def run_id(self) -> str:
        """A readable prefix and a hash of every setting but :data:`EXECUTION_ONLY`."""
        d = {**_RETIRED, **{k: v for k, v in self.to_dict().items() if k not in EXECUTION_ONLY}}
        digest = hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]
        meta = "+".join(f[:3] for f in self.meta_features) or "nometa"
        backbone = self.backbone.replace("/", "_").replace(".", "_")
        return f"{backbone}-{self.fusion}-{meta}-k{self.meta_layers}-f{self.fold}-{digest}"

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, kw_only=True)
class Ablations:
    """The ablations a profile asks for (Tables 3 and 4)."""

    table3: bool = False
    table4: bool = False
    backbone: str | None = None  # the paper's is SENet154
    meta_layers: tuple[int, ...] = (1, 2, 3, 4)

    def __post_init__(self) -> None:
        _check_types(self)
        object.__setattr__(self, "meta_layers", tuple(self.meta_layers))


@dataclass(frozen=True, kw_only=True)
class Profile(Settings):
    """One ``configs/<name>.yaml`` (keys: docs/reference.md)."""

    name: str
    description: str = ""
    data: str = "auto"  # auto: the full data if found, else the shipped sample
    max_images: int | None = None
    backbones: tuple[str, ...] = P.backbones
    fusions: tuple[str, ...] = P.fusions
    folds: tuple[int, ...] | None = None
    meta_layers: int = P.meta_layers
    ablations: Ablations = field(default_factory=Ablations)
    cam_cases: int = 4
    workers: int = 1
    runs_together: int = 1  # K > 1: K runs at once in one process (metanet_utils.ops.together)

    def __post_init__(self) -> None:
        if isinstance(self.ablations, dict):
            object.__setattr__(self, "ablations", _from_mapping(Ablations, self.ablations, "ablations"))
        if isinstance(self.cuda_graphs, bool):  # YAML reads an unquoted on / off as true / false
            object.__setattr__(self, "cuda_graphs", "on" if self.cuda_graphs else "off")
        _check_types(self)
        for name in ("backbones", "fusions", "milestones", "folds"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, tuple(getattr(self, name)))
        super().__post_init__()
        _choice("data", self.data, ("auto", "real"))
        for f in self.fusions:
            _choice("fusion", f, FUSIONS)
        out = ", ".join(str(f) for f in self.folds or () if not 0 <= f < self.n_folds)
        _refuse((not self.backbones, "backbones must list at least one backbone"),
                (bool(out), f"fold {out} is out of range; allowed: 0..{self.n_folds - 1}"),
                (self.workers < 1, f"workers={self.workers} is not allowed; it must be 1 or more"),
                (self.runs_together < 1, f"runs_together={self.runs_together} is not allowed; use a whole number >= 1"))

    @property
    def fold_indices(self) -> tuple[int, ...]:
        return self.folds if self.folds is not None else tuple(range(self.n_folds))


def _from_mapping(cls, mapping: dict[str, Any], where: str):
    allowed = {f.name for f in fields(cls)}
    if unknown := sorted(set(mapping) - allowed):
        raise ConfigError(f"unknown key(s) {unknown} in {where}; allowed: {', '.join(sorted(allowed))}")
    return cls(**mapping)


def list_profiles() -> list[str]:
    return sorted(p.stem for p in paths.configs_dir().glob("*.yaml"))


def load_profile(name_or_path: str | Path, **overrides: Any) -> Profile:
    """Read ``configs/<name>.yaml`` (or a YAML path); ``overrides`` that are not None win."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = paths.configs_dir() / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ConfigError(f"profile {str(name_or_path)!r} not found in {path.parent}; "
                              f"allowed: {', '.join(list_profiles()) or '(none found)'}")
    elif not path.is_file():
        raise ConfigError(f"profile file {path} does not exist")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a profile must be a YAML mapping of key: value")
    raw = {"name": path.stem, **raw, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return _from_mapping(Profile, raw, str(path))
    except TypeError as e:  # a value of a type the checks do not reach
        raise ConfigError(f"{path}: {e}") from None
