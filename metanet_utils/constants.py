"""Fixed vocabularies of HAM10000 / ISIC 2018 Task 3 and of the paper.

The class order is the official ISIC 2018 Task 3 order (``MEL,NV,BCC,AKIEC,BKL,DF,VASC``),
used for logits, predictions files and every table.
"""

from __future__ import annotations

__all__ = [
    "CLASS_CODES",
    "DX_CODES",
    "DX_TO_INDEX",
    "CODE_TO_DX",
    "SEXES",
    "SITES",
    "META_FIELDS",
    "PAPER_CLASS_COUNTS",
    "PAPER_ORDER",
    "DATA_CLASS_COUNTS",
    "N_IMAGES",
    "N_LESIONS",
]

#: Official ISIC 2018 Task 3 class codes, in the official column order.
CLASS_CODES: tuple[str, ...] = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
#: The same classes as spelled in ``HAM10000_metadata.csv`` (column ``dx``).
DX_CODES: tuple[str, ...] = tuple(c.lower() for c in CLASS_CODES)
DX_TO_INDEX: dict[str, int] = {dx: i for i, dx in enumerate(DX_CODES)}
CODE_TO_DX: dict[str, str] = dict(zip(CLASS_CODES, DX_CODES))

#: Known values of ``sex`` (``unknown`` is filled with the most frequent one).
SEXES: tuple[str, ...] = ("female", "male")
#: The 14 body sites of HAM10000, alphabetical (``unknown`` is filled with the most frequent one).
SITES: tuple[str, ...] = (
    "abdomen", "acral", "back", "chest", "ear", "face", "foot", "genital", "hand",
    "lower extremity", "neck", "scalp", "trunk", "upper extremity",
)
#: Metadata fields used by the paper, in the order of the encoded vector.
META_FIELDS: tuple[str, ...] = ("age", "sex", "localization")

#: Class counts as printed in the paper (Sec. 3.1): BKL 1098 and VASC 143, where the data has 1099 and 142
#: (a misprint or another label version).
PAPER_CLASS_COUNTS: dict[str, int] = {
    "nv": 6705, "mel": 1113, "bkl": 1098, "bcc": 514, "akiec": 327, "vasc": 143, "df": 115,
}
#: Class counts of the official HAM10000 metadata.
DATA_CLASS_COUNTS: dict[str, int] = {
    "nv": 6705, "mel": 1113, "bkl": 1099, "bcc": 514, "akiec": 327, "vasc": 142, "df": 115,
}
N_IMAGES = 10015
N_LESIONS = 7470

#: Class codes in the paper's order of presentation: largest class first.
PAPER_ORDER: tuple[str, ...] = tuple(sorted(PAPER_CLASS_COUNTS, key=lambda k: -PAPER_CLASS_COUNTS[k]))
