"""The report: this run's tables beside the paper's, every deviation from the paper's protocol, the facts
where the paper disagrees with the data or the authors' code, the lesion-leak comparison, and the HTML
pages of the executed notebooks.

* :func:`run_caption` -- one line saying what produced the results (data, backbones, sizes, folds x
  epochs, and whether that is the paper's protocol); :func:`protocol_differences` /
  :func:`shows_mechanics_only` -- how and how much the profile departs from the paper's protocol.
* :func:`profile_records` -- the records of one profile's runs only (the run ids
  :func:`~metanet_utils.grid.enumerate_runs` gives), never another profile's records that share
  ``results/runs``; :func:`completeness` says in one line how many of its Table 1 and ablation runs exist.
* :func:`validation_class_counts` -- the validation images of each class in each fold of this run.
* :func:`profile_tables` / :func:`write_profile_tables` -- Tables 1-4 for the profile's backbones and
  ablation backbone, written to ``results/tables/table{1,2,3,4}.{csv,md}`` (plus ``provenance.json``:
  profile, data kind, runs found).
* :func:`deviations` -- the paper's protocol, this run's settings, and whether they differ (precision and
  device as the profile's run records say, where there are any).
* :func:`paper_vs_code_facts` -- where the paper, the data and the authors' released code disagree.
* :func:`lesion_leak_comparison` -- Table 1 with folds cut by image (the kit's default) and by lesion.
* :func:`write_html_report` -- ``outputs/report.html`` and one page per executed notebook.

Example:
    >>> facts = paper_vs_code_facts()
    >>> {"topic", "paper", "data or authors' code", "this kit"} <= set(facts.columns)
    True
"""

from __future__ import annotations

import dataclasses
import html
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from .constants import DATA_CLASS_COUNTS, META_FIELDS, N_IMAGES, PAPER_CLASS_COUNTS
from .data import describe
from .stats import compare, paired_values
from .tables import paper_table2

__all__ = [
    "load_profile_any",
    "ablation_backbone",
    "run_caption",
    "protocol_differences",
    "shows_mechanics_only",
    "profile_run_ids",
    "profile_records",
    "completeness",
    "validation_class_counts",
    "profile_tables",
    "write_profile_tables",
    "deviations",
    "paper_vs_code_facts",
    "lesion_leak_comparison",
    "LESION_HOWTO",
    "table1_records",
    "fold_table",
    "recall_gain",
    "summed_confusion",
    "significance",
    "write_html_report",
]

#: The paper's protocol (Sec. 3.1-3.5), the reference of :func:`deviations`.
PAPER_PROTOCOL: dict[str, Any] = {
    "backbones": ("alexnet", "vgg19", "resnet50", "densenet161", "senet154", "pnasnet5large"),
    "ablation_backbone": "senet154",
    "n_folds": 5,
    "epochs": 250,
    "milestones": (50, 120, 200),
    "lr": 1e-3,
    "batch_size": 32,
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "meta_layers": 2,
}


# --------------------------------------------------------------------------------------------------
# The profile's records
# --------------------------------------------------------------------------------------------------


def load_profile_any(profile: Any):
    """A :class:`~metanet_utils.config.Profile` from a Profile, a profile name or a YAML path."""
    from .config import Profile, load_profile

    return profile if isinstance(profile, Profile) else load_profile(profile)


def ablation_backbone(profile: Any) -> str:
    """The backbone of Tables 2-4: ``ablations.backbone``, else the profile's last backbone (as the grid)."""
    prof = load_profile_any(profile)
    return prof.ablations.backbone or prof.backbones[-1]


#: Below these a run shows how the kit works rather than the paper's results (see :func:`shows_mechanics_only`).
MECHANICS_ONLY_BELOW: dict[str, int] = {"epochs": 25, "crop": 112, "images": 2000}


def _paper_sizes(backbone: str) -> tuple[int, int]:
    return (441, 331) if _canon(backbone) == _canon("pnasnet5large") else (300, 224)


def _profile_sizes(prof: Any) -> dict[str, tuple[int, int]]:
    """``backbone -> (resize, crop)`` as the grid trains it (the profile's sizes, else each backbone's own)."""
    from .grid import _sizes

    out = {}
    for b in prof.backbones:
        try:
            out[b] = tuple(_sizes(prof, b))
        except Exception:  # noqa: BLE001 - an unknown model name: the profile's numbers or the paper's default
            out[b] = (prof.image_size or 300, prof.crop_size or 224)
    return out


def protocol_differences(profile: Any, dataset: Any = None) -> list[str]:
    """How the profile departs from the paper's protocol where it changes what the numbers mean: the data
    (the shipped sample, a subsample), pretraining, epochs, image size, folds. Empty for the paper's protocol.

    Example:
        >>> protocol_differences("paper")
        []
        >>> protocol_differences("smoke")[:2]
        ['from scratch (the paper: ImageNet-pretrained)', '1 epoch (the paper: 250)']
    """
    prof = load_profile_any(profile)
    out = []
    if dataset is not None:
        n = len(dataset.df)
        if dataset.kind == "sample":
            out.append(f"{describe(dataset)} (the paper: all {N_IMAGES})")
        elif n < N_IMAGES:
            out.append(f"a subsample of {n} of the {N_IMAGES} images")
    if not prof.pretrained:
        out.append("from scratch (the paper: ImageNet-pretrained)")
    if prof.epochs != PAPER_PROTOCOL["epochs"]:
        out.append(f"{prof.epochs} epoch{'s' if prof.epochs != 1 else ''} (the paper: {PAPER_PROTOCOL['epochs']})")
    sizes = _profile_sizes(prof)
    off = {b: v for b, v in sizes.items() if v != _paper_sizes(b)}
    if off:
        crops = sorted({c for _, c in off.values()})
        out.append(f"{'/'.join(map(str, crops))} px crops (the paper: 224, PNASNet 331)")
    if prof.n_folds != PAPER_PROTOCOL["n_folds"] or prof.folds:
        ran = len(prof.fold_indices)
        what = f"{ran} of {prof.n_folds} folds" if ran != prof.n_folds else f"{prof.n_folds} folds"
        out.append(f"{what} (the paper: {PAPER_PROTOCOL['n_folds']})")
    return out


