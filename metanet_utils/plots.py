"""Figures that several notebooks share, and the helpers every figure ends with.

A figure that one notebook draws is a matplotlib cell in that notebook, ending in :func:`finish`; only drawing
lives here: the tables the notebooks show beside the figures come from the modules that compute them
(:mod:`metanet_utils.report`, :mod:`metanet_utils.tables`).

Every plotting function builds a fresh :class:`matplotlib.figure.Figure` (not through
``pyplot``, so a notebook shows it exactly once, as the value of its cell, and nothing
accumulates in pyplot's figure list), returns it and, given ``save="name"``, writes
``figures_dir()/name.png`` at 120 dpi (the folder is created), and ``caption="..."`` writes a small grey
footer under it (:func:`add_caption`: what data and runs produced the figure). A figure drawn in a notebook
cell ends with :func:`finish`, which does the same.

Classes are shown in the paper's order (NV, MEL, BKL, BCC, AKIEC, VASC, DF: largest first,
as in its Sec. 3.1 and Table 2) with one fixed colour each.

Example:
    >>> import pandas as pd
    >>> fig = class_counts({"nv": 60, "mel": 10, "bkl": 10, "bcc": 5, "akiec": 3, "vasc": 1, "df": 1})
    >>> len(fig.axes[0].patches)        # 7 bars here, 7 bars of the paper
    14
"""

from __future__ import annotations

import os
from pathlib import Path
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

__all__ = [
    "PAPER_ORDER", "CLASS_COLORS", "DPI", "save_figure", "finish", "add_caption", "class_counts",
]

#: Diagnosis codes (``dx``) in the paper's order: largest class first.
#: One colour per class, used by every figure.
CLASS_COLORS: dict[str, str] = dict(zip(PAPER_ORDER, (
    "#4c72b0", "#c44e52", "#dd8452", "#55a868", "#8172b3", "#937860", "#da8bc3")))
#: Resolution of the saved PNG files.
DPI = 120
_CAPTION_GID = "figure-caption"


# ----------------------------------------------------------------------------- saving and stamping


def save_figure(fig: Figure, name: str) -> Path:
    """Write ``fig`` to ``figures_dir()/<name>.png`` (120 dpi, atomically) and return the path.

    Args:
        fig: the figure.
        name: file name without ``.png`` (prefix it with the notebook number, e.g. ``00_class_counts``).
    """
    path = figures_dir() / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=DPI, bbox_inches="tight", format="png")
    os.replace(tmp, path)
    return path


def _wrap(text: str, width_pt: float, size: float) -> list[str]:
    """Greedy word wrap of ``text`` to lines at most ``width_pt`` points wide (measured in the default font)."""
    prop = FontProperties(size=size)
    lines: list[str] = []
    for para in str(text).splitlines() or [""]:
        line = ""
        for word in para.split():
            trial = f"{line} {word}" if line else word
            if line and text_to_path.get_text_width_height_descent(trial, prop, ismath=False)[0] > width_pt:
                lines.append(line)
                line = word
            else:
                line = trial
        lines.append(line)
    return lines


def add_caption(fig: Figure, caption: str, *, size: float = 8.0) -> Figure:
    """Write ``caption`` as a small grey footer at the bottom of ``fig`` (once).

    The figure grows by the footer's height and its layout (constrained, tight or none) is confined to
    the area above, so the footer never covers axes, tick labels or a ``supxlabel`` (which moves just
    above the footer). Long text is wrapped to the figure's width.

    Args:
        fig: the figure.
        caption: the text (newlines start new lines).
        size: font size in points.

    Returns:
        The same figure; the footer is the text with gid ``"figure-caption"`` in ``fig.texts``.
    """
    if not caption or any(t.get_gid() == _CAPTION_GID for t in fig.texts):
        return fig
    w, h = fig.get_size_inches()
    lines = _wrap(caption, 0.93 * w * 72, size)  # a margin: renderers set text a little wider
    pad = 0.06  # inches below and above the footer
    band = len(lines) * size * 1.25 / 72 + 2 * pad
    label = getattr(fig, "_supxlabel", None)  # a supxlabel is placed by the layout at the very bottom: move it above the footer
    label_band = 0.0
    if label is not None and getattr(label, "_autopos", False):
        label_band = max(len(label.get_text().splitlines()), 1) * label.get_fontsize() * 1.3 / 72 + pad
    new_h = h + band + label_band
    fig.set_size_inches(w, new_h, forward=False)
    bottom = (band + label_band) / new_h
    engine = fig.get_layout_engine()
    if isinstance(engine, ConstrainedLayoutEngine):  # rect: left, bottom, width, height
        x0, y0, rw, rh = engine.get()["rect"]
        engine.set(rect=(x0, bottom + y0 * h / new_h, rw, rh * h / new_h))
    elif isinstance(engine, TightLayoutEngine):  # rect: left, bottom, right, top
        x0, y0, x1, y1 = engine.get()["rect"] or (0, 0, 1, 1)
        engine.set(rect=(x0, bottom + y0 * h / new_h, x1, bottom + y1 * h / new_h))
    else:  # no layout engine: squeeze the axes into the area above the footer, keeping their fig-inch sizes
        for ax in fig.axes:
            x0, y0, aw, ah = ax.get_position().bounds
            ax.set_position((x0, bottom + y0 * h / new_h, aw, ah * h / new_h))
    if label_band:
        fig.supxlabel(label.get_text(), x=label.get_position()[0], y=(band + 0.5 * pad) / new_h, va="bottom")
    fig.text(0.01, pad / new_h, "\n".join(lines), gid=_CAPTION_GID, ha="left", va="bottom", fontsize=size,
             color="0.4", parse_math=False)
    return fig


