"""The paper's Tables 1-4, its numbers beside ours.

The paper's numbers ship with the package (``resources/paper_table{1..4}.csv``: MCR and recall in %, mean and
standard deviation over 5 folds). Each ``build_tableN`` selects the runs of one table from a records frame
(:func:`metanet_utils.evaluate.load_records`) and returns one row per cell with ``n`` (folds found),
``n_expected``, ``folds``, ``ours_mean``, ``ours_std`` (sample std, ``ddof=1``, in %), ``paper_mean``,
``paper_std`` and ``diff = ours_mean - paper_mean`` (points). A cell without runs is NaN (``—``), never 0.

Selection: Table 1 (backbone x fusion) and Table 2 (per-class recall of one backbone) take all three metadata
fields, ``concat`` on the raw metadata (k = 0, paper Sec. 3.5) and ``metanet`` with k layers (default 2);
``none`` ignores the metadata. Table 3 takes MetaNet with each subset of the fields (no field: the ``none``
run), Table 4 MetaNet and concatenation with k = 1..4. The paper's Tables 2-4 are SENet154's: for another
backbone the caption says to compare trends, not values.

Example:
    >>> t = build_table1(pd.DataFrame())
    >>> t.shape[0], bool(t["ours_mean"].isna().all()), float(t["paper_mean"].iloc[0])
    (18, True, 74.68)
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .atomic import atomic_write_text
from .config import DEFAULT_META_LAYERS
from .constants import BACKBONES, META_FIELDS, PAPER_PROTOCOL
from .evaluate import load_records, meta_key, setting_columns
from .paths import tables_dir

__all__ = [
    "paper_alias", "paper_backbone", "paper_table", "paper_table1", "paper_table2", "paper_table3", "paper_table4",
    "paper_table1_wide", "table1_records", "build_table1", "build_table2", "build_table3", "build_table4", "caption",
    "table1_paper_note", "paper_has_none", "format_table", "to_markdown", "render_markdown", "write_tables",
]

ALL_META = "+".join(META_FIELDS)
_CELL = ("n", "n_expected", "folds", "ours_mean", "ours_std", "paper_mean", "paper_std", "diff")
#: Any spelling of the paper's backbones (alias, the paper's, timm's architecture) -> the alias of BACKBONES.
_ALIASES = {k.lower(): a for a, b in BACKBONES.items() for k in (a, b.paper_name, b.model.split(".")[0])}
_ABLATION = BACKBONES[PAPER_PROTOCOL.ablation_backbone].paper_name  # "SENet154"


# --------------------------------------------------------------------------- the paper's numbers


def paper_alias(name: Any) -> str | None:
    """Our short name of one of the paper's backbones (a key of ``constants.BACKBONES``), or None.

    Case, a ``timm/`` prefix and a ``.tag`` suffix are ignored.

    Example:
        >>> paper_alias("legacy_senet154"), paper_alias("timm/resnet50.a1_in1k"), paper_alias("resnet10t")
        ('senet154', 'resnet50', None)
    """
    s = str(name).strip().lower().removeprefix("timm/")
    return _ALIASES.get(s) or _ALIASES.get(s.split(".", 1)[0])


def paper_backbone(name: Any) -> str | None:
    """The paper's spelling of one of its backbones (``'PNASNet-5'``), or None (e.g. tiny demo models).

    Example:
        >>> paper_backbone("legacy_senet154"), paper_backbone("PNASNet5Large"), paper_backbone("test_resnet")
        ('SENet154', 'PNASNet-5', None)
    """
    alias = paper_alias(name)
    return BACKBONES[alias].paper_name if alias else None


@functools.lru_cache(maxsize=None)
def _paper_csv(i: int) -> pd.DataFrame:
    with (resources.files("metanet_utils") / "resources" / f"paper_table{i}.csv").open() as fh:
        return pd.read_csv(fh)


def paper_table(i: int) -> pd.DataFrame:
    """The paper's Table ``i`` (a copy): 1, MCR (%) per backbone and fusion (``backbone,fusion,mcr_mean,mcr_std``);
    2, SENet154's recall (%) per class (``class,n_images_paper,fusion,recall_mean,recall_std``; the paper's
    Baseline / Fusion-network / Meta-network are the fusions none / concat / metanet); 3, SENet154's MCR with
    subsets of the metadata (``age,sex,localization,mcr_mean,mcr_std``); 4, its MCR by depth of the metadata
    layers (``fusion,fc_layers,mcr_mean,mcr_std``).

    Example:
        >>> paper_table(1).query("backbone == 'SENet154' and fusion == 'metanet'")["mcr_mean"].item()
        87.64
    """
    return _paper_csv(i).copy()


paper_table1, paper_table2, paper_table3, paper_table4 = (functools.partial(paper_table, i) for i in (1, 2, 3, 4))


def paper_table1_wide() -> pd.DataFrame:
    """The paper's Table 1 as printed: one row per backbone, one ``mean ± std`` column per fusion.

    Example:
        >>> paper_table1_wide().loc[4].tolist()
        ['SENet154', '85.44 ± 1.09', '86.46 ± 0.69', '87.64 ± 0.52']
    """
    t = paper_table1().assign(cell=lambda d: [_pm(m, s) for m, s in zip(d["mcr_mean"], d["mcr_std"])])
    wide = t.pivot(index="backbone", columns="fusion", values="cell")
    wide = wide.reindex(index=[b.paper_name for b in BACKBONES.values()], columns=list(PAPER_PROTOCOL.fusions))
    wide.columns.name = None
    return wide.reset_index()


# --------------------------------------------------------------------------- selecting runs


def _prepare(records: pd.DataFrame | str | Path | None) -> pd.DataFrame:
    """A records frame, the records of a runs folder (None: ``results/runs``), or an empty frame for no runs."""
    if records is None or isinstance(records, (str, Path)):
        return load_records(records)
    cols = ["backbone", "fusion", "meta_features", "meta_layers", "fold"]
    return records if len(records) and set(cols) <= set(records.columns) else pd.DataFrame(columns=cols)


def _select(df: pd.DataFrame, backbone: str, fusion: str, meta: str, layers: int) -> pd.DataFrame:
    """The runs of one cell, one per fold; raises if they mix settings (``none`` ignores the metadata ones)."""
    sel = df[(df["backbone"] == backbone) & (df["fusion"] == fusion)]
    ignore = {"meta_features", "meta_layers"} if fusion == "none" else set()
    if fusion != "none":
        sel = sel[(sel["meta_features"] == meta) & (pd.to_numeric(sel["meta_layers"]) == layers)]
    varying = [c for c in setting_columns(sel) if c not in ignore and sel[c].astype(str).nunique(dropna=False) > 1]
    if varying or sel["fold"].duplicated().any():
        col = varying[0] if varying else "run_id"
        raise ValueError(
            f"the runs of cell backbone={backbone!r}, fusion={fusion!r}, meta_features={meta!r}, meta_layers={layers} "
            f"{'differ in ' + ', '.join(varying) if varying else 'repeat a fold'}; keep one setting first, "
            f"e.g. records[records[{col!r}] == ...]")
    return sel


def _nexp(df: pd.DataFrame, n_folds: int | None) -> int:
    """Folds expected per cell: ``n_folds``, else the records' most common ``n_folds``, else the paper's 5."""
    found = pd.to_numeric(df["n_folds"], errors="coerce").dropna() if "n_folds" in df else pd.Series(dtype=float)
    return int(n_folds or (found.mode().iloc[0] if len(found) else PAPER_PROTOCOL.n_folds))


def _row(keys: dict[str, Any], sel: pd.DataFrame, value: str, nexp: int, paper: Any = None,
         paper_cols: tuple[str, str] = ("mcr_mean", "mcr_std")) -> dict[str, Any]:
    """One cell: ``keys``, ours (``value`` x 100 over the folds of ``sel``) and the paper's (a row or None)."""
    vals = pd.to_numeric(sel[value], errors="coerce") if value in sel else pd.Series(dtype=float)
    x = vals.dropna().to_numpy(dtype=float) * 100.0
    mean = float(x.mean()) if len(x) else np.nan
    pm, ps = (np.nan, np.nan) if paper is None else (float(paper[paper_cols[0]]), float(paper[paper_cols[1]]))
    return {**keys, "n": len(x), "n_expected": nexp,
            "folds": ",".join(str(int(f)) for f in sorted(sel.loc[vals.notna(), "fold"])) if len(x) else "",
            "ours_mean": mean, "ours_std": float(x.std(ddof=1)) if len(x) > 1 else np.nan,
            "paper_mean": pm, "paper_std": ps, "diff": mean - pm}


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(rows).astype({"n": int, "n_expected": int})


