"""The paper's Tables 1-4 (``resources/paper_table{1..4}.csv``) beside ours.

Each ``build_tableN`` selects the runs of its cells from a records frame and gives one row per cell: its keys, ``n``
(folds found), ``n_expected``, ``folds``, ``ours_mean``, ``ours_std`` (ddof=1, in %), ``paper_mean``, ``paper_std``
and ``diff`` (points); a cell without runs is NaN (``—``), never 0. The paper's Tables 2-4 are SENet154's.

Example:
    >>> t = format_table(build_table4(pd.DataFrame(), "senet154"))  # no runs yet
    >>> t.loc[0, ["fusion", "ours", "n", "paper", "diff"]].tolist()
    ['metanet', '—', '0/5 *', '86.47 ± 0.53', '—']
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .atomic import atomic_write_text
from .config import DEFAULT_META_LAYERS
from .constants import BACKBONES, META_FIELDS, PAPER_PROTOCOL
from .evaluate import SETTINGS, load_records, meta_key
from .paths import tables_dir

ALL_META = "+".join(META_FIELDS)
_CELL = ("n", "n_expected", "folds", "ours_mean", "ours_std", "paper_mean", "paper_std", "diff")
_NONE = (np.nan, np.nan)
_ALIASES = {k.lower(): a for a, b in BACKBONES.items() for k in (a, b.paper_name, b.model.split(".")[0])}
_ABLATION = BACKBONES[PAPER_PROTOCOL.ablation_backbone].paper_name  # "SENet154"


def paper_alias(name: Any) -> str | None:
    """The key of ``BACKBONES`` of one of the paper's backbones in any spelling, or None.

    >>> paper_alias("legacy_senet154"), paper_alias("timm/resnet50.a1_in1k"), paper_alias("resnet10t")
    ('senet154', 'resnet50', None)
    """
    s = str(name).strip().lower().removeprefix("timm/")
    return _ALIASES.get(s) or _ALIASES.get(s.split(".", 1)[0])


def paper_backbone(name: Any) -> str | None:
    """The paper's spelling of one of its backbones (``'PNASNet-5'``), or None."""
    return BACKBONES[alias].paper_name if (alias := paper_alias(name)) else None


def paper_table(i: int) -> pd.DataFrame:
    """The paper's Table ``i`` as its CSV has it (Table 2's Baseline / Fusion / Meta-network: none / concat /
    metanet)."""
    return pd.read_csv(Path(__file__).with_name("resources") / f"paper_table{i}.csv")


paper_table1, paper_table2, paper_table3, paper_table4 = (functools.partial(paper_table, i) for i in (1, 2, 3, 4))


def _paper(i: int, keys: list[str], what: str = "mcr") -> dict[tuple, tuple[float, float]]:
    t = paper_table(i)
    return {tuple(k): (m, s) for k, m, s in zip(t[keys].itertuples(index=False), t[f"{what}_mean"], t[f"{what}_std"])}


def _records(records: pd.DataFrame | str | Path | None, n_folds: int | None = None) -> tuple[pd.DataFrame, int]:
    """A records frame (a runs folder or None: read it) and the folds a cell expects (default the records')."""
    df = load_records(records) if records is None or isinstance(records, (str, Path)) else records
    keys = ["backbone", "fusion", "meta_features", "meta_layers", "fold", "n_folds"]
    df = df.reindex(columns=list(dict.fromkeys([*df.columns, *keys])))
    found = pd.to_numeric(df["n_folds"], errors="coerce").dropna()
    return df, int(n_folds or (found.mode().iloc[0] if len(found) else PAPER_PROTOCOL.n_folds))


