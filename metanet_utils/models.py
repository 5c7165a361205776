"""Backbones and fusion heads of the MetaNet paper (Li et al., ISBI 2020, Sec. 2 and 3.5).

A model is a backbone that returns its last convolutional feature maps ``F`` (B x C x H x W) and a
fusion head that turns ``F`` and the metadata vector ``m`` (B x meta_dim) into class logits:

* ``none``     -- ``logits = W avg(F) + b``; the metadata is ignored (Table 1, "No metadata").
* ``concat``   -- ``logits = W [avg(F), phi(m)] + b`` with ``phi`` = ``k`` fully connected layers ending at
  width C (ReLU between them and after the last: the kit's choice, Sec. 3.5 names no activation), or the
  raw metadata when ``k = 0`` (Table 1, "Concatenation-based": Sec. 3.5 says that approach has no fully
  connected layer).
* ``metanet``  -- ``g = sigmoid(MLP_k(m))`` in (0, 1)^C (ReLU between the layers), every channel of ``F``
  is multiplied by its gate before pooling: ``logits = W avg(F * g) + b`` (Sec. 2, Fig. 1b). Because the
  gate is one number per channel, ``avg(F * g) = g * avg(F)``; :meth:`MetaModel.forward` uses the cheaper
  right-hand side and :meth:`MetaModel.feature_maps_for_cam` the gated maps.
* ``metablock`` -- (not in the paper; off by default) the Meta-Block of Pacheco & Krohling (2021).

Hidden widths of the ``k`` metadata layers: ``k=1: [C]``, ``k=2: [C/2, C]``, ``k=3: [C/4, C/2, C]``
(paper Sec. 3.5, which gives widths only for two layers, 1024, and three, 512 and 1024, with C = 2048), and
``k=4: [C/8, C/4, C/2, C]``, the kit's extension of that pattern (see :func:`meta_widths`).

Backbones: the paper's six (:data:`PAPER_BACKBONES`, aliases in :data:`BACKBONE_ALIASES`, the paper's
spellings in :data:`DISPLAY_NAMES`) or any timm model name. "Last convolutional feature maps" are
torchvision's ``alexnet().features`` for AlexNet (C = 256, after the last max-pool, as torchvision's
``features``; the 6x6 adaptive pool and the fc6-fc8 classifier are replaced by the fusion head) and timm's
``forward_features`` for every timm model. For VGG19 that is the 512-channel output of the convolutional
``features`` stack: timm's ``pre_logits`` (fc6/fc7 written as 7x7 and 1x1 convolutions, 4096 channels)
are the fully connected layers of VGG, not convolutional feature maps, and are dropped -- the gate of the
paper acts on the channels of the last *convolutional* layer, and the authors' code used torchvision-style
backbones whose last conv features are these 512 maps.

Pretrained weights come from the Hugging Face hub / download URLs through timm (torchvision's URL for
AlexNet), or -- on machines without internet -- from a folder filled beforehand by :func:`fetch_weights`
(``weights_dir=`` or ``$METANET_WEIGHTS_DIR``). Without weights the kit raises :class:`WeightsUnavailable`
saying how to fix it; random initialisation happens only with ``pretrained=False``.

Example:
    >>> import torch
    >>> from metanet_utils.models import build_model
    >>> model = build_model("test_resnet", "metanet", pretrained=False).eval()
    >>> model(torch.randn(2, 3, 64, 64), torch.rand(2, 17)).shape
    torch.Size([2, 7])
"""

from __future__ import annotations

import difflib
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Sequence

import torch
from torch import nn

from .config import DEFAULT_META_LAYERS, FUSIONS  # the fusion variants of build_model and their layers

__all__ = [
    "PAPER_BACKBONES",
    "ALL_SIX",
    "BACKBONE_ALIASES",
    "DISPLAY_NAMES",
    "FUSIONS",
    "PAPER_FUSIONS",
    "DEFAULT_META_LAYERS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ALEXNET_URL",
    "InputSpec",
    "WeightsUnavailable",
    "ensure_weights",
    "Backbone",
    "MetaBlock",
    "MetaModel",
    "resolve_backbone",
    "display_name",
    "input_spec",
    "channels_last_preferred",
    "meta_widths",
    "weights_filenames",
    "find_weights",
    "weights_available",
    "fetch_weights",
    "build_backbone",
    "build_model",
]

# --------------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------------

#: The six backbones of the paper's Table 1, as short aliases, in the paper's order.
PAPER_BACKBONES: tuple[str, ...] = ("alexnet", "vgg19", "resnet50", "densenet161", "senet154", "pnasnet5large")
#: Same as :data:`PAPER_BACKBONES` (the default of :func:`fetch_weights`).
ALL_SIX = PAPER_BACKBONES

