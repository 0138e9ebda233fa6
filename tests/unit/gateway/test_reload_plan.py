"""The reload plan: what a changed config starts, stops, reconnects, or leaves for a restart."""

from __future__ import annotations

from pathlib import Path

from gateway.reload import effective, plan_reload
from gateway.settings import Settings, load_settings
from tests.support import scanner_device, write_config


def settings(tmp_path: Path, name: str, devices: list[dict], **sections: dict) -> Settings:
    path = write_config(
        tmp_path / name, mqtt_port=1883, state_dir=tmp_path / "state", devices=devices, **sections
    )
    return load_settings(path)


def test_devices_added_removed_changed(tmp_path: Path) -> None:
    """A new id starts, a missing id stops, a changed entry restarts, an equal one is left."""
    old = settings(
        tmp_path,
        "old.toml",
        [scanner_device("a", Path("/dev/a")), scanner_device("b", Path("/dev/b"))],
    )
    new = settings(
        tmp_path,
        "new.toml",
        [
            scanner_device("b", Path("/dev/b"), confirm="delivered"),
            scanner_device("c", Path("/dev/c")),
        ],
    )
    plan = plan_reload(old, new)
    assert plan.added == ("c",)
    assert plan.removed == ("a",)
    assert plan.changed == ("b",)
    assert plan.restart_devices == ("a", "b")
    assert plan.start_devices == ("c", "b")
    assert not plan.mqtt_changed
    assert plan.needs_restart == ()


def test_identity_changes_need_a_restart_and_are_not_applied(tmp_path: Path) -> None:
    """gateway.id and topic root stay as running; mqtt changes are applied."""
    old = settings(tmp_path, "old.toml", [])
    new = settings(
        tmp_path,
        "new.toml",
        [],
        gateway={"id": "gw-other"},
        mqtt={"topic_root": "x/y", "keepalive": 60},
    )
    plan = plan_reload(old, new)
    assert set(plan.needs_restart) == {"gateway.id", "mqtt.topic_root"}
    assert plan.mqtt_changed
    running = effective(old, new)
    assert running.gateway.id == old.gateway.id
    assert running.topic_root == old.topic_root
    assert running.mqtt.keepalive == 60


def test_checkpoint_interval_and_replay_rate_apply_without_a_reconnect(tmp_path: Path) -> None:
    """They pace our own jobs, not the broker session; a keepalive change still reconnects."""
    old = settings(tmp_path, "old.toml", [])
    paced = settings(tmp_path, "paced.toml", [], mqtt={"checkpoint_interval": 5, "replay_rate": 50})
    assert old.mqtt != paced.mqtt
    assert not plan_reload(old, paced).mqtt_changed
    keepalive = settings(tmp_path, "keepalive.toml", [], mqtt={"keepalive": 45})
    assert plan_reload(old, keepalive).mqtt_changed


def test_batch_size_and_logging_need_a_restart_the_shutdown_bound_does_not(tmp_path: Path) -> None:
    """Nothing is silently ignored: what is not applied is reported as needing a restart."""
    old = settings(tmp_path, "old.toml", [])
    new = settings(
        tmp_path,
        "new.toml",
        [],
        buffer={"batch_max": 50, "retention": 60},
        gateway={"shutdown_timeout": 20},
    )
    new = new.model_copy(update={"logging": new.logging.model_copy(update={"level": "debug"})})
    plan = plan_reload(old, new)
    assert set(plan.needs_restart) == {"buffer.batch_max", "logging"}
    running = effective(old, new)
    assert running.buffer.batch_max == old.buffer.batch_max
    assert running.buffer.retention == 60
    assert running.logging == old.logging
    assert running.gateway.shutdown_timeout == 20