def shows_mechanics_only(profile: Any, dataset: Any = None) -> bool:
    """Whether the profile's numbers can only show how the kit works (the smoke and demo profiles): the small
    sample, no pretraining, fewer than 25 epochs, crops under 112 px or fewer than 2000 images
    (:data:`MECHANICS_ONLY_BELOW`). A profile that merely shortens the schedule (quick: 40 pretrained epochs)
    departs from the paper without being a mere demonstration.

    Example:
        >>> shows_mechanics_only("demo"), shows_mechanics_only("quick"), shows_mechanics_only("paper")
        (True, False, False)
    """
    prof = load_profile_any(profile)
    if dataset is not None and (dataset.kind == "sample" or len(dataset.df) < MECHANICS_ONLY_BELOW["images"]):
        return True
    if not prof.pretrained or prof.epochs < MECHANICS_ONLY_BELOW["epochs"]:
        return True
    return any(c < MECHANICS_ONLY_BELOW["crop"] for _, c in _profile_sizes(prof).values())


def run_caption(profile: Any, dataset: Any = None) -> str:
    """One line saying what produced this run's results, for figure footers and the report.

    Example (the demo profile on the shipped sample):
    ``demo profile · the shipped sample of HAM10000: 1095 images at 128x96 · resnet10t from scratch ·
    72 px → 64 px crop · 5 folds × 3 epochs · not the paper's protocol``

    Args:
        profile: a Profile, a profile name or a YAML path.
        dataset: the profile's :class:`~metanet_utils.dataset.Dataset` (None: the data part is left out).

    Example:
        >>> run_caption("paper").split(" · ")  # doctest: +NORMALIZE_WHITESPACE
        ['paper profile', "the paper's six backbones ImageNet-pretrained",
         '300 px → 224 px crop (pnasnet5large 441 → 331)', '5 folds × 250 epochs', "the paper's protocol"]
    """
    prof = load_profile_any(profile)
    parts = [f"{prof.name} profile"]
    if dataset is not None:
        parts.append(describe(dataset))
    bbs = list(prof.backbones)
    if {_canon(b) for b in bbs} == {_canon(b) for b in PAPER_PROTOCOL["backbones"]}:
        names = "the paper's six backbones"
    elif len(bbs) > 3:
        names = f"{len(bbs)} backbones"
    else:
        names = ", ".join(bbs)
    parts.append(f"{names} {'ImageNet-pretrained' if prof.pretrained else 'from scratch'}")
    sizes = _profile_sizes(prof)
    common = Counter(sizes.values()).most_common(1)[0][0]
    size = f"{common[0]} px → {common[1]} px crop"
    others = [f"{b} {r} → {c}" for b, (r, c) in sizes.items() if (r, c) != common]
    parts.append(size + (f" ({', '.join(others)})" if others else ""))
    folds = (f"{len(prof.fold_indices)} of {prof.n_folds} folds" if prof.folds else f"{prof.n_folds} folds")
    parts.append(f"{folds} × {prof.epochs} epoch{'s' if prof.epochs != 1 else ''}")
    parts.append("not the paper's protocol" if protocol_differences(prof, dataset) else "the paper's protocol")
    return " · ".join(parts)


def _dataset(profile: Any, data_dir: Any = None, dataset: Any = None):
    if dataset is not None:
        return dataset
    from .grid import profile_dataset

    return profile_dataset(load_profile_any(profile), str(data_dir) if data_dir else None)


def profile_run_ids(profile: Any, dataset: Any, experiments: Iterable[str] | None = None) -> list[str]:
    """Run ids of the profile's grid (Table 1 and the ablations it asks for)."""
    from .grid import EXPERIMENTS, enumerate_runs

    return [r.run_id for r in enumerate_runs(load_profile_any(profile), dataset, experiments or EXPERIMENTS)]


def _complete_ids(run_ids: Sequence[str], runs_dir: Path) -> list[str]:
    from .evaluate import RECORD_FILES

    return [rid for rid in run_ids if all((runs_dir / rid / f).is_file() for f in RECORD_FILES)]


def profile_records(profile: Any, dataset: Any = None, *, data_dir: Any = None, runs_dir: str | Path | None = None,
                    experiments: Iterable[str] | None = None, source: str = "predictions") -> pd.DataFrame:
    """The records of the profile's runs that are complete (one row per run, see
    :func:`~metanet_utils.evaluate.load_records`); ``attrs["expected"]`` / ``attrs["found"]`` count them,
    ``attrs["table1_expected"]`` / ``["table1_found"]`` the Table 1 runs (notebook 04) and
    ``attrs["ablations_expected"]`` / ``["ablations_found"]`` the other runs of Tables 3 and 4 (notebook 07;
    a run both tables share counts as Table 1's); ``attrs["profile"]`` and ``attrs["ablation_tables"]``
    (e.g. ``"Tables 3 and 4"``) name them for :func:`completeness`.

    Only the run ids of :func:`~metanet_utils.grid.enumerate_runs` are read, so records of other
    profiles in the same ``results/runs`` never mix in.
    """
    from .evaluate import load_records
    from .paths import runs_dir as default_runs_dir

    prof = load_profile_any(profile)
    ds = _dataset(prof, data_dir, dataset)
    runs_dir = Path(runs_dir or default_runs_dir())
    ids = profile_run_ids(prof, ds, experiments)
    done = _complete_ids(ids, runs_dir)
    df = load_records(runs_dir, run_ids=done, source=source)
    table1 = set(profile_run_ids(prof, ds, ("table1",))) if experiments is None or "table1" in experiments else set()
    done_set = set(done)
    df.attrs["expected"] = len(ids)
    df.attrs["found"] = len(done)
    df.attrs["table1_expected"] = sum(i in table1 for i in ids)
    df.attrs["table1_found"] = sum(i in table1 for i in done_set)
    df.attrs["ablations_expected"] = len(ids) - df.attrs["table1_expected"]
    df.attrs["ablations_found"] = len(done) - df.attrs["table1_found"]
    df.attrs["profile"] = prof.name
    on = [str(i) for i, asked in ((3, prof.ablations.table3), (4, prof.ablations.table4)) if asked]
    df.attrs["ablation_tables"] = f"Table{'s' if len(on) > 1 else ''} {' and '.join(on)}" if on else ""
    return df


