"""Claims made ahead: a commit inserts the publisher's next events already in flight.

At full speed the publisher's pump asked for a claim after nearly every commit: a transaction
of its own on the SQLite thread that read back the rows the commit had just written (a SELECT,
an object per row) and rewrote each of them to mark it in flight. When no older event is
pending, the commit can insert its rows in flight itself, up to the room the pump left in its
window, and the buffer hands them to the pump from memory at its next claim
(:meth:`buffer.store.Buffer.claim`). The order holds (nothing older waits, so these are the
oldest pending events there would have been), and no row is claimed twice (none is ever
pending).

"No pending row exists" is only known exactly in the order the writes run on the SQLite
thread, so that is where it is kept and read: every write that may leave a pending row clears
it there (a commit with more rows than room, a release, an unhold, a commit that had to make
room), a claim that took every pending row sets it there, and a transaction rolled back as a
whole clears it before the next one starts (buffer/connection.py's ``rolled_back``). The event
loop only widens the room (the pump's window) and learns what each commit claimed. One lock
guards the three figures; each use holds it for a few lines.
"""

from __future__ import annotations

import threading


class CommitClaim:
    """One commit's claim ahead, as the SQLite thread made it (or refused: abandoned)."""

    __slots__ = ("abandoned", "ahead")

    def __init__(self) -> None:
        self.ahead = 0
        """Events of the commit inserted in flight."""
        self.abandoned = False
        """Its caller stopped waiting (failed or cancelled): a take still to come claims none."""


class ClaimsAhead:
    """The room commits may fill in flight, and whether any pending row exists."""

    __slots__ = ("_lock", "_none_pending", "_outstanding", "_room")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._none_pending = False
        """No pending row exists, as of the last write run on the SQLite thread (False at open:
        the reset puts rows back to pending)."""
        self._room = 0
        """Events the next commits may insert in flight for the pump."""
        self._outstanding = 0
        """Events commits claimed ahead that the pump has not been handed (nor were dropped).
        The pump's window holds them already: room is what is left of it beside them."""

    @property
    def outstanding(self) -> int:
        """Events claimed ahead the pump has not been handed yet (an int read: no lock)."""
        return self._outstanding

    @property
    def none_pending(self) -> bool:
        """No pending row exists as of the last write run (a bool read: no lock needed)."""
        return self._none_pending

    # --- on the SQLite thread, inside the write that changes what is pending ----------------

    def take(self, rows: int, claim: CommitClaim) -> int:
        """A commit inserting ``rows`` events: how many of its first ones go in in flight.

        None unless no pending row exists (an event claimed ahead must not overtake an older
        one still pending), nor when the commit's caller is gone (``claim.abandoned``). Rows
        beyond the room go in pending, and from then on pending rows exist.
        """
        with self._lock:
            ahead = min(self._room, rows) if self._none_pending and not claim.abandoned else 0
            self._room -= ahead
            self._outstanding += ahead
            claim.ahead = ahead
            if ahead < rows:
                self._none_pending = False
                self._room = 0
            return ahead

    def pending_made(self) -> None:
        """A write that may leave a pending row ran (or a transaction was rolled back)."""
        with self._lock:
            self._none_pending = False
            self._room = 0

    def pending_taken(self, room: int) -> None:
        """A claim took every pending row there was, with ``room`` left of its limit.

        What is outstanding now (claimed ahead, not handed to the pump yet) comes off. The
        claim's limit already left out what was outstanding when it was asked
        (:meth:`buffer.store.Buffer.claim`), so that part comes off twice: the room is never
        more than the window, at times less.
        """
        with self._lock:
            self._none_pending = True
            self._room = max(0, room - self._outstanding)

    # --- on the event loop -------------------------------------------------------------------

    def handed(self, events: int) -> None:
        """``events`` claimed ahead were handed to the pump, or dropped (never handed).

        Negative: claimed rows the pump had no room for went back to be handed later.
        """
        if events:
            with self._lock:
                self._outstanding -= events

    def abandon(self, claim: CommitClaim) -> None:
        """The commit's caller stopped waiting: whatever it claimed is never handed out."""
        with self._lock:
            claim.abandoned = True
            self._outstanding -= claim.ahead

    def widen(self, window: int) -> None:
        """The pump asked for up to ``window`` events and nothing was there: room for them.

        Less what commits claimed ahead and the pump has not been handed yet, so that it is
        never handed more than its window. Only while no pending row exists: otherwise its next
        claim reads them, and commits insert theirs pending behind them.
        """
        with self._lock:
            if self._none_pending:
                self._room = max(0, window - self._outstanding)

    def close_room(self) -> None:
        """The pump's session is over: no commit claims for it any more."""
        with self._lock:
            self._room = 0
