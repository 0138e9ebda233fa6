"""``python -m central``: the same as ``edge-central``."""

from central.console import main

main()
