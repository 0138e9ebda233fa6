"""Config keys every barcode driver has: frame size, AIM ids, GS1, repeats, reconnect backoff.

One definition, so that the keys mean the same in a ``barcode-serial`` and a ``barcode-hid``
entry and a technician can move a scanner between the two by changing its transport keys only.
Imports no device library and no biip (check-config).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from drivers.reconnecting import ReconnectConfig, reconnect_max_field

AimMode = Literal["auto", "required", "none"]


class BarcodeConfig(ReconnectConfig):
    """Base model of a barcode scanner device; transports add their own keys.

    ``reconnect_min`` and ``reconnect_max`` come from ``ReconnectConfig``; scanners retry sooner.
    """

    max_frame: int = Field(default=512, ge=8, le=65536)
    aim: AimMode = "auto"
    gs1: bool = True
    suppress_window: float = Field(default=0.0, ge=0, le=3600)
    reconnect_max: float = reconnect_max_field(10.0)
