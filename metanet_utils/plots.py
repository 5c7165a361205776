"""Figures of the notebooks, and the few small helpers and tables the notebooks show beside them.

Every plotting function builds a fresh :class:`matplotlib.figure.Figure` (not through
``pyplot``, so a notebook shows it exactly once, as the value of its cell, and nothing
accumulates in pyplot's figure list), returns it and, given ``save="name"``, writes
``figures_dir()/name.png`` at 120 dpi (the folder is created). ``synthetic=True`` stamps
"SYNTHETIC DATA" across the figure (:func:`synthetic_banner`) before it is saved.

Classes are shown in the paper's order (NV, MEL, BKL, BCC, AKIEC, VASC, DF: largest first,
as in its Sec. 3.1 and Table 2) with one fixed colour each.

Example:
    >>> import pandas as pd
    >>> fig = class_counts({"nv": 60, "mel": 10, "bkl": 10, "bcc": 5, "akiec": 3, "vasc": 1, "df": 1})
    >>> len(fig.axes[0].patches)        # 7 bars here, 7 bars of the paper
    14
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .constants import CLASS_CODES, DATA_CLASS_COUNTS, META_FIELDS, PAPER_CLASS_COUNTS, SEXES, SITES

__all__ = [
    "PAPER_ORDER", "CLASS_COLORS", "DPI", "read_rgb", "save_figure", "synthetic_banner",
    "class_counts", "age_by_class", "sex_site_by_class", "sample_grid", "images_per_lesion", "lesion_leak_bars",
    "color_constancy_grid", "color_stats", "chromaticity_spread", "color_statistics",
    "metadata_vectors", "mutual_information_bars", "recall_bars",
    "announce", "locate_data", "example_rows", "fill_steps", "missing_table", "baseline_summary",
]

#: Diagnosis codes (``dx``) in the paper's order: largest class first.
PAPER_ORDER: tuple[str, ...] = tuple(sorted(PAPER_CLASS_COUNTS, key=lambda k: -PAPER_CLASS_COUNTS[k]))
#: One colour per class, used by every figure.
CLASS_COLORS: dict[str, str] = dict(zip(PAPER_ORDER, (
    "#4c72b0", "#c44e52", "#dd8452", "#55a868", "#8172b3", "#937860", "#da8bc3")))
#: Resolution of the saved PNG files.
DPI = 120
_BANNER_GID = "synthetic-banner"
_P_NAMES = {1.0: "Gray World", 6.0: "Shades of Gray"}


# ----------------------------------------------------------------------------- saving and stamping


def save_figure(fig: Figure, name: str) -> Path:
    """Write ``fig`` to ``figures_dir()/<name>.png`` (120 dpi, atomically) and return the path.

    Args:
        fig: the figure.
        name: file name without ``.png`` (prefix it with the notebook number, e.g. ``00_class_counts``).
    """
    from .paths import figures_dir

    path = figures_dir() / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=DPI, bbox_inches="tight", format="png")
    os.replace(tmp, path)
    return path


def synthetic_banner(fig: Figure, text: str = "SYNTHETIC DATA") -> Figure:
    """Stamp ``text`` in large red letters across ``fig`` (once, however often it is called).

    Args:
        fig: the figure to stamp.
        text: the words to stamp.

    Returns:
        The same figure.
    """
    if any(t.get_gid() == _BANNER_GID for t in fig.texts):
        return fig
    size = max(18.0, min(64.0, 5.5 * fig.get_figwidth(), 11.0 * fig.get_figheight()))
    fig.text(0.5, 0.5, text, gid=_BANNER_GID, ha="center", va="center", rotation=20, fontsize=size,
             fontweight="bold", color="red", alpha=0.28, zorder=1000)
    fig.text(0.005, 0.995, f"{text}: not HAM10000", ha="left", va="top", fontsize=9, color="white",
             fontweight="bold", bbox={"facecolor": "red", "edgecolor": "none", "pad": 2}, zorder=1000)
    return fig


def _finish(fig: Figure, save: str | None, synthetic: bool) -> Figure:
    if synthetic:
        synthetic_banner(fig)
    if save:
        save_figure(fig, save)
    return fig


def _classes(dx: pd.Series | Sequence[str]) -> list[str]:
    """The classes present, in the paper's order."""
    present = set(pd.Series(dx).astype(str).str.lower())
    return [c for c in PAPER_ORDER if c in present]


def read_rgb(path: str | Path, max_side: int | None = None) -> np.ndarray:
    """Decode an image file to an RGB uint8 ``HxWx3`` array, shrunk (keeping its shape) to at most ``max_side`` pixels.

    Args:
        path: the image file.
        max_side: None keeps the full size.
    """
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        if max_side:
            im.thumbnail((max_side, max_side), Image.BILINEAR)
        return np.asarray(im)


