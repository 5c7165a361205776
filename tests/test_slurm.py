"""The grid on Slurm through submitit, against a real single-node Slurm cluster started here.

The cluster (``scripts/start_slurm.sh``: munged, MariaDB + slurmdbd for ``sacct``, slurmctld and
slurmd on this machine) is started once for the module and stopped at the end. Where it cannot
start (not root, no apt, a daemon fails), the same jobs run through submitit's local executor and
a line on the terminal says so.

Pinned: the smoke grid goes to the cluster as one job array; a failing run is reported with its
log while the others complete; two reruns at once submit only the missing run and one job trains
it; a preempted job is requeued and resumes its run, and a killed one is reported and resumes
from its checkpoint when the same command runs again; a GPU asked of a partition without GPUs is
refused in one line that names the partition and the fix.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("submitit", reason="submitit is not installed: pip install -e .")

from slurm_cluster import Backend, announce, start_backend  # noqa: E402

from metanet_utils.ops import slurm as S  # noqa: E402
from metanet_utils.config import ConfigError, load_profile  # noqa: E402
from metanet_utils.dataset import profile_dataset  # noqa: E402
from metanet_utils.ops.grid import parse_only  # noqa: E402
from metanet_utils.runs import enumerate_runs, filter_runs  # noqa: E402
from metanet_utils.train import is_complete, record_dir  # noqa: E402

SMOKE_ONLY = ["fold=0", "fusion=none,concat", "meta_layers=0,1"]
RESUME_PROFILE = """\
name: slurm-resume
description: "tests/test_slurm.py: one run long enough to be preempted and killed"
data: real
max_images: 300
backbones: [test_resnet]
fusions: [metanet]
n_folds: 2
folds: [0]
epochs: 10
image_size: 48
crop_size: 40
batch_size: 32
lr: 0.01
pretrained: false
"""


# --------------------------------------------------------------------------- no cluster needed

def test_settings_come_from_the_environment_then_options_then_flags(monkeypatch):
    from metanet_utils.ops.cli import build_parser

    monkeypatch.setenv("METANET_SLURM", "partition=gpu gpus=2 time=90 --mem=16G exclusive")
    args = build_parser().parse_args(["grid", "--profile", "smoke", "--executor", "slurm", "--partition", "cpu",
                                      "--gpus-per-job", "0", "--workers", "3", "--slurm-option", "mem=8G",
                                      "cpus-per-task=4"])
    got = S.slurm_settings(options=args.slurm_option, partition=args.partition, gpus=args.gpus_per_job,
                           workers=args.workers)
    assert got == {"partition": "cpu", "gpus": 0, "time": 90, "mem": "8G", "exclusive": True, "cpus_per_task": "4",
                   "workers": 3}
    assert S.slurm_settings(partition=None, gpus=None) == {"partition": "gpu", "gpus": 2, "time": 90, "mem": "16G",
                                                           "exclusive": True}
    with pytest.raises(ConfigError, match="time='soon' is not a whole number"):
        S.slurm_settings("time=soon")
    with pytest.raises(ConfigError, match="cluster='pbs'"):
        S.slurm_settings("cluster=pbs")
    with pytest.raises(ConfigError, match="key=value"):
        S.slurm_settings("=3")


def test_no_sbatch_here_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(S.SlurmError, match="sbatch is not on PATH: this machine is not a Slurm login node"):
        S.make_executor({}, tmp_path / "%j", "x")


# --------------------------------------------------------------------------- against the cluster

@pytest.fixture(scope="module")
def backend(request) -> Backend:
    """The single-node Slurm cluster (stopped after the module), or the local executor with the reason."""
    b = start_backend()
    if b.kind == "slurm":
        announce(request.config, f"\n[test_slurm] jobs run on a {b.describe()}")
    else:
        line = (f"\n[test_slurm] NO REAL SLURM HERE: {b.reason}. The Slurm tests run the same jobs through "
                f"submitit's LOCAL executor instead (same checks, no scheduler).")
        announce(request.config, line)
        warnings.warn(line.strip(), UserWarning, stacklevel=1)
    yield b
    b.stop(wait=False)  # the next tests need not wait for the daemons to go


@pytest.fixture()
def env(backend, isolated_root, monkeypatch, tmp_path_factory) -> Path:
    """Results in a private folder the jobs see too (they inherit the environment); one image cache."""
    monkeypatch.setenv("METANET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "slurm-image-cache"))
    for k, v in backend.env.items():
        monkeypatch.setenv(k, v)
    return isolated_root


def _grid(profile: str, data_dir: Path, backend: Backend, *extra: str, gpus: str = "0") -> list[str]:
    # on the CPU even where there is a GPU: the interrupted run must stay slow enough to interrupt
    argv = ["grid", "--profile", profile, "--data-dir", str(data_dir), "--executor", "slurm", "--device", "cpu",
            "--gpus-per-job", gpus, "--slurm-option", "time=20"]
    return argv + (["--partition", "debug"] if backend.kind == "slurm" else []) + list(extra)


def _main(argv: list[str], capsys) -> tuple[int, str]:
    from metanet_utils.ops.cli import main

    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out + out.err


def _runs(profile: str, data_dir: Path, only: list[str]):
    prof = load_profile(profile)
    return filter_runs(enumerate_runs(prof, profile_dataset(prof, data_dir)), parse_only(only))


def _job_logs(root: Path, run_id: str) -> dict[str, Path]:
    """Job id -> stdout log of the jobs that ran ``run_id`` (submitit's folders: results/slurm/<job id>/)."""
    return {p.parent.name: p for p in sorted((root / "results" / "slurm").glob("*/*_log.out"))
            if f"[metanet] run {run_id} " in p.read_text()}


def _wait(cond, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    """Poll ``cond`` until it is truthy; fail when ``proc`` (whose output goes to ``log``) exits first."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if v := cond():
            return v
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the grid command exited with {proc.returncode}:\n{log.read_text()}")
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_array_reports_a_failure_then_two_reruns_at_once_submit_and_train_only_the_missing_run(
        backend, env, real_data_dir, capsys):
    runs = _runs("smoke", real_data_dir, SMOKE_ONLY)
    assert len(runs) == 3
    bad = runs[1]
    # a real failure inside the job, not on the login node: the run's work folder is blocked by a file
    blocker = env / "results" / "runs" / ".work" / bad.run_id
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a folder")
    t0 = time.monotonic()
    rc, out = _main(_grid("smoke", real_data_dir, backend, "--workers", "2", "--only", *SMOKE_ONLY), capsys)
    assert rc == 1, out
    assert "0 complete, 0 being trained, 3 to submit" in out and "submitted 3 run(s) as job array" in out
    assert out.count("done, MCR") == 2 and "2 of 3 runs complete; the same command again submits the rest" in out
    failed = re.search(rf"{re.escape(bad.run_id)} \(job (\S+)\): FAILED: (.*); log: (\S+)", out)
    assert failed and "FileExistsError" in failed[2] and "FileExistsError" in Path(failed[3]).read_text()
    assert [is_complete(record_dir(r)) for r in runs] == [True, False, True]
    if backend.kind == "slurm":  # one array, one task per run
        assert sorted(p.name for p in (env / "results" / "slurm").glob("*_*") if p.is_dir()) == [
            f"{failed[1].split('_')[0]}_{i}" for i in range(3)]

    blocker.unlink()
    events = env / "results" / "runs" / ".events.log"  # train_run's audit trail: one line per start, resume, end
    before = len(events.read_text().splitlines())
    argv = [sys.executable, "-m", "metanet_utils", *_grid("smoke", real_data_dir, backend, "--only", *SMOKE_ONLY)]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert all("2 complete" in o and "1 of 1 runs complete" in o for o in outs)
    assert sum(int(re.search(r"being trained, (\d) to submit", o)[1]) for o in outs) >= 1
    after = events.read_text().splitlines()[before:]
    assert [e.split()[-2] for e in after if e.endswith(bad.run_id)] == ["start", "complete"]  # trained once

    rc, out = _main(_grid("smoke", real_data_dir, backend, "--only", *SMOKE_ONLY), capsys)
    assert rc == 0 and "3 complete, 0 being trained, 0 to submit" in out and "nothing to submit" in out, out
    rc, out = _main(_grid("smoke", real_data_dir, backend, "--list", "--only", *SMOKE_ONLY), capsys)
    assert rc == 0 and len(re.findall(r" True +False$", out, re.M)) == 3, out  # complete, not training
    print(f"[timing] smoke array of 3 runs, a failure and two reruns on {backend.kind}: {time.monotonic() - t0:.0f} s")


def _pid(log: Path) -> int:
    """The process id the job's latest attempt printed."""
    return int(re.findall(r"\[metanet\] run \S+ on \S+, pid (\d+)", log.read_text())[-1])


def _epochs(text: str) -> dict[int, str]:
    """Epoch -> training loss, as the job logs print them."""
    return {int(e): loss for e, loss in re.findall(r"epoch (\d+)/\d+ loss ([\d.]+)", text)}


def test_preempted_job_resumes_and_a_killed_one_resumes_on_rerun(backend, env, real_data_dir, tmp_path, capsys):
    prof = tmp_path / "slurm-resume.yaml"
    prof.write_text(RESUME_PROFILE)
    (run,) = _runs(str(prof), real_data_dir, [])
    t0 = time.monotonic()
    # 1. the grid command waits, in its own process, while its job is preempted and killed
    log_path = tmp_path / "waiting-grid.log"
    with open(log_path, "w") as fh:
        waiting = subprocess.Popen([sys.executable, "-m", "metanet_utils", *_grid(str(prof), real_data_dir, backend)],
                                   stdout=fh, stderr=subprocess.STDOUT)
    try:
        job_id, job_log = _wait(lambda: next(iter(_job_logs(env, run.run_id).items()), None), 180, "the job",
                                waiting, log_path)
        _wait(lambda: _epochs(job_log.read_text()), 300, "the first epoch", waiting, log_path)

        # 2. preempted (USR2: what Slurm sends before preemption or the time limit): submitit requeues the job,
        #    which resumes the run from its checkpoint
        backend.preempt(job_id, _pid(job_log))
        resumed = _wait(lambda: re.search(r"resuming after epoch (\d+)/", job_log.read_text()), 300, "the resume",
                        waiting, log_path)
        assert int(resumed[1]) >= 1
        assert backend.kind == "local" or "restart 1;" in job_log.read_text()  # Slurm requeued the same job

        # 3. killed mid-run (out of memory, a failing node; scancel would take seconds)
        os.kill(_pid(job_log), signal.SIGKILL)
        _wait(lambda: not S._busy(run.run_id, env / "results" / "runs"), 60, "the run's lock to be freed")
        assert not is_complete(record_dir(run)), "the run finished before it could be killed: make it longer"
        first = _epochs(job_log.read_text())

        # 4. the first command reports its job's early end (submitit looks at the job at most every few seconds;
        #    the short rerun below could otherwise complete the run first)
        first_rc = waiting.wait(timeout=180)
    finally:
        if waiting.poll() is None:
            waiting.kill()
    report = log_path.read_text()
    assert first_rc == 1 and report.count("[1/1]") == 1 and "ENDED EARLY (" in report and "checkpoint kept" in report, \
        report
    # 5. the same command again: only this run is submitted; it resumes from the checkpoint and completes
    rc, out = _main(_grid(str(prof), real_data_dir, backend), capsys)
    assert rc == 0 and "0 complete, 0 being trained, 1 to submit" in out, out
    (new_log,) = [p for j, p in _job_logs(env, run.run_id).items() if j != job_id]
    k = int(re.search(r"resuming after epoch (\d+)/10", new_log.read_text())[1])
    assert int(resumed[1]) <= k <= max(first)
    assert sorted(_epochs(new_log.read_text())) == list(range(k + 1, 11))  # nothing before k trained again
    hist = pd.read_csv(record_dir(run) / "history.csv")
    assert hist["epoch"].tolist() == list(range(1, 11))
    assert [f"{x:.4f}" for x in hist["train_loss"][:k]] == [first[e] for e in range(1, k + 1)]
    print(f"[timing] preempt + kill + resume of one 10-epoch run on {backend.kind}: {time.monotonic() - t0:.0f} s")


def test_gpu_asked_of_a_partition_without_gpus_is_one_line_naming_partition_and_fix(
        backend, env, real_data_dir, capsys, monkeypatch):
    if backend.kind == "local":  # no sbatch: answer as the real one does (seen on the test cluster)
        import submitit

        def sbatch_refuses(*a, **k):
            raise S.FailedJobError("sbatch: error: Batch job submission failed: Invalid generic resource (gres) "
                                   "specification")
        monkeypatch.setattr(submitit.AutoExecutor, "map_array", sbatch_refuses)
    argv = _grid("smoke", real_data_dir, backend, "--only", "fold=0", "fusion=none", "--partition", "debug", gpus="1")
    rc, out = _main(argv, capsys)
    errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert rc == 2 and errors == [
        "error: partition debug has no GPUs: train on its CPUs with --gpus-per-job 0 (gpus=0 in $METANET_SLURM), "
        "or pick a partition with GPUs (sinfo -o '%P %G')"], out
    assert "Invalid generic resource" not in out and "Traceback" not in out
    assert not list((env / "results").glob("slurm/*/*_log.out"))  # no job ran
