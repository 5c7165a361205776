"""Where the kit reads and writes: the folders of DESIGN.md's layout, in one place. ``$METANET_RESULTS_DIR``,
``$METANET_CACHE_DIR`` and ``$METANET_FIGURES_DIR`` move those folders."""

from __future__ import annotations

import os
from pathlib import Path

_KIT = Path(__file__).resolve().parent.parent  # the checkout the package was installed from


def project_root() -> Path:
    """``$METANET_ROOT``, else the nearest folder up with ``configs/`` and ``pyproject.toml``, else the kit's."""
    if os.environ.get("METANET_ROOT"):
        return Path(os.environ["METANET_ROOT"]).resolve()
    here = Path.cwd().resolve()
    for d in (here, *here.parents, _KIT):
        if (d / "configs").is_dir() and (d / "pyproject.toml").is_file():
            return d
    return here


def _folder(*parts: str, env: str | None = None) -> Path:
    return Path(os.environ[env]).resolve() if env and os.environ.get(env) else project_root().joinpath(*parts)


def configs_dir() -> Path:
    return project_root() / "configs" if (project_root() / "configs").is_dir() else _KIT / "configs"


def data_dir() -> Path:
    return _folder("data")


def sample_dir() -> Path:
    """``data/sample/`` of the project, else of the kit's own checkout."""
    return data_dir() / "sample" if (data_dir() / "sample").is_dir() else _KIT / "data" / "sample"


def results_dir() -> Path:
    return _folder("results", env="METANET_RESULTS_DIR")


def runs_dir() -> Path:
    return results_dir() / "runs"


def tables_dir() -> Path:
    return results_dir() / "tables"


def folds_dir() -> Path:
    return results_dir() / "folds"


def cache_dir() -> Path:
    return _folder("data", "cache", env="METANET_CACHE_DIR")


def figures_dir() -> Path:
    return _folder("figures", env="METANET_FIGURES_DIR")


def outputs_dir() -> Path:
    return _folder("outputs")