def _shrink(arr: np.ndarray, max_side: int) -> np.ndarray:
    """Shrink an RGB array (keeping its shape) to at most ``max_side`` pixels, for display."""
    from PIL import Image

    im = Image.fromarray(arr)
    im.thumbnail((max_side, max_side), Image.BILINEAR)
    return np.asarray(im)


def _bare(ax: Any) -> None:
    """No ticks, no frame (image panels keep their y label)."""
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)


# ----------------------------------------------------------------------------- notebook 00 / 01: the data


def _count_series(counts: Mapping[str, int] | pd.Series | pd.DataFrame) -> pd.Series:
    if isinstance(counts, pd.DataFrame):
        counts = counts["dx"].value_counts()
    s = pd.Series(dict(counts), dtype=float)
    s.index = [str(i).lower() for i in s.index]
    return s.reindex(PAPER_ORDER, fill_value=0.0)


def class_counts(counts: Mapping[str, int] | pd.Series | pd.DataFrame,
                 paper: Mapping[str, int] | None = PAPER_CLASS_COUNTS, *, scale: str = "auto", log: bool = False,
                 title: str | None = None, save: str | None = None, synthetic: bool = False) -> Figure:
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
        synthetic: stamp SYNTHETIC DATA.

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
            ax.annotate("* misprinted in the paper: the official data has BKL 1099, VASC 142",
                        xy=(0.99, 0.97), xycoords="axes fraction", ha="right", va="top", fontsize=8)
    ax.set_xticks(x, [c.upper() for c in PAPER_ORDER])
    ax.set_ylabel("% of images" if scale == "share" else "images")
    if log:
        ax.set_yscale("log")
    ax.margins(y=0.15)
    ax.legend(loc="center right", frameon=False)
    ax.set_title(title or ("Images per class: here vs the paper" + (" (shares)" if scale == "share" else "")))
    return _finish(fig, save, synthetic)


def age_by_class(df: pd.DataFrame, *, bin_width: float = 5.0, save: str | None = None,
                 synthetic: bool = False) -> Figure:
    """Age histogram of each class (density), over the histogram of all images.

    Args:
        df: one row per image with ``dx`` and ``age`` (NaN = missing).
        bin_width: years per bin (HAM10000's ages are multiples of 5).
        save: file name under ``figures/``.
        synthetic: stamp SYNTHETIC DATA.

    Returns:
        The figure: one panel per class present plus one for all images (2 rows).
    """
    age = pd.to_numeric(df["age"], errors="coerce").astype(float)
    dx = df["dx"].astype(str)
    bins = np.arange(0.0, max(90.0, float(np.nanmax(age)) if age.notna().any() else 90.0) + bin_width, bin_width)
    classes = _classes(dx)
    ncols = math.ceil((len(classes) + 1) / 2)
    fig = Figure(figsize=(3.0 * ncols, 5.2), layout="constrained")
    axes = fig.subplots(2, ncols, sharex=True, sharey=True, squeeze=False).ravel()
    every = age.dropna().to_numpy()
    for ax, c in zip(axes, [*classes, "all"]):
        a = age[dx == c] if c != "all" else age
        ax.hist(every, bins=bins, density=True, histtype="step", color="0.55", label="all images")
        ax.hist(a.dropna(), bins=bins, density=True, alpha=0.8, color=CLASS_COLORS.get(c, "0.3"))
        mean = f", mean {a.mean():.0f}" if a.notna().any() else ""
        ax.set_title(f"{c.upper()}: n={len(a)}{mean}\n{int(a.isna().sum())} age(s) missing", fontsize=9)
    for ax in axes[len(classes) + 1:]:
        ax.remove()
    fig.supxlabel("age (years)")
    fig.supylabel("density")
    axes[0].legend(fontsize=7, frameon=False, loc="upper left")
    fig.suptitle("Age by diagnosis (grey outline: all images)")
    return _finish(fig, save, synthetic)


def _crosstab(df: pd.DataFrame, col: str, values: Sequence[str], normalise: bool) -> pd.DataFrame:
    classes = _classes(df["dx"])
    ct = pd.crosstab(df["dx"].astype(str), df[col].astype(str)).reindex(index=classes, columns=list(values),
                                                                          fill_value=0)
    ct.index = [f"{c.upper()} ({int(ct.loc[c].sum())})" for c in classes]
    return ct.div(ct.sum(axis=1).replace(0, 1), axis=0) * 100 if normalise else ct


