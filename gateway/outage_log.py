"""How a broker outage reads in the journal: a line when it begins, a line when it ends.

While the broker is away the publisher tries again every ``reconnect_max`` seconds (30 by
default) for as long as the outage lasts. A warning per attempt buried the journal (2,880 lines
a day of the same "connection refused") and hid what changed. So a failed attempt is logged when
the link was up before it (a session ended), when its error differs from the previous one (the
outage changed: refused, then TLS, then a timeout), and otherwise only as a reminder every
:data:`REMINDER_S`, with the attempts made since. The next ``mqtt_connected`` says how long the
link was down and how many attempts it took.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)

REMINDER_S = 300.0
"""While attempts keep failing the same way, one ``mqtt_still_disconnected`` per this long."""


class OutageLog:
    """Logs one broker's outages: their start, changes, reminders, and end."""

    def __init__(
        self, *, reminder_s: float = REMINDER_S, clock: Callable[[], float] | None = None
    ) -> None:
        self._reminder_s = reminder_s
        self._clock = clock or time.monotonic
        self._down_since: float | None = None
        self._last_line_at = 0.0
        self._last_error: str | None = None
        self._attempts = 0
        """Failed attempts in this outage."""
        self._unlogged = 0
        """Failed attempts since the last line."""

    def failed(self, error: str, host: str, *, was_connected: bool) -> None:
        """A connection attempt failed, or a session ended (``was_connected``)."""
        now = self._clock()
        if was_connected or self._down_since is None:
            self._down_since, self._attempts = now, 0
        self._attempts += 1
        if was_connected or self._attempts == 1 or error != self._last_error:
            log.warning("mqtt_disconnected", error=error, host=host)
        elif now - self._last_line_at >= self._reminder_s:
            log.warning(
                "mqtt_still_disconnected",
                error=error,
                host=host,
                attempts=self._attempts,
                down_for_s=round(now - self._down_since, 1),
                attempts_not_logged=self._unlogged + 1,
            )
        else:
            self._unlogged += 1
            return
        self._last_line_at, self._last_error, self._unlogged = now, error, 0

    def connected(self, host: str, port: int) -> None:
        """A session is up: log it, with the outage it ended (if any)."""
        outage: dict[str, float | int] = {}
        if self._down_since is not None:
            outage = {
                "down_for_s": round(self._clock() - self._down_since, 1),
                "attempts": self._attempts,
            }
        log.info("mqtt_connected", host=host, port=port, **outage)
        self._down_since, self._last_error, self._attempts, self._unlogged = None, None, 0, 0