def completeness(records: pd.DataFrame) -> str:
    """One line on how many of the profile's runs are complete, Table 1 and the ablations apart, from the
    counts :func:`profile_records` leaves in ``records.attrs``.

    Example:
        >>> df = pd.DataFrame()
        >>> df.attrs.update(profile="demo", table1_expected=30, table1_found=30, ablations_expected=65,
        ...                 ablations_found=0, ablation_tables="Tables 3 and 4")
        >>> completeness(df)
        "Profile 'demo': Table 1: 30 of 30 runs complete; ablations (Tables 3 and 4): 0 of 65, trained in notebook 07."
    """
    a = records.attrs
    if "table1_expected" not in a:  # a frame from elsewhere: the totals only
        return f"{a.get('found', len(records))} of {a.get('expected', len(records))} runs complete."
    t1 = f"Table 1: {a['table1_found']} of {a['table1_expected']} runs complete"
    if a["table1_found"] < a["table1_expected"]:
        t1 += " (notebook 04 trains them)"
    names = str(a.get("ablation_tables") or "")
    found, expected = a["ablations_found"], a["ablations_expected"]
    if not expected:
        abl = "no ablation runs in this profile" if not names else "ablation runs not counted here"
    else:
        abl = f"ablations ({names or 'Tables 3 and 4'}): {found} of {expected}"
        abl += (" complete" if found == expected else ", trained in notebook 07" if found == 0
                else ", the rest trained in notebook 07")
    who = f"Profile {a['profile']!r}: " if a.get("profile") else ""
    return f"{who}{t1}; {abl}."


def validation_class_counts(profile: Any, dataset: Any) -> pd.DataFrame:
    """Validation images of each class in each fold of the profile's split (the folds its runs use).

    Returns:
        Rows: the classes, largest first (the paper's order, upper case); columns ``fold 0`` ... and
        ``recall step (points)``: what one image of the class moves its recall in its smallest fold
        (100 / count). ``attrs["note"]``: one sentence on the smallest class.
    """
    from .constants import PAPER_ORDER

    prof = load_profile_any(profile)
    folds = np.asarray(dataset.folds(prof.n_folds, prof.split_scheme, prof.split_seed))
    dx = dataset.df["dx"].astype(str).str.lower().to_numpy()
    order = list(PAPER_ORDER)
    table = pd.DataFrame({f"fold {f}": [int(((folds == f) & (dx == c)).sum()) for c in order]
                          for f in prof.fold_indices}, index=[c.upper() for c in order])
    table.index.name = "class"
    smallest = table.min(axis=1)
    table["recall step (points)"] = [round(100.0 / m, 1) if m else float("nan") for m in smallest]
    # the class with the fewest images in a fold (ties: the fewest in all)
    rare = min(table.index, key=lambda c: (smallest[c], table.loc[c].iloc[:-1].sum()))
    lo, hi = int(table.loc[rare].iloc[:-1].min()), int(table.loc[rare].iloc[:-1].max())
    many = f"{lo}" if lo == hi else f"{lo}-{hi}"
    step = f"{100.0 / hi:.0f}" if lo == hi else f"{100.0 / hi:.0f}-{100.0 / lo:.0f}"
    table.attrs["note"] = (
        f"This run's smallest class, {rare}, has {many} validation image{'s' if hi != 1 else ''} per fold "
        f"({len(dataset.df)} images in all, {prof.n_folds} folds): one image more or less right moves its "
        + (f"recall by {step} points." if lo else "recall a lot, and a fold without it has no recall at all."))
    return table


def profile_tables(profile: Any, dataset: Any = None, records: pd.DataFrame | None = None, *,
                   data_dir: Any = None, runs_dir: str | Path | None = None) -> dict[str, pd.DataFrame]:
    """Tables 1-4 of the profile: its backbones in Table 1, its ablation backbone in Tables 2-4,
    its metadata depth for the MetaNet runs."""
    from .tables import build_table1, build_table2, build_table3, build_table4

    prof = load_profile_any(profile)
    if records is None:
        records = profile_records(prof, dataset, data_dir=data_dir, runs_dir=runs_dir)
    k = int(prof.meta_layers)
    layers = {"none": 0, "concat": 0, "metanet": k, "metablock": 1}
    abl = ablation_backbone(prof)
    fusions = [f for f in ("none", "concat", "metanet") if f in prof.fusions] or ["none", "concat", "metanet"]
    return {
        "table1": build_table1(records, backbones=list(prof.backbones), fusions=fusions, meta_layers=layers,
                               n_folds=prof.n_folds),
        "table2": build_table2(records, abl, fusions=fusions, meta_layers=layers, n_folds=prof.n_folds),
        "table3": build_table3(records, abl, meta_layers=k, n_folds=prof.n_folds),
        "table4": build_table4(records, abl, meta_layers=tuple(prof.ablations.meta_layers), n_folds=prof.n_folds),
    }


