"""The demo's live view: what a visitor should see, refreshed a few times a second."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from rich.console import Group
from rich.table import Table
from rich.text import Text

from buffer.stats import BufferStats
from demo.ledger import DemoCentral, LedgerView
from gateway.daemon import Gateway
from simulators.scanner import ScannerSimulator

GOOD, BAD, PENDING = b"\x1b7,", b"\x1b8,", b"P"
NUMERIC = frozenset({"stored", "sent", "ledger", "gaps", "feedback"})


class BrokerState(Protocol):
    """The part of the demo broker the view reads."""

    up: bool


@dataclass
class DemoState:
    """Everything the view reads; the demo's tasks update ``typed``."""

    gateway: Gateway
    central: DemoCentral
    broker: BrokerState
    scanners: list[ScannerSimulator]
    started: float
    typed: dict[str, int] = field(default_factory=dict)


def _summary(event: dict[str, Any]) -> str:
    data = event.get("data", {})
    kind = event.get("type", "").removeprefix("warehouse.").removesuffix(".v1")
    if "code" in data:
        detail = data.get("gtin") or data.get("sscc") or data["code"]
    elif "epc" in data:
        detail = f"{data['epc']} in {data.get('zone')}"
    elif "alarm" in data:
        detail = f"{data['alarm']} {data.get('state')}"
    else:
        points = data.get("points", {})
        detail = ", ".join(f"{k}={v.get('value')}" for k, v in list(points.items())[:3])
    flag = " (historical)" if event.get("historical") else ""
    return f"{kind:<22} #{event.get('seq')} {detail}{flag}"


def good_feedback_p99_ms(gw: Gateway) -> float:
    """p99 from capture to good feedback: timed-out (pending) and bad beeps are not in it.

    ``Confirmations.latencies`` records good feedback only, so an outage's 2 s timeouts do not
    make the figure a measure of ``confirm_timeout``.
    """
    latencies = sorted(gw.confirmations.latencies[-1000:])
    return latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000 if latencies else 0.0


def parity_text(ledger: LedgerView) -> str:
    """``parity 5/5 devices``: devices whose ledger holds all their checkpoint says was stored."""
    return f"parity {ledger.in_parity}/{len(ledger.devices)} devices"


def progress_line(state: DemoState, frame: Frame) -> str:
    """One plain line for a log or a pipe (stdout not a terminal), every few seconds."""
    stats, ledger = frame.stats, frame.ledger
    stored = sum(d.last_seq for d in stats.devices.values())
    broker = "up" if state.broker.up else "DOWN"
    return (
        f"demo {time.monotonic() - state.started:.0f}s: broker {broker},"
        f" stored {stored}, unsent {stats.unsent}, ledger {ledger.held} events,"
        f" {parity_text(ledger)}, good-feedback p99 {good_feedback_p99_ms(state.gateway):.1f} ms"
    )


@dataclass(frozen=True)
class Frame:
    """One consistent look at the demo: what the scanners heard, the ledger, then the buffer.

    Taken in that order, so that every number bounds the ones before it: a beep is written only
    after its scan was stored, and the ledger holds only what was stored, while ``stored`` only
    grows. Reading the buffer first (as the view once did) let a scan stored and beeped during
    the ledger query show as more feedback than stored scans.
    """

    feedback: dict[str, bytes]
    ledger: LedgerView
    stats: BufferStats


async def take_frame(state: DemoState) -> Frame:
    """Snapshot the scanners' feedback, then the ledger, then the buffer (see :class:`Frame`)."""
    feedback = {
        f"dock-{n + 1}-scanner": sim.feedback_bytes() for n, sim in enumerate(state.scanners)
    }
    ledger = await state.central.look()
    return Frame(feedback, ledger, await state.gateway.buffer.stats())


def render(state: DemoState, frame: Frame) -> Group:
    """Build one frame of the view from the gateway's buffer and one look at the ledger."""
    stats, ledger = frame.stats, frame.ledger
    gw = state.gateway
    elapsed = time.monotonic() - state.started
    table = Table(
        title=f"edge-gateway demo - {elapsed:.0f}s - keys: b broker on/off, q quit", pad_edge=False
    )
    table.caption = (
        "ledger: events in PostgreSQL; gaps: seqs the ledger misses against the gateway's"
        " checkpoint (edge-central parity); feedback: good/bad/pending beeps"
        "\npending: not confirmed within confirm_timeout (stored, will be delivered: no rescan),"
        " not scans still waiting; feedback p99: good beeps only"
    )
    for column in ("device", "state", "level", "stored", "sent", "ledger", "gaps", "feedback"):
        # Fits 80 columns; nothing wraps, so a narrower terminal crops the right edge instead.
        table.add_column(column, justify="right" if column in NUMERIC else "left", no_wrap=True)
    for device in gw.settings.devices:
        name = device.id
        dev = stats.devices.get(name)
        held = ledger.devices.get(f"/{gw.settings.gateway.site}/{gw.settings.gateway.id}/{name}")
        got = frame.feedback.get(name)
        if got is not None:
            feedback = f"{got.count(GOOD)}/{got.count(BAD)}/{got.count(PENDING)}"
        else:
            feedback = "-"
        up = gw.device_states.get(name, {}).get("state", "-")
        table.add_row(
            name,
            Text(up, style="green" if up == "up" else "red"),
            device.confirm if got is not None else "-",
            str(dev.last_seq if dev else 0),
            str(dev.last_sent_seq if dev else 0),
            str(held.held if held else 0),
            Text(str(held.missing_count), style="red") if held and held.missing else "0",
            feedback,
        )
    broker = Text("broker UP", style="green") if state.broker.up else Text("broker DOWN", "red")
    line = Text.assemble(
        broker,
        f"   buffer unsent {stats.unsent}",
        "   draining backlog" if gw.publisher.draining else "",
        f"   feedback p99 {good_feedback_p99_ms(gw):.1f} ms",
    )
    parity = Text(
        parity_text(ledger), style="green" if ledger.in_parity == len(ledger.devices) else "red"
    )
    central = Text.assemble(
        f"ledger: {ledger.held} events, {ledger.rejected} rejected,"
        f" {ledger.duplicates} duplicates, ",
        parity,
    )
    recent = Table.grid(padding=(0, 2))
    for event in ledger.recent:
        verdict = "" if event["status"] == "accepted" else f"  REJECTED: {event['reason']}"
        recent.add_row(event["source"].rsplit("/", 1)[-1], _summary(event) + verdict)
    return Group(table, line, central, Text("last events committed to the ledger:"), recent)
