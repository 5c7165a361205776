"""Command line: ``python -m metanet_utils ...`` (also installed as ``metanet``; docs/reference.md).

Every command checks its arguments before any work and exits 2 with a one-line message on bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cache import CacheError
from ..config import ConfigError, load_profile
from ..data import DataError, find_data_dir
from ..dataset import profile_dataset
from ..models import WeightsUnavailable, resolve_backbone
from ..paths import data_dir, runs_dir
from ..report import write_profile_tables
from ..runs import enumerate_runs, filter_runs, image_sizes, run_config, status_table
from ..train import is_complete, record_dir, train_run
from .download import DownloadError, download_official
from .grid import parse_only, run_grid, spawn_workers
from .locks import RunBusy, run_lock
from .sample import write_sample
from .verify import verify
from .weights import ensure_weights, fetch_weights

try:  # Slurm needs submitit, a dependency of the kit; a GPU machine with its own Python may lack it
    from .slurm import run_grid_slurm
except ImportError:
    run_grid_slurm = None


class _Parser(argparse.ArgumentParser):
    """Bad arguments: one line ``error: ...`` on stderr (not argparse's usage block), exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {message} (see `{self.prog} --help`)\n")


def _add_data_args(p: argparse.ArgumentParser, profile: bool = True) -> None:
    if profile:
        p.add_argument("--profile", default="demo", help="profile name in configs/ (smoke, demo, quick, paper) "
                                                         "or a path to a YAML file (default: %(default)s)")
    p.add_argument("--data-dir", type=Path, default=None, help="folder with HAM10000_metadata.csv and the "
                   "ISIC_*.jpg images (default: $METANET_DATA_DIR, then data/ham10000/)")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="metanet", description="MetaNet (Li et al., ISBI 2020) reproduction kit")
    sub = ap.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="find, download, verify, sample and cache data")
    dsub = data.add_subparsers(dest="data_command", required=True)
    v = dsub.add_parser("verify", help="check a data folder: counts vs the paper, missing/extra/broken files")
    _add_data_args(v, profile=False)
    v.add_argument("--no-decode", action="store_true", help="skip decoding every image (faster)")
    d = dsub.add_parser("download", help="download the official ISIC 2018 Task 3 files and HAM10000 metadata")
    d.add_argument("--dest", type=Path, default=None, help="target folder (default: data/ham10000/)")
    d.add_argument("--metadata-only", action="store_true", help="only the metadata CSV (a few hundred kB)")
    s = dsub.add_parser("sample", help="draw the kit's small sample (data/sample/) from the full HAM10000")
    s.add_argument("--from", dest="source", type=Path, required=True, help="folder of the full HAM10000")
    s.add_argument("--dest", type=Path, default=None, help="target folder (default: data/sample/)")
    pr = dsub.add_parser("prepare", help="build the image caches and folds a profile needs")
    _add_data_args(pr)

    t = sub.add_parser("train", help="train one run (skipped if its record is complete)")
    _add_data_args(t)
    t.add_argument("--backbone", required=True)
    t.add_argument("--fusion", required=True, choices=["none", "concat", "metanet", "metablock"])
    t.add_argument("--fold", type=int, default=0)
    t.add_argument("--meta-features", default="age,sex,localization",
                   help="comma-separated subset of age,sex,localization")
    t.add_argument("--meta-layers", type=int, default=None, help="fully connected layers for the metadata (default: "
                                                                 "profile's; concat in Table 1 uses 0)")
    t.add_argument("--epochs", type=int, default=None, help="override the profile's epochs")
    t.add_argument("--device", default=None)
    t.add_argument("--weights-dir", type=Path, default=None)

    g = sub.add_parser("grid", help="train every missing run of a profile")
    _add_data_args(g)
    g.add_argument("--only", nargs="*", default=[], metavar="KEY=VALUE",
                   help="restrict to runs whose setting matches, e.g. fusion=metanet fold=0,1")
    g.add_argument("--workers", type=int, default=None,
                   help="worker processes on this machine (default: profile's); with Slurm, jobs running at once")
    g.add_argument("--together", type=_together_arg, default=None, metavar="K",
                   help="train up to K runs at once in each worker, one CUDA stream each (opt-in; "
                        "default: profile's runs_together, 1)")
    g.add_argument("--executor", choices=["local", "slurm"], default="local")
    g.add_argument("--no-wait", action="store_true", help="do not wait for runs held by other workers / jobs")
    g.add_argument("--device", default=None)
    g.add_argument("--weights-dir", type=Path, default=None)
    g.add_argument("--list", action="store_true", help="only list the runs and whether they are complete")
    g.add_argument("--partition", default=None, help="Slurm partition")
    g.add_argument("--gpus-per-job", type=int, default=None,
                   help="GPUs per Slurm job; 0 for a CPU partition (default: gpus in $METANET_SLURM, else 1)")
    g.add_argument("--slurm-option", nargs="*", default=[], metavar="KEY=VALUE",
                   help="Slurm job settings, e.g. time=720 (minutes, default 1440) mem=64G cpus-per-task=8")

    w = sub.add_parser("weights", help="pretrained weights for machines without internet")
    wsub = w.add_subparsers(dest="weights_command", required=True)
    wf = wsub.add_parser("fetch", help="download the six backbones' ImageNet weights into a folder")
    wf.add_argument("--weights-dir", type=Path, required=True)
    wf.add_argument("--backbones", nargs="*", default=None)

    tb = sub.add_parser("tables", help="write results/tables/table{1,2,3,4}.{csv,md} from a profile's records")
    _add_data_args(tb)
    return ap


