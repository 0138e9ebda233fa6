"""Config model of a ``modbus`` device (Modbus TCP or RTU conveyor sensors).

Kept free of pymodbus so that ``check-config`` can validate a file on a box where the Modbus
library is missing or broken; only an RTU link imports it (Modbus TCP runs on our own channel),
so an RTU device on a box without it is a config error here, found without importing it. Errors that
involve two keys (a point naming an unknown poll group) are still reported at the point's own
key, because technicians fix the line the message points at.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.util import find_spec
from typing import Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from drivers.base import Outcome
from drivers.reconnecting import ReconnectConfig, reconnect_bounds_error
from drivers.serial_line import RS485_BAUDRATES, check_absolute_port, check_baudrate

Table = Literal["holding", "input", "coil", "discrete"]
PointType = Literal[
    "int16", "uint16", "int32", "uint32", "float32", "int64", "uint64", "float64", "bool", "bit"
]
WordOrder = Literal["ABCD", "CDAB", "BADC", "DCBA"]
Role = Literal["value", "counter", "alarm"]

REGISTER_TABLES = ("holding", "input")
BIT_TABLES = ("coil", "discrete")
WORDS: dict[str, int] = {
    "int16": 1,
    "uint16": 1,
    "bit": 1,
    "int32": 2,
    "uint32": 2,
    "float32": 2,
    "int64": 4,
    "uint64": 4,
    "float64": 4,
    "bool": 1,
}
"""Registers (or bits, for bool in a bit table) each type occupies."""

RTU_LIBRARY_MISSING = "Modbus RTU needs pymodbus, which is not installed"
"""Said by ``check-config`` and by an RTU link that cannot open for want of the library."""

NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PollGroup(_Strict):
    """Points polled together on one interval (fast belt speed, slow temperatures)."""

    name: str = Field(pattern=NAME_PATTERN)
    interval: float = Field(gt=0.009, le=3600, description="seconds between polls")


class PointConfig(_Strict):
    """One named value on the device, as the technician's register map describes it."""

    name: str = Field(pattern=NAME_PATTERN)
    table: Table = "holding"
    address: int = Field(ge=0, le=65535, description="0-based protocol address")
    type: PointType = "uint16"
    bit: int | None = Field(default=None, ge=0, le=15)
    order: WordOrder = "ABCD"
    scale: float = 1.0
    offset: float = 0.0
    unit: str | None = Field(default=None, max_length=32)
    group: str = "default"
    role: Role = "value"
    deadband: float = Field(default=0.0, ge=0)
    deadband_percent: float | None = Field(default=None, gt=0, le=100)
    alarm_when: bool = True
    alarm_above: float | None = None
    alarm_below: float | None = None
    hysteresis: float = Field(default=0.0, ge=0)
    rollover: bool = True
    max_delta: int = Field(default=1000, ge=1, le=2**32 - 1)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        problems = [*self._shape_problems(), *self._role_problems()]
        if problems:
            raise _errors([((key,), message, getattr(self, key)) for key, message in problems])
        return self

    def _shape_problems(self) -> list[tuple[str, str]]:
        """Type, table and bit must describe something a device can hold."""
        problems: list[tuple[str, str]] = []
        if self.table in BIT_TABLES and self.type != "bool":
            problems.append(("type", f"a {self.table} holds one bit: use type = 'bool'"))
        if self.table in REGISTER_TABLES and self.type == "bool":
            problems.append(("type", "a register holds 16 bits: use type = 'bit' with bit = 0..15"))
        if self.type == "bit" and self.bit is None:
            problems.append(("bit", "required when type = 'bit' (0 = least significant)"))
        if self.type != "bit" and self.bit is not None:
            problems.append(("bit", "only used with type = 'bit'"))
        return problems

    def _role_problems(self) -> list[tuple[str, str]]:
        """Roles, deadbands and thresholds must fit the point's type."""
        problems: list[tuple[str, str]] = []
        boolean = self.type in ("bool", "bit")
        if self.role == "alarm" and not boolean:
            problems.append(("role", "alarm points are bits; use alarm_above/alarm_below"))
        if self.role == "counter" and self.type not in ("uint16", "uint32"):
            problems.append(("role", "counters must be uint16 or uint32 (they roll over)"))
        if self.role != "counter":
            problems.extend(
                (key, "only used with role = 'counter'")
                for key in ("rollover", "max_delta")
                if key in self.model_fields_set
            )
        elif self.type == "uint16" and self.max_delta > 0xFFFF:
            problems.append(("max_delta", "must be below 65536 for a uint16 counter"))
        if boolean and (self.alarm_above is not None or self.alarm_below is not None):
            problems.append(("alarm_above", "thresholds need a numeric type"))
        if self.deadband and self.deadband_percent is not None:
            problems.append(("deadband_percent", "set deadband or deadband_percent, not both"))
        above, below = self.alarm_above, self.alarm_below
        if above is not None and below is not None and below >= above:
            problems.append(("alarm_below", f"must be below alarm_above ({above})"))
        return problems

    @property
    def words(self) -> int:
        """How many registers (or bits) a read of this point needs."""
        return WORDS[self.type]


class FeedbackWrite(_Strict):
    """A coil or holding-register write that shows the worker an outcome (stack light, diverter)."""

    table: Literal["coil", "holding"] = "coil"
    address: int = Field(ge=0, le=65535)
    value: int = Field(default=1, ge=0, le=65535, description="0/1 for a coil")
    pulse: float | None = Field(default=None, gt=0, le=60, description="then write reset")
    reset: int = Field(default=0, ge=0, le=65535)


