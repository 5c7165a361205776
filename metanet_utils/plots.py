"""The figures several notebooks share, and :func:`finish`, which every figure ends with (footer, saved PNG).

Figures are :class:`Figure` objects (not ``pyplot``), so a notebook shows each once, as the value of its cell.
Classes come in the paper's order; results are MCR in %, and a missing number is a gap, never 0.
"""

from __future__ import annotations

import os
import textwrap
from typing import Any, Mapping, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.layout_engine import ConstrainedLayoutEngine, TightLayoutEngine
from matplotlib.textpath import text_to_path
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from .constants import BACKBONES, CLASS_CODES, DATA_CLASS_COUNTS, PAPER_CLASS_COUNTS, PAPER_ORDER
from .paths import figures_dir
from .tables import paper_table1, table1_records

CLASS_COLORS = dict(zip(PAPER_ORDER, ("#4c72b0", "#c44e52", "#dd8452", "#55a868", "#8172b3", "#937860", "#da8bc3")))
FUSION_COLORS = {"none": "#8c8c8c", "concat": "#4c72b0", "metanet": "#c44e52", "metablock": "#55a868"}
FUSION_LABELS = {"none": "no metadata", "concat": "concatenation", "metanet": "MetaNet", "metablock": "Meta-Block"}
_CHANCE = 100 / len(CLASS_CODES)  # the MCR (%) of a random guess


def _footer(fig: Figure, caption: str, size: float = 8.0) -> None:
    """Grow ``fig`` by a band holding ``caption`` wrapped to its width, its layout kept above."""
    w, h = fig.get_size_inches()
    lines: list[str] = []
    for para in caption.splitlines() or [""]:  # wrap at the characters that fit, at this text's mean width
        wide = text_to_path.get_text_width_height_descent(para, FontProperties(size=size), ismath=False)[0]
        lines += textwrap.wrap(para, max(1, int(len(para) * 0.88 * w * 72 / max(wide, 1)))) or [""]
    pad = 0.06  # inches
    band = len(lines) * size * 1.25 / 72 + 2 * pad
    label = fig._supxlabel if getattr(fig._supxlabel, "_autopos", False) else None  # the layout puts it lowest
    label_band = max(len(label.get_text().splitlines()), 1) * label.get_fontsize() * 1.3 / 72 + pad if label else 0.0
    new_h = h + band + label_band
    fig.set_size_inches(w, new_h, forward=False)
    bottom, k = (band + label_band) / new_h, h / new_h  # the old figure above the footer: y -> bottom + k y
    engine = fig.get_layout_engine()
    if isinstance(engine, ConstrainedLayoutEngine):  # rect: left, bottom, width, height
        x0, y0, rw, rh = engine.get()["rect"]
        engine.set(rect=(x0, bottom + k * y0, rw, k * rh))
    elif isinstance(engine, TightLayoutEngine):  # rect: left, bottom, right, top
        x0, y0, x1, y1 = engine.get()["rect"] or (0, 0, 1, 1)
        engine.set(rect=(x0, bottom + k * y0, x1, bottom + k * y1))
    else:  # no layout engine: the axes keep their sizes in inches
        for ax in fig.axes:
            x0, y0, aw, ah = ax.get_position().bounds
            ax.set_position((x0, bottom + k * y0, aw, k * ah))
    if label:
        fig.supxlabel(label.get_text(), x=label.get_position()[0], y=(band + 0.5 * pad) / new_h, va="bottom")
    fig.text(0.01, pad / new_h, "\n".join(lines), gid="figure-caption", ha="left", va="bottom", fontsize=size,
             color="0.4", parse_math=False)


def finish(fig: Figure, *, save: str | None = None, caption: str | None = None) -> Figure:
    """End a figure: a grey footer (once) saying what data and runs made it; ``figures/<save>.png`` when asked."""
    if caption and not any(t.get_gid() == "figure-caption" for t in fig.texts):
        _footer(fig, caption)
    if save:
        path = figures_dir() / f"{save}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
        os.replace(tmp, path)
    return fig


