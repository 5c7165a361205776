"""MetaNet (Li et al., ISBI 2020): patient metadata gates the channels of a CNN's last feature maps.

A backbone gives the last convolutional feature maps ``F`` (B x C x H x W); a head turns ``F`` and the metadata
``m`` (B x meta_dim) into logits, with k metadata layers ending at C, each half the next (:func:`meta_widths`):

* ``metanet``: one gate per channel ``g = sigmoid(MLP_k(m))``, ``logits = W avg(F * g) + b`` (Sec. 2, Fig. 1b).
* ``none``: ``logits = W avg(F) + b``, the image alone.
* ``concat``: ``logits = W [avg(F), phi(m)] + b``, ``phi(m) = m`` for k = 0 (Table 1), else k ReLU layers (Table 4).
* ``metablock``: not in the paper, the Meta-Block of Pacheco & Krohling (2021).

Example:
    >>> model = build_model("test_resnet", "metanet", pretrained=False).eval()
    >>> model(torch.randn(2, 3, 64, 64), torch.rand(2, 17)).shape
    torch.Size([2, 7])
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple, Sequence

import huggingface_hub
import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import get_pretrained_cfg
from torch import nn
from torchvision.models import AlexNet_Weights, alexnet

from .config import DEFAULT_META_LAYERS, FUSIONS
from .constants import BACKBONES


class MetaModel(nn.Module):
    """Backbone + fusion head: ``model(images, meta) -> logits``; ``meta_net`` the k metadata layers or None."""

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
        return self.backbone(images)

    def gate(self, meta: torch.Tensor) -> torch.Tensor:
        """MetaNet's gates ``sigmoid(MLP_k(m))``, B x C."""
        if self.fusion != "metanet":
            raise AttributeError(f"gate() exists for fusion 'metanet' only, not {self.fusion!r}")
        return self.meta_net(self._meta(meta, len(meta)))

    def forward(self, images: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        maps = self.forward_features(images)
        m = None if self.fusion == "none" else self._meta(meta, len(maps))
        if self.fusion == "metanet":
            maps = maps * self.gate(m).to(maps.dtype)[:, :, None, None]
        x = maps.mean(dim=(2, 3))
        if self.fusion == "concat":
            x = torch.cat([x, (m if self.meta_net is None else self.meta_net(m)).to(x.dtype)], dim=1)
        elif self.fusion == "metablock":
            x = self.metablock(x, m)
        return self.head(x)

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
    """Backbone + fusion head; ``meta_layers`` None: the paper's k (metanet 2, concat 0)."""
    net = build_backbone(backbone, pretrained=pretrained, weights_dir=weights_dir)
    return MetaModel(net, fusion, num_classes=num_classes, meta_dim=meta_dim, meta_layers=meta_layers)


def meta_widths(num_features: int, layers: int) -> list[int]:
    """Widths of ``layers`` metadata layers ending at ``num_features``, each half the next.

    >>> meta_widths(2048, 1), meta_widths(2048, 2), meta_widths(2048, 4)
    ([2048], [1024, 2048], [256, 512, 1024, 2048])
    """
    return [max(1, num_features // 2 ** (layers - 1 - i)) for i in range(layers)]


def _mlp(in_dim: int, widths: Sequence[int], last: nn.Module) -> nn.Sequential:
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Linear(in_dim, w), nn.ReLU(inplace=True)]
        in_dim = w
    layers[-1] = last
    return nn.Sequential(*layers)


class MetaBlock(nn.Module):
    """Meta-Block (Pacheco & Krohling 2021) on the pooled features: ``T' = sigmoid(tanh(T * f_b(u)) + g_b(u))``,
    ``f_b``, ``g_b`` Linear + BatchNorm1d, ``u`` the metadata after ``len(hidden)`` ReLU layers."""

    def __init__(self, meta_dim: int, num_features: int, hidden: Sequence[int] = ()) -> None:
        super().__init__()
        self.meta_net = _mlp(meta_dim, hidden, nn.ReLU(inplace=True)) if hidden else nn.Identity()
        u = hidden[-1] if hidden else meta_dim
        self.f_b = nn.Sequential(nn.Linear(u, num_features), nn.BatchNorm1d(num_features))
        self.g_b = nn.Sequential(nn.Linear(u, num_features), nn.BatchNorm1d(num_features))

    def forward(self, features: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        u = self.meta_net(meta)
        return torch.sigmoid(torch.tanh(features * self.f_b(u)) + self.g_b(u))


def resolve_backbone(name: str) -> str:
    """The model a name builds: a short name of ``BACKBONES``, the paper's spelling or a timm name.

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
    raise ValueError(f"unknown backbone {key!r}: use one of the paper's six ({', '.join(BACKBONES)}) "
                     "or any timm model name (see timm.list_models())")


class InputSpec(NamedTuple):
    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def input_spec(backbone: str) -> InputSpec:
    """Resize and crop (Sec. 3.1; 300 -> 224 for other timm models) and the pretraining's mean and std.

    >>> input_spec("pnasnet5large")
    InputSpec(resize=441, crop=331, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    """
    model = resolve_backbone(backbone)
    cfg = get_pretrained_cfg(model) if model != "alexnet" else None
    paper = next((b for b in BACKBONES.values() if b.model == model), None)
    mean, std = (cfg.mean, cfg.std) if cfg is not None else (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
    resize, crop = (paper.resize, paper.crop) if paper else (300, 224)
    return InputSpec(resize, crop, tuple(map(float, mean)), tuple(map(float, std)))  # type: ignore[arg-type]


def channels_last_preferred(backbone: str) -> bool:
    """Whether channels_last is faster on a GPU: all but ``legacy_se*`` (timm's benchmark: 111 vs 170 img/s)."""
    return not resolve_backbone(backbone).startswith("legacy_se")


class Backbone(nn.Module):
    """A CNN cut after its last convolutional block: ``images -> maps``, C = ``num_features``."""

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


class WeightsUnavailable(RuntimeError):
    """Pretrained weights are not on this machine and cannot be downloaded."""


def build_backbone(backbone: str, pretrained: bool = True,
                   weights_dir: str | os.PathLike | None = None) -> Backbone:
    """A backbone, ImageNet-pretrained through timm (torchvision for AlexNet) or random; ``weights_dir`` (default
    ``$METANET_WEIGHTS_DIR``) is what ``metanet weights fetch`` filled, read offline."""
    model = resolve_backbone(backbone)
    folder = weights_dir or os.environ.get("METANET_WEIGHTS_DIR")
    folder = Path(folder).expanduser() if folder else None
    try:
        net = _create(model, pretrained, folder)
    except Exception as e:
        if not pretrained:
            raise
        why, where = (str(e).strip().splitlines() or [""])[0][:300].rstrip("."), f"--weights-dir {folder or 'DIR'}"
        raise WeightsUnavailable(
            f"no pretrained weights for {backbone} ({model}) in {folder or 'the caches of timm / torchvision'}: "
            f"{type(e).__name__}: {why}. Fix: on a machine with internet run `python -m metanet_utils weights fetch "
            f"{where}`, copy the folder here and pass {where} (or set METANET_WEIGHTS_DIR); or train from random "
            "weights (pretrained=False, profile key pretrained: false)") from e
    if model == "alexnet":
        return Backbone(model, net.features, 256)
    C = net.num_features
    if model.startswith("vgg"):  # timm's pre_logits are fc6/fc7 as convolutions, not feature maps
        net.pre_logits = nn.Identity()
        C = net.feature_info[-1]["num_chs"]
    return Backbone(model, net, C)


def _create(model: str, pretrained: bool, folder: Path | None) -> nn.Module:
    if model == "alexnet":
        net = alexnet()
        if pretrained:
            net.load_state_dict(AlexNet_Weights.IMAGENET1K_V1.get_state_dict(model_dir=folder, check_hash=True,
                                                                         weights_only=True))
        return net
    if not pretrained:  # no classifier at all: one built and dropped would draw from the RNG and change the init
        return timm.create_model(model, num_classes=0)
    hub_id, kw = get_pretrained_cfg(model).hf_hub_id, {}
    if folder and hub_id:  # read the folder's hub cache offline: no hub retries on a node
        repo, _, revision = hub_id.partition("@")
        hits = [huggingface_hub.try_to_load_from_cache(repo, name, cache_dir=folder, revision=revision or None)
                for name in ("model.safetensors", "pytorch_model.bin")]
        file = next((h for h in hits if isinstance(h, str)), None)
        if file is None:
            raise FileNotFoundError(f"no {folder / ('models--' + repo.replace('/', '--'))}")
        kw = {"pretrained_cfg_overlay": {"file": file}}
    net = timm.create_model(model, pretrained=True, cache_dir=folder, **kw)
    net.reset_classifier(0)
    return net