def _k(fusion: str, meta_layers: int) -> int:
    """Table 1's depth of a fusion: MetaNet's k, the variant's paper setting otherwise (concat: raw metadata)."""
    return meta_layers if fusion == "metanet" else DEFAULT_META_LAYERS[fusion]


def table1_records(records: pd.DataFrame, meta_layers: int = PAPER_PROTOCOL.meta_layers) -> pd.DataFrame:
    """The runs of Table 1 in a records frame: each fusion at its Table 1 depth, all metadata fields (``none``:
    whatever its metadata settings)."""
    df = _prepare(records)
    depth = df["fusion"].map(lambda f: _k(f, meta_layers))
    keep = (df["fusion"] == "none") | ((df["meta_features"] == ALL_META) & (pd.to_numeric(df["meta_layers"]) == depth))
    return df[keep].reset_index(drop=True)


# --------------------------------------------------------------------------- the tables


def build_table1(records: pd.DataFrame | str | Path | None, backbones: Sequence[str] | None = None,
                 fusions: Sequence[str] = PAPER_PROTOCOL.fusions, meta_layers: int = PAPER_PROTOCOL.meta_layers,
                 n_folds: int | None = None) -> pd.DataFrame:
    """Table 1: MCR (%) per backbone and fusion, ours beside the paper's.

    Args:
        records: a records frame, a runs folder, or None for ``results/runs``.
        backbones: one row block each; default the paper's six (under the names the records use, e.g.
            ``legacy_senet154``), then any other backbone of the records.
        fusions: in column order. meta_layers: MetaNet's depth k.
        n_folds: folds expected per cell; default the records' ``n_folds`` (else 5).

    Returns:
        One row per (backbone, fusion): ``backbone, paper_backbone, fusion`` and the cell columns; a backbone the
        paper did not use has NaN paper columns.

    Example:
        >>> t = build_table1(pd.DataFrame(), backbones=["resnet10t", "resnet50"])
        >>> t.shape, t["paper_backbone"].iloc[3], bool(t["paper_mean"].iloc[:3].isna().all())
        ((6, 11), 'ResNet50', True)
    """
    df = _prepare(records)
    present = list(dict.fromkeys(df["backbone"].dropna().astype(str)))
    if backbones is None:
        backbones = [b for a in BACKBONES for b in ([p for p in present if paper_alias(p) == a] or [a])]
        backbones += [b for b in present if b not in backbones]
    paper = paper_table1().set_index(["backbone", "fusion"])
    rows = []
    for b in backbones:
        pb = paper_backbone(b)
        for f in fusions:
            sel = _select(df, b, f, ALL_META, _k(f, meta_layers))
            p = paper.loc[(pb, f)] if (pb, f) in paper.index else None
            rows.append(_row({"backbone": b, "paper_backbone": pb, "fusion": f}, sel, "mcr", _nexp(df, n_folds), p))
    return _frame(rows)