#: Alias -> model name: ``alexnet`` is torchvision's; the others are timm names with the pretrained tag
#: pinned to the weights closest to what a 2019 PyTorch user had (torchvision's original ImageNet weights
#: for VGG19 / ResNet50 / DenseNet161, Cadene's SENet154 port, the TF PNASNet-5-Large release).
BACKBONE_ALIASES: dict[str, str] = {
    "alexnet": "alexnet",
    "vgg19": "vgg19.tv_in1k",
    "resnet50": "resnet50.tv_in1k",
    "densenet161": "densenet161.tv_in1k",
    "senet154": "legacy_senet154.in1k",
    "pnasnet5large": "pnasnet5large.tf_in1k",
}

#: Alias -> the paper's spelling (Table 1).
DISPLAY_NAMES: dict[str, str] = {
    "alexnet": "AlexNet",
    "vgg19": "VGG19",
    "resnet50": "ResNet50",
    "densenet161": "DenseNet161",
    "senet154": "SENet154",
    "pnasnet5large": "PNASNet-5",
}

#: The three variants of the paper's Table 1 (no metadata / concatenation / multiplication).
PAPER_FUSIONS: tuple[str, ...] = ("none", "concat", "metanet")

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: torchvision's ImageNet weights of AlexNet (``AlexNet_Weights.IMAGENET1K_V1``).
ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
_ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
_ALEXNET_HASH = "7be5be79"

_FETCH_HINT = (
    "Fix: on a machine with internet run `python -m metanet_utils weights fetch --weights-dir DIR` "
    "(or metanet_utils.models.fetch_weights(DIR)), copy DIR here, then set METANET_WEIGHTS_DIR=DIR or pass "
    "--weights-dir DIR (weights_dir=DIR); or use pretrained=False for a random initialisation."
)


def _unknown_backbone(name: str) -> ValueError:
    hint = ""
    try:
        import timm

        close = difflib.get_close_matches(name.lower(), list(BACKBONE_ALIASES) + timm.list_models(), n=3)
        if close:
            hint = f" (did you mean {', '.join(close)}?)"
    except Exception:  # pragma: no cover - the hint is a nicety
        pass
    return ValueError(
        f"unknown backbone {name!r}{hint}: use one of the paper's six "
        f"({', '.join(PAPER_BACKBONES)}) or any timm model name (see timm.list_models())"
    )


def resolve_backbone(name: str) -> str:
    """Canonical model name of a backbone: ``'alexnet'`` (torchvision) or a timm model name.

    Accepts the aliases of :data:`BACKBONE_ALIASES`, the paper's spellings (:data:`DISPLAY_NAMES`, any
    case) and timm model names with or without a pretrained tag.

    Raises:
        ValueError: one line listing the six aliases, for a name neither alias nor timm model.

    Example:
        >>> resolve_backbone("SENet154"), resolve_backbone("resnet10t")
        ('legacy_senet154.in1k', 'resnet10t')
    """
    key = str(name).strip()
    low = key.lower()
    if low in BACKBONE_ALIASES:
        return BACKBONE_ALIASES[low]
    by_display = {v.lower(): k for k, v in DISPLAY_NAMES.items()}
    by_display.update({"pnasnet-5-large": "pnasnet5large", "pnasnet5": "pnasnet5large"})
    if low in by_display:
        return BACKBONE_ALIASES[by_display[low]]
    if key in BACKBONE_ALIASES.values():
        return key
    import timm
    from timm.models import get_pretrained_cfg

    if not key or not timm.is_model(key):
        raise _unknown_backbone(key)
    if "." in key:  # a tag that timm does not know -> same one-line error
        try:
            get_pretrained_cfg(key)
        except RuntimeError:
            raise _unknown_backbone(key) from None
    return key


def _alias_of(canonical: str) -> str | None:
    for alias, full in BACKBONE_ALIASES.items():
        if full == canonical:
            return alias
    return None


def display_name(backbone: str) -> str:
    """The paper's spelling of a backbone (``'PNASNet-5'``), else its model name.

    Example:
        >>> display_name("senet154"), display_name("resnet10t")
        ('SENet154', 'resnet10t')
    """
    canonical = resolve_backbone(backbone)
    alias = _alias_of(canonical)
    return DISPLAY_NAMES[alias] if alias else canonical


def _arch(canonical: str) -> str:
    return canonical.split(".", 1)[0]


def _pretrained_cfg(canonical: str) -> dict[str, Any]:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(canonical)
    return cfg.to_dict() if cfg is not None else {}