def write_profile_tables(profile: Any, data_dir: Any = None, *, dataset: Any = None,
                         runs_dir: str | Path | None = None, out_dir: str | Path | None = None,
                         require_runs: bool = False) -> Path:
    """Write ``table{1,2,3,4}.{csv,md}`` of the profile's records and ``provenance.json``; return the folder.

    Args:
        profile: a Profile, a profile name or a YAML path.
        data_dir: where the profile's data is (needed to name its runs: the data fingerprint is part
            of a run's id); ignored when ``dataset`` is given.
        runs_dir: records folder (default ``results/runs``); out_dir: default ``results/tables``.
        require_runs: raise :class:`~metanet_utils.data.DataError`, writing nothing, when not one run of
            the profile on this data is complete (``tables`` on the command line: other data than the
            runs were trained on would otherwise replace the tables with empty ones).
    """
    from .paths import runs_dir as default_runs_dir
    from .paths import tables_dir
    from .tables import write_tables

    prof = load_profile_any(profile)
    ds = _dataset(prof, data_dir, dataset)
    records = profile_records(prof, ds, runs_dir=runs_dir)
    if require_runs and not records.attrs.get("found"):
        from .data import DataError

        where = Path(runs_dir or default_runs_dir())
        others = sum(1 for p in where.glob("*/config.json")) if where.is_dir() else 0
        raise DataError(
            f"no complete run of profile {prof.name!r} on this data ({ds.kind}, {len(ds.df)} images, fingerprint "
            f"{ds.fingerprint}) in {where} ({others} run folder(s) there, of other profiles or other data); the "
            "data fingerprint is part of a run's id: give the --data-dir the runs were trained on. Tables not written")
    tabs = profile_tables(prof, ds, records)
    out = Path(out_dir or tables_dir())
    write_tables(tabs, out)
    kinds = sorted(set(records["data_kind"].dropna().astype(str))) if len(records) else []
    prov = {"profile": prof.name, "data": describe(ds), "data_kind": ds.kind, "run_data_kinds": kinds, "n_images": int(len(ds.df)),
            "runs_expected": records.attrs.get("expected"), "runs_found": records.attrs.get("found"),
            "backbones": list(prof.backbones), "ablation_backbone": ablation_backbone(prof),
            "completeness": completeness(records),
            "caption": run_caption(prof, ds), "protocol_differences": protocol_differences(prof, ds),
            "mechanics_only": shows_mechanics_only(prof, ds),
            "written": time.strftime("%Y-%m-%d %H:%M:%S")}
    from .atomic import atomic_write_text

    atomic_write_text(out / "provenance.json", json.dumps(prov, indent=2))
    return out


# --------------------------------------------------------------------------------------------------
# Deviations and facts
# --------------------------------------------------------------------------------------------------


def _source_resolution(dataset: Any) -> str | None:
    try:
        from PIL import Image

        path = dataset.df["path"].iloc[0]
        with Image.open(path) as im:
            return f"{im.size[0]}x{im.size[1]}"
    except Exception:  # noqa: BLE001 - informative only
        return None