def build_table2(records: pd.DataFrame | str | Path | None, backbone: str,
                 fusions: Sequence[str] = PAPER_PROTOCOL.fusions, meta_layers: int = PAPER_PROTOCOL.meta_layers,
                 n_folds: int | None = None) -> pd.DataFrame:
    """Table 2: recall (%) of each class per fusion for one backbone, beside the paper's SENet154.

    Rows in the paper's order (classes largest first, then fusion): ``class, n_images_paper, n_images`` (this
    run's validation images of the class over the cell's folds; NaN without records), ``fusion, backbone,
    paper_backbone`` and the cell columns.

    Example:
        >>> build_table2(pd.DataFrame(), "resnet10t").shape
        (21, 14)
    """
    df = _prepare(records)
    sels = {f: _select(df, backbone, f, ALL_META, _k(f, meta_layers)) for f in fusions}
    paper = paper_table2().set_index(["class", "fusion"])
    n_paper = paper_table2().groupby("class", sort=False)["n_images_paper"].first()
    rows = []
    for code, n_images_paper in n_paper.items():
        for f in fusions:
            sel, col = sels[f], f"n_val_{code}"
            p = paper.loc[(code, f)] if (code, f) in paper.index else None
            keys = {"class": code, "n_images_paper": n_images_paper,
                    "n_images": sel[col].sum() if col in sel and len(sel) else np.nan,
                    "fusion": f, "backbone": backbone, "paper_backbone": _ABLATION}
            rows.append(_row(keys, sel, f"recall_{code}", _nexp(df, n_folds), p, ("recall_mean", "recall_std")))
    return _frame(rows)


