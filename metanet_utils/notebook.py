"""The one line that starts every notebook: ``prof, ds, caption = setup(profile, data_dir)``."""

from __future__ import annotations

from IPython import get_ipython

from .config import Profile, load_profile
from .data import announce
from .dataset import Dataset, profile_dataset
from .report import run_caption


def setup(profile: str, data_dir: str = "") -> tuple[Profile, Dataset, str]:
    """Read the profile, open its data and say which; return them with the caption of every figure footer."""
    shell = get_ipython()
    if shell is not None and shell.__class__.__name__ != "TerminalInteractiveShell":
        shell.run_line_magic("matplotlib", "inline")  # run_all.sh sets MPLBACKEND=Agg
    prof = load_profile(profile)
    ds = profile_dataset(prof, data_dir or None)
    caption = run_caption(prof, ds)
    announce(ds)
    print(caption)
    return prof, ds, caption