def _select(df: pd.DataFrame, backbone: str, fusion: str, meta: str, layers: int) -> pd.DataFrame:
    """The runs of one cell, one per fold; raises if they mix settings."""
    sel, ignore = df[(df["backbone"] == backbone) & (df["fusion"] == fusion)], {"meta_features", "meta_layers"}
    if fusion != "none":
        sel, ignore = sel[(sel["meta_features"] == meta) & (pd.to_numeric(sel["meta_layers"]) == layers)], set()
    varying = [c for c in sel if c in SETTINGS - ignore and sel[c].astype(str).nunique(dropna=False) > 1]
    if varying or sel["fold"].duplicated().any():
        raise ValueError(
            f"the runs of cell backbone={backbone!r}, fusion={fusion!r}, meta_features={meta!r}, meta_layers={layers} "
            f"{'differ in ' + ', '.join(varying) if varying else 'repeat a fold'}; keep one setting first, "
            f"e.g. records[records[{(varying or ['run_id'])[0]!r}] == ...]")
    return sel


def _cell(keys: dict[str, Any], sel: pd.DataFrame, value: str, nexp: int, paper: tuple = _NONE) -> dict[str, Any]:
    """One row: ``keys``, ours (``value`` in %, mean and sample std over the folds) and the paper's."""
    vals = pd.to_numeric(sel[value], errors="coerce") if value in sel else pd.Series(dtype=float)
    x = vals.dropna().to_numpy(dtype=float) * 100.0
    mean, folds = float(x.mean()) if len(x) else np.nan, sorted(sel.loc[vals.notna(), "fold"])
    return {**keys, "n": len(x), "n_expected": nexp, "folds": ",".join(str(int(f)) for f in folds),
            "ours_mean": mean, "ours_std": float(x.std(ddof=1)) if len(x) > 1 else np.nan,
            "paper_mean": float(paper[0]), "paper_std": float(paper[1]), "diff": mean - float(paper[0])}


def table1_records(records: pd.DataFrame, meta_layers: int = PAPER_PROTOCOL.meta_layers) -> pd.DataFrame:
    """The runs of Table 1: each fusion at its Table 1 depth with all metadata fields."""
    df = _records(records)[0]
    depth = df["fusion"].map({**DEFAULT_META_LAYERS, "metanet": meta_layers})  # concat: the raw metadata
    keep = (df["fusion"] == "none") | ((df["meta_features"] == ALL_META) & (pd.to_numeric(df["meta_layers"]) == depth))
    return df[keep].reset_index(drop=True)


def build_table1(records: pd.DataFrame | str | Path | None, backbones: Sequence[str] | None = None,
                 fusions: Sequence[str] = PAPER_PROTOCOL.fusions, meta_layers: int = PAPER_PROTOCOL.meta_layers,
                 n_folds: int | None = None) -> pd.DataFrame:
    """Table 1, MCR (%) per ``backbone, paper_backbone, fusion``; ``backbones`` default: the paper's six, then the
    records' others."""
    df, nexp = _records(records, n_folds)
    present = list(dict.fromkeys(df["backbone"].dropna().astype(str)))
    if backbones is None:
        backbones = [b for a in BACKBONES for b in ([p for p in present if paper_alias(p) == a] or [a])]
        backbones += [b for b in present if b not in backbones]
    paper, depth = _paper(1, ["backbone", "fusion"]), {**DEFAULT_META_LAYERS, "metanet": meta_layers}
    return _frame(_cell({"backbone": b, "paper_backbone": paper_backbone(b), "fusion": f},
                        _select(df, b, f, ALL_META, depth[f]), "mcr", nexp,
                        paper.get((paper_backbone(b), f), _NONE)) for b in backbones for f in fusions)


def build_table2(records: pd.DataFrame | str | Path | None, backbone: str,
                 fusions: Sequence[str] = PAPER_PROTOCOL.fusions, meta_layers: int = PAPER_PROTOCOL.meta_layers,
                 n_folds: int | None = None) -> pd.DataFrame:
    """Table 2, recall (%) per ``class, n_images_paper, n_images`` (validation images over the folds), ``fusion``."""
    (df, nexp), paper = _records(records, n_folds), _paper(2, ["class", "fusion"], "recall")
    depth = {**DEFAULT_META_LAYERS, "metanet": meta_layers}
    sels = {f: _select(df, backbone, f, ALL_META, depth[f]) for f in fusions}
    rows = []
    for c, n in paper_table2().groupby("class", sort=False)["n_images_paper"].first().items():
        for f, sel in sels.items():
            n_val = sel[f"n_val_{c}"].sum() if f"n_val_{c}" in sel and len(sel) else np.nan
            keys = {"class": c, "n_images_paper": n, "n_images": n_val, "fusion": f, "backbone": backbone,
                    "paper_backbone": _ABLATION}
            rows.append(_cell(keys, sel, f"recall_{c}", nexp, paper.get((c, f), _NONE)))
    return _frame(rows)


