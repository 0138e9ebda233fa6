"""What every barcode driver shares: framing, AIM identifiers, GS1, scan events, reconnects.

The serial and USB HID drivers differ only in how bytes reach them; a scan must look the same
to central systems whichever cable the scanner hangs on. Nothing is imported here on purpose:
``config`` must load without biip or device libraries (check-config).
"""