def finish(fig: Figure, *, save: str | None = None, caption: str | None = None) -> Figure:
    """End a figure: its caption footer (what data and runs produced it), saved as ``figures/<save>.png`` when asked.

    Example:
        >>> from matplotlib.figure import Figure
        >>> fig = finish(Figure(), caption="demo profile, the shipped sample")
        >>> [t.get_text() for t in fig.texts]
        ['demo profile, the shipped sample']
    """
    if caption:
        add_caption(fig, caption)
    if save:
        save_figure(fig, save)
    return fig


def _bare(ax: Any) -> None:
    """No ticks, no frame (image panels keep their y label)."""
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)


# ----------------------------------------------------------------------------- notebooks 00 and 01: the classes


def _count_series(counts: Mapping[str, int] | pd.Series | pd.DataFrame) -> pd.Series:
    if isinstance(counts, pd.DataFrame):
        counts = counts["dx"].value_counts()
    s = pd.Series(dict(counts), dtype=float)
    s.index = [str(i).lower() for i in s.index]
    return s.reindex(PAPER_ORDER, fill_value=0.0)


def class_counts(counts: Mapping[str, int] | pd.Series | pd.DataFrame,
                 paper: Mapping[str, int] | None = PAPER_CLASS_COUNTS, *, scale: str = "auto", log: bool = False,
                 title: str | None = None, save: str | None = None,
                 caption: str | None = None) -> Figure:
    """Bar chart of the images per class, here beside the paper's (Sec. 3.1).

    Args:
        counts: images per ``dx`` (a mapping, a ``value_counts()`` Series, or a frame with ``dx``).
        paper: the paper's counts (None: only ours). Paper bars that differ from the official
            data (BKL 1098, VASC 143) are starred.
        scale: ``"count"``, ``"share"`` (% of all images: compares a subsample with the paper)
            or ``"auto"`` (share when the totals differ by more than 1 %).
        log: logarithmic y axis (the classes span two orders of magnitude).
        title: figure title (default says what is compared).
        save: file name (without ``.png``) under ``figures/``.
        caption: a small grey footer under the figure (e.g. what the data are; see :func:`add_caption`).

    Returns:
        The figure: one axes, 7 bars for ours (+ 7 for the paper).
    """
    ours = _count_series(counts)
    theirs = _count_series(paper) if paper is not None else None
    if scale == "auto":
        scale = "count" if theirs is None or abs(ours.sum() - theirs.sum()) <= 0.01 * theirs.sum() else "share"
    if scale not in ("count", "share"):
        raise ValueError(f"scale must be 'count', 'share' or 'auto', not {scale!r}")
    norm = (lambda s: 100 * s / s.sum()) if scale == "share" else (lambda s: s)
    fig = Figure(figsize=(8.5, 4.2), layout="constrained")
    ax = fig.subplots()
    x, w = np.arange(len(PAPER_ORDER)), 0.4 if theirs is not None else 0.7
    fmt = "%.1f%%" if scale == "share" else "%d"
    bars = ax.bar(x - (w / 2 if theirs is not None else 0), norm(ours), w,
                  color=[CLASS_COLORS[c] for c in PAPER_ORDER], label=f"here ({int(ours.sum())} images)")
    ax.bar_label(bars, fmt=fmt, fontsize=8, padding=1)
    if theirs is not None:
        pb = ax.bar(x + w / 2, norm(theirs), w, color="#dddddd", edgecolor="#555555", hatch="//",
                    label=f"paper ({int(theirs.sum())} images)")
        starred = [f"{v:.1f}%" if scale == "share" else f"{v:.0f}" for v in norm(theirs)]
        starred = [s + ("*" if theirs[c] != DATA_CLASS_COUNTS[c] else "") for s, c in zip(starred, PAPER_ORDER)]
        ax.bar_label(pb, labels=starred, fontsize=8, padding=1)
        if any(theirs[c] != DATA_CLASS_COUNTS[c] for c in PAPER_ORDER):
            ax.annotate("* as printed in the paper; the official data has BKL 1099, VASC 142",
                        xy=(0.99, 0.97), xycoords="axes fraction", ha="right", va="top", fontsize=8)
    ax.set_xticks(x, [c.upper() for c in PAPER_ORDER])
    ax.set_ylabel("% of images" if scale == "share" else "images")
    if log:
        ax.set_yscale("log")
    ax.margins(y=0.15)
    ax.legend(loc="center right", frameon=False)
    ax.set_title(title or ("Images per class: here vs the paper" + (" (shares)" if scale == "share" else "")))
    return finish(fig, save=save, caption=caption)


