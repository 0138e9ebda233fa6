"""central.toml: PATH:LINE errors, exit 2, and an example that documents every default."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import gmqtt
import pytest
from gmqtt.mqtt import handler, package, protocol
from gmqtt.mqtt.constants import MQTTCommands, MQTTv50

from central.config import CentralSettings, load_central_settings
from gateway.settings import ConfigError
from tests.support import ROOT

EXAMPLE = ROOT / "config" / "central.example.toml"


def test_example_loads_and_documents_every_key_with_its_default() -> None:
    """Each ``# key = value`` line in the example equals the model's default."""
    settings = load_central_settings(EXAMPLE)
    text = EXAMPLE.read_text()
    section = ""
    documented: set[tuple[str, str]] = set()
    for line in text.splitlines():
        if m := re.match(r"^\[(\w+)\]", line):
            section = m[1]
        elif m := re.match(r"^# \[(\w+)\.(\w+)\]", line):  # an optional sub-table, shown off
            documented.add((m[1], m[2]))
            section = f"{m[1]}.{m[2]}"
        elif m := re.match(r"^#? ?(\w+) = (.+)$", line):
            documented.add((section, m[1]))
            if "(none)" in m[2] or section == "central" or "." in section:
                continue
            value = getattr(getattr(settings, section), m[1])
            shown = m[2].strip().strip('"')
            assert str(value).lower() in {shown.lower(), f"{shown}.0"}, (section, m[1], value)
    for name, field in CentralSettings.model_fields.items():
        model = field.annotation
        for key in model.model_fields:  # type: ignore[union-attr]
            assert (name, key) in documented, f"{name}.{key} not in config/central.toml"


def test_errors_name_file_line_and_key(tmp_path: Path) -> None:
    """Every problem at once, as the gateway reports its own."""
    path = tmp_path / "c.toml"
    path.write_text(
        '[central]\ninstance = "a"\n[mqtt]\nport = 0\n[confirm]\nbatch_max = 5000\nx = 1\n'
    )
    with pytest.raises(ConfigError) as info:
        load_central_settings(path)
    assert info.value.errors[0].startswith(f"{path}:4: mqtt.port:")
    assert info.value.errors[1].startswith(f"{path}:6: confirm.batch_max:")
    assert info.value.errors[2].startswith(f"{path}:7: confirm.x: unknown key")


def _check_config(path: Path) -> subprocess.CompletedProcess[str]:
    """``edge-central check-config`` as a technician runs it: a process, its exit code, stderr."""
    return subprocess.run(
        [sys.executable, "-m", "central", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )


def test_check_config_exit_codes(tmp_path: Path) -> None:
    """0 for the example, 2 for a bad file, no traceback."""
    ok = _check_config(EXAMPLE)
    assert ok.returncode == 0, ok.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[central]\n")
    done = _check_config(bad)
    assert done.returncode == 2
    assert f"{bad}:1: central.instance:" in done.stderr
    assert "Traceback" not in done.stderr
    bad.write_text('[central]\ninstance = "a"\n[confirm]\nrule = "nope"\n')
    done = _check_config(bad)
    assert done.returncode == 2
    assert f"{bad}:4: confirm.rule: unknown rule 'nope'" in done.stderr
    # A factory that returns something without verdicts(): named, not a bare ValueError.
    bad.write_text('[central]\ninstance = "a"\n[confirm]\nrule = "builtins:object"\n')
    done = _check_config(bad)
    assert done.returncode == 2
    assert f"{bad}:4: confirm.rule: rule 'builtins:object' has no verdicts() method" in done.stderr


def test_gmqtt_connect_properties_contract() -> None:
    """CentralLink sets session expiry and Receive Maximum through gmqtt's private
    ``_connect_properties``: fail here on the gmqtt upgrade that changes it."""
    client = gmqtt.Client("x", session_expiry_interval=5)
    assert client._connect_properties == {"session_expiry_interval": 5}


def test_gmqtt_qos1_hook_contract() -> None:
    """CentralLink replaces the handler's ``_handle_qos_1_publish_packet`` (called through
    ``self``, with ``(mid, packet, topic, properties)``) and writes PUBACKs it builds with
    ``CommandWithMidPacket`` through the protocol's ``write_data``: fail here on the gmqtt
    upgrade that moves any of it."""
    caller = inspect.getsource(handler.MqttPackageHandler._handle_publish_packet)
    assert "self._handle_qos_1_publish_packet(mid, packet, print_topic, properties)" in caller
    assert "_optimistic_acknowledgement" in inspect.getsource(
        handler.MqttPackageHandler._handle_qos_1_publish_packet
    )
    puback = package.CommandWithMidPacket.build_package(
        MQTTCommands.PUBACK, 258, False, proto_ver=MQTTv50
    )
    assert puback == bytes([0x40, 4, 1, 2, 0, 0])  # PUBACK, mid 258, success, no properties
    assert "self._transport.write(data)" in inspect.getsource(protocol.MQTTProtocol.write_data)
    assert "self.proto_ver" in inspect.getsource(protocol.MQTTProtocol.send_command_with_mid)
    client = gmqtt.Client("x")
    assert hasattr(client._package_handler, "_optimistic_acknowledgement")