def _full_timm_name(canonical: str) -> str:
    """``resnet10t`` -> ``resnet10t.c3_in1k`` (timm's default tag); tagged names unchanged."""
    if "." in canonical:
        return canonical
    cfg = _pretrained_cfg(canonical)
    tag = cfg.get("tag")
    return f"{cfg.get('architecture') or canonical}.{tag}" if tag else canonical


# --------------------------------------------------------------------------------------------------
# Input specification and memory layout
# --------------------------------------------------------------------------------------------------


class InputSpec(NamedTuple):
    """How images are fed to a backbone: resize to ``resize`` x ``resize``, crop ``crop`` x ``crop``,
    then normalise with ``mean`` / ``std`` (per RGB channel, on [0, 1] images)."""

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def input_spec(backbone: str) -> InputSpec:
    """Image size (paper Sec. 3.1) and normalisation (not stated in the paper: the kit's choice) of a backbone.

    300 -> crop 224 and ImageNet mean/std for AlexNet, VGG19, ResNet50, DenseNet161, SENet154; 441 -> 331
    and mean = std = 0.5 (timm's pretrained config) for PNASNet-5-Large. Other timm models: 300 -> 224
    with the mean/std of their timm pretrained config.

    Example:
        >>> input_spec("pnasnet5large")
        InputSpec(resize=441, crop=331, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    """
    canonical = resolve_backbone(backbone)
    if canonical == "alexnet":
        return InputSpec(300, 224, IMAGENET_MEAN, IMAGENET_STD)
    cfg = _pretrained_cfg(canonical)
    mean = tuple(float(v) for v in (cfg.get("mean") or IMAGENET_MEAN))
    std = tuple(float(v) for v in (cfg.get("std") or IMAGENET_STD))
    if _arch(canonical) == "pnasnet5large":
        return InputSpec(441, 331, mean, std)  # type: ignore[arg-type]
    return InputSpec(300, 224, mean, std)  # type: ignore[arg-type]


def channels_last_preferred(backbone: str) -> bool:
    """Whether the backbone trains faster in ``torch.channels_last`` layout on a GPU.

    True for plain convnets (AlexNet, VGG, ResNet, DenseNet, PNASNet, EfficientNet, ...); False for timm's
    ``legacy_se*`` models (timm's published training benchmark: legacy_senet154 111 img/s channels_last vs
    170 NCHW; the other ``legacy_se*`` share its implementation and keep NCHW, the safe default).

    Example:
        >>> channels_last_preferred("resnet50"), channels_last_preferred("senet154")
        (True, False)
    """
    canonical = resolve_backbone(backbone)
    return not _arch(canonical).startswith("legacy_se")


# --------------------------------------------------------------------------------------------------
# Pretrained weights
# --------------------------------------------------------------------------------------------------


class WeightsUnavailable(RuntimeError):
    """Pretrained weights were asked for (``pretrained=True``) but cannot be found or downloaded."""


def _env_weights_dir(weights_dir: str | os.PathLike | None) -> Path | None:
    if weights_dir is not None and str(weights_dir) != "":
        return Path(weights_dir).expanduser()
    env = os.environ.get("METANET_WEIGHTS_DIR")
    return Path(env).expanduser() if env else None


def weights_filenames(backbone: str) -> list[str]:
    """File names under which a weights folder may hold a backbone's weights, preferred first.

    ``<timm name with tag>.safetensors`` or ``.pth`` for timm models (``.pth`` first for weights published
    as a URL, like SENet154's); torchvision's
    ``alexnet-owt-7be5be79.pth`` (or ``alexnet.pth``) for AlexNet.

    Example:
        >>> weights_filenames("resnet50")
        ['resnet50.tv_in1k.safetensors', 'resnet50.tv_in1k.pth']
    """
    canonical = resolve_backbone(backbone)
    if canonical == "alexnet":
        return [_ALEXNET_FILE, "alexnet.pth", "alexnet.safetensors"]
    full = _full_timm_name(canonical)
    if _weights_source(canonical).kind == "url":  # fetched as the original .pth release file
        return [f"{full}.pth", f"{full}.safetensors"]
    return [f"{full}.safetensors", f"{full}.pth"]


class _Source(NamedTuple):
    kind: str  # "hf" | "url" | "none"
    location: str  # hub repo id or URL
    filenames: tuple[str, ...] = ()  # hub files to try, preferred first
    revision: str | None = None
    hash_prefix: str | None = None


