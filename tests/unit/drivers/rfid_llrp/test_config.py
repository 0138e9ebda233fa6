"""The rfid-llrp config model: the sample validates, errors name the key a technician must fix."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError

from drivers import registry
from drivers.rfid_llrp.config import RfidLlrpConfig
from gateway.settings import ConfigError, load_settings

ROOT = Path(__file__).resolve().parents[4]
SAMPLE = ROOT / "drivers" / "rfid_llrp" / "sample.toml"
BASE = {"id": "portal-1", "driver": "rfid-llrp", "host": "10.0.0.5"}


def test_sample_toml_validates():
    """The shipped sample.toml's device is valid, so technicians can copy it."""
    devices = tomllib.loads(SAMPLE.read_text(encoding="utf-8"))["devices"]
    config = RfidLlrpConfig.model_validate(devices[0])
    assert config.inventory_antennas == [1, 2, 3, 4]
    assert config.zone_of_antenna() == {1: "dock", 2: "dock", 3: "inside", 4: "inside"}
    assert config.departure_of_zone() == {"dock": 3.0, "inside": 10.0}
    assert config.gpo_ports() == [1, 2]


def test_registry_resolves_config_model():
    """The registry's lazy entry points at this model."""
    assert registry.config_model("rfid-llrp") is RfidLlrpConfig


def test_defaults():
    """Defaults match README and sample.toml: port 5084, one default zone on antenna 1."""
    config = RfidLlrpConfig.model_validate(BASE)
    assert (config.port, config.session, config.keepalive_s) == (5084, 2, 5.0)
    assert (config.report_every_tags, config.report_every_ms, config.departure_s) == (1, 0, 3.0)
    assert config.zone_of_antenna() == {1: "default"}
    assert config.start_trigger.type == "immediate"
    assert config.stop_trigger.type == "none"


@pytest.mark.parametrize(
    ("extra", "location", "message"),
    [
        ({"host": "tcp://10.0.0.5"}, ("host",), "host name or IP address only"),
        ({"port": 0}, ("port",), "greater than or equal"),
        ({"antennas": []}, ("antennas",), "at least one antenna"),
        ({"antennas": [1, 1]}, ("antennas",), "twice"),
        ({"antennas": [65]}, ("antennas",), "1 to 64"),
        (
            {"antennas": [1, 2], "zones": {"dock": {"antennas": [5]}}},
            ("zones", "dock", "antennas"),
            "antenna 5 is not in antennas [1, 2]",
        ),
        (
            {"zones": {"a": {"antennas": [1]}, "b": {"antennas": [1]}}},
            ("zones", "b", "antennas"),
            "already in zone 'a'",
        ),
        ({"zones": {"bad name": {"antennas": [1]}}}, ("zones",), "zone name"),
        ({"session": 4}, ("session",), ""),
        ({"search_mode": "fast"}, ("search_mode",), ""),
        ({"start_trigger": {"type": "gpi"}}, ("start_trigger", "gpi_port"), "required"),
        ({"stop_trigger": {"type": "duration"}}, ("stop_trigger", "timeout_ms"), "> 0"),
        ({"gpo_pulse_ms": 1}, ("gpo_pulse_ms",), ""),
        ({"reconnect_min": 5, "reconnect_max": 1}, ("reconnect_max",), ">= reconnect_min"),
        ({"colour": "red"}, ("colour",), ""),
    ],
)
def test_refused_with_location(extra, location, message):
    """Each bad value is refused at its own key path, with a human message."""
    with pytest.raises(ValidationError) as info:
        RfidLlrpConfig.model_validate({**BASE, **extra})
    errors = info.value.errors()
    assert any(e["loc"] == location for e in errors), errors
    assert any(message in e["msg"] for e in errors if e["loc"] == location)


def test_config_file_error_names_path_line_and_zone(tmp_path):
    """check-config style output: PATH:LINE: devices[0].zones.dock.antennas: message."""
    path = tmp_path / "gw.toml"
    path.write_text(
        '[gateway]\nid = "gw"\nsite = "s"\n\n[[devices]]\nid = "p"\ndriver = "rfid-llrp"\n'
        'host = "10.0.0.5"\nantennas = [1, 2]\n'
        "zones = { dock = { antennas = [1, 9] } }\n"
    )
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    expected = (
        f'{path}:10: devices[0] (id "p").zones.dock.antennas: antenna 9 is not in antennas [1, 2]; '
        "add it there or remove it here"
    )
    assert info.value.errors == [expected]


def test_config_module_does_not_import_sllurp():
    """check-config must work without the LLRP library: config.py never imports it."""
    code = (
        "import sys; import drivers.rfid_llrp.config; "
        "assert 'sllurp' not in sys.modules, 'sllurp imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=30)
