"""`edge-central parity` as cron runs it: a process that imports only what the report needs.

Its target is 100 ms of process time (bench/central_parity.py); the query is ~3 ms, so the rest
is start-up. Timing a process on a shared CI box is noise, so this checks the cause instead:
the modules it imports (``-X importtime`` lists every one). The heavy ones belong to ``run``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import asyncpg

from central.schema import migrate
from tests.support import ROOT

HEAVY = (
    "pydantic",
    "pydantic_core",
    "gmqtt",
    "paho",
    "aiomqtt",
    "prometheus_client",
    "jsonschema_rs",
    "structlog",
    "central.config",
    "central.service",
    "gateway",
    "drivers",
    "buffer",
)


async def _ledger(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        await conn.execute(
            "INSERT INTO checkpoints (root, body) VALUES ($1, $2::jsonb)",
            "edge/s1/gw1",
            json.dumps({"devices": {"d1": {"last_seq": 3, "last_sent_seq": 3}}}),
        )
        await conn.execute("INSERT INTO seq_ranges VALUES ('/s1/gw1/d1', 1, 2)")
        await conn.execute(
            "INSERT INTO devices (source, root, device, out_since)"
            " VALUES ('/s1/gw1/d1', 'edge/s1/gw1', 'd1', now() - interval '1 minute')"
        )
    finally:
        await conn.close()


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, capture_output=True, text=True, cwd=ROOT, timeout=60, check=False
    )


def _imported(importtime: str) -> set[str]:
    return {
        line.split("|")[-1].strip()
        for line in importtime.splitlines()
        if line.startswith("import time:") and "|" in line
    }


async def test_parity_imports_nothing_heavy_and_reports(tmp_path: Path, pg_dsn: str) -> None:
    await _ledger(pg_dsn)
    config = tmp_path / "central.toml"
    config.write_text(
        f'[central]\ninstance = "a"\n[database]\ndsn = "{pg_dsn}"\n[parity]\nthreshold = 0\n'
    )
    done = _run(sys.executable, "-X", "importtime", "-m", "central", "parity", "--json",
                "--config", str(config))  # fmt: skip
    report = json.loads(done.stdout)
    assert done.returncode == 1, done.stderr[-2000:]  # out of parity for 60 s > 0
    assert report["devices"][0]["missing"] == [[3, 3]]
    imported = _imported(done.stderr)
    assert "asyncpg" in imported  # the parse of -X importtime works
    heavy = sorted(m for m in imported if m.split(".")[0] in HEAVY or m in HEAVY)
    assert heavy == [], heavy


async def test_console_script_prints_the_whole_report(tmp_path: Path, pg_dsn: str) -> None:
    """The script ends with os._exit after parity: the output must still be complete."""
    await _ledger(pg_dsn)
    config = tmp_path / "central.toml"
    config.write_text(f'[central]\ninstance = "a"\n[database]\ndsn = "{pg_dsn}"\n')
    script = Path(sys.executable).parent / "edge-central"
    done = _run(str(script), "parity", "--json", "--config", str(config))
    assert done.returncode == 0, done.stderr[-2000:]  # out of parity for 60 s, not 300
    report = json.loads(done.stdout)
    assert report["threshold_s"] == 300.0
    assert report["in_parity"] is False
    text = _run(str(script), "parity", "--config", str(config))
    assert text.returncode == 0
    assert text.stdout.splitlines()[-1].startswith("/s1/gw1/d1")


async def test_forms_the_lean_reader_declines_go_through_the_full_loader(
    tmp_path: Path, pg_dsn: str
) -> None:
    """A valid odd form is accepted; an invalid value is reported with its line, exit 2."""
    await _ledger(pg_dsn)
    config = tmp_path / "central.toml"
    head = f'[central]\ninstance = "a"\n[database]\ndsn = "{pg_dsn}"\n[parity]\n'
    config.write_text(head + 'threshold = " 5 m "\n')
    done = _run(sys.executable, "-m", "central", "parity", "--json", "--config", str(config))
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["threshold_s"] == 300.0
    config.write_text(head + "threshold = -1\n")
    done = _run(sys.executable, "-m", "central", "parity", "--json", "--config", str(config))
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith(f"{config}:6: parity.threshold:"), done.stderr
    assert "Traceback" not in done.stderr


async def test_an_unreachable_ledger_is_a_runtime_failure(tmp_path: Path) -> None:
    from simulators.broker import free_port  # noqa: PLC0415

    config = tmp_path / "central.toml"
    dsn = f"postgresql://postgres@127.0.0.1:{free_port()}/x"
    config.write_text(f'[central]\ninstance = "a"\n[database]\ndsn = "{dsn}"\n')
    done = _run(sys.executable, "-m", "central", "parity", "--config", str(config))
    assert done.returncode == 1
    assert done.stderr.startswith("edge-central:"), done.stderr
    assert "Traceback" not in done.stderr


async def test_a_missing_database_is_one_line_not_a_traceback(tmp_path: Path, pg_dsn: str) -> None:
    config = tmp_path / "central.toml"
    dsn = pg_dsn.rsplit("/", 1)[0] + "/no_such_ledger"
    config.write_text(f'[central]\ninstance = "a"\n[database]\ndsn = "{dsn}"\n')
    done = _run(sys.executable, "-m", "central", "parity", "--config", str(config))
    assert done.returncode == 1
    assert done.stderr.startswith("edge-central:"), done.stderr
    assert "no_such_ledger" in done.stderr
    assert "Traceback" not in done.stderr
