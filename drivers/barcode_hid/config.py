"""Config model of a ``barcode-hid`` device (a USB keyboard-wedge scanner).

Kept free of evdev so that ``check-config`` can validate a file on a box without it (or
without input devices at all); the driver imports it, this module never does.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from drivers.barcode_common.config import BarcodeConfig
from drivers.barcode_common.framing import FrameMode

Terminator = Literal["enter", "tab", "enter-or-tab"]

FRAME_MODES: dict[Terminator, FrameMode] = {"enter": "cr", "tab": "tab", "enter-or-tab": "cr-tab"}
"""The key decoder types Enter as CR and Tab as TAB; the shared framer cuts on those."""


class BarcodeHidConfig(BarcodeConfig):
    """A scanner that types its codes as a USB keyboard, read through evdev.

    The frame, AIM, GS1, repeat and reconnect keys come from ``BarcodeConfig``. Either
    ``path`` or ``vendor_id`` + ``product_id`` names the device.
    """

    driver: Literal["barcode-hid"]
    vendor_id: int | None = Field(default=None, ge=0, le=0xFFFF, description="USB VID, e.g. 0x0c2e")
    product_id: int | None = Field(default=None, ge=0, le=0xFFFF, validate_default=True)
    path: str | None = Field(
        default=None,
        validate_default=True,
        description="event device, e.g. /dev/input/by-id/usb-Honeywell...-event-kbd",
    )
    layout: Literal["us", "de"] = "us"
    terminator: Terminator = "enter"
    grab: bool = True

    @field_validator("product_id")
    @classmethod
    def _ids_together(cls, value: int | None, info: ValidationInfo) -> int | None:
        # Field-level rather than model-level checks, so errors point at the offending key.
        vendor = info.data.get("vendor_id")
        if value is None and vendor is not None:
            raise ValueError("required with vendor_id")
        if value is not None and vendor is None and "vendor_id" not in _failed(info):
            raise ValueError("needs vendor_id too")
        return value

    @field_validator("path")
    @classmethod
    def _path_or_ids(cls, value: str | None, info: ValidationInfo) -> str | None:
        by_id = info.data.get("vendor_id") is not None or info.data.get("product_id") is not None
        if value is None:
            if not by_id and not _failed(info) & {"vendor_id", "product_id"}:
                raise ValueError("required, unless vendor_id and product_id are set")
            return value
        if by_id:
            raise ValueError("set either path or vendor_id + product_id, not both")
        if not PurePosixPath(value).is_absolute():
            raise ValueError(
                f"must be an absolute path such as /dev/input/by-id/..., not {value!r}"
            )
        return value

    def frame_mode(self) -> FrameMode:
        """The framer mode that ends a code at the configured terminator key."""
        return FRAME_MODES[self.terminator]

    def describe(self) -> str:
        """How the device is named in status details and logs."""
        if self.path is not None:
            return self.path
        return f"USB {self.vendor_id or 0:04x}:{self.product_id or 0:04x}"


def _failed(info: ValidationInfo) -> set[str]:
    """Earlier fields that failed their own checks: absent from ``info.data``, not unset."""
    return {"vendor_id", "product_id"} - set(info.data)
