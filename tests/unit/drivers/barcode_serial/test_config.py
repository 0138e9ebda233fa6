"""The barcode-serial config model: the sample validates, bad values are refused."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError

from drivers import registry
from drivers.barcode_serial.config import BarcodeSerialConfig
from drivers.base import Outcome

SAMPLE = Path(__file__).resolve().parents[4] / "drivers" / "barcode_serial" / "sample.toml"
BASE = {"id": "scanner-1", "driver": "barcode-serial", "port": "/dev/ttyUSB0"}


def test_sample_toml_validates():
    """The shipped sample.toml's device is valid, so technicians can copy it."""
    devices = tomllib.loads(SAMPLE.read_text(encoding="utf-8"))["devices"]
    assert len(devices) == 1
    config = BarcodeSerialConfig.model_validate(devices[0])
    assert config.feedback == "honeywell"
    assert config.port.startswith("/dev/")


def test_registry_resolves_config_model():
    """The registry's lazy entry points at this model."""
    assert registry.config_model("barcode-serial") is BarcodeSerialConfig


def test_defaults():
    """Defaults match the README and sample.toml."""
    config = BarcodeSerialConfig.model_validate(BASE)
    assert (config.baudrate, config.bytesize, config.parity, config.stopbits) == (9600, 8, "N", 1)
    assert (config.framing, config.max_frame, config.aim, config.gs1) == ("eol", 512, "auto", True)
    assert (config.suppress_window, config.feedback) == (0.0, "none")
    assert (config.reconnect_min, config.reconnect_max) == (0.5, 10.0)
    assert config.feedback_bytes() == {}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"port": ""}, "must not be empty"),
        ({"port": "ttyUSB0"}, "absolute"),
        ({"baudrate": 9601}, "standard rate"),
        ({"bytesize": 9}, "bytesize"),
        ({"parity": "X"}, "parity"),
        ({"stopbits": 3}, "1, 1.5 or 2"),
        ({"framing": "etx"}, "framing"),
        ({"max_frame": 0}, "max_frame"),
        ({"aim": "yes"}, "aim"),
        ({"suppress_window": -1}, "suppress_window"),
        ({"feedback_good": "\u001b7,"}, "feedback = 'none'"),
        ({"feedback": "custom"}, "required when feedback = 'custom'"),
        ({"feedback": "custom", "feedback_good": "\u2713"}, "U+0000..U+00FF"),
        ({"feedback": "custom", "feedback_good": ""}, "must not be empty"),
        ({"reconnect_min": 5, "reconnect_max": 1}, "reconnect_max"),
        ({"reconnect_min": 0}, "reconnect_min"),
        ({"driver": "rfid-llrp"}, "driver"),
        ({"baud": 9600}, "baud"),
        ({"id": "dock/3"}, "id"),
    ],
)
def test_rejects(extra, message):
    """Each bad value is refused with a message naming the problem."""
    with pytest.raises(ValidationError) as info:
        BarcodeSerialConfig.model_validate({**BASE, **extra})
    assert message in str(info.value)


def test_stopbits_one_and_a_half():
    """1.5 stop bits is allowed (it is why stopbits is a float)."""
    assert BarcodeSerialConfig.model_validate({**BASE, "stopbits": 1.5}).stopbits == 1.5


def test_feedback_bytes():
    """Honeywell gives ESC 7 , / ESC 8 , and pending only when set; custom uses what is given."""
    honeywell = BarcodeSerialConfig.model_validate({**BASE, "feedback": "honeywell"})
    assert honeywell.feedback_bytes() == {Outcome.GOOD: b"\x1b7,", Outcome.BAD: b"\x1b8,"}
    with_pending = BarcodeSerialConfig.model_validate(
        {**BASE, "feedback": "honeywell", "feedback_pending": "\u001b8,\u001b8,"}
    )
    assert with_pending.feedback_bytes()[Outcome.PENDING] == b"\x1b8,\x1b8,"
    custom = BarcodeSerialConfig.model_validate(
        {**BASE, "feedback": "custom", "feedback_good": "\x07"}
    )
    assert custom.feedback_bytes() == {Outcome.GOOD: b"\x07"}


def test_config_module_does_not_import_pyserial():
    """check-config imports the model: it must not drag in pyserial."""
    code = (
        "import sys, drivers.barcode_serial.config as c; "
        "assert not {'serial', 'serial_asyncio_fast', 'biip'} & set(sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ({"feedback_pending": "x"}, "feedback_pending"),
        ({"feedback": "custom"}, "feedback_good"),
        ({"reconnect_min": 20}, "reconnect_max"),
    ],
)
def test_cross_key_errors_name_the_key(extra, key):
    """Errors that depend on two keys point at one of them, so check-config can give its line."""
    with pytest.raises(ValidationError) as info:
        BarcodeSerialConfig.model_validate({**BASE, **extra})
    assert [error["loc"] for error in info.value.errors()] == [(key,)]
