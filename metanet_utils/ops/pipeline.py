"""The notebook chain behind ``./run_all.sh``: every notebook in ``notebooks/``, in order, executed with papermill.

Parameters ``profile``, ``data_dir`` (and ``backbone``: ``04_training`` runs once per backbone). A notebook runs in
``outputs/notebooks/.running/`` (follow it live there) and moves to ``outputs/notebooks/`` when it ends: a killed
chain never leaves a half-written copy. The chain stops at the first failing notebook, naming its cell.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
import papermill as pm
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

from ..config import ConfigError, load_profile
from ..data import DataError, find_data_dir
from ..models import WeightsUnavailable
from ..paths import figures_dir, outputs_dir, project_root, results_dir
from .cli import _check_backbones
from .html import write_html_report

try:  # Slurm needs submitit, a dependency of the kit; a GPU machine with its own Python may lack it
    from .slurm import run_profile_on_slurm
except ImportError:
    run_profile_on_slurm = None

RUNNING_DIR = ".running"


@dataclass(frozen=True)
class NotebookJob:
    source: Path
    output: Path
    parameters: dict

    @property
    def running(self) -> Path:
        return self.output.parent / RUNNING_DIR / self.output.name

    @property
    def label(self) -> str:
        b = self.parameters.get("backbone")
        return self.source.name + (f" [{b}]" if b else "")


def plan_jobs(profile_name: str, data_dir: str | None, notebooks_dir: Path, out_dir: Path,
              only: list[str] | None = None, start: str | None = None) -> list[NotebookJob]:
    """The ordered list of notebook executions for a profile."""
    profile = load_profile(profile_name)
    params = {"profile": profile_name, "data_dir": str(data_dir) if data_dir else ""}
    jobs: list[NotebookJob] = []
    for nb in sorted(notebooks_dir.glob("[0-9][0-9]_*.ipynb")):
        if (only and nb.name[:2] not in only) or (start and nb.name[:2] < start):
            continue
        if nb.stem.startswith("04_training"):
            jobs += [NotebookJob(nb, out_dir / f"{nb.stem}-{b.replace('/', '_')}.ipynb", {**params, "backbone": b})
                     for b in profile.backbones]
        else:
            jobs.append(NotebookJob(nb, out_dir / nb.name, dict(params)))
    return jobs


def _cell_of(err: Exception) -> str:
    idx, count = getattr(err, "cell_index", None), getattr(err, "exec_count", None)
    where = f"cell {idx}" if idx is not None else "a cell"
    where += f" (execution count {count})" if count is not None else ""
    return f"{where}: {getattr(err, 'ename', type(err).__name__)}: {getattr(err, 'evalue', str(err))}"


def kernel_arguments(kernel_name: str) -> list[str]:
    """Extra kernel arguments: an ipykernel warns about its TCP transport at every start, so its log level is
    raised to ERROR (the notebooks' own warnings go to the cell outputs).

    Example:
        >>> kernel_arguments("no-such-kernel")
        []
    """
    try:
        argv = KernelSpecManager().get_kernel_spec(kernel_name).argv
    except NoSuchKernel:
        return []
    return ["--IPKernelApp.log_level=ERROR"] if any("ipykernel" in a for a in argv) else []


def run_chain(profile: str = "demo", data_dir: str | None = None, kernel: str | None = None,
              root: Path | None = None, only: list[str] | None = None, start: str | None = None,
              executor: str = "local") -> int:
    """Execute the chain; return 0 on success, 1 at the first failing notebook."""
    root = root or project_root()
    out_dir = outputs_dir() / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = plan_jobs(profile, data_dir, root / "notebooks", out_dir, only=only, start=start)
    if not jobs:
        print(f"no notebooks found in {root / 'notebooks'}", file=sys.stderr)
        return 1
    running = out_dir / RUNNING_DIR
    running.mkdir(exist_ok=True)
    for stale in running.glob("*.ipynb"):  # left by a chain that was killed: partial by construction
        stale.unlink()
    print(f"running {len(jobs)} notebook(s), profile {profile!r}; executed copies go to {out_dir}\n"
          f"  (the one executing is written to {running} as it goes)", flush=True)
    t_all = time.perf_counter()
    # with Slurm, the grid is trained by the cluster after notebook 00 has found (or downloaded) the data
    slurm_after = max((i for i, j in enumerate(jobs, 1) if j.source.name.startswith("00_")), default=0) \
        if executor == "slurm" else None
    if slurm_after == 0 and _slurm_grid(profile, data_dir) != 0:
        return 1
    for i, job in enumerate(jobs, 1):
        t0 = time.perf_counter()
        print(f"[{i}/{len(jobs)}] {job.label} ...", flush=True)
        try:
            name = kernel or nbformat.read(job.source, 4).metadata.get("kernelspec", {}).get("name", "python3")
            pm.execute_notebook(str(job.source), str(job.running), parameters=job.parameters,
                                kernel_name=name, cwd=str(job.source.parent), progress_bar=False,
                                log_output=True, stdout_file=None, extra_arguments=kernel_arguments(name))
        except Exception as e:  # noqa: BLE001 - papermill raises its own and kernel errors
            if job.running.is_file():  # papermill wrote the copy with the error before raising
                os.replace(job.running, job.output)
            print(f"\nFAILED: notebook {job.label} stopped at {_cell_of(e)}\n"
                  f"  executed copy with the error: {job.output}", file=sys.stderr, flush=True)
            return 1
        os.replace(job.running, job.output)
        print(f"[{i}/{len(jobs)}] {job.label} done in {time.perf_counter() - t0:.0f} s", flush=True)
        if i == slurm_after and _slurm_grid(profile, data_dir) != 0:
            return 1
    report = None
    if any(j.source.name.startswith("09_") for j in jobs):
        report = write_html_report(out_dir, outputs_dir() / "report.html")
    print(f"\nall notebooks ran in {time.perf_counter() - t_all:.0f} s.\n  executed notebooks: {out_dir}\n"
          f"  figures: {figures_dir()}\n  tables: {results_dir() / 'tables'}"
          + (f"\n  report: {report}" if report else ""), flush=True)
    return 0


def _slurm_grid(profile: str, data_dir: str | None) -> int:
    print(f"submitting the grid of profile {profile!r} to Slurm and waiting for it ...", flush=True)
    try:
        if run_profile_on_slurm is None:
            raise ConfigError("--executor slurm needs submitit, which this Python lacks: "
                              "pip install 'submitit>=1.5,<2'")
        rc = run_profile_on_slurm(profile, data_dir)
    except (ConfigError, DataError, WeightsUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        rc = 2
    if rc != 0:
        print("the Slurm grid did not complete; the notebooks after it were not run", file=sys.stderr, flush=True)
    return rc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="run_all.sh", description="execute the notebook chain with papermill")
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--executor", choices=["local", "slurm"], default="local")
    ap.add_argument("--kernel", default=None, help="Jupyter kernel name (run_all.sh registers one)")
    ap.add_argument("--only", nargs="*", default=None, metavar="NN", help="only these notebook numbers, e.g. 00 01")
    ap.add_argument("--from", dest="start", default=None, metavar="NN", help="start at this notebook number")
    args = ap.parse_args(argv)

    profile = args.profile  # paths are relative to the caller's folder (run_all.sh does not change folder)
    if Path(profile).suffix in (".yaml", ".yml"):  # a file: the notebooks run elsewhere, so pass it absolute
        profile = str(Path(profile).expanduser().resolve())
    try:  # refuse a bad profile before notebook 00 starts
        prof = load_profile(profile)
        _check_backbones(prof)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    data_dir = str(Path(args.data_dir).expanduser().resolve()) if args.data_dir else None
    if data_dir and not Path(data_dir).is_dir():
        print(f"error: --data-dir {args.data_dir} does not exist ({data_dir})", file=sys.stderr)
        return 2
    try:
        loc = find_data_dir(data_dir, sample_fallback=prof.data == "auto")
        what = "the shipped sample (no full data found)" if loc.kind == "sample" else "HAM10000"
        print(f"[run_all] profile {prof.name}, data: {what} in {loc.path}", flush=True)
    except DataError:
        print(f"[run_all] profile {prof.name}: no data found yet; notebook 00 downloads the official files",
              flush=True)
    return run_chain(profile, data_dir, args.kernel, only=args.only, start=args.start, executor=args.executor)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
