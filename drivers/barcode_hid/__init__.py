"""The ``barcode-hid`` driver: USB keyboard-wedge scanners read through evdev.

Nothing is imported here on purpose: ``config`` must load without evdev (check-config), and
``driver`` is imported by the registry only when a device uses it.
"""
