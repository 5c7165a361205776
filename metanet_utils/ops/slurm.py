"""The grid on a Slurm cluster through submitit: one job array, one task per run still to train (docs/slurm.md).

The per-run lock is all the bookkeeping there is (no job table): rerunning the command submits exactly the runs
neither complete nor locked. A preempted task is requeued by submitit and resumes from the run's checkpoint.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Iterable

import submitit
import torch
from submitit.core.utils import FailedJobError, UncompletedJobError

from ..config import ConfigError, Profile, RunConfig, load_profile
from ..dataset import profile_dataset
from ..paths import results_dir, runs_dir as default_runs_dir
from ..runs import enumerate_runs, filter_runs, status_table
from ..train import is_complete, record_dir, train_run
from .grid import estimated_cost, parse_only
from .locks import RunBusy, run_lock
from .weights import ensure_weights

DEFAULT_TIME_MIN = 24 * 60
MAX_REQUEUES = 20  # times a run may reach its time limit and be requeued
POLL_S = 3.0  # seconds between two looks at the jobs
_ALIVE = ("PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED", "COMPLETING")


class SlurmError(ConfigError):
    """The cluster refused the submission; the message says why and how to fix it."""


def slurm_settings(env: str | None = None, options: Iterable[str] | None = None, **flags: Any) -> dict[str, Any]:
    """Job settings: ``$METANET_SLURM`` (or ``env``), then ``options`` (``KEY=VALUE`` words), then non-None flags.

    Example:
        >>> slurm_settings("partition=gpu gpus=0 mem=64G", partition="cpu", options=["cpus-per-task=8"])
        {'partition': 'cpu', 'gpus': 0, 'mem': '64G', 'cpus_per_task': '8'}
    """
    text = os.environ.get("METANET_SLURM", "") if env is None else env
    out: dict[str, Any] = {}
    for word in [*text.split(), *(options or [])]:
        key, sep, value = word.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not key:
            raise ConfigError(f"slurm setting {word!r}: expected key=value, e.g. time=720")
        out[key] = value if sep else True
    out.update({k: v for k, v in flags.items() if v is not None})
    for key in ("gpus", "workers", "time"):
        if key in out:
            try:
                out[key] = int(out[key])
            except (TypeError, ValueError):
                raise ConfigError(f"slurm setting {key}={out[key]!r} is not a whole number") from None
    if out.get("cluster", "slurm") not in ("slurm", "local"):
        raise ConfigError(f"slurm setting cluster={out['cluster']!r}: use slurm or local")
    return out


def make_executor(settings: dict[str, Any], folder: Path, name: str) -> submitit.AutoExecutor:
    """A submitit executor for the job array (settings: docs/slurm.md)."""
    s = dict(settings)
    cluster = s.pop("cluster", "slurm")
    if cluster == "slurm" and not (shutil.which("sbatch") and shutil.which("srun")):
        raise SlurmError("sbatch is not on PATH: this machine is not a Slurm login node; submit from one, "
                         "or train here with --executor local")
    ex = submitit.AutoExecutor(folder=folder, cluster=cluster, slurm_max_num_timeout=MAX_REQUEUES)
    params: dict[str, Any] = {"name": name, "timeout_min": s.pop("time", DEFAULT_TIME_MIN),
                              "gpus_per_node": s.pop("gpus", int(cluster == "slurm")) or None,
                              "slurm_partition": s.pop("partition", None)}
    if "workers" in s:
        params["slurm_array_parallelism"] = s.pop("workers")
    ex.update_parameters(**params, slurm_additional_parameters=s)
    return ex


class TrainJob(submitit.helpers.Checkpointable):
    """What every array task runs: train one run. Preempted or timed out, submitit resubmits this same call
    (``Checkpointable``), and the run resumes from its last epoch's checkpoint."""

    def __init__(self, profile: Profile, data_dir: str | None, runs_dir: str, device: str | None = None,
                 weights_dir: str | None = None) -> None:
        self.profile, self.data_dir, self.runs_dir = profile, data_dir, runs_dir
        self.device, self.weights_dir = device, weights_dir

    def __call__(self, cfg: dict[str, Any]) -> dict[str, Any]:
        """Train the run ``cfg`` (a :meth:`RunConfig.to_dict`); return ``run_id``, ``status`` (and ``mcr``)."""
        run = RunConfig.from_dict(cfg)
        if os.environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
            torch.set_num_threads(int(os.environ["SLURM_CPUS_PER_TASK"]))
        host = socket.gethostname()
        print(f"[metanet] run {run.run_id} on {host}, pid {os.getpid()}, restart "
              f"{os.environ.get('SLURM_RESTART_COUNT', 0)}; records in {self.runs_dir}", flush=True)
        ds = profile_dataset(self.profile, self.data_dir)
        for retry in (True, False):
            try:
                with run_lock(self.runs_dir, run.run_id):
                    m = train_run(run, ds, runs_dir=self.runs_dir, device=self.device, weights_dir=self.weights_dir)
                return {"run_id": run.run_id, "status": "trained", "host": host, "mcr": float(m["mcr"])}
            except RunBusy:  # a grid command peeking at the lock (an instant), or the run submitted twice
                time.sleep(2 * retry)
        return {"run_id": run.run_id, "status": "busy", "host": host}


