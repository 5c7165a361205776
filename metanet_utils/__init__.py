"""MetaNet reproduction kit: library behind the notebooks.

Li, Zhuang, Wang, Zhang, Zheng, "Fusing metadata and dermoscopy images for skin
disease diagnosis", ISBI 2020. Importing this package has no side effects; the
heavy modules (models, train, ...) are imported on demand.
"""

__version__ = "0.1.0"
