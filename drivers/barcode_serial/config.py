"""Config model of a ``barcode-serial`` device.

Kept free of pyserial so that ``check-config`` can validate a file on a box where the serial
libraries are missing or broken; the driver module imports them, this one never does.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from drivers.barcode_common.config import BarcodeConfig
from drivers.base import Outcome
from drivers.serial_line import check_absolute_port, check_baudrate, check_stopbits

FramingMode = Literal["cr", "lf", "crlf", "eol", "stx-etx"]
FeedbackProfile = Literal["none", "honeywell", "custom"]

HONEYWELL_FEEDBACK: dict[Outcome, bytes] = {
    Outcome.GOOD: b"\x1b7,",
    Outcome.BAD: b"\x1b8,",
}
"""Honeywell host-ACK mode: ESC 7 , is a good read, ESC 8 , a bad one; it has no 'pending'."""


def _as_bytes(text: str) -> bytes:
    """TOML has no byte strings: each character U+0000..U+00FF stands for one byte."""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(
            "feedback bytes must use characters U+0000..U+00FF only (one byte each), "
            'e.g. "\\u001b7,"'
        ) from None


class BarcodeSerialConfig(BarcodeConfig):
    """A serial (RS-232 or USB-CDC) barcode scanner that sends one code per frame.

    The frame, AIM, GS1, repeat and reconnect keys come from ``BarcodeConfig``.
    """

    driver: Literal["barcode-serial"]
    port: str = Field(description="device path, e.g. /dev/serial/by-id/usb-Honeywell...")
    baudrate: int = 9600
    bytesize: Literal[5, 6, 7, 8] = 8
    parity: Literal["N", "E", "O", "M", "S"] = "N"
    stopbits: float = Field(default=1, description="1, 1.5 or 2")
    framing: FramingMode = "eol"
    feedback: FeedbackProfile = "none"
    feedback_good: str | None = Field(default=None, validate_default=True)
    feedback_bad: str | None = None
    feedback_pending: str | None = None

    @field_validator("port")
    @classmethod
    def _absolute_port(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return check_absolute_port(value)

    @field_validator("baudrate")
    @classmethod
    def _standard_baudrate(cls, value: int) -> int:
        return check_baudrate(value)

    @field_validator("stopbits")
    @classmethod
    def _known_stopbits(cls, value: float) -> float:
        # A float field with a check, because typing's Literal cannot hold 1.5.
        return check_stopbits(value)

    @field_validator("feedback_good", "feedback_bad", "feedback_pending")
    @classmethod
    def _byte_string(cls, value: str | None, info: ValidationInfo) -> str | None:
        # Field-level rather than model-level checks, so errors point at the offending key.
        profile = info.data.get("feedback")
        if value is None:
            if info.field_name == "feedback_good" and profile == "custom":
                raise ValueError("required when feedback = 'custom'")
            return value
        if profile == "none":
            raise ValueError("set, but feedback = 'none': set feedback = 'custom' or 'honeywell'")
        if not value:
            raise ValueError("must not be empty; leave the key out instead")
        _as_bytes(value)
        return value

    def feedback_bytes(self) -> dict[Outcome, bytes]:
        """Map each outcome to the bytes the scanner gets; an outcome left out writes nothing."""
        table = dict(HONEYWELL_FEEDBACK) if self.feedback == "honeywell" else {}
        if self.feedback == "none":
            return table
        for outcome, text in (
            (Outcome.GOOD, self.feedback_good),
            (Outcome.BAD, self.feedback_bad),
            (Outcome.PENDING, self.feedback_pending),
        ):
            if text is not None:
                table[outcome] = _as_bytes(text)
        return table
