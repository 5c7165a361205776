"""The paper's Tables 1-4, its own numbers beside ours.

The paper's numbers ship with the package (``resources/paper_table{1..4}.csv``, copied from
the paper; MCR and recall in %, mean and standard deviation over 5 folds). Each
``build_tableN`` selects the runs of one table from a records frame
(:func:`metanet_utils.evaluate.load_records`) and returns a tidy frame with, per cell:

``n`` (folds found), ``n_expected`` (folds of the protocol), ``folds``, ``ours_mean``,
``ours_std`` (sample std, ``ddof=1``, in %), ``paper_mean``, ``paper_std`` and
``diff = ours_mean - paper_mean`` (percentage points).

A cell without runs is NaN (``"—"`` in Markdown), never a number; a cell with fewer folds
than expected is marked ``n/n_expected *`` in Markdown.

Selection rules:

* Table 1 (backbone x fusion MCR): runs with all three metadata fields and the depth of
  :data:`TABLE1_META_LAYERS`: ``concat`` with ``meta_layers == 0`` (the raw metadata, no
  fully connected layer, paper Sec. 3.5), ``metanet`` with ``meta_layers == 2``; the ``none``
  fusion ignores both.
* Table 2 (per-class recall): the Table 1 runs of one backbone.
* Table 3 (metadata subsets): fusion ``metanet``, ``meta_layers == 2``, each subset of
  fields; the empty subset is the ``none`` fusion run of that backbone.
* Table 4 (fully connected depth): fusion ``metanet`` / ``concat``, all fields,
  ``meta_layers`` k = 1..4.

Tables 2-4 of the paper use SENet154; for another backbone they still show SENet154's
numbers, and the columns ``backbone`` / ``paper_backbone`` (and the caption) say so.

Example:
    >>> t = build_table1(pd.DataFrame())
    >>> t.shape[0], bool(t["ours_mean"].isna().all()), float(t["paper_mean"].iloc[0])
    (18, True, 74.68)
"""

from __future__ import annotations

import functools
import math
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .atomic import atomic_write_text
from .config import DEFAULT_META_LAYERS as _VARIANT_META_LAYERS
from .constants import META_FIELDS
from .evaluate import load_records, setting_columns

__all__ = [
    "PAPER_BACKBONES",
    "BACKBONE_ALIASES",
    "DEFAULT_BACKBONES",
    "PAPER_ABLATION_BACKBONE",
    "FUSIONS_ORDER",
    "paper_backbone",
    "paper_table1",
    "paper_table2",
    "paper_table3",
    "paper_table4",
    "build_table1",
    "build_table2",
    "build_table3",
    "build_table4",
    "build_tables",
    "table1_paper_note",
    "paper_has_none",
    "paper_table1_wide",
    "format_table",
    "to_markdown",
    "render_markdown",
    "write_tables",
]

#: The paper's backbone rows, in its order.
PAPER_BACKBONES: tuple[str, ...] = ("AlexNet", "VGG19", "ResNet50", "DenseNet161", "SENet154", "PNASNet-5")
#: Our backbone names (lower case, timm / torchvision) -> the paper's row.
BACKBONE_ALIASES: dict[str, str] = {
    "alexnet": "AlexNet",
    "vgg19": "VGG19",
    "resnet50": "ResNet50",
    "densenet161": "DenseNet161",
    "senet154": "SENet154",
    "legacy_senet154": "SENet154",
    "pnasnet5large": "PNASNet-5",
}
#: Our names of the paper's six backbones, in the paper's order.
DEFAULT_BACKBONES: tuple[str, ...] = ("alexnet", "vgg19", "resnet50", "densenet161", "senet154", "pnasnet5large")
#: The backbone of the paper's Tables 2-4.
PAPER_ABLATION_BACKBONE = "SENet154"
FUSIONS_ORDER: tuple[str, ...] = ("none", "concat", "metanet")
ALL_META = "+".join(META_FIELDS)
DEFAULT_META_LAYERS = 2

