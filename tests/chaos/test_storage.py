"""The buffer under storage faults: disk full, corrupt or truncated files, an orphan WAL, a
read-only state dir, and power cuts at random moments mid-write."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from buffer.store import Buffer, BufferFullError, NewEvent
from simulators.broker import MosquittoBroker
from simulators.central import CentralCollector
from simulators.scanner import ScannerSimulator
from tests.chaos.conftest import ChaosReport, ChaosRow, Stopwatch
from tests.chaos.workload import BAD, FEEDBACK, GOOD
from tests.support import ROOT, GatewayProcess, running_gateway, scanner_device, write_config


def event(device: str, n: int, *, droppable: bool = False, size: int = 500) -> NewEvent:
    """A stored-shape event whose payload carries its seq and ``size`` bytes of padding."""

    def render(seq: int) -> bytes:
        return json.dumps({"device": device, "n": n, "seq": seq, "pad": "x" * size}).encode()

    return NewEvent(f"{device}-{n}", device, "2026-01-01T00:00:00.000000Z", "t", droppable, render)


def seqs_by_device(db: Path) -> dict[str, list[int]]:
    """Every stored seq per device, ascending, read through a separate connection."""
    out: dict[str, list[int]] = {}
    with contextlib.closing(sqlite3.connect(db)) as conn:
        for device, seq in conn.execute("SELECT device, seq FROM events ORDER BY device, seq"):
            out.setdefault(str(device), []).append(int(seq))
    return out


def integrity(db: Path) -> str:
    """``PRAGMA integrity_check`` of a file."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


# --- disk full -------------------------------------------------------------------------------


async def test_disk_full_refuses_loudly_corrupts_nothing_and_recovers(
    tmp_path: Path, chaos_report: ChaosReport, stopwatch: Stopwatch
) -> None:
    """SQLite max_page_count as a full disk: appends fail as BufferFullError (refused, no seq
    taken), stored events stay intact, and appends work again once space returns."""
    db = tmp_path / "state" / "buffer.db"
    buf = await Buffer.open(db, max_bytes=10**9)
    try:
        pages = await buf._db.read(lambda c: int(c.execute("PRAGMA page_count").fetchone()[0]))
        await buf._db.read(lambda c: c.execute(f"PRAGMA max_page_count={pages + 40}").fetchall())
        stored, reasons = [], []
        with capture_logs() as logs:
            for n in range(2000):
                try:
                    stored.append(await buf.append(event("dock", n, size=800)))
                except BufferFullError as exc:
                    reasons.append(str(exc))
                    if len(reasons) >= 5:
                        break
        refused = len(reasons)
        assert stored and refused == 5
        assert all("full" in reason for reason in reasons)
        assert any(entry["event"] == "buffer_commit_failed" for entry in logs), "a loud error"
        assert [e.seq for e in stored] == list(range(1, len(stored) + 1))
        await buf._db.read(  # space came back
            lambda c: c.execute("PRAGMA max_page_count=1073741823").fetchall()
        )
        again = await buf.append(event("dock", 9999))
        assert again.seq == len(stored) + 1, "refused events took no seq"
    finally:
        await buf.close()
    assert integrity(db) == "ok"
    assert seqs_by_device(db)["dock"] == list(range(1, len(stored) + 2))
    chaos_report.add(
        ChaosRow(
            "disk full (max_page_count)",
            faults=1,
            at_risk=len(stored),
            lost=0,
            new_id_duplicates=0,
            seconds=stopwatch.elapsed,
            note=f"{refused} appends refused, recovered after space returned",
        )
    )


