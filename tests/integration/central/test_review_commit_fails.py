"""Review of the PUBACK and confirm release inside the pool's ``acquire`` (issue 15).

The writer now releases a batch's PUBACKs and starts its confirms before the connection goes
back to the pool. The events are inserted (one JSON parameter) and the books written, and then
COMMIT fails: a deferred constraint trigger raises at commit time, on real PostgreSQL. Nothing
may be acknowledged or confirmed while it fails, and once COMMIT succeeds the event is
confirmed once, PUBACKed once, and in the ledger once.
"""

from __future__ import annotations

import asyncio
import json
import re

import aiomqtt
import asyncpg
from structlog.testing import capture_logs

from tests.support import wait_until

from .conftest import running_central
from .helpers import raw, scan_event, topic_of

REFUSE_AT_COMMIT = """
CREATE TABLE review_block (on_ boolean NOT NULL);
INSERT INTO review_block VALUES (true);
CREATE FUNCTION review_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT on_ FROM review_block) THEN
        RAISE EXCEPTION 'refused at commit' USING ERRCODE = 'P0001';
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER review_refuse AFTER INSERT ON events
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION review_refuse();
"""


async def test_a_commit_that_fails_after_the_insert_acknowledges_nothing_then_once(
    broker, central_settings, pg_dsn
) -> None:
    settings = central_settings(replay={"enabled": False})
    body = scan_event(1)
    confirms: list[object] = []
    async with (
        running_central(settings) as central,
        aiomqtt.Client(broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5) as client,
    ):
        admin = await asyncpg.connect(pg_dsn)
        try:
            await admin.execute(REFUSE_AT_COMMIT)
            await client.subscribe("edge/s1/gw1/confirm", qos=1)

            async def collect() -> None:
                async for message in client.messages:
                    confirms.extend(json.loads(bytes(message.payload)))  # type: ignore[arg-type]

            collector = asyncio.create_task(collect())
            with capture_logs() as logs:
                await client.publish(topic_of(body), raw(body), qos=1)
                await wait_until(lambda: central.totals["retries"] >= 3, timeout=20)
            # PostgreSQL's own refusal: a warning that says why (no traceback), with the batch's
            # size and the retry's growing delay.
            failed = [line for line in logs if line["event"].startswith("batch_failed")][:3]
            assert [line["event"] for line in failed] == ["batch_failed"] * 3
            assert all("refused at commit" in line["error"] for line in failed)
            assert [(line["events"], line["retry_s"]) for line in failed] == [
                (1, 0.05),
                (1, 0.1),
                (1, 0.2),
            ]
            link = central._link
            assert link is not None and link.unacknowledged == 1, "no PUBACK without a commit"
            assert central.totals["stored"] == central.totals["confirms"] == 0
            assert await admin.fetchval("SELECT count(*) FROM events") == 0
            await asyncio.sleep(0.3)
            assert confirms == []
            await admin.execute("UPDATE review_block SET on_ = false")
            await wait_until(lambda: central.totals["stored"] == 1, timeout=20)
            await wait_until(lambda: len(confirms) >= 1, timeout=20)
            await asyncio.sleep(0.5)  # a second confirm or PUBACK would come by now
            assert confirms == [{"id": body["id"], "status": "accepted"}]
            assert link.unacknowledged == 0
            assert (central.totals["stored"], central.totals["duplicates"]) == (1, 0)
            assert await admin.fetchval("SELECT count(*) FROM events") == 1
            # A later failure backs off from the start again, not from where the last one was.
            await admin.execute("UPDATE review_block SET on_ = true")
            second = scan_event(2)
            with capture_logs() as logs:
                await client.publish(topic_of(second), raw(second), qos=1)
                await wait_until(
                    lambda: sum(line["event"] == "batch_failed" for line in logs) >= 2, timeout=20
                )
            retries = [line["retry_s"] for line in logs if line["event"] == "batch_failed"]
            assert retries[:2] == [0.05, 0.1], retries
            await admin.execute("UPDATE review_block SET on_ = false")
            await wait_until(lambda: central.totals["stored"] == 2, timeout=20)
            collector.cancel()
        finally:
            await admin.close()


REFUSE_WITH_TIMES = """
CREATE TABLE review_block (on_ boolean NOT NULL);
INSERT INTO review_block VALUES (true);
CREATE FUNCTION review_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT on_ FROM review_block) THEN
        RAISE EXCEPTION 'refused: began % failed %',
            extract(epoch FROM now()), extract(epoch FROM clock_timestamp())
            USING ERRCODE = 'P0001';
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER review_refuse AFTER INSERT ON events
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION review_refuse();
"""
TIMES = re.compile(r"refused: began ([0-9.]+) failed ([0-9.]+)")
GAPS = 25


async def test_a_failed_batch_is_tried_again_after_half_to_all_of_its_delay(
    broker, central_settings, pg_dsn
) -> None:
    """The wait after a failed batch is its delay times a jitter drawn from 0.5-1.0: group
    members that failed together do not retry in step, and none waits longer than the
    ``retry_s`` it logged. Each attempt's transaction start and failure are PostgreSQL's clock,
    in its refusal: from one failure to the next attempt's start is the wait plus a round trip
    of a few milliseconds. No wait is below half its delay; at least half are below the delay,
    and at most 3 of 25 above 1.25 times it (a slow turn of a loaded box may push a few past):
    ``_writer__mutmut_28`` (``delay / jitter``) and ``_33`` (jitter 1.0-1.5) never wait less
    than the delay; ``_34`` (0.5-2.0) waits above 1.25 times it in half the draws."""
    settings = central_settings(replay={"enabled": False}, database={"retry_max": 0.1})
    body = scan_event(1)
    async with (
        running_central(settings) as central,
        aiomqtt.Client(broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5) as client,
    ):
        admin = await asyncpg.connect(pg_dsn)
        try:
            await admin.execute(REFUSE_WITH_TIMES)
            with capture_logs() as logs:
                await client.publish(topic_of(body), raw(body), qos=1)
                await wait_until(lambda: central.totals["retries"] > GAPS, timeout=20)
            await admin.execute("UPDATE review_block SET on_ = false")
            await wait_until(lambda: central.totals["stored"] == 1, timeout=20)
        finally:
            await admin.close()
    failed = [line for line in logs if line["event"] == "batch_failed"][: GAPS + 1]
    times = [TIMES.search(line["error"]) for line in failed]
    assert all(times), failed
    began = [float(t.group(1)) for t in times if t]
    ended = [float(t.group(2)) for t in times if t]
    delays = [line["retry_s"] for line in failed]
    assert delays[:3] == [0.05, 0.1, 0.1], delays
    ratios = [(began[n + 1] - ended[n]) / delays[n] for n in range(GAPS)]
    assert min(ratios) >= 0.5 - 0.001, ratios  # microsecond clocks: rounding only
    assert sum(r < 1.0 for r in ratios) >= GAPS / 2, ratios
    assert sum(r > 1.25 for r in ratios) <= 3, ratios
