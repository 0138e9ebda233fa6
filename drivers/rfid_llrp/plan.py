"""Turns the device config and the reader's capabilities into what we ask the reader to do.

Power levels, antenna counts, RF modes and GPIO counts differ per reader model and region; only
the capabilities response knows them. Checking here, before anything is installed, turns "the
reader rejected ADD_ROSPEC with M_ParameterError" into "power_dbm 35.0 is above this reader's
maximum 32.5 dBm", which a technician can act on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from drivers.rfid_llrp.config import SEARCH_MODE_VALUES, RfidLlrpConfig

ROSPEC_ID = 1
"""One ROSpec per reader, always the same id: re-installing after a reconnect replaces it."""


class ReaderMismatchError(ValueError):
    """The config asks for something this reader cannot do; retrying will not help."""


@dataclass(frozen=True, slots=True)
class ReaderPlan:
    """Everything the ROSpec and reader config need, resolved against the capabilities."""

    antennas: tuple[int, ...]
    power_index: int
    power_dbm: float
    mode_identifier: int | None
    search_mode: int | None
    session: int
    tag_population: int
    report_every_tags: int
    report_every_ms: int
    start_gpi: tuple[int, bool] | None
    stop_kind: str
    stop_gpi: tuple[int, bool] | None
    stop_timeout_ms: int
    keepalive_ms: int
    gpi_ports: tuple[int, ...]
    max_antennas: int
    num_gpos: int


def _power_table(caps: dict[str, Any]) -> list[tuple[int, float]]:
    band = caps.get("RegulatoryCapabilities", {}).get("UHFBandCapabilities", {})
    entries = band.get("TransmitPowerLevelTableEntry", [])
    if isinstance(entries, dict):
        entries = [entries]
    return sorted((int(e["Index"]), int(e["TransmitPowerValue"]) / 100.0) for e in entries)


def _modes(caps: dict[str, Any]) -> list[int]:
    band = caps.get("RegulatoryCapabilities", {}).get("UHFBandCapabilities", {})
    table = band.get("UHFC1G2RFModeTable", {}).get("UHFC1G2RFModeTableEntry", [])
    if isinstance(table, dict):
        table = [table]
    return sorted(int(m["ModeIdentifier"]) for m in table)


def _choose_power(config: RfidLlrpConfig, table: list[tuple[int, float]]) -> tuple[int, float]:
    """The table entry closest to ``power_dbm`` without exceeding it; the maximum if unset."""
    if not table:
        raise ReaderMismatchError("reader reported no transmit power table")
    if config.power_dbm is None:
        return max(table, key=lambda entry: entry[1])
    low, high = table[0][1], table[-1][1]
    if not low <= config.power_dbm <= high:
        raise ReaderMismatchError(
            f"power_dbm {config.power_dbm} is outside this reader's range {low}..{high} dBm"
        )
    return max((e for e in table if e[1] <= config.power_dbm), key=lambda entry: entry[1])


def plan_from_capabilities(config: RfidLlrpConfig, caps: dict[str, Any]) -> ReaderPlan:
    """Resolve ``config`` against a decoded GET_READER_CAPABILITIES_RESPONSE."""
    general = caps.get("GeneralDeviceCapabilities", {})
    max_ant = int(general.get("MaxNumberOfAntennaSupported", 0))
    gpio = general.get("GPIOCapabilities", {})
    num_gpis, num_gpos = int(gpio.get("NumGPIs", 0)), int(gpio.get("NumGPOs", 0))
    antennas = tuple(config.inventory_antennas)
    if max_ant and max(antennas) > max_ant:
        raise ReaderMismatchError(
            f"antennas {list(antennas)}: this reader has antennas 1..{max_ant} only"
        )
    for port in config.gpo_ports():
        if port > num_gpos:
            raise ReaderMismatchError(f"GPO {port}: this reader has {num_gpos} GPO ports")
    start, stop = config.start_trigger, config.stop_trigger
    gpis = sorted({p for p in (start.gpi_port, stop.gpi_port) if p is not None})
    for port in gpis:
        if port > num_gpis:
            raise ReaderMismatchError(f"GPI {port}: this reader has {num_gpis} GPI ports")
    modes = _modes(caps)
    if config.reader_mode is not None and modes and config.reader_mode not in modes:
        raise ReaderMismatchError(
            f"reader_mode {config.reader_mode} is not offered; this reader has modes {modes}"
        )
    index, dbm = _choose_power(config, _power_table(caps))
    return ReaderPlan(
        antennas=antennas,
        power_index=index,
        power_dbm=dbm,
        mode_identifier=config.reader_mode,
        search_mode=None if config.search_mode is None else SEARCH_MODE_VALUES[config.search_mode],
        session=config.session,
        tag_population=config.tag_population,
        report_every_tags=config.report_every_tags,
        report_every_ms=config.report_every_ms,
        start_gpi=None if start.gpi_port is None else (start.gpi_port, start.gpi_state),
        stop_kind=stop.type,
        stop_gpi=None if stop.gpi_port is None else (stop.gpi_port, stop.gpi_state),
        stop_timeout_ms=stop.timeout_ms,
        keepalive_ms=max(100, round(config.keepalive_s * 1000)),
        gpi_ports=tuple(gpis),
        max_antennas=max_ant,
        num_gpos=num_gpos,
    )