def _busy(run_id: str, runs_dir: Path) -> bool:
    """True while a job or worker trains the run: it holds the run's lock (freed when its process dies)."""
    try:
        with run_lock(runs_dir, run_id):
            return False
    except RunBusy:
        return True


def _state(job: submitit.Job) -> str:
    """The job's state now (``sacct``; the local executor answers in its own words)."""
    return job.get_info(mode="force").get("State") or job.state


def _outcome(job: submitit.Job | None, run_id: str, runs_dir: Path) -> tuple[str, bool] | None:
    """The report line of a run whose job (None: a trainer elsewhere) ended, and whether its record is complete;
    None when the job found another job training the run."""
    if job is None:
        if is_complete(record_dir(run_id, runs_dir)):
            return "done (trained elsewhere)", True
        return "NOT COMPLETE: its trainer stopped; the same command again resumes it", False
    try:
        res = job.result()
    except FailedJobError as e:  # the run raised: the last line of its traceback (between two rules of dashes)
        parts = str(e).split("-" * 22)
        trace = [ln.strip() for ln in (parts[1] if len(parts) > 2 else str(e)).splitlines() if ln.strip()]
        return f"FAILED: {trace[-1] if trace else 'see the log'}; log: {job.paths.stderr}", False
    except UncompletedJobError:  # no result: cancelled, killed, out of memory, node failure
        return f"ENDED EARLY ({_state(job)}): checkpoint kept; the same command again resumes it", False
    if res["status"] == "busy":
        return None
    if not is_complete(record_dir(run_id, runs_dir)):
        return f"NOT COMPLETE: see {job.paths.stdout}", False
    return f"done, MCR {res['mcr']:.4f} on {res['host']}", True


def _wait(jobs: dict[str, submitit.Job | None], runs_dir: Path) -> int:
    """Wait for every run (None: trained elsewhere) and print a line as each ends; 0 when all are complete."""
    t0, n, bad = time.monotonic(), len(jobs), 0
    pending = dict(jobs)
    while pending:
        for run_id, job in list(pending.items()):
            if (job is None and _busy(run_id, runs_dir)) or (job is not None and not job.done()):
                continue
            line = _outcome(job, run_id, runs_dir)
            if line is None:
                pending[run_id] = None  # another job trains it: wait for its lock
                continue
            if job is not None and not line[1] and _state(job) in _ALIVE:
                continue  # the result of an attempt before a requeue: the job runs again
            del pending[run_id]
            bad += not line[1]
            where = f"job {job.job_id}" if job is not None else "elsewhere"
            print(f"[{n - len(pending)}/{n}] {time.monotonic() - t0:5.0f}s  {run_id} ({where}): {line[0]}",
                  flush=True)
        if pending:
            time.sleep(POLL_S)
    rest = "; the same command again submits the rest" if bad else ""
    print(f"slurm grid: {n - bad} of {n} runs complete{rest}", flush=True)
    return int(bad > 0)