class ModbusConfig(ReconnectConfig):
    """A Modbus TCP or RTU device read by named points in poll groups."""

    driver: Literal["modbus"]
    host: str | None = None
    port: int = Field(default=502, ge=1, le=65535)
    serial_port: str | None = None
    baudrate: int = 19200
    bytesize: Literal[7, 8] = 8
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    unit: int = Field(default=1, ge=0, le=247, description="Modbus device id (slave id)")
    interval: float = Field(default=1.0, gt=0.009, le=3600, description="the default group")
    groups: tuple[PollGroup, ...] = ()
    timeout: float = Field(default=1.0, gt=0, le=60)
    retries: int = Field(default=1, ge=0, le=10)
    busy_retries: int = Field(default=2, ge=0, le=10)
    busy_delay: float = Field(default=0.05, ge=0, le=10)
    max_gap: int = Field(default=8, ge=0, le=100, description="registers read and thrown away")
    max_registers: int = Field(default=125, ge=1, le=125)
    max_bits: int = Field(default=2000, ge=1, le=2000)
    heartbeat: float = Field(default=60.0, gt=0, le=86400)
    feedback_good: FeedbackWrite | None = None
    feedback_bad: FeedbackWrite | None = None
    feedback_pending: FeedbackWrite | None = None
    points: tuple[PointConfig, ...] = Field(min_length=1)

    @field_validator("serial_port")
    @classmethod
    def _absolute_port(cls, value: str | None) -> str | None:
        return None if value is None else check_absolute_port(value)

    @field_validator("baudrate")
    @classmethod
    def _standard_baudrate(cls, value: int) -> int:
        return check_baudrate(value, RS485_BAUDRATES, "RS-485")

    @field_validator("reconnect_max")
    @classmethod
    def _max_above_min(cls, value: float, info: ValidationInfo) -> float:  # noqa: ARG003
        # Replaces ReconnectConfig's check: _one_transport does it, after the transport check.
        return value

    @field_validator("groups")
    @classmethod
    def _unique_groups(cls, value: tuple[PollGroup, ...]) -> tuple[PollGroup, ...]:
        seen = {"default"}
        problems = []
        for index, group in enumerate(value):
            if group.name in seen:
                problems.append(((index, "name"), f"duplicate group {group.name!r}", group.name))
            seen.add(group.name)
        if problems:
            raise _errors(problems)
        return value

    @field_validator("points")
    @classmethod
    def _points_consistent(
        cls,
        value: tuple[PointConfig, ...],
        info: Any,  # noqa: ANN401 - pydantic's ValidationInfo
    ) -> tuple[PointConfig, ...]:
        groups = {"default", *(g.name for g in info.data.get("groups", ()))}
        names: dict[str, int] = {}
        problems: list[tuple[tuple[str | int, ...], str, Any]] = []
        for index, point in enumerate(value):
            if point.name in names:
                also = f"(also points[{names[point.name]}])"
                problems.append(
                    ((index, "name"), f"duplicate point {point.name!r} {also}", point.name)
                )
            names.setdefault(point.name, index)
            if point.group not in groups:
                known = ", ".join(sorted(groups))
                message = f"unknown poll group {point.group!r} (defined: {known})"
                problems.append(((index, "group"), message, point.group))
            if point.address + point.words > 65536:
                problems.append(
                    ((index, "address"), "the value runs past address 65535", point.address)
                )
        if problems:
            raise _errors(problems)
        return value

    @model_validator(mode="after")
    def _one_transport(self) -> Self:
        if (self.host is None) == (self.serial_port is None):
            raise ValueError("set host (Modbus TCP) or serial_port (Modbus RTU), exactly one")
        if self.serial_port is not None and find_spec("pymodbus") is None:
            raise _errors([(("serial_port",), RTU_LIBRARY_MISSING, self.serial_port)])
        message = reconnect_bounds_error(self.reconnect_min, self.reconnect_max)
        if message is not None:
            raise _errors([(("reconnect_max",), message, self.reconnect_max)])
        return self

    @property
    def transport(self) -> str:
        """``tcp host:port`` or ``rtu /dev/...``: for logs and status details."""
        return f"tcp {self.host}:{self.port}" if self.host else f"rtu {self.serial_port}"

    def intervals(self) -> dict[str, float]:
        """Every poll group's interval, the implicit ``default`` group included."""
        return {"default": self.interval, **{g.name: g.interval for g in self.groups}}

    def feedback_writes(self) -> dict[Outcome, FeedbackWrite]:
        """The configured write per outcome; an outcome left out writes nothing."""
        table = {
            Outcome.GOOD: self.feedback_good,
            Outcome.BAD: self.feedback_bad,
            Outcome.PENDING: self.feedback_pending,
        }
        return {outcome: write for outcome, write in table.items() if write is not None}


def _errors(problems: Sequence[tuple[tuple[str | int, ...], str, Any]]) -> ValidationError:
    """Errors located at the offending key, not at the model that noticed them."""
    details = [
        InitErrorDetails(
            type=PydanticCustomError("value_error", "Value error, {error}", {"error": message}),
            loc=loc,
            input=value,
        )
        for loc, message, value in problems
    ]
    return ValidationError.from_exception_data("ModbusConfig", details)
