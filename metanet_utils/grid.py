"""The grid of a profile: its runs (Table 1 and the ablations of Tables 3 and 4, paper Sec. 3), trained here.

Table 1 is every backbone x fusion x fold (``concat`` on the raw 17-d metadata, ``metanet`` with ``meta_layers``
fully connected layers); Table 3 (``ablations.table3``) ``metanet`` on the ablation backbone with each non-empty
subset of age / sex / localization (the empty subset is ``none``); Table 4 (``ablations.table4``) ``metanet`` and
``concat`` there with 1..4 layers. A run is its config (``run_id``): one enumerated by two tables trains once.
:func:`run_grid` trains the missing runs longest first; a lock per run keeps workers (processes, machines, Slurm
jobs) off each other's runs, and a run interrupted anywhere resumes from its last checkpoint.

Example:
    >>> from metanet_utils.config import load_profile
    >>> from types import SimpleNamespace
    >>> runs = enumerate_runs(load_profile("smoke"), SimpleNamespace(kind="real", fingerprint="doc"))
    >>> len(runs), sorted({r.fusion for r in runs})
    (32, ['concat', 'metanet', 'none'])
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import pandas as pd

from .atomic import atomic_write_text
from .cache import CacheError
from .config import ConfigError, Profile, RunConfig, check_runs_together
from .constants import META_FIELDS
from .dataset import profile_dataset
from .models import ensure_weights, input_spec
from .paths import runs_dir as default_runs_dir
from .step import graph_step
from .together import train_runs_together
from .train import RunBusy, is_complete, record_dir, train_run

__all__ = ["EXPERIMENTS", "SHORT_RUN_EPOCHS", "run_config", "enumerate_runs", "estimated_cost", "parse_only",
           "filter_runs", "profile_dataset", "status_table", "resolve_progress", "GridSummary", "run_grid",
           "step_for", "spawn_workers"]

EXPERIMENTS: tuple[str, ...] = ("table1", "table3", "table4")
#: ``progress="auto"`` prints a line per run when no run has more epochs than this, else a line per epoch.
SHORT_RUN_EPOCHS = 10
#: Forward GMACs at 224 px (331 px for PNASNet), for ordering runs longest first.
_GMACS = {"alexnet": 0.71, "vgg19": 19.63, "resnet50": 4.11, "densenet161": 7.79, "senet154": 20.77,
          "legacy_senet154": 20.77, "pnasnet5large": 25.04}


# --------------------------------------------------------------------------- the runs of a profile

def _sizes(profile: Profile, backbone: str) -> tuple[int, int]:
    """(resize, crop) of a backbone's runs: the profile's, else the backbone's own (300/224, PNASNet 441/331)."""
    if profile.image_size is not None and profile.crop_size is not None:
        return profile.image_size, profile.crop_size
    spec = input_spec(backbone)
    return profile.image_size or spec.resize, profile.crop_size or spec.crop


def _base(profile: Profile, dataset, backbone: str) -> RunConfig:
    resize, crop = _sizes(profile, backbone)
    return RunConfig(
        backbone=backbone, n_folds=profile.n_folds, split_scheme=profile.split_scheme, split_seed=profile.split_seed,
        color_constancy=profile.color_constancy, image_size=resize, crop_size=crop, epochs=profile.epochs,
        milestones=profile.milestones, lr_gamma=profile.lr_gamma, batch_size=profile.batch_size, lr=profile.lr,
        momentum=profile.momentum, weight_decay=profile.weight_decay, pretrained=profile.pretrained, seed=profile.seed,
        precision=profile.precision, cuda_graphs=profile.cuda_graphs,
        checkpoint_interval_s=profile.checkpoint_interval_s, deterministic=profile.deterministic,
        data_kind=dataset.kind, data_fingerprint=dataset.fingerprint, meta_layers=profile.meta_layers)


def _variant(base: RunConfig, fusion: str, features: tuple[str, ...] = META_FIELDS, k: int | None = None) -> RunConfig:
    if fusion == "none":
        return base.replace(fusion="none", meta_features=(), meta_layers=0)
    if fusion == "concat":  # Table 1: raw metadata concatenated (k = 0); Table 4 sets k
        return base.replace(fusion="concat", meta_features=features, meta_layers=0 if k is None else k)
    return base.replace(fusion=fusion, meta_features=features, meta_layers=base.meta_layers if k is None else k)