def _submit(executor: submitit.AutoExecutor, job: TrainJob, runs: list[RunConfig], settings: dict) -> list:
    """One job array; sbatch's refusals said in the kit's words."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # submitit prints sbatch's error before raising it
            return executor.map_array(job, [r.to_dict() for r in runs])
    except FailedJobError as e:
        partition = settings.get("partition") or "(the default partition)"
        if "Invalid generic resource" in str(e) and settings.get("gpus", 1):
            raise SlurmError(f"partition {partition} has no GPUs: train on its CPUs with --gpus-per-job 0 (gpus=0 "
                             f"in $METANET_SLURM), or pick a partition with GPUs (sinfo -o '%P %G')") from None
        raise SlurmError(f"sbatch refused the job array: {str(e).strip().splitlines()[-1]}") from None


def submit_grid(profile: Profile, data_dir: str | Path | None = None, *, only: dict | None = None,
                settings: dict[str, Any] | None = None, wait: bool = True, device: str | None = None,
                weights_dir: str | Path | None = None) -> int:
    """Submit the profile's runs neither complete nor being trained as one job array, and wait; 0 when every run is
    complete (or, ``wait=False``, submitted), 1 when a run failed or ended early."""
    settings = slurm_settings() if settings is None else settings
    runs_dir = default_runs_dir().resolve()
    data_arg = str(Path(data_dir).resolve()) if data_dir else None
    weights = str(Path(weights_dir).resolve()) if weights_dir else os.environ.get("METANET_WEIGHTS_DIR")
    ds = profile_dataset(profile, data_arg)
    runs = sorted(filter_runs(enumerate_runs(profile, ds), only or {}), key=estimated_cost, reverse=True)
    if only and not runs:
        raise ConfigError(f"--only {only} matches none of the profile's runs (see: grid --list)")
    missing = [r for r in runs if not is_complete(record_dir(r, runs_dir))]
    todo = [r for r in missing if not _busy(r.run_id, runs_dir)]
    print(f"slurm grid {profile.name}: {len(runs)} runs ({len(ds.df)} images); {len(runs) - len(missing)} complete, "
          f"{len(missing) - len(todo)} being trained, {len(todo)} to submit", flush=True)
    if not missing:
        print("nothing to submit: every run is complete", flush=True)
        return 0
    waiting: dict[str, submitit.Job | None] = {r.run_id: None for r in missing}
    if todo:
        ensure_weights([r.backbone for r in todo if r.pretrained], weights)  # here: compute nodes are often offline
        folder = results_dir() / "slurm" / "%j"
        executor = make_executor(settings, folder, f"metanet-{profile.name}")
        jobs = _submit(executor, TrainJob(profile, data_arg, str(runs_dir), device, weights), todo, settings)
        what = f"job array {jobs[0].job_id.split('_')[0]}" if len(jobs) > 1 else f"job {jobs[0].job_id}"
        asked = " ".join(f"{k}={v}" for k, v in settings.items()) or "the defaults"
        print(f"submitted {len(todo)} run(s) as {what} ({asked}), longest first; logs in {folder.parent}/<job id>/",
              flush=True)
        waiting.update({r.run_id: j for r, j in zip(todo, jobs)})
    return _wait(waiting, runs_dir) if wait else 0


def run_grid_slurm(profile: Profile, args: Any) -> int:
    """``python -m metanet_utils grid --executor slurm ...``: 0 all complete, 1 a run not (refused: SlurmError)."""
    only = parse_only(args.only)
    if args.list:
        ds = profile_dataset(profile, args.data_dir)
        df = status_table(filter_runs(enumerate_runs(profile, ds), only))
        df["training"] = [not c and _busy(r, default_runs_dir()) for r, c in zip(df["run_id"], df["complete"])]
        print(df.to_string(index=False))
        return 0
    settings = slurm_settings(options=args.slurm_option, partition=args.partition, gpus=args.gpus_per_job,
                              workers=args.workers)
    return submit_grid(profile, args.data_dir, only=only, settings=settings, wait=not args.no_wait,
                       device=args.device, weights_dir=args.weights_dir)


def run_profile_on_slurm(profile_name: str, data_dir: str | None) -> int:
    """``./run_all.sh --executor slurm``: train every missing run of a profile on Slurm and wait."""
    return submit_grid(load_profile(profile_name), data_dir)
