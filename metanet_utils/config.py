"""Typed configuration: a frozen :class:`RunConfig` for one training run and a frozen
:class:`Profile` that mirrors one ``configs/<name>.yaml`` file.

A profile is a plain YAML file; unknown keys are refused with the list of allowed
ones, so a typo never silently falls back to a default.

Example:
    >>> from metanet_utils.config import RunConfig
    >>> cfg = RunConfig(backbone="test_resnet", fusion="metanet", fold=1)
    >>> cfg.run_id == RunConfig(backbone="test_resnet", fusion="metanet", fold=1).run_id
    True
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .constants import META_FIELDS

__all__ = [
    "ConfigError",
    "FUSIONS",
    "DEFAULT_META_LAYERS",
    "SPLIT_SCHEMES",
    "PRECISIONS",
    "CUDA_GRAPHS",
    "EXECUTION_ONLY",
    "RunConfig",
    "Ablations",
    "Profile",
    "load_profile",
    "profile_path",
    "list_profiles",
]

FUSIONS: tuple[str, ...] = ("none", "concat", "metanet", "metablock")
#: Number of metadata layers when a run does not say (``meta_layers=None``): the paper's setting of each variant
#: (MetaNet: two layers, Sec. 2; concatenation in Table 1: none, the raw metadata, Sec. 3.5; Meta-Block: one).
DEFAULT_META_LAYERS: dict[str, int] = {"none": 0, "concat": 0, "metanet": 2, "metablock": 1}
SPLIT_SCHEMES: tuple[str, ...] = ("image", "lesion")
PRECISIONS: tuple[str, ...] = ("auto", "bf16", "fp16", "fp32")
DATA_SOURCES: tuple[str, ...] = ("auto", "real")  # auto: the full data if found, else the shipped sample
#: ``cuda_graphs``: replay each training step from a CUDA graph (``on``, GPU only, opt-in) or not (``off``).
CUDA_GRAPHS: tuple[str, ...] = ("off", "on")
#: Run settings that change how a step is launched, not what it computes: not part of ``run_id``.
EXECUTION_ONLY: frozenset[str] = frozenset({"cuda_graphs", "checkpoint_interval_s"})


class ConfigError(ValueError):
    """A configuration value is not allowed; the message says what is."""


def _check_choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not allowed; choose one of: {', '.join(map(str, allowed))}")


def _check_meta_features(features: tuple[str, ...]) -> None:
    for f in features:
        if f not in META_FIELDS:
            raise ConfigError(f"meta feature {f!r} is unknown; allowed: {', '.join(META_FIELDS)}")
    if len(set(features)) != len(features):
        raise ConfigError(f"meta_features {features!r} lists a field twice")


_TYPES = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,)}
_TYPE_WORDS = {"str": "text", "int": "a whole number", "float": "a number", "bool": "true or false"}
_TYPE_PLURALS = {"str": "names", "int": "whole numbers", "float": "numbers", "bool": "true/false values"}


def _check_types(obj: Any) -> None:
    """Refuse a YAML value of the wrong type in one line (``epochs: ten``, ``backbones: resnet50``).

    A float written as ``1e-4`` (which YAML 1.1 reads as a string) is accepted as a number.
    """
    for f in fields(obj):
        t = str(f.type)
        optional = t.endswith(" | None")
        base = t[: -len(" | None")] if optional else t
        value = getattr(obj, f.name)
        if value is None and optional:
            continue
        if base == "float" and isinstance(value, str):
            try:
                object.__setattr__(obj, f.name, value := float(value))
            except ValueError:
                pass
        if base in _TYPES:
            items, want, expected = [value], _TYPES[base], _TYPE_WORDS[base]
        elif base.startswith("tuple[") and base[6:].split(",")[0] in _TYPES:
            inner = base[6:].split(",")[0]
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"{f.name}={value!r} is not allowed; it must be a list, e.g. [{value}]")
            items, want, expected = list(value), _TYPES[inner], f"a list of {_TYPE_PLURALS[inner]}"
        else:
            continue
        for v in items:
            if not isinstance(v, want) or (isinstance(v, bool) and bool not in want):
                raise ConfigError(f"{f.name}={value!r} is not allowed; it must be {expected}")


def _check_interval(seconds: float) -> None:
    if seconds < 0:
        raise ConfigError(f"checkpoint_interval_s={seconds} is not allowed; use 0 (every epoch) or more seconds")


@dataclass(frozen=True)
class RunConfig:
    """Every setting of one training run; the same config is the same run (see :attr:`run_id`).

    Defaults are the paper's protocol (Li et al. 2020, Sec. 3.1).
    """

    backbone: str
    fusion: str = "metanet"
    meta_features: tuple[str, ...] = META_FIELDS
    meta_layers: int | None = None  # None: the variant's paper setting (DEFAULT_META_LAYERS)
    fold: int = 0
    n_folds: int = 5
    split_scheme: str = "image"
    split_seed: int = 0
    color_constancy: bool = True
    image_size: int = 300
    crop_size: int = 224
    epochs: int = 250
    milestones: tuple[int, ...] = (50, 120, 200)
    lr_gamma: float = 0.1
    batch_size: int = 32
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    class_weighted_loss: bool = True
    pretrained: bool = True
    seed: int = 0
    precision: str = "auto"
    channels_last: str = "auto"
    compile: bool = False
    cuda_graphs: str = "off"
    checkpoint_interval_s: float = 0.0
    deterministic: bool = False
    data_kind: str = "real"
    data_fingerprint: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "meta_features", tuple(self.meta_features))
        object.__setattr__(self, "milestones", tuple(int(m) for m in self.milestones))
        _check_choice("fusion", self.fusion, FUSIONS)
        if self.meta_layers is None:
            object.__setattr__(self, "meta_layers", DEFAULT_META_LAYERS[self.fusion])
        _check_choice("split_scheme", self.split_scheme, SPLIT_SCHEMES)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("channels_last", self.channels_last, ("auto", "on", "off"))
        if self.cuda_graphs == "auto":  # config.json of records written before CUDA graphs became opt-in
            object.__setattr__(self, "cuda_graphs", "off")
        _check_choice("cuda_graphs", self.cuda_graphs, CUDA_GRAPHS)
        _check_meta_features(self.meta_features)
        if not 0 <= self.fold < self.n_folds:
            raise ConfigError(f"fold={self.fold} is out of range; allowed: 0..{self.n_folds - 1} (n_folds={self.n_folds})")
        if self.n_folds < 2:
            raise ConfigError(f"n_folds={self.n_folds} is not allowed; use at least 2")
        if self.crop_size > self.image_size:
            raise ConfigError(
                f"crop_size={self.crop_size} is larger than image_size={self.image_size}; "
                f"allowed: crop_size <= image_size")
        if self.meta_layers < 0 or self.meta_layers > 4:
            raise ConfigError(f"meta_layers={self.meta_layers} is not allowed; choose 0..4 (metanet needs >= 1)")
        if self.fusion in ("metanet", "metablock") and self.meta_layers < 1:
            raise ConfigError(f"fusion={self.fusion!r} needs meta_layers >= 1 (got {self.meta_layers})")
        if self.fusion != "none" and not self.meta_features:
            raise ConfigError(f"fusion={self.fusion!r} needs at least one meta feature; use fusion='none' for none")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs and batch_size must be >= 1")
        _check_interval(self.checkpoint_interval_s)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["meta_features"] = list(self.meta_features)
        d["milestones"] = list(self.milestones)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names - {"run_id"})
        if unknown:
            raise ConfigError(f"unknown run setting(s) {unknown}; allowed: {', '.join(sorted(names))}")
        return cls(**{k: v for k, v in d.items() if k in names})

    @property
    def run_id(self) -> str:
        """Readable prefix plus a hash of every setting that can change the result: same config, same id.

        Settings in :data:`EXECUTION_ONLY` (how the same computation is launched) are recorded in
        ``config.json`` but left out of the hash, so switching them never retrains a finished run.
        """
        d = {k: v for k, v in self.to_dict().items() if k not in EXECUTION_ONLY}
        blob = json.dumps(d, sort_keys=True).encode()
        digest = hashlib.sha256(blob).hexdigest()[:10]
        meta = "+".join(f[:3] for f in self.meta_features) or "nometa"
        safe_backbone = self.backbone.replace("/", "_").replace(".", "_")
        return f"{safe_backbone}-{self.fusion}-{meta}-k{self.meta_layers}-f{self.fold}-{digest}"

    def replace(self, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Ablations:
    """The ablation studies a profile asks for (paper Tables 3 and 4)."""

    table3: bool = False
    table4: bool = False
    backbone: str | None = None  # the paper uses SENet154
    meta_layers: tuple[int, ...] = (1, 2, 3, 4)

    def __post_init__(self) -> None:
        _check_types(self)
        object.__setattr__(self, "meta_layers", tuple(int(k) for k in self.meta_layers))


@dataclass(frozen=True)
class Profile:
    """One ``configs/<name>.yaml``: which data, which runs, which training settings.

    ``image_size`` / ``crop_size`` left as ``None`` take each backbone's own default
    (300/224, or 441/331 for PNASNet).
    """

    name: str
    description: str = ""
    data: str = "auto"
    max_images: int | None = None
    backbones: tuple[str, ...] = ("alexnet", "vgg19", "resnet50", "densenet161", "senet154", "pnasnet5large")
    fusions: tuple[str, ...] = ("none", "concat", "metanet")
    n_folds: int = 5
    folds: tuple[int, ...] | None = None
    split_scheme: str = "image"
    split_seed: int = 0
    epochs: int = 250
    milestones: tuple[int, ...] = (50, 120, 200)
    lr_gamma: float = 0.1
    image_size: int | None = None
    crop_size: int | None = None
    batch_size: int = 32
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    meta_layers: int = 2
    color_constancy: bool = True
    pretrained: bool = True
    precision: str = "auto"
    compile: bool = False
    cuda_graphs: str = "off"
    checkpoint_interval_s: float = 0.0
    deterministic: bool = False
    seed: int = 0
    ablations: Ablations = field(default_factory=Ablations)
    cam_cases: int = 4
    workers: int = 1
    runs_together: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.ablations, dict):
            object.__setattr__(self, "ablations", _from_mapping(Ablations, self.ablations, "ablations"))
        if isinstance(self.cuda_graphs, bool):  # YAML reads an unquoted on / off as true / false
            object.__setattr__(self, "cuda_graphs", "on" if self.cuda_graphs else "off")
        _check_types(self)
        for name in ("backbones", "fusions", "milestones"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.folds is not None:
            object.__setattr__(self, "folds", tuple(int(f) for f in self.folds))
        _check_choice("data", self.data, DATA_SOURCES)
        _check_choice("split_scheme", self.split_scheme, SPLIT_SCHEMES)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("cuda_graphs", self.cuda_graphs, CUDA_GRAPHS)
        for f in self.fusions:
            _check_choice("fusion", f, FUSIONS)
        if not self.backbones:
            raise ConfigError("backbones must list at least one backbone")
        for f in self.folds or ():
            if not 0 <= f < self.n_folds:
                raise ConfigError(f"fold {f} is out of range; allowed: 0..{self.n_folds - 1}")
        if self.image_size is not None and self.crop_size is not None and self.crop_size > self.image_size:
            raise ConfigError(f"crop_size={self.crop_size} is larger than image_size={self.image_size}; "
                              "allowed: crop_size <= image_size")
        _check_interval(self.checkpoint_interval_s)
        if self.workers < 1:
            raise ConfigError(f"workers={self.workers} is not allowed; it must be 1 or more")
        check_runs_together(self.runs_together)

    @property
    def fold_indices(self) -> tuple[int, ...]:
        return self.folds if self.folds is not None else tuple(range(self.n_folds))

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self), default=list))


def check_runs_together(value: Any) -> int:
    """``runs_together``: how many runs one process trains at once (a whole number >= 1; 1, the default,
    trains one at a time; more is opt-in, see :mod:`metanet_utils.together`)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ConfigError(f"runs_together={value!r} is not allowed; use a whole number >= 1")


