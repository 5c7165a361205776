"""Where the kit reads and writes: one place for every folder of DESIGN.md's layout.

The project root is ``$METANET_ROOT`` if set, else the nearest folder above the current
directory holding ``configs/`` and ``pyproject.toml`` (so notebooks run from
``notebooks/`` find it), else the current directory.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "project_root", "configs_dir", "data_dir", "sample_dir", "results_dir", "runs_dir", "tables_dir",
    "folds_dir", "cache_dir", "figures_dir", "outputs_dir", "weights_dir",
]


def project_root() -> Path:
    env = os.environ.get("METANET_ROOT")
    if env:
        return Path(env).resolve()
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        if (d / "configs").is_dir() and (d / "pyproject.toml").is_file():
            return d
    pkg_root = Path(__file__).resolve().parent.parent
    if (pkg_root / "configs").is_dir():
        return pkg_root
    return here


def _sub(*parts: str, env: str | None = None) -> Path:
    if env and os.environ.get(env):
        return Path(os.environ[env]).resolve()
    return project_root().joinpath(*parts)


def configs_dir() -> Path:
    pkg_configs = Path(__file__).resolve().parent.parent / "configs"
    root_configs = project_root() / "configs"
    return root_configs if root_configs.is_dir() else pkg_configs


def data_dir() -> Path:
    """Downloads and caches (git-ignored), and the shipped sample ``data/sample/`` (tracked)."""
    return _sub("data")


def sample_dir() -> Path:
    """The shipped sample of HAM10000: ``data/sample/`` of the project, else of the kit's own checkout."""
    here = data_dir() / "sample"
    return here if here.is_dir() else Path(__file__).resolve().parent.parent / "data" / "sample"


def results_dir() -> Path:
    return _sub("results", env="METANET_RESULTS_DIR")


def runs_dir() -> Path:
    return results_dir() / "runs"


def tables_dir() -> Path:
    return results_dir() / "tables"


def folds_dir() -> Path:
    return results_dir() / "folds"


def cache_dir() -> Path:
    return _sub("data", "cache", env="METANET_CACHE_DIR")


def figures_dir() -> Path:
    return _sub("figures", env="METANET_FIGURES_DIR")


def outputs_dir() -> Path:
    return _sub("outputs")


def weights_dir() -> Path | None:
    """Folder of pre-fetched pretrained weights (``$METANET_WEIGHTS_DIR``), or None."""
    env = os.environ.get("METANET_WEIGHTS_DIR")
    return Path(env) if env else None
