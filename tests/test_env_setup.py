"""Which environment ``run_all.sh`` / ``run_tests.sh`` pick on a fresh clone (scripts/ensure_env.sh).

The script runs for real in a copy of the project; ``conda`` and ``python3`` are stand-ins on the
PATH that log their arguments and fail, so each test sees the choice without installing anything.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _stand_in(bin_dir: Path, name: str, log: Path, body: str = "exit 1") -> None:
    exe = bin_dir / name
    exe.write_text(f'#!/bin/sh\necho "{name} $*" >> "{log}"\n{body}\n')
    exe.chmod(0o755)


@pytest.fixture()
def clone(tmp_path):
    root = tmp_path / "kit"
    (root / "scripts").mkdir(parents=True)
    for f in ("scripts/ensure_env.sh", "pyproject.toml", "environment.yml"):
        shutil.copy(ROOT / f, root / f)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    log.touch()
    return root, bin_dir, log


def _source(root: Path, bin_dir: Path, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "METANET_USE_CONDA")}
    base["PATH"] = f"{bin_dir}:/usr/bin:/bin"
    return subprocess.run(["bash", "-c", "source scripts/ensure_env.sh"], cwd=root, capture_output=True, text=True,
                          env={**base, **env}, timeout=60)


def test_fresh_clone_uses_the_conda_environment_of_environment_yml_where_conda_is_present(clone):
    root, bin_dir, log = clone
    _stand_in(bin_dir, "conda", log)
    _stand_in(bin_dir, "python3", log)
    out = _source(root, bin_dir)
    assert out.returncode == 1
    assert f"creating the conda environment of environment.yml in {root}/.conda-env" in out.stdout
    assert "conda env create failed" in out.stderr
    calls = log.read_text().splitlines()
    assert f"conda env create --quiet --prefix {root}/.conda-env --file {root}/environment.yml" in calls
    assert not [c for c in calls if c.startswith("python3")]  # no venv was attempted


def test_fresh_clone_creates_a_venv_without_conda_or_when_told_not_to_use_it(clone):
    root, bin_dir, log = clone
    _stand_in(bin_dir, "python3", log)
    out = _source(root, bin_dir)  # no conda on the PATH
    assert out.returncode == 1 and "python3 -m venv failed" in out.stderr
    assert log.read_text().splitlines() == [f"python3 -m venv {root}/.venv"]
    _stand_in(bin_dir, "conda", log)
    log.write_text("")
    out = _source(root, bin_dir, METANET_USE_CONDA="0")
    assert out.returncode == 1 and log.read_text().splitlines() == [f"python3 -m venv {root}/.venv"]


def test_an_existing_venv_is_kept_even_where_conda_is_present(clone):
    root, bin_dir, log = clone
    _stand_in(bin_dir, "conda", log)
    (root / ".venv" / "bin").mkdir(parents=True)
    _stand_in(root / ".venv" / "bin", "python", log)  # an env that lacks the kit: it is (re)installed into
    out = _source(root, bin_dir)
    assert out.returncode == 1 and f"installing into {root}/.venv failed" in out.stderr
    calls = log.read_text().splitlines()
    assert not [c for c in calls if c.startswith("conda")]
    assert any(c.startswith("python -m pip install") for c in calls)


def test_an_active_environment_holding_another_checkout_is_not_used_for_this_one(clone):
    """An activated venv with every dependency, but with the kit installed from another checkout: importing
    ``metanet_utils`` from inside this folder would find this checkout and pass, while the notebooks' kernels
    would import the other one. The check runs from ``/``, so this checkout gets its own environment."""
    import sys

    root, bin_dir, log = clone
    shutil.copytree(ROOT / "metanet_utils", root / "metanet_utils")
    _stand_in(bin_dir, "python3", log)
    real = Path(sys.executable)
    out = _source(root, bin_dir, VIRTUAL_ENV=str(real.parent.parent), PATH=f"{bin_dir}:{real.parent}:/usr/bin:/bin")
    assert "using the active environment" not in out.stdout
    assert out.returncode == 1 and log.read_text().splitlines() == [f"python3 -m venv {root}/.venv"]
