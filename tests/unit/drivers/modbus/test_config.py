"""The modbus config model: the sample validates; mistakes are named at the offending key."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError

from drivers import registry
from drivers.base import Outcome
from drivers.modbus.client import LinkDown, ModbusLink
from drivers.modbus.config import RTU_LIBRARY_MISSING, ModbusConfig
from tests.support import ROOT, cli, run_python

SAMPLE = Path(__file__).resolve().parents[4] / "drivers" / "modbus" / "sample.toml"
BASE = {"id": "conveyor-a", "driver": "modbus", "host": "10.0.0.1"}
POINT = {"name": "speed", "address": 0}
PYMODBUS = ("pymodbus", "pymodbus.client", "pymodbus.exceptions", "pymodbus.framer")
"""What the RTU link imports: all hidden, as on a box without the library."""
RTU = {"host": None, "serial_port": "/dev/ttyUSB1"}


def errors(**changes):
    with pytest.raises(ValidationError) as caught:
        ModbusConfig.model_validate({**BASE, "points": [POINT], **changes})
    return {
        ".".join(str(part) for part in e["loc"]): e.get("ctx", {}).get("error", e["msg"])
        for e in caught.value.errors()
    }


def test_sample_toml_validates():
    """The shipped sample.toml's device is valid, so technicians can copy it."""
    (device,) = tomllib.loads(SAMPLE.read_text(encoding="utf-8"))["devices"]
    config = ModbusConfig.model_validate(device)
    assert config.intervals() == {"default": 1.0, "fast": 0.1}
    assert {p.role for p in config.points} == {"value", "counter", "alarm"}
    assert config.transport == "tcp 10.20.0.40:502"


def test_registry_resolves_config_model():
    """The registry's lazy entry points at this model."""
    assert registry.config_model("modbus") is ModbusConfig


def test_defaults():
    """Defaults match the README and sample.toml."""
    config = ModbusConfig.model_validate({**BASE, "points": [POINT]})
    assert (config.port, config.unit, config.interval, config.heartbeat) == (502, 1, 1.0, 60.0)
    assert (config.timeout, config.retries, config.max_gap, config.max_registers) == (
        1.0,
        1,
        8,
        125,
    )
    assert config.feedback_writes() == {}
    point = config.points[0]
    assert (point.table, point.type, point.order, point.role, point.group) == (
        "holding",
        "uint16",
        "ABCD",
        "value",
        "default",
    )


@pytest.mark.parametrize(
    ("changes", "where", "message"),
    [
        ({"host": None}, "", "exactly one"),
        ({"serial_port": "/dev/ttyUSB1"}, "", "exactly one"),
        ({"host": None, "serial_port": "ttyUSB1"}, "serial_port", "absolute"),
        ({"baudrate": 1000}, "baudrate", "standard"),
        ({"unit": 300}, "unit", "less than or equal"),
        ({"points": []}, "points", "at least 1"),
        (
            {"points": [POINT, {"name": "x", "address": 1, "type": "int8"}]},
            "points.1.type",
            "Input should be",
        ),
        ({"points": [POINT, POINT]}, "points.1.name", "duplicate point 'speed' (also points[0])"),
        ({"points": [{**POINT, "group": "fast"}]}, "points.0.group", "unknown poll group 'fast'"),
        ({"points": [{**POINT, "type": "bit"}]}, "points.0.bit", "required when type = 'bit'"),
        ({"points": [{**POINT, "bit": 3}]}, "points.0.bit", "only used with type = 'bit'"),
        ({"points": [{**POINT, "table": "coil"}]}, "points.0.type", "use type = 'bool'"),
        ({"points": [{**POINT, "type": "bool"}]}, "points.0.type", "use type = 'bit'"),
        (
            {"points": [{**POINT, "role": "counter", "type": "int16"}]},
            "points.0.role",
            "uint16 or uint32",
        ),
        ({"points": [{**POINT, "role": "alarm"}]}, "points.0.role", "alarm points are bits"),
        ({"points": [{**POINT, "max_delta": 10}]}, "points.0.max_delta", "role = 'counter'"),
        ({"points": [{**POINT, "rollover": False}]}, "points.0.rollover", "role = 'counter'"),
        (
            {"points": [{**POINT, "role": "counter", "max_delta": 70000}]},
            "points.0.max_delta",
            "below 65536",
        ),
        (
            {"points": [{**POINT, "role": "counter", "max_delta": 0}]},
            "points.0.max_delta",
            "greater than or equal to 1",
        ),
        (
            {"points": [{**POINT, "deadband": 1, "deadband_percent": 2}]},
            "points.0.deadband_percent",
            "not both",
        ),
        (
            {"points": [{**POINT, "alarm_above": 1, "alarm_below": 2}]},
            "points.0.alarm_below",
            "below alarm_above",
        ),
        (
            {"points": [{**POINT, "address": 65535, "type": "uint32"}]},
            "points.0.address",
            "past address 65535",
        ),
        ({"points": [{**POINT, "colour": "red"}]}, "points.0.colour", "Extra inputs"),
        ({"groups": [{"name": "default", "interval": 1}]}, "groups.0.name", "duplicate group"),
        (
            {"feedback_good": {"table": "input", "address": 1}},
            "feedback_good.table",
            "Input should be",
        ),
        ({"reconnect_min": 5, "reconnect_max": 1}, "reconnect_max", ">= reconnect_min"),
    ],
)
def test_refused_at_the_right_key(changes, where, message):
    """Each mistake is reported at the key to fix, with a message a technician can act on."""
    found = errors(**changes)
    assert where in found, found
    assert message in str(found[where]) or message in found[where].__class__.__name__, found