_NUMERIC = ("n", "n_expected", "folds", "ours_mean", "ours_std", "paper_mean", "paper_std", "diff")


# --------------------------------------------------------------------------- paper numbers


def paper_backbone(name: str | None) -> str | None:
    """The paper's row for one of our backbone names, or None (e.g. tiny demo models).

    Case, a ``timm/`` prefix and a ``.tag`` suffix are ignored.

    Example:
        >>> paper_backbone("legacy_senet154"), paper_backbone("timm/resnet50.a1_in1k"), paper_backbone("resnet10t")
        ('SENet154', 'ResNet50', None)
    """
    if name is None or (isinstance(name, float) and math.isnan(name)):
        return None
    s = str(name).strip()
    if s in PAPER_BACKBONES:
        return s
    s = s.lower()
    if s.startswith("timm/"):
        s = s[5:]
    s = s.split(".", 1)[0]
    return BACKBONE_ALIASES.get(s)


@functools.lru_cache(maxsize=None)
def _paper_csv(i: int) -> pd.DataFrame:
    ref = resources.files("metanet_utils") / "resources" / f"paper_table{i}.csv"
    with ref.open("r") as fh:
        return pd.read_csv(fh)


def paper_table1() -> pd.DataFrame:
    """Table 1: MCR (%) per backbone and fusion (``backbone,fusion,mcr_mean,mcr_std``).

    Example:
        >>> t = paper_table1()
        >>> t.shape, float(t.query("backbone == 'SENet154' and fusion == 'metanet'")["mcr_mean"].iloc[0])
        ((18, 4), 87.64)
    """
    return _paper_csv(1).copy()


def paper_table2() -> pd.DataFrame:
    """Table 2: per-class recall (%) of SENet154 (``class,n_images_paper,fusion,recall_mean,recall_std``).

    The paper's columns Baseline / Fusion-network / Meta-network are the fusions none / concat / metanet.

    Example:
        >>> paper_table2().shape
        (21, 5)
    """
    return _paper_csv(2).copy()


def paper_table3() -> pd.DataFrame:
    """Table 3: MCR (%) of SENet154 with metadata subsets (``age,sex,localization,mcr_mean,mcr_std``).

    Example:
        >>> paper_table3().shape
        (8, 5)
    """
    return _paper_csv(3).copy()


def paper_table4() -> pd.DataFrame:
    """Table 4: MCR (%) of SENet154 by depth of the metadata layers (``fusion,fc_layers,mcr_mean,mcr_std``).

    Example:
        >>> paper_table4().shape
        (8, 4)
    """
    return _paper_csv(4).copy()


# --------------------------------------------------------------------------- selecting runs


def _meta_key(v: Any) -> str:
    if isinstance(v, str):
        parts = [p for p in v.replace(",", "+").split("+") if p and p != "none"]
    elif isinstance(v, Iterable):
        parts = list(v)
    else:
        parts = []
    return "+".join(f for f in META_FIELDS if f in set(parts)) or "none"


def _prepare(records: pd.DataFrame | str | Path | None) -> pd.DataFrame:
    if records is None or isinstance(records, (str, Path)):
        records = load_records(records)
    df = records.copy()
    if df.empty or "backbone" not in df.columns or "fusion" not in df.columns:
        return pd.DataFrame(columns=["backbone", "fusion", "meta_features", "meta_layers", "fold", "n_folds"])
    if "meta_features" in df.columns:
        df["meta_features"] = df["meta_features"].map(_meta_key)
    else:
        df["meta_features"] = ALL_META
    if "meta_layers" not in df.columns:
        df["meta_layers"] = DEFAULT_META_LAYERS
    if "fold" not in df.columns:
        df["fold"] = np.arange(len(df))
    if "n_folds" not in df.columns:
        df["n_folds"] = np.nan
    return df


