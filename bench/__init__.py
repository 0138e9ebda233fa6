"""Issue 8's benchmark suite: each module prints one JSON object on stdout (``bench/run_all``)."""

import sys

import structlog


def logs_to_stderr() -> None:
    """Send structlog to stderr: a bench's stdout is its one JSON result and nothing else."""
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