def _together_arg(text: str) -> int:
    try:
        k = int(text)
    except ValueError:
        k = 0
    if k < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed; use a whole number >= 1")
    return k


def _fail(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args, argv)
    except (ConfigError, DataError, CacheError, WeightsUnavailable, RunBusy) as e:
        return _fail(str(e))
    except DownloadError as e:  # the network or the server, not the user's input: exit 1; rerun resumes
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: finished runs are kept; rerun the same command to continue", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace, argv: list[str] | None) -> int:
    if args.command == "data":
        return _data(args)
    if args.command == "weights":
        fetch_weights(args.weights_dir, *([args.backbones] if args.backbones else []))
        print(f"weights in {args.weights_dir}; on offline machines set METANET_WEIGHTS_DIR={args.weights_dir}")
        return 0
    profile = load_profile(args.profile)
    if getattr(args, "data_dir", None) is not None and not Path(args.data_dir).is_dir():
        return _fail(f"--data-dir {args.data_dir} does not exist; give a folder holding HAM10000_metadata.csv "
                     "and the ISIC_*.jpg images")
    if args.command == "train":
        if not 0 <= args.fold < profile.n_folds:
            return _fail(f"--fold {args.fold} is out of range; allowed: 0..{profile.n_folds - 1} "
                         f"(profile {profile.name} has n_folds={profile.n_folds})")
        _check_backbones(profile, [args.backbone])
        return _train(args, profile)
    if args.command == "grid":
        _check_backbones(profile)
        return _grid(args, profile, argv)
    print(f"tables written to {write_profile_tables(profile, args.data_dir, require_runs=True)}")  # tables
    return 0


def _check_backbones(profile, backbones: list[str] | None = None) -> None:
    """Refuse, before any data or cache work, an unknown backbone or a crop larger than its image."""
    names = list(backbones) if backbones is not None else list(profile.backbones)
    if backbones is None and (profile.ablations.table3 or profile.ablations.table4):
        names.append(profile.ablations.backbone or profile.backbones[-1])
    for b in dict.fromkeys(names):
        try:
            resolve_backbone(b)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        resize, crop = image_sizes(profile, b)
        if crop > resize:
            raise ConfigError(f"crop_size={crop} is larger than image_size={resize} for backbone {b}; "
                              "allowed: crop_size <= image_size")


