"""How often central's commands are taken, and which were already taken (issue 18).

A replay command costs a range check on the buffer and often an answer, and one run twice
re-publishes its range twice: :class:`gateway.inbound.Inbound` takes commands at a bounded
rate, valid or not, and remembers the ``request_id`` of each queued one for a while, so a
QoS 1 redelivery (DUP) or a repeat is not run again.
"""

from __future__ import annotations

import collections
import time

COMMAND_RATE = 5.0
COMMAND_BURST = 20.0
"""Commands taken per second, and in a burst, valid or not: each costs a range check on the
buffer and often an answer, so a flood is refused at the door (issue 18, finding 8)."""

REQUEST_WINDOW_S = 24 * 3600.0
REQUEST_WINDOW_MAX = 4096
"""How long, and how many, ``request_id``s of queued replays are remembered: a command whose
``request_id`` is still remembered is ignored (a QoS 1 redelivery, DUP, or a repeat). At most
4,096 ids of at most 128 characters: under 1 MiB (issue 18, finding 3)."""


class RequestWindow:
    """The ``request_id``s seen lately: at most ``size``, none older than ``period`` seconds."""

    def __init__(self, period: float = REQUEST_WINDOW_S, size: int = REQUEST_WINDOW_MAX) -> None:
        self._period = period
        self._size = size
        self._seen: collections.OrderedDict[tuple[str, str | int], float] = (
            collections.OrderedDict()
        )

    def __len__(self) -> int:
        return len(self._seen)

    @staticmethod
    def _key(request_id: str | int) -> tuple[str, str | int]:
        return (type(request_id).__name__, request_id)  # 1 and "1" are different requests

    def __contains__(self, request_id: str | int) -> bool:
        self._expire()
        return self._key(request_id) in self._seen

    def add(self, request_id: str | int) -> None:
        """Remember ``request_id`` from now on; the oldest is forgotten beyond ``size``."""
        self._seen[self._key(request_id)] = time.monotonic()
        self._seen.move_to_end(self._key(request_id))
        while len(self._seen) > self._size:
            self._seen.popitem(last=False)

    def discard(self, request_id: str | int) -> None:
        """Forget ``request_id``: it was refused, so the same id may come again and run."""
        self._seen.pop(self._key(request_id), None)

    def _expire(self) -> None:
        cutoff = time.monotonic() - self._period
        while self._seen and next(iter(self._seen.values())) < cutoff:
            self._seen.popitem(last=False)
