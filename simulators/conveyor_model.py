"""The physics of a simulated conveyor line and the register images it shows over Modbus.

Register map (0-based protocol addresses), the same one ``drivers/modbus/sample.toml`` reads:

| table | address | point | type | scaling |
| --- | --- | --- | --- | --- |
| input | 0 | belt speed | uint16 | mm/s (x 0.001 = m/s) |
| input | 1 | motor current | int16 | 0.01 A |
| input | 2 | motor temperature | int16 | 0.1 degC |
| input | 3 | vibration | uint16 | 0.01 mm/s |
| input | 4-5 | belt speed | float32 ABCD | m/s |
| input | 6-7 | carton count | uint32 CDAB | cartons |
| input | 8 | carton count | uint16 | cartons (wraps at 65536) |
| input | 9 | status word | bits | 0 running, 1 jam, 2 e-stop, 3 motor fault |
| input | 10-127 | spare | uint16 | address x 10, constant (or churning: ``churn``) |
| discrete | 0-3 | running, jam, e-stop, motor fault | bool | |
| coil | 0-2 | stack light green, amber, red | bool | written by the gateway |
| holding | 0 | belt speed setpoint | uint16 | mm/s |
| holding | 100-255 | scratch | any | for tests writing known register images |
"""

from __future__ import annotations

import math
import random
import struct
from dataclasses import dataclass, field

SIZES = {"coil": 64, "discrete": 64, "holding": 256, "input": 128}
FAULTS = ("jam", "estop", "motor_fault")
SPARE_FIRST = 10
CHURN_PERIOD = 0.1


def _words(fmt: str, value: float, *, swap_words: bool = False) -> list[int]:
    packed = struct.pack(">" + fmt, value)
    words = [int.from_bytes(packed[i : i + 2], "big") for i in range(0, len(packed), 2)]
    return words[::-1] if swap_words else words


@dataclass
class ConveyorModel:
    """A belt with a drive motor and a photo-eye; ``advance`` moves it on in time.

    ``noise`` scales the random parts (0 gives a perfectly flat line once the belt is at speed);
    ``frozen`` stops time altogether, so tests can set registers and know they stay put;
    ``churn`` is the fraction of the spare input registers (10-127) given a new value every
    100 ms, each within 10 % of address x 10 (a benchmark's "10 % of the registers change").
    """

    seed: int = 0
    noise: float = 1.0
    frozen: bool = False
    churn: float = 0.0
    setpoint: float = 1500.0
    speed: float = 0.0
    temperature: float = 30.0
    cartons: int = 0
    faults: dict[str, bool] = field(default_factory=lambda: dict.fromkeys(FAULTS, False))
    overrides: dict[tuple[str, int], int] = field(default_factory=dict)
    tables: dict[str, list[int]] = field(
        default_factory=lambda: {name: [0] * size for name, size in SIZES.items()}
    )

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._carton_fraction = 0.0
        self._current = 0.0
        self._vibration = 0.0
        self._churn_clock = 0.0
        self.tables["holding"][0] = int(self.setpoint)
        for address in range(SPARE_FIRST, SIZES["input"]):
            self.tables["input"][address] = address * 10
        self._render()

    @property
    def running(self) -> bool:
        """The drive runs unless a fault stopped it or the setpoint is zero."""
        return not any(self.faults.values()) and self.setpoint > 0

    def set_fault(self, name: str, active: bool) -> None:
        """Raise or clear ``jam``, ``estop`` or ``motor_fault``; it shows on the next read."""
        if name not in self.faults:
            raise ValueError(f"unknown fault {name!r} (known: {', '.join(FAULTS)})")
        self.faults[name] = active
        self._render()

    def set_registers(self, table: str, address: int, values: list[int]) -> None:
        """Pin registers (or bits) to fixed values, over whatever the physics says."""
        for offset, value in enumerate(values):
            self.overrides[(table, address + offset)] = value
        self._render()

    def advance(self, dt: float) -> None:
        """Move the line on by ``dt`` seconds: speed ramps, load follows, cartons pass."""
        if self.frozen or dt <= 0:
            return
        dt = min(dt, 5.0)
        target = self.setpoint if self.running else 0.0
        step = 1000.0 * dt  # mm/s per second of acceleration
        self.speed += max(-step, min(step, target - self.speed))
        load = self.speed / 1500.0
        self._current = 2.0 + 3.0 * load + self._rng.gauss(0, 0.05) * self.noise
        if self.faults["jam"]:
            self._current = 9.5  # stalled motor against a jammed carton
        ambient = 35.0 + 20.0 * load
        self.temperature += (ambient - self.temperature) * (1 - math.exp(-dt / 60.0))
        self._vibration = 1.0 + load + abs(self._rng.gauss(0, 0.1)) * self.noise
        self._carton_fraction += 2.0 * load * dt
        whole = int(self._carton_fraction)
        self._carton_fraction -= whole
        self.cartons = (self.cartons + whole) % 2**32
        if self.churn:
            self._churn_spare(dt)
        self._render()

    def _churn_spare(self, dt: float) -> None:
        """Give ``churn`` of the spare registers a new value per 100 ms that passed."""
        self._churn_clock += dt
        ticks = int(self._churn_clock / CHURN_PERIOD)
        self._churn_clock -= ticks * CHURN_PERIOD
        spare = range(SPARE_FIRST, SIZES["input"])
        regs = self.tables["input"]
        for _ in range(ticks):
            for address in self._rng.sample(spare, round(self.churn * len(spare))):
                base = address * 10
                value = base + self._rng.randint(-base // 10, base // 10)
                regs[address] = value if value != regs[address] else value + 1

    def write(self, table: str, address: int, values: list[int]) -> None:
        """A Modbus write from the gateway: coils and holding registers."""
        image = self.tables[table]
        image[address : address + len(values)] = values
        if table == "holding" and address == 0:
            self.setpoint = float(values[0])

    def _render(self) -> None:
        regs, bits = self.tables["input"], self.tables["discrete"]
        faults = [self.faults[name] for name in FAULTS]
        status = [self.running, *faults]
        regs[0] = round(self.speed) & 0xFFFF
        regs[1] = _words("h", round(self._current * 100))[0]
        regs[2] = _words("h", round(self.temperature * 10))[0]
        regs[3] = round(self._vibration * 100) & 0xFFFF
        regs[4:6] = _words("f", self.speed / 1000.0)
        regs[6:8] = _words("I", self.cartons, swap_words=True)
        regs[8] = self.cartons & 0xFFFF
        regs[9] = sum(int(flag) << bit for bit, flag in enumerate(status))
        bits[0:4] = [int(flag) for flag in status]
        for (table, address), value in self.overrides.items():
            self.tables[table][address] = value
