"""The barcode-hid config model: the sample validates, the device is named exactly one way."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError

from drivers import registry
from drivers.barcode_hid.config import BarcodeHidConfig

SAMPLE = Path(__file__).resolve().parents[4] / "drivers" / "barcode_hid" / "sample.toml"
BASE = {"id": "hid-1", "driver": "barcode-hid", "path": "/dev/input/by-id/usb-x-event-kbd"}


def test_sample_toml_validates():
    """The shipped sample.toml's device is valid, and its commented defaults are the defaults."""
    text = SAMPLE.read_text(encoding="utf-8")
    config = BarcodeHidConfig.model_validate(tomllib.loads(text)["devices"][0])
    assert config.path is not None
    assert config.path.startswith("/dev/input/by-id/")
    defaults = "\n".join(
        line[2:] for line in text.splitlines() if line.startswith("# ") and " = " in line
    )
    by_ids = {k: v for k, v in tomllib.loads(defaults).items() if k.endswith("_id")}
    assert by_ids == {"vendor_id": 0x0C2E, "product_id": 0x0DB1}
    for key, value in tomllib.loads(defaults).items():
        if key not in by_ids:
            assert getattr(config, key) == value, key


def test_defaults():
    """Defaults match the README and sample.toml."""
    config = BarcodeHidConfig.model_validate(BASE)
    assert (config.layout, config.terminator, config.grab) == ("us", "enter", True)
    assert (config.max_frame, config.aim, config.gs1, config.suppress_window) == (
        512, "auto", True, 0.0,
    )  # fmt: skip
    assert (config.reconnect_min, config.reconnect_max) == (0.5, 10.0)
    assert config.frame_mode() == "cr"
    assert config.describe() == BASE["path"]


def test_by_vendor_and_product():
    """vendor_id + product_id instead of path; hex in TOML is fine."""
    entry = tomllib.loads(
        'id = "h"\ndriver = "barcode-hid"\nvendor_id = 0x0c2e\nproduct_id = 0x0db1'
    )
    config = BarcodeHidConfig.model_validate(entry)
    assert (config.path, config.vendor_id, config.product_id) == (None, 0x0C2E, 0x0DB1)
    assert config.describe() == "USB 0c2e:0db1"


@pytest.mark.parametrize(
    ("terminator", "mode"), [("enter", "cr"), ("tab", "tab"), ("enter-or-tab", "cr-tab")]
)
def test_terminator_frame_modes(terminator, mode):
    """Each terminator key maps to the shared framer's mode."""
    config = BarcodeHidConfig.model_validate({**BASE, "terminator": terminator})
    assert config.frame_mode() == mode


@pytest.mark.parametrize(
    ("entry", "loc", "message"),
    [
        ({"id": "h", "driver": "barcode-hid"}, "path", "required, unless vendor_id"),
        ({**BASE, "vendor_id": 1, "product_id": 2}, "path", "not both"),
        ({**BASE, "path": "event3"}, "path", "absolute"),
        ({"id": "h", "driver": "barcode-hid", "vendor_id": 1}, "product_id", "required with"),
        ({"id": "h", "driver": "barcode-hid", "product_id": 1}, "product_id", "needs vendor_id"),
        (
            {"id": "h", "driver": "barcode-hid", "vendor_id": 0x10000, "product_id": 1},
            "vendor_id",
            "less than",
        ),
        ({**BASE, "layout": "fr"}, "layout", "'us' or 'de'"),
        ({**BASE, "terminator": "cr"}, "terminator", "enter"),
        ({**BASE, "reconnect_min": 20}, "reconnect_max", ">= reconnect_min"),
        ({**BASE, "port": "/dev/ttyUSB0"}, "port", "Extra inputs"),
    ],
)
def test_errors_name_one_key(entry, loc, message):
    """Each mistake is one error at the key to fix, so check-config can give its line."""
    with pytest.raises(ValidationError) as info:
        BarcodeHidConfig.model_validate(entry)
    errors = info.value.errors()
    assert [error["loc"] for error in errors] == [(loc,)]
    assert message in errors[0]["msg"]


def test_registry_line_resolves():
    """The registry entry to add points at importable targets (config and driver class)."""
    config = registry._load("drivers.barcode_hid.config:BarcodeHidConfig")
    driver = registry._load("drivers.barcode_hid.driver:BarcodeHidDriver")
    assert config is BarcodeHidConfig
    assert driver.config_model is BarcodeHidConfig


def test_config_module_does_not_import_evdev():
    """check-config imports the model: it must not drag in evdev, biip or the driver."""
    code = (
        "import sys, drivers.barcode_hid.config as c; "
        "assert not {'evdev', 'biip', 'drivers.barcode_hid.driver'} & set(sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
