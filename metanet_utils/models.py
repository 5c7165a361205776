"""MetaNet (Li et al., ISBI 2020): patient metadata gates the channels of a CNN's last feature maps.

A model is a backbone, which turns images into their last convolutional feature maps ``F`` (B x C x H x W), and a
fusion head, which turns ``F`` and the metadata vector ``m`` (B x meta_dim) into class logits:

* ``none``      -- ``logits = W avg(F) + b``: the image alone (Table 1, "No metadata").
* ``concat``    -- ``logits = W [avg(F), phi(m)] + b``: ``phi(m) = m`` for k = 0 (Table 1: Sec. 3.5 says that
  approach has no fully connected layer), else k fully connected layers ending at width C (Table 4; ReLU between
  and after them, the kit's choice: the paper names no activation).
* ``metanet``   -- ``g = sigmoid(MLP_k(m))``, one gate in (0, 1) per channel, ReLU between the layers; every
  channel of ``F`` is multiplied by its gate before pooling: ``logits = W avg(F * g) + b`` (Sec. 2, Fig. 1b).
* ``metablock`` -- not in the paper: the Meta-Block of Pacheco & Krohling (2021), the kit's comparison beyond it.

The k metadata layers end at C, each half as wide as the next: k=2 C/2, C (1024, 2048 for C = 2048: Sec. 3.5);
k=3 C/4, C/2, C (512, 1024, 2048: Sec. 3.5); k=4 C/8, C/4, C/2, C (the kit's extension of the pattern).

Backbones: the paper's six (:data:`metanet_utils.constants.BACKBONES`) or any timm CNN by name. Pretrained
weights come through timm (torchvision for AlexNet) from their caches (``HF_HUB_CACHE``, ``TORCH_HOME``), downloaded
on first use; machines without internet read only a folder filled by :func:`fetch_weights` (``weights_dir`` or
``$METANET_WEIGHTS_DIR``). Missing weights raise :class:`WeightsUnavailable`, one line saying how to fix it.

Example:
    >>> model = build_model("test_resnet", "metanet", pretrained=False).eval()
    >>> model(torch.randn(2, 3, 64, 64), torch.rand(2, 17)).shape
    torch.Size([2, 7])
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence
from urllib.parse import urlparse

import huggingface_hub
import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import get_pretrained_cfg
from torch import nn
from torchvision.models import AlexNet_Weights, alexnet

from .config import DEFAULT_META_LAYERS, FUSIONS
from .constants import BACKBONES, PaperBackbone

__all__ = [
    "meta_widths", "MetaBlock", "MetaModel", "build_model",
    "resolve_backbone", "display_name", "InputSpec", "input_spec", "channels_last_preferred", "Backbone",
    "build_backbone", "WeightsUnavailable", "weights_file", "fetch_weights", "ensure_weights",
]

# --------------------------------------------------------------------------------------------------
# The fusion heads
# --------------------------------------------------------------------------------------------------


def meta_widths(num_features: int, layers: int) -> list[int]:
    """Widths of ``layers`` metadata layers ending at C = ``num_features``, each half the next.

    Example:
        >>> meta_widths(2048, 1), meta_widths(2048, 2), meta_widths(2048, 4)
        ([2048], [1024, 2048], [256, 512, 1024, 2048])
    """
    return [max(1, num_features // 2 ** (layers - 1 - i)) for i in range(layers)]


def _mlp(in_dim: int, widths: Sequence[int], last: nn.Module) -> nn.Sequential:
    """Linear layers of the given widths with ReLU between them, then ``last``."""
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Linear(in_dim, w), nn.ReLU(inplace=True)]
        in_dim = w
    layers[-1] = last
    return nn.Sequential(*layers)


class MetaModel(nn.Module):
    """Backbone + fusion head: ``model(images, meta) -> logits`` (B x num_classes).

    Attributes:
        backbone: images -> the last convolutional maps ``F`` (:class:`Backbone`).
        fusion: ``'none'``, ``'concat'``, ``'metanet'`` or ``'metablock'``.
        num_features: C, the channels of ``F``.
        meta_layers, meta_widths: k and the widths of the metadata layers.
        meta_net: the metadata layers (ending with Sigmoid for metanet, ReLU for concat); None for ``none`` and
            for ``concat`` with k = 0.
        head: the final ``nn.Linear``.

    Example:
        >>> m = MetaModel(build_backbone("test_resnet", pretrained=False), "concat", meta_layers=0)
        >>> m.head.in_features == m.num_features + 17
        True
    """

    def __init__(self, backbone: Backbone, fusion: str = "metanet", num_classes: int = 7, meta_dim: int = 17,
                 meta_layers: int | None = None) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}: use one of {', '.join(FUSIONS)}")
        k = 0 if fusion == "none" else DEFAULT_META_LAYERS[fusion] if meta_layers is None else int(meta_layers)
        if k < 0 or (k < 1 and fusion in ("metanet", "metablock")):
            raise ValueError(f"fusion {fusion!r} needs meta_layers >= 1 (concat >= 0), got {k}")
        C = backbone.num_features
        self.backbone, self.fusion, self.num_features, self.meta_dim = backbone, fusion, C, int(meta_dim)
        self.meta_layers, self.meta_widths = k, meta_widths(C, k)
        self.meta_net: nn.Sequential | None = None
        if fusion == "metanet":
            self.meta_net = _mlp(meta_dim, self.meta_widths, nn.Sigmoid())
        elif fusion == "concat" and k:
            self.meta_net = _mlp(meta_dim, self.meta_widths, nn.ReLU(inplace=True))
        elif fusion == "metablock":
            self.metablock = MetaBlock(meta_dim, C, self.meta_widths[:-1])
        extra = (C if k else meta_dim) if fusion == "concat" else 0
        self.head = nn.Linear(C + extra, num_classes)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """The last convolutional feature maps ``F``, B x C x H x W (before any gate)."""
        return self.backbone(images)

    def gate(self, meta: torch.Tensor) -> torch.Tensor:
        """MetaNet's gates ``sigmoid(MLP_k(m))``, B x C in (0, 1) (``metanet`` only)."""
        if self.fusion != "metanet":
            raise AttributeError(f"gate() exists for fusion 'metanet' only, not {self.fusion!r}")
        return self.meta_net(self._meta(meta, len(meta)))

    def forward_head(self, maps: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        """The fusion head on the maps ``F`` of :meth:`forward_features` -> logits."""
        m = None if self.fusion == "none" else self._meta(meta, len(maps))
        if self.fusion == "metanet":
            maps = maps * self.gate(m).to(maps.dtype)[:, :, None, None]  # each channel times its gate, then pool
        x = maps.mean(dim=(2, 3))  # global average pooling: B x C
        if self.fusion == "concat":
            x = torch.cat([x, (m if self.meta_net is None else self.meta_net(m)).to(x.dtype)], dim=1)
        elif self.fusion == "metablock":
            x = self.metablock(x, m)
        return self.head(x)

    def forward(self, images: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        """``images`` B x 3 x H x W, ``meta`` B x meta_dim (ignored, may be None, for ``none``) -> logits."""
        return self.forward_head(self.forward_features(images), meta)

    def _meta(self, meta: torch.Tensor | None, batch: int) -> torch.Tensor:
        if meta is None:
            raise ValueError(f"fusion {self.fusion!r} needs the metadata: call model(images, meta)")
        if meta.ndim != 2 or tuple(meta.shape) != (batch, self.meta_dim):
            raise ValueError(f"metadata of shape {tuple(meta.shape)} does not match ({batch}, {self.meta_dim}) "
                             f"(meta_dim={self.meta_dim})")
        return meta.to(self.head.weight.dtype)


def build_model(backbone: str, fusion: str = "metanet", num_classes: int = 7, meta_dim: int = 17,
                meta_layers: int | None = None, pretrained: bool = True,
                weights_dir: str | os.PathLike | None = None) -> MetaModel:
    """Backbone + fusion head of the paper.

    Args:
        backbone: a short name (``resnet50``), the paper's spelling (``ResNet50``) or any timm model name.
        fusion: ``none``, ``concat``, ``metanet`` or ``metablock`` (see the module doc).
        num_classes: 7 for HAM10000.
        meta_dim: length of the metadata vector (17; fewer for the Table 3 subsets).
        meta_layers: k; None is the variant's paper setting (``config.DEFAULT_META_LAYERS``: metanet 2, concat 0
            as in Table 1, metablock 1). Table 4 uses k = 1..4 for metanet and concat.
        pretrained: ImageNet weights (:class:`WeightsUnavailable` if there are none); False = random weights.
        weights_dir: a folder filled by :func:`fetch_weights` (default ``$METANET_WEIGHTS_DIR``; neither: timm's
            caches, downloading if needed).

    Example:
        >>> build_model("test_resnet", "metanet", meta_layers=3, pretrained=False).meta_widths
        [24, 48, 96]
    """
    net = build_backbone(backbone, pretrained=pretrained, weights_dir=weights_dir)
    return MetaModel(net, fusion, num_classes=num_classes, meta_dim=meta_dim, meta_layers=meta_layers)


class MetaBlock(nn.Module):
    """Meta-Block of Pacheco & Krohling (IEEE JBHI 2021) on the pooled features ``T`` (B x C), not in the paper.

    ``T' = sigmoid(tanh(T * f_b(u)) + g_b(u))``, ``f_b``, ``g_b`` = Linear + BatchNorm1d as in the authors' code
    (github paaatcha/MetaBlock); ``u`` is the metadata after ``len(hidden)`` layers with ReLU (none for k = 1, the
    published block). Their reducer block (Linear 256, BN, ReLU, dropout) is left out: the linear head follows.
    """

    def __init__(self, meta_dim: int, num_features: int, hidden: Sequence[int] = ()) -> None:
        super().__init__()
        self.meta_net = _mlp(meta_dim, hidden, nn.ReLU(inplace=True)) if hidden else nn.Identity()
        u = hidden[-1] if hidden else meta_dim
        self.f_b = nn.Sequential(nn.Linear(u, num_features), nn.BatchNorm1d(num_features))
        self.g_b = nn.Sequential(nn.Linear(u, num_features), nn.BatchNorm1d(num_features))

    def forward(self, features: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        u = self.meta_net(meta)
        return torch.sigmoid(torch.tanh(features * self.f_b(u)) + self.g_b(u))


# --------------------------------------------------------------------------------------------------
# Backbones: names, input sizes, the feature-map wrapper
# --------------------------------------------------------------------------------------------------


def resolve_backbone(name: str) -> str:
    """The model a name builds (``'alexnet'``: torchvision's, else timm's), from a short name of ``BACKBONES``, the
    paper's spelling (any case) or a timm name with or without tag; else a one-line ValueError listing the six.

    Example:
        >>> resolve_backbone("SENet154"), resolve_backbone("resnet10t")
        ('legacy_senet154.in1k', 'resnet10t')
    """
    key = str(name).strip()
    squashed = key.lower().replace("-", "")
    for short, b in BACKBONES.items():
        if squashed in (short, b.paper_name.lower().replace("-", "")) or key == b.model:
            return b.model
    if key and timm.is_model(key) and ("." not in key or timm.list_pretrained(key)):
        return key
    close = difflib.get_close_matches(key.lower(), list(dict.fromkeys([*BACKBONES, *timm.list_models()])), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ValueError(f"unknown backbone {key!r}{hint}: use one of the paper's six ({', '.join(BACKBONES)}) "
                     "or any timm model name (see timm.list_models())")


def display_name(backbone: str) -> str:
    """The paper's spelling of a backbone (``'PNASNet-5'``), else its model name.

    Example:
        >>> display_name("senet154"), display_name("legacy_senet154.in1k"), display_name("resnet10t")
        ('SENet154', 'SENet154', 'resnet10t')
    """
    model = resolve_backbone(backbone)
    return _paper(model).paper_name if _paper(model) else model


def _paper(model: str) -> PaperBackbone | None:
    return next((b for b in BACKBONES.values() if b.model == model), None)


class InputSpec(NamedTuple):
    """Resize to ``resize`` x ``resize``, crop ``crop`` x ``crop``, normalise by ``mean`` / ``std`` (on [0, 1])."""

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def input_spec(backbone: str) -> InputSpec:
    """Image sizes (Sec. 3.1: 300 -> 224, PNASNet 441 -> 331; other timm models 300 -> 224) and normalisation (the
    pretraining's mean and std from timm's config, ImageNet's for AlexNet: the kit's choice) of a backbone.

    Example:
        >>> input_spec("pnasnet5large")
        InputSpec(resize=441, crop=331, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    """
    model, paper = resolve_backbone(backbone), _paper(resolve_backbone(backbone))
    cfg = get_pretrained_cfg(model) if model != "alexnet" else None
    mean, std = (cfg.mean, cfg.std) if cfg is not None else (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
    resize, crop = (paper.resize, paper.crop) if paper else (300, 224)
    return InputSpec(resize, crop, tuple(map(float, mean)), tuple(map(float, std)))  # type: ignore[arg-type]


def channels_last_preferred(backbone: str) -> bool:
    """Whether a backbone trains faster in ``torch.channels_last`` on a GPU: all but timm's ``legacy_se*`` (timm's
    published training benchmark: legacy_senet154 111 img/s channels_last against 170 NCHW).

    Example:
        >>> channels_last_preferred("resnet50"), channels_last_preferred("senet154")
        (True, False)
    """
    return not resolve_backbone(backbone).startswith("legacy_se")


class Backbone(nn.Module):
    """A CNN cut after its last convolutional block: ``images -> maps`` (B x C x H x W); ``name`` the model,
    ``body`` torchvision's ``AlexNet.features`` or the timm model (its ``forward_features``), ``num_features`` C."""

    def __init__(self, name: str, body: nn.Module, num_features: int) -> None:
        super().__init__()
        self.name, self.body, self.num_features = name, body, int(num_features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        maps = self.body.forward_features(images) if hasattr(self.body, "forward_features") else self.body(images)
        if getattr(self.body, "output_fmt", "NCHW") == "NHWC":
            maps = maps.permute(0, 3, 1, 2)
        if maps.ndim != 4:
            raise ValueError(f"backbone {self.name} returns features of shape {tuple(maps.shape)}, not B x C x H x W "
                             "convolutional maps; use a convolutional network")
        return maps


def build_backbone(backbone: str, pretrained: bool = True,
                   weights_dir: str | os.PathLike | None = None) -> Backbone:
    """A backbone, ImageNet-pretrained or with random weights (``pretrained=False``).

    Raises :class:`WeightsUnavailable` when the weights are not in ``weights_dir`` (or ``$METANET_WEIGHTS_DIR``) or,
    without a folder, neither in timm's caches nor downloadable.

    Example:
        >>> bb = build_backbone("test_resnet", pretrained=False)
        >>> bb.num_features, bb(torch.randn(1, 3, 64, 64)).shape[1]
        (96, 96)
    """
    model = resolve_backbone(backbone)
    folder = weights_dir or os.environ.get("METANET_WEIGHTS_DIR")
    folder = Path(folder).expanduser() if folder else None
    file = weights_file(model, folder) if pretrained and folder else None
    if pretrained and folder and file is None:
        raise _unavailable(model, f"not in {folder} (no {folder / _folder_entry(model)})", folder)
    try:
        net = _create(model, pretrained, file)
    except Exception as e:
        if not pretrained:
            raise
        why = f"{file} could not be loaded" if file else "not in timm's cache and the download failed"
        raise _unavailable(model, f"{why} ({_first_line(e)})", folder) from e
    if model == "alexnet":
        return Backbone(model, net.features, 256)  # torchvision's convolutional stack, after the last max-pool
    C = net.num_features
    if model.startswith("vgg"):  # timm's pre_logits are fc6/fc7 (as convolutions): VGG's fully connected layers,
        net.pre_logits = nn.Identity()  # not feature maps; the maps are the 512 of the convolutional stack
        C = net.feature_info[-1]["num_chs"]
    return Backbone(model, net, C)


def _create(model: str, pretrained: bool, file: Path | None) -> nn.Module:
    """The whole network, its weights loaded by torchvision / timm from ``file`` or from their caches."""
    if model == "alexnet":
        net = alexnet(weights=AlexNet_Weights.IMAGENET1K_V1 if pretrained and file is None else None)
        if file is not None:
            net.load_state_dict(torch.load(file, map_location="cpu", weights_only=True))
        return net
    if not pretrained:
        return timm.create_model(model, num_classes=0)
    overlay = {"pretrained_cfg_overlay": {"file": str(file)}} if file else {}
    net = timm.create_model(model, pretrained=True, **overlay)  # a strict load, the ImageNet classifier included
    net.reset_classifier(0)
    return net


# --------------------------------------------------------------------------------------------------
# Pretrained weights for machines without internet
# --------------------------------------------------------------------------------------------------


class WeightsUnavailable(RuntimeError):
    """Pretrained weights were asked for but are not on this machine and cannot be downloaded."""


def _first_line(e: Exception) -> str:
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"


def _unavailable(model: str, why: str, folder: Path | None) -> WeightsUnavailable:
    where = f"--weights-dir {folder}" if folder else "--weights-dir DIR"
    return WeightsUnavailable(
        f"no pretrained weights for {display_name(model)} ({model}): {why}. Fix: on a machine with internet run "
        f"`python -m metanet_utils weights fetch {where}`, copy the folder here and pass {where} (or set "
        "METANET_WEIGHTS_DIR); or train from random weights (pretrained=False, profile key pretrained: false)")


def weights_file(backbone: str, folder: str | os.PathLike) -> Path | None:
    """The file :func:`fetch_weights` left in ``folder`` for a backbone, or None.

    timm downloads Hugging Face hub weights into ``folder/models--timm--<name>/snapshots/<commit>/`` (the hub
    cache layout) and release URLs (SENet154's, torchvision's AlexNet) into ``folder/<file name of the URL>``.

    Example:
        >>> weights_file("resnet50", "/nonexistent") is None
        True
    """
    model, folder = resolve_backbone(backbone), Path(folder)
    cfg = get_pretrained_cfg(model) if model != "alexnet" else None
    if cfg is not None and cfg.hf_hub_id:
        repo, _, revision = cfg.hf_hub_id.partition("@")
        for name in [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]:
            hit = huggingface_hub.try_to_load_from_cache(repo, name, cache_dir=folder, revision=revision or None)
            if isinstance(hit, str):
                return Path(hit)
        return None
    path = folder / _folder_entry(model)
    return path if path.is_file() else None


def _folder_entry(model: str) -> str:
    """What timm / torchvision write into a folder for a model: the hub cache's repo folder or the URL's file."""
    cfg = get_pretrained_cfg(model) if model != "alexnet" else None
    if cfg is not None and cfg.hf_hub_id:
        return "models--" + cfg.hf_hub_id.partition("@")[0].replace("/", "--")
    url = AlexNet_Weights.IMAGENET1K_V1.url if model == "alexnet" else cfg.url if cfg else None
    if not url:
        raise WeightsUnavailable(f"timm has no pretrained weights for {model}: use pretrained=False")
    return os.path.basename(urlparse(url).path)


def fetch_weights(weights_dir: str | os.PathLike, backbones: Iterable[str] = tuple(BACKBONES)) -> dict[str, Path]:
    """Download pretrained weights into a folder for machines without internet; returns backbone -> file.

    timm (torchvision for AlexNet) downloads into the folder as into its own cache; files already there are kept.
    Each is then loaded once through the offline path, so a broken download shows here. Copy the folder to the
    offline machine and pass ``weights_dir`` / ``--weights-dir`` or set ``METANET_WEIGHTS_DIR``.

    Example:
        >>> fetch_weights("weights", ["resnet50"])  # doctest: +SKIP
        resnet50: downloading resnet50.tv_in1k into weights
        {'resnet50': PosixPath('weights/models--timm--resnet50.tv_in1k/snapshots/.../model.safetensors')}
    """
    folder = Path(weights_dir).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    for backbone in backbones:
        model = resolve_backbone(backbone)
        if weights_file(model, folder) is None:
            print(f"{backbone}: downloading {model} into {folder}", flush=True)
            try:
                if model == "alexnet":
                    torch.hub.load_state_dict_from_url(AlexNet_Weights.IMAGENET1K_V1.url, model_dir=str(folder),
                                                       check_hash=True, weights_only=True)
                else:
                    timm.create_model(model, pretrained=True, cache_dir=folder)
            except Exception as e:
                raise WeightsUnavailable(f"could not download the weights of {display_name(model)} ({model}) into "
                                         f"{folder} ({_first_line(e)}); this needs internet") from e
        build_backbone(model, pretrained=True, weights_dir=folder)
        files[backbone] = weights_file(model, folder)  # type: ignore[assignment]
    return files


def ensure_weights(backbones: Iterable[str], weights_dir: str | os.PathLike | None = None,
                   progress: bool = True) -> None:
    """Load every backbone's pretrained weights once before a grid starts (as :func:`build_backbone`), so that a
    machine without them stops before any image cache or run.

    Example:
        >>> ensure_weights([])  # nothing to check
    """
    for backbone in dict.fromkeys(backbones):
        if progress:
            print(f"pretrained weights of {backbone}: checking", flush=True)
        build_backbone(backbone, pretrained=True, weights_dir=weights_dir)