def _prepare(ds, runs) -> None:
    """Build the image caches and folds the runs need before any training: a bad image or a full disk stops
    everything here, named."""
    for size, cc in sorted({(r.image_size, r.color_constancy) for r in runs}):
        ds.images(size, cc)
    for n, scheme, seed in sorted({(r.n_folds, r.split_scheme, r.split_seed) for r in runs}):
        ds.folds(n, scheme, seed)


def _data(args: argparse.Namespace) -> int:
    if args.data_command == "verify":
        loc = find_data_dir(args.data_dir)
        report = verify(loc.path, decode=not args.no_decode)
        print(report.format())
        return 0 if report.ok else 1
    if args.data_command == "download":
        dest = args.dest or data_dir() / "ham10000"
        download_official(dest, include_images=not args.metadata_only)
        print(f"data in {dest}; check it with: python -m metanet_utils data verify --data-dir {dest}")
        return 0
    if args.data_command == "sample":
        if not (args.source / "HAM10000_metadata.csv").is_file():
            return _fail(f"--from {args.source} does not hold HAM10000_metadata.csv; give the folder of the full "
                         "HAM10000")
        dest = args.dest or data_dir() / "sample"
        keep = write_sample(args.source, dest)
        print(f"sample of {len(keep)} images ({keep['lesion_id'].nunique()} lesions) in {dest}")
        return 0
    profile = load_profile(args.profile)  # prepare
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        return _fail(f"--data-dir {args.data_dir} does not exist")
    _check_backbones(profile)
    ds = profile_dataset(profile, args.data_dir)
    runs = enumerate_runs(profile, ds)
    _prepare(ds, runs)
    print(f"prepared {ds.kind} data ({len(ds.df)} images, fingerprint {ds.fingerprint}) for {len(runs)} runs")
    return 0


def _train(args: argparse.Namespace, profile) -> int:
    features = tuple(f for f in args.meta_features.split(",") if f)
    ds = profile_dataset(profile, args.data_dir)
    overrides = {"epochs": args.epochs} if args.epochs is not None else {}
    cfg = run_config(profile, ds, args.backbone, args.fusion, args.fold, features, args.meta_layers, **overrides)
    with run_lock(runs_dir(), cfg.run_id):
        m = train_run(cfg, ds, device=args.device, weights_dir=args.weights_dir)
    print(f"{cfg.run_id}: MCR {m['mcr']:.4f}")
    return 0


def _grid(args: argparse.Namespace, profile, argv: list[str] | None) -> int:
    only = parse_only(args.only)
    if args.executor == "slurm":
        if run_grid_slurm is None:
            return _fail("--executor slurm needs submitit, which this Python lacks: pip install 'submitit>=1.5,<2'")
        return run_grid_slurm(profile, args)
    workers = args.workers or profile.workers
    if workers < 1:
        return _fail(f"--workers {workers} is not allowed; use 1 or more")
    ds = profile_dataset(profile, args.data_dir)
    runs = filter_runs(enumerate_runs(profile, ds), only)
    if only and not runs:
        every = enumerate_runs(profile, ds)
        present = {k: sorted({"+".join(v) if isinstance(v := getattr(r, k), tuple) else str(v) for r in every})
                   for k in only}
        return _fail("--only " + " ".join(args.only) + " matches none of the profile's runs; allowed: "
                     + "; ".join(f"{k}={','.join(v)}" for k, v in present.items()))
    if args.list:
        print(status_table(runs).to_string(index=False))
        return 0
    # weights first: a machine without them stops here, before the image cache is built
    ensure_weights([r.backbone for r in runs if r.pretrained and not is_complete(record_dir(r))], args.weights_dir)
    _prepare(ds, runs)  # once, before the workers start
    if workers > 1:  # each worker is this command again with --workers 1
        return spawn_workers(workers, list(argv if argv is not None else sys.argv[1:]))
    summary = run_grid(profile, ds, only=only, device=args.device, weights_dir=args.weights_dir,
                       wait=not args.no_wait, together=args.together)
    return 1 if summary.failed else 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
