"""Issue 8's benchmark suite: each module prints one JSON object on stdout (``bench/run_all``)."""

import contextlib
import json
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import structlog

from simulators.broker import MosquittoBroker

BARE_WINDOW = 200
"""PUBLISHes awaiting their PUBACK in the benches' floors (the broker's Receive Maximum caps it)."""

BARE_TOPIC = "edge/bench/gw/events/dev0"
"""The one topic the floors publish on."""

BARE_PAYLOAD = json.dumps(
    {
        "specversion": "1.0",
        "id": "0190a3b4-1111-7222-8333-444455556666",
        "source": "/bench/gw/dev0",
        "type": "warehouse.barcode.scanned.v1",
        "time": "2026-11-24T00:00:00.000000Z",
        "seq": 1,
        "datacontenttype": "application/json",
        "data": {"code": "0000000000"},
    }
).encode()
"""One event's CloudEvent, the same bytes for every message the floors publish."""


def logs_to_stderr() -> None:
    """Send structlog to stderr: a bench's stdout is its one JSON result and nothing else."""
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))


@contextlib.contextmanager
def private_broker() -> Iterator[tuple[Path, MosquittoBroker]]:
    """A temporary directory with a Mosquitto of our own (TCP_NODELAY on), both gone after."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        broker = MosquittoBroker(root / "broker")
        broker.start()
        try:
            yield root, broker
        finally:
            broker.stop()