async def test_cap_drops_telemetry_by_policy_and_counts_it_but_never_a_scan(
    tmp_path: Path,
) -> None:
    """Under the size cap, pending telemetry goes oldest-first (counted); unsent scans stay."""
    buf = await Buffer.open(tmp_path / "b.db", max_bytes=40_000)
    try:
        scans = [await buf.append(event("scanner", n)) for n in range(20)]
        for n in range(200):
            await buf.append(event("conveyor", n, droppable=True))
        with pytest.raises(BufferFullError):
            for n in range(100):
                await buf.append(event("scanner", 100 + n))
        dropped = buf.transitions["dropped"]
    finally:
        await buf.close()
    held = seqs_by_device(tmp_path / "b.db")
    assert dropped > 100
    assert set(range(1, len(scans) + 1)) <= set(held["scanner"]), "no scan dropped"
    conveyor = held.get("conveyor", [])
    assert conveyor == list(range(201 - len(conveyor), 201)), "telemetry dropped oldest first"
    assert integrity(tmp_path / "b.db") == "ok"


async def test_full_buffer_refuses_scans_with_bad_feedback_then_recovers(
    tmp_path: Path,
    broker: MosquittoBroker,
    central: CentralCollector,
    chaos_report: ChaosReport,
    stopwatch: Stopwatch,
) -> None:
    """A real gateway at its cap (1 MiB, broker down): scans get bad feedback and an error line;
    every accepted scan is delivered when the broker returns, and scanning works again."""
    async with ScannerSimulator(tmp_path / "scan") as sim:
        cfg = write_config(
            tmp_path / "gateway.toml",
            mqtt_port=broker.port,
            state_dir=tmp_path / "state",
            buffer={"max_bytes": "1MiB"},
            devices=[scanner_device("dock", sim.link, max_frame=8192, **FEEDBACK)],
        )
        broker.stop()
        with capture_logs() as logs:
            async with running_gateway(cfg) as gw:
                await sim.wait_opened(timeout=10)
                accepted = 0
                for n in range(400):
                    before = sim.feedback_bytes()
                    await sim.type_code(f"BIG{n:04d}" + "x" * 6000, aim="")
                    got = await sim.wait_feedback(
                        lambda b, k=len(before): len(b) > k,  # noqa: B008 - bound per scan
                        timeout=5,
                    )
                    if got[len(before) :].startswith(BAD):
                        break
                    assert got[len(before) :].startswith(GOOD)
                    accepted += 1
                else:
                    pytest.fail("the 1 MiB cap never refused a scan")
                broker.start()
                assert await central.wait_for(accepted, timeout=30)
                async with asyncio.timeout(10):  # PUBACKs recorded: sent events may be evicted
                    while (await gw.buffer.stats()).unsent:
                        await asyncio.sleep(0.05)
                await sim.type_code("AFTER" + "x" * 6000, aim="")
                await sim.wait_feedback(lambda b: b.endswith(GOOD), timeout=5)
                assert await central.wait_for(accepted + 1, timeout=10)
    events = [entry["event"] for entry in logs]
    assert "buffer_full_refusing_event" in events and "event_refused" in events
    assert integrity(tmp_path / "state" / "buffer.db") == "ok"
    chaos_report.add(
        ChaosRow(
            "buffer cap full, broker down",
            faults=1,
            at_risk=accepted,
            lost=accepted + 1 - central.unique_count(),
            new_id_duplicates=0,
            seconds=stopwatch.elapsed,
            note="refused with bad feedback, recovered after drain",
        )
    )


# --- damaged files ---------------------------------------------------------------------------


async def _filled(path: Path, events: int = 300) -> None:
    buf = await Buffer.open(path, max_bytes=10**9)
    for n in range(events):
        await buf.append(event("dock", n))
    await buf.close()