def build_table3(records: pd.DataFrame | str | Path | None, backbone: str,
                 meta_layers: int = PAPER_PROTOCOL.meta_layers, n_folds: int | None = None) -> pd.DataFrame:
    """Table 3, MCR (%) of MetaNet per subset ``age, sex, localization`` (0/1; no field: the ``none`` run)."""
    (df, nexp), rows = _records(records, n_folds), []
    for used, p in _paper(3, list(META_FIELDS)).items():
        key = meta_key(f for f, u in zip(META_FIELDS, used) if u)
        fusion = "metanet" if key != "none" else "none"
        keys = {**dict(zip(META_FIELDS, map(int, used))), "fusion": fusion, "meta_features": key,
                "backbone": backbone, "paper_backbone": _ABLATION}
        rows.append(_cell(keys, _select(df, backbone, fusion, key, meta_layers), "mcr", nexp, p))
    return _frame(rows)


def build_table4(records: pd.DataFrame | str | Path | None, backbone: str, meta_layers: Sequence[int] = (1, 2, 3, 4),
                 n_folds: int | None = None) -> pd.DataFrame:
    """Table 4, MCR (%) per ``fusion, fc_layers`` (k layers on the metadata)."""
    (df, nexp), paper = _records(records, n_folds), _paper(4, ["fusion", "fc_layers"])
    return _frame(_cell({"fusion": f, "fc_layers": k, "backbone": backbone, "paper_backbone": _ABLATION},
                        _select(df, backbone, f, ALL_META, k), "mcr", nexp, paper.get((f, k), _NONE))
                  for f in ("metanet", "concat") for k in map(int, meta_layers))


def _frame(rows: Any) -> pd.DataFrame:
    return pd.DataFrame(list(rows)).astype({"n": int, "n_expected": int})


def caption(table: pd.DataFrame) -> str:
    """The caption of a ``build_tableN`` frame (or its CSV), told apart by its columns."""
    ours = "Ours: mean ± sample std (ddof=1) over folds, in %; paper: mean ± std over 5 folds; diff = ours - paper "
    if not {"fc_layers", "meta_features", "class"} & set(table.columns):
        return ("Table 1. Mean class recall (%) by backbone and fusion (none = image only, concat = concatenation, "
                f"metanet = multiplicative gate). {ours}(points).")
    what = ("Table 4. Mean class recall (%) by the number of fully connected layers on the metadata"
            if "fc_layers" in table else
            "Table 3. Mean class recall (%) with subsets of the metadata (✓ = field used, 1 in the CSV; no field = "
            "the image-only run)" if "meta_features" in table else "Table 2. Recall (%) of each class by fusion")
    backbone = str(table["backbone"].iloc[0]) if len(table) else PAPER_PROTOCOL.ablation_backbone
    who = (f"backbone: ours {backbone}, paper {_ABLATION}" if paper_backbone(backbone) == _ABLATION else
           f"backbone: ours {backbone}; the paper's numbers are {_ABLATION}'s (a different backbone: compare "
           "trends, not values)")
    return f"{what}; {who}. {ours}(points)."


