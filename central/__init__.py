"""The central ingest: MQTT 5 shared subscription -> validated, deduplicated PostgreSQL ledger.

It is the other half of single-touch confirmation: ``accepted`` is published only after the
event committed, and each incoming event's PUBACK waits for that commit too.
"""
