"""The report: a profile's tables beside the paper's, every deviation from the paper's protocol, where the paper,
the data and the authors' code disagree, what the lesion leak is worth, and the analysis helpers of notebooks 05 and
06. (The HTML pages of the executed notebooks: :mod:`metanet_utils.ops.html`.)

Example:
    >>> list(paper_vs_code_facts().columns)
    ['topic', 'paper', "data or authors' code", 'this kit']
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from .atomic import atomic_write_text
from .config import FUSIONS, Profile, load_profile
from .constants import BACKBONES, DATA_CLASS_COUNTS, N_IMAGES, PAPER_CLASS_COUNTS, PAPER_ORDER, PAPER_PROTOCOL
from .data import DataError, describe
from .dataset import profile_dataset
from .evaluate import is_complete, load_record, load_records
from .runs import enumerate_runs, image_sizes
from .paths import runs_dir, tables_dir
from .splits import lesion_leak
from .stats import compare, paired_values
from .tables import (build_table1, build_table2, build_table3, build_table4, paper_alias, paper_backbone, paper_table2,
                     table1_records, write_tables)

__all__ = [
    "ablation_backbone", "run_caption", "protocol_differences", "shows_mechanics_only", "Completeness",
    "completeness", "profile_records", "validation_class_counts", "profile_tables", "write_profile_tables",
    "deviations", "paper_vs_code_facts", "LeakComparison", "lesion_leak_comparison", "table1_records", "fold_table",
    "recall_gain", "summed_confusion", "significance"]

P = PAPER_PROTOCOL
#: Below these a run shows how the kit works rather than the paper's results (see :func:`shows_mechanics_only`).
MECHANICS_ONLY_BELOW: dict[str, int] = {"epochs": 25, "crop": 112, "images": 2000}
_FUSION_ORDER = {f: i for i, f in enumerate(FUSIONS)}


# --------------------------------------------------------------------------------------------------- the profile


def _profile(profile: Profile | str | Path) -> Profile:
    return profile if isinstance(profile, Profile) else load_profile(profile)


def ablation_backbone(profile: Profile | str) -> str:
    """The backbone of Tables 2-4: ``ablations.backbone``, else the profile's last backbone (as the grid)."""
    prof = _profile(profile)
    return prof.ablations.backbone or prof.backbones[-1]


def _paper_size(backbone: str) -> tuple[int, int]:
    """The paper's (resize, crop) for a backbone; for one the paper did not use, that of most of its six."""
    b = BACKBONES[paper_alias(backbone) or P.ablation_backbone]
    return b.resize, b.crop


def _sizes_of(prof: Profile) -> dict[str, tuple[int, int]]:
    """``backbone -> (resize, crop)`` as the grid trains it."""
    out = {}
    for b in prof.backbones:
        try:
            out[b] = tuple(image_sizes(prof, b))
        except ValueError:  # a model name timm does not know: the profile's numbers, else the paper's
            out[b] = (prof.image_size or _paper_size(b)[0], prof.crop_size or _paper_size(b)[1])
    return out


def _names(backbones: Sequence[str]) -> str:
    return ", ".join(paper_backbone(b) or str(b) for b in backbones)


def _epochs(n: int) -> str:
    return f"{n} epoch{'s' if n != 1 else ''}"


