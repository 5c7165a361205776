"""Every fact HAM10000 and the paper fix, defined once: classes, metadata vocabularies, backbones, protocol."""

from __future__ import annotations

from typing import NamedTuple

#: ISIC 2018 Task 3 class codes in the official column order (logits, predictions files, tables).
CLASS_CODES: tuple[str, ...] = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
#: The same classes as spelled in ``HAM10000_metadata.csv`` (column ``dx``).
DX_CODES: tuple[str, ...] = tuple(c.lower() for c in CLASS_CODES)
DX_TO_INDEX: dict[str, int] = {dx: i for i, dx in enumerate(DX_CODES)}

#: Known values of ``sex`` and the 14 body sites (alphabetical).
SEXES: tuple[str, ...] = ("female", "male")
SITES: tuple[str, ...] = ("abdomen", "acral", "back", "chest", "ear", "face", "foot", "genital", "hand",
                          "lower extremity", "neck", "scalp", "trunk", "upper extremity")
#: The paper's metadata fields, in the order of the encoded vector.
META_FIELDS: tuple[str, ...] = ("age", "sex", "localization")

#: Class counts as printed in the paper (Sec. 3.1): BKL 1098 and VASC 143 where the data has 1099 and 142.
PAPER_CLASS_COUNTS: dict[str, int] = {"nv": 6705, "mel": 1113, "bkl": 1098, "bcc": 514, "akiec": 327, "vasc": 143,
                                      "df": 115}
#: Class counts of the official HAM10000 metadata.
DATA_CLASS_COUNTS: dict[str, int] = {"nv": 6705, "mel": 1113, "bkl": 1099, "bcc": 514, "akiec": 327, "vasc": 142,
                                     "df": 115}
N_IMAGES, N_LESIONS = 10015, 7470
#: The classes (``dx``) in the paper's order of presentation: largest first.
PAPER_ORDER: tuple[str, ...] = tuple(sorted(PAPER_CLASS_COUNTS, key=lambda k: -PAPER_CLASS_COUNTS[k]))


class PaperBackbone(NamedTuple):
    """One of the paper's six backbones: images resized, then cropped (Sec. 3.1); C channels of its last maps."""

    paper_name: str  #: the paper's spelling (Table 1)
    model: str  #: torchvision's AlexNet, else a timm name pinned to the weights of 2019
    resize: int
    crop: int
    channels: int


#: The paper's six backbones by the short names profiles use, in its order. The timm tags are the weights a 2019
#: PyTorch user had: torchvision's for VGG19, ResNet50, DenseNet161, Cadene's SENet154, TF's PNASNet-5-Large.
BACKBONES: dict[str, PaperBackbone] = {
    "alexnet": PaperBackbone("AlexNet", "alexnet", 300, 224, 256),
    "vgg19": PaperBackbone("VGG19", "vgg19.tv_in1k", 300, 224, 512),
    "resnet50": PaperBackbone("ResNet50", "resnet50.tv_in1k", 300, 224, 2048),
    "densenet161": PaperBackbone("DenseNet161", "densenet161.tv_in1k", 300, 224, 2208),
    "senet154": PaperBackbone("SENet154", "legacy_senet154.in1k", 300, 224, 2048),
    "pnasnet5large": PaperBackbone("PNASNet-5", "pnasnet5large.tf_in1k", 441, 331, 4320),
}


class Protocol(NamedTuple):
    """The paper's protocol (Sec. 3.1-3.5), named as a profile's keys."""

    backbones: tuple[str, ...] = tuple(BACKBONES)
    fusions: tuple[str, ...] = ("none", "concat", "metanet")
    n_folds: int = 5
    epochs: int = 250
    milestones: tuple[int, ...] = (50, 120, 200)  #: lr x lr_gamma at these epochs
    lr_gamma: float = 0.1
    lr: float = 1e-3
    batch_size: int = 32
    momentum: float = 0.9
    weight_decay: float = 1e-4
    meta_layers: int = 2  #: MetaNet's fully connected layers on the metadata (Table 4's best)
    ablation_backbone: str = "senet154"  #: the backbone of Tables 2-4


PAPER_PROTOCOL = Protocol()
