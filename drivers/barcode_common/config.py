"""Config keys every barcode driver has: frame size, AIM ids, GS1, repeats, reconnect backoff.

One definition, so that the keys mean the same in a ``barcode-serial`` and a ``barcode-hid``
entry and a technician can move a scanner between the two by changing its transport keys only.
Imports no device library and no biip (check-config).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from drivers.base import DeviceConfig

AimMode = Literal["auto", "required", "none"]


class BarcodeConfig(DeviceConfig):
    """Base model of a barcode scanner device; transports add their own keys."""

    max_frame: int = Field(default=512, ge=8, le=65536)
    aim: AimMode = "auto"
    gs1: bool = True
    suppress_window: float = Field(default=0.0, ge=0, le=3600)
    reconnect_min: float = Field(default=0.5, gt=0, le=3600)
    reconnect_max: float = Field(default=10.0, gt=0, le=3600, validate_default=True)

    @field_validator("reconnect_max")
    @classmethod
    def _max_above_min(cls, value: float, info: ValidationInfo) -> float:
        low = info.data.get("reconnect_min")
        if low is not None and value < low:
            raise ValueError(f"must be >= reconnect_min ({low})")
        return value