def sex_site_by_class(df: pd.DataFrame, *, normalise: bool = True, save: str | None = None,
                      synthetic: bool = False) -> Figure:
    """Heatmaps of sex and body site by diagnosis.

    Args:
        df: one row per image with ``dx``, ``sex`` and ``localization``.
        normalise: show each class's row as % of its images (else counts).
        save: file name under ``figures/``.
        synthetic: stamp SYNTHETIC DATA.

    Returns:
        The figure: two heatmap axes (sex, site); sites ordered by overall frequency,
        ``unknown`` last.
    """
    import seaborn as sns

    loc = df["localization"].astype(str)
    sites = [s for s in loc[loc != "unknown"].value_counts().index if s in SITES]
    sites += [s for s in SITES if s not in sites] + ["unknown"]
    fig = Figure(figsize=(17, 4.6), layout="constrained")
    ax_sex, ax_site = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, len(sites)]})
    style = {"annot": True, "fmt": ".0f" if normalise else "d", "cbar": False, "cmap": "Blues",
             "linewidths": 0.5, "annot_kws": {"fontsize": 8}}
    sns.heatmap(_crosstab(df, "sex", [*SEXES, "unknown"], normalise), ax=ax_sex, vmin=0, **style)
    sns.heatmap(_crosstab(df, "localization", sites, normalise), ax=ax_site, vmin=0, **style)
    ax_site.set_yticklabels([])
    ax_site.tick_params(axis="y", left=False)
    for ax, what in ((ax_sex, "sex"), (ax_site, "body site")):
        ax.set_xlabel("")
        ax.set_ylabel("")
        ax.set_title(f"{what}" + (" (% of the class's images)" if normalise else " (images)"))
        ax.tick_params(axis="x", rotation=60)
    return _finish(fig, save, synthetic)


def _caption(row: Any) -> str:
    age = "?" if pd.isna(row.age) else f"{row.age:.0f}"
    sex = {"male": "M", "female": "F"}.get(str(row.sex), "?")
    return f"{age} {sex} {row.localization}"


def sample_grid(df: pd.DataFrame, n_per_class: int = 5, *, seed: int = 0, max_side: int = 200,
                save: str | None = None, synthetic: bool = False) -> Figure:
    """Random images of every class: rows are classes, ``n_per_class`` columns.

    Args:
        df: one row per image with ``dx``, ``path`` (image file), ``age``, ``sex``, ``localization``.
        n_per_class: images per row (a class with fewer shows all it has).
        seed: random state of the choice.
        max_side: images are shrunk to at most this many pixels for display.
        save: file name under ``figures/``.
        synthetic: stamp SYNTHETIC DATA.

    Returns:
        The figure: ``classes x n_per_class`` axes; each image is captioned with age, sex and site.
    """
    classes = _classes(df["dx"])
    fig = Figure(figsize=(1.9 * n_per_class, 1.6 * len(classes)), layout="constrained")
    axes = fig.subplots(len(classes), n_per_class, squeeze=False)
    for i, c in enumerate(classes):
        sub = df[df["dx"].astype(str) == c]
        rows = list(sub.sample(min(n_per_class, len(sub)), random_state=seed).itertuples())
        for j, ax in enumerate(axes[i]):
            _bare(ax)
            if j < len(rows):
                ax.imshow(read_rgb(rows[j].path, max_side))
                ax.set_xlabel(_caption(rows[j]), fontsize=7, labelpad=1)
        axes[i, 0].set_ylabel(c.upper(), fontsize=11, color=CLASS_COLORS[c], fontweight="bold")
    fig.suptitle("Sample images per class (caption: age, sex, site)")
    return _finish(fig, save, synthetic)


