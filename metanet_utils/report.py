"""The report: a profile's tables beside the paper's, its runs' completeness, the caption of every figure and every
deviation from the paper's protocol (notebook 09).

Example:
    >>> from metanet_utils.config import load_profile
    >>> run_caption(load_profile("paper")).split(" · ")  # doctest: +NORMALIZE_WHITESPACE
    ['paper profile', "the paper's six backbones ImageNet-pretrained",
     '300 px → 224 px crop (pnasnet5large 441 → 331)', '5 folds × 250 epochs', "the paper's protocol"]
    >>> protocol_differences(load_profile("smoke"))[:2]
    ['from scratch (the paper: ImageNet-pretrained)', '1 epoch (the paper: 250 epochs)']
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import pandas as pd
from PIL import Image

from .atomic import atomic_write_text
from .config import Profile
from .constants import BACKBONES, N_IMAGES, PAPER_PROTOCOL
from .data import DataError, describe
from .dataset import profile_dataset
from .evaluate import is_complete, load_records
from .paths import runs_dir, tables_dir
from .runs import enumerate_runs, image_sizes
from .splits import lesion_leak
from .tables import build_table1, build_table2, build_table3, build_table4, paper_alias, paper_backbone, write_tables

P = PAPER_PROTOCOL


def ablation_backbone(prof: Profile) -> str:
    """The backbone of Tables 2-4: ``ablations.backbone``, else the profile's last backbone."""
    return prof.ablations.backbone or prof.backbones[-1]


def _paper_size(backbone: str) -> tuple[int, int]:
    b = BACKBONES[paper_alias(backbone) or P.ablation_backbone]
    return b.resize, b.crop


def _sizes_of(prof: Profile) -> dict[str, tuple[int, int]]:
    out = {}
    for b in prof.backbones:
        try:
            out[b] = tuple(image_sizes(prof, b))
        except ValueError:
            out[b] = (prof.image_size or _paper_size(b)[0], prof.crop_size or _paper_size(b)[1])
    return out


def _names(backbones: Sequence[str]) -> str:
    return ", ".join(paper_backbone(b) or str(b) for b in backbones)


def _epochs(n: int) -> str:
    return f"{n} epoch{'s' if n != 1 else ''}"


def _core_rows(prof: Profile, dataset: Any) -> list[tuple]:
    """``(setting, paper, this run, deviates, note)`` of data, pretraining, epochs, image size and folds."""
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
         f"{prof.n_folds} folds", prof.n_folds != P.n_folds or ran != prof.n_folds, "")]


def protocol_differences(prof: Profile, dataset: Any = None) -> list[str]:
    """How the profile departs from the paper in data, pretraining, epochs, image size or folds."""
    return [f"{ours} (the paper: {paper})" for _, paper, ours, dev, _ in _core_rows(prof, dataset) if dev]


def shows_mechanics_only(prof: Profile, dataset: Any = None) -> bool:
    """Whether the numbers only show how the kit works (smoke, demo; not the shorter schedule of quick)."""
    if dataset is not None and (dataset.kind == "sample" or len(dataset.df) < 2000):
        return True
    return not prof.pretrained or prof.epochs < 25 or any(c < 112 for _, c in _sizes_of(prof).values())


def run_caption(prof: Profile, dataset: Any = None) -> str:
    """One line saying what produced this run's results, for figure footers and the report."""
    bbs, sizes = list(prof.backbones), _sizes_of(prof)
    names = ("the paper's six backbones" if {paper_alias(b) for b in bbs} == set(BACKBONES) else
             f"{len(bbs)} backbones" if len(bbs) > 3 else ", ".join(bbs))
    common = Counter(sizes.values()).most_common(1)[0][0]
    others = [f"{b} {r} → {c}" for b, (r, c) in sizes.items() if (r, c) != common]
    folds = f"{len(prof.fold_indices)} of {prof.n_folds} folds" if prof.folds else f"{prof.n_folds} folds"
    return " · ".join([f"{prof.name} profile", *([describe(dataset)] if dataset is not None else []),
                       f"{names} {'ImageNet-pretrained' if prof.pretrained else 'from scratch'}",
                       f"{common[0]} px → {common[1]} px crop" + (f" ({', '.join(others)})" if others else ""),
                       f"{folds} × {_epochs(prof.epochs)}",
                       "not the paper's protocol" if protocol_differences(prof, dataset) else "the paper's protocol"])


