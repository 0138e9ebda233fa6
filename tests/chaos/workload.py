"""Workers at scanners, and the parity check a chaos scenario ends with.

A ``Worker`` behaves like a person at a scanner: scan, wait briefly for the beep, and move on to
the next parcel. A code that got good feedback was *acknowledged*: contract section 4 says it must
reach central. Codes are never repeated, so two ids for one code are new-id duplicates.

``check_parity`` compares three sources of truth: the buffer file (every event ever stored, with
its id and seq), the codes workers heard a good beep for, and what central received.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from buffer.event_ids import id_key, id_text
from simulators.central import CentralCollector
from simulators.scanner import ScannerSimulator
from tests.chaos.report import ChaosRow

GOOD, BAD, PENDING = b"G\r", b"B\r", b"P\r"
FEEDBACK = {
    "feedback": "custom",
    "feedback_good": "G\r",
    "feedback_bad": "B\r",
    "feedback_pending": "P\r",
}
SITE, GATEWAY = "site-test", "gw-test"


def source(device: str) -> str:
    """The CloudEvents source of a device of the test gateway."""
    return f"/{SITE}/{GATEWAY}/{device}"


@dataclass
class Worker:
    """Scans unique codes on one scanner, one at a time, waiting up to ``patience`` for a beep."""

    sim: ScannerSimulator
    prefix: str
    patience: float = 0.5
    pause: float = 0.0
    typed: list[str] = field(default_factory=list)
    acked: list[str] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        """Scan until ``stop`` is set; only while the port is open (nobody scans a dead box)."""
        number = 0
        while not stop.is_set():
            if not self.sim.is_open:
                await asyncio.sleep(0.01)
                continue
            code = f"{self.prefix}{number:06d}"
            number += 1
            before = self.sim.feedback_bytes().count(GOOD)
            self.typed.append(code)
            try:
                await self.sim.type_code(code, aim="")
                await self.sim.wait_feedback(
                    lambda b, n=before: b.count(GOOD) > n, timeout=self.patience
                )
                self.acked.append(code)
            except (TimeoutError, RuntimeError):
                # No beep: the worker moves on. A late beep must not be credited to the next
                # code, so let it land before the next scan takes its baseline.
                await asyncio.sleep(0.2)
            if self.pause:
                await asyncio.sleep(self.pause)


@dataclass
class Burst:
    """A scanner in batch mode: ``size`` codes in one write every ``every`` seconds."""

    sim: ScannerSimulator
    prefix: str
    size: int = 20
    every: float = 0.1
    typed: int = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Write bursts until ``stop``, only while the port is open."""
        while not stop.is_set():
            if self.sim.is_open:
                chunk = "".join(f"{self.prefix}{self.typed + i:06d}\r" for i in range(self.size))
                self.typed += self.size
                with contextlib.suppress(RuntimeError):
                    await self.sim.write_raw(chunk.encode())
            await asyncio.sleep(self.every)


def stored_events(db: Path) -> dict[str, dict[str, tuple[str, int]]]:
    """Every event in the buffer file: device -> id -> (code, seq)."""
    out: dict[str, dict[str, tuple[str, int]]] = defaultdict(dict)
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        conn.execute("PRAGMA busy_timeout=5000")
        for device, event_id, seq, payload in conn.execute(
            "SELECT device, id, seq, json_extract(payload, '$.data.code') FROM events"
        ).fetchall():
            out[device][id_text(event_id)] = (str(payload), int(seq))
    return out