def table1_paper_note(table1: pd.DataFrame) -> str:
    """One sentence where Table 1 has backbones the paper did not use, else ""."""
    if not len(table1) or not {"backbone", "paper_mean"} <= set(table1.columns):
        return ""
    if table1["paper_mean"].isna().all():
        names = [b.paper_name for b in BACKBONES.values()]
        return (f"The paper used none of these backbones (it reports {', '.join(names[:-1])} and {names[-1]}), so "
                "there is no paper number to put beside them; the paper's own Table 1 is shown for reference.")
    absent = [str(b) for b, paper in table1.groupby("backbone", sort=False)["paper_mean"] if paper.isna().all()]
    return f"The paper did not use {', '.join(absent)}: its paper and diff cells are empty (—)." if absent else ""


def _pm(mean: Any, std: Any) -> str:
    return "—" if pd.isna(mean) else f"{float(mean):.2f} ± {'—' if pd.isna(std) else f'{float(std):.2f}'}"


def format_table(df: pd.DataFrame) -> pd.DataFrame:
    """A display copy: ``ours`` and ``paper`` as ``mean ± std``, ``n`` as ``5`` or ``3/5 *``, ``diff`` signed."""
    out = df[[c for c in df.columns if c not in _CELL]].copy()
    for f in META_FIELDS:
        if f in out and pd.api.types.is_numeric_dtype(out[f]):
            out[f] = out[f].map(lambda v: "✓" if v else "")
    out["ours"] = [_pm(m, s) for m, s in zip(df["ours_mean"], df["ours_std"])]
    out["n"] = [f"{n}" if n >= e else f"{n}/{e} *" for n, e in zip(df["n"], df["n_expected"])]
    out["paper"] = [_pm(m, s) for m, s in zip(df["paper_mean"], df["paper_std"])]
    out["diff"] = ["—" if pd.isna(d) else f"{float(d):+.2f}" for d in df["diff"]]
    return out


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table; NaN shows as ``—``, numbers right-aligned."""
    def cell(v: Any) -> str:
        if v is None or (not isinstance(v, str) and pd.isna(v)):
            return "—"
        return f"{v:.2f}" if isinstance(v, (float, np.floating)) else str(v).replace("|", "\\|")

    numeric = [pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]) for c in df]
    rows = [df.columns, *df.itertuples(index=False, name=None)]
    lines = ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
    return "\n".join([lines[0], "|" + "|".join("--:" if n else ":--" for n in numeric) + "|", *lines[1:]])


def render_markdown(df: pd.DataFrame) -> str:
    """A table as ``results/tables/<name>.md`` has it: caption, :func:`format_table` view, notes."""
    table1 = bool(len(df)) and not {"class", "fc_layers", "meta_features"} & set(df.columns)
    none, note = table1 and df["paper_mean"].isna().all(), table1_paper_note(df) if table1 else ""
    view = format_table(df).drop(columns=["paper_backbone", "paper", "diff"] if none else [])
    parts = [f"**{caption(df)}**\n", to_markdown(view)] + [f"\n{note}"] * bool(note)
    if view["n"].str.endswith("*").any():
        parts.insert(2, "\n\\* fewer folds than expected (n found / n expected); a cell without runs shows —.")
    if none:
        p = paper_table1().assign(cell=lambda d: [_pm(m, s) for m, s in zip(d["mcr_mean"], d["mcr_std"])])
        wide = p.pivot(index="backbone", columns="fusion", values="cell").reindex(
            index=[b.paper_name for b in BACKBONES.values()], columns=list(PAPER_PROTOCOL.fusions))
        parts += ["\n**The paper's Table 1** (MCR %, mean ± std over 5 folds):\n",
                  to_markdown(wide.rename_axis(columns=None).reset_index())]
    return "\n".join(parts)


def write_tables(tables: Mapping[str, pd.DataFrame], out_dir: str | Path | None = None) -> list[Path]:
    """Write ``<name>.csv`` and ``<name>.md`` of each table atomically; return the paths."""
    out_dir = Path(out_dir or tables_dir())
    for name, df in tables.items():
        atomic_write_text(out_dir / f"{name}.csv", df.to_csv(index=False))
        atomic_write_text(out_dir / f"{name}.md", render_markdown(df) + "\n")
    return [out_dir / f"{name}.{ext}" for name in tables for ext in ("csv", "md")]