def _default_n_folds(df: pd.DataFrame, n_folds: int | None) -> int:
    if n_folds is not None:
        return int(n_folds)
    nf = pd.to_numeric(df.get("n_folds", pd.Series(dtype=float)), errors="coerce").dropna()
    return int(nf.mode().iloc[0]) if len(nf) else 5


def _select(df: pd.DataFrame, backbone: str, fusion: str, meta: str, layers: int) -> pd.DataFrame:
    """The runs of one cell, one per fold; raises if they mix settings."""
    if df.empty:
        return df
    sel = df[(df["backbone"] == backbone) & (df["fusion"] == fusion)]
    ignore = {"meta_features", "meta_layers"} if fusion == "none" else set()
    if fusion != "none":
        sel = sel[(sel["meta_features"] == meta) & (pd.to_numeric(sel["meta_layers"]) == layers)]
    elif sel["fold"].duplicated().any():
        # `none` ignores metadata: runs that differ only in meta settings are the same model;
        # prefer the one with the profile's defaults, then the one without metadata.
        pref = np.where((sel["meta_features"] == meta) & (pd.to_numeric(sel["meta_layers"]) == layers), 0,
                        np.where(sel["meta_features"] == "none", 1, 2))
        order = sel.assign(_pref=pref).sort_values(["fold", "_pref", *(["run_id"] if "run_id" in sel else [])],
                                                   kind="stable")
        sel = order.drop_duplicates("fold", keep="first").drop(columns="_pref")
    cols = [c for c in setting_columns(sel) if c not in ignore]
    if len(sel) > 1 and cols:
        varying = [c for c in cols if sel[c].astype(str).nunique(dropna=False) > 1]
        dup = sel["fold"].duplicated().any()
        if varying or dup:
            raise ValueError(
                f"the runs of cell backbone={backbone!r}, fusion={fusion!r}, meta_features={meta!r}, "
                f"meta_layers={layers} {'repeat a fold and ' if dup else ''}differ in {varying or ['(nothing)']}; "
                f"filter the records to one setting first, e.g. "
                f"evaluate.filter_records(records, {varying[0] if varying else 'run_id'}=...)")
    return sel


def _cell(sel: pd.DataFrame, value: str, n_expected: int) -> dict[str, Any]:
    if sel.empty or value not in sel.columns:
        x = np.zeros(0)
        folds: list[int] = []
    else:
        vals = pd.to_numeric(sel[value], errors="coerce")
        keep = vals.notna().to_numpy()
        x = vals.to_numpy(dtype=float)[keep] * 100.0
        folds = sorted(int(f) for f in sel["fold"].to_numpy()[keep])
        nf = pd.to_numeric(sel["n_folds"], errors="coerce").dropna()
        if len(nf):
            n_expected = int(nf.max())
    return {
        "n": int(len(x)),
        "n_expected": int(n_expected),
        "folds": ",".join(map(str, folds)),
        "ours_mean": float(x.mean()) if len(x) else float("nan"),
        "ours_std": float(x.std(ddof=1)) if len(x) > 1 else float("nan"),
    }


def _with_paper(row: dict[str, Any], mean: float, std: float) -> dict[str, Any]:
    row["paper_mean"] = float(mean)
    row["paper_std"] = float(std)
    row["diff"] = row["ours_mean"] - row["paper_mean"] if row["n"] else float("nan")
    return row


#: Tables 1 and 2 compare the paper's variants: concat on the raw metadata (no layer, as the
#: paper's Sec. 3.5 says), metanet with two layers: each variant's default depth.
TABLE1_META_LAYERS: dict[str, int] = dict(_VARIANT_META_LAYERS)


def _layers_for(meta_layers: int | Mapping[str, int] | None, fusion: str) -> int:
    if meta_layers is None:
        meta_layers = TABLE1_META_LAYERS
    if isinstance(meta_layers, Mapping):
        return int(meta_layers.get(fusion, DEFAULT_META_LAYERS))
    return int(meta_layers)


