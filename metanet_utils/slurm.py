"""The grid on a Slurm cluster, through submitit: one job array, results on the shared filesystem.

Usage (on the cluster's login node, from the project folder, which must be on a filesystem
the compute nodes share)::

    python -m metanet_utils weights fetch --weights-dir /shared/metanet-weights   # login node: has internet
    export METANET_WEIGHTS_DIR=/shared/metanet-weights                            # jobs inherit it
    python -m metanet_utils data prepare --profile paper                          # optional: caches built once
    python -m metanet_utils grid --profile paper --executor slurm --partition gpu \\
        --gpus-per-job 1 --max-parallel 16 --time 720 --slurm-option cpus-per-task=8 mem=64G

or, for the whole chain, ``./run_all.sh --profile paper --executor slurm`` (settings from the
``METANET_SLURM_*`` variables below). What happens:

* the runs of the profile whose record is missing (``train.is_complete``), and that no earlier
  submission is still training (``results/slurm/jobs.json`` + ``squeue``), are submitted as one
  job array, longest first; every array task trains one run (:class:`TrainJob`) and writes its
  record to ``results/runs/<run_id>/`` (``$METANET_RESULTS_DIR`` is respected);
* the command then waits and prints one line per finished run, or returns at once with
  ``--no-wait``; logs are in ``results/slurm/<date>/<jobid>_<index>/`` (submitit's
  ``*_log.out`` / ``*_log.err``); a failed run is reported with its log and does not stop the others;
* a job that is preempted or reaches its time limit is requeued by submitit (:class:`TrainJob` is
  checkpointable) and resumes its run from the last epoch checkpoint
  (``results/runs/.work/<run_id>/checkpoint.pt``); a job cancelled or killed (``scancel``, node
  failure) keeps its checkpoint, and rerunning the same command submits only what is missing,
  which resumes from there. Two jobs never train the same run: ``run_id`` names the run and the
  training engine holds a lock per run (a second job finds it busy and leaves it).

Compute nodes without internet: pretrained weights cannot be downloaded inside a job. Run
``python -m metanet_utils weights fetch --weights-dir DIR`` once on the login node (it has
internet), with ``DIR`` on the shared filesystem, and either export ``METANET_WEIGHTS_DIR=DIR``
before submitting (submitit jobs inherit the submitting environment) or pass
``--weights-dir DIR`` (given to every job explicitly, so it also works where jobs do not inherit
the environment). Data, results and caches are found the same way: the paths resolved on the
login node (``--data-dir``, ``METANET_RESULTS_DIR``, ``METANET_CACHE_DIR``, ``METANET_ROOT``) are
passed to every job.

Job state comes from ``squeue`` (no Slurm accounting/``sacct`` needed); training inside a job
uses ``$SLURM_CPUS_PER_TASK`` threads (ask with ``--slurm-option cpus-per-task=N``); on a
CPU-only partition pass ``--gpus-per-job 0``.

Settings also read from the environment (the CLI flags win): ``METANET_SLURM_PARTITION``,
``METANET_SLURM_GPUS`` (GPUs per job, default 1), ``METANET_SLURM_MAX_PARALLEL``,
``METANET_SLURM_TIME`` (minutes, default 1440), ``METANET_SLURM_OPTIONS`` (``"key=value ..."``,
extra ``#SBATCH`` settings) and ``METANET_SUBMITIT_CLUSTER`` (``slurm``, default, or ``local``:
the same jobs as local processes through submitit's local executor, for machines without Slurm).

Example:
    >>> from metanet_utils.slurm import parse_slurm_options
    >>> parse_slurm_options(["cpus-per-task=8", "mem=64G", "exclusive"])
    {'cpus-per-task': '8', 'mem': '64G', 'exclusive': True}
"""

from __future__ import annotations

import datetime as _dt
import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from .atomic import FileLock, LockHeld, atomic_write_json
from .config import ConfigError, Profile, RunConfig

__all__ = [
    "SlurmError",
    "SlurmOptions",
    "JobRef",
    "TrainJob",
    "SlurmSummary",
    "parse_slurm_options",
    "slurm_dir",
    "load_job_table",
    "active_job_ids",
    "submit_grid",
    "wait_for_jobs",
    "run_grid_slurm",
    "run_profile_on_slurm",
]

