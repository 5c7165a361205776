"""A real single-node Slurm cluster for tests/test_slurm.py, or submitit's local executor instead.

:func:`start_backend` runs ``scripts/start_slurm.sh`` (installs Debian's ``slurm-wlm`` and
``munge`` if needed and we are root, starts ``munged``, ``slurmctld`` and ``slurmd`` on free
ports with all state in a private folder, waits for an idle node). Where that cannot work (no
root, no apt, a daemon refuses to start) it returns a ``local`` backend that runs the same jobs
through ``submitit``'s local executor, with the reason, which the tests print plainly.

Set ``METANET_TEST_SLURM=local`` to skip the cluster and use the local executor on purpose.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


@dataclass
class Backend:
    """Where the tests' submitit jobs run.

    Attributes:
        kind: ``slurm`` (a real cluster on this machine) or ``local`` (submitit's local executor).
        env: variables the test sets so that the kit and its jobs use this backend.
        state_dir: the cluster's folder (config, logs), for ``slurm``.
        reason: why the cluster could not be used, for ``local``.
        start_s: seconds spent starting it (installation included).
    """

    kind: str
    env: dict[str, str] = field(default_factory=dict)
    state_dir: Path | None = None
    reason: str = ""
    start_s: float = 0.0

    def _run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), env={**os.environ, **self.env}, capture_output=True, text=True,
                              timeout=60, check=check)

    def cancel(self, job_id: str) -> None:
        """Cancel a job as a user would: ``scancel`` (local: SIGINT to its controller, as submitit does)."""
        if self.kind == "slurm":
            self._run("scancel", job_id)
        else:
            os.kill(int(job_id), signal.SIGINT)

    def preempt(self, job_id: str) -> None:
        """Send the preemption/timeout signal submitit listens to (USR2): it checkpoints and requeues."""
        if self.kind == "slurm":
            self._run("scancel", "--signal=USR2", job_id)
        else:  # the local controller's task processes are its children
            children = Path(f"/proc/{job_id}/task/{job_id}/children").read_text().split()
            for pid in children:
                os.kill(int(pid), signal.SIGUSR2)

    def describe(self) -> str:
        if self.kind == "slurm":
            return f"real Slurm cluster (single node, state in {self.state_dir}, started in {self.start_s:.0f} s)"
        return f"submitit local executor (no Slurm: {self.reason})"

    def stop(self) -> None:
        """Stop the daemons (and remove the cluster's folder)."""
        if self.kind == "slurm" and self.state_dir is not None:
            subprocess.run([str(SCRIPTS / "stop_slurm.sh"), str(self.state_dir), "--purge"], capture_output=True,
                           text=True, timeout=120)


def start_backend(timeout_s: float = 600.0) -> Backend:
    """Start the single-node cluster, or explain why not and fall back to the local executor."""
    if os.environ.get("METANET_TEST_SLURM", "").lower() == "local":
        return Backend("local", env={"METANET_SUBMITIT_CLUSTER": "local"},
                       reason="METANET_TEST_SLURM=local asks for the local executor")
    import tempfile

    state = Path(tempfile.mkdtemp(prefix="metanet-slurm-"))  # short: munge's socket path must stay < 108 chars
    env = {**os.environ, "METANET_SLURMCTLD_PORT": str(_free_port()), "METANET_SLURMD_PORT": str(_free_port())}
    t0 = time.monotonic()
    try:
        proc = subprocess.run([str(SCRIPTS / "start_slurm.sh"), str(state)], env=env, capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc = None
    elapsed = time.monotonic() - t0
    if proc is None or proc.returncode != 0:
        why = "start_slurm.sh timed out" if proc is None else (
            (proc.stderr.strip().splitlines() or [f"start_slurm.sh exited with {proc.returncode}"])[-1])
        Backend("slurm", state_dir=state).stop()
        return Backend("local", env={"METANET_SUBMITIT_CLUSTER": "local"}, reason=why, start_s=elapsed)
    return Backend("slurm", env={"SLURM_CONF": str(state / "slurm.conf"), "METANET_SUBMITIT_CLUSTER": "slurm"},
                   state_dir=state, start_s=elapsed)


def announce(config, line: str) -> None:
    """Print a line on the terminal even while pytest captures output."""
    capman = config.pluginmanager.getplugin("capturemanager")
    reporter = config.pluginmanager.getplugin("terminalreporter")
    if capman is not None:
        with capman.global_and_fixture_disabled():
            if reporter is not None:
                reporter.write_line(line, bold=True)
            else:
                print(line, flush=True)
    else:
        print(line, flush=True)