def _ablation_caption(table: str, what: str, backbone: str) -> str:
    pb = paper_backbone(backbone)
    if pb == PAPER_ABLATION_BACKBONE:
        who = f"backbone: ours {backbone}, paper {PAPER_ABLATION_BACKBONE}"
    else:
        who = (f"backbone: ours {backbone}; the paper's numbers are {PAPER_ABLATION_BACKBONE}'s "
               f"(a different backbone: compare trends, not values)")
    return (f"{table}. {what}; {who}. Ours: mean ± sample std (ddof=1) over folds, in %; "
            f"paper: mean ± std over 5 folds; diff = ours - paper (points).")


def _finish(rows: list[dict[str, Any]], keys: list[str], caption: str) -> pd.DataFrame:
    out = pd.DataFrame(rows, columns=[*keys, *_NUMERIC])
    out["n"] = out["n"].astype(int)
    out["n_expected"] = out["n_expected"].astype(int)
    out.attrs["caption"] = caption
    return out


# --------------------------------------------------------------------------- the tables


def build_table1(
    records: pd.DataFrame | str | Path | None,
    backbones: Sequence[str] | None = None,
    fusions: Sequence[str] = FUSIONS_ORDER,
    meta_layers: int | Mapping[str, int] = None,
    n_folds: int | None = None,
) -> pd.DataFrame:
    """Table 1: MCR (%) per backbone and fusion, ours beside the paper's.

    Args:
        records: a records frame (:func:`~metanet_utils.evaluate.load_records`), a runs folder,
            or None for the default runs folder.
        backbones: our backbone names, one row block each; default the paper's six (under the
            name the records use, e.g. ``legacy_senet154``), then any other backbone found.
        fusions: fusion variants, in column order.
        meta_layers: the metadata depth of the selected runs (an int, or per fusion).
        n_folds: folds expected per cell; default the records' ``n_folds`` (else 5).

    Returns:
        One row per (backbone, fusion): ``backbone, paper_backbone, fusion`` and the cell
        columns (see the module docstring). Backbones without a paper row have NaN paper columns.

    Example:
        >>> t = build_table1(pd.DataFrame(), backbones=["resnet10t", "resnet50"])
        >>> t.shape, t["backbone"].iloc[[0, 3]].tolist(), t["paper_backbone"].iloc[3], int(t["n"].sum())
        ((6, 11), ['resnet10t', 'resnet50'], 'ResNet50', 0)
        >>> bool(t["paper_mean"].iloc[0:3].isna().all()), bool(t["ours_mean"].isna().all())
        (True, True)
    """
    df = _prepare(records)
    nexp = _default_n_folds(df, n_folds)
    if backbones is None:
        present = list(dict.fromkeys(df["backbone"].dropna().astype(str))) if len(df) else []
        backbones = []
        for alias, pname in zip(DEFAULT_BACKBONES, PAPER_BACKBONES):
            found = [b for b in present if paper_backbone(b) == pname]
            backbones.extend(found or [alias])
        backbones.extend(b for b in present if b not in backbones)
    paper = paper_table1().set_index(["backbone", "fusion"])
    rows = []
    for b in backbones:
        pb = paper_backbone(b)
        for f in fusions:
            sel = _select(df, b, f, ALL_META, _layers_for(meta_layers, f))
            row = {"backbone": b, "paper_backbone": pb, "fusion": f, **_cell(sel, "mcr", nexp)}
            if pb is not None and (pb, f) in paper.index:
                p = paper.loc[(pb, f)]
                row = _with_paper(row, p["mcr_mean"], p["mcr_std"])
            else:
                row = _with_paper(row, float("nan"), float("nan"))
            rows.append(row)
    caption = ("Table 1. Mean class recall (%) by backbone and fusion (none = image only, concat = "
               "concatenation, metanet = multiplicative gate). Ours: mean ± sample std (ddof=1) over "
               "folds; paper: mean ± std over 5 folds; diff = ours - paper (points).")
    out = _finish(rows, ["backbone", "paper_backbone", "fusion"], caption)
    note = table1_paper_note(out)
    if note:
        out.attrs["note"] = note
    return out


