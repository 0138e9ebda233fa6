"""MQTT topic names (contract section 6), derived from one root."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Topics:
    """Every topic the gateway publishes or subscribes to, under ``root``."""

    root: str

    @property
    def status(self) -> str:
        """Retained gateway online/offline, also the last will."""
        return f"{self.root}/status"

    @property
    def checkpoint(self) -> str:
        """Retained per-device parity figures."""
        return f"{self.root}/checkpoint"

    @property
    def confirm(self) -> str:
        """Central -> gateway: accepted/rejected by event id."""
        return f"{self.root}/confirm"

    @property
    def cmd_replay(self) -> str:
        """Central -> gateway: re-publish a seq range."""
        return f"{self.root}/cmd/replay"

    @property
    def cmd_result(self) -> str:
        """Gateway -> central: answers to commands."""
        return f"{self.root}/cmd/result"

    def events(self, device: str) -> str:
        """Where one device's CloudEvents go."""
        return f"{self.root}/events/{device}"

    def device_status(self, device: str) -> str:
        """Retained up/down state of one device."""
        return f"{self.root}/devices/{device}/status"