def test_feedback_writes():
    """Configured writes map to outcomes; outcomes left out write nothing."""
    config = ModbusConfig.model_validate(
        {
            **BASE,
            "points": [POINT],
            "feedback_good": {"address": 0},
            "feedback_bad": {"table": "holding", "address": 5, "value": 2, "pulse": 1.0},
        }
    )
    writes = config.feedback_writes()
    assert set(writes) == {Outcome.GOOD, Outcome.BAD}
    assert (writes[Outcome.GOOD].table, writes[Outcome.GOOD].value) == ("coil", 1)
    assert writes[Outcome.BAD].pulse == 1.0


def test_check_config_names_file_line_and_key(tmp_path):
    """check-config prints PATH:LINE: devices[0] (id ...).points[1].type: message."""
    config = tmp_path / "gateway.toml"
    config.write_text(
        '[gateway]\nid = "gw-01"\nsite = "dc"\nstate_dir = "/tmp/x"\n\n[mqtt]\nhost = "h"\n\n'
        '[[devices]]\nid = "conveyor-a"\ndriver = "modbus"\nhost = "10.0.0.1"\n\n'
        '[[devices.points]]\nname = "speed"\naddress = 0\n\n'
        '[[devices.points]]\nname = "jam"\ntable = "coil"\naddress = 1\ntype = "int16"\n'
    )
    result = cli("check-config", "--config", str(config))
    assert result.returncode == 2, result.stdout + result.stderr
    lines = (result.stdout + result.stderr).splitlines()
    assert any(
        line.startswith(
            f'{config}:22: devices[0] (id "conveyor-a").points[1].type: a coil holds one bit'
        )
        for line in lines
    ), lines


@pytest.fixture
def no_pymodbus(monkeypatch):
    """pymodbus as if not installed: a None in sys.modules makes its import fail."""
    for name in PYMODBUS:
        monkeypatch.setitem(sys.modules, name, None)


@pytest.mark.usefixtures("no_pymodbus")
def test_rtu_device_without_pymodbus_is_refused_at_serial_port():
    """Only RTU needs the library: without it an RTU device is an error at its serial_port,
    a TCP device still validates."""
    assert errors(**RTU) == {"serial_port": RTU_LIBRARY_MISSING}
    assert ModbusConfig.model_validate({**BASE, "points": [POINT]}).host == "10.0.0.1"


async def test_rtu_link_without_pymodbus_is_down_with_the_reason(monkeypatch):
    """A library gone (or broken) after the config was checked: the link fails as a device
    fault (the device is down, with the reason), not as a driver crash."""
    link = ModbusLink(ModbusConfig.model_validate({**BASE, **RTU, "points": [POINT]}))
    for name in PYMODBUS:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(LinkDown, match=f"cannot open rtu /dev/ttyUSB1: {RTU_LIBRARY_MISSING}"):
        await link.open()
    link.close()


def test_check_config_without_pymodbus_names_the_rtu_device(tmp_path):
    """check-config, run where pymodbus is missing, points at the RTU device's serial_port."""
    config = tmp_path / "gateway.toml"
    config.write_text(
        '[gateway]\nid = "gw-01"\nsite = "dc"\nstate_dir = "/tmp/x"\n\n[mqtt]\nhost = "h"\n\n'
        '[[devices]]\nid = "conveyor-a"\ndriver = "modbus"\nserial_port = "/dev/ttyUSB1"\n\n'
        '[[devices.points]]\nname = "speed"\naddress = 0\n'
    )
    hide = "; ".join(f"sys.modules[{name!r}] = None" for name in PYMODBUS)
    code = (
        f"import runpy, sys; {hide}; "
        f"sys.argv = ['edge-gateway', 'check-config', '--config', {str(config)!r}]; "
        "runpy.run_module('gateway', run_name='__main__')"
    )
    result = run_python(code)
    assert result.returncode == 2, result.stdout + result.stderr
    expected = f'{config}:12: devices[0] (id "conveyor-a").serial_port: {RTU_LIBRARY_MISSING}'
    assert expected in result.stderr.splitlines(), result.stderr


def test_tcp_driver_does_not_import_pymodbus():
    """Modbus TCP runs on our own channel: the driver module leaves pymodbus unimported
    (~2.5 MB of idle RSS), only an RTU link loads it."""
    code = (
        "import sys; import drivers.modbus.driver; "
        "assert 'pymodbus' not in sys.modules, 'pymodbus imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=30)
