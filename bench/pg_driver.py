"""Which PostgreSQL driver for the central ledger: psycopg 3 (async) or asyncpg, measured.

Inserts batches of CloudEvents-shaped rows (JSONB data, ~300 B) into a ledger-like table with
``ON CONFLICT DO NOTHING RETURNING``, one transaction per batch, as the central ingest does, on
a private PostgreSQL with fsync on. Two ways each: ``executemany`` and one statement over
``unnest`` arrays. Prints one JSON object.

    .venv/bin/python -m bench.pg_driver [--events 50000] [--batch 500]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import psycopg

from simulators.postgres import PostgresServer

SCAN = "warehouse.barcode.scanned.v1"
DDL = """
DROP TABLE IF EXISTS ev;
CREATE TABLE ev (
    source text NOT NULL, id text NOT NULL, seq bigint NOT NULL, type text NOT NULL,
    time timestamptz NOT NULL, historical boolean NOT NULL, data jsonb NOT NULL,
    received timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (source, id));
CREATE UNIQUE INDEX ON ev (source, seq);
"""
UNNEST = (
    "INSERT INTO ev (source, id, seq, type, time, historical, data)"
    " SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[],"
    " $5::timestamptz[], $6::boolean[], $7::jsonb[])"
    " ON CONFLICT DO NOTHING RETURNING id"
)
ONE = (
    "INSERT INTO ev (source, id, seq, type, time, historical, data)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING"
)


def rows(count: int) -> list[tuple[Any, ...]]:
    now = datetime.now(UTC)
    data = json.dumps({"code": "0123456789012", "symbology": "]E0", "gtin": "01234567890128"})
    return [
        (f"/site/gw/dev{n % 20}", str(uuid.uuid4()), n // 20 + 1, SCAN, now, False, data)
        for n in range(count)
    ]


def columns(batch: list[tuple[Any, ...]]) -> list[list[Any]]:
    return [list(c) for c in zip(*batch, strict=True)]


async def bench_asyncpg(dsn: str, data: list[tuple[Any, ...]], size: int, how: str) -> float:
    conn = await asyncpg.connect(dsn)
    await conn.execute(DDL)
    start = time.perf_counter()
    for first in range(0, len(data), size):
        batch = data[first : first + size]
        async with conn.transaction():
            if how == "unnest":
                await conn.fetch(UNNEST, *columns(batch))
            else:
                await conn.executemany(ONE, batch)
    elapsed = time.perf_counter() - start
    await conn.close()
    return len(data) / elapsed


async def bench_psycopg(dsn: str, data: list[tuple[Any, ...]], size: int, how: str) -> float:
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    await conn.execute(DDL.replace("$", "%"))  # no parameters in the DDL
    unnest = UNNEST
    one = ONE
    for n in range(7, 0, -1):
        unnest, one = unnest.replace(f"${n}", "%s"), one.replace(f"${n}", "%s")
    start = time.perf_counter()
    for first in range(0, len(data), size):
        batch = data[first : first + size]
        async with conn.transaction():
            if how == "unnest":
                cur = await conn.execute(unnest, columns(batch))
                await cur.fetchall()
            else:
                async with conn.cursor() as cur:
                    await cur.executemany(one, batch)
    elapsed = time.perf_counter() - start
    await conn.close()
    return len(data) / elapsed


async def main(events: int, batch: int) -> dict[str, Any]:
    server = PostgresServer(durable=True)
    server.start()
    try:
        data = rows(events)
        out: dict[str, Any] = {"bench": "pg_driver", "events": events, "batch": batch}
        out["versions"] = {"psycopg": psycopg.__version__, "asyncpg": asyncpg.__version__}
        for how in ("unnest", "executemany"):
            out[f"asyncpg_{how}_events_per_s"] = round(
                await bench_asyncpg(server.dsn, data, batch, how)
            )
            out[f"psycopg_{how}_events_per_s"] = round(
                await bench_psycopg(server.dsn, data, batch, how)
            )
        return out
    finally:
        server.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=50000)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.events, args.batch))))