def _core_rows(prof: Profile, dataset: Any) -> list[tuple]:
    """``(setting, paper, this run, deviates, note)`` of what changes what the numbers mean: data, pretraining,
    epochs, image size, folds."""
    rows, sizes, ran = [], _sizes_of(prof), len(prof.fold_indices)
    if dataset is not None:
        n, sample = len(dataset.df), dataset.kind == "sample"
        rows.append(("data", f"all {N_IMAGES} images of HAM10000", describe(dataset), sample or n < N_IMAGES,
                     "real images, downscaled, too few for the paper's claims" if sample else
                     "stratified subsample (whole lesions)" if n < N_IMAGES else ""))
    unreached = [m for m in prof.milestones if m >= prof.epochs]
    paper_sizes = {b: _paper_size(b) for b in ("resnet50", "pnasnet5large")}
    return rows + [
        ("pretrained", "ImageNet-pretrained", "ImageNet-pretrained" if prof.pretrained else "from scratch",
         not prof.pretrained, "timm tags closest to 2019 weights (torchvision originals, Cadene's SENet154, TF "
         "PNASNet)" if prof.pretrained else "accuracy far below the paper's is expected"),
        ("epochs", _epochs(P.epochs), _epochs(prof.epochs), prof.epochs != P.epochs,
         f"lr milestones {unreached} are never reached" if unreached else ""),
        ("image_size -> crop_size", "; ".join(f"{_names([b])} {r} -> {c}" for b, (r, c) in paper_sizes.items()),
         "; ".join(f"{_names([b])} {r} -> {c}" for b, (r, c) in sizes.items()),
         any(v != _paper_size(b) for b, v in sizes.items()), ""),
        ("n_folds", f"{P.n_folds} folds", f"{ran} of {prof.n_folds} folds" if ran != prof.n_folds else
         f"{prof.n_folds} folds", prof.n_folds != P.n_folds or ran != prof.n_folds, ""),
    ]


def protocol_differences(profile: Profile | str, dataset: Any = None) -> list[str]:
    """How the profile departs from the paper's protocol where it changes what the numbers mean (data,
    pretraining, epochs, image size, folds); empty for the paper's protocol.

    Example:
        >>> protocol_differences("paper")
        []
        >>> protocol_differences("smoke")[:2]
        ['from scratch (the paper: ImageNet-pretrained)', '1 epoch (the paper: 250 epochs)']
    """
    return [f"{ours} (the paper: {paper})" for _, paper, ours, dev, _ in _core_rows(_profile(profile), dataset) if dev]


def shows_mechanics_only(profile: Profile | str, dataset: Any = None) -> bool:
    """Whether the profile's numbers can only show how the kit works (smoke, demo): the shipped sample, no
    pretraining, or below :data:`MECHANICS_ONLY_BELOW`. A merely shorter schedule (quick) is not that.

    Example:
        >>> shows_mechanics_only("demo"), shows_mechanics_only("quick"), shows_mechanics_only("paper")
        (True, False, False)
    """
    prof, low = _profile(profile), MECHANICS_ONLY_BELOW
    if dataset is not None and (dataset.kind == "sample" or len(dataset.df) < low["images"]):
        return True
    return (not prof.pretrained or prof.epochs < low["epochs"]
            or any(c < low["crop"] for _, c in _sizes_of(prof).values()))


def run_caption(profile: Profile | str, dataset: Any = None) -> str:
    """One line saying what produced this run's results, for figure footers and the report.

    Example:
        >>> run_caption("paper").split(" · ")  # doctest: +NORMALIZE_WHITESPACE
        ['paper profile', "the paper's six backbones ImageNet-pretrained",
         '300 px → 224 px crop (pnasnet5large 441 → 331)', '5 folds × 250 epochs', "the paper's protocol"]
    """
    prof = _profile(profile)
    parts = [f"{prof.name} profile"] + ([describe(dataset)] if dataset is not None else [])
    bbs = list(prof.backbones)
    names = ("the paper's six backbones" if {paper_alias(b) for b in bbs} == set(BACKBONES) else
             f"{len(bbs)} backbones" if len(bbs) > 3 else ", ".join(bbs))
    parts.append(f"{names} {'ImageNet-pretrained' if prof.pretrained else 'from scratch'}")
    sizes = _sizes_of(prof)
    common = Counter(sizes.values()).most_common(1)[0][0]
    others = [f"{b} {r} → {c}" for b, (r, c) in sizes.items() if (r, c) != common]
    parts.append(f"{common[0]} px → {common[1]} px crop" + (f" ({', '.join(others)})" if others else ""))
    folds = f"{len(prof.fold_indices)} of {prof.n_folds} folds" if prof.folds else f"{prof.n_folds} folds"
    parts.append(f"{folds} × {_epochs(prof.epochs)}")
    parts.append("not the paper's protocol" if protocol_differences(prof, dataset) else "the paper's protocol")
    return " · ".join(parts)