#: Default time limit per job (minutes) when neither ``--time`` nor ``METANET_SLURM_TIME`` is set.
DEFAULT_TIME_MIN = 24 * 60
#: Timeouts after which a run is no longer requeued (each requeue resumes from its checkpoint).
MAX_TIMEOUT_REQUEUES = 20
#: Squeue states after which a job will not run again.
_FINAL_STATES = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                 "DEADLINE", "SPECIAL_EXIT", "REVOKED"}
#: Environment variables handed to every job (resolved on the submitting machine).
_PASSED_ENV = ("METANET_ROOT", "METANET_RESULTS_DIR", "METANET_CACHE_DIR", "METANET_FIGURES_DIR",
               "METANET_DATA_DIR", "METANET_WEIGHTS_DIR", "TORCH_HOME", "HF_HOME", "HUGGINGFACE_HUB_CACHE")
_CLUSTERS = ("slurm", "local")


class SlurmError(RuntimeError):
    """Submitting to the cluster failed; the message says why and what to check."""


# --------------------------------------------------------------------------- settings

def parse_slurm_options(items: Iterable[str] | None) -> dict[str, str | bool]:
    """``["cpus-per-task=8", "exclusive"]`` -> ``{"cpus-per-task": "8", "exclusive": True}``.

    Keys are ``sbatch`` long options without the dashes (``_`` and ``-`` both work); a key
    without ``=value`` is a flag.

    Raises:
        ConfigError: on an empty key.
    """
    out: dict[str, str | bool] = {}
    for item in items or ():
        key, sep, value = str(item).partition("=")
        key = key.strip().lstrip("-")
        if not key:
            raise ConfigError(f"--slurm-option {item!r}: expected key=value (e.g. cpus-per-task=8) or a flag")
        out[key] = value if sep else True
    return out


@dataclass(frozen=True)
class SlurmOptions:
    """How the job array is requested.

    Attributes:
        partition: Slurm partition (None: the cluster's default).
        gpus_per_job: GPUs per job (``--gpus-per-node``); 0 asks for none.
        max_parallel: array tasks running at once (None: all).
        time_min: time limit per job in minutes; a job reaching it is requeued and resumes.
        extra: further ``#SBATCH`` settings (``slurm_additional_parameters``).
        cluster: ``slurm``, or ``local`` for submitit's local executor (no Slurm needed).
        job_name: Slurm job name (default ``metanet-<profile>``).
    """

    partition: str | None = None
    gpus_per_job: int = 1
    max_parallel: int | None = None
    time_min: int | None = None
    extra: Mapping[str, str | bool] = field(default_factory=dict)
    cluster: str = "slurm"
    job_name: str | None = None

    def __post_init__(self) -> None:
        if self.cluster not in _CLUSTERS:
            raise ConfigError(f"submitit cluster {self.cluster!r} (METANET_SUBMITIT_CLUSTER) is not allowed; "
                              f"choose one of: {', '.join(_CLUSTERS)}")
        if self.gpus_per_job < 0:
            raise ConfigError(f"--gpus-per-job {self.gpus_per_job}: must be >= 0")
        if self.max_parallel is not None and self.max_parallel < 1:
            raise ConfigError(f"--max-parallel {self.max_parallel}: must be >= 1")
        if self.time_min is not None and self.time_min < 1:
            raise ConfigError(f"--time {self.time_min}: must be >= 1 minute")

    @classmethod
    def from_env(cls, **overrides: Any) -> "SlurmOptions":
        """Options from ``METANET_SLURM_*`` / ``METANET_SUBMITIT_CLUSTER``; non-None overrides win."""
        env = os.environ

        def _int(name: str) -> int | None:
            v = env.get(name, "").strip()
            if not v:
                return None
            try:
                return int(v)
            except ValueError:
                raise ConfigError(f"${name}={v!r} is not a whole number") from None

        base: dict[str, Any] = {
            "partition": env.get("METANET_SLURM_PARTITION") or None,
            "gpus_per_job": _int("METANET_SLURM_GPUS"),
            "max_parallel": _int("METANET_SLURM_MAX_PARALLEL"),
            "time_min": _int("METANET_SLURM_TIME"),
            "extra": parse_slurm_options(env.get("METANET_SLURM_OPTIONS", "").split()),
            "cluster": env.get("METANET_SUBMITIT_CLUSTER") or None,
        }
        for k, v in overrides.items():
            if v is None:
                continue
            if k == "extra":
                base["extra"] = {**base["extra"], **dict(v)}
            else:
                base[k] = v
        return cls(**{k: v for k, v in base.items() if v is not None})

    @classmethod
    def from_args(cls, args: Any) -> "SlurmOptions":
        """Options from the ``grid`` command's argparse Namespace (flags win over the environment)."""
        return cls.from_env(partition=getattr(args, "partition", None),
                            gpus_per_job=getattr(args, "gpus_per_job", None),
                            max_parallel=getattr(args, "max_parallel", None),
                            time_min=getattr(args, "time", None),
                            extra=parse_slurm_options(getattr(args, "slurm_option", None)))

    def describe(self) -> str:
        parts = [f"partition {self.partition or '(default)'}", f"{self.gpus_per_job} GPU/job",
                 f"time {self.time_min or DEFAULT_TIME_MIN} min"]
        if self.max_parallel:
            parts.append(f"at most {self.max_parallel} at once")
        if self.extra:
            parts.append(" ".join(f"--{k}" if v is True else f"--{k}={v}" for k, v in self.extra.items()))
        return ", ".join(parts)