def _from_mapping(cls, mapping: dict[str, Any], where: str):
    allowed = {f.name for f in fields(cls)}
    unknown = sorted(set(mapping) - allowed)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where}; allowed: {', '.join(sorted(allowed))}")
    return cls(**mapping)


def profile_path(name_or_path: str | Path, configs_dir: str | Path | None = None) -> Path:
    """Resolve a profile name (``smoke``) or a path to a YAML file."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise ConfigError(f"profile file {p} does not exist")
        return p
    from .paths import configs_dir as _configs_dir

    d = Path(configs_dir) if configs_dir is not None else _configs_dir()
    candidate = d / f"{name_or_path}.yaml"
    if not candidate.is_file():
        names = ", ".join(list_profiles(d)) or "(none found)"
        raise ConfigError(f"profile {str(name_or_path)!r} not found in {d}; allowed: {names}")
    return candidate


def list_profiles(configs_dir: str | Path | None = None) -> list[str]:
    from .paths import configs_dir as _configs_dir

    d = Path(configs_dir) if configs_dir is not None else _configs_dir()
    return sorted(p.stem for p in d.glob("*.yaml"))


def load_profile(name_or_path: str | Path, configs_dir: str | Path | None = None, **overrides: Any) -> Profile:
    """Read ``configs/<name>.yaml`` (or a YAML path) into a :class:`Profile`.

    Example:
        >>> load_profile("smoke").epochs
        1
    """
    path = profile_path(name_or_path, configs_dir)
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a profile must be a YAML mapping of key: value")
    raw.setdefault("name", path.stem)
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return _from_mapping(Profile, raw, str(path))
    except TypeError as e:  # wrong value types
        raise ConfigError(f"{path}: {e}") from None