# --------------------------------------------------------------------------------------------------- its records


class Completeness(NamedTuple):
    """How many of a profile's runs are complete: Table 1's (notebook 04 trains them) and the other runs of the
    ablations (notebook 07; a run both share counts as Table 1's). ``str()`` is the line the notebooks print."""

    profile: str
    table1: tuple[int, int]  #: (complete, expected)
    ablations: tuple[int, int]
    ablation_tables: str  #: e.g. "Tables 3 and 4"; "" when the profile asks for none
    run_ids: tuple[str, ...]  #: the complete runs

    def __str__(self) -> str:
        (t1, n1), (ab, na) = self.table1, self.ablations
        line = f"Profile {self.profile!r}: Table 1: {t1} of {n1} runs complete" + (
            " (notebook 04 trains them)" if t1 < n1 else "")
        if not na:
            return line + "; no ablation runs in this profile."
        rest = (" complete" if ab == na else ", trained in notebook 07" if not ab else
                ", the rest trained in notebook 07")
        return f"{line}; ablations ({self.ablation_tables}): {ab} of {na}{rest}."


def completeness(profile: Profile | str, dataset: Any) -> Completeness:
    """Which runs of the profile's grid (:func:`~metanet_utils.runs.enumerate_runs`) are complete (results/runs)."""
    prof, where = _profile(profile), runs_dir()
    ids = [r.run_id for r in enumerate_runs(prof, dataset)]
    table1 = {r.run_id for r in enumerate_runs(prof, dataset, ("table1",))}
    done = [i for i in ids if is_complete(where / i)]
    on = [str(i) for i, asked in ((3, prof.ablations.table3), (4, prof.ablations.table4)) if asked]
    t1_done, t1_all = len(table1.intersection(done)), len(table1.intersection(ids))
    return Completeness(prof.name, (t1_done, t1_all), (len(done) - t1_done, len(ids) - t1_all),
                        f"Table{'s' if len(on) > 1 else ''} {' and '.join(on)}" if on else "", tuple(done))


def profile_records(profile: Profile | str, dataset: Any) -> pd.DataFrame:
    """The records (:func:`~metanet_utils.evaluate.load_records`) of the profile's complete runs only."""
    return load_records(runs_dir(), completeness(profile, dataset).run_ids)


def validation_class_counts(profile: Profile | str, dataset: Any) -> tuple[pd.DataFrame, str]:
    """Validation images of each class in each fold of the profile's split, and a sentence on the smallest class.

    Returns:
        ``(table, note)``: rows the classes largest first; columns ``fold 0`` ... and ``recall step (points)``,
        what one image of the class moves its recall in its smallest fold (100 / count).
    """
    prof = _profile(profile)
    folds = np.asarray(dataset.folds(prof.n_folds, prof.split_scheme, prof.split_seed))
    dx = dataset.df["dx"].astype(str).str.lower().to_numpy()
    counts = pd.DataFrame({f"fold {f}": [int(((folds == f) & (dx == c)).sum()) for c in PAPER_ORDER]
                           for f in prof.fold_indices}, index=pd.Index([c.upper() for c in PAPER_ORDER], name="class"))
    table = counts.assign(**{"recall step (points)": [round(100 / m, 1) if m else np.nan for m in counts.min(axis=1)]})
    rare = min(counts.index, key=lambda c: (counts.loc[c].min(), counts.loc[c].sum()))
    lo, hi = int(counts.loc[rare].min()), int(counts.loc[rare].max())
    many, step = (f"{lo}", f"{100 / hi:.0f}") if lo == hi else (f"{lo}-{hi}", f"{100 / hi:.0f}-{100 / max(lo, 1):.0f}")
    return table, (f"This run's smallest class, {rare}, has {many} validation image{'s' if hi != 1 else ''} per fold "
                   f"({len(dataset.df)} images in all, {prof.n_folds} folds): one image more or less right moves its "
                   + (f"recall by {step} points." if lo else "recall a lot, and a fold without it has no recall."))