def last_seqs(db: Path) -> dict[str, int]:
    """Per-device last seq the buffer handed out."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        conn.execute("PRAGMA busy_timeout=5000")
        return {str(d): int(s) for d, s in conn.execute("SELECT device, last_seq FROM devices")}


async def wait_delivered(central: CentralCollector, db: Path, timeout: float) -> bool:
    """Wait until central holds every id the buffer holds, and the buffer stopped growing.

    Call after the workers stopped: bytes still in a pty may yet become events. False on timeout.
    """
    previous = -1
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while True:
                stored = await asyncio.to_thread(stored_events, db)
                count = sum(len(ids) for ids in stored.values())
                if count == previous and all(
                    set(ids) <= set(central.sources[source(device)].ids)
                    for device, ids in stored.items()
                ):
                    return True
                previous = count
                await asyncio.sleep(0.5)
    return False


@dataclass
class Parity:
    """What a scenario lost or duplicated."""

    at_risk: int = 0
    acked: int = 0
    lost: list[str] = field(default_factory=list)
    gaps: dict[str, list[int]] = field(default_factory=dict)
    new_id_duplicates: int = 0
    same_id_duplicates: int = 0
    conflicting: int = 0
    integrity: str = ""
    counts: list[str] = field(default_factory=list)
    """Where the counts the buffer keeps (schema v4) disagree with a full count: status, the
    checkpoint and metrics show the kept ones."""

    def row(self, scenario: str, *, faults: int, seconds: float, note: str) -> ChaosRow:
        """This outcome as a line of the chaos summary table."""
        return ChaosRow(
            scenario,
            faults=faults,
            at_risk=self.at_risk,
            lost=len(self.lost),
            new_id_duplicates=self.new_id_duplicates + self.conflicting,
            same_id_duplicates=self.same_id_duplicates,
            seconds=seconds,
            note=note,
        )

    @property
    def clean(self) -> bool:
        """Nothing lost, no gap, no new-id duplicate, a sound file with right counts."""
        return (
            not self.lost
            and not any(self.gaps.values())
            and self.new_id_duplicates == 0
            and self.conflicting == 0
            and self.integrity == "ok"
            and not self.counts
        )


def count_errors(conn: sqlite3.Connection) -> list[str]:
    """The kept counts and low marks (buffer/counts.py) against one GROUP BY of the events.

    Cheap at a chaos run's size; empty when they agree.
    """
    errors = []
    kept = {
        str(row[0]): tuple(row[1:])
        for row in conn.execute(
            "SELECT device, unsent_events, sent_events, sent_telemetry, confirmed_events,"
            " rejected_events, payload_bytes FROM devices"
        )
    }
    marks = {
        str(d): (int(u), int(s))
        for d, u, s in conn.execute("SELECT device, unsent_from, unsettled_from FROM devices")
    }
    for device, *counted in conn.execute(
        "SELECT device, count(*) FILTER (WHERE state < 2),"
        " count(*) FILTER (WHERE state = 2 AND droppable = 0),"
        " count(*) FILTER (WHERE state = 2 AND droppable <> 0),"
        " count(*) FILTER (WHERE state = 3), count(*) FILTER (WHERE state = 4),"
        " sum(length(payload)), min(seq) FILTER (WHERE state < 2),"
        " min(seq) FILTER (WHERE droppable = 0 AND state <= 2) FROM events GROUP BY device"
    ):
        *figures, first_unsent, first_unsettled = counted
        held = kept.pop(str(device), None)
        if held != tuple(figures):
            errors.append(f"{device}: kept {held}, counted {tuple(figures)}")
        unsent_from, unsettled_from = marks.get(str(device), (0, 0))
        if first_unsent is not None and unsent_from > first_unsent:
            errors.append(f"{device}: unsent_from {unsent_from} > first unsent {first_unsent}")
        if first_unsettled is not None and unsettled_from > first_unsettled:
            errors.append(f"{device}: unsettled_from {unsettled_from} > {first_unsettled}")
    errors += [f"{d}: kept {v} for no events" for d, v in kept.items() if any(v)]
    states = dict(conn.execute("SELECT state, events FROM unsent_states WHERE events <> 0"))
    counted_states = dict(
        conn.execute("SELECT state, count(*) FROM events WHERE state < 2 GROUP BY state")
    )
    if states != counted_states:
        errors.append(f"unsent_states: kept {states}, counted {counted_states}")
    return errors


def check_parity(db: Path, central: CentralCollector, workers: list[Worker]) -> Parity:
    """Compare the buffer file, the workers' beeps and central (after the gateway stopped)."""
    stored = stored_events(db)
    result = Parity()
    received_codes: dict[str, set[str]] = defaultdict(set)
    for message in central.messages:
        code = message.get("data", {}).get("code")
        if code is not None:
            received_codes[code].add(message["id"])
    for device, ids in stored.items():
        track = central.sources[source(device)]
        result.at_risk += len(ids)
        result.lost += [f"{device}:{i}" for i in ids if i not in track.ids]
        result.gaps[device] = track.missing()
        expected = last_seqs(db).get(device, 0)
        if track.highest != expected:
            result.gaps[device] = [*result.gaps[device], -expected]
        result.same_id_duplicates += track.duplicates
        result.conflicting += track.conflicting
    for worker in workers:
        result.acked += len(worker.acked)
        result.lost += [f"acked:{c}" for c in worker.acked if c not in received_codes]
    result.new_id_duplicates = sum(len(ids) - 1 for ids in received_codes.values() if len(ids) > 1)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        result.integrity = str(conn.execute("PRAGMA integrity_check").fetchone()[0])
        result.counts = count_errors(conn)
    return result


def describe_lost(db: Path, parity: Parity) -> list[tuple[object, ...]]:
    """Buffer rows (device, id, seq, state, sent) of lost events, for the failure message."""
    ids = [entry.split(":", 1)[1] for entry in parity.lost if not entry.startswith("acked:")]
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return [
            tuple(row)
            for event_id in ids[:20]
            for row in conn.execute(
                "SELECT device, id, seq, state, created, sent FROM events WHERE id = ?",
                (id_key(event_id),),
            )
        ]
