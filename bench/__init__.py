"""Issue 8's benchmark suite: each module prints one JSON object on stdout (``bench/run_all``)."""

import contextlib
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import structlog

from simulators.broker import MosquittoBroker


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