def profile_tables(profile: Profile | str, dataset: Any, records: pd.DataFrame | None = None
                   ) -> dict[str, pd.DataFrame]:
    """Tables 1-4 of the profile: its backbones in Table 1, its ablation backbone in Tables 2-4, its MetaNet depth."""
    prof = _profile(profile)
    records = profile_records(prof, dataset) if records is None else records
    k, n, abl = prof.meta_layers, prof.n_folds, ablation_backbone(prof)
    fusions = [f for f in P.fusions if f in prof.fusions] or list(P.fusions)
    return {"table1": build_table1(records, list(prof.backbones), fusions, k, n),
            "table2": build_table2(records, abl, fusions, k, n), "table3": build_table3(records, abl, k, n),
            "table4": build_table4(records, abl, prof.ablations.meta_layers, n)}


def write_profile_tables(profile: Profile | str, data_dir: Any = None, *, dataset: Any = None,
                         require_runs: bool = False) -> Path:
    """Write ``table{1,2,3,4}.{csv,md}`` of the profile's records and ``provenance.json``; return the folder.

    Args:
        profile: a Profile, a profile name or a YAML path.
        data_dir: the profile's data (it names the runs: the data fingerprint is part of a run id).
        require_runs: raise :class:`~metanet_utils.data.DataError`, writing nothing, when not one run of the
            profile on this data is complete (the ``tables`` command: other data would write empty tables).
    """
    prof = _profile(profile)
    ds = dataset if dataset is not None else profile_dataset(prof, str(data_dir) if data_dir else None)
    done, where = completeness(prof, ds), runs_dir()
    if require_runs and not done.run_ids:
        others = len(list(where.glob("*/config.json"))) if where.is_dir() else 0
        raise DataError(
            f"no complete run of profile {prof.name!r} on this data ({ds.kind}, {len(ds.df)} images, fingerprint "
            f"{ds.fingerprint}) in {where} ({others} run folder(s) there, of other profiles or other data); the "
            "data fingerprint is part of a run's id: give the --data-dir the runs were trained on. Tables not written")
    out = tables_dir()
    write_tables(profile_tables(prof, ds, load_records(where, done.run_ids)), out)
    prov = {"profile": prof.name, "data": describe(ds), "data_kind": ds.kind, "n_images": len(ds.df),
            "runs_expected": done.table1[1] + done.ablations[1], "runs_found": len(done.run_ids),
            "completeness": str(done), "backbones": list(prof.backbones), "ablation_backbone": ablation_backbone(prof),
            "caption": run_caption(prof, ds), "protocol_differences": protocol_differences(prof, ds),
            "mechanics_only": shows_mechanics_only(prof, ds), "written": time.strftime("%Y-%m-%d %H:%M:%S")}
    atomic_write_text(out / "provenance.json", json.dumps(prov, indent=2))
    return out


# --------------------------------------------------------------------------------------------------- deviations


def _image_split_leak(prof: Profile, dataset: Any) -> str:
    """Share of validation images with a same-lesion image in training under image-level folds."""
    try:
        share = lesion_leak(dataset.df, dataset.folds(prof.n_folds, "image", prof.split_seed))["share"].drop("overall")
    except (AttributeError, KeyError, ValueError):  # no data set, no lesion ids, or too few images to split
        return "37-40 % (full HAM10000, seed 0)"
    lo, hi = round(100 * share.min()), round(100 * share.max())
    return f"{lo}-{hi} % (this data set)" if lo != hi else f"{lo} % (this data set)"


def _source_row(dataset: Any) -> list[tuple]:
    try:
        with Image.open(dataset.df["path"].iloc[0]) as im:
            res = f"{im.size[0]}x{im.size[1]}"
    except (OSError, KeyError, IndexError, ValueError, AttributeError):
        return []
    return [("source image resolution", "600x450", res, res != "600x450",
             "the test copy is downscaled to 200x150" if res == "200x150" else "")]


