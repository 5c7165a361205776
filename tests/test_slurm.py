"""The grid on Slurm through submitit, against a real single-node Slurm cluster started here.

The cluster (``scripts/start_slurm.sh``: munged, slurmctld, slurmd on this machine) is started
once for the module and stopped at the end. Where it cannot start (not root, no apt, a daemon
fails), the same jobs run through submitit's local executor and the tests check the same
things; a line on the terminal says so.

What is checked: a smoke grid submitted as one job array completes every record and a rerun
submits nothing; a job preempted (USR2, as Slurm's preemption/timeout warning) is requeued and
resumes its run; a job cancelled with ``scancel`` mid-run keeps its checkpoint and resubmission
resumes it to the end (history continues from the checkpoint, not restarted); a failing run
is reported with its log and does not stop the others.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

pytest.importorskip("submitit", reason="submitit is not installed: pip install -e '.[slurm]'")

from slurm_cluster import Backend, announce, start_backend  # noqa: E402

from metanet_utils import slurm as S  # noqa: E402


# --------------------------------------------------------------------------- unit tests (no cluster)

def test_parse_slurm_options_and_errors():
    assert S.parse_slurm_options(["cpus-per-task=8", "--mem=64G", "exclusive", "constraint=a100|h100"]) == {
        "cpus-per-task": "8", "mem": "64G", "exclusive": True, "constraint": "a100|h100"}
    assert S.parse_slurm_options(None) == {}
    with pytest.raises(S.ConfigError, match="key=value"):
        S.parse_slurm_options(["=3"])


def test_options_from_env_and_args(monkeypatch):
    monkeypatch.setenv("METANET_SLURM_PARTITION", "gpu")
    monkeypatch.setenv("METANET_SLURM_TIME", "90")
    monkeypatch.setenv("METANET_SLURM_OPTIONS", "cpus-per-task=4 mem=16G")
    monkeypatch.delenv("METANET_SUBMITIT_CLUSTER", raising=False)
    o = S.SlurmOptions.from_env()
    assert (o.partition, o.time_min, o.gpus_per_job, o.cluster) == ("gpu", 90, 1, "slurm")
    assert dict(o.extra) == {"cpus-per-task": "4", "mem": "16G"}

    class Args:  # the grid command's Namespace: flags win over the environment
        partition, gpus_per_job, max_parallel, time, slurm_option = "debug", 0, 3, None, ["mem=8G"]

    o = S.SlurmOptions.from_args(Args)
    assert (o.partition, o.gpus_per_job, o.max_parallel, o.time_min) == ("debug", 0, 3, 90)
    assert dict(o.extra) == {"cpus-per-task": "4", "mem": "8G"}
    from metanet_utils.cli import build_parser  # the real command line: no flag leaves the environment's value

    monkeypatch.setenv("METANET_SLURM_GPUS", "0")
    parsed = build_parser().parse_args(["grid", "--profile", "smoke", "--executor", "slurm"])
    assert S.SlurmOptions.from_args(parsed).gpus_per_job == 0
    parsed = build_parser().parse_args(["grid", "--profile", "smoke", "--executor", "slurm", "--gpus-per-job", "2"])
    assert S.SlurmOptions.from_args(parsed).gpus_per_job == 2
    monkeypatch.delenv("METANET_SLURM_GPUS")
    assert S.SlurmOptions.from_args(build_parser().parse_args(["grid", "--profile", "smoke"])).gpus_per_job == 1
    monkeypatch.setenv("METANET_SLURM_TIME", "soon")
    with pytest.raises(S.ConfigError, match="METANET_SLURM_TIME"):
        S.SlurmOptions.from_env()
    with pytest.raises(S.ConfigError, match="cluster"):
        S.SlurmOptions(cluster="pbs")
    with pytest.raises(S.ConfigError, match="max-parallel"):
        S.SlurmOptions(max_parallel=0)


def test_job_table_roundtrip_and_dead_jobs(isolated_root):
    ref = S.JobRef(run_id="r1", job_id="123_4", folder=str(isolated_root / "results/slurm/d/%j"), job_name="metanet-x")
    S._save_job_table({"r1": ref})
    back = S.load_job_table()
    assert back == {"r1": ref}
    assert back["r1"].stderr == isolated_root / "results/slurm/d/123_4/123_4_0_log.err"
    assert back["r1"].read_result() is None
    # a local job whose controller process is gone is not active; a garbled table reads as empty
    dead = S.JobRef(run_id="r2", job_id="999999999", folder=ref.folder, cluster="local")
    assert S.active_job_ids([dead]) == set()
    (isolated_root / "results/slurm/jobs.json").write_text("{not json")
    assert S.load_job_table() == {}


def test_no_sbatch_is_a_clear_error(isolated_root, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch, no srun
    with pytest.raises(S.SlurmError, match="sbatch is not on PATH"):
        S._make_executor(S.SlurmOptions(cluster="slurm"), isolated_root / "results/slurm/%j", 2, "x")


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
    b.stop()


@pytest.fixture()
def env(backend, isolated_root, monkeypatch, tmp_path_factory):
    """Results in a private folder that the jobs see too; the backend's variables set."""
    shared_cache = tmp_path_factory.getbasetemp() / "slurm-image-cache"  # built once for the module's jobs
    monkeypatch.setenv("METANET_CACHE_DIR", str(shared_cache))
    for k, v in backend.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("METANET_WORKER", raising=False)
    return isolated_root


