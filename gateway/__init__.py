"""The edge-gateway daemon core: CLI, supervisor, pipeline, publisher, confirmations, settings."""

__version__ = "0.1.0"