@pytest.mark.parametrize("damage", ["garbage-pages", "truncated", "zeroed-header"])
async def test_damaged_file_is_quarantined_loudly_and_the_gateway_carries_on(
    tmp_path: Path, damage: str, chaos_rng: random.Random
) -> None:
    """A damaged buffer is moved aside (kept, not deleted) with an error, and a fresh one works."""
    path = tmp_path / "buffer.db"
    await _filled(path)
    data = bytearray(path.read_bytes())
    if damage == "garbage-pages":
        for _ in range(8):
            at = chaos_rng.randrange(4096, len(data) - 512)
            data[at : at + 512] = chaos_rng.randbytes(512)
    elif damage == "truncated":
        data = data[: len(data) // 2 + 100]
    else:
        data[:100] = bytes(100)
    path.write_bytes(bytes(data))
    with capture_logs() as logs:
        buf = await Buffer.open(path, max_bytes=10**9)
        try:
            assert (await buf.append(event("dock", 1))).seq >= 1
        finally:
            await buf.close()
    moved = list(tmp_path.glob("buffer.db.corrupt-*"))
    quarantined = [e for e in logs if e["event"] == "buffer_quarantined"]
    if damage == "garbage-pages" and not quarantined:
        # Random bytes may land in free space or padding: then the file is still sound.
        assert integrity(path) == "ok"
        return
    assert len(quarantined) == 1 and quarantined[0]["log_level"] == "error"
    main_file = [p for p in moved if p.name.endswith("Z")]
    assert main_file and main_file[0].stat().st_size > 0
    assert integrity(path) == "ok"


LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA locking_mode=EXCLUSIVE")
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


async def test_buffer_locked_at_start_fails_the_start_and_loses_nothing(
    tmp_path: Path,
    broker: MosquittoBroker,
    central: CentralCollector,
    chaos_report: ChaosReport,
    stopwatch: Stopwatch,
) -> None:
    """10 scans stored with the broker down; a technician's sqlite3 shell holds the buffer in
    exclusive locking mode for 8 s while the real daemon starts: the start fails (exit 1, a clear
    line), the file stays where it is, and the next start delivers all 10 under their original
    ids and seqs, the next scan getting seq 11. Before, the busy file was quarantined as corrupt,
    the 10 never arrived, and new scans reused seqs 1..10."""
    async with ScannerSimulator(tmp_path / "scan") as sim:
        cfg = write_config(
            tmp_path / "gateway.toml",
            mqtt_port=broker.port,
            state_dir=tmp_path / "state",
            devices=[scanner_device("dock", sim.link, **FEEDBACK)],
        )
        db = tmp_path / "state" / "buffer.db"
        broker.stop()
        async with running_gateway(cfg):
            await sim.wait_opened(timeout=10)
            for n in range(10):
                before = len(sim.feedback_bytes())
                await sim.type_code(f"LOCKED{n:04d}", aim="")
                got = await sim.wait_feedback(lambda b, k=before: len(b) > k, timeout=5)
                assert got[before:].startswith(GOOD)
        broker.start()
        locker = await asyncio.create_subprocess_exec(
            sys.executable, "-c", LOCKER, str(db), "8", stdout=asyncio.subprocess.PIPE
        )
        assert locker.stdout is not None
        assert (await locker.stdout.readline()).strip() == b"locked"
        daemon = GatewayProcess(cfg, tmp_path / "gateway.log")
        try:
            daemon.start()
            assert daemon.process is not None
            code = await asyncio.to_thread(daemon.process.wait, 30)
        finally:
            locker.kill()
            await locker.wait()
        assert code == 1
        unusable = [e for e in daemon.log_lines() if e.get("event") == "buffer_unusable"]
        assert unusable and "left as it is" in unusable[0]["error"], daemon.log_lines()[-3:]
        assert "Traceback" not in daemon.log_path.read_text()
        assert not list(db.parent.glob("buffer.db.corrupt-*")), "a busy buffer was quarantined"
        daemon.start()
        try:
            assert await central.wait_for(10, timeout=20), central.unique_count()
            await sim.wait_opened(timeout=10)
            await sim.type_code("AFTER", aim="")
            assert await central.wait_for(11, timeout=20)
        finally:
            assert daemon.terminate() == 0
    seqs = sorted(int(m["seq"]) for m in central.messages)
    assert seqs[:11] == list(range(1, 12)), seqs
    chaos_report.add(
        ChaosRow(
            "buffer locked by another process at start",
            faults=1,
            at_risk=10,
            lost=10 - len({m["id"] for m in central.messages if int(m["seq"]) <= 10}),
            new_id_duplicates=len(central.messages) - len({m["id"] for m in central.messages}),
            seconds=stopwatch.elapsed,
            note="start failed with exit 1, file kept, all delivered on the next start",
        )
    )


async def test_wal_without_its_database_is_not_silently_discarded(tmp_path: Path) -> None:
    """Only the WAL survived (a bad restore, a technician deleting buffer.db): its committed
    events must be recovered, or the WAL moved aside with an error, never dropped in silence."""
    source = tmp_path / "orig" / "buffer.db"
    buf = await Buffer.open(source, max_bytes=10**9)
    for n in range(50):
        await buf.append(event("dock", n))
    wal = Path(f"{source}-wal").read_bytes()
    await buf.close()
    target = tmp_path / "state" / "buffer.db"
    target.parent.mkdir(mode=0o700)
    Path(f"{target}-wal").write_bytes(wal)
    with capture_logs() as logs:
        fresh = await Buffer.open(target, max_bytes=10**9)
        held = (await fresh.stats()).devices.get("dock")
        await fresh.close()
    recovered = held is not None and held.last_seq == 50
    kept_aside = any(p.name != "buffer.db" and "wal" in p.name for p in target.parent.iterdir())
    loud = any(e["log_level"] == "error" for e in logs)
    assert recovered or (kept_aside and loud)


def _unprivileged() -> list[str]:
    """A command prefix under which file permissions apply even to root (no DAC override)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("root without setpriv: permissions cannot be enforced")
    drop = "-dac_override,-dac_read_search"
    return [setpriv, f"--bounding-set={drop}", f"--inh-caps={drop}"]


def test_read_only_state_dir_is_a_clear_error_without_traceback(tmp_path: Path) -> None:
    """A read-only state dir (no write permission, even for root): exit 1, one clear error
    naming the path, no traceback."""
    state = tmp_path / "state"
    state.mkdir(mode=0o500)
    cfg = write_config(tmp_path / "gateway.toml", mqtt_port=1, state_dir=state, devices=[])
    result = subprocess.run(
        [*_unprivileged(), sys.executable, "-m", "gateway", "run", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    lines = [json.loads(x) for x in result.stdout.splitlines() if x.startswith("{")]
    errors = [x for x in lines if x.get("level") == "error"]
    assert errors and errors[0]["event"] == "buffer_unusable"
    assert str(state) in errors[0]["error"]


# --- power cut ---------------------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import asyncio, json, sys
    from pathlib import Path
    from buffer.store import Buffer, NewEvent

    def event(device, n):
        def render(seq):
            return json.dumps({"n": n, "seq": seq, "pad": "x" * 200}).encode()
        return NewEvent(f"{device}-{n}", device, "t", "t", False, render)

    async def writer(buf, device):
        n = 0
        while True:
            batch = [buf.append(event(device, n + i)) for i in range(20)]
            n += 20
            done = await asyncio.gather(*batch)
            print(device, max(stored.seq for stored in done), flush=True)

    async def sender(buf, disconnects):
        while True:
            claimed = await buf.claim(50)
            if claimed:
                await buf.mark_sent(claimed[: len(claimed) // 2])
                if disconnects:  # what a lost broker connection writes, then appends go on
                    await buf.release_in_flight()
                    await buf.set_device_status("a", "down", "link lost", "t")
                    print("released", 0, flush=True)
                else:
                    await buf.release(claimed[len(claimed) // 2 :])
            await asyncio.sleep(0.005)

    async def main():
        buf = await Buffer.open(Path(sys.argv[1]), max_bytes=10**9)
        await asyncio.gather(writer(buf, "a"), writer(buf, "b"), sender(buf, sys.argv[2] == "1"))

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("moment", ["random", "after-disconnect"])
async def test_power_cut_copies_open_intact_with_every_committed_event(
    tmp_path: Path,
    chaos_rng: random.Random,
    chaos_report: ChaosReport,
    stopwatch: Stopwatch,
    moment: str,
) -> None:
    """A writer process is frozen (SIGSTOP) at random moments and its db, WAL and shm copied as
    a crash leaves them: each copy opens, passes integrity_check, and holds every event whose
    append had returned, with gap-free seqs. ``after-disconnect`` freezes it right after the
    non-durable writes of a lost connection (release of in-flight rows, device status), the
    moment after which an append once committed without fsync."""
    after_disconnect = moment == "after-disconnect"
    released = asyncio.Event()
    db = tmp_path / "live" / "buffer.db"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        WRITER,
        str(db),
        "1" if after_disconnect else "0",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    committed: dict[str, int] = {}

    async def follow() -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            parts = line.decode().split()
            if parts[:1] == ["released"]:
                released.set()
            elif len(parts) == 2 and parts[1].isdigit():  # skip the buffer's own log lines
                committed[parts[0]] = max(committed.get(parts[0], 0), int(parts[1]))
            await asyncio.sleep(0)  # readline does not yield while lines are buffered

    reader = asyncio.create_task(follow())
    copies: list[tuple[Path, dict[str, int]]] = []
    try:
        for index in range(12):
            await asyncio.sleep(chaos_rng.uniform(0.05, 0.4))
            if after_disconnect:
                released.clear()
                await asyncio.wait_for(released.wait(), 10)
            proc.send_signal(signal.SIGSTOP)
            await asyncio.sleep(0.05)  # drain what was printed before the freeze
            snapshot = dict(committed)
            target = tmp_path / f"copy{index}" / "buffer.db"
            target.parent.mkdir()
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    shutil.copyfile(f"{db}{suffix}", f"{target}{suffix}")
            proc.send_signal(signal.SIGCONT)
            copies.append((target, snapshot))
    finally:
        proc.kill()
        await proc.wait()
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    at_risk = lost = 0
    for target, snapshot in copies:
        with capture_logs() as logs:
            buf = await Buffer.open(target, max_bytes=10**9)
            await buf.close()
        assert not [e for e in logs if e["event"] == "buffer_quarantined"], target
        assert integrity(target) == "ok", target
        held = seqs_by_device(target)
        for device, seq in snapshot.items():
            at_risk += seq
            have = held.get(device, [])
            assert have == list(range(1, len(have) + 1)), f"{target}: gap in {device}"
            lost += max(0, seq - len(have))
    chaos_report.add(
        ChaosRow(
            f"power cut (frozen-copy db+WAL, {moment})",
            faults=len(copies),
            at_risk=at_risk,
            lost=lost,
            new_id_duplicates=0,
            seconds=stopwatch.elapsed,
            note="every copy opened and passed integrity_check",
        )
    )
    assert lost == 0
    assert at_risk > 0


async def test_torn_wal_tail_opens_as_a_clean_prefix(
    tmp_path: Path, chaos_rng: random.Random
) -> None:
    """A WAL cut at random byte offsets (writes the disk never finished) still opens clean:
    SQLite keeps whole transactions only, so each device's seqs are a gap-free prefix."""
    source = tmp_path / "src" / "buffer.db"
    buf = await Buffer.open(source, max_bytes=10**9)
    for n in range(0, 400, 20):
        await asyncio.gather(*(buf.append(event(d, n + i)) for i in range(20) for d in "ab"))
    wal = Path(f"{source}-wal").read_bytes()
    main = source.read_bytes()
    for index in range(10):
        cut = chaos_rng.randrange(32, len(wal))
        target = tmp_path / f"torn{index}" / "buffer.db"
        target.parent.mkdir()
        target.write_bytes(main)
        Path(f"{target}-wal").write_bytes(wal[:cut])
        reopened = await Buffer.open(target, max_bytes=10**9)
        await reopened.close()
        assert integrity(target) == "ok"
        for device, seqs in seqs_by_device(target).items():
            assert seqs == list(range(1, len(seqs) + 1)), (index, device)
    await buf.close()