def _grid(profile: str, data_dir: Path, backend: Backend, *extra: str) -> list[str]:
    # on the CPU even where there is a GPU: the interrupted run must stay slow enough to interrupt
    argv = ["grid", "--profile", profile, "--data-dir", str(data_dir), "--executor", "slurm", "--gpus-per-job", "0",
            "--time", "20", "--device", "cpu", *extra]
    if backend.kind == "slurm":
        argv += ["--partition", "debug"]
    return argv


def _main(argv: list[str], capsys) -> tuple[int, str]:
    from metanet_utils.cli import main

    rc = main(argv)
    out = capsys.readouterr()
    text = out.out + out.err
    print(text)
    return rc, text


def _expected_runs(profile: str, data_dir: Path, only: list[str]):
    from metanet_utils.config import load_profile
    from metanet_utils.grid import enumerate_runs, filter_runs, parse_only, profile_dataset

    prof = load_profile(profile)
    return filter_runs(enumerate_runs(prof, profile_dataset(prof, data_dir)), parse_only(only))


SMOKE_ONLY = ["fold=0", "fusion=none,concat", "meta_layers=0,1"]


def test_smoke_grid_array_completes_and_rerun_submits_nothing(backend, env, real_data_dir, capsys):
    from metanet_utils.train import is_complete, read_metrics, record_dir

    runs = _expected_runs("smoke", real_data_dir, SMOKE_ONLY)
    assert len(runs) == 3
    t0 = time.monotonic()
    # submit and return at once
    rc, out = _main(_grid("smoke", real_data_dir, backend, "--max-parallel", "2", "--no-wait", "--only", *SMOKE_ONLY),
                    capsys)
    assert rc == 0, out
    assert "submitted 3 run(s)" in out and "logs: " in out and "not waiting" in out
    if backend.kind == "slurm":
        assert "job array" in out and "at most 2 at once" in out
    table = S.load_job_table()
    assert set(table) == {r.run_id for r in runs}
    if backend.kind == "slurm":  # one array, one task per run
        assert len({ref.job_id.split("_")[0] for ref in table.values()}) == 1
        assert sorted(ref.job_id.split("_")[1] for ref in table.values()) == ["0", "1", "2"]

    # the same command again, waiting: the queued/running jobs are not submitted twice, only waited for
    rc, out = _main(_grid("smoke", real_data_dir, backend, "--only", *SMOKE_ONLY), capsys)
    took = time.monotonic() - t0
    assert rc == 0, out
    assert "0 to submit" in out and "submitted" not in out.split("0 to submit")[1].split("slurm grid:")[0]
    assert S.load_job_table() == table
    for r in runs:
        assert is_complete(record_dir(r)), r.run_id
        assert read_metrics(record_dir(r))["epochs_done"] == 1
    for ref in table.values():
        assert ref.stdout.is_file() and "[metanet] run " + ref.run_id in ref.stdout.read_text()
    folders = sorted(p.name for p in (env / "results" / "slurm").glob("*/*"))

    # and once everything is complete, a rerun submits nothing
    rc, out = _main(_grid("smoke", real_data_dir, backend, "--only", *SMOKE_ONLY), capsys)
    assert rc == 0, out
    assert "3 complete" in out and "nothing to submit" in out
    assert S.load_job_table() == table
    assert sorted(p.name for p in (env / "results" / "slurm").glob("*/*")) == folders
    print(f"[timing] smoke array of 3 runs on {backend.kind}: {took:.0f} s")