def paper_has_none(table1: pd.DataFrame) -> bool:
    """Whether no backbone of Table 1 (a :func:`build_table1` frame or its CSV) is one the paper used: the
    paper columns are then left out and the paper's own Table 1 shown instead."""
    return bool(len(table1)) and "paper_mean" in table1 and bool(table1["paper_mean"].isna().all())


def table1_paper_note(table1: pd.DataFrame) -> str:
    """One sentence where Table 1 has backbones the paper did not use (their paper cells are empty), else "".

    Works on a :func:`build_table1` frame or its CSV (``backbone`` and ``paper_mean`` columns).

    Example:
        >>> table1_paper_note(build_table1(pd.DataFrame(), backbones=["resnet10t"]))[:43]
        'The paper used none of these backbones (it '
        >>> table1_paper_note(build_table1(pd.DataFrame(), backbones=["resnet10t", "resnet50"]))
        'The paper did not use resnet10t: its paper and diff cells are empty (—).'
        >>> table1_paper_note(build_table1(pd.DataFrame(), backbones=["resnet50"]))
        ''
    """
    if table1 is None or not len(table1) or not {"backbone", "paper_mean"} <= set(table1.columns):
        return ""
    missing = table1.groupby("backbone", sort=False)["paper_mean"].apply(lambda v: bool(v.isna().all()))
    if not missing.any():
        return ""
    if missing.all():
        return ("The paper used none of these backbones (it reports " + ", ".join(PAPER_BACKBONES[:-1])
                + f" and {PAPER_BACKBONES[-1]}), so there is no paper number to put beside them; the paper's own "
                "Table 1 is shown for reference.")
    names = [str(b) for b, m in missing.items() if m]
    return f"The paper did not use {', '.join(names)}: its paper and diff cells are empty (—)."


def paper_table1_wide() -> pd.DataFrame:
    """The paper's Table 1 as printed: one row per backbone, one ``mean ± std`` column per fusion.

    Example:
        >>> paper_table1_wide().loc[4].tolist()
        ['SENet154', '85.44 ± 1.09', '86.46 ± 0.69', '87.64 ± 0.52']
    """
    t = paper_table1()
    t["cell"] = [_pm(m, s) for m, s in zip(t["mcr_mean"], t["mcr_std"])]
    wide = t.pivot(index="backbone", columns="fusion", values="cell")
    wide = wide.reindex(index=[b for b in PAPER_BACKBONES if b in wide.index],
                        columns=[f for f in FUSIONS_ORDER if f in wide.columns])
    wide.columns.name = None
    return wide.reset_index()


