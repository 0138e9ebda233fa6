"""Who hears what about an event: one per-device policy, the only place that decides feedback.

A device's policy is built from its config (``confirm``, ``confirm_timeout``) and its driver's
table of event kinds (``Driver.event_feedback``). For each event kind and each thing that can
happen to an event it answers "which feedback, if any". The pipeline and
:class:`gateway.confirmations.Confirmations` only ask it; no driver flag, no test on
``droppable`` decides anything (that flag is the buffer's, for its size cap). Before this, the
three places disagreed at the edges: a conveyor reading refused by a full buffer pulsed the
stack light bad on every changed reading. See docs/confirmation.md, "Who gets feedback".
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from drivers import registry
from drivers.base import ConfirmLevel, DeviceConfig, Driver, EventFeedback, Outcome


class Stage(enum.StrEnum):
    """What happened to an event, as far as feedback is concerned."""

    STORED = "stored"
    """The buffer commit returned."""
    DELIVERED = "delivered"
    """The broker acknowledged it (PUBACK)."""
    ACCEPTED = "accepted"
    """Central published ``accepted`` for it."""
    REJECTED = "rejected"
    """Central published ``rejected`` for it."""
    REFUSED = "refused"
    """The buffer refused it (full, or the disk is): it is not stored."""
    TIMEOUT = "timeout"
    """``confirm_timeout`` passed before the level was reached; it stays buffered."""
    STOPPED = "stopped"
    """Its device is being stopped (reload, removal, shutdown) before the level was reached."""


_GOOD_AT: Mapping[ConfirmLevel, frozenset[Stage]] = {
    "stored": frozenset({Stage.STORED, Stage.DELIVERED, Stage.ACCEPTED}),
    "delivered": frozenset({Stage.DELIVERED, Stage.ACCEPTED}),
    "accepted": frozenset({Stage.ACCEPTED}),
}
"""Stages that reach each level: a verdict also settles a ``delivered`` waiter (central having
the event implies the broker had it)."""

_ALWAYS: Mapping[Stage, Outcome] = {
    Stage.REJECTED: Outcome.BAD,
    Stage.REFUSED: Outcome.BAD,
    Stage.TIMEOUT: Outcome.PENDING,
    Stage.STOPPED: Outcome.PENDING,
}
"""For a kind someone waits on, whatever the level: bad when it is refused or rejected (scan
again, or see why), pending when the level cannot be reported in time (it is stored: do not
scan again)."""


NOT_HEARD: tuple[Outcome | None, bool] = (None, False)
"""``FeedbackPolicy.at_stored`` for a type the policy does not list: no feedback, no wait."""


@dataclass(frozen=True, slots=True)
class FeedbackPolicy:
    """One device's answer to "does this event get feedback, and which"."""

    device: str
    level: ConfirmLevel
    timeout: float
    kinds: Mapping[str, EventFeedback]
    """Event type -> its kind; types not listed get no feedback. Not changed once made."""
    at_stored: Mapping[str, tuple[Outcome | None, bool]] = field(
        init=False, repr=False, compare=False
    )
    """Event type -> (:meth:`outcome` at ``Stored``, :meth:`waits`), made once: the pipeline
    asks for every event it stores (two calls, an enum lookup and a set test each time).
    Types not listed: ``NOT_HEARD``."""

    def __post_init__(self) -> None:
        answers = {t: (self.outcome(t, Stage.STORED), self.waits(t)) for t in self.kinds}
        object.__setattr__(self, "at_stored", answers)  # frozen: set once, here

    @classmethod
    def for_device(
        cls, config: DeviceConfig, driver: type[Driver[Any]] | None = None
    ) -> FeedbackPolicy:
        """The policy of ``config``'s device; ``driver`` defaults to its registered class."""
        if driver is None:
            driver = registry.driver_class(config.driver)
        return cls(
            config.id,
            config.confirm,
            config.confirm_timeout,
            MappingProxyType(dict(driver.event_feedback)),
        )

    def waits(self, type_: str) -> bool:
        """Whether a worker waits to hear about events of ``type_`` (only those are tracked)."""
        return self.kinds.get(type_, EventFeedback.NONE) is EventFeedback.CONFIRM

    def outcome(self, type_: str, stage: Stage) -> Outcome | None:
        """The feedback an event of ``type_`` gets at ``stage``; None: none (yet, or ever)."""
        if not self.waits(type_):
            return None
        if stage in _GOOD_AT[self.level]:
            return Outcome.GOOD
        return _ALWAYS.get(stage)

    def table(self) -> dict[str, dict[str, str | None]]:
        """Every kind's outcome at every stage, for docs and tests: ``{type: {stage: ...}}``."""
        return {
            type_: {
                stage.value: (o.value if (o := self.outcome(type_, stage)) else None)
                for stage in Stage
            }
            for type_ in self.kinds
        }