def class_counts(counts: Mapping[str, int] | pd.Series | pd.DataFrame,
                 paper: Mapping[str, int] | None = PAPER_CLASS_COUNTS, *, log: bool = False,
                 save: str | None = None, caption: str | None = None) -> Figure:
    """Bar chart of the images per class (a mapping, Series or frame with ``dx``) beside the paper's (Sec. 3.1, or
    None), as % of all images when the totals differ.

    >>> len(class_counts({"nv": 60, "mel": 10, "bkl": 10}).axes[0].patches)  # 7 bars here, 7 of the paper
    14
    """
    def series(c: Any) -> pd.Series:
        c = dict(c["dx"].value_counts() if isinstance(c, pd.DataFrame) else c)
        return pd.Series({str(k).lower(): v for k, v in c.items()}, dtype=float).reindex(PAPER_ORDER, fill_value=0)

    ours, theirs = series(counts), None if paper is None else series(paper)
    share = theirs is not None and abs(ours.sum() - theirs.sum()) > 0.01 * theirs.sum()
    norm, fmt = (lambda s: 100 * s / s.sum(), "{:.1f}%") if share else (lambda s: s, "{:.0f}")
    fig = Figure(figsize=(8.5, 4.2), layout="constrained")
    ax = fig.subplots()
    x, w = np.arange(len(PAPER_ORDER)), 0.7 if theirs is None else 0.4
    bars = ax.bar(x - (0 if theirs is None else w / 2), norm(ours), w, color=[CLASS_COLORS[c] for c in PAPER_ORDER],
                  label=f"here ({int(ours.sum())} images)")
    ax.bar_label(bars, labels=[fmt.format(v) for v in norm(ours)], fontsize=8, padding=1)
    if theirs is not None:
        star = [bool(theirs[c] != DATA_CLASS_COUNTS[c]) for c in PAPER_ORDER]
        bars = ax.bar(x + w / 2, norm(theirs), w, color="#dddddd", edgecolor="#555555", hatch="//",
                      label=f"paper ({int(theirs.sum())} images)")
        ax.bar_label(bars, labels=[fmt.format(v) + "*" * s for v, s in zip(norm(theirs), star)], fontsize=8, padding=1)
        if any(star):
            ax.annotate("* as printed in the paper; the official data has BKL 1099, VASC 142",
                        xy=(0.99, 0.97), xycoords="axes fraction", ha="right", va="top", fontsize=8)
    ax.set_xticks(x, [c.upper() for c in PAPER_ORDER])
    ax.set(ylabel="% of images" if share else "images", yscale="log" if log else "linear",
           title="Images per class: here vs the paper" + (" (shares)" if share else ""))
    ax.margins(y=0.15)
    ax.legend(loc="center right", frameon=False)
    return finish(fig, save=save, caption=caption)


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=10, color="0.35", wrap=True)
    ax.set(xticks=[], yticks=[])
    ax.spines[:].set_visible(False)


def _grouped(ax: Any, groups: Sequence[str], table: pd.DataFrame, mean: str, std: str, fusions: Sequence[str],
             hatch: str | None = None) -> None:
    """Bars of ``table[mean]`` ± ``table[std]`` (indexed by backbone, fusion), a group per backbone."""
    x, w = np.arange(len(groups)), 0.8 / max(len(fusions), 1)
    for k, f in enumerate(fusions):
        m, s = (np.array([table[col].get((g, f), np.nan) for g in groups], dtype=float) for col in (mean, std))
        bars = ax.bar(x + (k - (len(fusions) - 1) / 2) * w, np.nan_to_num(m), w, yerr=np.nan_to_num(s), capsize=2,
                      color=FUSION_COLORS.get(f, "0.5"), hatch=hatch, edgecolor="white" if hatch else None,
                      label=FUSION_LABELS.get(f, f))
        ax.bar_label(bars, labels=["" if np.isnan(v) else f"{v:.1f}" for v in m], fontsize=6.5, padding=1, rotation=90)
    ax.set_xticks(x, groups, rotation=20 if max((len(g) for g in groups), default=0) > 9 else 0)
    ax.axhline(_CHANCE, color="0.4", ls=":", lw=1, label=f"chance ({_CHANCE:.1f} %)")


def mcr_bars(table1: pd.DataFrame, *, save: str | None = None, caption: str | None = None) -> Figure:
    """Table 1 (:func:`~metanet_utils.tables.build_table1`) as bars, ours beside the paper's (hatched)."""
    fusions = [f for f in ("none", "concat", "metanet") if f in set(table1.get("fusion", []))] or \
        ["none", "concat", "metanet"]
    bbs = list(dict.fromkeys(table1["backbone"].astype(str))) if len(table1) else []
    fig = Figure(figsize=(12, 4.4), layout="constrained")
    ax_o, ax_p = fig.subplots(1, 2, sharey=True, width_ratios=[max(2, len(bbs)), 6])
    if len(table1) and table1["ours_mean"].notna().any():
        _grouped(ax_o, bbs, table1.set_index(["backbone", "fusion"]), "ours_mean", "ours_std", fusions)
    else:
        _empty(ax_o, "no runs yet")
        ax_o.axhline(_CHANCE, color="0.4", ls=":", lw=1, label=f"chance ({_CHANCE:.1f} %)")
    ax_o.set(title="this run", ylabel="mean class recall (%)", ylim=(0, 105))
    ax_o.legend(frameon=False, fontsize=8, loc="upper left")
    _grouped(ax_p, [b.paper_name for b in BACKBONES.values()], paper_table1().set_index(["backbone", "fusion"]),
             "mcr_mean", "mcr_std", fusions, hatch="///")
    ax_p.set(title="paper (Table 1)")
    fig.suptitle("Mean class recall by backbone and fusion (mean ± sd over folds)")
    return finish(fig, save=save, caption=caption)