class Completeness(NamedTuple):
    """Complete runs of a profile, ``(complete, expected)`` for Table 1 and the other ablation runs."""
    profile: str
    table1: tuple[int, int]
    ablations: tuple[int, int]
    ablation_tables: str  #: e.g. "Tables 3 and 4"
    run_ids: tuple[str, ...]

    def __str__(self) -> str:
        (t1, n1), (ab, na) = self.table1, self.ablations
        line = f"Profile {self.profile!r}: Table 1: {t1} of {n1} runs complete" + (
            " (notebook 04 trains them)" if t1 < n1 else "")
        if not na:
            return line + "; no ablation runs in this profile."
        rest = " complete" if ab == na else f", {'the rest ' if ab else ''}trained in notebook 07"
        return f"{line}; ablations ({self.ablation_tables}): {ab} of {na}{rest}."


def completeness(prof: Profile, dataset: Any) -> Completeness:
    """Which runs of the profile's grid are complete in ``results/runs``."""
    where = runs_dir()
    ids = [r.run_id for r in enumerate_runs(prof, dataset)]
    table1 = {r.run_id for r in enumerate_runs(prof, dataset, ("table1",))}
    done = [i for i in ids if is_complete(where / i)]
    on = [str(i) for i, asked in ((3, prof.ablations.table3), (4, prof.ablations.table4)) if asked]
    t1_done, t1_all = len(table1.intersection(done)), len(table1.intersection(ids))
    return Completeness(prof.name, (t1_done, t1_all), (len(done) - t1_done, len(ids) - t1_all),
                        f"Table{'s' if len(on) > 1 else ''} {' and '.join(on)}" if on else "", tuple(done))


def profile_records(prof: Profile, dataset: Any) -> pd.DataFrame:
    """The records of the profile's complete runs."""
    return load_records(runs_dir(), completeness(prof, dataset).run_ids)


