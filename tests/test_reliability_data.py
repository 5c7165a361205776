"""Reliability, bad inputs (issue 7, items 1-2): every broken data folder of the corpus in
``tests/_badcases.py`` and every bad configuration gets a clear message naming the file or row
and the value, a non-zero exit, and leaves nothing behind (no cache file, no fold file, no record).

Complements ``tests/test_data.py`` (which checks :func:`load_metadata`'s messages and one broken
``verify`` folder): here the same cases go through ``verify``, ``grid``, ``train`` and ``data
prepare`` as a user runs them. Most CLI calls run in-process (``cli.main``); a few run as real
processes to check the exit codes and that stderr holds one line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from _badcases import CASES, apply_case, good_copy, image_path, make_case, names
from metanet_utils.ops import cli
from metanet_utils.data import data_fingerprint, load_metadata
from metanet_utils.ops.verify import verify

ROOT = Path(__file__).resolve().parents[1]

#: what ``verify``'s report prints for each kind of case, and whether the folder passes
VERIFY_LINE = {"metadata": ("ERROR: ", False), "image": ("BAD IMAGE: ", False), "missing": ("MISSING: ", False),
               "converted": ("NOTE: ", True), "ignored": ("EXTRA: ", True)}


def tiny_profile(path: Path, **overrides) -> Path:
    """test_resnet at 40 px, every image of the folder (so a broken one is never sampled away)."""
    base = dict(name=path.stem, data="real", max_images=None, backbones=["test_resnet"], fusions=["metanet"],
                n_folds=2, folds=[0], epochs=1, image_size=40, crop_size=32, batch_size=16, lr=0.01,
                pretrained=False, ablations={"table3": False, "table4": False})
    base.update(overrides)
    path.write_text(yaml.safe_dump(base))
    return path


def written(root: Path) -> list[str]:
    """Every file the kit wrote under ``root`` (cache, results, data), lock files aside."""
    out = []
    for sub in ("cache", "results", "data", "outputs"):
        d = root / sub
        if d.is_dir():
            out += [str(p.relative_to(root)) for p in d.rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    return sorted(out)


def run_main(args: list[str], capsys) -> tuple[int, str, str]:
    """``python -m metanet_utils ARGS`` in this process: (exit code, stdout, stderr)."""
    try:
        rc = cli.main([str(a) for a in args])
    except SystemExit as e:  # argparse
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def error_line(err: str) -> str:
    """The one ``error:`` line (progress bars of the cache builder may precede it)."""
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err[-2000:]
    return errors[0]


def cli_env(root: Path) -> dict:
    return {**os.environ, "METANET_ROOT": str(root), "METANET_RESULTS_DIR": str(root / "results"),
            "METANET_CACHE_DIR": str(root / "cache"), "PYTHONUNBUFFERED": "1"}


# --------------------------------------------------------------------------- verify


def test_verify_cli_exit_codes(real_data_dir, tmp_path, monkeypatch, capsys):
    """0 for a good folder (and for notes only), 1 for a broken file or bad metadata, 2 for no folder: one process
    per exit code, the other cases through the same ``main`` in this process."""
    from metanet_utils.ops.cli import main

    def verify_cli(d):
        return subprocess.run([sys.executable, "-m", "metanet_utils", "data", "verify", "--data-dir", str(d)],
                              capture_output=True, text=True, env=cli_env(tmp_path / "root"), timeout=120)

    def verify_here(d):
        rc = main(["data", "verify", "--data-dir", str(d)])
        out = capsys.readouterr()
        return subprocess.CompletedProcess([], rc, out.out, out.err)

    for k, v in cli_env(tmp_path / "root").items():
        if k.startswith("METANET_"):
            monkeypatch.setenv(k, v)
    good = good_copy(real_data_dir, tmp_path / "good")
    out = verify_cli(good)
    assert out.returncode == 0 and out.stdout.rstrip().endswith("OK"), out.stdout + out.stderr
    for name, rc in [("truncated_jpeg", 1), ("unknown_site", 1), ("missing_image", 1), ("grayscale_jpeg", 0),
                     ("image_without_metadata", 0)]:
        d, expect, _ = make_case(real_data_dir, tmp_path / name, name)
        out = (verify_cli if name == "truncated_jpeg" else verify_here)(d)
        assert out.returncode == rc, (name, out.stdout, out.stderr)
        assert all(e in out.stdout for e in expect), (name, expect, out.stdout)
        assert out.stdout.rstrip().endswith("OK" if rc == 0 else "FAILED: fix the problems above")
    out = verify_cli(tmp_path / "nowhere")
    assert out.returncode == 2
    assert out.stderr.splitlines() == [f"error: --data-dir {tmp_path / 'nowhere'} does not exist; give a folder "
                                       "holding HAM10000_metadata.csv and the ISIC_*.jpg images"]
    assert written(tmp_path / "root") == []


@pytest.mark.parametrize("name", names("metadata", "image", "missing", "converted", "ignored"))
def test_verify_names_the_file_or_row_and_the_value(real_data_dir, tmp_path, name):
    d, expect, _ = make_case(real_data_dir, tmp_path / "d", name)
    report = verify(d, progress=False)
    text = report.format()
    prefix, ok = VERIFY_LINE[CASES[name].kind]
    assert report.ok is ok, text
    lines = [ln for ln in text.splitlines() if ln.startswith(prefix)]
    assert any(all(e in ln for e in expect) for ln in lines), (expect, text)


@pytest.mark.parametrize("name", names("metadata"))
def test_every_bad_metadata_case_on_the_full_file_is_one_line_naming_the_row(real_data_dir, tmp_path, name):
    """The whole official metadata file (10015 rows with its 57 missing ages and its 'unknown' sexes and sites),
    broken one way: one line naming the row and the value, never a pandas traceback."""
    import shutil

    from metanet_utils.data import DataError

    d = tmp_path / "d"
    d.mkdir()
    shutil.copyfile(real_data_dir / "HAM10000_metadata.csv", d / "HAM10000_metadata.csv")
    _, expect = apply_case(d, name)
    with pytest.raises(DataError) as e:
        load_metadata(d, require_images=False)
    assert "\n" not in str(e.value) and all(x in str(e.value) for x in expect), (expect, str(e.value))
    assert any(all(x in ln for x in expect) for ln in verify(d, decode=False).format().splitlines())


# --------------------------------------------------------------------------- grid / train / prepare


@pytest.mark.parametrize("name", names("metadata", "image", "missing"))
def test_grid_refuses_bad_data_before_training_and_writes_nothing(real_data_dir, isolated_root, capsys, name):
    d, expect, _ = make_case(real_data_dir, isolated_root / "bad", name)
    prof = tiny_profile(isolated_root / "tiny.yaml")
    rc, out, err = run_main(["grid", "--profile", prof, "--data-dir", d], capsys)
    line = error_line(err)
    assert rc == 2
    assert all(e in line for e in expect), (expect, line)
    if CASES[name].kind in ("image", "missing"):
        assert f"python -m metanet_utils data verify --data-dir {d}" in line  # what to do next
    if CASES[name].kind == "missing":
        assert "1 image(s) listed in HAM10000_metadata.csv are missing on disk" in line
    assert "--- run" not in out  # no training started
    assert written(isolated_root) == []  # no cache .npy/.json, no temporary file, no folds, no record


@pytest.mark.parametrize("name", ["truncated_jpeg", "age_not_a_number", "missing_image"])
def test_train_and_prepare_refuse_bad_data_and_write_nothing(real_data_dir, isolated_root, capsys, name):
    d, expect, _ = make_case(real_data_dir, isolated_root / "bad", name)
    prof = tiny_profile(isolated_root / "tiny.yaml")
    for args in (["train", "--profile", prof, "--data-dir", d, "--backbone", "test_resnet", "--fusion", "metanet"],
                 ["data", "prepare", "--profile", prof, "--data-dir", d]):
        rc, _, err = run_main(args, capsys)
        line = error_line(err)
        assert rc == 2 and all(e in line for e in expect), (args, line)
    assert written(isolated_root) == []


def test_grid_process_on_a_truncated_jpeg_exits_2_naming_it(real_data_dir, tmp_path):
    """The real command, as a user runs it: one error line, exit 2, no cache file, no record."""
    d, expect, facts = make_case(real_data_dir, tmp_path / "bad", "truncated_jpeg")
    root = tmp_path / "root"
    prof = tiny_profile(tmp_path / "tiny.yaml")
    out = subprocess.run([sys.executable, "-m", "metanet_utils", "grid", "--profile", str(prof), "--data-dir", str(d)],
                         capture_output=True, text=True, env=cli_env(root), timeout=300)
    assert out.returncode == 2, out.stdout + out.stderr
    line = error_line(out.stderr)
    assert line.startswith(f"error: image {image_path(d, facts['id'])} is not a readable image (OSError: image file "
                           "is truncated")
    assert "Traceback" not in out.stderr and "--- run" not in out.stdout
    assert written(root) == []
    assert list((root / "cache").glob("*.npy")) == [] and list((root / "cache").glob("*.json")) == []


def test_grayscale_and_cmyk_jpegs_are_converted_to_rgb_with_a_note(real_data_dir, isolated_root, capsys):
    d = good_copy(real_data_dir, isolated_root / "d")
    gray, _ = apply_case(d, "grayscale_jpeg")
    cmyk, _ = apply_case(d, "cmyk_jpeg")
    extra, _ = apply_case(d, "image_without_metadata")
    report = verify(d, progress=False)
    assert report.ok
    notes = "\n".join(report.notes)
    assert f"1 grayscale image(s) will be converted to RGB: {gray['file']}" in notes
    assert f"1 CMYK image(s) will be converted to RGB: {cmyk['file']}" in notes
    assert report.files_without_metadata == [extra["id"]]

    prof = tiny_profile(isolated_root / "tiny.yaml")
    rc, out, err = run_main(["data", "prepare", "--profile", prof, "--data-dir", d], capsys)
    assert rc == 0, err
    (npy,) = (isolated_root / "cache").glob("*.npy")
    arr = np.load(npy)
    df = load_metadata(d)
    assert extra["id"] not in set(df["image_id"])  # ignored
    ids = list(df["image_id"])
    assert arr.shape == (len(df), 40, 40, 3)
    g = arr[ids.index(gray["id"])].astype(int)
    assert (g[..., 0] == g[..., 1]).all() and (g[..., 1] == g[..., 2]).all() and g.std() > 1  # gray, not blank
    c = arr[ids.index(cmyk["id"])].astype(int)
    assert c.std() > 1 and not (c[..., 0] == c[..., 2]).all()  # still a colour image


def test_whitespace_and_case_give_the_clean_values_and_the_same_fingerprint(real_data_dir, tmp_path):
    clean = load_metadata(good_copy(real_data_dir, tmp_path / "clean"))
    d, _, _ = make_case(real_data_dir, tmp_path / "messy", "whitespace_and_case")
    messy = load_metadata(d)
    cols = ["image_id", "lesion_id", "dx", "age", "sex", "localization"]
    assert messy[cols].equals(clean[cols])
    assert set(messy["sex"]) <= {"male", "female", "unknown"}
    assert data_fingerprint(messy) == data_fingerprint(clean)  # the same image cache is reused


# --------------------------------------------------------------------------- bad configuration

#: (case id, profile overrides, command line after the profile and data folder, strings of the message)
CONFIG_CASES = [
    ("unknown_backbone", {"backbones": ["resnet_nope"]}, ["grid"],
     ["unknown backbone 'resnet_nope'", "use one of the paper's six", "timm model name"]),
    ("unknown_backbone_train", {}, ["train", "--backbone", "resnet_nope", "--fusion", "metanet"],
     ["unknown backbone 'resnet_nope'", "use one of the paper's six"]),
    ("unknown_ablation_backbone", {"ablations": {"table3": True, "backbone": "senet_nope"}}, ["grid"],
     ["unknown backbone 'senet_nope'"]),
    ("unknown_fusion", {"fusions": ["metanet", "sum"]}, ["grid"],
     ["fusion='sum' is not allowed; choose one of: none, concat, metanet, metablock"]),
    ("unknown_fusion_train", {}, ["train", "--backbone", "test_resnet", "--fusion", "sum"],
     ["invalid choice: 'sum'", "'none', 'concat', 'metanet', 'metablock'"]),
    ("unknown_profile_key", {"epoch": 3}, ["grid"], ["unknown key(s) ['epoch']", "allowed:", "epochs"]),
    ("unknown_ablations_key", {"ablations": {"table5": True}}, ["grid"],
     ["unknown key(s) ['table5'] in ablations", "allowed:", "table3"]),
    ("wrong_type", {"epochs": "ten"}, ["grid"], ["epochs='ten' is not allowed; it must be a whole number"]),
    ("crop_larger_than_image", {"crop_size": 64}, ["grid"],
     ["crop_size=64 is larger than image_size=40", "allowed: crop_size <= image_size"]),
    ("crop_of_the_backbone_larger_than_image", {"crop_size": None}, ["grid"],
     ["crop_size=224 is larger than image_size=40 for backbone test_resnet", "allowed: crop_size <= image_size"]),
    ("fold_out_of_range", {"folds": [0, 2]}, ["grid"], ["fold 2 is out of range; allowed: 0..1"]),
    ("fold_out_of_range_train", {}, ["train", "--backbone", "test_resnet", "--fusion", "metanet", "--fold", "5"],
     ["--fold 5 is out of range; allowed: 0..1"]),
    ("fold_out_of_range_only", {}, ["grid", "--only", "fold=5"],
     ["--only fold=5 matches none of the profile's runs; allowed: fold=0"]),
    ("unknown_only_key", {}, ["grid", "--only", "folds=1"], ["--only 'folds' is not a run setting; allowed:"]),
]


@pytest.mark.parametrize("case, overrides, command, expect", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_configuration_is_one_line_exit_2_before_any_work(real_data_dir, isolated_root, capsys, case, overrides,
                                                             command, expect):
    if case == "fold_out_of_range_only":  # this check needs the list of runs, hence the metadata
        d = good_copy(real_data_dir, isolated_root / "d")
    else:  # a data folder with a missing image: reaching the data step would print another message
        d, _, _ = make_case(real_data_dir, isolated_root / "d", "missing_image")
    prof = tiny_profile(isolated_root / "p.yaml", **overrides)
    rc, out, err = run_main([command[0], "--profile", prof, "--data-dir", d, *command[1:]], capsys)
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert all(e in err for e in expect), (expect, err)
    assert written(isolated_root) == []


@pytest.mark.parametrize("args, expect", [
    (["grid", "--profile", "no_such_profile"], "profile 'no_such_profile' not found in"),
    (["grid", "--profile", "smoke", "--data-dir", "/no/such/folder"],
     "--data-dir /no/such/folder does not exist; give a folder holding HAM10000_metadata.csv"),
    (["train", "--profile", "smoke", "--backbone", "test_resnet", "--fusion", "metanet", "--data-dir", "/no/such"],
     "--data-dir /no/such does not exist"),
    (["data", "prepare", "--profile", "smoke", "--data-dir", "/no/such"], "--data-dir /no/such does not exist"),
    (["data", "sample", "--from", "/no/such"], "--from /no/such does not hold HAM10000_metadata.csv"),
])
def test_missing_profile_or_data_folder(isolated_root, capsys, args, expect):
    rc, _, err = run_main(args, capsys)
    assert rc == 2 and err.count("\n") == 1 and err.startswith(f"error: {expect}"), err
    if "no_such_profile" in args:
        assert "allowed: demo, paper, quick, smoke" in err
    assert written(isolated_root) == []


def test_unknown_backbone_process_fails_fast_with_one_line(real_data_dir, tmp_path):
    """The real command: exit 2 and exactly one stderr line, before the data is even read."""
    prof = tiny_profile(tmp_path / "p.yaml", backbones=["resnet_nope"])
    root = tmp_path / "root"
    out = subprocess.run([sys.executable, "-m", "metanet_utils", "grid", "--profile", str(prof), "--data-dir",
                          str(real_data_dir)], capture_output=True, text=True, env=cli_env(root), timeout=300)
    assert out.returncode == 2
    assert out.stderr.splitlines() == [out.stderr.strip()] and out.stderr.startswith("error: unknown backbone "
                                                                                       "'resnet_nope'")
    assert out.stdout == "" and written(root) == []


@pytest.mark.parametrize("overrides, expect", [
    ({"backbones": ["resnet_nope"]}, "error: unknown backbone 'resnet_nope'"),
    ({"crop_size": None}, "error: crop_size=224 is larger than image_size=40 for backbone test_resnet"),
    ({"fusions": ["sum"]}, "error: fusion='sum' is not allowed; choose one of:"),
])
def test_notebook_chain_refuses_a_bad_profile_before_the_first_notebook(isolated_root, capsys, overrides, expect):
    from metanet_utils.ops import pipeline

    prof = tiny_profile(isolated_root / "p.yaml", **overrides)
    assert pipeline.main(["--profile", str(prof)]) == 2
    out = capsys.readouterr()
    assert out.err.count("\n") == 1 and out.err.startswith(expect), out.err
    assert "running" not in out.out and not (isolated_root / "outputs").exists()


def test_notebook_chain_takes_profile_and_data_paths_relative_to_where_the_user_typed_them(
        isolated_root, real_data_dir, monkeypatch):
    """``./run_all.sh --profile my.yaml --data-dir d`` from any folder: the paths reach every notebook absolute
    (the notebooks run in ``notebooks/``, so a relative path would point elsewhere there)."""
    from metanet_utils.ops import pipeline

    here = isolated_root / "elsewhere"
    here.mkdir()
    tiny_profile(here / "mine.yaml")
    (here / "data").symlink_to(real_data_dir)
    seen = {}
    monkeypatch.setattr(pipeline, "run_chain", lambda profile, data_dir, *a, **k: seen.update(p=profile, d=data_dir) or 0)
    monkeypatch.chdir(here)  # run_all.sh does not change folder
    assert pipeline.main(["--profile", "mine.yaml", "--data-dir", "data"]) == 0
    assert seen == {"p": str(here / "mine.yaml"), "d": str(real_data_dir.resolve())}
    jobs = pipeline.plan_jobs(seen["p"], seen["d"], ROOT / "notebooks", isolated_root / "out", only=["00"])
    assert jobs[0].parameters == {"profile": str(here / "mine.yaml"), "data_dir": str(real_data_dir.resolve())}
    assert pipeline.main(["--profile", "theirs.yaml"]) == 2  # named relative to the caller, not found there


def test_notebook_chain_with_slurm_gets_the_data_first_and_says_why_the_grid_cannot_start(
        isolated_root, monkeypatch, capsys):
    """With ``--executor slurm`` notebook 00 (which downloads or locates the data) runs before the grid is
    submitted, the analysis notebooks after it; a grid that cannot find data stops the chain with one line."""
    import papermill as pm

    from metanet_utils import data as data_mod
    from metanet_utils.ops import pipeline

    order = []

    def fake_notebook(src, out, **kw):
        order.append(Path(src).name[:2])
        Path(out).write_text("{}")

    monkeypatch.setattr(pm, "execute_notebook", fake_notebook)
    monkeypatch.setattr(pipeline, "run_profile_on_slurm", lambda p, d: order.append("slurm") or 0)
    assert pipeline.run_chain("smoke", None, executor="slurm", root=ROOT, only=["00", "04", "05"]) == 0
    assert order == ["00", "slurm", "04", "05"]

    def no_data(p, d):
        raise data_mod.DataError("no HAM10000 found; run: python -m metanet_utils data download")

    order.clear()
    monkeypatch.setattr(pipeline, "run_profile_on_slurm", no_data)
    capsys.readouterr()
    assert pipeline.run_chain("smoke", None, executor="slurm", root=ROOT, only=["00", "05"]) == 1
    assert order == ["00"]
    err = capsys.readouterr().err
    assert err.splitlines()[0] == "error: no HAM10000 found; run: python -m metanet_utils data download"
    assert "the notebooks after it were not run" in err


def test_notebook_chain_console_carries_no_kernel_transport_warning_but_keeps_notebook_warnings(
        isolated_root, capfd):
    """Every ipykernel start logs "Kernel is running over TCP without encryption" to the chain's console: once per
    notebook, 15 times in the demo chain. The chain raises the kernel's log level; a warning raised by a notebook's
    own code still reaches its executed copy."""
    import nbformat

    from conftest import ensure_kernel
    from metanet_utils.ops import pipeline

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": ensure_kernel(), "display_name": "MetaNet kit", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell('profile = "smoke"\ndata_dir = ""', metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("import warnings\nwarnings.warn('from the notebook')\nprint(profile)")]
    (isolated_root / "notebooks").mkdir()
    nbformat.write(nb, isolated_root / "notebooks" / "01_hello.ipynb")
    assert pipeline.run_chain("smoke", None, root=isolated_root) == 0
    console = capfd.readouterr()
    assert "without encryption" not in console.out + console.err
    assert "01_hello.ipynb done in" in console.out
    done = nbformat.read(isolated_root / "outputs" / "notebooks" / "01_hello.ipynb", as_version=4)
    streams = "".join(o.get("text", "") for o in done.cells[-1].outputs)
    assert "UserWarning: from the notebook" in streams and "smoke" in streams
    assert pipeline.kernel_arguments(ensure_kernel()) == ["--IPKernelApp.log_level=ERROR"]


def test_train_without_pretrained_weights_says_how_to_get_them_in_one_line(isolated_root, real_data_dir, capsys):
    """An offline machine with an empty weights folder: exit 2 and one ``error:`` line naming the file
    it looked for and the fetch command, no traceback and no record."""
    prof = tiny_profile(isolated_root / "p.yaml", pretrained=True, max_images=60)
    empty = isolated_root / "weights"
    empty.mkdir()
    rc, _out, err = run_main(["train", "--profile", prof, "--data-dir", real_data_dir, "--backbone", "test_resnet",
                              "--fusion", "metanet", "--weights-dir", empty], capsys)
    line = error_line(err)
    assert rc == 2 and "Traceback" not in err
    assert line.startswith("error: no pretrained weights for") and str(empty / "models--timm--test_resnet") in line
    assert "weights fetch" in line
    runs = isolated_root / "results" / "runs"
    assert not [p for p in runs.glob("*") if not p.name.startswith(".")] if runs.is_dir() else True


def test_grid_without_pretrained_weights_stops_before_any_work(isolated_root, real_data_dir, capsys):
    """``grid`` (here, in a notebook through run_grid, or submitting to Slurm) checks the weights of the runs
    it would train first: one ``error:`` line, exit 2, no image cache built, no run started or failed."""
    from metanet_utils.ops import slurm
    from metanet_utils.config import load_profile
    from metanet_utils.dataset import profile_dataset
    from metanet_utils.ops.grid import run_grid
    from metanet_utils.models import WeightsUnavailable

    prof = tiny_profile(isolated_root / "p.yaml", pretrained=True, max_images=60)
    empty = isolated_root / "weights"
    empty.mkdir()
    rc, _out, err = run_main(["grid", "--profile", prof, "--data-dir", real_data_dir, "--weights-dir", empty], capsys)
    assert rc == 2 and error_line(err).startswith("error: no pretrained weights for")
    assert written(isolated_root) == []  # no cache, no record, no .failed log
    profile = load_profile(prof)
    ds = profile_dataset(profile, real_data_dir)
    with pytest.raises(WeightsUnavailable):
        run_grid(profile, ds, weights_dir=empty, device="cpu", progress=False)
    with pytest.raises(WeightsUnavailable):
        slurm.submit_grid(profile, real_data_dir, weights_dir=empty, settings={"cluster": "local"}, wait=False)
    assert not (isolated_root / "results" / "slurm").exists()  # nothing submitted
    assert not [p for p in written(isolated_root) if "/runs/" in p]
