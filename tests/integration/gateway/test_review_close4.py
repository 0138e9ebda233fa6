"""Fourth adversarial review of ``Buffer.close`` (b655f5f), the daemon's side: its ``finally``
close with everything still running, a close that raises there, and the ``stats()`` callers at
an ordinary stop. The real daemon as a process, a real Mosquitto, a real scanner simulator."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from buffer import writer_lock
from buffer.stats import read_stats
from buffer.store import Buffer
from simulators.broker import MosquittoBroker
from simulators.central import CentralCollector
from simulators.scanner import ScannerSimulator
from tests.support import (
    ROOT,
    GatewayProcess,
    cli,
    run_python,
    scanner_device,
    write_config,
)
from tests.unit.buffer.test_append_nowait import make_event

FEEDBACK = {"feedback": "custom", "feedback_good": "G\r", "feedback_bad": "B\r"}
GOOD, BAD = b"G\r", b"B\r"

_FAULTY_DAEMON = textwrap.dedent(
    """
    import sqlite3
    import sys

    from gateway.cli import main
    from gateway.inbound import Inbound

    if sys.argv[2] == "shutdown":
        async def drain(self):  # the injected fault: the stop path raises first thing
            raise RuntimeError("injected shutdown fault")

        Inbound.drain = drain
    if "publisher" in sys.argv[2]:
        import asyncio

        from gateway.publisher import Publisher

        real_run = Publisher.run

        async def run(self):  # the essential publisher fails after a second
            task = asyncio.ensure_future(real_run(self))
            try:
                await asyncio.sleep(1)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            raise RuntimeError("injected publisher failure")

        Publisher.run = run
    if "close" in sys.argv[2]:
        class CloseFails(sqlite3.Connection):
            def close(self):  # the writer's close fails in SQLite (an I/O error)
                raise sqlite3.OperationalError("injected close fault")

        real_connect = sqlite3.connect

        def connect(database, **kwargs):
            if kwargs.get("isolation_level", "") is None:  # the writer's (buffer/schema.py)
                kwargs["factory"] = CloseFails
            return real_connect(database, **kwargs)

        sqlite3.connect = connect
    sys.exit(main(["run", "--config", sys.argv[1]]))
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scanner_config(
    tmp_path: Path,
    broker: MosquittoBroker,
    sim: ScannerSimulator,
    feedback: dict[str, str] | None = None,
    **sections: dict[str, object],
) -> Path:
    """The gateway config these tests run: one scanner, dock-1, the state in ``tmp_path``."""
    return write_config(
        tmp_path / "gw.toml",
        mqtt_port=broker.port,
        state_dir=tmp_path / "state",
        devices=[scanner_device("dock-1", sim.link, **(feedback or {}))],
        **sections,
    )