# --------------------------------------------------------------------------- the job

def _threads_for_job() -> int | None:
    for name in ("METANET_JOB_THREADS", "SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE"):
        v = os.environ.get(name, "")
        if v.isdigit() and int(v) > 0:
            return int(v)
    return None


def _forget_previous_attempt() -> None:
    """Remove this job's result file left by an attempt before a requeue.

    When submitit requeues a job (preemption, time limit), the dying attempt may still write
    an error result (its ``scontrol requeue`` is killed with the job); the new attempt starts
    clean so that only its own outcome is read.
    """
    try:
        import submitit

        env = submitit.JobEnvironment()
        Path(env.paths.result_pickle).unlink(missing_ok=True)
    except Exception:  # noqa: BLE001 - not inside a submitit job (called directly): nothing to forget
        pass


class TrainJob:
    """The picklable callable every array task runs: open the data set, train one run.

    It follows submitit's checkpointable protocol (:class:`submitit.helpers.Checkpointable`:
    submitit calls :meth:`checkpoint` on preemption or timeout, dumps what it returns, and
    requeues the job). Nothing needs saving at that point: the training engine checkpoints
    every epoch, so the requeued call resumes the run from its last epoch.

    Args:
        profile: the profile the runs come from (to open the same data set).
        data_dir: the data folder as given on the submitting machine (None: default places).
        runs_dir: absolute folder of the records (shared filesystem).
        env: environment variables set in the job before anything else (paths resolved on the
            submitting machine, e.g. ``METANET_RESULTS_DIR``, ``METANET_WEIGHTS_DIR``).
        device: ``cuda``, ``cpu``...; None picks the GPU if the job has one.
        weights_dir: folder of pre-fetched pretrained weights (compute nodes are offline).
    """

    def __init__(self, profile: Profile, data_dir: str | None, runs_dir: str, env: Mapping[str, str] | None = None,
                 device: str | None = None, weights_dir: str | None = None) -> None:
        self.profile = profile
        self.data_dir = data_dir
        self.runs_dir = runs_dir
        self.env = dict(env or {})
        self.device = device
        self.weights_dir = weights_dir

    def __call__(self, cfg: Mapping[str, Any]) -> dict[str, Any]:
        """Train the run ``cfg`` (a :meth:`RunConfig.to_dict`); return a short outcome.

        Returns:
            ``{"run_id", "status", "host", ...}`` with status ``trained`` (record written now,
            ``mcr`` given), ``complete`` (it already was) or ``busy`` (another worker holds
            the run's lock and is training it).
        """
        os.environ.update(self.env)
        _forget_previous_attempt()
        threads = _threads_for_job()
        import torch

        if threads:
            torch.set_num_threads(threads)
        from .grid import profile_dataset
        from .train import RunBusy, is_complete, record_dir, train_run

        run = RunConfig.from_dict(dict(cfg))
        host = socket.gethostname()
        job_id = os.environ.get("SLURM_ARRAY_JOB_ID", "")
        job_id = f"{job_id}_{os.environ.get('SLURM_ARRAY_TASK_ID')}" if job_id else os.environ.get(
            "SLURM_JOB_ID", os.environ.get("SUBMITIT_LOCAL_JOB_ID", "?"))
        restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
        print(f"[metanet] run {run.run_id} on {host}, job {job_id} (restart {restarts}), "
              f"{threads or torch.get_num_threads()} CPU threads, records in {self.runs_dir}", flush=True)
        out: dict[str, Any] = {"run_id": run.run_id, "host": host, "job_id": job_id}
        if is_complete(record_dir(run, self.runs_dir)):
            return {**out, "status": "complete"}
        ds = profile_dataset(self.profile, self.data_dir)
        try:
            metrics = train_run(run, ds, runs_dir=self.runs_dir, device=self.device, weights_dir=self.weights_dir)
        except RunBusy as e:
            print(f"[metanet] {e}; leaving it to that worker", flush=True)
            return {**out, "status": "busy"}
        return {**out, "status": "trained", "mcr": float(metrics["mcr"]), "epochs_done": metrics.get("epochs_done"),
                "wall_time_s": metrics.get("wall_time_s"), "device": metrics.get("device")}

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Called by submitit on preemption/timeout: requeue the same call (it resumes)."""
        from submitit.helpers import DelayedSubmission

        print("[metanet] preempted or out of time: requeued; the run resumes from its last epoch checkpoint",
              flush=True)
        return DelayedSubmission(self, *args, **kwargs)


# --------------------------------------------------------------------------- job bookkeeping

def slurm_dir() -> Path:
    """``results/slurm``: submitit folders (per date) and ``jobs.json``."""
    from .paths import results_dir

    return results_dir() / "slurm"


@dataclass
class JobRef:
    """Where one run was submitted: enough to find its state, result and logs later."""

    run_id: str
    job_id: str
    folder: str
    cluster: str = "slurm"
    job_name: str = ""
    submitted_at: str = ""
    profile: str = ""

    def paths(self):
        from submitit.core.utils import JobPaths

        return JobPaths(self.folder, job_id=self.job_id, task_id=0)

    @property
    def stdout(self) -> Path:
        return Path(self.paths().stdout)

    @property
    def stderr(self) -> Path:
        return Path(self.paths().stderr)

    @property
    def logs(self) -> str:
        return f"{self.stderr} (stdout: {self.stdout.name})"

    def read_result(self) -> tuple[str, Any] | None:
        """``("success", value)`` or ``("error", traceback)`` once the job has finished in Python."""
        from submitit.core.utils import pickle_load

        p = Path(self.paths().result_pickle)
        if not p.is_file():
            return None
        for _ in range(3):
            try:
                return pickle_load(p)
            except (EOFError, OSError):  # being written on a slow shared filesystem
                time.sleep(1.0)
        return None

    def to_dict(self) -> dict[str, str]:
        return {k: getattr(self, k) for k in ("run_id", "job_id", "folder", "cluster", "job_name",
                                              "submitted_at", "profile")}


def _table_path() -> Path:
    return slurm_dir() / "jobs.json"


def load_job_table(path: str | Path | None = None) -> dict[str, JobRef]:
    """The latest submission of every run (``results/slurm/jobs.json``), by run id."""
    p = Path(path) if path is not None else _table_path()
    if not p.is_file():
        return {}
    try:
        raw = json.loads(p.read_text())
    except (OSError, ValueError):
        return {}
    out: dict[str, JobRef] = {}
    for rid, d in (raw.get("runs") or {}).items():
        try:
            out[rid] = JobRef(**{k: str(v) for k, v in d.items() if k in JobRef.__dataclass_fields__})
        except TypeError:
            continue
    return out


def _save_job_table(table: Mapping[str, JobRef], path: Path | None = None) -> None:
    atomic_write_json(path or _table_path(), {"runs": {rid: ref.to_dict() for rid, ref in sorted(table.items())}})


def _squeue() -> dict[str, tuple[str, str]] | None:
    """``{job_id: (state, name)}`` of this user's jobs (array tasks one by one); None if squeue fails."""
    exe = shutil.which("squeue")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "-h", "-r", "-u", getpass.getuser(), "-o", "%i|%T|%j"], capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    jobs: dict[str, tuple[str, str]] = {}
    for line in out.stdout.splitlines():
        parts = line.strip().split("|", 2)
        if len(parts) == 3:
            jobs[parts[0]] = (parts[1].upper(), parts[2])
    return jobs


