"""The grid of a profile: enumerate its runs, skip finished ones, train the rest.

Runs of a profile (paper Sec. 3):

* Table 1: every backbone x fusion x fold (``concat`` on the raw 17-d metadata,
  ``metanet`` with ``meta_layers`` fully connected layers);
* Table 3 (``ablations.table3``): ``metanet`` on the ablation backbone with each
  non-empty subset of age / sex / localization (the empty subset is ``none``);
* Table 4 (``ablations.table4``): ``metanet`` and ``concat`` on the ablation backbone
  with 1..4 fully connected layers for the metadata.

Each run is identified by its config (``run_id``), so the same run enumerated by two
tables is trained once. Runs are trained longest first; a lock per run keeps two
workers (processes, machines, Slurm jobs) from training the same run, and a run
interrupted anywhere resumes from its last checkpoint.

Example:
    >>> from metanet_utils.config import load_profile                 # doctest: +SKIP
    >>> from metanet_utils.dataset import open_dataset                # doctest: +SKIP
    >>> prof = load_profile("smoke")                                  # doctest: +SKIP
    >>> ds = open_dataset("../shared/ham10000", max_images=prof.max_images)   # doctest: +SKIP
    >>> len(enumerate_runs(prof, ds))                                 # doctest: +SKIP
    6
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
from typing import Any, Iterable

from .atomic import atomic_write_text
from .config import ConfigError, Profile, RunConfig
from .constants import META_FIELDS

__all__ = ["EXPERIMENTS", "PROGRESS_MODES", "SHORT_RUN_EPOCHS", "resolve_progress", "run_config", "enumerate_runs", "filter_runs", "parse_only",
           "estimated_cost", "GridSummary", "run_grid",
           "profile_dataset", "status_table"]

#: Forward GMACs at 224 px (331 px for PNASNet), for ordering runs longest first.
_GMACS = {"alexnet": 0.71, "vgg19": 19.63, "resnet50": 4.11, "densenet161": 7.79, "senet154": 20.77,
          "legacy_senet154": 20.77, "pnasnet5large": 25.04}


def _sizes(profile: Profile, backbone: str) -> tuple[int, int]:
    if profile.image_size is not None and profile.crop_size is not None:
        return profile.image_size, profile.crop_size
    from .models import input_spec

    spec = input_spec(backbone)
    return profile.image_size or spec.resize, profile.crop_size or spec.crop


def _base(profile: Profile, dataset, backbone: str) -> RunConfig:
    resize, crop = _sizes(profile, backbone)
    return RunConfig(
        backbone=backbone, n_folds=profile.n_folds, split_scheme=profile.split_scheme, split_seed=profile.split_seed,
        color_constancy=profile.color_constancy, image_size=resize, crop_size=crop, epochs=profile.epochs,
        milestones=profile.milestones, lr_gamma=profile.lr_gamma, batch_size=profile.batch_size, lr=profile.lr,
        momentum=profile.momentum, weight_decay=profile.weight_decay, pretrained=profile.pretrained, seed=profile.seed,
        precision=profile.precision, compile=profile.compile, cuda_graphs=profile.cuda_graphs,
        checkpoint_interval_s=profile.checkpoint_interval_s,
        deterministic=profile.deterministic,
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


EXPERIMENTS: tuple[str, ...] = ("table1", "table3", "table4")


def enumerate_runs(profile: Profile, dataset, experiments: Iterable[str] = EXPERIMENTS) -> list[RunConfig]:
    """Every run the profile asks for (Table 1, then the ablations), without duplicates.

    ``experiments`` restricts to some of ``table1``, ``table3``, ``table4``.
    """
    experiments = tuple(experiments)
    unknown = set(experiments) - set(EXPERIMENTS)
    if unknown:
        raise ConfigError(f"unknown experiment(s) {sorted(unknown)}; allowed: {', '.join(EXPERIMENTS)}")
    runs: list[RunConfig] = []
    for backbone in (profile.backbones if "table1" in experiments else ()):
        base = _base(profile, dataset, backbone)
        for fusion, fold in itertools.product(profile.fusions, profile.fold_indices):
            runs.append(_variant(base.replace(fold=fold), fusion))
    abl = profile.ablations
    do3, do4 = abl.table3 and "table3" in experiments, abl.table4 and "table4" in experiments
    if do3 or do4:
        backbone = abl.backbone or profile.backbones[-1]
        base = _base(profile, dataset, backbone)
        for fold in profile.fold_indices:
            b = base.replace(fold=fold)
            if do3:
                runs.append(_variant(b, "none"))
                for r in (1, 2, 3):
                    for subset in itertools.combinations(META_FIELDS, r):
                        runs.append(_variant(b, "metanet", subset))
            if do4:
                for k in abl.meta_layers:
                    runs.append(_variant(b, "metanet", META_FIELDS, k))
                    runs.append(_variant(b, "concat", META_FIELDS, k))
    seen: dict[str, RunConfig] = {}
    for r in runs:
        seen.setdefault(r.run_id, r)
    return list(seen.values())


def estimated_cost(cfg: RunConfig) -> float:
    """Relative cost of a run (GMACs x pixels x epochs), for longest-first ordering."""
    g = _GMACS.get(cfg.backbone.split(".")[0], 1.0)
    return g * (cfg.crop_size / 224) ** 2 * cfg.epochs


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
    if not only:
        return runs

    def match(r: RunConfig) -> bool:
        for k, values in only.items():
            v = getattr(r, k)
            text = "+".join(v) if isinstance(v, tuple) else str(v)
            if text not in values and str(v) not in values:
                return False
        return True

    return [r for r in runs if match(r)]


def profile_dataset(profile: Profile, data_dir: str | Path | None = None):
    """Open the data set a profile asks for (the full data, or the shipped sample for demo/smoke; subsampled)."""
    from .dataset import open_dataset

    return open_dataset(data_dir, max_images=profile.max_images, seed=profile.seed, data=profile.data)


@dataclass
class GridSummary:
    trained: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    total: int = 0

    def format(self) -> str:
        lines = [f"grid: {self.total} runs; trained now {len(self.trained)}, already complete {len(self.skipped)}, "
                 f"failed {len(self.failed)}"]
        for rid, log in self.failed.items():
            lines.append(f"  FAILED {rid}: see {log}")
        return "\n".join(lines)


def status_table(runs: list[RunConfig], runs_dir: str | Path | None = None):
    """One row per run: its settings and whether its record is complete."""
    import pandas as pd

    from .train import is_complete, record_dir

    return pd.DataFrame([{"run_id": r.run_id, "backbone": r.backbone, "fusion": r.fusion,
                          "meta": "+".join(r.meta_features), "k": r.meta_layers, "fold": r.fold,
                          "complete": is_complete(record_dir(r, runs_dir))} for r in runs])


#: What ``run_grid(progress=...)`` accepts: True / ``"epochs"`` (a line per epoch), ``"runs"`` (a line per
#: finished run), ``"auto"`` (``"runs"`` for short runs, else ``"epochs"``: see :func:`resolve_progress`),
#: False (nothing but failures).
PROGRESS_MODES: tuple = (True, False, "epochs", "runs", "auto")

#: ``progress="auto"`` prints a line per run when no run has more epochs than this, else a line per epoch.
SHORT_RUN_EPOCHS = 10


def resolve_progress(progress: bool | str, runs: Iterable[RunConfig]) -> bool | str:
    """What ``progress`` means for these runs: ``"auto"`` becomes ``"runs"`` when every run has at most
    :data:`SHORT_RUN_EPOCHS` epochs (the smoke and demo profiles: a run takes seconds), else ``"epochs"``
    (quick and paper: a run takes hours, and its epoch lines are the only sign of life); other values
    are returned as they are, after a check.

    Example:
        >>> resolve_progress("auto", [RunConfig(backbone="test_resnet", epochs=3)])
        'runs'
        >>> resolve_progress("auto", [RunConfig(backbone="senet154", epochs=250)])
        'epochs'
    """
    if not any(progress is m or (isinstance(m, str) and progress == m) for m in PROGRESS_MODES):
        raise ValueError(f"progress={progress!r} is not allowed; use True, False, 'epochs', 'runs' or 'auto'")
    if progress == "auto":
        return "runs" if all(r.epochs <= SHORT_RUN_EPOCHS for r in runs) else "epochs"
    return progress


def _run_label(cfg: RunConfig) -> str:
    """``mobilenetv3_small_100 metanet age+sex k=2 fold 3`` (``none``: backbone, fusion and fold only)."""
    meta = f" {'+'.join(cfg.meta_features)} k={cfg.meta_layers}" if cfg.fusion != "none" else ""
    return f"{cfg.backbone} {cfg.fusion}{meta} fold {cfg.fold}"


def run_grid(profile: Profile, dataset, *, only: dict[str, list[str]] | None = None,
             experiments: Iterable[str] = EXPERIMENTS,
             runs_dir: str | Path | None = None, device: str | None = None, progress: bool | str = True,
             weights_dir: str | Path | None = None, wait: bool = True, poll_s: float = 5.0,
             together: int | None = None) -> GridSummary:
    """Train the profile's missing runs here, longest first, skipping complete ones.

    ``progress``: True or ``"epochs"`` (what the command line uses) prints each run's start and one line per epoch;
    ``"runs"`` one line per run as it finishes (``[3/65] resnet10t metanet age k=2 fold 0: MCR 21.4 % (5 s)``),
    besides the grid's first and last line; ``"auto"`` the one or the other (:func:`resolve_progress`); False
    prints failures only.

    Runs locked by another worker are left to it; with ``wait`` this worker then waits
    for them to finish (and takes one over, resuming its checkpoint, if its worker dies).
    A failing run is logged to ``runs/.failed/<run_id>.log`` and the others go on.
    ``together`` (default: the profile's ``runs_together``, 1) trains up to that many runs with the same
    images at once in this process (opt-in: :func:`metanet_utils.together.train_runs_together`).
    """
    from .cache import CacheError
    from .config import check_runs_together
    from .paths import runs_dir as default_runs_dir
    from .together import train_runs_together
    from .train import RunBusy, is_complete, record_dir, train_run

    resolve_progress(progress, [])  # a bad value is refused before any work
    runs_dir = Path(runs_dir or default_runs_dir())
    k = check_runs_together(together if together is not None else profile.runs_together)
    if k != 1 and profile.deterministic:
        print(f"grid: runs_together={k} ignored: a deterministic profile trains one run at a time", flush=True)
        k = 1
    runs = sorted(filter_runs(enumerate_runs(profile, dataset, experiments), only), key=estimated_cost, reverse=True)
    summary = GridSummary(total=len(runs))
    pending = [r for r in runs if not is_complete(record_dir(r, runs_dir))]
    summary.skipped = [r.run_id for r in runs if r not in pending]
    mode = resolve_progress(progress, pending)
    per_epoch, per_run = mode is True or mode == "epochs", mode == "runs"
    speak = per_epoch or per_run  # whether the grid prints its own lines at all
    if speak:
        at_once = "" if k == 1 else f", {k} at a time"
        print(f"grid {profile.name}: {len(runs)} runs, {len(summary.skipped)} complete, {len(pending)} to do "
              f"({dataset.kind} data, {len(dataset.df)} images{at_once})", flush=True)
    from .models import ensure_weights

    ensure_weights([r.backbone for r in pending if r.pretrained], weights_dir, speak)  # before any run starts

    def failed(cfg: RunConfig, e: BaseException, tb: str) -> None:
        log = runs_dir / ".failed" / f"{cfg.run_id}.log"
        atomic_write_text(log, f"{cfg.to_dict()}\n\n{tb}")
        summary.failed[cfg.run_id] = str(log)
        print(f"!!! run {cfg.run_id} failed: {type(e).__name__}: {e} (log: {log})", flush=True)

    n_todo = len(pending)

    def trained(cfg: RunConfig, metrics: dict[str, Any] | None = None) -> None:
        summary.trained.append(cfg.run_id)
        (runs_dir / ".failed" / f"{cfg.run_id}.log").unlink(missing_ok=True)
        if per_run:
            m = metrics or {}
            mcr = f"MCR {100 * m['mcr']:.1f} %" if isinstance(m.get("mcr"), (int, float)) else "done"
            took = f" ({m['wall_time_s']:.0f} s)" if isinstance(m.get("wall_time_s"), (int, float)) else ""
            done = len(summary.trained) + len(summary.failed)
            print(f"[{done:>{len(str(n_todo))}}/{n_todo}] {_run_label(cfg)}: {mcr}{took}", flush=True)

    while pending:
        busy = []
        todo = [c for c in pending if not is_complete(record_dir(c, runs_dir))]
        for group in _groups(todo, k):
            if per_epoch:
                for cfg in group:
                    print(f"--- run {cfg.run_id} ({runs.index(cfg) + 1}/{len(runs)})", flush=True)
            if len(group) > 1:
                try:
                    results = train_runs_together(group, dataset, runs_dir=runs_dir, device=device,
                                                  progress=per_epoch, weights_dir=weights_dir)
                except (KeyboardInterrupt, CacheError):
                    raise
                for cfg in group:
                    res = results.get(cfg.run_id)
                    if isinstance(res, RunBusy):
                        busy.append(cfg)
                    elif isinstance(res, (KeyboardInterrupt, CacheError)):
                        raise res
                    elif isinstance(res, BaseException):
                        failed(cfg, res, "".join(traceback.format_exception(type(res), res, res.__traceback__)))
                    elif res is not None:
                        trained(cfg, res)
                continue
            cfg = group[0]
            try:
                m = train_run(cfg, dataset, runs_dir=runs_dir, device=device, progress=per_epoch,
                              weights_dir=weights_dir)
                if m.get("interrupted"):
                    busy.append(cfg)
                else:
                    trained(cfg, m)
            except RunBusy:
                busy.append(cfg)
            except (KeyboardInterrupt, CacheError):  # a bad image or a full disk stops every run: say it once
                raise
            except Exception as e:  # noqa: BLE001 - one failing run must not stop the others
                failed(cfg, e, traceback.format_exc())
        pending = busy
        if pending:
            if not wait:
                break
            if speak:
                print(f"waiting for {len(pending)} run(s) trained by other workers ...", flush=True)
            time.sleep(poll_s)
    if speak:
        print(summary.format(), flush=True)
    return summary


def _groups(runs: list[RunConfig], k: int) -> list[list[RunConfig]]:
    """Consecutive groups of up to ``k`` runs that can share one image cache (same size and colour
    correction), in the given order (longest first)."""
    if k <= 1:
        return [[r] for r in runs]
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

