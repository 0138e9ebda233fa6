"""``edge-gateway demo``: the gateway, the central ingest and simulated devices on one machine.

Above both halves (it runs :mod:`gateway` and :mod:`central` together), so it adds its command
to ``edge-gateway`` through the ``edge_gateway.commands`` entry points (gateway/cli_commands.py)
instead of the gateway's command line importing it.
"""