def _start_faulty(config: Path, fault: str, log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-c", _FAULTY_DAEMON, str(config), fault],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def _pour(sim: ScannerSimulator, first: int, count: int) -> None:
    for start in range(first, first + count, 20):
        await sim.write_raw("".join(f"R{i:06d}\r" for i in range(start, start + 20)).encode())
        await asyncio.sleep(0.01)


async def test_a_stop_path_that_raises_with_everything_running_ends_and_answers_once(
    tmp_path: Path, broker: MosquittoBroker, central: CentralCollector
) -> None:
    """DISMISSED (the ``finally`` close when ``_serve`` raised with the publisher, the drivers,
    housekeeping and the helpers all still running): the stop path's first step fails
    (``Inbound.drain`` raises, in the daemon's own process) while scans pour in. The buffer
    closes under them: the writer commits what was queued, later emits are refused at once
    (bad feedback, ``emit`` returns), the publisher's next buffer call fails; ``_run``
    re-raises, ``cmd_run`` logs ``gateway_failed`` and ``asyncio.run`` cancels every task left,
    none of which waits on anything the closed buffer would never settle. The process exits
    with 1 in seconds, the writer lock is free, no scan heard twice (good at most once per
    stored scan, bad at most once per scan not stored), and after a clean restart everything
    stored reaches central with no gap."""
    async with ScannerSimulator(tmp_path / "scanner0") as sim:
        state = tmp_path / "state"
        config = _scanner_config(
            tmp_path,
            broker,
            sim,
            FEEDBACK,
            gateway={"shutdown_timeout": 5},
            metrics={"listen": f"127.0.0.1:{_free_port()}"},
        )
        log_path = tmp_path / "gw.log"
        proc = _start_faulty(config, "shutdown", log_path)
        try:
            await sim.wait_opened(timeout=20)
            load = asyncio.create_task(_pour(sim, 0, 2000))
            while central.unique_count() < 100:
                await asyncio.sleep(0.01)
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                code = await asyncio.to_thread(proc.wait, 20)
            except subprocess.TimeoutExpired:
                code = None
            stop_s = time.monotonic() - started
            load.cancel()
            await asyncio.gather(load, return_exceptions=True)
            log = log_path.read_text()
            assert "injected shutdown fault" in log, "the fault did not happen"
            assert code == 1, f"exit {code} after {stop_s:.1f}s"
            writer_lock.release(writer_lock.take(state / "buffer.db"))  # not held any more
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        stats = await read_stats(state / "buffer.db")
        assert stats is not None
        stored = stats.devices["dock-1"].last_seq
        heard = sim.feedback_bytes()
        good, bad = heard.count(GOOD), heard.count(BAD)
        assert 0 < good <= stored, (good, stored)  # once at most per stored scan
        assert bad <= 2000 - stored, (bad, stored)  # once at most per scan not stored
        daemon = GatewayProcess(config, tmp_path / "gw2.log")
        daemon.start()
        try:
            assert await central.wait_for(stored, timeout=60), (central.unique_count(), stored)
            async with asyncio.timeout(20):  # its signal handlers are in place
                while "gateway_started" not in [e.get("event") for e in daemon.log_lines()]:
                    await asyncio.sleep(0.05)
        finally:
            assert daemon.terminate() == 0
    track = central.sources["/site-test/gw-test/dock-1"]
    assert track.missing() == []
    assert track.conflicting == 0
    print({"stop_s": round(stop_s, 2), "stored": stored, "good": good, "bad": bad})


async def test_a_close_that_raises_in_the_daemons_finally_ends_the_process(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """DISMISSED (an exception while ``close`` itself raises, in the daemon's ``finally``): the
    writer's SQLite close fails (injected at ``sqlite3.connect``'s factory, as the third review
    did: CPython's close does not fail on a real file). ``Buffer.close`` logs
    ``buffer_close_failed`` and raises; aiosqlite let the connection go and stopped its thread
    anyway (in its own ``finally``), the readers were closed before it, so no non-daemon thread
    is left: ``cmd_run`` logs ``gateway_failed`` and the process exits with 1 at once."""
    async with ScannerSimulator(tmp_path / "scanner0") as sim:
        config = _scanner_config(tmp_path, broker, sim)
        log_path = tmp_path / "gw.log"
        proc = _start_faulty(config, "close", log_path)
        try:
            await sim.wait_opened(timeout=20)
            await _pour(sim, 0, 40)
            await asyncio.sleep(1.0)
            proc.send_signal(signal.SIGTERM)
            try:
                code = await asyncio.to_thread(proc.wait, 20)
            except subprocess.TimeoutExpired:
                code = None
            log = log_path.read_text()
            assert "injected close fault" in log, "the fault did not happen"
            assert "buffer_close_failed" in log and "gateway_failed" in log
            assert code == 1
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


async def test_an_ordinary_stop_reads_no_closed_buffer(
    tmp_path: Path, broker: MosquittoBroker, central: CentralCollector
) -> None:
    """DISMISSED (``stats()`` now raising ``BufferClosedError`` once closing, at every stop):
    its callers are housekeeping's metrics sample and checkpoint (cancelled in ``_shutdown``
    before anything else but the inbound drain), the checkpoint ``_shutdown`` publishes itself
    (before ``publisher.stop()``, so before the close), ``_report_removed_while_stopped``
    (start-up only) and the demo's view (its loop ends before the demo sets ``stop``). None
    runs once the close began: an ordinary SIGTERM under load, with metrics sampled and the
    checkpoint ticking, exits 0 with no error logged and no traceback."""
    async with ScannerSimulator(tmp_path / "scanner0") as sim:
        config = _scanner_config(
            tmp_path, broker, sim, FEEDBACK, metrics={"listen": f"127.0.0.1:{_free_port()}"}
        )
        daemon = GatewayProcess(config, tmp_path / "gw.log")
        daemon.start()
        await sim.wait_opened(timeout=20)
        load = asyncio.create_task(_pour(sim, 0, 1000))
        while central.unique_count() < 100:
            await asyncio.sleep(0.01)
        await asyncio.sleep(1.5)  # a metrics sample and checkpoint ticks
        code = await asyncio.to_thread(daemon.terminate, 30)
        load.cancel()
        await asyncio.gather(load, return_exceptions=True)
    lines = daemon.log_lines()
    assert code == 0
    assert "gateway_stopped" in [e.get("event") for e in lines]
    assert [e for e in lines if e.get("level") in ("error", "critical")] == []
    text = daemon.log_path.read_text()
    assert "Traceback" not in text and "BufferClosedError" not in text


_DEMO_WITH_FAILING_GATEWAY = textwrap.dedent(
    """
    import asyncio
    import sys

    from gateway.cli import main
    from gateway.publisher import Publisher

    real_run = Publisher.run

    async def run(self):  # the injected fault: the essential publisher fails after 3 s
        task = asyncio.ensure_future(real_run(self))
        try:
            await asyncio.sleep(3)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        raise RuntimeError("injected gateway failure")

    Publisher.run = run
    sys.exit(main(["demo", "--duration", "10"]))
    """
)


def test_the_demo_says_why_its_gateway_failed() -> None:
    """``edge-gateway demo`` runs the gateway as a task beside its live view, which reads
    ``gateway.buffer.stats()`` four times a second. b655f5f made two changes meet there: the
    gateway closes its buffer in a ``finally`` however its run ends, and ``stats()`` raises
    ``BufferClosedError`` once the buffer is closing. A gateway that fails (here its essential
    publisher raises, in the demo's own process) closes the buffer, the next frame's
    ``stats()`` raises, ``_show`` ends with it, the ``finally`` awaits the gateway's task under
    ``contextlib.suppress(Exception)`` (its real failure is dropped), the exit stack cleans
    up, and the process dies with a ``BufferClosedError`` traceback: the user is told "the
    buffer is closed" and never why the gateway stopped. (Before, the view went on showing a
    dead gateway until ``q``, and the leaked reader thread hung the exit.) No data at stake:
    the stop ends and the private broker and database are removed.

    Was PROVEN; fixed: the view ends when the gateway's task does, and the demo logs
    ``demo_gateway_failed`` with the task's own error and exits 1."""
    done = run_python(_DEMO_WITH_FAILING_GATEWAY, timeout=90)
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert "BufferClosedError" not in out
    assert "injected gateway failure" in out


async def test_a_stop_past_its_bound_with_a_driver_still_running_answers_each_scan_once(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """DISMISSED (double feedback at the new early refusal, a driver that outlived the bound).
    The shutdown bound passes while a driver still runs (the way b655f5f's refusal at
    ``append_nowait`` was written for): another connection holds the file's write lock, so
    dock-1's scan waits in its commit and its driver's stop waits on it (the commit's future
    refuses cancellation) past ``shutdown_timeout``; dock-2's driver, stopped after dock-1's,
    is still reading. Its scans during the close are refused at once (bad), those after it
    too; the stuck commit lands once the other connection lets go (good; after ``busy_timeout``
    it would fail and be refused: bad). An emit refused at ``append_nowait`` queued nothing,
    so no ``_stored_while_stopping`` or writer answer can follow it: each scan is answered
    once, good only for a stored one, and the process exits 0 (seen: dock-2 typed 25, heard
    3 good = 3 stored and 22 bad)."""
    async with (
        ScannerSimulator(tmp_path / "scanner1") as one,
        ScannerSimulator(tmp_path / "scanner2") as two,
    ):
        state = tmp_path / "state"
        config = write_config(
            tmp_path / "gw.toml",
            mqtt_port=broker.port,
            state_dir=state,
            devices=[
                scanner_device("dock-1", one.link, **FEEDBACK),
                scanner_device("dock-2", two.link, **FEEDBACK),
            ],
            gateway={"shutdown_timeout": 1},
        )
        daemon = GatewayProcess(config, tmp_path / "gw.log")
        daemon.start()
        await one.wait_opened(timeout=20)
        await two.wait_opened(timeout=20)
        async with asyncio.timeout(20):
            while "gateway_started" not in [e.get("event") for e in daemon.log_lines()]:
                await asyncio.sleep(0.05)
        await one.type_code("A0", aim="")
        await two.type_code("B0", aim="")
        await one.wait_feedback(1)
        await two.wait_feedback(1)
        holder = sqlite3.connect(state / "buffer.db", isolation_level=None)
        typed_two = 1
        try:
            holder.execute("BEGIN IMMEDIATE")  # the gateway's commits now wait for us
            await one.type_code("A1", aim="")
            await asyncio.sleep(0.3)
            daemon.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            for n in range(1, 25):
                await two.type_code(f"B{n}", aim="")
                typed_two += 1
                await asyncio.sleep(0.1)
                if daemon.process.poll() is not None:  # type: ignore[union-attr]
                    break
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        code = await asyncio.to_thread(daemon.process.wait, 20)  # type: ignore[union-attr]
        await asyncio.sleep(0.3)
        heard_one, heard_two = one.feedback_bytes(), two.feedback_bytes()
    stats = await read_stats(state / "buffer.db")
    assert stats is not None
    stored = {d: stats.devices[d].last_seq for d in ("dock-1", "dock-2")}
    log = daemon.log_path.read_text()
    print({"one": heard_one, "two": heard_two, "stored": stored, "typed_two": typed_two})
    assert code == 0
    assert heard_one.count(GOOD) == stored["dock-1"]
    assert heard_two.count(GOOD) == stored["dock-2"]
    assert len(heard_one) // 2 <= 2  # A0 and A1, once each
    assert heard_two.count(BAD) > 0, "no scan met the closing buffer"
    assert len(heard_two) // 2 <= typed_two
    assert "Traceback" not in log and "never retrieved" not in log


async def test_a_close_failing_after_the_publisher_failed_still_logs_why_the_daemon_stopped(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """``Gateway._run``: ``failure = await self._serve(stop)`` then, in the ``finally``,
    ``await self.buffer.close()``, and only then ``raise failure``. When the essential
    publisher failed (``sv.wait`` returns its exception; the supervisor does not log it, the
    ``raise failure`` into ``cmd_run``'s ``gateway_failed`` is its only report) and the close
    then raises too, the close's exception leaves ``_run`` and the returned failure is
    dropped: not raised, not chained (it was never being handled), not logged. The daemon
    exits 1 with ``gateway_failed: injected close fault`` and no word of the publisher. (The
    same held before b655f5f, whose restructuring kept it: an exception *raised* by
    ``_serve`` is at least chained as the close error's context.)

    Was PROVEN; fixed: ``Gateway._close_buffer`` keeps the run's failure what is raised
    when the close fails too (the close's own error is logged as ``buffer_close_failed``)."""
    async with ScannerSimulator(tmp_path / "scanner0") as sim:
        config = _scanner_config(tmp_path, broker, sim)
        log_path = tmp_path / "gw.log"
        proc = _start_faulty(config, "publisher+close", log_path)
        try:
            code = await asyncio.to_thread(proc.wait, 30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    log = log_path.read_text()
    assert "injected close fault" in log, "the fault did not happen"
    assert code == 1
    assert "injected publisher failure" in log


async def test_edge_gateway_replay_reads_a_state_dir_full_of_uri_characters(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """DISMISSED (``edge-gateway replay`` as its own process on a ``state_dir`` with ``?``,
    ``&``, ``#``, ``%``, a space and non-ASCII in it, the daemon stopped): the command opens
    the file by ``read_only_uri``, connects to a real broker and finds the whole range with
    its three events (stored, not yet delivered: the daemon sends those, so the replay
    publishes none of them)."""
    state = tmp_path / "st?mode=rw&x#f 100% été" / "state"
    config = write_config(tmp_path / "gw.toml", mqtt_port=broker.port, state_dir=state, devices=[])
    b = await Buffer.open(state / "buffer.db", max_bytes=10**8)
    try:
        for n in range(1, 4):
            await b.append_nowait(make_event("dock-1", n))
    finally:
        await b.close()
    done = await asyncio.to_thread(
        cli, "replay", "--config", str(config), "--device", "dock-1", "--from-seq", "1"
    )
    assert done.returncode == 0, done.stderr
    # The range and its three stored (not yet delivered: the daemon sends those) events
    # were found: the command read the writer's file, not another one or none.
    assert done.stdout.strip() == (
        "dock-1: re-published 0 events (seq 1..3); 3 not yet delivered, the daemon sends them"
    )