RESUME_PROFILE = """\
name: slurm-resume
description: "tests/test_slurm.py: one run long enough to be preempted and cancelled"
data: real
max_images: 600
backbones: [test_resnet]
fusions: [metanet]
n_folds: 2
folds: [0]
epochs: {epochs}
image_size: 96
crop_size: 88
batch_size: 32
lr: 0.01
pretrained: false
"""


def _ckpt(path: Path) -> dict | None:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, EOFError, RuntimeError):
        return None


def _wait(cond, timeout: float, what: str, poll: float = 0.5):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        v = cond()
        if v:
            return v
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _same_rows(a: list[dict], b: list[dict]) -> bool:
    keys = ("epoch", "train_loss", "val_loss", "val_mcr", "epoch_time_s")
    return len(a) == len(b) and all(abs(float(x[k]) - float(y[k])) <= 1e-9 * max(1.0, abs(float(x[k])))
                                    for x, y in zip(a, b) for k in keys)


def test_preempted_requeued_then_cancelled_job_resumes_on_resubmission(backend, env, real_data_dir, tmp_path, capsys):
    import subprocess
    import sys

    import pandas as pd

    from metanet_utils.train import is_complete, record_dir

    epochs = 10
    prof = tmp_path / "slurm-resume.yaml"
    prof.write_text(RESUME_PROFILE.format(epochs=epochs))
    (run,) = _expected_runs(str(prof), real_data_dir, [])
    ckpt_path = env / "results" / "runs" / ".work" / run.run_id / "checkpoint.pt"
    t0 = time.monotonic()

    # 1. a grid command that waits (in its own process); wait for the first epoch's checkpoint
    log_path = tmp_path / "waiting-grid.log"
    with open(log_path, "w") as log_fh:
        waiting = subprocess.Popen([sys.executable, "-m", "metanet_utils", *_grid(str(prof), real_data_dir, backend)],
                                   stdout=log_fh, stderr=subprocess.STDOUT, env=dict(os.environ))
    try:
        def submitted():
            if waiting.poll() is not None:
                raise AssertionError(f"the grid command exited with {waiting.returncode}:\n{log_path.read_text()}")
            return S.load_job_table().get(run.run_id)

        ref = _wait(submitted, 180, "the submission")
        first = _wait(lambda: (c := _ckpt(ckpt_path)) and c["epoch"] >= 1 and c, 300, "the first checkpoint")
        assert S.active_job_ids([ref]) == {ref.job_id}

        # 2. preemption / time-limit warning (USR2): submitit checkpoints, requeues, the run resumes
        backend.preempt(ref.job_id)
        resumed = _wait(lambda: (c := _ckpt(ckpt_path)) and c["epoch"] > first["epoch"] and "resuming after epoch"
                        in ref.stdout.read_text() and c, 300, "the requeued job to resume and checkpoint again")
        job_log = ref.stdout.read_text()
        assert "requeued" in job_log
        k_preempt = int(job_log.split("resuming after epoch ")[1].split("/")[0])
        assert k_preempt >= first["epoch"]
        assert _same_rows(resumed["history"][:first["epoch"]], first["history"])
        assert waiting.poll() is None, "the waiting command stopped at the requeue:\n" + log_path.read_text()

        # 3. cancel it mid-run, as a user would (scancel): the waiting command reports it, the checkpoint stays
        backend.cancel(ref.job_id)
        rc = waiting.wait(timeout=180)
    finally:
        if waiting.poll() is None:
            waiting.kill()
    report = log_path.read_text()
    print(report)
    assert rc == 1, report
    assert "ENDED EARLY" in report and "checkpoint kept" in report and str(ref.stderr) in report
    assert "FAILED" not in report and report.count("[1/1]") == 1
    cancelled = _ckpt(ckpt_path)
    assert not is_complete(record_dir(run)), "the run finished before it could be cancelled: make it longer"
    assert cancelled is not None and cancelled["epoch"] < epochs
    k = cancelled["epoch"]

    # 4. rerun the same command: only this run is resubmitted, it resumes at epoch k and completes
    rc, out = _main(_grid(str(prof), real_data_dir, backend), capsys)
    assert rc == 0, out
    assert "0 complete, 0 queued/running in earlier jobs, 1 to submit" in out
    new = S.load_job_table()[run.run_id]
    assert new.job_id != ref.job_id
    assert f"resuming after epoch {k}/{epochs}" in new.stdout.read_text()
    assert is_complete(record_dir(run))
    hist = pd.read_csv(record_dir(run) / "history.csv").to_dict("records")
    assert [int(h["epoch"]) for h in hist] == list(range(1, epochs + 1))
    assert _same_rows(hist[:k], cancelled["history"]), "history before the checkpoint was retrained, not resumed"
    print(f"[timing] preempt + cancel + resume of one {epochs}-epoch run on {backend.kind}: "
          f"{time.monotonic() - t0:.0f} s (checkpoints: first {first['epoch']}, preempted resume at {k_preempt}, "
          f"cancelled at {k})")