def build_table2(
    records: pd.DataFrame | str | Path | None,
    backbone: str,
    fusions: Sequence[str] = FUSIONS_ORDER,
    meta_layers: int | Mapping[str, int] | None = None,
    n_folds: int | None = None,
) -> pd.DataFrame:
    """Table 2: per-class recall (%) per fusion for one backbone, beside the paper's SENet154.

    Rows in the paper's order (classes by size, then fusion): ``class, n_images_paper,
    n_images`` (this run's validation images of the class, summed over the folds of the cell: every image of
    the class once when all folds are in; NaN without records), ``fusion, backbone, paper_backbone`` and
    the cell columns.

    Example:
        >>> build_table2(pd.DataFrame(), "resnet10t").shape
        (21, 14)
    """
    df = _prepare(records)
    nexp = _default_n_folds(df, n_folds)
    paper = paper_table2()
    sels = {f: _select(df, backbone, f, ALL_META, _layers_for(meta_layers, f)) for f in fusions}
    rows = []
    for code in paper["class"].drop_duplicates():
        for f in fusions:
            p = paper[(paper["class"] == code) & (paper["fusion"] == f)]
            sel, col = sels[f], f"n_val_{code}"
            n_images = int(sel[col].sum()) if col in sel and len(sel) and sel[col].notna().all() else np.nan
            row = {"class": code, "n_images_paper": int(p["n_images_paper"].iloc[0]) if len(p) else np.nan,
                   "n_images": n_images, "fusion": f, "backbone": backbone, "paper_backbone": PAPER_ABLATION_BACKBONE,
                   **_cell(sels[f], f"recall_{code}", nexp)}
            rows.append(_with_paper(row, p["recall_mean"].iloc[0] if len(p) else np.nan,
                                    p["recall_std"].iloc[0] if len(p) else np.nan))
    caption = _ablation_caption("Table 2", "Recall (%) of each class by fusion", backbone)
    return _finish(rows, ["class", "n_images_paper", "n_images", "fusion", "backbone", "paper_backbone"], caption)


def build_table3(
    records: pd.DataFrame | str | Path | None,
    backbone: str,
    meta_layers: int = DEFAULT_META_LAYERS,
    n_folds: int | None = None,
) -> pd.DataFrame:
    """Table 3: MCR (%) with each subset of the metadata fields (metanet fusion).

    The row without metadata is the ``none`` fusion run of the backbone. Columns
    ``age, sex, localization`` (0/1 as in the paper), ``fusion, meta_features, backbone,
    paper_backbone`` and the cell columns.

    Example:
        >>> t = build_table3(pd.DataFrame(), "senet154")
        >>> t.shape, t["fusion"].tolist()[:2]
        ((8, 15), ['none', 'metanet'])
    """
    df = _prepare(records)
    nexp = _default_n_folds(df, n_folds)
    rows = []
    for _, p in paper_table3().iterrows():
        used = [f for f in META_FIELDS if int(p[f])]
        key = "+".join(used) or "none"
        fusion = "metanet" if used else "none"
        sel = _select(df, backbone, fusion, key if used else ALL_META, meta_layers if used else 0)
        row = {**{f: int(p[f]) for f in META_FIELDS}, "fusion": fusion, "meta_features": key,
               "backbone": backbone, "paper_backbone": PAPER_ABLATION_BACKBONE, **_cell(sel, "mcr", nexp)}
        rows.append(_with_paper(row, p["mcr_mean"], p["mcr_std"]))
    caption = _ablation_caption("Table 3", "Mean class recall (%) with subsets of the metadata "
                                "(✓ = field used, 1 in the CSV; no field = the image-only run)", backbone)
    return _finish(rows, [*META_FIELDS, "fusion", "meta_features", "backbone", "paper_backbone"], caption)


def build_table4(
    records: pd.DataFrame | str | Path | None,
    backbone: str,
    meta_layers: Sequence[int] = (1, 2, 3, 4),
    fusions: Sequence[str] = ("metanet", "concat"),
    n_folds: int | None = None,
) -> pd.DataFrame:
    """Table 4: MCR (%) by number k of fully connected layers on the metadata.

    Columns ``fusion, fc_layers, backbone, paper_backbone`` and the cell columns; rows
    fusion-major in the paper's order (metanet, then concat).

    Example:
        >>> build_table4(pd.DataFrame(), "senet154").shape
        (8, 12)
    """
    df = _prepare(records)
    nexp = _default_n_folds(df, n_folds)
    paper = paper_table4().set_index(["fusion", "fc_layers"])
    rows = []
    for f in fusions:
        for k in meta_layers:
            sel = _select(df, backbone, f, ALL_META, int(k))
            row = {"fusion": f, "fc_layers": int(k), "backbone": backbone,
                   "paper_backbone": PAPER_ABLATION_BACKBONE, **_cell(sel, "mcr", nexp)}
            if (f, int(k)) in paper.index:
                p = paper.loc[(f, int(k))]
                row = _with_paper(row, p["mcr_mean"], p["mcr_std"])
            else:
                row = _with_paper(row, float("nan"), float("nan"))
            rows.append(row)
    caption = _ablation_caption("Table 4", "Mean class recall (%) by the number of fully connected "
                                "layers on the metadata", backbone)
    return _finish(rows, ["fusion", "fc_layers", "backbone", "paper_backbone"], caption)