def images_per_lesion(df: pd.DataFrame, *, save: str | None = None, synthetic: bool = False) -> Figure:
    """How many images each lesion has, and per class the share of images whose lesion has others.

    Args:
        df: one row per image with ``lesion_id`` and ``dx``.
        save: file name under ``figures/``.
        synthetic: stamp SYNTHETIC DATA.

    Returns:
        The figure: two axes (lesions by number of images; % of images with a sibling, per class).
    """
    sizes = df.groupby("lesion_id").size()
    hist = sizes.value_counts().sort_index()
    multi = df["lesion_id"].map(sizes) > 1
    classes = _classes(df["dx"])
    share = (multi.groupby(df["dx"].astype(str)).mean() * 100).reindex(classes)
    fig = Figure(figsize=(11, 4), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    ax1.bar_label(ax1.bar(hist.index.astype(int), hist.to_numpy(), color="#4c72b0"), fontsize=8)
    ax1.set_xticks(hist.index.astype(int))
    ax1.set(xlabel="images of the lesion", ylabel="lesions",
            title=f"{len(sizes)} lesions, {len(df)} images ({len(df) / max(len(sizes), 1):.2f} images per lesion)")
    bars = ax2.bar([c.upper() for c in classes], share.to_numpy(), color=[CLASS_COLORS[c] for c in classes])
    ax2.bar_label(bars, fmt="%.0f%%", fontsize=8)
    ax2.axhline(100 * multi.mean(), color="0.3", ls="--", lw=1, label=f"all classes: {100 * multi.mean():.0f}%")
    ax2.set(ylabel="% of images", ylim=(0, 105), title="images whose lesion has other images")
    ax2.legend(frameon=False, fontsize=8)
    return _finish(fig, save, synthetic)


def lesion_leak_bars(leaks: Mapping[str, pd.DataFrame], *, save: str | None = None,
                     synthetic: bool = False) -> Figure:
    """Per fold, the share of validation images with an image of the same lesion in training.

    Args:
        leaks: split scheme name -> :func:`metanet_utils.splits.lesion_leak` frame (index: folds,
            then ``overall``; column ``share``).
        save: file name under ``figures/``.
        synthetic: stamp SYNTHETIC DATA.

    Returns:
        The figure: one axes, one bar per (fold or overall) and scheme.
    """
    names = list(leaks)
    index = list(next(iter(leaks.values())).index)
    x, w = np.arange(len(index)), 0.8 / max(len(names), 1)
    fig = Figure(figsize=(1.2 * len(index) + 4, 4), layout="constrained")
    ax = fig.subplots()
    for k, name in enumerate(names):
        share = 100 * leaks[name]["share"].reindex(index).fillna(0).to_numpy(dtype=float)
        ax.bar_label(ax.bar(x + (k - (len(names) - 1) / 2) * w, share, w, label=name), fmt="%.0f%%", fontsize=8)
    ax.set_xticks(x, [f"fold {i}" if i != "overall" else "all folds" for i in index])
    ax.set(ylabel="% of validation images", ylim=(0, 100),
           title="Validation images with an image of the same lesion in training")
    ax.legend(title="split", frameon=False)
    return _finish(fig, save, synthetic)


# ----------------------------------------------------------------------------- notebook 03: colour constancy


def _image_list(images: pd.DataFrame | Sequence[str | Path]) -> list[tuple[str, str]]:
    """(path, label) pairs from a frame with ``path`` (and ``dx``, ``image_id``) or from paths."""
    if isinstance(images, pd.DataFrame):
        if "dx" in images:
            rank = {c: i for i, c in enumerate(PAPER_ORDER)}
            images = images.iloc[np.argsort([rank.get(str(d), 99) for d in images["dx"]], kind="stable")]
        return [(str(r.path), f"{str(getattr(r, 'dx', '')).upper()} {getattr(r, 'image_id', '')}".strip())
                for r in images.itertuples()]
    return [(str(p), Path(p).stem) for p in images]


def _p_title(p: float) -> str:
    if math.isinf(p):
        return "max-RGB (p = inf)"
    return f"{_P_NAMES.get(float(p), 'Minkowski')} (p = {p:g})"


def color_constancy_grid(images: pd.DataFrame | Sequence[str | Path], ps: Sequence[float] = (6,), *,
                         max_side: int = 220, save: str | None = None, synthetic: bool = False) -> Figure:
    """Each image before and after colour constancy with each Minkowski norm ``p``.

    The illuminant is estimated on the full image, then the image is shrunk for display.

    Args:
        images: a frame with ``path`` (and ``dx``, ``image_id`` for the row labels) or paths.
        ps: Minkowski norms, one column each (1 Gray World, 6 Shades of Gray, ``np.inf`` max-RGB).
        max_side: display size.
        save: file name under ``figures/``.
        synthetic: stamp SYNTHETIC DATA.

    Returns:
        The figure: ``len(images) x (1 + len(ps))`` axes; corrected panels show the channel gains.
    """
    from .color import estimate_illuminant, shades_of_gray

    items = _image_list(images)
    fig = Figure(figsize=(2.4 * (1 + len(ps)), 2.0 * len(items)), layout="constrained")
    axes = fig.subplots(len(items), 1 + len(ps), squeeze=False)
    for i, (path, label) in enumerate(items):
        img = read_rgb(path)
        axes[i, 0].imshow(_shrink(img, max_side))
        axes[i, 0].set_ylabel(label, fontsize=8)
        for ax, p in zip(axes[i, 1:], ps):
            gain = 1 / (estimate_illuminant(img, p=p) * math.sqrt(3))
            ax.imshow(_shrink(shades_of_gray(img, p=p), max_side))
            ax.set_xlabel("gain R G B = " + " ".join(f"{g:.2f}" for g in gain), fontsize=7, labelpad=1)
        for ax in axes[i]:
            _bare(ax)
    for ax, t in zip(axes[0], ["original", *(_p_title(p) for p in ps)]):
        ax.set_title(t, fontsize=10)
    return _finish(fig, save, synthetic)


def color_stats(images: pd.DataFrame | Sequence[str | Path], p: float = 6, *, n: int | None = 300,
                seed: int = 0) -> pd.DataFrame:
    """Mean colour of each image before and after colour constancy.

    Args:
        images: a frame with ``path`` (and ``dx``, ``image_id``) or a list of paths.
        p: Minkowski norm of the correction (6: Shades of Gray, as the paper).
        n: use a random sample of at most ``n`` images (None: all).
        seed: random state of the sample.

    Returns:
        One row per image: ``image_id``, ``dx``, mean ``R, G, B`` before and after
        (``R_before`` ...), and the chromaticities ``r = R / (R + G + B)``, ``g = G / (R + G + B)``
        of the mean colour (``r_before``, ``g_before``, ``r_after``, ``g_after``).
    """
    from .color import shades_of_gray

    frame = images if isinstance(images, pd.DataFrame) else pd.DataFrame({"path": [str(q) for q in images]})
    if n is not None and len(frame) > n:
        frame = frame.sample(n, random_state=seed)
    rows = []
    for r in frame.itertuples():
        img = read_rgb(r.path)
        rec = {"image_id": getattr(r, "image_id", Path(r.path).stem), "dx": str(getattr(r, "dx", ""))}
        for when, arr in (("before", img), ("after", shades_of_gray(img, p=p))):
            m = arr.reshape(-1, 3).mean(axis=0)
            rec.update({f"{c}_{when}": v for c, v in zip("RGB", m)})
            rec.update({f"r_{when}": m[0] / max(m.sum(), 1e-9), f"g_{when}": m[1] / max(m.sum(), 1e-9)})
        rows.append(rec)
    return pd.DataFrame(rows)


def chromaticity_spread(stats: pd.DataFrame) -> pd.DataFrame:
    """How much the images' mean colours vary, before and after (from :func:`color_stats`).

    Returns:
        Index ``before, after``; columns: standard deviations of ``r`` and ``g``, and the mean
        distance of ``(r, g)`` from gray ``(1/3, 1/3)``.
    """
    out = {}
    for when in ("before", "after"):
        r, g = stats[f"r_{when}"], stats[f"g_{when}"]
        out[when] = {"sd_r": r.std(), "sd_g": g.std(),
                     "mean_distance_from_gray": np.hypot(r - 1 / 3, g - 1 / 3).mean()}
    return pd.DataFrame(out).T


def color_statistics(stats: pd.DataFrame, *, save: str | None = None, synthetic: bool = False) -> Figure:
    """Chromaticity of each image's mean colour before and after, and the channel means.

    Args:
        stats: :func:`color_stats` output.
        save: file name under ``figures/``.
        synthetic: stamp SYNTHETIC DATA.

    Returns:
        The figure: three axes (r-g chromaticity before, after, on the same scale; box plots of
        the mean R, G, B before and after).
    """
    fig = Figure(figsize=(14, 4.4), layout="constrained")
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1, 1.2]})
    spread = chromaticity_spread(stats)
    lim = [min(stats[[f"{c}_{w}" for c in "rg" for w in ("before", "after")]].min().min(), 0.28) - 0.01,
           max(stats[[f"{c}_{w}" for c in "rg" for w in ("before", "after")]].max().max(), 0.40) + 0.01]
    colors = [CLASS_COLORS.get(str(d).lower(), "0.4") for d in stats.get("dx", pd.Series("", index=stats.index))]
    for ax, when in zip(axes[:2], ("before", "after")):
        ax.scatter(stats[f"r_{when}"], stats[f"g_{when}"], s=9, c=colors, alpha=0.7, linewidths=0)
        ax.plot([1 / 3], [1 / 3], marker="+", color="k", ms=14, mew=2)
        s = spread.loc[when]
        ax.set(xlim=lim, ylim=lim, aspect="equal", xlabel="r = R / (R+G+B)", ylabel="g = G / (R+G+B)",
               title=f"{when}: sd r {s.sd_r:.3f}, sd g {s.sd_g:.3f}")
    handles = [axes[0].scatter([], [], color=CLASS_COLORS[c], s=12, label=c.upper()) for c in PAPER_ORDER
               if c in set(stats.get("dx", pd.Series(dtype=str)).astype(str).str.lower())]
    if handles:
        axes[0].legend(handles=handles, fontsize=7, frameon=False, loc="upper right", ncol=2)
    data = [stats[f"{c}_{w}"] for c in "RGB" for w in ("before", "after")]
    box = axes[2].boxplot(data, positions=[0.8, 1.2, 1.8, 2.2, 2.8, 3.2], widths=0.3, patch_artist=True,
                          showfliers=False)
    for patch, c in zip(box["boxes"], ["#e06666", "#f4cccc", "#6aa84f", "#d9ead3", "#3d85c6", "#cfe2f3"]):
        patch.set_facecolor(c)
    axes[2].set_xticks([0.8, 1.2, 1.8, 2.2, 2.8, 3.2], ["R\nbefore", "R\nafter", "G\nbefore", "G\nafter",
                                                          "B\nbefore", "B\nafter"], fontsize=8)
    axes[2].set(ylabel="mean value of the image (0-255)", title="channel means per image")
    fig.suptitle(f"Colour of {len(stats)} images before and after colour constancy (+ = gray)")
    return _finish(fig, save, synthetic)


