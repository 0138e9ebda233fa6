"""Config model of an ``rfid-llrp`` device.

Kept free of sllurp so that ``check-config`` can validate a file without the LLRP library; the
driver imports it, this module never does. Checks that need the reader itself (is antenna 4
connected, is this power level in its table) happen at connect time and mark the device down
with the reason, because the reader is the only authority on them.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from drivers.reconnecting import ReconnectConfig

ZONE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DEFAULT_ZONE = "default"
MAX_ANTENNA = 64
MAX_GPIO_PORT = 64

SearchMode = Literal[
    "reader-selected",
    "single-target",
    "dual-target",
    "single-target-suppressed",
    "single-target-reset",
    "dual-target-b-to-a",
]
SEARCH_MODE_VALUES: dict[str, int] = {
    "reader-selected": 0,
    "single-target": 1,
    "dual-target": 2,
    "single-target-suppressed": 3,
    "single-target-reset": 5,
    "dual-target-b-to-a": 6,
}
"""Impinj ``ImpinjInventorySearchMode`` values (Octane LLRP guide)."""


def _antenna_list(value: list[int]) -> list[int]:
    if not value:
        raise ValueError("must list at least one antenna, e.g. [1, 2]")
    bad = [a for a in value if not 1 <= a <= MAX_ANTENNA]
    if bad:
        raise ValueError(f"antenna numbers run from 1 to {MAX_ANTENNA}, got {bad[0]}")
    if len(set(value)) != len(value):
        raise ValueError(f"lists an antenna twice: {value}")
    return value


def _zone_error(name: str, zone: Zone, message: str) -> None:
    """Fail with the location ``zones.<name>.antennas``, where the technician must look.

    A plain ValueError would point at ``zones`` only; a ValidationError raised inside a field
    validator keeps its own location, nested under the field.
    """
    error = PydanticCustomError("value_error", message, {"error": message})
    detail = InitErrorDetails(type=error, loc=(name, "antennas"), input=zone.antennas)
    raise ValidationError.from_exception_data("zones", [detail])


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Zone(_Strict):
    """A named set of antennas: a tag's arrival and departure are per (EPC, zone)."""

    antennas: list[int]
    departure_s: float | None = Field(default=None, gt=0, le=3600)

    @field_validator("antennas")
    @classmethod
    def _valid_antennas(cls, value: list[int]) -> list[int]:
        return _antenna_list(value)


class StartTrigger(_Strict):
    """When the reader inventories: always, or while a GPI (a photo-eye) says so."""

    type: Literal["immediate", "gpi"] = "immediate"
    gpi_port: int | None = Field(default=None, ge=1, le=MAX_GPIO_PORT, validate_default=True)
    gpi_state: bool = True

    @field_validator("gpi_port")
    @classmethod
    def _port_for_gpi(cls, value: int | None, info: ValidationInfo) -> int | None:
        kind = info.data.get("type")
        if kind == "gpi" and value is None:
            raise ValueError('required when type = "gpi" (the GPI the photo-eye is wired to)')
        if kind == "immediate" and value is not None:
            raise ValueError('set, but type = "immediate": set type = "gpi" or remove it')
        return value


class StopTrigger(_Strict):
    """When an inventory started by the start trigger ends."""

    type: Literal["none", "duration", "gpi"] = "none"
    gpi_port: int | None = Field(default=None, ge=1, le=MAX_GPIO_PORT)
    gpi_state: bool = False
    timeout_ms: int = Field(default=0, ge=0, le=3_600_000, validate_default=True)

    @field_validator("timeout_ms")
    @classmethod
    def _consistent(cls, value: int, info: ValidationInfo) -> int:
        kind, port = info.data.get("type"), info.data.get("gpi_port")
        if kind == "gpi" and port is None:
            raise ValueError('gpi_port is required when type = "gpi"')
        if kind != "gpi" and port is not None:
            raise ValueError(f'gpi_port is set, but type = "{kind}"')
        if kind == "duration" and value == 0:
            raise ValueError('must be > 0 when type = "duration" (the inventory length)')
        return value


