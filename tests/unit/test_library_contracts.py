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
from gmqtt.storage import PersistentStorage

from buffer.connection import BufferConnection
from gateway.mqtt_link import _AckStore
from gateway.mqtt_packets import bounded_read_packet


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


def test_gmqtt_storage_hook_sees_every_stored_and_acknowledged_mid() -> None:
    """gateway/mqtt_link.py: gmqtt calls ``persistent_storage.push_message(mid, raw)`` for each
    QoS 1 publish it writes and ``remove_message_by_mid(mid)`` on its PUBACK, keeping the
    messages in ``_messages``; the client takes the store as ``persistent_storage``."""
    acked: list[int] = []
    store = _AckStore(acked.append)
    assert isinstance(store._messages, dict), "gmqtt PersistentStorage._messages changed"
    store.push_message(7, b"raw")
    assert store.last_mid == 7
    store.remove_message_by_mid(7)
    store.remove_message_by_mid(7)  # a second PUBACK for a freed mid is not a second ack
    assert acked == [7]
    client = gmqtt.Client("contract", persistent_storage=store)
    assert client._persistent_storage is store, "gmqtt.Client(persistent_storage=) changed"
    assert issubclass(_AckStore, PersistentStorage)
    for name in ("push_message", "remove_message_by_mid"):
        assert name in vars(PersistentStorage), f"gmqtt PersistentStorage.{name} is gone"


def test_gmqtt_parses_packets_in_a_method_we_bound() -> None:
    """gateway/mqtt_packets.py: gmqtt's read loop calls ``MQTTProtocol._read_packet(data)``, which
    returns the bytes parsed or -1 to end the loop; the link replaces it with a bounded one."""
    assert MQTTProtocol._read_packet is bounded_read_packet, "gmqtt's parser is not bounded"
    assert "_read_packet" in MQTTProtocol._read_loop.__code__.co_names, "gmqtt's read loop changed"


def test_gmqtt_publish_and_puback_parts_the_link_uses_directly() -> None:
    """gateway/mqtt_link.py builds PUBLISHes itself (``_Wire``) and handles PUBACKs itself: it
    takes packet ids from the protocol's ``id_generator`` (the handler's, which frees them),
    writes with ``protocol.write_data`` (which notes the time for keepalive), reads the
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