def run_config(profile: Profile, dataset, backbone: str, fusion: str, fold: int = 0,
               features: tuple[str, ...] = META_FIELDS, meta_layers: int | None = None,
               **overrides: Any) -> RunConfig:
    """The config of one run of ``profile``, exactly as the grid enumerates it (same ``run_id``).

    ``meta_layers=None`` takes the paper's depth for the fusion (concat: raw metadata, metanet:
    the profile's); ``overrides`` replace any other setting (e.g. ``epochs``).
    """
    base = _base(profile, dataset, backbone).replace(fold=fold, **overrides)
    return _variant(base, fusion, tuple(features), meta_layers)


def enumerate_runs(profile: Profile, dataset, experiments: Iterable[str] = EXPERIMENTS) -> list[RunConfig]:
    """Every run the profile asks for (Table 1, then the ablations), without duplicates.

    ``experiments`` restricts to some of ``table1``, ``table3``, ``table4``.
    """
    experiments = tuple(experiments)
    if unknown := set(experiments) - set(EXPERIMENTS):
        raise ConfigError(f"unknown experiment(s) {sorted(unknown)}; allowed: {', '.join(EXPERIMENTS)}")
    runs: list[RunConfig] = []
    for backbone in (profile.backbones if "table1" in experiments else ()):
        base = _base(profile, dataset, backbone)
        runs += [_variant(base.replace(fold=fold), fusion)
                 for fusion, fold in itertools.product(profile.fusions, profile.fold_indices)]
    abl = profile.ablations
    do3, do4 = abl.table3 and "table3" in experiments, abl.table4 and "table4" in experiments
    base = _base(profile, dataset, abl.backbone or profile.backbones[-1]) if do3 or do4 else None
    for fold in profile.fold_indices if base is not None else ():
        b = base.replace(fold=fold)
        if do3:
            runs += [_variant(b, "none")] + [_variant(b, "metanet", subset) for r in (1, 2, 3)
                                             for subset in itertools.combinations(META_FIELDS, r)]
        for k in abl.meta_layers if do4 else ():
            runs += [_variant(b, "metanet", META_FIELDS, k), _variant(b, "concat", META_FIELDS, k)]
    return list({r.run_id: r for r in runs}.values())  # each run once, where it first appears


def estimated_cost(cfg: RunConfig) -> float:
    """Relative cost of a run (GMACs x pixels x epochs), for longest-first ordering."""
    return _GMACS.get(cfg.backbone.split(".")[0], 1.0) * (cfg.crop_size / 224) ** 2 * cfg.epochs


def parse_only(items: Iterable[str]) -> dict[str, list[str]]:
    """``["backbone=resnet50", "fold=0,1"]`` -> ``{"backbone": ["resnet50"], "fold": ["0", "1"]}``."""
    allowed = set(RunConfig.__dataclass_fields__)
    out: dict[str, list[str]] = {}
    for item in items or ():
        if "=" not in item:
            raise ConfigError(f"--only {item!r}: expected key=value (e.g. fusion=metanet)")
        k, v = item.split("=", 1)
        if k not in allowed:
            raise ConfigError(f"--only {k!r} is not a run setting; allowed: {', '.join(sorted(allowed))}")
        out.setdefault(k, []).extend(v.split(","))
    return out


def filter_runs(runs: list[RunConfig], only: dict[str, list[str]] | None) -> list[RunConfig]:
    """The runs whose every ``only`` setting is one of its values (tuples written ``a+b``)."""
    def text(v: Any) -> str:
        return "+".join(v) if isinstance(v, tuple) else str(v)
    return [r for r in runs if all(text(getattr(r, k)) in vals for k, vals in (only or {}).items())]


def status_table(runs: list[RunConfig], runs_dir: str | Path | None = None) -> pd.DataFrame:
    """One row per run: its settings and whether its record is complete."""
    return pd.DataFrame([{"run_id": r.run_id, "backbone": r.backbone, "fusion": r.fusion,
                          "meta": "+".join(r.meta_features), "k": r.meta_layers, "fold": r.fold,
                          "complete": is_complete(record_dir(r, runs_dir))} for r in runs])