def build_table3(records: pd.DataFrame | str | Path | None, backbone: str,
                 meta_layers: int = PAPER_PROTOCOL.meta_layers, n_folds: int | None = None) -> pd.DataFrame:
    """Table 3: MCR (%) with each subset of the metadata fields (MetaNet; no field: the ``none`` run).

    Columns ``age, sex, localization`` (0/1 as in the paper), ``fusion, meta_features, backbone,
    paper_backbone`` and the cell columns.

    Example:
        >>> t = build_table3(pd.DataFrame(), "senet154")
        >>> t.shape, t["fusion"].tolist()[:2]
        ((8, 15), ['none', 'metanet'])
    """
    df = _prepare(records)
    rows = []
    for _, p in paper_table3().iterrows():
        key = meta_key(f for f in META_FIELDS if p[f])
        fusion = "metanet" if key != "none" else "none"
        keys = {**{f: int(p[f]) for f in META_FIELDS}, "fusion": fusion, "meta_features": key, "backbone": backbone,
                "paper_backbone": _ABLATION}
        rows.append(_row(keys, _select(df, backbone, fusion, key, meta_layers), "mcr", _nexp(df, n_folds), p))
    return _frame(rows)


def build_table4(records: pd.DataFrame | str | Path | None, backbone: str, meta_layers: Sequence[int] = (1, 2, 3, 4),
                 n_folds: int | None = None) -> pd.DataFrame:
    """Table 4: MCR (%) by the number k of fully connected layers on the metadata, MetaNet then concatenation.

    Columns ``fusion, fc_layers, backbone, paper_backbone`` and the cell columns.

    Example:
        >>> build_table4(pd.DataFrame(), "senet154").shape
        (8, 12)
    """
    df = _prepare(records)
    paper = paper_table4().set_index(["fusion", "fc_layers"])
    rows = []
    for f in ("metanet", "concat"):
        for k in map(int, meta_layers):
            keys = {"fusion": f, "fc_layers": k, "backbone": backbone, "paper_backbone": _ABLATION}
            p = paper.loc[(f, k)] if (f, k) in paper.index else None
            rows.append(_row(keys, _select(df, backbone, f, ALL_META, k), "mcr", _nexp(df, n_folds), p))
    return _frame(rows)


# --------------------------------------------------------------------------- words around a table


def caption(table: pd.DataFrame) -> str:
    """The caption of a ``build_tableN`` frame (or its CSV): which table it is follows from its columns.

    Example:
        >>> caption(build_table4(pd.DataFrame(), "resnet10t"))[:60]
        'Table 4. Mean class recall (%) by the number of fully connec'
    """
    ours = "Ours: mean ± sample std (ddof=1) over folds, in %; paper: mean ± std over 5 folds; diff = ours - paper "
    if "fc_layers" in table:
        name, what = "Table 4", "Mean class recall (%) by the number of fully connected layers on the metadata"
    elif "meta_features" in table:
        name, what = "Table 3", ("Mean class recall (%) with subsets of the metadata (✓ = field used, 1 in the "
                                 "CSV; no field = the image-only run)")
    elif "class" in table:
        name, what = "Table 2", "Recall (%) of each class by fusion"
    else:
        return ("Table 1. Mean class recall (%) by backbone and fusion (none = image only, concat = concatenation, "
                f"metanet = multiplicative gate). {ours}(points).")
    backbone = str(table["backbone"].iloc[0]) if len(table) else PAPER_PROTOCOL.ablation_backbone
    who = (f"backbone: ours {backbone}, paper {_ABLATION}" if paper_backbone(backbone) == _ABLATION else
           f"backbone: ours {backbone}; the paper's numbers are {_ABLATION}'s (a different backbone: compare "
           "trends, not values)")
    return f"{name}. {what}; {who}. {ours}(points)."


def paper_has_none(table1: pd.DataFrame) -> bool:
    """Whether Table 1 (a frame or its CSV) holds no backbone the paper used (all its paper cells are empty)."""
    return bool(len(table1)) and "paper_mean" in table1 and bool(table1["paper_mean"].isna().all())


def table1_paper_note(table1: pd.DataFrame) -> str:
    """One sentence where Table 1 has backbones the paper did not use (their paper cells are empty), else "".

    Example:
        >>> table1_paper_note(build_table1(pd.DataFrame(), backbones=["resnet10t", "resnet50"]))
        'The paper did not use resnet10t: its paper and diff cells are empty (—).'
    """
    if not len(table1) or not {"backbone", "paper_mean"} <= set(table1.columns):
        return ""
    missing = table1.groupby("backbone", sort=False)["paper_mean"].apply(lambda v: bool(v.isna().all()))
    if paper_has_none(table1):
        names = [b.paper_name for b in BACKBONES.values()]
        return (f"The paper used none of these backbones (it reports {', '.join(names[:-1])} and {names[-1]}), so "
                "there is no paper number to put beside them; the paper's own Table 1 is shown for reference.")
    absent = [str(b) for b, m in missing.items() if m]
    return f"The paper did not use {', '.join(absent)}: its paper and diff cells are empty (—)." if absent else ""