# ----------------------------------------------------------------------------- notebook 02: metadata


def metadata_vectors(x: np.ndarray, names: Sequence[str], labels: Sequence[str], *, save: str | None = None,
                     synthetic: bool = False) -> Figure:
    """The encoded metadata vectors of a few images as a heatmap (one row per image).

    Args:
        x: ``(n, d)`` encoded vectors (:func:`metanet_utils.metadata.encode`).
        names: the ``d`` column names.
        labels: one label per row (e.g. the image ids).
        save: file name under ``figures/``.
        synthetic: stamp SYNTHETIC DATA.

    Returns:
        The figure: one heatmap axes with the values written in the cells.
    """
    import seaborn as sns

    x = np.asarray(x, dtype=float)
    annot = np.vectorize(lambda v: f"{v:.2f}" if 0 < v < 1 else f"{v:.0f}")(x)
    fig = Figure(figsize=(0.62 * x.shape[1] + 2.5, 0.5 * x.shape[0] + 2.4), layout="constrained")
    ax = fig.subplots()
    sns.heatmap(pd.DataFrame(x, columns=list(names), index=list(labels)), ax=ax, annot=annot, fmt="", cbar=False,
                cmap="Greens", vmin=0, vmax=1, linewidths=0.5, annot_kws={"fontsize": 8})
    ax.tick_params(axis="x", rotation=70)
    ax.tick_params(axis="y", rotation=0)
    ax.set_title(f"The {x.shape[1]}-d metadata vectors (age scaled to [0, 1], sex and site one-hot)")
    return _finish(fig, save, synthetic)