def _weights_source(canonical: str) -> _Source:
    """Where timm (torchvision for AlexNet) would download the weights from, in timm's order."""
    if canonical == "alexnet":
        return _Source("url", ALEXNET_URL, hash_prefix=_ALEXNET_HASH)
    cfg = _pretrained_cfg(canonical)
    hub_id = cfg.get("hf_hub_id")
    if hub_id and not hub_id.endswith("/"):
        repo, _, revision = hub_id.partition("@")
        if cfg.get("hf_hub_filename"):
            files: tuple[str, ...] = (cfg["hf_hub_filename"],)
        else:
            files = ("model.safetensors", "pytorch_model.bin")
        return _Source("hf", repo, files, revision or None)
    if cfg.get("url"):
        return _Source("url", cfg["url"])
    return _Source("none", "")


def _hf_download(src: _Source, local_dir: Path | None = None, local_only: bool = False) -> Path:
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    last: Exception | None = None
    for filename in src.filenames:
        if local_only:
            hit = huggingface_hub.try_to_load_from_cache(src.location, filename, revision=src.revision)
            if isinstance(hit, str):
                return Path(hit)
            continue
        kwargs: dict[str, Any] = {"revision": src.revision}
        if local_dir is not None:
            kwargs["local_dir"] = str(local_dir)
        try:
            return Path(huggingface_hub.hf_hub_download(src.location, filename, **kwargs))
        except LocalEntryNotFoundError:  # no connection and not cached: trying other files is pointless
            raise
        except EntryNotFoundError as e:  # this file is not in the repo: try the next one
            last = e
    if local_only:
        raise FileNotFoundError(f"{src.location}: not in the Hugging Face cache")
    raise last or FileNotFoundError(src.location)


def _url_download(src: _Source, dest: Path, progress: bool = False) -> Path:
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    torch.hub.download_url_to_file(src.location, str(part), src.hash_prefix, progress=progress)
    os.replace(part, dest)
    return dest


def _url_cache_path(src: _Source) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(src.location.split("?")[0])


def find_weights(
    backbone: str,
    weights_dir: str | os.PathLike | None = None,
    download: bool = True,
) -> Path:
    """Path of a backbone's pretrained weights file.

    With ``weights_dir`` (or ``$METANET_WEIGHTS_DIR``) only that folder is looked at. Without it, the
    standard caches (Hugging Face hub cache, torch hub cache) are used, downloading when ``download``.

    Raises:
        WeightsUnavailable: the file is not in ``weights_dir`` (the message lists the expected paths), or
            it is not cached and cannot be downloaded; the message says how to fix it.

    Example:
        >>> find_weights("resnet50", weights_dir="/nonexistent")  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        WeightsUnavailable: no pretrained weights for ResNet50 ...
    """
    canonical = resolve_backbone(backbone)
    name = display_name(canonical)
    folder = _env_weights_dir(weights_dir)
    if folder is not None:
        candidates = [folder / f for f in weights_filenames(canonical)]
        for path in candidates:
            if path.is_file():
                return path
        source = "weights_dir" if weights_dir not in (None, "") else "$METANET_WEIGHTS_DIR"
        raise WeightsUnavailable(
            f"no pretrained weights for {name} ({canonical}) in {folder} ({source}): expected "
            f"{candidates[0]}" + (f" (or {', '.join(p.name for p in candidates[1:])})" if candidates[1:] else "")
            + f". {_FETCH_HINT}"
        )
    src = _weights_source(canonical)
    if src.kind == "none":
        raise WeightsUnavailable(
            f"timm has no pretrained weights for {canonical}; use pretrained=False (random initialisation) "
            "or another backbone"
        )
    where = f"the Hugging Face hub ({src.location})" if src.kind == "hf" else src.location
    try:
        if src.kind == "hf":
            return _hf_download(src, local_only=not download)
        cached = _url_cache_path(src)
        if cached.is_file() or not download:
            if cached.is_file():
                return cached
            raise FileNotFoundError(f"{cached} not in the torch hub cache")
        return _url_download(src, cached, progress=True)
    except Exception as e:
        raise WeightsUnavailable(
            f"could not get pretrained weights for {name} ({canonical}) from {where} "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); this machine looks offline "
            f"and they are not cached. {_FETCH_HINT}"
        ) from e


def weights_available(backbone: str, weights_dir: str | os.PathLike | None = None) -> bool:
    """Whether pretrained weights are on this machine (weights folder or caches), without downloading.

    Example:
        >>> weights_available("resnet50", weights_dir="/nonexistent")
        False
    """
    try:
        find_weights(backbone, weights_dir, download=False)
        return True
    except WeightsUnavailable:
        return False


def ensure_weights(backbones: Iterable[str], weights_dir: str | os.PathLike | None = None,
                   progress: bool = True) -> None:
    """Make sure every backbone's pretrained weights are here before a grid starts: found locally (weights
    folder or caches), else downloaded now, on this machine (the login node, for a Slurm grid).

    Raises:
        WeightsUnavailable: a backbone's weights can be neither found nor downloaded; the message says
            how to fetch them elsewhere. Raised before any image cache is built or any run is started.

    Example:
        >>> ensure_weights([])  # nothing to check
    """
    for b in dict.fromkeys(backbones):
        if weights_available(b, weights_dir):
            continue
        if progress:
            print(f"pretrained weights for {b}: not on this machine yet, downloading them ...", flush=True)
        find_weights(b, weights_dir, download=True)


