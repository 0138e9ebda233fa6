"""The ``rfid-llrp`` driver: RFID readers over LLRP, tag smoothing into arrivals and departures.

Nothing is imported here on purpose: ``config`` must load without sllurp (check-config), and
``driver`` is imported by the registry only when a device uses it.
"""
