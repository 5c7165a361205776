"""Shared fixtures: the real HAM10000 copy beside the project, and isolated output folders.

The suite runs in parallel (``./run_tests.sh``: pytest-xdist, one worker per core, one test file per worker at a
time). Each worker computes on its share of the cores, and no test writes into the checkout: a test that sets no
folders of its own writes under its worker's private root (see ``private_root``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_HAM = Path(os.environ.get("METANET_TEST_DATA", ROOT.parent / "shared" / "ham10000"))


def pytest_configure(config):
    """An xdist worker computes on its share of the cores (its kernels and subprocesses too): workers that each
    start as many torch threads as the machine has cores are many times slower than one thread each."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


#: The slowest test files, slowest first (measured on 2 cores): each xdist worker takes a whole file at a time, so
#: these start first and the workers end together; every other file follows in its usual order.
SLOW_FILES = ["test_slurm.py", "test_notebooks_data.py", "test_notebooks_analysis.py", "test_reliability_faults.py",
              "test_reliability_data.py", "test_train.py"]


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="session", autouse=True)
def private_root(tmp_path_factory):
    """Results, figures, outputs and the image cache of this test process go under its own temporary root, never
    into the checkout (parallel workers would share them); a test's own ``isolated_root`` or settings win."""
    root = tmp_path_factory.mktemp("root")
    (root / "configs").symlink_to(ROOT / "configs")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in _folders(root).items():
            mp.setenv(k, v)
        yield root


def _folders(root: Path) -> dict[str, str]:
    return {"METANET_ROOT": str(root), "METANET_RESULTS_DIR": str(root / "results"),
            "METANET_CACHE_DIR": str(root / "cache"), "METANET_FIGURES_DIR": str(root / "figures")}


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The real HAM10000 copy (../shared/ham10000): 10015 images at 200x150 and the metadata."""
    if not (SHARED_HAM / "HAM10000_metadata.csv").is_file():
        pytest.skip(f"real HAM10000 copy not found at {SHARED_HAM}")
    return SHARED_HAM


@pytest.fixture()
def isolated_root(tmp_path, monkeypatch) -> Path:
    """A private project root: results/, figures/, data/cache go under tmp_path."""
    for k, v in _folders(tmp_path).items():
        monkeypatch.setenv(k, v)
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
