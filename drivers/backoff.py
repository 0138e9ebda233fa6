"""Exponential backoff with full jitter, shared by every reconnect loop in the gateway.

Jitter matters more than the curve: a rack of gateways (or a line of devices) that lost the
same broker or switch at the same instant must not retry in lockstep.
"""

from __future__ import annotations

import random


class Backoff:
    """Delays drawn uniformly from ``low`` up to a cap doubling from ``2 * low`` to ``high``."""

    def __init__(self, low: float, high: float) -> None:
        self.low = low
        self.high = high
        self._attempt = 0

    def reset(self) -> None:
        """The peer answered: start again from ``low``."""
        self._attempt = 0

    def next(self) -> float:
        """The next delay, in seconds."""
        # The first cap is already 2 x low: a fleet dropped at the same instant must not all
        # retry exactly reconnect_min later.
        cap = min(self.high, self.low * 2 ** min(self._attempt + 1, 30))
        self._attempt += 1
        return random.uniform(self.low, cap)  # noqa: S311 - jitter, not cryptography
