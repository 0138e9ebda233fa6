"""``bench.latency`` with one core kept busy by a process at the gateway's own niceness.

Issue 16's second latency row (p99 <= 10 ms at ``stored``, <= 20 ms at ``delivered``), as its
own line in ``bench/run_all``'s results (``"benchmark": "latency_busy"``, ``"busy"`` says how
many spinners and at what niceness). Extra arguments go to ``bench.latency``.

    .venv/bin/python -m bench.latency_busy [--scans 2000] [--busy-nice 5]
"""

from __future__ import annotations

import sys

from bench.latency import cli

if __name__ == "__main__":
    cli(["--busy", "1", *sys.argv[1:]])