def mutual_information_bars(mi: pd.Series | pd.DataFrame, *, h_dx: float | None = None, save: str | None = None,
                            synthetic: bool = False) -> Figure:
    """Mutual information of each metadata field with the diagnosis, in bits.

    Args:
        mi: :func:`metanet_utils.metadata.mutual_information` output, or a frame with one such
            column per variant (e.g. per dataset or per missing-value rule).
        h_dx: entropy of the diagnosis in bits; bars are then labelled with their share of it.
        save: file name under ``figures/``.
        synthetic: stamp SYNTHETIC DATA.

    Returns:
        The figure: one axes, one bar per field and column.
    """
    frame = mi.to_frame() if isinstance(mi, pd.Series) else mi
    x, w = np.arange(len(frame.index)), 0.8 / max(len(frame.columns), 1)
    fig = Figure(figsize=(2.2 * len(frame.index) * max(1, len(frame.columns) / 1.5) + 2, 4), layout="constrained")
    ax = fig.subplots()
    for k, col in enumerate(frame.columns):
        v = frame[col].to_numpy(dtype=float)
        bars = ax.bar(x + (k - (len(frame.columns) - 1) / 2) * w, v, w, label=str(col))
        labels = [f"{b:.3f}" + (f"\n({100 * b / h_dx:.0f}% of H)" if h_dx else "") for b in v]
        ax.bar_label(bars, labels=labels, fontsize=8)
    ax.set_xticks(x, [str(i) for i in frame.index])
    ax.margins(y=0.25)
    ax.set(ylabel="mutual information with dx (bits)",
           title="What each field tells about the diagnosis" + (f" (H(dx) = {h_dx:.2f} bits)" if h_dx else ""))
    if len(frame.columns) > 1:
        ax.legend(frameon=False, fontsize=8)
    return _finish(fig, save, synthetic)


