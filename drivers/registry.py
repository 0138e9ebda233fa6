"""Maps ``driver = "..."`` names to driver classes, importing a driver only when a device uses it.

Built-in drivers keep their config model in a module of its own so that ``check-config`` can
validate a file without importing device libraries. Third parties register drivers under the
``edge_gateway.drivers`` entry-point group, as ``name = "package.module:DriverClass"``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from drivers.base import DeviceConfig, Driver

ENTRY_POINT_GROUP = "edge_gateway.drivers"

_BUILTIN: dict[str, tuple[str, str]] = {
    "barcode-serial": (
        "drivers.barcode_serial.config:BarcodeSerialConfig",
        "drivers.barcode_serial.driver:BarcodeSerialDriver",
    ),
    "barcode-hid": (
        "drivers.barcode_hid.config:BarcodeHidConfig",
        "drivers.barcode_hid.driver:BarcodeHidDriver",
    ),
    "modbus": ("drivers.modbus.config:ModbusConfig", "drivers.modbus.driver:ModbusDriver"),
    "rfid-llrp": (
        "drivers.rfid_llrp.config:RfidLlrpConfig",
        "drivers.rfid_llrp.driver:RfidLlrpDriver",
    ),
}


class UnknownDriverError(LookupError):
    """No built-in driver or entry point has this name."""


def _load(target: str) -> Any:  # noqa: ANN401 - returns whatever the entry names
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def _plugins() -> dict[str, str]:
    # Imported here: importlib.metadata (with email, zipfile, csv) is ~1 MB the daemon does not
    # need when every device uses a built-in driver.
    from importlib.metadata import entry_points  # noqa: PLC0415

    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def is_known(name: str) -> bool:
    """True if a config may use driver ``name`` (looks at plugins only if it is not built in)."""
    return name in _BUILTIN or name in _plugins()


def known_drivers() -> list[str]:
    """Every driver name a config may use, sorted."""
    return sorted({*_BUILTIN, *_plugins()})


def config_model(name: str) -> type[DeviceConfig]:
    """The pydantic model validating a device of driver ``name``."""
    if name in _BUILTIN:
        return cast("type[DeviceConfig]", _load(_BUILTIN[name][0]))
    return driver_class(name).config_model


def driver_class(name: str) -> type[Driver[Any]]:
    """The driver class for ``name``; imports its device library."""
    if name in _BUILTIN:
        return cast("type[Driver[Any]]", _load(_BUILTIN[name][1]))
    plugins = _plugins()
    if name not in plugins:
        raise UnknownDriverError(name)
    return cast("type[Driver[Any]]", _load(plugins[name]))
