"""MetaNet reproduction kit: the library behind the notebooks.

Li, Zhuang, Wang, Zhang, Zheng, "Fusing metadata and dermoscopy images for skin disease diagnosis", ISBI 2020.
The teaching path (what the notebooks import) is this folder, one module per idea of the paper; the machine room
(grid runner, GPU fast paths, download, Slurm, CLI, pipeline) is :mod:`metanet_utils.ops`.
"""

import warnings

# tqdm.auto without ipywidgets prints plain progress lines; its warning says nothing a student can act on
warnings.filterwarnings("ignore", message="IProgress not found")

__version__ = "0.1.0"
