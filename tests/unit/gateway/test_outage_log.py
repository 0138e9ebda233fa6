"""A broker outage is logged when it begins, when it changes, as a rare reminder, and when it
ends: not once per reconnect attempt."""

from __future__ import annotations

from structlog.testing import capture_logs

from gateway.outage_log import OutageLog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_repeated_identical_failures_log_once_then_a_reminder_then_the_end() -> None:
    clock = Clock()
    outages = OutageLog(reminder_s=300, clock=clock)
    with capture_logs() as logs:
        for _ in range(100):  # every 2 s for 200 s: under the reminder interval
            outages.failed("refused", "broker", was_connected=False)
            clock.now += 2
        assert [e["event"] for e in logs] == ["mqtt_disconnected"]
        for _ in range(60):  # 120 s more: the reminder falls due once
            outages.failed("refused", "broker", was_connected=False)
            clock.now += 2
        outages.connected("broker", 1883)
    assert [e["event"] for e in logs] == [
        "mqtt_disconnected",
        "mqtt_still_disconnected",
        "mqtt_connected",
    ]
    reminder, back = logs[1], logs[2]
    assert reminder["attempts"] == 151 and reminder["attempts_not_logged"] == 150
    assert back["attempts"] == 160 and back["down_for_s"] == 320.0


def test_a_changed_error_and_every_lost_session_are_logged() -> None:
    clock = Clock()
    outages = OutageLog(clock=clock)
    with capture_logs() as logs:
        outages.failed("refused", "broker", was_connected=False)
        outages.failed("refused", "broker", was_connected=False)
        outages.failed("tls: certificate expired", "broker", was_connected=False)
        outages.connected("broker", 8883)
        outages.failed("connection lost", "broker", was_connected=True)
        outages.failed("connection lost", "broker", was_connected=True)  # up again in between
    assert [(e["event"], e.get("error")) for e in logs] == [
        ("mqtt_disconnected", "refused"),
        ("mqtt_disconnected", "tls: certificate expired"),
        ("mqtt_connected", None),
        ("mqtt_disconnected", "connection lost"),
        ("mqtt_disconnected", "connection lost"),
    ]
    assert logs[2]["attempts"] == 3


def test_a_first_connect_reports_no_outage() -> None:
    with capture_logs() as logs:
        OutageLog().connected("broker", 1883)
    assert logs == [
        {"event": "mqtt_connected", "host": "broker", "port": 1883, "log_level": "info"}
    ]