def learning_curves(records: pd.DataFrame, *, backbone: str | None = None,
                    fusions: Sequence[str] = ("none", "concat", "metanet"), meta_layers: int = 2,
                    save: str | None = None, caption: str | None = None) -> Figure:
    """Training loss (log scale) and validation MCR per epoch of the Table 1 runs of one backbone (default: the
    first): a column per fusion, a line per fold."""
    df = table1_records(records, meta_layers)
    backbone = backbone or (str(df["backbone"].iloc[0]) if len(df) else None)
    df = df[df["backbone"] == backbone] if len(df) else df
    fig = Figure(figsize=(4 * len(fusions), 5.6), layout="constrained")
    axes = fig.subplots(2, len(fusions), sharex=True, sharey="row", squeeze=False)
    first = None  # the first column with runs carries the labels and legends
    for (ax_l, ax_m), f in zip(axes.T, fusions):
        runs = df[df["fusion"] == f].sort_values("fold") if len(df) else df
        ax_l.set_title(FUSION_LABELS.get(f, f), color=FUSION_COLORS.get(f, "k"))
        if runs.empty:
            _empty(ax_l, "no runs")
            _empty(ax_m, "no runs")
            continue
        nf = max(int(runs["n_folds"].max()), 1) if "n_folds" in runs else 5
        for _, r in runs.iterrows():
            try:
                h = pd.read_csv(f"{r['path']}/history.csv")
            except OSError:
                continue
            kw = {"color": matplotlib.colormaps["viridis"](int(r["fold"]) / max(nf - 1, 1))}
            kw |= {"marker": "o", "ms": 4} if len(h) < 8 else {}
            ax_l.plot(h["epoch"], h["train_loss"], label=f"fold {int(r['fold'])}", **kw)
            if "val_loss" in h:
                ax_l.plot(h["epoch"], h["val_loss"], ls="--", alpha=0.6, **kw)
            ax_m.plot(h["epoch"], 100 * h["val_mcr"], **kw)
        ax_m.axhline(_CHANCE, color="0.4", ls=":", lw=1, label=f"chance ({_CHANCE:.1f} %)")
        ax_m.set_xlabel("epoch")
        ax_m.xaxis.set_major_locator(MaxNLocator(integer=True))
        first = (ax_l, ax_m) if first is None else first
    if first is not None:
        ax_l, ax_m = first
        ax_l.set_yscale("log")
        ax_l.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))
        ax_l.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax_l.yaxis.set_minor_formatter(NullFormatter())
        ax_l.set_ylabel("loss, log scale\n(solid: train, dashed: validation)")
        ax_m.set_ylabel("validation MCR (%)")
        ax_l.legend(frameon=False, fontsize=7)
        ax_m.legend(frameon=False, fontsize=7, loc="upper left")
    fig.suptitle(f"Learning curves, {backbone or 'no runs'}")
    return finish(fig, save=save, caption=caption)


def fold_heatmap(folds: pd.DataFrame, *, save: str | None = None, caption: str | None = None) -> Figure:
    """Per-fold MCR (%) of the Table 1 runs (notebook 05's ``folds``)."""
    fig = Figure(figsize=(1.2 * max(len(folds.columns), 3) + 2.5, 0.45 * max(len(folds), 3) + 1.6),
                 layout="constrained")
    ax = fig.subplots()
    if folds.empty:
        _empty(ax, "no runs yet")
        return finish(fig, save=save, caption=caption)
    cols = [c for c in folds.columns if c != "std"]
    data = folds[cols].to_numpy(dtype=float)
    finite = data[np.isfinite(data)]
    lo, hi = (finite.min(), finite.max()) if finite.size else (0, 100)
    lo, hi = (lo - 0.5, hi + 0.5) if hi - lo < 1 else (lo, hi)
    im = ax.imshow(np.ma.masked_invalid(data), cmap="viridis", vmin=lo, vmax=hi, aspect="auto")
    for (i, j), v in np.ndenumerate(data):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=8, color="white" if v < (lo + hi) / 2 else "k")
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(folds)), folds.index)
    ax.axvline(len(cols) - 1.5, color="white", lw=2)  # the mean column
    fig.colorbar(im, ax=ax, label="MCR (%)")
    ax.set_title("MCR of every fold: how much the folds differ")
    return finish(fig, save=save, caption=caption)
