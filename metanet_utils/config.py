"""Settings as frozen dataclasses: :class:`RunConfig` is one training run, :class:`Profile` one
``configs/<name>.yaml``. Defaults are the paper's protocol (:data:`~metanet_utils.constants.PAPER_PROTOCOL`).
A bad value or an unknown key stops with one line saying what is allowed.

Example:
    >>> cfg = RunConfig(backbone="resnet50", fusion="metanet", fold=1)
    >>> cfg.run_id == RunConfig(backbone="resnet50", fusion="metanet", fold=1).run_id
    True
    >>> RunConfig(backbone="resnet50", fusion="sum")
    Traceback (most recent call last):
    metanet_utils.config.ConfigError: fusion='sum' is not allowed; choose one of: none, concat, metanet, metablock
"""

from __future__ import annotations

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

__all__ = ["ConfigError", "FUSIONS", "DEFAULT_META_LAYERS", "SPLIT_SCHEMES", "EXECUTION_ONLY", "RunConfig",
           "Ablations", "Profile", "check_runs_together", "load_profile", "list_profiles"]

FUSIONS: tuple[str, ...] = ("none", "concat", "metanet", "metablock")
#: Metadata layers when a run does not say: each variant's paper setting (MetaNet two, Sec. 2; Table 1's
#: concatenation none, the raw metadata, Sec. 3.5; Meta-Block one).
DEFAULT_META_LAYERS: dict[str, int] = {"none": 0, "concat": 0, "metanet": 2, "metablock": 1}
#: Cross-validation schemes (:func:`metanet_utils.splits.make_folds`): stratified by class, also grouped by lesion.
SPLIT_SCHEMES: tuple[str, ...] = ("image", "lesion")
#: Run settings that change how a step is launched, not what it computes: not part of ``run_id``.
EXECUTION_ONLY: frozenset[str] = frozenset({"cuda_graphs", "checkpoint_interval_s"})
#: Settings the kit dropped, hashed at the only value they ever had, so run ids of older records stay valid.
_RETIRED: dict[str, Any] = {"compile": False, "class_weighted_loss": True}


class ConfigError(ValueError):
    """A configuration value is not allowed; the one-line message says what is."""


def _choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not allowed; choose one of: {', '.join(map(str, allowed))}")


def _check_shared(c: RunConfig | Profile) -> None:
    """The checks of the settings a run and a profile share."""
    _choice("split_scheme", c.split_scheme, SPLIT_SCHEMES)
    _choice("precision", c.precision, ("auto", "bf16", "fp16", "fp32"))
    _choice("cuda_graphs", c.cuda_graphs, ("off", "on"))  # on: replay each step from a CUDA graph (GPU, opt-in)
    if c.image_size is not None and c.crop_size is not None and c.crop_size > c.image_size:
        raise ConfigError(f"crop_size={c.crop_size} is larger than image_size={c.image_size}; "
                          "allowed: crop_size <= image_size")
    if c.checkpoint_interval_s < 0:
        raise ConfigError(f"checkpoint_interval_s={c.checkpoint_interval_s} is not allowed; "
                          "use 0 (every epoch) or more seconds")


_WORDS = {str: ("text", "names"), int: ("a whole number", "whole numbers"), float: ("a number", "numbers"),
          bool: ("true or false", "true/false values")}


def _check_types(obj: Any) -> None:
    """Refuse a YAML value of the wrong type (``epochs: ten``, ``backbones: resnet50``) in one line; ``1e-4``,
    which YAML reads as text, is taken as a number."""
    for name, hint in typing.get_type_hints(type(obj)).items():
        value, args = getattr(obj, name), typing.get_args(hint)
        if isinstance(hint, types.UnionType):  # X | None
            if value is None:
                continue
            hint = args[0]
        if hint is float and isinstance(value, str):
            try:
                object.__setattr__(obj, name, value := float(value))
            except ValueError:
                pass
        if typing.get_origin(hint) is tuple and typing.get_args(hint)[0] in _WORDS:
            hint = typing.get_args(hint)[0]
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"{name}={value!r} is not allowed; it must be a list, e.g. [{value}]")
            items, expected = list(value), f"a list of {_WORDS[hint][1]}"
        elif hint in _WORDS:
            items, expected = [value], _WORDS[hint][0]
        else:
            continue
        want = (int, float) if hint is float else hint
        if any(not isinstance(v, want) or (isinstance(v, bool) and hint is not bool) for v in items):
            raise ConfigError(f"{name}={value!r} is not allowed; it must be {expected}")


