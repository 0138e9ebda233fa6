"""Found by the second review of issue 13 (fixed; the text says what went wrong before): a refusing PUBACK for a packet id not in use poisons the next message with that id.

gateway/mqtt_link.py ``_read_puback_reasons`` notes ``_refusals[mid]`` *before* gmqtt looks the
mid up; for a mid gmqtt does not hold (a stray or duplicate PUBACK) nothing pops it. The next
message given that mid gets a success PUBACK, ``_acked`` pops the stale refusal and reports the
delivered message as refused: the publisher holds an event the broker took (sent again next
session: a steady-state duplicate, and its delivered feedback never given).
"""

from __future__ import annotations

import asyncio

from gateway.mqtt_link import MqttLink
from gateway.settings import MqttSection


async def test_a_stray_refusing_puback_does_not_refuse_the_next_message() -> None:
    got_publish = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)  # CONNECT
        writer.write(b"\x20\x03\x00\x00\x00")  # CONNACK, success, no properties
        writer.write(b"\x40\x03\x00\x01\x87")  # stray PUBACK: mid 1, 0x87 not authorized
        await writer.drain()
        data = await reader.read(4096)  # our PUBLISH (mid 1)
        assert data[:1] == b"\x32", data[:8]
        got_publish.set()
        writer.write(b"\x40\x02\x00\x01")  # PUBACK mid 1, success
        await writer.drain()
        await asyncio.sleep(5)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    acked: list[int] = []
    refused: list[tuple[int, int]] = []
    link = MqttLink(
        MqttSection(host="127.0.0.1", port=port),
        "victim",
        on_ack=acked.append,
        on_refused=lambda mid, reason: refused.append((mid, reason)),
    )
    try:
        await link.connect()
        await asyncio.sleep(0.3)  # the stray PUBACK is read
        mid = link.send("edge/s/g/events/dock", b'{"seq":1}')
        async with asyncio.timeout(5):
            await got_publish.wait()
            while not acked and not refused:
                await asyncio.sleep(0.02)
    finally:
        await link.close()
        server.close()
    assert acked == [mid] and not refused, (
        f"the broker took mid {mid} (success PUBACK) but the link reports refused {refused},"
        f" acked {acked}"
    )