FAILING_PROFILE = """\
name: slurm-failing
description: "tests/test_slurm.py: two short runs, one of which cannot write its work folder"
data: real
max_images: 300
backbones: [test_resnet]
fusions: [none, concat]
n_folds: 2
folds: [0]
epochs: 1
image_size: 64
crop_size: 56
lr: 0.01
pretrained: false
"""


def test_failed_run_is_reported_with_its_log_and_others_finish(backend, env, real_data_dir, tmp_path, capsys):
    from metanet_utils.train import is_complete, record_dir

    prof = tmp_path / "slurm-failing.yaml"
    prof.write_text(FAILING_PROFILE)
    runs = {r.fusion: r for r in _expected_runs(str(prof), real_data_dir, [])}
    good, bad = runs["none"], runs["concat"]
    # a real failure inside the job, not on the login node: the run's work folder is blocked by a file
    blocker = env / "results" / "runs" / ".work" / bad.run_id
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a folder")
    rc, out = _main(_grid(str(prof), real_data_dir, backend), capsys)
    assert rc == 1, out
    assert is_complete(record_dir(good))
    assert not is_complete(record_dir(bad))
    ref = S.load_job_table()[bad.run_id]
    assert f"FAILED {bad.run_id}: FileExistsError" in out and str(ref.stderr) in out
    assert ref.stderr.is_file() and "FileExistsError" in ref.stderr.read_text()
    assert json.loads((env / "results" / "slurm" / "jobs.json").read_text())["runs"][bad.run_id]["job_id"] == ref.job_id
    # unblocked, a rerun submits only the failed run and completes it
    blocker.unlink()
    rc, out = _main(_grid(str(prof), real_data_dir, backend), capsys)
    assert rc == 0, out
    assert "1 complete, 0 queued/running in earlier jobs, 1 to submit" in out
    assert is_complete(record_dir(bad))


def test_two_submitters_at_once_submit_and_train_each_run_once(backend, env, real_data_dir):
    """Two terminals (or machines) start the same Slurm grid at the same moment: the submit lock lets one
    submit the array and the other find those jobs queued; every run is submitted and trained once."""
    from collections import Counter

    from metanet_utils.train import is_complete, record_dir

    runs = _expected_runs("smoke", real_data_dir, SMOKE_ONLY)
    argv = [sys.executable, "-m", "metanet_utils", *_grid("smoke", real_data_dir, backend, "--only", *SMOKE_ONLY)]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    submitted = [int(m) for o in outs for m in re.findall(r"submitted (\d+) run\(s\)", o)]
    assert sum(submitted) == 3, outs  # one submitter took all three, the other none
    assert set(S.load_job_table()) == {r.run_id for r in runs}
    events = (env / "results" / "runs" / ".events.log").read_text().splitlines()
    for kind in ("start", "complete"):
        count = Counter(e.split()[-1] for e in events if f" {kind} " in e)
        assert count == {r.run_id: 1 for r in runs}, (kind, events)
    assert all(is_complete(record_dir(r)) for r in runs)