def deviations(profile: Any, dataset: Any = None, only: bool = False, *, records: pd.DataFrame | None = None,
               runs_dir: str | Path | None = None) -> pd.DataFrame:
    """Every setting of the paper's protocol beside this run's, and whether this run deviates.

    The precision row says what the runs used (``precision`` and ``device`` of their ``metrics.json``,
    e.g. "bfloat16 on NVIDIA H100 80GB HBM3 (12 runs), float32 on cpu (3 runs)"); without any run
    record it gives the profile's setting.

    Args:
        profile: a Profile, a profile name or a YAML path.
        dataset: the profile's :class:`~metanet_utils.dataset.Dataset` (None: data rows say unknown, and no
            run record is read, since the data names the runs).
        only: keep the deviating rows only.
        records: the profile's records (:func:`profile_records`; its ``path`` column is read); None reads
            the profile's complete runs in ``runs_dir``.
        runs_dir: records folder (default ``results/runs``).

    Returns:
        Columns ``setting, paper, this run, deviates`` (bool), ``note``.
    """
    from .models import display_name

    prof = load_profile_any(profile)
    rows: list[dict[str, Any]] = []

    def add(setting: str, paper: Any, ours: Any, deviates: bool, note: str = "") -> None:
        rows.append({"setting": setting, "paper": str(paper), "this run": str(ours), "deviates": bool(deviates),
                     "note": note})

    add("profile", "-", f"{prof.name}: {prof.description}", False)
    # data
    if dataset is None:
        add("data", f"HAM10000 / ISIC 2018 Task 3 training set, {N_IMAGES} images", "unknown (no dataset given)",
            True)
    else:
        n = len(dataset.df)
        note = ("real images, downscaled, too few for the paper's claims" if dataset.kind == "sample" else
                ("stratified subsample (whole lesions)" if n < N_IMAGES else ""))
        add("data", f"HAM10000 / ISIC 2018 Task 3 training set, {N_IMAGES} images", describe(dataset),
            n != N_IMAGES, note)
        res = _source_resolution(dataset)
        if res:
            add("source image resolution", "600x450", res, res != "600x450",
                "the test copy is downscaled to 200x150" if res == "200x150" else "")
    # backbones and sizes
    paper_bb = PAPER_PROTOCOL["backbones"]
    ours_bb = tuple(prof.backbones)
    add("backbones", ", ".join(display_name(b) for b in paper_bb),
        ", ".join(_safe_display(b) for b in ours_bb),
        {_canon(b) for b in ours_bb} != {_canon(b) for b in paper_bb}, _substitution_note(ours_bb))
    add("ablation backbone (Tables 2-4)", "SENet154", _safe_display(ablation_backbone(prof)),
        _canon(ablation_backbone(prof)) != _canon("senet154"))
    sizes = _profile_sizes(prof)
    add("image size (resize -> crop)", "300 -> 224 (PNASNet 441 -> 331)",
        "; ".join(f"{_safe_display(b)} {r}->{c}" for b, (r, c) in sizes.items()),
        any(v != _paper_sizes(b) for b, v in sizes.items()))
    add("pretrained", "ImageNet", "ImageNet (timm / torchvision weights)" if prof.pretrained else
        "no: random initialisation", not prof.pretrained,
        "pinned timm tags closest to 2019 weights (torchvision originals, Cadene's SENet154, TF PNASNet)"
        if prof.pretrained else "accuracy far below the paper's is expected")
    # protocol
    folds = f"{prof.n_folds}" + (f" (only folds {', '.join(map(str, prof.folds))} run)" if prof.folds else "")
    add("cross-validation folds", 5, folds, prof.n_folds != 5 or bool(prof.folds))
    add("split", "5-fold cross-validation (unit not stated)", f"{prof.split_scheme} level" +
        (" (no lesion in two folds)" if prof.split_scheme == "lesion" else ", stratified by class"),
        prof.split_scheme != "image",
        "image level stratified by class is the kit's default (as the authors' 2022 code); image-level folds "
        f"let {_image_split_leak(prof, dataset)} of the validation images have a same-lesion image in training")
    add("epochs", 250, prof.epochs, prof.epochs != 250)
    unreached = [m for m in prof.milestones if m >= prof.epochs]
    add("lr schedule", "lr / 10 at epochs 50, 120, 200", f"lr x {prof.lr_gamma:g} at epochs "
        + ", ".join(map(str, prof.milestones)), tuple(prof.milestones) != (50, 120, 200) or prof.lr_gamma != 0.1,
        f"milestones {unreached} are never reached in {prof.epochs} epochs" if unreached else "")
    add("optimiser", "SGD, lr 0.001, momentum 0.9, weight decay 1e-4, batch 32",
        f"SGD, lr {prof.lr:g}, momentum {prof.momentum:g}, weight decay {prof.weight_decay:g}, batch {prof.batch_size}",
        (prof.lr, prof.momentum, prof.weight_decay, prof.batch_size) != (1e-3, 0.9, 1e-4, 32))
    add("loss", "cross-entropy weighted by class", "cross-entropy weighted by class (inverse frequency of the "
        "training fold)", False)
    add("colour constancy", "yes (Barata et al. 2014)", "Shades of Gray, p = 6" if prof.color_constancy else "off",
        not prof.color_constancy,
        "the paper does not name the variant; Shades of Gray p = 6 is the kit's reading of Barata et al.")
    add("metadata", "17-d: age [0,1], sex one-hot, site one-hot; missing -> mean / most frequent",
        "same (statistics of the data used)", False)
    add("MetaNet gate", "2 fully connected layers (ReLU, sigmoid)", f"{prof.meta_layers} fully connected layer(s)",
        prof.meta_layers != 2)
    add("classifier head", "not stated (the last convolutional feature maps are weighted)",
        "global average pooling + one linear layer; AlexNet's fc6-fc8 and VGG19's fc6-fc7 are not used", False,
        "the paper is silent; its gate needs convolutional feature maps, which AlexNet's and VGG's fully "
        "connected layers are not")
    add("augmentation", "random crop, horizontal and vertical flips, brightness / contrast / saturation, "
        "rotation 'within certain ranges'", "random crop, both flips, brightness / contrast / saturation "
        "x (1 ± 0.2), rotation ± 30°; each backbone's ImageNet mean / std", False,
        "the paper gives no ranges; these are the kit's (augment.BatchAugment defaults)")
    add("fusions", "none, concat, metanet", ", ".join(prof.fusions),
        set(prof.fusions) != {"none", "concat", "metanet"})
    add("ablations", "Table 3 (metadata subsets), Table 4 (1-4 layers)",
        ", ".join(n for n, on in (("Table 3", prof.ablations.table3), ("Table 4", prof.ablations.table4)) if on)
        or "not run", not (prof.ablations.table3 and prof.ablations.table4))
    used = _precisions_used(prof, dataset, records, runs_dir)
    mixed = "mixed precision changes rounding, not the method"
    if used:  # what the runs used; a record without its precision (older kit) counts as its profile setting
        dev_prec = any((p != "float32") if p != _NOT_RECORDED else (prof.precision != "fp32") for p, _ in used)
        ours, note = _precision_summary(used), f"from the run records (profile setting: {prof.precision})"
        note += f"; {mixed}" if dev_prec else ""
    else:
        dev_prec = prof.precision != "fp32"
        ours = {"auto": "bf16 autocast on a GPU, float32 on a CPU"}.get(prof.precision, prof.precision)
        note = f"the profile's setting (no run records read); {mixed}"
    add("precision", "float32 (2019 PyTorch, presumably)", ours, dev_prec, note)
    add("reported model", "not stated", "last epoch (no selection on the validation fold)", False)
    add("significance test", "Wilcoxon signed-rank, 'p < 0.05'", "exact and approximate Wilcoxon, pooled "
        "Wilcoxon, Nadeau-Bengio corrected t-test, Holm", False,
        "exact two-sided Wilcoxon with 5 folds cannot go below 0.0625")
    out = pd.DataFrame(rows, columns=["setting", "paper", "this run", "deviates", "note"])
    return out[out["deviates"]].reset_index(drop=True) if only else out


def _image_split_leak(prof: Any, dataset: Any) -> str:
    """Share of validation images with a same-lesion image in training under image-level folds: measured
    on ``dataset`` (range over the folds), or the full HAM10000's figure without a data set."""
    full = "37-40 % (full HAM10000, seed 0)"
    if dataset is None or "lesion_id" not in getattr(dataset, "df", pd.DataFrame()).columns:
        return full
    from .splits import lesion_leak

    try:  # the folds file the image-split runs use (made and saved once)
        share = lesion_leak(dataset.df, dataset.folds(prof.n_folds, "image", prof.split_seed))["share"]
    except Exception:  # noqa: BLE001 - informative only: a data set too small to split
        return full
    lo, hi = 100 * share.drop("overall").min(), 100 * share.drop("overall").max()
    return f"{lo:.0f}-{hi:.0f} % (this data set)" if round(lo) != round(hi) else f"{lo:.0f} % (this data set)"


_NOT_RECORDED = "precision not recorded"


def _precisions_used(prof: Any, dataset: Any, records: pd.DataFrame | None,
                     runs_dir: str | Path | None) -> list[tuple[str, str]]:
    """``(precision, device)`` of each run record: those of ``records``, else the profile's complete runs in
    ``runs_dir`` (none without a dataset, which names the runs). A CPU's details are dropped (``cpu``)."""
    if records is not None:
        folders = [Path(p) for p in records["path"].dropna()] if "path" in records else []
    elif dataset is not None:
        from .paths import runs_dir as default_runs_dir

        where = Path(runs_dir or default_runs_dir())
        folders = [where / rid for rid in _complete_ids(profile_run_ids(prof, dataset), where)]
    else:
        return []
    used = []
    for folder in folders:
        try:
            m = json.loads((folder / "metrics.json").read_text())
        except (OSError, ValueError):
            continue
        device = str(m.get("device") or "")
        device = "cpu" if device.startswith("cpu (") else device  # "cpu (x86_64, 16 threads)"
        used.append((str(m.get("precision") or _NOT_RECORDED), device))
    return used


