"""Opening a real input device with python-evdev: find it, grab it, read its events.

The only module that imports evdev, and only inside ``open_evdev``: tests feed the driver
recorded event streams through the same ``OpenedDevice`` shape, and ``check-config`` never
gets here. evdev is a C extension built against kernel headers; a box without it reports the
device down with an install hint instead of failing to start.
"""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from drivers.barcode_hid.config import BarcodeHidConfig
from drivers.barcode_hid.events import EV_KEY, InputEvent
from drivers.barcode_hid.keymap import KEY_ENTER

if TYPE_CHECKING:
    import evdev


@dataclass
class OpenedDevice:
    """An open input device as the driver needs it: a name, its events, a way to let go."""

    label: str
    events: AsyncIterator[InputEvent]
    close: Callable[[], None]


Opener = Callable[[BarcodeHidConfig], Awaitable[OpenedDevice]]
"""Opens the configured device; raises ``OSError`` when it is missing, busy or forbidden."""


async def open_evdev(config: BarcodeHidConfig) -> OpenedDevice:
    """Open (and by default grab) the configured device with python-evdev."""
    try:
        import evdev  # noqa: PLC0415 - lazy: only a device in use needs the C extension
    except ImportError as exc:
        raise OSError(errno.ENOPKG, f"python-evdev is not installed ({exc})") from None
    path = config.path or _find(config)
    device = evdev.InputDevice(path, readonly=True)  # no LEDs to set: read is all we need
    try:
        if config.grab:
            device.grab()  # EBUSY if another program (a kiosk, another gateway) grabbed it
    except OSError:
        device.close()
        raise
    label = f"{path} ({device.name})"
    return OpenedDevice(label=label, events=_read(device), close=device.close)


def _find(config: BarcodeHidConfig) -> str:
    """The one keyboard-like event device with the configured vendor and product id."""
    import evdev  # noqa: PLC0415 - see open_evdev

    matches: list[str] = []
    for path in evdev.list_devices(writable=False):
        try:
            device = evdev.InputDevice(path, readonly=True)
        except OSError:
            continue  # vanished or forbidden while we looked: not ours to report
        try:
            info = device.info
            keys = device.capabilities().get(EV_KEY, [])
            if (info.vendor, info.product) == (config.vendor_id, config.product_id) and (
                KEY_ENTER in keys  # a scanner's consumer-control or mouse node has no Enter
            ):
                matches.append(path)
        finally:
            device.close()
    wanted = config.describe()
    if not matches:
        raise FileNotFoundError(errno.ENOENT, f"no input device {wanted}")
    if len(matches) > 1:
        # Two scanners of one model must not share a device id: make the technician choose.
        raise OSError(errno.EEXIST, f"{len(matches)} devices match {wanted}: set path instead")
    return matches[0]


async def _read(device: evdev.InputDevice[str]) -> AsyncIterator[InputEvent]:
    async for event in device.async_read_loop():
        yield InputEvent(event.sec, event.usec, event.type, event.code, event.value)
