"""The machine room: download, sample, grid runner, GPU fast paths, Slurm, locks, weights, CLI and the papermill
pipeline. These modules import the teaching path (``metanet_utils.*``), never the reverse.
"""
