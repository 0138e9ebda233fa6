"""Stop signals that come before an event loop takes them over: noted, never raised.

``edge-gateway demo`` starts processes (initdb, then Mosquitto) before its loop handles signals.
A handler that raised ``KeyboardInterrupt`` there could fire inside ``subprocess.Popen`` right
after the fork: the child's pid was lost and initdb outlived the demo, its directory left in
/tmp (found by the demo's signal tests). Noting the signal instead lets every start finish with
its handle kept; the demo then stops as if ``q`` had been pressed, and cleans up everything.
"""

from __future__ import annotations

import signal
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class EarlyStop:
    """A signal handler that records that a stop was asked for."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:  # noqa: ARG002
        """The handler: note the stop, return at once."""
        self.requested = True

    def install(self) -> None:
        """Take :data:`STOP_SIGNALS`, also again after an event loop had them.

        A loop's handlers, once removed, leave the defaults: a second signal during cleanup
        would then kill the process midway.
        """
        for sig in STOP_SIGNALS:
            signal.signal(sig, self)