class RfidLlrpConfig(ReconnectConfig):
    """An RFID reader speaking LLRP over TCP (Impinj, Zebra ...)."""

    driver: Literal["rfid-llrp"]
    host: str = Field(description="reader host name or IP address")
    port: int = Field(default=5084, ge=1, le=65535)
    antennas: list[int] | None = None
    zones: dict[str, Zone] = Field(default_factory=dict)
    departure_s: float = Field(default=3.0, gt=0, le=3600)
    arrive_reads: int = Field(default=1, ge=1, le=10_000)
    min_rssi: int | None = Field(default=None, ge=-128, le=0)
    power_dbm: float | None = Field(default=None, ge=0, le=40)
    session: Literal[0, 1, 2, 3] = 2
    tag_population: int = Field(default=32, ge=1, le=65535)
    search_mode: SearchMode | None = None
    reader_mode: int | None = Field(default=None, ge=0, le=0xFFFFFFFF)
    report_every_tags: int = Field(default=1, ge=0, le=65535)
    report_every_ms: int = Field(default=0, ge=0, le=3_600_000)
    keepalive_s: float = Field(default=5.0, ge=0.1, le=3600)
    start_trigger: StartTrigger = Field(default_factory=StartTrigger)
    stop_trigger: StopTrigger = Field(default_factory=StopTrigger)
    gpo_good: int | None = Field(default=None, ge=1, le=MAX_GPIO_PORT)
    gpo_bad: int | None = Field(default=None, ge=1, le=MAX_GPIO_PORT)
    gpo_pending: int | None = Field(default=None, ge=1, le=MAX_GPIO_PORT)
    gpo_pulse_ms: int = Field(default=300, ge=10, le=60_000)
    decode_epc: bool = True
    connect_timeout: float = Field(default=5.0, gt=0, le=300)

    @field_validator("host")
    @classmethod
    def _plain_host(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        if "://" in value or "/" in value or " " in value:
            raise ValueError(f"must be a host name or IP address only, not {value!r}")
        return value

    @field_validator("antennas")
    @classmethod
    def _valid_antennas(cls, value: list[int] | None) -> list[int] | None:
        return None if value is None else _antenna_list(value)

    @field_validator("zones")
    @classmethod
    def _zones_fit(cls, value: dict[str, Zone], info: ValidationInfo) -> dict[str, Zone]:
        owner: dict[int, str] = {}
        inventoried = info.data.get("antennas")
        for name, zone in value.items():
            if not ZONE_NAME_RE.match(name):
                raise ValueError(
                    f"zone name {name!r} must be letters, digits, _ . - (up to 64 characters)"
                )
            for antenna in zone.antennas:
                if inventoried is not None and antenna not in inventoried:
                    _zone_error(
                        name,
                        zone,
                        f"antenna {antenna} is not in antennas {inventoried}; "
                        "add it there or remove it here",
                    )
                if antenna in owner:
                    _zone_error(
                        name,
                        zone,
                        f"antenna {antenna} is already in zone {owner[antenna]!r}; "
                        "an antenna belongs to one zone",
                    )
                owner[antenna] = name
        return value

    @property
    def inventory_antennas(self) -> list[int]:
        """The antennas the reader inventories: ``antennas``, else every zone's, else [1]."""
        if self.antennas is not None:
            return list(self.antennas)
        zoned = sorted({a for zone in self.zones.values() for a in zone.antennas})
        return zoned or [1]

    def zone_of_antenna(self) -> dict[int, str]:
        """Antenna -> zone name; without zones, every antenna is in zone ``default``."""
        if not self.zones:
            return dict.fromkeys(self.inventory_antennas, DEFAULT_ZONE)
        return {a: name for name, zone in self.zones.items() for a in zone.antennas}

    def departure_of_zone(self) -> dict[str, float]:
        """Zone name -> seconds unseen before ``departed``."""
        if not self.zones:
            return {DEFAULT_ZONE: self.departure_s}
        return {n: z.departure_s or self.departure_s for n, z in self.zones.items()}

    def gpo_ports(self) -> list[int]:
        """Every GPO port that feedback pulses, for checking against the reader's count."""
        return sorted({p for p in (self.gpo_good, self.gpo_bad, self.gpo_pending) if p})