# ----------------------------------------------------------------------------- notebooks 04-05: results
#
# Table 1 bars, learning curves and per-fold heat maps (notebooks 06-08 draw their own figures in their cells).
# Values are in % (MCR). Missing numbers (a cell without runs, the standard deviation of one fold) are drawn as
# gaps or without error bars, never as 0.

__all__ += ["FUSION_COLORS", "FUSION_LABELS", "mcr_bars", "learning_curves", "fold_heatmap"]

#: One colour per fusion variant, used by every result figure.
FUSION_COLORS: dict[str, str] = {"none": "#8c8c8c", "concat": "#4c72b0", "metanet": "#c44e52", "metablock": "#55a868"}
#: How the figures name the variants (the paper's words).
FUSION_LABELS: dict[str, str] = {"none": "no metadata", "concat": "concatenation", "metanet": "MetaNet",
                                 "metablock": "Meta-Block"}
_CHANCE = 100 / len(CLASS_CODES)  # the MCR (%) of a constant or random guess
_CHANCE_LABEL = f"chance ({_CHANCE:.1f} %)"


def _nan0(a: Any) -> np.ndarray:
    return np.nan_to_num(np.asarray(a, dtype=float), nan=0.0)


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=10, color="0.35",
            wrap=True)
    _bare(ax)


def _grouped(ax: Any, groups: Sequence[str], fusions: Sequence[str], mean: Mapping[str, Sequence[float]],
             std: Mapping[str, Sequence[float]], hatch: str | None = None, labels: bool = True) -> None:
    x = np.arange(len(groups))
    w = 0.8 / max(len(fusions), 1)
    for k, f in enumerate(fusions):
        m = np.asarray(mean[f], dtype=float)
        bars = ax.bar(x + (k - (len(fusions) - 1) / 2) * w, _nan0(m), w, yerr=_nan0(std[f]), capsize=2,
                      color=FUSION_COLORS.get(f, "0.5"), hatch=hatch, edgecolor="white" if hatch else None,
                      label=FUSION_LABELS.get(f, f))
        if labels:
            ax.bar_label(bars, labels=["" if np.isnan(v) else f"{v:.1f}" for v in m], fontsize=6.5, padding=1,
                         rotation=90)
    ax.set_xticks(x, groups, rotation=20 if max((len(g) for g in groups), default=0) > 9 else 0)


# ----------------------------------------------------------------------------- Table 1


