"""A real single-node Slurm cluster for tests/test_slurm.py, or submitit's local executor instead.

:func:`start_backend` runs ``scripts/start_slurm.sh`` (installs Debian's Slurm, munge and MariaDB
if needed and we are root; starts munged, MariaDB, slurmdbd, slurmctld and slurmd with all their
state in a private folder). Where that cannot work (not root, no apt, a daemon refuses to start),
it returns a ``local`` backend that runs the same jobs through submitit's local executor, with the
reason. ``METANET_SLURM=cluster=local`` asks for the local executor on purpose.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@dataclass
class Backend:
    """Where the tests' submitit jobs run.

    Attributes:
        kind: ``slurm`` (a real cluster on this machine) or ``local`` (submitit's local executor).
        env: variables the tests set so that the kit and its jobs use this backend.
        state_dir: the cluster's folder (configuration, database, logs), for ``slurm``.
        reason: why the cluster is not used, for ``local``.
        start_s: seconds spent starting it (installation included).
    """

    kind: str
    env: dict[str, str] = field(default_factory=dict)
    state_dir: Path | None = None
    reason: str = ""
    start_s: float = 0.0

    def preempt(self, job_id: str, pid: int) -> None:
        """Send job ``job_id`` (process ``pid``) the preemption / time-limit warning submitit listens to (USR2):
        it checkpoints and requeues."""
        if self.kind == "slurm":
            subprocess.run(["scancel", "--signal=USR2", job_id], env={**os.environ, **self.env}, check=True,
                           timeout=60)
        else:
            os.kill(pid, signal.SIGUSR2)

    def describe(self) -> str:
        if self.kind == "slurm":
            return f"real Slurm cluster (single node, state in {self.state_dir}, started in {self.start_s:.0f} s)"
        return f"submitit local executor (no Slurm: {self.reason})"

    def stop(self, wait: bool = True) -> None:
        """Stop the daemons and remove the cluster's folder (``wait=False``: in the background, about 10 s)."""
        if self.kind == "slurm" and self.state_dir is not None:
            cmd = [str(SCRIPTS / "stop_slurm.sh"), str(self.state_dir), "--purge"]
            if not wait:  # a shell that starts it in the background and returns
                cmd = ["bash", "-c", '"$@" >/dev/null 2>&1 &', "stop", *cmd]
            subprocess.run(cmd, capture_output=True, timeout=120)


def start_backend(timeout_s: float = 600.0) -> Backend:
    """Start the single-node cluster, or say why not and fall back to the local executor."""
    local = {"METANET_SLURM": "cluster=local"}
    if os.environ.get("METANET_SLURM", "").strip() == "cluster=local":
        return Backend("local", env=local, reason="METANET_SLURM=cluster=local asks for the local executor")
    state = Path(tempfile.mkdtemp(prefix="metanet-slurm-"))  # short: munge's socket path must stay < 108 chars
    t0 = time.monotonic()
    # the node gets every core (nproc in the script would count OMP_NUM_THREADS, which the tests' workers set)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_THREAD_LIMIT")}
    try:
        proc = subprocess.run([str(SCRIPTS / "start_slurm.sh"), str(state)], capture_output=True, text=True,
                              timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        proc = None
    if proc is None or proc.returncode != 0:
        why = "start_slurm.sh timed out" if proc is None else (
            (proc.stderr.strip().splitlines() or [f"start_slurm.sh exited with {proc.returncode}"])[-1])
        Backend("slurm", state_dir=state).stop()
        return Backend("local", env=local, reason=why, start_s=time.monotonic() - t0)
    return Backend("slurm", env={"SLURM_CONF": str(state / "slurm.conf"), "METANET_SLURM": ""}, state_dir=state,
                   start_s=time.monotonic() - t0)


def announce(config, line: str) -> None:
    """Print a line on the terminal even while pytest captures output."""
    capman = config.pluginmanager.getplugin("capturemanager")
    reporter = config.pluginmanager.getplugin("terminalreporter")
    if capman is None or reporter is None:
        print(line, flush=True)
        return
    with capman.global_and_fixture_disabled():
        reporter.write_line(line, bold=True)
