"""The one line that starts every notebook: ``prof, ds, caption = setup(profile, data_dir)``.

It reads the profile (``configs/<name>.yaml``), opens its data (the full HAM10000 if found, else the shipped
sample for demo and smoke), says on screen which data it is, and returns the caption that every figure footer
carries (what data and runs produced the figure).

Example:
    >>> from metanet_utils.notebook import setup                      # doctest: +SKIP
    >>> prof, ds, caption = setup("smoke", "")                        # doctest: +SKIP
    Data: the shipped sample of HAM10000: 1095 images at 128x96 (...).
"""

from __future__ import annotations

from typing import NamedTuple

from IPython import get_ipython

from .config import Profile, load_profile
from .data import announce
from .dataset import Dataset, profile_dataset
from .report import run_caption


class Setup(NamedTuple):
    prof: Profile
    ds: Dataset
    caption: str


def setup(profile: str, data_dir: str = "") -> Setup:
    """Profile, data set and figure caption of a notebook; inline figures in Jupyter."""
    shell = get_ipython()
    if shell is not None and shell.__class__.__name__ != "TerminalInteractiveShell":
        shell.run_line_magic("matplotlib", "inline")  # run_all.sh sets MPLBACKEND=Agg for the library's figures
    prof = load_profile(profile)
    ds = profile_dataset(prof, data_dir or None)
    caption = run_caption(prof, ds)
    announce(ds)
    print(caption)
    return Setup(prof, ds, caption)