def mcr_bars(table1: pd.DataFrame, *,
             save: str | None = None, caption: str | None = None) -> Figure:
    """Table 1 as bars: MCR (mean ± sd over folds) per backbone and fusion, ours (left) beside the paper's
    six backbones (right, hatched). Both panels share the 0-100 % axis.

    Args:
        table1: :func:`~metanet_utils.tables.build_table1` frame.
    """
    paper_backbones = [b.paper_name for b in BACKBONES.values()]
    fusions = [f for f in ("none", "concat", "metanet") if f in set(table1.get("fusion", []))] or \
        ["none", "concat", "metanet"]
    fig = Figure(figsize=(12, 4.4), layout="constrained")
    ax_o, ax_p = fig.subplots(1, 2, sharey=True, width_ratios=[max(2, table1["backbone"].nunique()) if len(table1)
                                                                 else 2, 6])
    if len(table1) and table1["ours_mean"].notna().any():
        bbs = list(dict.fromkeys(table1["backbone"].astype(str)))
        t = table1.set_index(["backbone", "fusion"])
        mean = {f: [t["ours_mean"].get((b, f), np.nan) for b in bbs] for f in fusions}
        std = {f: [t["ours_std"].get((b, f), np.nan) for b in bbs] for f in fusions}
        _grouped(ax_o, bbs, fusions, mean, std)
    else:
        _empty(ax_o, "no runs yet")
    ax_o.set(title="this run", ylabel="mean class recall (%)", ylim=(0, 105))
    ax_o.axhline(_CHANCE, color="0.4", ls=":", lw=1, label=_CHANCE_LABEL)
    ax_o.legend(frameon=False, fontsize=8, loc="upper left")
    p = paper_table1().set_index(["backbone", "fusion"])
    _grouped(ax_p, paper_backbones, fusions,
             {f: [p["mcr_mean"].get((b, f), np.nan) for b in paper_backbones] for f in fusions},
             {f: [p["mcr_std"].get((b, f), np.nan) for b in paper_backbones] for f in fusions}, hatch="///")
    ax_p.set(title="paper (Table 1)")
    ax_p.axhline(_CHANCE, color="0.4", ls=":", lw=1)
    fig.suptitle("Mean class recall by backbone and fusion (mean ± sd over folds)")
    return finish(fig, save=save, caption=caption)


def learning_curves(records: pd.DataFrame, *, backbone: str | None = None,
                    fusions: Sequence[str] = ("none", "concat", "metanet"), meta_layers: int = 2,
                    save: str | None = None, caption: str | None = None) -> Figure:
    """Training loss and validation MCR per epoch (``history.csv``): one column per fusion, one line per
    fold, for the Table 1 runs of one backbone (default: the first in the records).

    The loss row has one logarithmic axis (validation spikes of a few epochs would otherwise flatten the
    training curves); the MCR row marks chance (100/7 %) in its legend.
    """


    df = table1_records(records, meta_layers)
    if backbone is None and len(df):
        backbone = str(df["backbone"].iloc[0])
    df = df[df["backbone"] == backbone] if len(df) else df
    fig = Figure(figsize=(4 * len(fusions), 5.6), layout="constrained")
    axes = fig.subplots(2, len(fusions), sharex=True, sharey="row", squeeze=False)
    cmap = matplotlib.colormaps["viridis"]
    first = None  # the first column with runs: it carries the axis labels and legends
    for j, f in enumerate(fusions):
        runs = df[df["fusion"] == f].sort_values("fold") if len(df) else df
        ax_l, ax_m = axes[0, j], axes[1, j]
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
            c = cmap(int(r["fold"]) / max(nf - 1, 1))
            kw = {"marker": "o", "ms": 4} if len(h) < 8 else {}
            ax_l.plot(h["epoch"], h["train_loss"], color=c, label=f"fold {int(r['fold'])}", **kw)
            if "val_loss" in h:
                ax_l.plot(h["epoch"], h["val_loss"], color=c, ls="--", alpha=0.6, **kw)
            ax_m.plot(h["epoch"], 100 * h["val_mcr"], color=c, **kw)
        ax_m.axhline(_CHANCE, color="0.4", ls=":", lw=1, label=_CHANCE_LABEL)
        ax_m.set_xlabel("epoch")
        ax_m.xaxis.set_major_locator(MaxNLocator(integer=True))
        first = j if first is None else first
    if first is not None:  # one log axis for the row: a validation spike does not flatten the training curves
        ax_l, ax_m = axes[0, first], axes[1, first]
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


def fold_heatmap(folds: pd.DataFrame, *,
                 save: str | None = None, caption: str | None = None) -> Figure:
    """Per-fold MCR (%) as a heat map: rows = backbone / fusion, columns = folds (and mean).

    Args:
        folds: :func:`~metanet_utils.report.fold_table` frame.
    """
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
    if hi - lo < 1:
        lo, hi = lo - 0.5, hi + 0.5
    im = ax.imshow(np.ma.masked_invalid(data), cmap="viridis", vmin=lo, vmax=hi, aspect="auto")
    for (i, j), v in np.ndenumerate(data):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=8,
                    color="white" if v < lo + 0.5 * (hi - lo) else "black")
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(folds)), folds.index)
    ax.axvline(len(cols) - 1.5, color="white", lw=2)
    fig.colorbar(im, ax=ax, label="MCR (%)")
    ax.set_title("MCR of every fold: how much the folds differ")
    return finish(fig, save=save, caption=caption)