def fetch_weights(
    weights_dir: str | os.PathLike,
    backbones: Iterable[str] = ALL_SIX,
    force: bool = False,
    verify: bool = True,
    verbose: bool = True,
) -> dict[str, Path]:
    """Download pretrained weights into ``weights_dir`` for later offline use (needs internet).

    Files are named as :func:`weights_filenames` says (``<timm name>.safetensors`` / ``.pth``,
    ``alexnet-owt-7be5be79.pth``); copy the folder to the offline machine and set
    ``METANET_WEIGHTS_DIR`` or pass ``weights_dir``. Files already present are kept unless ``force``.

    Args:
        weights_dir: target folder (created).
        backbones: aliases or timm names; default the paper's six (about 1.8 GB).
        force: download again even if the file exists.
        verify: load every file into its backbone once (strict) to catch truncated downloads.
        verbose: print one line per backbone and show download progress.

    Returns:
        backbone (as given) -> path of its weights file.

    Example:
        >>> fetch_weights("weights", ["resnet50"])  # doctest: +SKIP
        {'resnet50': PosixPath('weights/resnet50.tv_in1k.safetensors')}
    """
    folder = Path(weights_dir).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for backbone in backbones:
        canonical = resolve_backbone(backbone)
        existing = [folder / f for f in weights_filenames(canonical) if (folder / f).is_file()]
        if existing and not force:
            path = existing[0]
            if verbose:
                print(f"{backbone}: already there, {path}")
        else:
            src = _weights_source(canonical)
            if src.kind == "none":
                raise WeightsUnavailable(f"timm has no pretrained weights for {canonical}")
            if src.kind == "url":
                name = _ALEXNET_FILE if canonical == "alexnet" else f"{_full_timm_name(canonical)}.pth"
                path = folder / name
                if force and path.exists():
                    path.unlink()
                if verbose:
                    print(f"{backbone}: downloading {src.location}")
                _url_download(src, path, progress=verbose)
            else:
                staging = folder / f".download-{_full_timm_name(canonical)}"
                if verbose:
                    print(f"{backbone}: downloading from the Hugging Face hub ({src.location})")
                try:
                    got = _hf_download(src, local_dir=staging)
                    suffix = ".safetensors" if got.name.endswith(".safetensors") else ".pth"
                    path = folder / f"{_full_timm_name(canonical)}{suffix}"
                    os.replace(got, path)
                finally:
                    shutil.rmtree(staging, ignore_errors=True)
        if verify:
            build_backbone(canonical, pretrained=True, weights_dir=folder)
            if verbose:
                print(f"{backbone}: verified {path.name}")
        out[backbone] = path
    return out


def _load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    if path.name.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return state


# --------------------------------------------------------------------------------------------------
# Backbones
# --------------------------------------------------------------------------------------------------