def _pid_alive(pid: int) -> bool:
    """A live (not zombie) submitit controller with this pid on this machine."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError, ValueError, OverflowError):
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
        return b"submitit" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, IndexError):
        return True


def active_job_ids(refs: Iterable[JobRef], handles: Mapping[str, Any] | None = None) -> set[str] | None:
    """Job ids among ``refs`` that are still queued or running (None: the scheduler did not answer).

    Slurm jobs are looked up with ``squeue`` (works without accounting; a requeued job stays
    active under its id); local jobs by their controller's process (``handles``: the submitit
    job objects of this process, polled so finished children are reaped).
    """
    refs = list(refs)
    handles = handles or {}
    active: set[str] = set()
    queue: dict[str, tuple[str, str]] | None = {}
    if any(r.cluster == "slurm" for r in refs):
        queue = _squeue()
        if queue is None:
            return None
    for r in refs:
        if r.cluster == "slurm":
            hit = queue.get(r.job_id) if queue is not None else None
            if hit and hit[0] not in _FINAL_STATES and (not r.job_name or hit[1] == r.job_name):
                active.add(r.job_id)
        else:
            h = handles.get(r.run_id)
            if h is not None and getattr(h, "job_id", None) == r.job_id:
                if not h.done():
                    active.add(r.job_id)
            elif r.job_id.isdigit() and _pid_alive(int(r.job_id)):
                active.add(r.job_id)
    return active


# --------------------------------------------------------------------------- submit and wait

@dataclass
class SlurmSummary:
    """What one ``grid --executor slurm`` call did."""

    total: int = 0
    complete_before: list[str] = field(default_factory=list)
    submitted: dict[str, str] = field(default_factory=dict)
    in_progress: dict[str, str] = field(default_factory=dict)
    trained: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    unfinished: dict[str, str] = field(default_factory=dict)
    array_id: str | None = None
    log_dir: str | None = None
    waited: bool = False

    @property
    def ok(self) -> bool:
        """All runs complete (when waited) or submission went through (``--no-wait``)."""
        return not self.failed and not self.unfinished if self.waited else True

    def format(self) -> str:
        lines = [f"slurm grid: {self.total} runs; complete before {len(self.complete_before)}, "
                 f"submitted now {len(self.submitted)}, already queued/running {len(self.in_progress)}"]
        if self.waited:
            lines[0] += f"; trained {len(self.trained)}, failed {len(self.failed)}, unfinished {len(self.unfinished)}"
        for rid, why in self.failed.items():
            lines.append(f"  FAILED {rid}: {why}")
        for rid, why in self.unfinished.items():
            lines.append(f"  NOT COMPLETE {rid}: {why}")
        if self.failed or self.unfinished:
            lines.append("  rerun the same command to submit only what is missing (interrupted runs resume "
                         "from their last epoch checkpoint)")
        return "\n".join(lines)


def _make_executor(options: SlurmOptions, folder: Path, n_runs: int, job_name: str):
    try:
        import submitit
    except ImportError:
        raise SlurmError("submitit is not installed: pip install 'metanet-utils[slurm]' (or: pip install submitit)") \
            from None

    if options.cluster == "slurm" and shutil.which("sbatch") is None:
        raise SlurmError("sbatch is not on PATH: run this on a Slurm login node (or set "
                         "METANET_SUBMITIT_CLUSTER=local to run the same jobs here through submitit)")
    try:
        ex = submitit.AutoExecutor(folder=str(folder), cluster=options.cluster,
                                   slurm_max_num_timeout=MAX_TIMEOUT_REQUEUES)
    except RuntimeError as e:  # srun missing
        raise SlurmError(f"submitit cannot use Slurm here: {e}") from None
    params: dict[str, Any] = {
        "name": job_name,
        "timeout_min": int(options.time_min or DEFAULT_TIME_MIN),
        "slurm_array_parallelism": int(options.max_parallel or max(n_runs, 1)),
    }
    if options.gpus_per_job:
        params["gpus_per_node"] = int(options.gpus_per_job)
    if options.partition:
        params["slurm_partition"] = options.partition
    if options.extra:
        params["slurm_additional_parameters"] = {k.replace("_", "-"): v for k, v in options.extra.items()}
    try:
        ex.update_parameters(**params)
    except (ValueError, NameError, AssertionError) as e:
        raise SlurmError(f"bad Slurm setting: {e}") from None
    return ex


def _job_env(weights_dir: str | None) -> dict[str, str]:
    from .paths import cache_dir, project_root, results_dir

    env = {k: os.environ[k] for k in _PASSED_ENV if os.environ.get(k)}
    env.update(METANET_ROOT=str(project_root()), METANET_RESULTS_DIR=str(results_dir()),
               METANET_CACHE_DIR=str(cache_dir()))
    if weights_dir:
        env["METANET_WEIGHTS_DIR"] = str(weights_dir)
    return env


def _log_hint(folder: Path, job_ids: list[str], cluster: str) -> str:
    """Where the logs of these jobs are, in one line."""
    pattern = str(folder)
    if len(job_ids) == 1:
        text = f"{pattern.replace('%j', job_ids[0])}/ ({job_ids[0]}_0_log.out, {job_ids[0]}_0_log.err)"
    elif cluster == "slurm":
        array = job_ids[0].split("_")[0]
        text = f"{pattern.replace('%j', f'{array}_<index>')}/ ({array}_<index>_0_log.out, _log.err)"
    else:
        text = f"{pattern.replace('%j', '<pid>')}/ (<pid>_0_log.out, _log.err)"
    if cluster == "slurm":
        text += f"; follow with: squeue -j {job_ids[0].split('_')[0]}"
    return text


def submit_grid(profile: Profile, data_dir: str | Path | None = None, *,
                only: Mapping[str, list[str]] | None = None, options: SlurmOptions | None = None,
                wait: bool = True, runs_dir: str | Path | None = None, device: str | None = None,
                weights_dir: str | Path | None = None, progress: bool = True,
                max_poll_s: float = 15.0) -> SlurmSummary:
    """Submit the profile's missing runs as one job array (longest first) and optionally wait.

    Args:
        profile: the profile whose runs to train.
        data_dir: data folder (None: ``$METANET_DATA_DIR``, ``data/ham10000``, synthetic fallback).
        only: ``grid.parse_only`` filter.
        options: how to request the jobs (default: :meth:`SlurmOptions.from_env`).
        wait: wait for the jobs and report each finished run; False returns after submitting.
        runs_dir: records folder (default ``results/runs``).
        device: device for training inside the jobs (None: the job's GPU if any).
        weights_dir: pre-fetched weights folder, given to every job (default ``$METANET_WEIGHTS_DIR``).
        progress: print what happens.
        max_poll_s: longest pause between two looks at the queue while waiting.

    Returns:
        A :class:`SlurmSummary`.

    Raises:
        SlurmError: submission failed (no Slurm here, sbatch refused the job...).
    """
    from .grid import enumerate_runs, estimated_cost, filter_runs, profile_dataset
    from .paths import runs_dir as default_runs_dir
    from .train import is_complete, record_dir

    options = options or SlurmOptions.from_env()
    runs_dir = Path(runs_dir or default_runs_dir()).resolve()
    weights = str(Path(weights_dir).resolve()) if weights_dir else os.environ.get("METANET_WEIGHTS_DIR") or None
    data_arg = str(Path(data_dir).resolve()) if data_dir else None
    ds = profile_dataset(profile, data_arg)
    runs = sorted(filter_runs(enumerate_runs(profile, ds), dict(only or {})), key=estimated_cost, reverse=True)
    if only and not runs:
        raise ConfigError(f"--only {dict(only)} matches none of the profile's runs (see: grid --list)")
    summary = SlurmSummary(total=len(runs))
    summary.complete_before = [r.run_id for r in runs if is_complete(record_dir(r, runs_dir))]
    missing = [r for r in runs if r.run_id not in set(summary.complete_before)]
    job_name = options.job_name or f"metanet-{profile.name}"
    sdir = slurm_dir()
    sdir.mkdir(parents=True, exist_ok=True)
    folder = sdir / _dt.date.today().isoformat() / "%j"
    watch: dict[str, JobRef] = {}
    handles: dict[str, Any] = {}

    with FileLock(sdir / ".submit.lock"):  # two submitters never submit the same run twice
        table = load_job_table()
        known = [table[r.run_id] for r in missing if r.run_id in table]
        active = active_job_ids(known) if known else set()
        if active is None:
            raise SlurmError("squeue did not answer: cannot tell which runs are already queued; is the Slurm "
                             "controller reachable (sinfo)?")
        for r in missing:
            ref = table.get(r.run_id)
            if ref is not None and ref.job_id in active:
                summary.in_progress[r.run_id] = ref.job_id
                watch[r.run_id] = ref
        to_submit = [r for r in missing if r.run_id not in summary.in_progress]
        from .models import ensure_weights

        # on the submitting machine (a login node has internet; compute nodes often not): found or fetched
        # here, or the grid stops before anything is submitted
        ensure_weights([r.backbone for r in to_submit if r.pretrained], weights, progress)
        if progress:
            print(f"slurm grid {profile.name}: {len(runs)} runs ({ds.kind} data, {len(ds.df)} images); "
                  f"{len(summary.complete_before)} complete, {len(summary.in_progress)} queued/running in earlier "
                  f"jobs, {len(to_submit)} to submit", flush=True)
        if to_submit:
            ex = _make_executor(options, folder, len(to_submit), job_name)
            env = _job_env(weights)
            if options.cluster == "local":  # all local jobs start at once: share the cores, never oversubscribe
                at_once = min(len(to_submit), options.max_parallel or len(to_submit))
                env["METANET_JOB_THREADS"] = str(max(1, (os.cpu_count() or 1) // at_once))
            job_fn = TrainJob(profile, data_arg, str(runs_dir), env=env, device=device, weights_dir=weights)
            try:
                jobs = ex.map_array(job_fn, [r.to_dict() for r in to_submit])
            except Exception as e:  # noqa: BLE001 - submitit raises several kinds; all mean "not submitted"
                msg = str(e).strip().splitlines()
                raise SlurmError(f"submission failed: {type(e).__name__}: {' / '.join(msg[-3:])}") from None
            now = _dt.datetime.now().isoformat(timespec="seconds")
            for r, job in zip(to_submit, jobs):
                ref = JobRef(run_id=r.run_id, job_id=str(job.job_id), folder=str(folder), cluster=options.cluster,
                             job_name=job_name, submitted_at=now, profile=profile.name)
                table[r.run_id] = ref
                watch[r.run_id] = ref
                handles[r.run_id] = job
                summary.submitted[r.run_id] = ref.job_id
            summary.array_id = str(jobs[0].job_id).split("_")[0] if options.cluster == "slurm" else None
            summary.log_dir = str(folder.parent)
            _save_job_table(table)
            if progress:
                ids = list(summary.submitted.values())
                if options.cluster != "slurm":
                    what = f"local submitit job(s) (pid {', '.join(ids)})"
                else:
                    what = f"job array {summary.array_id}" if len(ids) > 1 else f"job {ids[0]}"
                print(f"submitted {len(to_submit)} run(s) as {what}, longest first ({options.describe()})\n"
                      f"logs: {_log_hint(folder, list(summary.submitted.values()), options.cluster)}", flush=True)
        elif progress and not watch:
            print("nothing to submit: every run is complete", flush=True)

    if not wait:
        if progress and watch:
            print("not waiting (--no-wait); rerun the same command to see progress or to submit what is missing",
                  flush=True)
        return summary
    summary.waited = True
    try:
        wait_for_jobs(watch, runs_dir, summary, handles=handles, progress=progress, max_poll_s=max_poll_s)
    except KeyboardInterrupt:
        if progress and options.cluster == "slurm":
            print("\nstopped waiting; the jobs keep running on the cluster. Rerun the same command to watch them "
                  "(it does not submit them again).", file=sys.stderr, flush=True)
        raise
    if progress:
        print(summary.format(), flush=True)
    return summary


def _lock_held(run_id: str, runs_dir: Path) -> bool:
    lk = FileLock(runs_dir / ".locks" / f"{run_id}.lock", blocking=False)
    try:
        lk.acquire()
    except LockHeld:
        return True
    lk.release()
    return False


def _last_line(trace: str) -> str:
    lines = [ln.strip() for ln in str(trace).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "unknown error"


def wait_for_jobs(watch: Mapping[str, JobRef], runs_dir: str | Path, summary: SlurmSummary, *,
                  handles: Mapping[str, Any] | None = None, progress: bool = True, max_poll_s: float = 15.0,
                  grace_s: float = 10.0) -> SlurmSummary:
    """Wait until every watched job has ended; record each run's outcome in ``summary``.

    A job has ended when the scheduler no longer lists it (``squeue``; a requeued job stays
    listed under its id). Its result file then says how (submitit's pickle: the outcome or the
    traceback); no result file means it was cancelled or killed (``scancel``, out of memory,
    node failure), and its checkpoint is kept for the next submission. A run found busy
    (another worker holds its lock) is waited for until that worker lets go of it.
    """
    from .train import is_complete, record_dir

    runs_dir = Path(runs_dir)
    pending = dict(watch)
    n = len(pending)
    done = 0
    t0 = time.monotonic()
    gone_since: dict[str, float] = {}
    busy: dict[str, JobRef] = {}
    warned = False

    def report(rid: str, ref: JobRef, text: str) -> None:
        nonlocal done
        done += 1
        if progress:
            el = time.monotonic() - t0
            print(f"[{done}/{n}] {el:5.0f}s  {rid} (job {ref.job_id}): {text}", flush=True)

    while pending or busy:
        active = active_job_ids(pending.values(), handles) if pending else set()
        if active is None:
            if progress and not warned:
                print("squeue did not answer; retrying (results are kept whatever happens)", flush=True)
                warned = True
            active = {ref.job_id for ref in pending.values()}
        for rid, ref in list(pending.items()):
            if ref.job_id in active:  # a result file of a queued/running job is from an attempt before a requeue
                gone_since.pop(rid, None)
                continue
            outcome = ref.read_result()
            if outcome is None:
                # gone from the queue without a result: allow a slow shared filesystem a moment
                first = gone_since.setdefault(rid, time.monotonic())
                if time.monotonic() - first < grace_s:
                    continue
            del pending[rid]
            complete = is_complete(record_dir(rid, runs_dir))
            if outcome is None:
                if complete:
                    summary.trained.append(rid)
                    report(rid, ref, "done (record complete)")
                else:
                    why = (f"job ended without a result (cancelled, killed, out of memory or node failure); "
                           f"checkpoint kept; log: {ref.logs}")
                    summary.unfinished[rid] = why
                    report(rid, ref, f"ENDED EARLY: {why}")
            elif outcome[0] == "success":
                res = outcome[1] if isinstance(outcome[1], dict) else {}
                if res.get("status") == "busy" and not complete:
                    busy[rid] = ref
                    report(rid, ref, "held by another worker; waiting for it")
                    done -= 1
                elif complete:
                    summary.trained.append(rid)
                    mcr = f"MCR {res['mcr']:.4f}" if isinstance(res.get("mcr"), float) else "record complete"
                    report(rid, ref, f"done, {mcr} on {res.get('host', '?')}")
                else:
                    summary.unfinished[rid] = f"job finished but the record is not complete; log: {ref.logs}"
                    report(rid, ref, f"NOT COMPLETE: log: {ref.logs}")
            else:
                why = f"{_last_line(outcome[1])}; log: {ref.logs}"
                summary.failed[rid] = why
                report(rid, ref, f"FAILED: {why}")
        for rid, ref in list(busy.items()):
            if is_complete(record_dir(rid, runs_dir)):
                del busy[rid]
                summary.trained.append(rid)
                report(rid, ref, "done (trained by another worker)")
            elif not _lock_held(rid, runs_dir):
                del busy[rid]
                summary.unfinished[rid] = "its other worker stopped before finishing; checkpoint kept"
                report(rid, ref, f"NOT COMPLETE: {summary.unfinished[rid]}")
        if pending or busy:
            time.sleep(min(max_poll_s, 1.0 + (time.monotonic() - t0) / 10.0))
    return summary


# --------------------------------------------------------------------------- entry points

def _status_lines(profile: Profile, data_dir: str | Path | None, only: Mapping[str, list[str]] | None) -> str:
    from .grid import enumerate_runs, filter_runs, profile_dataset, status_table

    ds = profile_dataset(profile, str(Path(data_dir).resolve()) if data_dir else None)
    runs = filter_runs(enumerate_runs(profile, ds), dict(only or {}))
    df = status_table(runs)
    table = load_job_table()
    refs = [table[r.run_id] for r in runs if r.run_id in table]
    active = active_job_ids(refs) if refs else set()
    df["job"] = [table[r].job_id if r in table else "" for r in df["run_id"]]
    df["queued"] = [(table[r].job_id in active) if (r in table and active is not None) else False
                    for r in df["run_id"]]
    return df.to_string(index=False)


def run_grid_slurm(profile: Profile, args: Any) -> int:
    """``python -m metanet_utils grid --executor slurm ...``: submit, wait (unless ``--no-wait``), report.

    Args:
        profile: the loaded profile.
        args: the grid command's argparse Namespace (``data_dir``, ``only``, ``partition``,
            ``gpus_per_job``, ``max_parallel``, ``time``, ``slurm_option``, ``no_wait``,
            ``device``, ``weights_dir``, optionally ``list``).

    Returns:
        0 when every run is complete (or, with ``--no-wait``, when submission went through);
        1 when a run failed or did not finish; 2 when submission was refused.
    """
    from .grid import parse_only

    only = parse_only(getattr(args, "only", None) or [])
    if getattr(args, "list", False):
        print(_status_lines(profile, args.data_dir, only))
        return 0
    options = SlurmOptions.from_args(args)
    try:
        summary = submit_grid(profile, args.data_dir, only=only, options=options,
                              wait=not getattr(args, "no_wait", False), device=getattr(args, "device", None),
                              weights_dir=getattr(args, "weights_dir", None))
    except SlurmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0 if summary.ok else 1


def run_profile_on_slurm(profile_name: str, data_dir: str | None) -> int:
    """Train every missing run of a profile on Slurm and wait (``run_all.sh --executor slurm``).

    Job settings come from ``METANET_SLURM_*`` (see the module docstring). Returns 0 when
    every record is complete, so the training notebooks then only load them.
    """
    from .config import load_profile

    profile = load_profile(profile_name)
    try:
        summary = submit_grid(profile, data_dir, options=SlurmOptions.from_env(), wait=True)
    except SlurmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0 if summary.ok else 1
