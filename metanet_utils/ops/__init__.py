"""The machine room: what the notebooks do not need to read.

Downloading the data (:mod:`.download`), drawing the shipped sample (:mod:`.sample`), the grid runner and its
workers, the GPU fast paths, Slurm through submitit, the command line (``python -m metanet_utils``) and the
papermill pipeline behind ``./run_all.sh``. Arrows point one way: these modules import the teaching path
(``metanet_utils.*``), never the reverse.
"""