def _precision_summary(used: Sequence[tuple[str, str]]) -> str:
    """``"bfloat16 on NVIDIA H100 (12 runs), float32 on cpu (3 runs)"``: most runs first."""
    counts = Counter(used)
    return ", ".join(f"{p}{f' on {d}' if d else ''} ({n} run{'s' if n != 1 else ''})"
                     for (p, d), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _canon(b: str) -> str:
    from .models import resolve_backbone

    try:
        return resolve_backbone(b).split(".")[0]
    except Exception:  # noqa: BLE001
        return str(b)


def _safe_display(b: str) -> str:
    from .models import display_name

    try:
        return display_name(b)
    except Exception:  # noqa: BLE001
        return str(b)


def _substitution_note(backbones: Sequence[str]) -> str:
    paper = {_canon(b) for b in PAPER_PROTOCOL["backbones"]}
    subs = [_safe_display(b) for b in backbones if _canon(b) not in paper]
    missing = [_safe_display(b) for b in PAPER_PROTOCOL["backbones"] if _canon(b) not in {_canon(x) for x in backbones}]
    parts = []
    if subs:
        parts.append(f"substitutes: {', '.join(subs)}")
    if missing:
        parts.append(f"not run: {', '.join(missing)}")
    return "; ".join(parts)


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
        ("optimiser", "SGD momentum 0.9, weight decay 1e-4, batch 32, lr / 10 at 50, 120, 200, 250 epochs",
         "code: SGD with Nesterov, weight decay 1e-5, batch 36, lr steps at 165, 220, 275",
         "the paper's settings"),
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


LESION_HOWTO = (
    "Run the profile's Table 1 grid again with folds grouped by lesion, e.g. in Python:\n"
    "    run_grid(dataclasses.replace(prof, split_scheme='lesion'), ds, experiments=('table1',))\n"
    "or from the shell with a copy of the profile's YAML file that sets `split_scheme: lesion`:\n"
    "    python -m metanet_utils grid --profile configs/<name>_lesion.yaml\n"
    "(the run ids differ, so both splits' records live side by side in results/runs)."
)


def lesion_leak_comparison(profile: Any, dataset: Any = None, *, data_dir: Any = None,
                           runs_dir: str | Path | None = None) -> pd.DataFrame:
    """Table 1 MCR with folds cut by image (the kit's default; the paper does not say) beside folds grouped by lesion.

    Returns:
        One row per (backbone, fusion) with both splits' runs: ``backbone, fusion, image_n,
        image_mean, image_std, lesion_n, lesion_mean, lesion_std, leak`` (image - lesion, points of MCR)
        and, when the data set is given, ``attrs["leak_share"]``: the share of validation images with a
        same-lesion image in training under each split. When one split has no runs the frame is empty and
        ``attrs["note"]`` says how to run it (:data:`LESION_HOWTO`).
    """
    from .grid import enumerate_runs
    from .evaluate import aggregate, load_records
    from .paths import runs_dir as default_runs_dir

    prof = load_profile_any(profile)
    ds = _dataset(prof, data_dir, dataset)
    runs_dir = Path(runs_dir or default_runs_dir())
    frames = {}
    counts = {}
    for scheme in ("image", "lesion"):
        p = dataclasses.replace(prof, split_scheme=scheme)
        ids = [r.run_id for r in enumerate_runs(p, ds, ("table1",))]
        done = _complete_ids(ids, runs_dir)
        counts[scheme] = (len(done), len(ids))
        frames[scheme] = load_records(runs_dir, run_ids=done) if done else pd.DataFrame()
    cols = ["backbone", "fusion", *(f"{s}_{v}" for s in ("image", "lesion") for v in ("n", "mean", "std")), "leak"]
    out = pd.DataFrame(columns=cols)
    if all(len(f) for f in frames.values()):
        parts = []
        for scheme, f in frames.items():
            agg = aggregate(f, by=["backbone", "fusion"], values=["mcr"])
            parts.append(agg[["backbone", "fusion", "n", "mcr_mean", "mcr_std"]].rename(columns={
                "n": f"{scheme}_n", "mcr_mean": f"{scheme}_mean", "mcr_std": f"{scheme}_std"}))
        out = parts[0].merge(parts[1], on=["backbone", "fusion"], how="inner")
        for c in ("image_mean", "image_std", "lesion_mean", "lesion_std"):
            out[c] = out[c] * 100.0
        out["leak"] = out["image_mean"] - out["lesion_mean"]
        order = {f: i for i, f in enumerate(("none", "concat", "metanet", "metablock"))}
        out = out.sort_values(["backbone", "fusion"], key=lambda s: s.map(order) if s.name == "fusion" else s,
                              kind="stable").reset_index(drop=True)[cols]
        out.attrs["note"] = (f"image-level folds: {counts['image'][0]}/{counts['image'][1]} runs, lesion-grouped "
                             f"folds: {counts['lesion'][0]}/{counts['lesion'][1]} runs; leak = image - lesion "
                             "(points of MCR): what validating on near-copies of training lesions is worth.")
    else:
        missing = [s for s in ("image", "lesion") if not len(frames[s])]
        out.attrs["note"] = (f"Not run: no complete {' or '.join(missing)}-split runs of profile {prof.name!r} "
                             f"(image split: {counts['image'][0]}/{counts['image'][1]} runs, lesion split: "
                             f"{counts['lesion'][0]}/{counts['lesion'][1]}).\n" + LESION_HOWTO)
    try:
        from .splits import lesion_leak

        share = {s: float(lesion_leak(ds.df, ds.folds(prof.n_folds, s, prof.split_seed)).loc["overall", "share"])
                 for s in ("image", "lesion")}
        out.attrs["leak_share"] = share
    except Exception:  # noqa: BLE001 - informative only
        pass
    return out


# --------------------------------------------------------------------------------------------------
# Analysis helpers of notebooks 05 and 06
# --------------------------------------------------------------------------------------------------

_FUSION_ORDER = {"none": 0, "concat": 1, "metanet": 2, "metablock": 3}


def table1_records(records: pd.DataFrame, meta_layers: int = 2) -> pd.DataFrame:
    """The Table 1 runs of a records frame: ``none``, ``concat`` on the raw metadata (k = 0) and
    ``metanet`` with ``meta_layers`` layers, all metadata fields (one run per backbone, fusion, fold)."""
    if records is None or len(records) == 0 or "fusion" not in records.columns:
        return pd.DataFrame(columns=list(records.columns) if records is not None else [])
    all_meta = "+".join(META_FIELDS)
    k = pd.to_numeric(records["meta_layers"], errors="coerce")
    keep = ((records["fusion"] == "none")
            | ((records["fusion"] == "concat") & (k == 0) & (records["meta_features"] == all_meta))
            | ((records["fusion"] == "metanet") & (k == int(meta_layers)) & (records["meta_features"] == all_meta)))
    return records[keep].reset_index(drop=True)


def fold_table(records: pd.DataFrame, value: str = "mcr", meta_layers: int = 2) -> pd.DataFrame:
    """Per-fold values (in %) of the Table 1 runs: rows ``backbone / fusion``, columns ``fold 0`` ...,
    then ``mean`` and ``std`` (sample, ddof=1)."""
    df = table1_records(records, meta_layers)
    if df.empty:
        return pd.DataFrame()
    df = df.assign(row=df["backbone"].astype(str) + " / " + df["fusion"].astype(str),
                   _o=df["fusion"].map(_FUSION_ORDER).fillna(9))
    order = df.sort_values(["backbone", "_o"], kind="stable")["row"].drop_duplicates().tolist()
    t = df.pivot_table(index="row", columns="fold", values=value, aggfunc="first").reindex(order) * 100.0
    t.columns = [f"fold {int(c)}" for c in t.columns]
    t["mean"] = t.mean(axis=1)
    t["std"] = t.drop(columns="mean").std(axis=1, ddof=1)
    t.index.name = "backbone / fusion"
    return t


def recall_gain(records: pd.DataFrame, backbone: str, a: str = "metanet", b: str = "none",
                meta_layers: int = 2) -> pd.DataFrame:
    """Per-class recall of ``a`` minus ``b`` (points), paired by fold, beside the paper's (SENet154).

    Returns:
        One row per class in the paper's order (largest first): ``class, n, mean_diff, std_diff``
        (sample std over folds), ``paper_diff`` (the paper's Table 2, ``a`` - ``b``).
    """
    df = table1_records(records, meta_layers)
    df = df[df["backbone"] == backbone] if len(df) else df
    paper = paper_table2().pivot_table(index="class", columns="fusion", values="recall_mean")
    rows = []
    for code in paper_table2()["class"].drop_duplicates():
        col = f"recall_{code}"
        n, mean, std = 0, float("nan"), float("nan")
        if len(df) and col in df.columns:
            pairs = paired_values(df.dropna(subset=[col]), a, b, value=col)
            d = pairs["diff"].to_numpy(dtype=float) * 100.0
            n = int(len(d))
            mean = float(d.mean()) if n else float("nan")
            std = float(d.std(ddof=1)) if n > 1 else float("nan")
        pd_ = float(paper.loc[code, a] - paper.loc[code, b]) if a in paper and b in paper else float("nan")
        rows.append({"class": code, "n": n, "mean_diff": mean, "std_diff": std, "paper_diff": pd_})
    return pd.DataFrame(rows)


def summed_confusion(records: pd.DataFrame, backbone: str, fusion: str, meta_layers: int = 2) -> np.ndarray:
    """The 7 x 7 confusion matrix (official class order) of the Table 1 runs of one backbone and fusion,
    summed over folds (rows = true class); scored from ``predictions.csv`` (ties in no column)."""
    from .evaluate import load_record

    df = table1_records(records, meta_layers)
    total = np.zeros((7, 7), dtype=np.int64)
    if df.empty:
        return total
    for path in df[(df["backbone"] == backbone) & (df["fusion"] == fusion)]["path"]:
        total += np.asarray(load_record(path)["scores"]["confusion_matrix"], dtype=np.int64)
    return total


def significance(records: pd.DataFrame, pairs: Sequence[tuple[str, str]] = (("metanet", "none"),
                                                                           ("metanet", "concat"),
                                                                           ("concat", "none")),
                 meta_layers: int = 2) -> pd.DataFrame:
    """:func:`~metanet_utils.stats.compare` of the Table 1 runs for each pair of fusions, stacked.

    Per backbone and pooled over backbones: exact two-sided, exact one-sided and approximate Wilcoxon
    p-values, the Nadeau-Bengio corrected t-test, their Holm adjustments over backbones, and the smallest
    exact two-sided p attainable with that many folds. Pairs of fusions without runs are left out.
    """
    df = table1_records(records, meta_layers)
    parts = [compare(df, a, b) for a, b in pairs if len(df) and {a, b} <= set(df["fusion"])]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


# --------------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; max-width: 70rem; margin: 2rem auto;
       padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { margin-bottom: .2rem; } .sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; font-size: .9rem; margin: 1rem 0; }
