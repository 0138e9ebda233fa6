"""``python -m central``: the same as ``edge-central``."""

import sys

from central.cli import main

sys.exit(main())
