"""``python -m metanet_utils``: see :mod:`metanet_utils.cli`."""

from .cli import main

raise SystemExit(main())
