"""Notebooks 00-03 (data, exploration, metadata, colour constancy) run in the smoke profile and write their
figures: all four on the shipped sample (what a fresh clone runs), 00 and 02 (whose numbers come from the whole
metadata file) on the full real copy too; every notebook is committed clean."""

from __future__ import annotations

import ast
import time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"

#: The data notebooks, in chain order, and the figures each must write.
FIGURES: dict[str, list[str]] = {
    "00_get_data": ["00_class_counts"],
    "01_data_exploration": ["01_class_counts", "01_age_by_class", "01_sex_site_by_class", "01_sample_images",
                            "01_images_per_lesion", "01_lesion_leak"],
    "02_metadata": ["02_metadata_vectors", "02_mutual_information", "02_metadata_baseline_recall"],
    "03_color_constancy": ["03_color_constancy_grid", "03_color_statistics"],
}


def _stream_text(nb: nbformat.NotebookNode) -> str:
    return "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                     if o.get("output_type") == "stream")


def _run_chain(root: Path, data_dir: str, kernel: str,
               names: tuple[str, ...] = tuple(FIGURES)) -> dict[str, tuple[float, nbformat.NotebookNode]]:
    import papermill as pm

    done = {}
    for name in names:
        t0 = time.perf_counter()
        out = root / "outputs" / f"{name}.ipynb"
        out.parent.mkdir(parents=True, exist_ok=True)
        nb = pm.execute_notebook(str(NOTEBOOKS / f"{name}.ipynb"), str(out), parameters={"profile": "smoke",
                                 "data_dir": data_dir}, kernel_name=kernel, cwd=str(NOTEBOOKS), progress_bar=False)
        done[name] = (time.perf_counter() - t0, nb)
    return done


def _check_figures(root: Path, done: dict) -> None:
    """Each notebook wrote its figures, and no tqdm warning reached its output."""
    for name, (_, nb) in done.items():
        for fig in FIGURES[name]:
            png = root / "figures" / f"{fig}.png"
            assert png.is_file() and png.stat().st_size > 5000, f"{name} did not write {png}"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        for c in nb.cells:
            for o in c.get("outputs", []) if c.cell_type == "code" else []:
                assert "IProgress" not in o.get("text", ""), f"{name}: {o.get('text')[:300]}"
    print("\n" + "\n".join(f"  {name}: {t:.1f} s" for name, (t, _) in done.items()))


def test_data_notebooks_on_real_data(real_data_dir, isolated_root, kernel):
    done = _run_chain(isolated_root, str(real_data_dir), kernel, ("00_get_data", "02_metadata"))
    _check_figures(isolated_root, done)
    text = {name: _stream_text(nb) for name, (_, nb) in done.items()}
    assert all("synthetic" not in t.lower() for t in text.values())
    assert all("Data: HAM10000: " in t and " of its images" in t for t in text.values())
    assert "misprint" in text["00_get_data"] and "1099" in text["00_get_data"]
    # notebook 02 measures the mutual information on the whole metadata file beside this profile's images (its cell
    # asserts the formula against sklearn); H(dx) of the official file: 1.632 bits
    assert "H(dx) = 1.632 bits on the whole metadata file (10015 images)" in text["02_metadata"]


def test_data_notebooks_fall_back_to_the_shipped_sample(isolated_root, kernel, monkeypatch):
    """With no data anywhere (an empty project root, no $METANET_DATA_DIR), the smoke profile runs on the kit's
    data/sample/ and every notebook says so in its first lines."""
    monkeypatch.delenv("METANET_DATA_DIR", raising=False)
    done = _run_chain(isolated_root, "", kernel)
    _check_figures(isolated_root, done)
    for name, (_, nb) in done.items():
        first = next(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                     if o.get("output_type") == "stream" and "Data:" in o.get("text", ""))
        assert "of the shipped sample's 1095 HAM10000 images at 128x96" in first, f"{name}: {first[:300]}"


ALL_NOTEBOOKS = sorted(NOTEBOOKS.glob("*.ipynb"))


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=[p.name for p in ALL_NOTEBOOKS])
def test_notebook_committed_clean(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    code = [c for c in nb.cells if c.cell_type == "code"]
    for i, c in enumerate(code):
        assert c.outputs == [], f"{path.name}: code cell {i} has outputs (commit notebooks without them)"
        assert c.execution_count is None, f"{path.name}: code cell {i} has an execution count"
    assert code and "parameters" in code[0].metadata.get("tags", []), f"{path.name}: first code cell not tagged"
    assigned = {t.id for node in ast.parse(code[0].source).body if isinstance(node, ast.Assign) for t in node.targets
                if isinstance(t, ast.Name)}
    assert {"profile", "data_dir"} <= assigned, f"{path.name}: parameters cell must set profile and data_dir"
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.lstrip().startswith("# "), f"{path.name}: no title cell"


def test_notebook_folder_has_the_data_notebooks():
    assert {p.stem for p in ALL_NOTEBOOKS} >= set(FIGURES)