def _pm(mean: Any, std: Any) -> str:
    return "—" if pd.isna(mean) else f"{float(mean):.2f} ± {'—' if pd.isna(std) else f'{float(std):.2f}'}"


def format_table(df: pd.DataFrame) -> pd.DataFrame:
    """A display copy of a ``build_tableN`` frame: ``ours`` and ``paper`` as ``mean ± std``, ``n`` as ``5`` or
    ``3/5 *`` (fewer folds than expected), ``diff`` signed, metadata flags as ticks.

    Example:
        >>> format_table(build_table4(pd.DataFrame(), "senet154")).loc[0, ["ours", "n", "paper", "diff"]].tolist()
        ['—', '0/5 *', '86.47 ± 0.53', '—']
    """
    out = df[[c for c in df.columns if c not in _CELL]].copy()
    for f in META_FIELDS:
        if f in out and pd.api.types.is_numeric_dtype(out[f]):
            out[f] = out[f].map(lambda v: "✓" if v else "")
    out["ours"] = [_pm(m, s) for m, s in zip(df["ours_mean"], df["ours_std"])]
    out["n"] = [f"{n}" if n >= e else f"{n}/{e} *" for n, e in zip(df["n"], df["n_expected"])]
    out["paper"] = [_pm(m, s) for m, s in zip(df["paper_mean"], df["paper_std"])]
    out["diff"] = ["—" if pd.isna(d) else f"{float(d):+.2f}" for d in df["diff"]]
    return out


def to_markdown(df: pd.DataFrame, floatfmt: str = ".2f") -> str:
    """A GitHub-flavoured Markdown table; NaN shows as ``—``, numeric columns are right-aligned.

    Example:
        >>> print(to_markdown(pd.DataFrame({"a": ["x", "y|z"], "b": [1.5, float("nan")]})))
        | a | b |
        |:--|--:|
        | x | 1.50 |
        | y\\|z | — |
    """
    def cell(v: Any) -> str:
        if v is None or (not isinstance(v, str) and pd.isna(v)):
            return "—"
        return format(v, floatfmt) if isinstance(v, (float, np.floating)) else str(v).replace("|", "\\|")

    numeric = [pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]) for c in df]
    lines = ["| " + " | ".join(map(cell, df.columns)) + " |",
             "|" + "|".join("--:" if n else ":--" for n in numeric) + "|"]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in df.itertuples(index=False, name=None)]
    return "\n".join(lines)


def render_markdown(df: pd.DataFrame) -> str:
    """A table as ``results/tables/<name>.md`` has it: its caption, the :func:`format_table` view, a footnote
    where cells have fewer folds than expected, and for Table 1 its note and, where the paper used none of its
    backbones, the paper's own Table 1 instead of empty paper columns.

    Example:
        >>> text = render_markdown(build_table1(pd.DataFrame(), backbones=["resnet10t"]))
        >>> text.splitlines()[2], "| SENet154 | 85.44 ± 1.09 |" in text
        ('| backbone | fusion | ours | n |', True)
    """
    view = format_table(df)
    if paper_has_none(df):
        view = view.drop(columns=["paper_backbone", "paper", "diff"])
    parts = [f"**{caption(df)}**\n", to_markdown(view)]
    if view["n"].str.endswith("*").any():
        parts.append("\n\\* fewer folds than expected (n found / n expected); a cell without runs shows —.")
    if not {"class", "fc_layers", "meta_features"} & set(df.columns):  # Table 1
        note = table1_paper_note(df)
        parts += [f"\n{note}"] if note else []
        if paper_has_none(df):
            parts += ["\n**The paper's Table 1** (MCR %, mean ± std over 5 folds):\n", to_markdown(paper_table1_wide())]
    return "\n".join(parts)


def write_tables(tables: Mapping[str, pd.DataFrame], out_dir: str | Path | None = None) -> list[Path]:
    """Write ``<name>.csv`` (numbers; a missing cell is empty) and ``<name>.md`` (:func:`render_markdown`) of each
    table, atomically; return the paths.

    Example:
        >>> import tempfile
        >>> [p.name for p in write_tables({"table4": build_table4(pd.DataFrame(), "senet154")}, tempfile.mkdtemp())]
        ['table4.csv', 'table4.md']
    """
    out_dir = Path(out_dir or tables_dir())
    written: list[Path] = []
    for name, df in tables.items():
        atomic_write_text(out_dir / f"{name}.csv", df.to_csv(index=False))
        atomic_write_text(out_dir / f"{name}.md", render_markdown(df) + "\n")
        written += [out_dir / f"{name}.csv", out_dir / f"{name}.md"]
    return written