def build_tables(
    records: pd.DataFrame | str | Path | None,
    backbones: Sequence[str] | None = None,
    ablation_backbone: str | None = None,
) -> dict[str, pd.DataFrame]:
    """All four tables: ``{"table1": ..., "table4": ...}``.

    ``ablation_backbone`` (Tables 2-4) defaults to the records' SENet154 if any, else the
    backbone with the most runs, else ``senet154``.

    Example:
        >>> sorted(build_tables(pd.DataFrame()))
        ['table1', 'table2', 'table3', 'table4']
    """
    df = _prepare(records)
    if ablation_backbone is None:
        present = df["backbone"].dropna().astype(str) if len(df) else pd.Series(dtype=str)
        senet = [b for b in present.unique() if paper_backbone(b) == PAPER_ABLATION_BACKBONE]
        if senet:
            ablation_backbone = senet[0]
        elif len(present):
            ablation_backbone = str(present.value_counts().index[0])
        else:
            ablation_backbone = "senet154"
    return {
        "table1": build_table1(df, backbones=backbones),
        "table2": build_table2(df, ablation_backbone),
        "table3": build_table3(df, ablation_backbone),
        "table4": build_table4(df, ablation_backbone),
    }


# --------------------------------------------------------------------------- rendering


def _is_missing(v: Any) -> bool:
    if v is None:
        return True
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def _pm(mean: Any, std: Any) -> str:
    if _is_missing(mean):
        return "—"
    return f"{float(mean):.2f} ± {'—' if _is_missing(std) else f'{float(std):.2f}'}"


def format_table(df: pd.DataFrame) -> pd.DataFrame:
    """A display copy of a ``build_tableN`` frame: ``ours`` and ``paper`` as ``mean ± std``,
    ``n`` as ``5`` or ``3/5 *`` (fewer folds than expected), ``diff`` signed, metadata flags
    as ticks. Frames without the cell columns are returned unchanged.

    Example:
        >>> t = format_table(build_table4(pd.DataFrame(), "senet154"))
        >>> t.loc[0, ["ours", "n", "paper", "diff"]].tolist()
        ['—', '0/5 *', '86.47 ± 0.53', '—']
    """
    if not {"ours_mean", "ours_std", "n", "paper_mean"}.issubset(df.columns):
        return df.copy()
    keys = [c for c in df.columns if c not in _NUMERIC]
    out = df[keys].copy()
    for f in META_FIELDS:
        if f in out.columns and pd.api.types.is_numeric_dtype(out[f]):
            out[f] = out[f].map(lambda v: "✓" if v else "")
    out["ours"] = [_pm(m, s) for m, s in zip(df["ours_mean"], df["ours_std"])]
    n_exp = df["n_expected"] if "n_expected" in df.columns else df["n"]
    out["n"] = [f"{int(n)}" if int(n) >= int(e) else f"{int(n)}/{int(e)} *" for n, e in zip(df["n"], n_exp)]
    out["paper"] = [_pm(m, s) for m, s in zip(df["paper_mean"], df["paper_std"])]
    out["diff"] = ["—" if _is_missing(d) else f"{float(d):+.2f}" for d in df["diff"]]
    out.attrs = dict(df.attrs)
    return out


