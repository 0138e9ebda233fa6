"""The daemon's import diet (issue 16's 45 MB idle budget): what it keeps out, in a fresh
interpreter each, as ``edge-gateway run`` starts one."""

from __future__ import annotations

from tests.support import run_python

DAEMON_IMPORTS = (
    "import sys; from gateway import cli; cli._lean_daemon(); "
    "import gateway.daemon, gateway.settings, drivers.barcode_serial.driver, "
    "drivers.modbus.driver, drivers.rfid_llrp.driver; "
    "from drivers.barcode_common.gs1 import parse_gs1; "
)
"""What ``cmd_run`` does before and while it starts the three built-in drivers bench.idle
uses, as a ``python -c`` prefix."""


def run(code: str) -> None:
    """``code`` in a fresh interpreter; its assertion message on failure."""
    result = run_python(code)
    assert result.returncode == 0, result.stderr


def test_daemon_leaves_package_metadata_and_rich_unimported():
    """Neither pydantic's plugin loader nor biip's version lookup brings importlib.metadata
    (with email, zipfile and csv), and rich stays out; pydantic models still validate and biip
    still parses."""
    run(
        DAEMON_IMPORTS + "from drivers.modbus.config import ModbusConfig; "
        "ModbusConfig.model_validate({'id': 'c', 'driver': 'modbus', 'host': 'h', "
        "'points': [{'name': 'p', 'address': 0}]}); "
        "assert parse_gs1('0109506000134352')['gtin'] == '09506000134352'; "
        "loaded = {'importlib.metadata', 'email', 'csv', 'rich'} & set(sys.modules) - "
        "{m for m, v in sys.modules.items() if v is None}; "
        "assert not loaded, loaded; "
        "import biip; assert biip.__version__ == 'unknown', biip.__version__"
    )


def test_package_metadata_works_after_the_daemon_started():
    """The stand-in for importlib.metadata lives only while biip is imported: the registry's
    plugin lookup (a plugin driver named in the config) gets the real one afterwards."""
    run(
        DAEMON_IMPORTS + "from importlib.metadata import version; from drivers import registry; "
        "assert version('pydantic'), 'no version'; "
        "assert 'modbus' in registry.known_drivers()"
    )


def test_biip_keeps_its_version_where_package_metadata_is_loaded():
    """Where importlib.metadata is already in (tests, a plugin driver), nothing is replaced."""
    run(
        "import importlib.metadata, sys; from drivers.barcode_common.gs1 import parse_gs1; "
        "import biip; assert biip.__version__ == importlib.metadata.version('biip')"
    )