# --------------------------------------------------------------------------- training them

def resolve_progress(progress: bool | str, runs: Iterable[RunConfig]) -> str | None:
    """What ``run_grid`` prints: ``"epochs"`` (also True: each run's start and a line per epoch), ``"runs"`` (a
    line per finished run), None (False: failures only). ``"auto"`` is ``"runs"`` when no run has more than
    :data:`SHORT_RUN_EPOCHS` epochs (smoke, demo: seconds a run), else ``"epochs"`` (quick, paper: hours a run,
    and its epoch lines are the only sign of life).

    Example:
        >>> resolve_progress("auto", [RunConfig(backbone="test_resnet", epochs=3)])
        'runs'
    """
    modes = {True: "epochs", "epochs": "epochs", "runs": "runs", False: None}
    if progress == "auto":
        return "runs" if all(r.epochs <= SHORT_RUN_EPOCHS for r in runs) else "epochs"
    if not isinstance(progress, (bool, str)) or progress not in modes:
        raise ValueError(f"progress={progress!r} is not allowed; use True, False, 'epochs', 'runs' or 'auto'")
    return modes[progress]


def step_for(cfg: RunConfig) -> Callable | None:
    """The ``make_step`` :func:`~metanet_utils.train.train_run` gets for ``cfg``: the CUDA-graph step for
    ``cuda_graphs: on`` (opt-in, GPU only), else None (the eager step)."""
    return graph_step if cfg.cuda_graphs == "on" else None


@dataclass
class GridSummary:
    """What a grid did: how many runs it has, which it trained, found complete, or saw fail (with their logs)."""

    total: int = 0
    trained: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def format(self) -> str:
        return "\n".join([f"grid: {self.total} runs; trained now {len(self.trained)}, already complete "
                          f"{len(self.skipped)}, failed {len(self.failed)}",
                          *(f"  FAILED {rid}: see {log}" for rid, log in self.failed.items())])


def run_grid(profile: Profile, dataset, *, only: dict[str, list[str]] | None = None,
             experiments: Iterable[str] = EXPERIMENTS, runs_dir: str | Path | None = None, device: str | None = None,
             progress: bool | str = True, weights_dir: str | Path | None = None, wait: bool = True,
             poll_s: float = 5.0, together: int | None = None) -> GridSummary:
    """Train the profile's missing runs here, longest first, skipping complete ones.

    ``progress``: see :func:`resolve_progress` (True: a line per epoch, ``"runs"``: a line per finished run such as
    ``[3/65] resnet10t metanet age k=2 fold 0: MCR 21.4 % (5 s)``, ``"auto"``, False: failures only). Runs locked by
    another worker are left to it; with ``wait`` this worker then waits for them (and takes one over, resuming its
    checkpoint, if its worker dies). A failing run is logged to ``runs/.failed/<run_id>.log`` and the others go on.
    ``together`` (default: the profile's ``runs_together``, 1) trains up to that many runs with the same images at
    once in this process (opt-in: :func:`metanet_utils.together.train_runs_together`).
    """
    resolve_progress(progress, [])  # a bad value is refused before any work
    runs_dir = Path(runs_dir or default_runs_dir())
    k = check_runs_together(together if together is not None else profile.runs_together)
    if k != 1 and profile.deterministic:
        print(f"grid: runs_together={k} ignored: a deterministic profile trains one run at a time", flush=True)
        k = 1
    runs = sorted(filter_runs(enumerate_runs(profile, dataset, experiments), only), key=estimated_cost, reverse=True)
    pending = [r for r in runs if not is_complete(record_dir(r, runs_dir))]
    summary = GridSummary(total=len(runs), skipped=[r.run_id for r in runs if r not in pending])
    mode = resolve_progress(progress, pending)
    if mode:
        print(f"grid {profile.name}: {len(runs)} runs, {len(summary.skipped)} complete, {len(pending)} to do "
              f"({dataset.kind} data, {len(dataset.df)} images{'' if k == 1 else f', {k} at a time'})", flush=True)
    ensure_weights([r.backbone for r in pending if r.pretrained], weights_dir, mode is not None)  # before any run
    todo = len(pending)
    while pending:
        busy = []
        for group in _groups([c for c in pending if not is_complete(record_dir(c, runs_dir))], k):
            results = _train_group(group, dataset, runs_dir, device, weights_dir, mode, summary, todo)
            for cfg in group:
                if isinstance(res := results.get(cfg.run_id), RunBusy):
                    busy.append(cfg)
                elif isinstance(res, BaseException):
                    _failed(summary, runs_dir, cfg, res)
                elif res is not None:
                    _trained(summary, runs_dir, cfg, res, mode, todo)
        pending = busy
        if pending and not wait:
            break
        if pending:
            if mode:
                print(f"waiting for {len(pending)} run(s) trained by other workers ...", flush=True)
            time.sleep(poll_s)
    if mode:
        print(summary.format(), flush=True)
    return summary


