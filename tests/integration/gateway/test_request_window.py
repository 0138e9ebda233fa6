"""Found by the second review of issue 13 (fixed; the text says what went wrong before): which refused replay commands are remembered in the request_id window.

docs/confirmation.md: "a refused (busy, rate limited) command is not remembered and may be sent
again with the same id". The "busy" refusal of the span admission (gateway/replay.py
``_admission_problem``, "busy: replays already queued cover N events ... retry later") comes
after gateway/inbound.py has already added the request_id to the window (``submit`` returned
None): the retry with the same id is dropped as a duplicate, with no answer, for 24 hours.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from buffer.store import Buffer
from gateway.confirmations import Confirmations
from gateway.inbound import Inbound
from gateway.replay import ReplayWorker
from gateway.topics import Topics
from tests.integration.gateway.test_broker_refusals import scan

TOPICS = Topics("edge/site-test/gw-test")


async def test_busy_refused_replay_may_be_sent_again_with_the_same_request_id(
    tmp_path: Path,
) -> None:
    buf = await Buffer.open(tmp_path / "buffer.db", max_bytes=10**9)
    for n in range(1, 4):
        await buf.append(scan(n, f"A{n}"))
    claimed = await buf.claim(10)
    await buf.mark_sent(claimed)
    answers: list[dict[str, Any]] = []
    never = asyncio.Event()  # the broker is away: the running replay waits for it

    async def send(_topic: str, _payload: bytes) -> None:
        raise AssertionError("not connected")

    async def connected() -> None:
        await never.wait()

    worker = ReplayWorker(
        buf,
        TOPICS,
        send=send,
        connected=connected,
        answer=lambda body: answers.append(json.loads(body)),
        rate=500.0,
    )
    box = Inbound(
        buf,
        Confirmations(lambda _d, _o: None),
        TOPICS,
        worker,
        answer=lambda body: answers.append(json.loads(body)),
    )
    wtask = asyncio.create_task(worker.run())
    try:

        def command(rid: str, from_seq: int, to_seq: int) -> None:
            body = {"request_id": rid, "device": "dock", "from_seq": from_seq, "to_seq": to_seq}
            assert box.handle(TOPICS.cmd_replay, json.dumps(body).encode()) is None

        command("running", 1, 3)  # runs, waiting for the broker
        await asyncio.sleep(0.2)
        command("big", 1, 1_000_000)  # waits, covering the whole queued span
        await asyncio.sleep(0.2)
        command("r3", 1, 2)
        async with asyncio.timeout(5):
            while not any(a["request_id"] == "r3" for a in answers):
                await asyncio.sleep(0.02)
        first = [a for a in answers if a["request_id"] == "r3"]
        assert first[0]["ok"] is False and "retry later" in first[0]["detail"], first
        # "retry later": central sends the same command again (the docs allow the same id)
        await asyncio.sleep(0.5)
        command("r3", 1, 2)
        await asyncio.sleep(1.0)
        again = [a for a in answers if a["request_id"] == "r3"]
        assert len(again) == 2, (
            f"the retry of a busy-refused command got no answer and was not queued:"
            f" answers {again}, counters {dict(box.counters)}"
        )
    finally:
        wtask.cancel()
        await asyncio.gather(wtask, return_exceptions=True)
        await buf.close()