def recall_bars(results: Mapping[str, Any], *, save: str | None = None, synthetic: bool = False) -> Figure:
    """Per-class recall (mean and standard deviation over folds), as in the paper's Table 2.

    Args:
        results: one :func:`metanet_utils.metadata.metadata_baseline` result (a dict with
            ``recall_mean``, ``recall_std``, ``mcr_mean``, ``mcr_std``), or a mapping of names to such
            results (grouped bars).
        save: file name under ``figures/``.
        synthetic: stamp SYNTHETIC DATA.

    Returns:
        The figure: one axes, 7 bars per result, the chance level (1/7) dashed.
    """
    runs = {"metadata only": results} if "recall_mean" in results else dict(results)
    codes = [c.upper() for c in PAPER_ORDER]
    x, w = np.arange(len(codes)), 0.8 / max(len(runs), 1)
    fig = Figure(figsize=(9, 4.2), layout="constrained")
    ax = fig.subplots()
    for k, (name, r) in enumerate(runs.items()):
        mean = np.array([r["recall_mean"].get(c, np.nan) for c in codes], dtype=float) * 100
        std = np.nan_to_num(np.array([r["recall_std"].get(c, np.nan) for c in codes], dtype=float) * 100)
        label = f"{name}: MCR {100 * r['mcr_mean']:.1f} ± {100 * np.nan_to_num(r['mcr_std']):.1f}"
        bars = ax.bar(x + (k - (len(runs) - 1) / 2) * w, np.nan_to_num(mean), w, yerr=std, capsize=2, label=label)
        ax.bar_label(bars, fmt="%.0f", fontsize=7, padding=2)
    ax.axhline(100 / len(CLASS_CODES), color="0.3", ls="--", lw=1, label=f"chance ({100 / len(CLASS_CODES):.1f})")
    ax.set_xticks(x, codes)
    ax.set(ylabel="recall (%)", ylim=(0, 122), title="Per-class recall, mean ± sd over folds")
    ax.set_yticks(range(0, 101, 20))
    ax.legend(frameon=False, fontsize=8, loc="upper center", ncol=min(3, len(runs) + 1))
    return _finish(fig, save, synthetic)


# ----------------------------------------------------------------------------- notebook helpers and tables


def announce(data: Any) -> None:
    """Print where the data comes from; LOUDLY (a box of ``*``) when it is synthetic.

    Args:
        data: a :class:`metanet_utils.data.DataLocation` or a :class:`metanet_utils.dataset.Dataset`.
    """
    path = getattr(data, "path", None) or getattr(data, "data_dir", "")
    n = f" ({len(data.df)} images used by this profile)" if hasattr(data, "df") else ""
    if data.kind != "synthetic":
        print(f"Real data: {path}{n}.")
        return
    lines = ["SYNTHETIC DATA", "", f"{path}{n}",
             "procedurally drawn images, NOT HAM10000: the figures are stamped and",
             "the numbers say nothing about the paper's claims.",
             "Real data: python -m metanet_utils data download, or --data-dir PATH",
             "(folder with HAM10000_metadata.csv and the ISIC_*.jpg images)."]
    width = max(len(s) for s in lines) + 8
    print("\n".join(["*" * width, *(f"*** {s.ljust(width - 8)} ***" for s in lines), "*" * width]))


def locate_data(profile: Any, data_dir: str | Path | None = "") -> Any:
    """Find the profile's data; quick / paper (``data: real``) download the official files if none is found.

    Args:
        profile: a :class:`metanet_utils.config.Profile`.
        data_dir: a data folder, or empty / None for the default places.

    Returns:
        The :class:`metanet_utils.data.DataLocation`; demo and smoke fall back to the synthetic data.

    Raises:
        DataError: a given folder holds no data, or ``data: real`` and the download failed.
    """
    from .data import DataError, DataLocation, find_data_dir
    from .paths import data_dir as default_root

    if profile.data == "synthetic" and not data_dir:
        from .synthetic import make_synthetic

        path = make_synthetic(default_root() / f"synthetic-{profile.synthetic_images}-s{profile.seed}",
                              n_images=profile.synthetic_images, seed=profile.seed)
        return DataLocation(Path(path).resolve(), "synthetic", "profile asks for synthetic data")
    try:
        return find_data_dir(data_dir or None, synthetic_fallback=profile.data == "auto",
                             synthetic_images=profile.synthetic_images, seed=profile.seed)
    except DataError:
        if data_dir or profile.data != "real":
            raise
    from .download import download_official

    print(f"No data found: profile {profile.name!r} needs the official HAM10000, downloading it (about 3 GB) ...")
    download_official(default_root() / "ham10000")
    return find_data_dir(None)


def example_rows(df: pd.DataFrame, n: int = 3) -> pd.DataFrame:
    """``n`` rows to show an encoding with: a missing age, an unknown sex and an unknown site first.

    Args:
        df: metadata rows.
        n: how many rows.

    Returns:
        The chosen rows of ``df`` (index kept).
    """
    picked: list[Any] = []
    for idx in (df.index[df["age"].isna()], df.index[df["sex"].astype(str) == "unknown"],
                df.index[df["localization"].astype(str) == "unknown"]):
        picked += [i for i in idx if i not in picked][:1]
    picked += [i for i in df.index if i not in picked][: max(0, n - len(picked))]
    return df.loc[picked[:n]]