def _train_group(group: list[RunConfig], dataset, runs_dir: Path, device, weights_dir, mode: str | None,
                 summary: GridSummary, todo: int) -> dict[str, Any]:
    """Train one run, or several together: run_id -> metrics or the exception that stopped it. A bad image or a
    full disk (:class:`CacheError`) stops every run, and an interrupt stops the grid: both are raised."""
    if mode == "epochs":
        for i, cfg in enumerate(group, start=len(summary.trained) + len(summary.failed) + 1):
            print(f"--- run {cfg.run_id} ({i}/{todo})", flush=True)
    kw = dict(runs_dir=runs_dir, device=device, progress=mode == "epochs", weights_dir=weights_dir)
    try:
        if len(group) > 1:
            results = train_runs_together(group, dataset, **kw)
        else:
            results = {group[0].run_id: train_run(group[0], dataset, make_step=step_for(group[0]), **kw)}
    except Exception as e:  # noqa: BLE001 - one failing run must not stop the others
        results = {group[0].run_id: e}
    for res in results.values():
        if isinstance(res, CacheError):
            raise res
    return results


def _failed(summary: GridSummary, runs_dir: Path, cfg: RunConfig, e: BaseException) -> None:
    log = runs_dir / ".failed" / f"{cfg.run_id}.log"
    atomic_write_text(log, f"{cfg.to_dict()}\n\n{''.join(traceback.format_exception(type(e), e, e.__traceback__))}")
    summary.failed[cfg.run_id] = str(log)
    print(f"!!! run {cfg.run_id} failed: {type(e).__name__}: {e} (log: {log})", flush=True)


def _trained(summary: GridSummary, runs_dir: Path, cfg: RunConfig, m: dict[str, Any], mode: str | None,
             todo: int) -> None:
    summary.trained.append(cfg.run_id)
    (runs_dir / ".failed" / f"{cfg.run_id}.log").unlink(missing_ok=True)
    if mode == "runs":  # ``mobilenetv3_small_100 metanet age+sex k=2 fold 3`` (none: no metadata)
        meta = f" {'+'.join(cfg.meta_features)} k={cfg.meta_layers}" if cfg.fusion != "none" else ""
        done = len(summary.trained) + len(summary.failed)
        print(f"[{done:>{len(str(todo))}}/{todo}] {cfg.backbone} {cfg.fusion}{meta} fold {cfg.fold}: "
              f"MCR {100 * m['mcr']:.1f} % ({m['wall_time_s']:.0f} s)", flush=True)


def _groups(runs: list[RunConfig], k: int) -> list[list[RunConfig]]:
    """Consecutive groups of up to ``k`` runs that can share one image cache (same size and colour
    correction), in the given order (longest first)."""
    open_groups: dict[tuple, list[RunConfig]] = {}
    out: list[list[RunConfig]] = []
    for r in runs:
        key = (r.image_size, r.color_constancy, r.deterministic)
        g = open_groups.setdefault(key, [])
        if not g:
            out.append(g)
        g.append(r)
        if len(g) >= k:
            open_groups[key] = []
    return out


def spawn_workers(n: int, argv: list[str]) -> int:
    """Start ``n`` grid worker processes with the same arguments; return the worst exit code."""
    procs = [subprocess.Popen([sys.executable, "-m", "metanet_utils", *argv], env={**os.environ,
                              "METANET_WORKER": str(i)}) for i in range(n)]
    return max(p.wait() for p in procs)
