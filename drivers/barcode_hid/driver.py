"""The ``barcode-hid`` driver: a keyboard-wedge scanner's keystrokes in, scan events out.

Only the HID transport lives here: opening (and grabbing) the input device, and decoding key
events to text with the configured layout. The decoded text goes through the same framing,
AIM, GS1, repeat suppression, counters and reconnect loop as a serial scanner's bytes
(``drivers.barcode_common``), so central systems cannot tell the two apart.
"""

from __future__ import annotations

import contextlib
import errno

from drivers.barcode_common.driver import BarcodeDriver, describe_os_error
from drivers.barcode_common.framing import FrameMode
from drivers.barcode_hid.config import BarcodeHidConfig
from drivers.barcode_hid.device import OpenedDevice, Opener, open_evdev
from drivers.barcode_hid.keymap import LAYOUTS, KeyDecoder
from drivers.base import EmitFn, Outcome, StatusFn

_HINTS = {
    errno.EACCES: "add the service user to the 'input' group",
    errno.EBUSY: "grabbed by another program",
    errno.ENOPKG: "install it: pip install evdev (needs gcc and kernel headers)",
}


class BarcodeHidDriver(BarcodeDriver[BarcodeHidConfig]):
    """Reads a USB HID (keyboard-wedge) barcode scanner; see ``drivers/barcode_hid/README.md``.

    ``opener`` is how the device is opened: python-evdev by default; tests pass one that
    returns recorded or synthesized event streams.
    """

    config_model = BarcodeHidConfig
    garbage_hint = "check layout (the scanner's keyboard country) and its terminator key"

    def __init__(
        self,
        config: BarcodeHidConfig,
        *,
        emit: EmitFn,
        report_status: StatusFn,
        opener: Opener | None = None,
    ) -> None:
        super().__init__(config, emit=emit, report_status=report_status)
        self._opener: Opener = opener or open_evdev

    def frame_mode(self) -> FrameMode:
        """The configured terminator key, as the framer sees it."""
        return self.config.frame_mode()

    def feedback_now(self, outcome: Outcome) -> bool:
        """Done at once: there is nothing to send (see :meth:`feedback`)."""
        del outcome
        return True

    async def feedback(self, outcome: Outcome) -> None:
        """Nothing to send: a keyboard wedge has no host-to-scanner channel for beeps.

        The scanner's own beep on decoding is all the worker gets; confirmation levels still
        apply to what is stored and published.
        """
        del outcome

    async def _session(self) -> str:
        """One open-read-close cycle of the device; returns why it ended."""
        where = self.config.describe()
        try:
            device = await self._opener(self.config)
        except OSError as exc:
            self.count("open_failures")
            return f"cannot open {where}: {_reason(exc)}"
        self._mark_up(f"open {device.label}")
        self._log.debug("device_open", device_path=device.label, grab=self.config.grab)
        try:
            reason = await self._read_loop(device)
        except OSError as exc:  # ENODEV when unplugged
            reason = f"read failed on {where}: {_reason(exc)}"
        finally:
            await _aclose(device)
        self.count("disconnects")
        return reason

    async def _read_loop(self, device: OpenedDevice) -> str:
        decoder = KeyDecoder(LAYOUTS[self.config.layout])
        repeats = 0
        async for event in device.events:
            text = decoder.feed(event)
            if decoder.repeats != repeats:
                self.count("autorepeats", decoder.repeats - repeats)
                repeats = decoder.repeats
            if text:
                await self._feed(text.encode("utf-8"))
        return f"{self.config.describe()} closed (end of events)"


def _reason(exc: OSError) -> str:
    """The error's own words (they name the device when ours), plus what to do about it."""
    text = exc.strerror or describe_os_error(exc)
    hint = _HINTS.get(exc.errno or 0)
    return f"{text} ({hint})" if hint else text


async def _aclose(device: OpenedDevice) -> None:
    """Finish the event generator (if it is one), then release the device and its grab."""
    aclose = getattr(device.events, "aclose", None)
    try:
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()
    finally:
        device.close()
