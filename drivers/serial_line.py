"""Serial line settings shared by the serial drivers (``barcode-serial``, ``modbus`` RTU).

Plain constants and checks that the drivers' config validators call, each passing its own
wording where the drivers word a message differently. Imports no serial library (check-config).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePosixPath

STANDARD_BAUDRATES = (
    1200,
    1800,
    2400,
    4800,
    9600,
    19200,
    38400,
    57600,
    115200,
    230400,
    460800,
    500000,
    576000,
    921600,
)
"""Rates every common UART and USB-serial adapter can do."""

RS485_BAUDRATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
"""Rates Modbus RTU devices on an RS-485 bus offer."""

STOPBITS = (1, 1.5, 2)


def check_absolute_port(value: str) -> str:
    """``value`` unless it is not an absolute device path."""
    if not PurePosixPath(value).is_absolute():
        raise ValueError(f"must be an absolute device path such as /dev/ttyUSB0, not {value!r}")
    return value


def check_baudrate(value: int, rates: Sequence[int] = STANDARD_BAUDRATES, kind: str = "") -> int:
    """``value`` unless it is not one of ``rates``; ``kind`` qualifies "standard rate"."""
    if value not in rates:
        listed = ", ".join(str(rate) for rate in rates)
        qualified = f"standard {kind} rate" if kind else "standard rate"
        raise ValueError(f"{value} is not a {qualified}; use one of {listed}")
    return value


def check_stopbits(value: float) -> float:
    """``value`` unless it is not 1, 1.5 or 2 (a float: typing's Literal cannot hold 1.5)."""
    if value not in STOPBITS:
        raise ValueError(f"must be 1, 1.5 or 2, not {value}")
    return value
