"""The ``barcode-serial`` driver: serial barcode scanners, AIM identifiers and GS1 parsing.

Nothing is imported here on purpose: ``config`` must load without pyserial (check-config), and
``driver`` is imported by the registry only when a device uses it.
"""