_NOT_RECORDED = "precision not recorded"


def _precision_row(prof: Profile, records: pd.DataFrame) -> tuple:
    """What the runs computed in (``precision`` of their ``metrics.json``), else the profile's setting."""
    paper, mixed = "float32 (2019 PyTorch, presumably)", "mixed precision changes rounding, not the method"
    if not len(records):
        ours = {"auto": "bf16 autocast on a GPU, float32 on a CPU"}.get(prof.precision, prof.precision)
        return ("precision", paper, ours, prof.precision != "fp32", f"the profile's setting (no run records); {mixed}")

    def column(name: str) -> pd.Series:
        return records[name].fillna("").astype(str) if name in records else pd.Series("", index=records.index)

    device = column("device").where(~column("device").str.startswith("cpu ("), "cpu")  # "cpu (x86_64, 16 threads)"
    used = Counter(zip(column("precision_metrics").replace("", _NOT_RECORDED), device))
    ours = ", ".join(f"{p}{f' on {d}' if d else ''} ({n} run{'s' if n != 1 else ''})"
                     for (p, d), n in sorted(used.items(), key=lambda kv: (-kv[1], kv[0])))
    # a record of an older kit without its precision counts as its profile setting
    deviates = any(p != "float32" if p != _NOT_RECORDED else prof.precision != "fp32" for p, _ in used)
    return ("precision", paper, ours, deviates,
            f"from the run records (profile setting: {prof.precision})" + (f"; {mixed}" if deviates else ""))


def _setting(key: str, paper: Any, ours: Any, note: str = "", deviates: bool | None = None) -> tuple:
    """A row comparing one profile key (configs/*.yaml) with the paper's value."""
    def show(v: Any) -> str:
        return ", ".join(map(str, v)) if isinstance(v, (tuple, list)) else f"{v:g}" if isinstance(v, float) else str(v)

    return (key, show(paper), show(ours), paper != ours if deviates is None else deviates, note)


#: Where the paper is silent or the kit follows it without a setting: rows that never deviate.
_FIXED_ROWS = [
    ("loss", "cross-entropy weighted by class", "the same, weights from the training fold", False, ""),
    ("metadata", "17-d: age [0,1], sex one-hot, site one-hot; missing -> mean / most frequent",
     "the same (statistics of the data used)", False, ""),
    ("classifier head", "not stated (the last convolutional feature maps are weighted)",
     "global average pooling + one linear layer; AlexNet's fc6-fc8 and VGG19's fc6-fc7 are not used", False,
     "the paper's gate needs convolutional feature maps, which AlexNet's and VGG's fully connected layers are not"),
    ("augmentation", "random crop, both flips, brightness / contrast / saturation, rotation 'within certain "
     "ranges'", "the same with brightness / contrast / saturation x (1 ± 0.2), rotation ± 30°; each backbone's "
     "ImageNet mean / std", False, "the paper gives no ranges; these are the kit's (augment.BatchAugment defaults)"),
    ("reported model", "not stated", "last epoch (no selection on the validation fold)", False, ""),
    ("significance test", "Wilcoxon signed-rank, 'p < 0.05'", "exact and approximate Wilcoxon, pooled Wilcoxon, "
     "Nadeau-Bengio corrected t-test, Holm", False, f"exact two-sided Wilcoxon with {P.n_folds} folds cannot go "
     "below 0.0625"),
]


