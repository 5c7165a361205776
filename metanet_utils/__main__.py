"""``python -m metanet_utils``: see :mod:`metanet_utils.ops.cli`."""

from .ops.cli import main

raise SystemExit(main())
