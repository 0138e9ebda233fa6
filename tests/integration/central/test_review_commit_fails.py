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
