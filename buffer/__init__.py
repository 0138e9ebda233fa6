"""The SQLite store-and-forward buffer: the single source of truth for every event's state."""
