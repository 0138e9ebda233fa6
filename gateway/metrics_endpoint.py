"""``/metrics`` over HTTP for one Prometheus registry: the gateway's and edge-central's alike."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, start_http_server


class MetricsEndpoint:
    """Serves ``registry`` from prometheus-client's own thread until :meth:`close`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._server: Any = None

    def serve(self, listen: str) -> None:
        """Expose ``/metrics`` on ``host:port`` (``[::1]:9100`` for IPv6; no host: loopback)."""
        host, _, port = listen.rpartition(":")
        self._server, _thread = start_http_server(
            int(port), addr=host.strip("[]") or "127.0.0.1", registry=self.registry
        )

    def close(self) -> None:
        """Stop serving (the port is free again for a restart or a reload)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