class Backbone(nn.Module):
    """A CNN truncated after its last convolutional block: ``images -> maps`` (B x C x H x W).

    Attributes:
        name: canonical model name (``'alexnet'`` or a timm name).
        num_features: C, the number of channels of the maps.
        body: the wrapped network (torchvision ``AlexNet.features`` or the timm model).
    """

    def __init__(self, name: str, body: nn.Module, num_features: int, use_forward_features: bool) -> None:
        super().__init__()
        self.name = name
        self.body = body
        self.num_features = int(num_features)
        self._use_forward_features = use_forward_features
        self._nhwc = getattr(body, "output_fmt", "NCHW") == "NHWC"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Feature maps of ``images`` (B x 3 x H x W) -> B x C x h x w."""
        maps = self.body.forward_features(images) if self._use_forward_features else self.body(images)
        if self._nhwc and maps.ndim == 4:
            maps = maps.permute(0, 3, 1, 2)
        if maps.ndim != 4:
            raise ValueError(
                f"backbone {self.name} returns features of shape {tuple(maps.shape)}, not B x C x H x W "
                "convolutional maps; use a convolutional network"
            )
        return maps


def build_backbone(
    backbone: str,
    pretrained: bool = True,
    weights_dir: str | os.PathLike | None = None,
) -> Backbone:
    """Build a backbone, ImageNet-pretrained (``pretrained=True``) or randomly initialised.

    Raises:
        WeightsUnavailable: ``pretrained=True`` and no weights can be found (see :func:`find_weights`).
        ValueError: unknown backbone name.

    Example:
        >>> bb = build_backbone("test_resnet", pretrained=False)
        >>> bb.num_features, bb(torch.randn(1, 3, 64, 64)).shape[1]
        (96, 96)
    """
    canonical = resolve_backbone(backbone)
    path = find_weights(canonical, weights_dir) if pretrained else None
    if canonical == "alexnet":
        from torchvision.models import alexnet

        net = alexnet(weights=None)
        if path is not None:
            try:
                net.load_state_dict(_load_state_dict_file(path))
            except Exception as e:
                raise WeightsUnavailable(
                    f"weights file {path} could not be loaded into AlexNet ({type(e).__name__}: {e}); "
                    "delete it and fetch it again"
                ) from e
        return Backbone(canonical, net.features, 256, use_forward_features=False)

    import timm

    if path is not None:
        try:
            # The file goes through timm's own loading path (checkpoint filters, strict load with the
            # ImageNet classifier); the classifier is removed afterwards.
            net = timm.create_model(canonical, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
        except Exception as e:
            raise WeightsUnavailable(
                f"weights file {path} could not be loaded into {canonical} ({type(e).__name__}: {e}); "
                "delete it and fetch it again"
            ) from e
        net.reset_classifier(0)
    else:
        net = timm.create_model(canonical, pretrained=False, num_classes=0)
    num_features = int(net.num_features)
    if _arch(canonical).startswith("vgg"):
        # fc6/fc7 (timm's pre_logits ConvMlp) are VGG's fully connected layers: not used (see module doc).
        net.pre_logits = nn.Identity()
        num_features = int(net.feature_info[-1]["num_chs"])
    return Backbone(canonical, net, num_features, use_forward_features=True)


# --------------------------------------------------------------------------------------------------
# Fusion heads
# --------------------------------------------------------------------------------------------------


def meta_widths(num_features: int, layers: int) -> list[int]:
    """Output widths of ``layers`` metadata layers ending at ``num_features`` (each half the next).

    Example:
        >>> meta_widths(2048, 1), meta_widths(2048, 2), meta_widths(2048, 4)
        ([2048], [1024, 2048], [256, 512, 1024, 2048])
    """
    if layers < 0:
        raise ValueError(f"meta_layers must be >= 0, got {layers}")
    return [max(1, num_features // 2 ** (layers - 1 - i)) for i in range(layers)]


def _mlp(in_dim: int, widths: Sequence[int], last: nn.Module | None) -> nn.Sequential:
    """Linear layers of the given widths with ReLU between them, then ``last`` (if any)."""
    mods: list[nn.Module] = []
    prev = in_dim
    for i, w in enumerate(widths):
        mods.append(nn.Linear(prev, w))
        if i < len(widths) - 1:
            mods.append(nn.ReLU(inplace=True))
        prev = w
    if last is not None:
        mods.append(last)
    return nn.Sequential(*mods)


class MetaBlock(nn.Module):
    """Meta-Block of Pacheco & Krohling (IEEE JBHI 2021) on the pooled image features.

    ``T' = sigmoid(tanh(T * f_b(m)) + g_b(m))`` with ``f_b``, ``g_b`` = Linear(U, C) + BatchNorm1d(C) as in
    the authors' code (github paaatcha/MetaBlock). Here ``T`` is the pooled C-vector (one "map" per channel;
    their ResNet code reshapes the pooled 2048-vector into 64 groups of 32 sharing one factor) and the
    metadata ``m`` first passes ``hidden`` fully connected layers (ReLU after each) when ``hidden`` is
    non-empty (``meta_layers - 1`` layers; ``meta_layers=1`` is the published block). Their reducer block
    (Linear 256 + BN + ReLU + dropout) is not included: the kit's linear head follows directly.
    """

    def __init__(self, meta_dim: int, num_features: int, hidden: Sequence[int] = ()) -> None:
        super().__init__()
        self.meta_net = _mlp(meta_dim, hidden, nn.ReLU(inplace=True)) if hidden else nn.Identity()
        u = hidden[-1] if hidden else meta_dim
        self.f_b = nn.Sequential(nn.Linear(u, num_features), nn.BatchNorm1d(num_features))
        self.g_b = nn.Sequential(nn.Linear(u, num_features), nn.BatchNorm1d(num_features))

    def forward(self, features: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        """``features`` B x C (pooled), ``meta`` B x meta_dim -> B x C in (0, 1)."""
        u = self.meta_net(meta)
        return torch.sigmoid(torch.tanh(features * self.f_b(u)) + self.g_b(u))


class MetaModel(nn.Module):
    """Backbone + fusion head: ``model(images, meta) -> logits`` (B x num_classes).

    Attributes:
        backbone: the :class:`Backbone`.
        backbone_name: its canonical model name.
        fusion: ``'none'``, ``'concat'``, ``'metanet'`` or ``'metablock'``.
        num_features: C, channels of the last convolutional maps.
        meta_layers: number of fully connected metadata layers; ``meta_widths`` their output widths.
        meta_net: the metadata layers (``nn.Sequential``; ends with Sigmoid for metanet, ReLU for concat),
            None for ``none`` and for ``concat`` with ``meta_layers=0``; for metablock see ``metablock``.
        head: the final ``nn.Linear``.

    Example:
        >>> m = MetaModel(build_backbone("test_resnet", pretrained=False), "concat", meta_layers=0)
        >>> m.head.in_features == m.num_features + 17
        True
    """

    def __init__(
        self,
        backbone: Backbone,
        fusion: str = "metanet",
        num_classes: int = 7,
        meta_dim: int = 17,
        meta_layers: int | None = None,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}: use one of {', '.join(FUSIONS)}")
        k = DEFAULT_META_LAYERS[fusion] if meta_layers is None else int(meta_layers)
        if k < 0 or k > 8:
            raise ValueError(f"meta_layers must be in 0..8, got {k}")
        if fusion in ("metanet", "metablock") and k < 1:
            raise ValueError(f"fusion {fusion!r} needs meta_layers >= 1, got {k}")
        if fusion != "none" and meta_dim < 1:
            raise ValueError(f"fusion {fusion!r} needs meta_dim >= 1, got {meta_dim}")
        C = backbone.num_features
        self.backbone = backbone
        self.backbone_name = backbone.name
        self.fusion = fusion
        self.num_features = C
        self.num_classes = int(num_classes)
        self.meta_dim = int(meta_dim)
        self.meta_layers = k if fusion != "none" else 0
        self.meta_widths = meta_widths(C, self.meta_layers)
        self.meta_net: nn.Sequential | None = None
        self.metablock: MetaBlock | None = None
        head_in = C
        if fusion == "concat":
            if k >= 1:
                self.meta_net = _mlp(meta_dim, self.meta_widths, nn.ReLU(inplace=True))
            head_in = C + (C if k >= 1 else meta_dim)
        elif fusion == "metanet":
            self.meta_net = _mlp(meta_dim, self.meta_widths, nn.Sigmoid())
        elif fusion == "metablock":
            self.metablock = MetaBlock(meta_dim, C, self.meta_widths[:-1])
        self.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.head = nn.Linear(head_in, num_classes)

    # ---------------------------------------------------------------- pieces
    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Last convolutional feature maps, B x C x H x W (before any gating)."""
        return self.backbone(images)

    def _meta(self, meta: torch.Tensor | None, batch: int) -> torch.Tensor:
        if meta is None:
            raise ValueError(f"fusion {self.fusion!r} needs the metadata: call model(images, meta)")
        if meta.ndim != 2 or meta.shape[1] != self.meta_dim or meta.shape[0] != batch:
            raise ValueError(
                f"metadata of shape {tuple(meta.shape)} does not match ({batch}, {self.meta_dim}) "
                f"(meta_dim={self.meta_dim})"
            )
        dtype = self.head.weight.dtype
        return meta if meta.dtype == dtype else meta.to(dtype)

    def gate(self, meta: torch.Tensor) -> torch.Tensor:
        """MetaNet channel gates ``sigmoid(MLP(meta))``, B x C in (0, 1) (``metanet`` only)."""
        if self.fusion != "metanet":
            raise AttributeError(f"gate() exists for fusion 'metanet' only, not {self.fusion!r}")
        assert self.meta_net is not None
        return self.meta_net(self._meta(meta, meta.shape[0]))

    def forward_head(self, maps: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        """Fusion head on the maps of :meth:`forward_features` -> logits."""
        pooled = maps.mean(dim=(2, 3))
        if self.fusion == "none":
            x = pooled
        elif self.fusion == "concat":
            m = self._meta(meta, pooled.shape[0])
            if self.meta_net is not None:
                m = self.meta_net(m)
            x = torch.cat([pooled, m.to(pooled.dtype)], dim=1)
        elif self.fusion == "metanet":
            # avg(F * g) == g * avg(F): gate the pooled vector (cheaper, identical).
            x = pooled * self.gate(self._meta(meta, pooled.shape[0])).to(pooled.dtype)
        else:
            assert self.metablock is not None
            x = self.metablock(pooled, self._meta(meta, pooled.shape[0]))
        return self.head(self.dropout(x))

    def forward(self, images: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        """``images`` B x 3 x H x W, ``meta`` B x meta_dim (ignored, may be None, for ``none``) -> logits."""
        return self.forward_head(self.forward_features(images), meta)

    # ---------------------------------------------------------------- CAM (Zhou et al. 2016)
    def feature_maps_for_cam(self, images: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        """The maps the head pools: ``F * gate`` for metanet, ``F`` otherwise (B x C x H x W).

        ``CAM_c = sum_k w_ck M_k`` with ``w = classifier_weight_for_cam()``; for none and metanet
        ``mean_hw(CAM_c) + b_c`` equals the logit (in eval mode); for concat it differs from the logit
        by the metadata's per-class term only. For metablock the head sees a non-linear function of the
        pooled features, so the map is an approximation (:attr:`cam_is_exact` is False).
        """
        maps = self.forward_features(images)
        if self.fusion == "metanet":
            maps = maps * self.gate(meta).to(maps.dtype)[:, :, None, None]  # type: ignore[arg-type]
        return maps

    def classifier_weight_for_cam(self) -> torch.Tensor:
        """Rows of the head that multiply the image features: ``head.weight[:, :C]`` (num_classes x C)."""
        return self.head.weight[:, : self.num_features]

    @property
    def cam_is_exact(self) -> bool:
        """Whether ``mean_hw(CAM) + bias`` reproduces the image part of the logits exactly."""
        return self.fusion in ("none", "concat", "metanet")

    # ---------------------------------------------------------------- training helpers
    def parameter_groups(self, lr: float, backbone_lr: float | None = None) -> list[dict[str, Any]]:
        """Optimizer groups: the backbone (``backbone_lr``, default ``lr``) and the fusion head (``lr``).

        Example:
            >>> m = build_model("test_resnet", "metanet", pretrained=False)
            >>> opt = torch.optim.SGD(m.parameter_groups(1e-3), lr=1e-3, momentum=0.9, weight_decay=1e-4)
        """
        head = [p for n, p in self.named_parameters() if not n.startswith("backbone.")]
        return [
            {"name": "backbone", "params": list(self.backbone.parameters()),
             "lr": lr if backbone_lr is None else backbone_lr},
            {"name": "fusion_head", "params": head, "lr": lr},
        ]

    def describe(self) -> str:
        """One line: backbone, fusion, metadata layers, C, classes, parameters."""
        n = sum(p.numel() for p in self.parameters())
        if self.fusion == "none":
            meta = "metadata ignored"
        elif self.meta_layers == 0:
            meta = f"raw metadata ({self.meta_dim})"
        else:
            end = {"concat": ", ReLU", "metanet": ", sigmoid", "metablock": " (f_b, g_b)"}[self.fusion]
            meta = f"metadata {self.meta_dim}->" + "->".join(map(str, self.meta_widths)) + end
        shown = display_name(self.backbone_name)
        name = shown if shown == self.backbone_name else f"{shown} ({self.backbone_name})"
        return (
            f"{name} + {self.fusion}: {meta}; "
            f"C={self.num_features}, {self.num_classes} classes, {n / 1e6:.2f} M parameters"
        )


def build_model(
    backbone: str,
    fusion: str = "metanet",
    num_classes: int = 7,
    meta_dim: int = 17,
    meta_layers: int | None = None,
    pretrained: bool = True,
    weights_dir: str | os.PathLike | None = None,
    drop_rate: float = 0.0,
) -> MetaModel:
    """Backbone + fusion head of the paper.

    Args:
        backbone: alias (``resnet50``), the paper's name (``ResNet50``) or any timm model name.
        fusion: ``none``, ``concat``, ``metanet`` or ``metablock`` (see the module doc).
        num_classes: 7 for HAM10000.
        meta_dim: length of the metadata vector (17; fewer for the Table 3 subsets).
        meta_layers: fully connected metadata layers ``k``; None -> the paper's setting of the variant
            (:data:`DEFAULT_META_LAYERS`: metanet 2, concat 0 as in Table 1, metablock 1). Table 4 uses
            k = 1..4 for metanet and concat.
        pretrained: ImageNet weights (raises :class:`WeightsUnavailable` if none); False = random init.
        weights_dir: folder filled by :func:`fetch_weights` (default ``$METANET_WEIGHTS_DIR``; if neither,
            the hub / URL caches, downloading if needed).
        drop_rate: dropout before the final linear layer (default 0; the paper mentions no dropout).

    Example:
        >>> m = build_model("test_resnet", "metanet", meta_layers=3, pretrained=False)
        >>> m.meta_widths
        [24, 48, 96]
    """
    net = build_backbone(backbone, pretrained=pretrained, weights_dir=weights_dir)
    return MetaModel(net, fusion, num_classes=num_classes, meta_dim=meta_dim, meta_layers=meta_layers,
                     drop_rate=drop_rate)