def profile_tables(prof: Profile, dataset: Any, records: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """Tables 1-4 of the profile's records."""
    records = profile_records(prof, dataset) if records is None else records
    k, n, abl = prof.meta_layers, prof.n_folds, ablation_backbone(prof)
    fusions = [f for f in P.fusions if f in prof.fusions] or list(P.fusions)
    return {"table1": build_table1(records, list(prof.backbones), fusions, k, n),
            "table2": build_table2(records, abl, fusions, k, n), "table3": build_table3(records, abl, k, n),
            "table4": build_table4(records, abl, prof.ablations.meta_layers, n)}


def write_profile_tables(prof: Profile, data_dir: Any = None, *, dataset: Any = None,
                         require_runs: bool = False) -> Path:
    """Write ``table{1,2,3,4}.{csv,md}`` and ``provenance.json``; return the folder. ``require_runs``: raise
    DataError when no run of the profile on this data is complete."""
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


def _image_split_leak(prof: Profile, dataset: Any) -> str:
    try:
        share = lesion_leak(dataset.df, dataset.folds(prof.n_folds, "image", prof.split_seed))["share"].drop("overall")
    except (AttributeError, KeyError, ValueError):  # no data set, no lesion ids, or too few images to split
        return "37-40 % (full HAM10000, seed 0)"
    lo, hi = round(100 * share.min()), round(100 * share.max())
    return f"{lo}{f'-{hi}' if hi != lo else ''} % (this data set)"


def _source_row(dataset: Any) -> list[tuple]:
    try:
        with Image.open(dataset.df["path"].iloc[0]) as im:
            res = f"{im.size[0]}x{im.size[1]}"
    except (OSError, KeyError, IndexError, ValueError, AttributeError):
        return []
    return [("source image resolution", "600x450", res, res != "600x450",
             "the test copy is downscaled to 200x150" if res == "200x150" else "")]


def _precision_row(prof: Profile, records: pd.DataFrame) -> tuple:
    paper, mixed = "float32 (2019 PyTorch, presumably)", "mixed precision changes rounding, not the method"
    unknown = "precision not recorded"  # a record of an older kit: counts as its profile's setting
    if not len(records):
        ours = {"auto": "bf16 autocast on a GPU, float32 on a CPU"}.get(prof.precision, prof.precision)
        return ("precision", paper, ours, prof.precision != "fp32", f"the profile's setting (no run records); {mixed}")
    col = records.reindex(columns=["precision_metrics", "device"]).fillna("").astype(str)
    device = col["device"].where(~col["device"].str.startswith("cpu ("), "cpu")  # "cpu (x86_64, 16 threads)"
    used = Counter(zip(col["precision_metrics"].replace("", unknown), device))
    ours = ", ".join(f"{p}{f' on {d}' if d else ''} ({n} run{'s' if n != 1 else ''})"
                     for (p, d), n in sorted(used.items(), key=lambda kv: (-kv[1], kv[0])))
    deviates = any(p != "float32" if p != unknown else prof.precision != "fp32" for p, _ in used)
    return ("precision", paper, ours, deviates,
            f"from the run records (profile setting: {prof.precision})" + (f"; {mixed}" if deviates else ""))


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


def _show(v: Any) -> str:
    return ", ".join(map(str, v)) if isinstance(v, (tuple, list)) else f"{v:g}" if isinstance(v, float) else str(v)


def deviations(prof: Profile, dataset: Any = None, records: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every setting of the paper's protocol beside this run's: ``setting, paper, this run, deviates, note``."""
    if records is None:
        records = profile_records(prof, dataset) if dataset is not None else pd.DataFrame()
    subs = [b for b in prof.backbones if not paper_alias(b)]
    missing = [b for b in P.backbones if b not in set(map(paper_alias, prof.backbones))]
    asked = {(1, 1): "both", (1, 0): "Table 3", (0, 1): "Table 4"}.get((prof.ablations.table3, prof.ablations.table4))
    rows = [  # deviates None: the paper's value differs from the profile's
        ("profile", "-", f"{prof.name}: {prof.description}", False, ""),
        *[("data", f"all {N_IMAGES} images of HAM10000", "unknown (no dataset given)", True, "")] * (dataset is None),
        *_core_rows(prof, dataset), *_source_row(dataset),
        ("backbones", _names(P.backbones), _names(prof.backbones), bool(subs or missing), "; ".join(
            [f"substitutes: {_names(subs)}"] * bool(subs) + [f"not run: {_names(missing)}"] * bool(missing))),
        ("ablations.backbone (Tables 2-4)", _names([P.ablation_backbone]), _names([ablation_backbone(prof)]), None, ""),
        ("split_scheme", "not stated (\"5-fold cross-validation\")", prof.split_scheme, prof.split_scheme != "image",
         "image level stratified by class is the kit's default (as the authors' 2022 code): it lets "
         f"{_image_split_leak(prof, dataset)} of the validation images have a same-lesion image in training"),
        *((k, getattr(P, k), getattr(prof, k), None, "") for k in ("milestones", "lr_gamma", "lr", "batch_size",
                                                                    "momentum", "weight_decay", "meta_layers")),
        ("fusions", P.fusions, prof.fusions, set(prof.fusions) != set(P.fusions), ""),
        ("ablations (Tables 3, 4)", "both", asked or "none", None, ""),
        ("color_constancy", "yes (Barata et al. 2014)", "Shades of Gray, p = 6" if prof.color_constancy else "off",
         not prof.color_constancy, "the paper does not name the variant; Shades of Gray p = 6 is the kit's reading"),
        *_FIXED_ROWS, _precision_row(prof, records)]
    return pd.DataFrame([(s, _show(p), _show(o), p != o if d is None else bool(d), n) for s, p, o, d, n in rows],
                        columns=["setting", "paper", "this run", "deviates", "note"])
