"""What we rely on inside libraries that do not promise it: fails loudly when an upgrade changes it.

Each private name used by the code is exercised here the way the code uses it, so a version
bump that renames or reshapes it breaks this file, with a message naming the dependent module,
instead of breaking durability or acknowledgement tracking in a way only a chaos run might see.
"""

from __future__ import annotations

import ast
import inspect
import sqlite3
import textwrap
from pathlib import Path

import aiosqlite
import gmqtt
from gmqtt.mqtt.protocol import MQTTProtocol

from buffer.connection import BufferConnection
from gateway.mqtt_link import MqttLink
from gateway.mqtt_packets import bounded_read_packet
from gateway.settings import MqttSection


async def test_aiosqlite_runs_a_function_on_its_thread_with_the_raw_connection(
    tmp_path: Path,
) -> None:
    """buffer/connection.py: ``Connection._execute(fn, Connection._conn)`` runs ``fn`` with the
    ``sqlite3.Connection`` on aiosqlite's thread and returns its result, one call per round trip."""
    raw = await aiosqlite.connect(tmp_path / "c.db", isolation_level=None)
    try:
        assert isinstance(raw._conn, sqlite3.Connection), "aiosqlite.Connection._conn changed"
        assert callable(raw._execute), "aiosqlite.Connection._execute changed"
        db = BufferConnection(raw)
        assert (
            await db.write(lambda c: c.execute("CREATE TABLE t (x)").rowcount, durable=True) == -1
        )
        assert (
            await db.write(lambda c: c.execute("INSERT INTO t VALUES (1)").rowcount, durable=False)
            == 1
        )
        assert await db.read(lambda c: c.execute("SELECT count(*) FROM t").fetchone()[0]) == 1
        assert await db.read(lambda c: c.execute("PRAGMA synchronous").fetchone()[0]) == 1, (
            "the last write asked for NORMAL (1) and set it itself"
        )
    finally:
        await raw.close()


def test_gmqtt_numbers_its_packets_from_the_generator_the_link_installs() -> None:
    """gateway/mqtt_link.py puts its own packet ids (``_PacketIds``) in the handler's
    ``id_generator`` before connecting and its own PUBACK handler in ``_handle_puback_packet``:
    gmqtt's SUBSCRIBE and UNSUBSCRIBE builders take ids from the protocol's generator with
    ``next_id()``, its SUBACK and UNSUBACK handlers free them with ``free_id``, CONNACK sets
    its ``_max`` (the broker's Receive Maximum), and the handler finds its PUBACK handler by
    name when the first PUBACK comes. gmqtt's persistent storage is only written by
    ``Client.publish``, which the link does not call: it stays empty, so gmqtt has nothing
    to replay."""
    from gmqtt.mqtt.handler import MqttPackageHandler  # noqa: PLC0415
    from gmqtt.mqtt.package import SubscribePacket, UnsubscribePacket  # noqa: PLC0415

    for builder in (SubscribePacket, UnsubscribePacket):
        assert "protocol.id_generator.next_id()" in inspect.getsource(builder.build_package)
    for handle in ("_handle_suback_packet", "_handle_unsuback_packet"):
        source = inspect.getsource(getattr(MqttPackageHandler, handle))
        assert "self.id_generator.free_id(mid)" in source, f"gmqtt's {handle} changed"
    assert "self.id_generator._max = " in inspect.getsource(
        MqttPackageHandler._apply_receive_maximum
    ), "gmqtt no longer applies the broker's Receive Maximum to its id generator"
    assert "getattr(" in inspect.getsource(MqttPackageHandler.__get_handler__)
    assert "push_message" in inspect.getsource(gmqtt.Client.publish)
    link = MqttLink(MqttSection(host="127.0.0.1", port=1), "contract")
    handler = link._client._package_handler
    assert handler.id_generator is link._ids
    assert handler._handle_puback_packet == link._puback
    assert link._client._persistent_storage.is_empty


def test_gmqtt_parses_packets_in_a_method_we_bound() -> None:
    """gateway/mqtt_packets.py: gmqtt's read loop calls ``MQTTProtocol._read_packet(data)``, which
    returns the bytes parsed or -1 to end the loop; the link replaces it with a bounded one."""
    assert MQTTProtocol._read_packet is bounded_read_packet, "gmqtt's parser is not bounded"
    assert "_read_packet" in MQTTProtocol._read_loop.__code__.co_names, "gmqtt's read loop changed"


def test_gmqtt_publish_and_puback_parts_the_link_uses_directly() -> None:
    """gateway/mqtt_link.py builds PUBLISHes itself (``_Wire``) and handles PUBACKs itself: it
    gives the protocol its packet ids through the handler's ``id_generator`` (with gmqtt's
    ``next_id``/``free_id``), writes with ``protocol.write_data`` (which notes the time for keepalive), reads the
    protocol version from ``proto_ver``, and replaces ``_handle_puback_packet``, which in gmqtt
    does no more than free the id and remove the message from the persistent storage."""
    from gmqtt.mqtt.connection import MQTTConnection  # noqa: PLC0415
    from gmqtt.mqtt.handler import MqttPackageHandler  # noqa: PLC0415
    from gmqtt.mqtt.utils import IdGenerator  # noqa: PLC0415

    assert "id_generator=package_handler.id_generator" in inspect.getsource(
        MQTTConnection.create_connection
    ), "gmqtt's protocol no longer shares the handler's packet ids"
    assert "_last_data_out" in inspect.getsource(MQTTProtocol.write_data)
    assert isinstance(MQTTProtocol.proto_ver, property)
    for name in ("next_id", "free_id"):
        assert callable(getattr(IdGenerator, name, None)), f"gmqtt IdGenerator.{name} is gone"
    body = inspect.getsource(MqttPackageHandler._handle_puback_packet)
    calls = {
        n.func.attr
        for n in ast.walk(ast.parse(textwrap.dedent(body)))
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
    }
    assert calls == {"unpack", "debug", "free_id", "_remove_message_from_queue"}, (
        f"gmqtt's PUBACK handler changed: it now calls {sorted(calls)}"
    )
    client = gmqtt.Client("contract")
    assert "remove_message_by_mid" in inspect.getsource(client._remove_message_from_queue)
    assert client._package_handler._remove_message_callback == client._remove_message_from_queue
