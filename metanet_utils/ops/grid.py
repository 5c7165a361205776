"""Training a profile's grid: :func:`run_grid` trains the missing runs longest first; a lock per run keeps workers
(processes, machines, Slurm jobs) off each other's runs.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from ..atomic import atomic_write_text
from ..cache import CacheError
from ..config import ConfigError, Profile, RunConfig
from ..paths import runs_dir as default_runs_dir
from ..runs import EXPERIMENTS, enumerate_runs, filter_runs
from ..train import is_complete, record_dir, train_run
from .locks import RunBusy, run_lock
from .step import graph_step
from .together import train_runs_together
from .weights import ensure_weights

SHORT_RUN_EPOCHS = 10  # progress="auto": a line per run when no run has more epochs, else a line per epoch
#: Forward GMACs at 224 px (331 px for PNASNet), for ordering runs longest first.
_GMACS = {"alexnet": 0.71, "vgg19": 19.63, "resnet50": 4.11, "densenet161": 7.79, "senet154": 20.77,
          "legacy_senet154": 20.77, "pnasnet5large": 25.04}


def estimated_cost(cfg: RunConfig) -> float:
    """Relative cost of a run (GMACs x pixels x epochs), for longest-first ordering."""
    return _GMACS.get(cfg.backbone.split(".")[0], 1.0) * (cfg.crop_size / 224) ** 2 * cfg.epochs


def parse_only(items: Iterable[str]) -> dict[str, list[str]]:
    """``--only``: ``["backbone=resnet50", "fold=0,1"]`` -> ``{"backbone": ["resnet50"], "fold": ["0", "1"]}``."""
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


def resolve_progress(progress: bool | str, runs: Iterable[RunConfig]) -> str | None:
    """What ``run_grid`` prints: ``"epochs"`` (True: a line per epoch), ``"runs"`` (a line per run), None (False:
    failures only); ``"auto"``: ``"runs"`` for short runs, else ``"epochs"`` (hours a run: the only sign of life).

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
    """The ``make_step`` of ``train_run`` for ``cfg``: the CUDA-graph step for ``cuda_graphs: on``, else None."""
    return graph_step if cfg.cuda_graphs == "on" else None


@dataclass
class GridSummary:
    """What a grid did: its runs, which it trained, found complete, or saw fail (with their logs)."""

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

    Runs another worker holds are left to it; with ``wait`` this worker waits for them (and takes one over if its
    worker dies). A failing run is logged to ``runs/.failed/<run_id>.log``. ``together``: runs trained at once.
    """
    resolve_progress(progress, [])  # a bad value is refused before any work
    runs_dir = Path(runs_dir or default_runs_dir())
    if together is not None:  # a bad value is refused as in a profile
        profile = dataclasses.replace(profile, runs_together=together)
    k = profile.runs_together
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
    """Train one run, or several together: run_id -> metrics or the exception that stopped it. A
    :class:`CacheError` (a bad image, a full disk) and an interrupt stop the grid."""
    if mode == "epochs":
        for i, cfg in enumerate(group, start=len(summary.trained) + len(summary.failed) + 1):
            print(f"--- run {cfg.run_id} ({i}/{todo})", flush=True)
    kw = dict(runs_dir=runs_dir, device=device, progress=mode == "epochs", weights_dir=weights_dir)
    try:
        if len(group) > 1:
            results = train_runs_together(group, dataset, **kw)
        else:
            with run_lock(runs_dir, group[0].run_id):
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
    """Groups of up to ``k`` runs that can share one image cache (same size and colour correction), in order."""
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
    procs = [subprocess.Popen([sys.executable, "-m", "metanet_utils", *argv, "--workers", "1"]) for _ in range(n)]
    return max(p.wait() for p in procs)
