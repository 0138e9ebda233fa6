"""The ``edge-central`` script and ``python -m central``: a start and an exit fit for parity.

``parity`` runs from cron and monitoring checks, so its whole process time counts (target
100 ms; bench/central_parity.py). Two costs there are not work at all: the cyclic garbage
collector running while ~300 modules are imported (~10 ms), and the interpreter's teardown of
those modules at exit (~20 ms). So for ``parity`` the collector is off (the process lives a
fraction of a second and builds no cycles worth collecting) and, once the report is printed and
flushed and the connection closed, the process ends with ``os._exit``. Every other command
starts and exits normally: ``run`` relies on a clean shutdown.
"""

from __future__ import annotations

import gc
import os
import sys
from typing import NoReturn


def main() -> NoReturn:
    """Run the command line in ``sys.argv``; exit with its code."""
    argv = sys.argv[1:]
    quick = argv[:1] == ["parity"]
    if quick:
        gc.disable()
    from central.cli import main as cli_main  # noqa: PLC0415 - after the collector is off

    code = cli_main(argv)
    if quick:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except BrokenPipeError:  # a reader that stopped early (`| head`): nothing more to say
            code = code or 1
        os._exit(code)
    sys.exit(code)
