"""What ``status`` shows of a running daemon: is it running, since when, is MQTT connected.

The daemon holds a lock on the state directory (gateway/statelock.py): whether someone holds it
is whether a daemon runs; ``STATE_DIR/gateway.lock`` holds its pid, and that file's modification
time is when it started. The MQTT link's state is ``STATE_DIR/mqtt-link.json``, replaced
atomically on each connect and disconnect (not per message), with the pid that wrote it: a file
left by a daemon that is gone is shown as such, never as a live connection.
"""

from __future__ import annotations

import contextlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.statelock import LOCK_NAME, holder

LINK_FILE = "mqtt-link.json"


def write_link_state(state_dir: Path, *, connected: bool, since: str, broker: str) -> None:
    """Record the link's state for ``status``; a failure costs only the status line."""
    body = {"connected": connected, "since": since, "broker": broker, "pid": os.getpid()}
    tmp = state_dir / f".{LINK_FILE}.{os.getpid()}"
    with contextlib.suppress(OSError):
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(body, out)
        tmp.replace(state_dir / LINK_FILE)


def _mtime(path: Path) -> str | None:
    try:
        stamp = path.stat().st_mtime
    except OSError:
        return None
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def daemon_state(state_dir: Path) -> dict[str, Any]:
    """``{"running", "pid", "since", "mqtt": {...} | None}`` (``error`` if it cannot tell)."""
    try:
        pid = holder(state_dir)
    except PermissionError:
        return {"running": None, "error": f"cannot open {state_dir}: run as root"}
    except OSError as exc:
        return {"running": None, "error": f"{state_dir}: {exc.strerror or exc}"}
    if pid is None:
        return {"running": False, "pid": None, "since": None, "mqtt": None}
    state: dict[str, Any] = {
        "running": True,
        "pid": pid or None,
        "since": _mtime(state_dir / LOCK_NAME),
        "mqtt": None,
    }
    try:
        link = json.loads((state_dir / LINK_FILE).read_text())
    except (OSError, ValueError):
        return state
    if isinstance(link, dict) and link.get("pid") == pid:
        state["mqtt"] = {k: link.get(k) for k in ("connected", "since", "broker")}
    return state


def describe(state: dict[str, Any]) -> list[str]:
    """Two lines for the text status."""
    if state.get("running") is None:
        return [f"daemon: unknown ({state.get('error')})"]
    if not state["running"]:
        return ["daemon: not running", "mqtt: -"]
    lines = [f"daemon: running (pid {state['pid']}) since {state['since'] or '?'}"]
    mqtt = state.get("mqtt")
    if mqtt is None:
        lines.append("mqtt: not connected yet")
    elif mqtt["connected"]:
        lines.append(f"mqtt: connected to {mqtt['broker']} since {mqtt['since']}")
    else:
        lines.append(f"mqtt: disconnected from {mqtt['broker']} since {mqtt['since']}")
    return lines