def deviations(profile: Profile | str, dataset: Any = None, records: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every setting of the paper's protocol beside this run's, and whether this run deviates; a setting a profile
    sets is named by its key in ``configs/*.yaml``.

    Args:
        profile: a Profile, a profile name or a YAML path.
        dataset: the profile's data set (None: the data row says unknown, and no run record is read).
        records: the profile's records (:func:`profile_records`), for the precision the runs used; None reads them.

    Returns:
        Columns ``setting, paper, this run, deviates`` (bool), ``note``.
    """
    prof = _profile(profile)
    if records is None:
        records = profile_records(prof, dataset) if dataset is not None else pd.DataFrame()
    abl, subs = ablation_backbone(prof), [b for b in prof.backbones if not paper_alias(b)]
    missing = [b for b in P.backbones if b not in set(map(paper_alias, prof.backbones))]
    rows = [
        ("profile", "-", f"{prof.name}: {prof.description}", False, ""),
        *([("data", f"all {N_IMAGES} images of HAM10000", "unknown (no dataset given)", True, "")] * (dataset is None)),
        *_core_rows(prof, dataset), *_source_row(dataset),
        _setting("backbones", _names(P.backbones), _names(prof.backbones), "; ".join(
            [f"substitutes: {_names(subs)}"] * bool(subs) + [f"not run: {_names(missing)}"] * bool(missing)),
                 deviates=bool(subs or missing)),
        _setting("ablations.backbone (Tables 2-4)", _names([P.ablation_backbone]), _names([abl])),
        _setting("split_scheme", "not stated (\"5-fold cross-validation\")", prof.split_scheme,
                 "image level stratified by class is the kit's default (as the authors' 2022 code): it lets "
                 f"{_image_split_leak(prof, dataset)} of the validation images have a same-lesion image in "
                 "training", deviates=prof.split_scheme != "image"),
        *(_setting(k, getattr(P, k), getattr(prof, k)) for k in ("milestones", "lr_gamma", "lr", "batch_size",
                                                                   "momentum", "weight_decay", "meta_layers")),
        _setting("fusions", P.fusions, prof.fusions, deviates=set(prof.fusions) != set(P.fusions)),
        _setting("ablations (Tables 3, 4)", "both", {(1, 1): "both", (1, 0): "Table 3", (0, 1): "Table 4"}.get(
            (prof.ablations.table3, prof.ablations.table4), "none")),
        _setting("color_constancy", "yes (Barata et al. 2014)", "Shades of Gray, p = 6" if prof.color_constancy else
                 "off", "the paper does not name the variant; Shades of Gray p = 6 is the kit's reading",
                 deviates=not prof.color_constancy),
        *_FIXED_ROWS, _precision_row(prof, records)]
    return pd.DataFrame([(s, str(p), str(o), bool(d), n) for s, p, o, d, n in rows],
                        columns=["setting", "paper", "this run", "deviates", "note"])


def paper_vs_code_facts() -> pd.DataFrame:
    """Where the paper, the data and the authors' released code (github fatetail/MetaNet, 2022) disagree.

    Returns:
        Columns ``topic, paper, data or authors' code, this kit``.
    """
    pc, dc = PAPER_CLASS_COUNTS, DATA_CLASS_COUNTS
    rows = [
        ("class counts", f"BKL {pc['bkl']}, VASC {pc['vasc']}", f"data: BKL {dc['bkl']}, VASC {dc['vasc']}",
         "uses the data (the paper's numbers: a misprint or another label version)"),
        ("missing metadata", "around 50-100 missing per field, filled (mean age, most frequent sex / site)",
         "data: age 57 missing, sex 57 'unknown', site 234 'unknown'; code: drops the 254 images with a "
         "missing age, sex or site", "fills them, as the paper says"),
        ("MetaNet gate", "two fully connected layers, ReLU between, sigmoid at the end",
         "code: ONE 1x1 convolution 17 -> 2048 + sigmoid", "the paper's two layers (k = 1 is the code's gate)"),
        ("folds run", "5-fold cross-validation, mean ± std", "code: fold 1 only", "all five folds"),
        ("optimiser", f"SGD momentum {P.momentum:g}, weight decay {P.weight_decay:g}, batch {P.batch_size}, "
         f"lr / 10 at {', '.join(map(str, P.milestones))}, {P.epochs} epochs",
         "code: SGD with Nesterov, weight decay 1e-5, batch 36, lr steps at 165, 220, 275", "the paper's settings"),
        ("learning rate of the new layers", f"one learning rate, {P.lr:g}",
         "code: a second SGD parameter group trains the new layers (fc1, fc3 and the classifier _fc) at 10x the "
         "base learning rate, with Nesterov momentum (trainers/trainer.py, train(); a missing comma in its list of "
         "names leaves fc2 at the base rate)", "one learning rate for every layer, as the paper says"),
        ("normalisation", "not stated", "code: dataset mean (0.668, 0.530, 0.525), std (0.189, 0.182, 0.197)",
         "each backbone's ImageNet mean / std"),
        ("colour constancy", "applied (Barata et al.)", "code: none", "Shades of Gray p = 6 (switchable)"),
        ("split", "5-fold cross-validation (unit not stated)",
         "code: stratified at image level; 38-40 % of every fold's validation images have an image of the "
         "same lesion in training", "image level (as the code); lesion-grouped folds as an option"),
        ("significance", "'p < 0.05 with Wilcoxon's Sign Rank Test' for every backbone",
         "with 5 paired folds the exact two-sided Wilcoxon p is at least 0.0625 (one-sided 0.03125, "
         "normal approximation 0.043)", "reports exact, one-sided, approximate, pooled and corrected t-tests"),
        ("CAM of the gated model", "CAM of the last feature maps (Fig. 2)",
         "gating before pooling equals gating the pooled vector: pool(F * g) = g * pool(F)",
         "computes the CAM on the gated maps F * g (Grad-CAM equals it up to a positive factor)"),
    ]
    return pd.DataFrame(rows, columns=["topic", "paper", "data or authors' code", "this kit"])


class LeakComparison(NamedTuple):
    """:func:`lesion_leak_comparison`'s answer."""

    table: pd.DataFrame  #: per backbone and fusion: both splits' n, mean, std and ``leak`` (image - lesion, points)
    note: str  #: how many runs each split has, or how to run the missing one
    share: dict[str, float]  #: per split, the share of validation images with a same-lesion image in training


LESION_HOWTO = (
    "Run the profile's Table 1 grid again with folds grouped by lesion, e.g. in Python:\n"
    "    run_grid(dataclasses.replace(prof, split_scheme='lesion'), ds, experiments=('table1',))\n"
    "or from the shell with a copy of the profile's YAML file that sets `split_scheme: lesion`:\n"
    "    python -m metanet_utils grid --profile configs/<name>_lesion.yaml\n"
    "(the run ids differ, so both splits' records live side by side in results/runs)."
)


def lesion_leak_comparison(profile: Profile | str, dataset: Any) -> LeakComparison:
    """Table 1's MCR with folds cut by image (the kit's default; the paper does not say) beside folds grouped by
    lesion; the table is empty, and the note says how to run it, until both splits have runs."""
    prof, ds = _profile(profile), dataset
    where, tables, counts, share = runs_dir(), {}, {}, {}
    for s in ("image", "lesion"):
        p = dataclasses.replace(prof, split_scheme=s)
        ids = [r.run_id for r in enumerate_runs(p, ds, ("table1",))]
        done = [i for i in ids if is_complete(where / i)]
        counts[s] = f"{len(done)}/{len(ids)}"
        tables[s] = build_table1(load_records(where, done), list(prof.backbones), prof.fusions, prof.meta_layers,
                                 prof.n_folds).set_index(["backbone", "fusion"])
        share[s] = float(lesion_leak(ds.df, ds.folds(prof.n_folds, s, prof.split_seed)).loc["overall", "share"])
    both = pd.concat({s: t[["n", "ours_mean", "ours_std"]] for s, t in tables.items()}, axis=1)
    both.columns = [f"{s}_{c.removeprefix('ours_')}" for s, c in both.columns]
    both = both[(both["image_n"] > 0) & (both["lesion_n"] > 0)].reset_index()
    both["leak"] = both["image_mean"] - both["lesion_mean"]
    if len(both):
        note = (f"image-level folds: {counts['image']} runs, lesion-grouped folds: {counts['lesion']} runs; leak = "
                "image - lesion (points of MCR): what validating on near-copies of training lesions is worth.")
    else:
        note = (f"Not run: the profile {prof.name!r} has no complete runs of both splits (image split: "
                f"{counts['image']} runs, lesion split: {counts['lesion']}).\n" + LESION_HOWTO)
    return LeakComparison(both, note, share)


# --------------------------------------------------------------------------------------------------- notebooks 05, 06


def fold_table(records: pd.DataFrame, value: str = "mcr", meta_layers: int = P.meta_layers) -> pd.DataFrame:
    """Per-fold values (%) of the Table 1 runs: rows ``backbone / fusion``, columns ``fold 0`` ..., ``mean``, ``std``
    (sample, ddof=1)."""
    df = table1_records(records, meta_layers)
    if df.empty:
        return pd.DataFrame()
    df = df.assign(row=df["backbone"].astype(str) + " / " + df["fusion"].astype(str),
                   _o=df["fusion"].map(_FUSION_ORDER))
    order = df.sort_values(["backbone", "_o"], kind="stable")["row"].drop_duplicates()
    t = df.pivot_table(index="row", columns="fold", values=value, aggfunc="first").reindex(order) * 100.0
    t.columns = [f"fold {int(c)}" for c in t.columns]
    t = t.assign(mean=t.mean(axis=1), std=t.std(axis=1, ddof=1))
    t.index.name = "backbone / fusion"
    return t


def recall_gain(records: pd.DataFrame, backbone: str, a: str = "metanet", b: str = "none",
                meta_layers: int = P.meta_layers) -> pd.DataFrame:
    """Per-class recall of ``a`` minus ``b`` (points), paired by fold, beside the paper's (SENet154, Table 2).

    Returns:
        One row per class, largest first: ``class, n, mean_diff, std_diff`` (sample std over folds), ``paper_diff``.
    """
    df = table1_records(records, meta_layers)
    df = df[df["backbone"] == backbone] if len(df) else df
    paper = paper_table2().pivot_table(index="class", columns="fusion", values="recall_mean")
    rows = []
    for code in paper_table2()["class"].drop_duplicates():
        col = f"recall_{code}"
        d = (paired_values(df.dropna(subset=[col]), a, b, value=col)["diff"].to_numpy(dtype=float) * 100.0
             if len(df) and col in df else np.zeros(0))
        rows.append({"class": code, "n": len(d), "mean_diff": d.mean() if len(d) else np.nan,
                     "std_diff": d.std(ddof=1) if len(d) > 1 else np.nan,
                     "paper_diff": paper.loc[code, a] - paper.loc[code, b] if {a, b} <= set(paper) else np.nan})
    return pd.DataFrame(rows)


def summed_confusion(records: pd.DataFrame, backbone: str, fusion: str, meta_layers: int = P.meta_layers
                     ) -> np.ndarray:
    """The 7 x 7 confusion matrix (rows the true class) of one backbone and fusion's Table 1 runs, summed over
    folds, scored from ``predictions.csv`` (ties in no column)."""
    df = table1_records(records, meta_layers)
    paths = df.loc[(df["backbone"] == backbone) & (df["fusion"] == fusion), "path"] if len(df) else []
    return sum((np.asarray(load_record(p)["scores"]["confusion_matrix"]) for p in paths),
               np.zeros((7, 7), dtype=np.int64))


def significance(records: pd.DataFrame, pairs: Sequence[tuple[str, str]] = (
        ("metanet", "none"), ("metanet", "concat"), ("concat", "none")), meta_layers: int = P.meta_layers
                 ) -> pd.DataFrame:
    """:func:`~metanet_utils.stats.compare` of the Table 1 runs for each pair of fusions present, stacked."""
    df = table1_records(records, meta_layers)
    parts = [compare(df, a, b) for a, b in pairs if len(df) and {a, b} <= set(df["fusion"])]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