@dataclass(frozen=True)
class RunConfig:
    """Every setting of one training run; the same config is the same run (:attr:`run_id`)."""

    backbone: str
    fusion: str = "metanet"
    meta_features: tuple[str, ...] = META_FIELDS
    meta_layers: int | None = None  # None: the variant's paper setting (DEFAULT_META_LAYERS)
    fold: int = 0
    n_folds: int = P.n_folds
    split_scheme: str = "image"
    split_seed: int = 0
    color_constancy: bool = True
    image_size: int = 300
    crop_size: int = 224
    epochs: int = P.epochs
    milestones: tuple[int, ...] = P.milestones
    lr_gamma: float = P.lr_gamma
    batch_size: int = P.batch_size
    lr: float = P.lr
    momentum: float = P.momentum
    weight_decay: float = P.weight_decay
    pretrained: bool = True
    seed: int = 0
    precision: str = "auto"
    channels_last: str = "auto"
    cuda_graphs: str = "off"
    checkpoint_interval_s: float = 0.0
    deterministic: bool = False
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
        _check_shared(self)
        for f in self.meta_features:
            if f not in META_FIELDS:
                raise ConfigError(f"meta feature {f!r} is unknown; allowed: {', '.join(META_FIELDS)}")
        if len(set(self.meta_features)) != len(self.meta_features):
            raise ConfigError(f"meta_features {self.meta_features!r} lists a field twice")
        if not 0 <= self.fold < self.n_folds:
            raise ConfigError(f"fold={self.fold} is out of range; allowed: 0..{self.n_folds - 1} "
                              f"(n_folds={self.n_folds})")
        if self.n_folds < 2:
            raise ConfigError(f"n_folds={self.n_folds} is not allowed; use at least 2")
        if not 0 <= self.meta_layers <= 4:
            raise ConfigError(f"meta_layers={self.meta_layers} is not allowed; choose 0..4 (metanet needs >= 1)")
        if self.fusion in ("metanet", "metablock") and self.meta_layers < 1:
            raise ConfigError(f"fusion={self.fusion!r} needs meta_layers >= 1 (got {self.meta_layers})")
        if self.fusion != "none" and not self.meta_features:
            raise ConfigError(f"fusion={self.fusion!r} needs at least one meta feature; use fusion='none' for none")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs and batch_size must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """The config of a record's ``config.json`` (its ``run_id`` and retired settings left aside)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names - {"run_id"} - set(_RETIRED))
        if unknown:
            raise ConfigError(f"unknown run setting(s) {unknown}; allowed: {', '.join(sorted(names))}")
        for k in set(d) & set(_RETIRED):
            if d[k] != _RETIRED[k]:
                raise ConfigError(f"{k}={d[k]!r} is no longer a setting; the kit runs {k}={_RETIRED[k]!r}")
        return cls(**{k: v for k, v in d.items() if k in names})

    @property
    def run_id(self) -> str:
        """A readable prefix plus a hash of every setting that can change the result: same config, same id.

        Settings in :data:`EXECUTION_ONLY` are recorded in ``config.json`` but left out of the hash, so
        switching them never retrains a finished run.
        """
        d = {**_RETIRED, **{k: v for k, v in self.to_dict().items() if k not in EXECUTION_ONLY}}
        digest = hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]
        meta = "+".join(f[:3] for f in self.meta_features) or "nometa"
        backbone = self.backbone.replace("/", "_").replace(".", "_")
        return f"{backbone}-{self.fusion}-{meta}-k{self.meta_layers}-f{self.fold}-{digest}"

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Ablations:
    """The ablation studies a profile asks for (paper Tables 3 and 4)."""

    table3: bool = False
    table4: bool = False
    backbone: str | None = None  # the paper's is SENet154
    meta_layers: tuple[int, ...] = (1, 2, 3, 4)

    def __post_init__(self) -> None:
        _check_types(self)
        object.__setattr__(self, "meta_layers", tuple(self.meta_layers))


@dataclass(frozen=True)
class Profile:
    """One ``configs/<name>.yaml`` (keys: docs/reference.md). ``image_size`` / ``crop_size`` left as ``None``
    take each backbone's own (300 / 224, PNASNet 441 / 331)."""

    name: str
    description: str = ""
    data: str = "auto"  # auto: the full data if found, else the shipped sample
    max_images: int | None = None
    backbones: tuple[str, ...] = P.backbones
    fusions: tuple[str, ...] = P.fusions
    n_folds: int = P.n_folds
    folds: tuple[int, ...] | None = None
    split_scheme: str = "image"
    split_seed: int = 0
    epochs: int = P.epochs
    milestones: tuple[int, ...] = P.milestones
    lr_gamma: float = P.lr_gamma
    image_size: int | None = None
    crop_size: int | None = None
    batch_size: int = P.batch_size
    lr: float = P.lr
    momentum: float = P.momentum
    weight_decay: float = P.weight_decay
    meta_layers: int = P.meta_layers
    color_constancy: bool = True
    pretrained: bool = True
    precision: str = "auto"
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
        for name in ("backbones", "fusions", "milestones", "folds"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, tuple(getattr(self, name)))
        _choice("data", self.data, ("auto", "real"))
        _check_shared(self)
        for f in self.fusions:
            _choice("fusion", f, FUSIONS)
        if not self.backbones:
            raise ConfigError("backbones must list at least one backbone")
        for f in self.folds or ():
            if not 0 <= f < self.n_folds:
                raise ConfigError(f"fold {f} is out of range; allowed: 0..{self.n_folds - 1}")
        if self.workers < 1:
            raise ConfigError(f"workers={self.workers} is not allowed; it must be 1 or more")
        check_runs_together(self.runs_together)

    @property
    def fold_indices(self) -> tuple[int, ...]:
        return self.folds if self.folds is not None else tuple(range(self.n_folds))


def check_runs_together(value: Any) -> int:
    """``runs_together``: how many runs one process trains at once, a whole number >= 1 (1, the default,
    one at a time; more is opt-in, see :mod:`metanet_utils.ops.together`)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ConfigError(f"runs_together={value!r} is not allowed; use a whole number >= 1")


def _from_mapping(cls, mapping: dict[str, Any], where: str):
    allowed = {f.name for f in fields(cls)}
    unknown = sorted(set(mapping) - allowed)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where}; allowed: {', '.join(sorted(allowed))}")
    return cls(**mapping)


def list_profiles() -> list[str]:
    """The names of the profiles in ``configs/``."""
    return sorted(p.stem for p in paths.configs_dir().glob("*.yaml"))


def load_profile(name_or_path: str | Path, **overrides: Any) -> Profile:
    """Read ``configs/<name>.yaml`` (or a YAML path) into a :class:`Profile`; ``overrides`` that are not None win.

    Example:
        >>> load_profile("smoke").epochs
        1
    """
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
