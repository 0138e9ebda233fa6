"""``python -m gateway`` is ``edge-gateway``."""

import sys

from gateway.cli import main

sys.exit(main())