def _md_cell(v: Any, floatfmt: str, na_rep: str) -> str:
    if _is_missing(v):
        return na_rep
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (float, np.floating)):
        return format(float(v), floatfmt)
    return str(v).replace("|", "\\|").replace("\n", " ")


def to_markdown(df: pd.DataFrame, floatfmt: str = ".2f", na_rep: str = "—", index: bool = False) -> str:
    """A GitHub-flavoured Markdown table (no ``tabulate`` needed); NaN/None show as ``na_rep``.

    Numeric columns are right-aligned.

    Example:
        >>> print(to_markdown(pd.DataFrame({"a": ["x", "y|z"], "b": [1.5, float("nan")]})))
        | a | b |
        |:--|--:|
        | x | 1.50 |
        | y\\|z | — |
    """
    if index:
        df = df.reset_index()
    cols = [str(c) for c in df.columns]
    align = ["--:" if pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]) else ":--"
             for c in df.columns]
    lines = ["| " + " | ".join(c.replace("|", "\\|") for c in cols) + " |",
             "|" + "|".join(align) + "|"]
    for row in df.itertuples(index=False, name=None):
        lines.append("| " + " | ".join(_md_cell(v, floatfmt, na_rep) for v in row) + " |")
    return "\n".join(lines)


def render_markdown(df: pd.DataFrame, caption: bool = True) -> str:
    """A table as ``results/tables/<name>.md`` has it: its caption (bold), the :func:`format_table` view, a
    footnote where cells have fewer folds than expected, the table's note (``attrs["note"]``, e.g. backbones the
    paper did not use) and, for a Table 1 without any paper backbone, the paper's own Table 1 instead of the
    empty paper columns.

    Example:
        >>> text = render_markdown(build_table1(pd.DataFrame(), backbones=["resnet10t"]))
        >>> text.startswith("**Table 1."), "The paper used none" in text, "| SENet154 | 85.44 ± 1.09 |" in text
        (True, True, True)
        >>> text.splitlines()[2]
        '| backbone | fusion | ours | n |'
    """
    view = format_table(df)
    none_in_paper = paper_has_none(df)
    if none_in_paper:  # no paper backbone in Table 1: the sentence and the paper's own table
        view = view.drop(columns=[c for c in ("paper_backbone", "paper", "diff") if c in view.columns])
    parts = []
    if caption and df.attrs.get("caption"):
        parts.append(f"**{df.attrs['caption']}**\n")
    parts.append(to_markdown(view))
    if "n" in view.columns and view["n"].astype(str).str.endswith("*").any():
        parts.append("\n\\* fewer folds than expected (n found / n expected); "
                     "a cell without runs shows —.")
    if df.attrs.get("note"):
        parts.append(f"\n{df.attrs['note']}")
    if none_in_paper:
        parts.append("\n**The paper's Table 1** (MCR %, mean ± std over 5 folds):\n")
        parts.append(to_markdown(paper_table1_wide()))
    return "\n".join(parts)


def write_tables(tables: Mapping[str, pd.DataFrame], out_dir: str | Path | None = None) -> list[Path]:
    """Write ``<name>.csv`` (numbers; a missing cell is empty) and ``<name>.md`` (caption and
    the :func:`format_table` view) for each table, atomically. Returns the written paths.

    Example:
        >>> import tempfile
        >>> paths = write_tables({"table4": build_table4(pd.DataFrame(), "senet154")}, tempfile.mkdtemp())
        >>> [p.name for p in paths]
        ['table4.csv', 'table4.md']
    """
    if out_dir is None:
        from .paths import tables_dir

        out_dir = tables_dir()
    out_dir = Path(out_dir)
    written: list[Path] = []
    for name, df in tables.items():
        csv_path, md_path = out_dir / f"{name}.csv", out_dir / f"{name}.md"
        atomic_write_text(csv_path, df.to_csv(index=False))
        atomic_write_text(md_path, render_markdown(df) + "\n")
        written += [csv_path, md_path]
    return written