th, td { border: 1px solid #ccc; padding: .25rem .6rem; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
.warn { background: #fdd; border: 3px solid #c00; color: #900; padding: .8rem 1rem; font-weight: bold;
        font-size: 1.1rem; margin: 1rem 0; }
.caution { background: #fff4d6; border: 3px solid #c80; color: #630; padding: .8rem 1rem; margin: 1rem 0; }
.caution b { font-size: 1.1rem; } .caption { font-family: ui-monospace, monospace; font-size: .85rem; }
.note { color: #555; font-size: .9rem; } li { margin: .2rem 0; }
"""


def _notebook_title(nb: Any, fallback: str) -> str:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
            break
    return fallback


def _headline_table(tables: Path) -> str:
    """Table 1 of ``tables`` as HTML; where the paper used none of the backbones, this run's columns only, a
    sentence saying so and the paper's own Table 1 beside it (not a column of dashes)."""
    from .tables import format_table, paper_has_none, paper_table1_wide, table1_paper_note

    csv = tables / "table1.csv"
    md = tables / "table1.md"
    if csv.is_file():
        try:
            df = pd.read_csv(csv)
            view = format_table(df)
            note = table1_paper_note(df)
            none_in_paper = paper_has_none(df)
            cols = ("backbone", "fusion", "ours", "n") if none_in_paper else \
                ("backbone", "paper_backbone", "fusion", "ours", "n", "paper", "diff")
            ours = view[[c for c in cols if c in view]].to_html(index=False, na_rep="—", border=0, escape=True)
            if not none_in_paper:
                return ours + (f"<p class='note'>{html.escape(note)}</p>" if note else "")
            paper = paper_table1_wide().to_html(index=False, border=0, escape=True)
            return (f"<p>{html.escape(note)}</p>"
                    "<div style='display:flex; gap:2rem; flex-wrap:wrap; align-items:flex-start'>"
                    f"<div><h3>This run</h3>{ours}</div>"
                    f"<div><h3>The paper's Table 1 (its backbones, MCR %)</h3>{paper}</div></div>")
        except Exception:  # noqa: BLE001 - fall back to the Markdown text
            pass
    if md.is_file():
        return f"<pre>{html.escape(md.read_text())}</pre>"
    return "<p class='note'>No Table 1 yet: run notebook 09 (or <code>python -m metanet_utils tables</code>).</p>"


def _protocol_box(prov: dict[str, Any]) -> str:
    """The warning for a run that is not the paper's protocol (from ``provenance.json``), else ""."""
    diffs = [str(d) for d in prov.get("protocol_differences") or []]
    caption = str(prov.get("caption") or "")
    if not diffs and not prov.get("mechanics_only"):
        return ""
    line = f"<p class='caption'>{html.escape(caption)}</p>" if caption else ""
    listed = ("<p>Where it departs from the paper: " + html.escape("; ".join(diffs)) + ".</p>") if diffs else ""
    if prov.get("mechanics_only"):
        return ("<div class='warn'>NOT THE PAPER'S PROTOCOL: these numbers show how the kit works, not the "
                f"paper's results.{line}<div style='font-weight:normal; font-size:.95rem'>{listed}"
                "<p>Run the <code>quick</code> or <code>paper</code> profile for numbers to compare with the "
                "paper's.</p></div></div>")
    return ("<div class='caution'><b>Not exactly the paper's protocol.</b> These numbers approximate the paper's "
            f"setting; compare them with care.{line}{listed}</div>")


def write_html_report(executed_dir: str | Path, out_html: str | Path, *, tables_dir: str | Path | None = None) -> Path:
    """The HTML report: one page per executed notebook (code hidden) and an index page.

    Args:
        executed_dir: folder of executed notebooks (``outputs/notebooks``); all ``*.ipynb``, sorted.
        out_html: the index page (``outputs/report.html``); the notebook pages go to
            ``<its folder>/report/<notebook>.html``.
        tables_dir: where ``table1.csv`` / ``.md`` and ``provenance.json`` are (default ``results/tables``).

    Where the tables' ``provenance.json`` says the profile is not the paper's protocol, a box under the title says
    so with :func:`run_caption` and :func:`protocol_differences` (red for a mere demonstration such as the smoke
    and demo profiles, amber for a shortened protocol such as quick).

    Returns:
        The path of the index page.
    """
    import nbformat
    from nbconvert import HTMLExporter

    from .paths import tables_dir as default_tables_dir

    executed_dir, out_html = Path(executed_dir), Path(out_html)
    tables = Path(tables_dir or default_tables_dir())
    pages_dir = out_html.parent / "report"
    pages_dir.mkdir(parents=True, exist_ok=True)
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    entries = []
    for path in sorted(executed_dir.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        title = _notebook_title(nb, path.stem)
        body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title}})
        page = pages_dir / f"{path.stem}.html"
        page.write_text(body, encoding="utf-8")
        entries.append((path.stem, title, page))
    prov: dict[str, Any] = {}
    if (tables / "provenance.json").is_file():
        try:
            prov = json.loads((tables / "provenance.json").read_text())
        except ValueError:
            prov = {}
    parts = ["<!doctype html><html><head><meta charset='utf-8'>",
             "<title>MetaNet reproduction report</title>", f"<style>{_CSS}</style></head><body>",
             "<h1>MetaNet reproduction report</h1>",
             "<p class='sub'>Li, Zhuang, Wang, Zhang, Zheng: <i>Fusing metadata and dermoscopy images for skin "
             "disease diagnosis</i>, ISBI 2020. Generated " + html.escape(time.strftime("%Y-%m-%d %H:%M")) +
             (f", profile <b>{html.escape(str(prov['profile']))}</b>" if prov.get("profile") else "") + ".</p>"]
    parts.append(_protocol_box(prov))
    parts.append("<h2>Table 1: mean class recall (%), ours beside the paper's</h2>")
    parts.append(_headline_table(tables))
    if prov:
        runs = prov.get("completeness") or (f"{prov.get('runs_found')} of {prov.get('runs_expected')} runs of "
                                            "the profile complete.")
        parts.append(f"<p class='note'>{html.escape(str(runs))} Data: "
                     f"{html.escape(str(prov.get('data') or prov.get('n_images')))}. "
                     "All four tables: <code>results/tables/</code>; every deviation from the paper's protocol: "
                     "the 09 report notebook.</p>")
    parts.append("<h2>Notebooks</h2><ol>")
    for stem, title, page in entries:
        rel = page.relative_to(out_html.parent).as_posix()
        parts.append(f"<li><a href='{html.escape(rel)}'>{html.escape(title)}</a> "
                     f"<span class='note'>({html.escape(stem)})</span></li>")
    parts.append("</ol>")
    if not entries:
        parts.append(f"<p class='note'>No executed notebooks in {html.escape(str(executed_dir))}.</p>")
    parts.append("</body></html>")
    out_html.parent.mkdir(parents=True, exist_ok=True)
    from .atomic import atomic_write_text

    atomic_write_text(out_html, "\n".join(parts))
    return out_html