def fill_steps(rows: pd.DataFrame, stats: Any) -> pd.DataFrame:
    """Each field of ``rows`` as given, as filled and (age) as scaled, with :func:`encode`'s rules.

    Args:
        rows: metadata rows (``image_id``, ``age``, ``sex``, ``localization``).
        stats: the :class:`metanet_utils.metadata.MetadataStats` used to fill and scale.

    Returns:
        One row per image: ``age``, ``age filled``, ``age scaled``, ``sex``, ``sex filled``,
        ``localization``, ``localization filled``.
    """
    from .metadata import encode

    age = pd.to_numeric(rows["age"], errors="coerce")
    unknown = lambda s: s.astype(str).isin(["unknown", "", "nan", "<NA>"])  # noqa: E731
    return pd.DataFrame({
        "age": age, "age filled": age.fillna(stats.age_mean),
        "age scaled": encode(rows, ("age",), stats)[0][:, 0],
        "sex": rows["sex"], "sex filled": rows["sex"].astype(str).where(~unknown(rows["sex"]), stats.sex_mode),
        "localization": rows["localization"],
        "localization filled": rows["localization"].astype(str).where(~unknown(rows["localization"]),
                                                                     stats.site_mode),
    }).set_axis(rows["image_id"].astype(str) if "image_id" in rows else rows.index)


def missing_table(df: pd.DataFrame, stats: Any) -> pd.DataFrame:
    """How many values of each field are missing and what the encoding puts in their place.

    Args:
        df: metadata rows.
        stats: the :class:`metanet_utils.metadata.MetadataStats` used to fill.

    Returns:
        Index ``age, sex, localization``; columns ``missing``, ``% of images``, ``filled with``.
    """
    span = (stats.age_max - stats.age_min) or 1.0
    miss = {"age": int(pd.to_numeric(df["age"], errors="coerce").isna().sum()),
            "sex": int((df["sex"].astype(str) == "unknown").sum()),
            "localization": int((df["localization"].astype(str) == "unknown").sum())}
    fill = {"age": f"mean known age {stats.age_mean:.2f} (scaled {(stats.age_mean - stats.age_min) / span:.3f})",
            "sex": f"most frequent: {stats.sex_mode}", "localization": f"most frequent: {stats.site_mode}"}
    t = pd.DataFrame({"missing": pd.Series(miss), "filled with": pd.Series(fill)}).reindex(list(META_FIELDS))
    t.insert(1, "% of images", (100 * t["missing"] / max(len(df), 1)).round(2))
    return t


def baseline_summary(results: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """MCR and per-class recall (%, mean ± sd over folds) of several metadata baselines.

    Args:
        results: name -> :func:`metanet_utils.metadata.metadata_baseline` result.

    Returns:
        One row per name: ``MCR`` then one column per class (paper order), as ``"mean ± sd"`` strings.
    """
    def cell(m: float, s: float) -> str:
        return f"{100 * m:.1f} ± {100 * s:.1f}" if not math.isnan(s) else f"{100 * m:.1f}"

    rows = {name: {"MCR": cell(r["mcr_mean"], r["mcr_std"]),
                   **{c.upper(): cell(r["recall_mean"][c.upper()], r["recall_std"][c.upper()]) for c in PAPER_ORDER}}
            for name, r in results.items()}
    return pd.DataFrame(rows).T


# ----------------------------------------------------------------------------- training (notebook 04)


def training_curves(history: pd.DataFrame, *, title: str = "", save: str | None = None,
                    synthetic: bool = False) -> Figure:
    """Learning curves: training loss and validation MCR per epoch, one line per fold, one colour per fusion.

    Args:
        history: :func:`metanet_utils.grid.run_histories` (columns ``fusion, fold, epoch, train_loss, val_mcr``).
        title: figure title (e.g. the backbone).
        save: file name under ``figures/``.
        synthetic: stamp SYNTHETIC DATA.

    Returns:
        The figure: two axes (loss, validation MCR in %).
    """
    fig = Figure(figsize=(11, 4), layout="constrained")
    ax_loss, ax_mcr = fig.subplots(1, 2)
    colours = {"none": "tab:gray", "concat": "tab:blue", "metanet": "tab:red", "metablock": "tab:green"}
    for (fusion, fold), h in history.sort_values("epoch").groupby(["fusion", "fold"], sort=True):
        kw = dict(color=colours.get(fusion, None), alpha=0.8, lw=1.2, marker="o" if len(h) < 8 else None, ms=3,
                  label=fusion if fold == history.loc[history.fusion == fusion, "fold"].min() else None)
        ax_loss.plot(h["epoch"], h["train_loss"], **kw)
        ax_mcr.plot(h["epoch"], 100 * h["val_mcr"], **kw)
    ax_loss.set(xlabel="epoch", ylabel="training loss (class-weighted CE)", title="training loss, one line per fold")
    ax_mcr.axhline(100 / len(CLASS_CODES), color="0.3", ls="--", lw=1, label="chance")
    ax_mcr.set(xlabel="epoch", ylabel="validation MCR (%)", title="validation mean class recall")
    for ax in (ax_loss, ax_mcr):
        ax.legend(frameon=False, fontsize=8)
    if title:
        fig.suptitle(title)
    return _finish(fig, save, synthetic)
