"""What a SIGHUP reload changes: a pure comparison of the running and the new settings.

Devices added, removed or changed are started, stopped or restarted; MQTT settings changed mean
a reconnect, except the checkpoint interval and replay rate, which apply without one; the
buffer's cap and retention and the shutdown bound apply at once (gateway/daemon.py
``Gateway._configure``). Identity (gateway id, site, topic root) and the state directory cannot
change under a running daemon without breaking sources, topics and the buffer; the metrics
listener, the buffer's batch size and logging are set up once at start. Those changes are
reported as needing a restart and not applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.settings import MqttSection, Settings

NOT_SESSION_KEYS = frozenset({"checkpoint_interval", "replay_rate"})
"""MQTT settings applied without a reconnect (they pace our own jobs, not the session)."""


@dataclass(frozen=True)
class ReloadPlan:
    """The differences that matter, by device id and by section."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    mqtt_changed: bool = False
    needs_restart: tuple[str, ...] = field(default=())

    @property
    def restart_devices(self) -> tuple[str, ...]:
        """Devices whose driver must stop (removed or changed)."""
        return self.removed + self.changed

    @property
    def start_devices(self) -> tuple[str, ...]:
        """Devices whose driver must start (added or changed)."""
        return self.added + self.changed


def plan_reload(old: Settings, new: Settings) -> ReloadPlan:
    """Compare two validated configs."""
    before = {d.id: d for d in old.devices}
    after = {d.id: d for d in new.devices}
    restart = [
        key
        for key, differs in (
            ("gateway.id", old.gateway.id != new.gateway.id),
            ("gateway.site", old.gateway.site != new.gateway.site),
            ("gateway.state_dir", old.gateway.state_dir != new.gateway.state_dir),
            ("mqtt.topic_root", old.topic_root != new.topic_root),
            ("metrics.listen", old.metrics != new.metrics),
            # The buffer's writer and the process's log setup are made once, at start.
            ("buffer.batch_max", old.buffer.batch_max != new.buffer.batch_max),
            ("logging", old.logging != new.logging),
        )
        if differs
    ]
    return ReloadPlan(
        added=tuple(d for d in after if d not in before),
        removed=tuple(d for d in before if d not in after),
        changed=tuple(d for d in after if d in before and after[d] != before[d]),
        mqtt_changed=session_changed(old.mqtt, new.mqtt),
        needs_restart=tuple(restart),
    )


def effective(old: Settings, new: Settings) -> Settings:
    """The settings to run with: the new ones, minus what only a restart can change."""
    keep_root = {"topic_root": old.mqtt.topic_root} if old.topic_root != new.topic_root else {}
    mqtt = new.mqtt.model_copy(update=keep_root) if keep_root else new.mqtt
    gateway = old.gateway.model_copy(update={"shutdown_timeout": new.gateway.shutdown_timeout})
    buffer = new.buffer.model_copy(update={"batch_max": old.buffer.batch_max})
    return new.model_copy(
        update={
            "gateway": gateway,
            "metrics": old.metrics,
            "mqtt": mqtt,
            "buffer": buffer,
            "logging": old.logging,
        }
    )


def session_changed(old: MqttSection, new: MqttSection) -> bool:
    """Whether the broker session must be made again to apply ``new``."""
    return old.model_dump(exclude=set(NOT_SESSION_KEYS)) != new.model_dump(
        exclude=set(NOT_SESSION_KEYS)
    )
