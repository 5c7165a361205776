"""The one line that starts every notebook: ``prof, ds, caption = setup(profile, data_dir)``."""

from __future__ import annotations

from IPython import get_ipython

from .config import Profile, load_profile
from .data import announce
from .dataset import Dataset, profile_dataset
from .report import run_caption


def setup(profile: str, data_dir: str = "") -> tuple[Profile, Dataset, str]:
    """Read the profile (``configs/<name>.yaml``), open its data (the full HAM10000 if found, else the shipped
    sample for demo and smoke) and say which on screen; return them with the caption every figure footer carries.
    Figures show inline in Jupyter."""
    shell = get_ipython()
    if shell is not None and shell.__class__.__name__ != "TerminalInteractiveShell":
        shell.run_line_magic("matplotlib", "inline")  # run_all.sh sets MPLBACKEND=Agg for the library's figures
    prof = load_profile(profile)
    ds = profile_dataset(prof, data_dir or None)
    caption = run_caption(prof, ds)
    announce(ds)
    print(caption)
    return prof, ds, caption
