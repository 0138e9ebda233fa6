"""Event ids as the buffer stores them: a UUID's 16 bytes instead of its 36 characters.

The id is on every row and in its unique index, so the text form cost 40 bytes per event, a
tenth of a typical scan's payload (issue 8 limits the file to 1.5x the payload bytes). Only
the canonical lower-case form the gateway generates is packed, so unpacking gives back exactly
the string that was stored; any other id (none today) is kept as text, which SQLite's dynamic
typing allows in the same column.
"""

from __future__ import annotations


def id_key(event_id: str) -> bytes | str:
    """The stored form of ``event_id``: 16 bytes for a canonical UUID, else the text itself."""
    if len(event_id) != 36 or not (
        event_id[8] == event_id[13] == event_id[18] == event_id[23] == "-"
    ):
        return event_id
    compact = event_id.replace("-", "")
    try:
        packed = bytes.fromhex(compact)
    except ValueError:
        return event_id
    # fromhex also takes upper case and spaces: pack only what unpacks to the same text.
    return packed if len(compact) == 32 and packed.hex() == compact else event_id


def id_text(stored: object) -> str:
    """The id as it was given to :func:`id_key`."""
    if isinstance(stored, bytes):
        h = stored.hex()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    return str(stored)
