"""How hard to fuzz: a CI-sized run by default, ``EDGE_FUZZ_EXAMPLES=100000`` for the nightly.

Every property test here uses ``FUZZ``; hypothesis prints the failing example and a
``@reproduce_failure`` blob, and ``EDGE_FUZZ_SEED`` pins the run for a replay.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

EXAMPLES = int(os.environ.get("EDGE_FUZZ_EXAMPLES", "300"))
SEED = os.environ.get("EDGE_FUZZ_SEED")

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=SEED is None and EXAMPLES <= 1000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)
"""CI runs are derandomized (the same cases every run, so a red build is not a fluke); a
nightly run explores new cases each night."""
