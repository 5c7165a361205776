"""Shared fixtures: the real HAM10000 copy beside the project, and isolated output folders."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_HAM = Path(os.environ.get("METANET_TEST_DATA", ROOT.parent / "shared" / "ham10000"))


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The real HAM10000 copy (../shared/ham10000): 10015 images at 200x150 and the metadata."""
    if not (SHARED_HAM / "HAM10000_metadata.csv").is_file():
        pytest.skip(f"real HAM10000 copy not found at {SHARED_HAM}")
    return SHARED_HAM


@pytest.fixture()
def isolated_root(tmp_path, monkeypatch) -> Path:
    """A private project root: results/, figures/, data/cache go under tmp_path."""
    monkeypatch.setenv("METANET_ROOT", str(tmp_path))
    monkeypatch.setenv("METANET_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.setenv("METANET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("METANET_FIGURES_DIR", str(tmp_path / "figures"))
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    return tmp_path


KERNEL = "metanet-kit"


def ensure_kernel() -> str:
    """The kit's Jupyter kernel, registered into this environment if it is missing (as run_all.sh does)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(KERNEL)
    except NoSuchKernel:
        subprocess.run([sys.executable, "-m", "ipykernel", "install", "--sys-prefix", "--name", KERNEL,
                        "--display-name", "MetaNet kit"], check=True, capture_output=True)
    return KERNEL


@pytest.fixture(scope="session")
def kernel() -> str:
    return ensure_kernel()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny CPU models on a busy 2-core machine: one intra-op thread is many times faster than two that contend
    (worker processes get OMP_NUM_THREADS=1 alike, so that both sides compute the same numbers)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
