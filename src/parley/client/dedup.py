"""Remembering which message seqs were already handed to the application.

A reconnect replays from the last cursor, and a server may replay a little more
than asked after a crash; the application must still see every message once.
"""

from __future__ import annotations


class SeqSet:
    """The seqs seen in one conversation, stored as a low watermark plus stragglers.

    Seqs arrive almost always in order, so the set stays a single integer; only
    seqs seen above a gap are kept individually, until the gap fills. A client
    that joins a conversation's stream late never fills the gap below its first
    seq, so past `max_stragglers` the oldest gap is given up (treated as seen).
    """

    __slots__ = ("_above", "_low", "_max")

    def __init__(self, max_stragglers: int = 1024) -> None:
        self._low = 0  # every seq <= _low has been seen
        self._above: set[int] = set()
        self._max = max_stragglers

    def add(self, seq: int) -> bool:
        """Record `seq`; False if it had been seen before (a duplicate)."""
        if seq <= self._low or seq in self._above:
            return False
        if seq == self._low + 1:
            self._low = seq
        else:
            self._above.add(seq)
            if len(self._above) > self._max:
                self._low = min(self._above)
                self._above.discard(self._low)
        while self._low + 1 in self._above:
            self._low += 1
            self._above.discard(self._low)
        return True

    def __contains__(self, seq: object) -> bool:
        return isinstance(seq, int) and (seq <= self._low or seq in self._above)


class MessageDedup:
    """`(conversation_id, seq)` pairs already delivered to the application."""

    def __init__(self) -> None:
        self._seen: dict[str, SeqSet] = {}

    def add(self, conversation_id: str, seq: int) -> bool:
        """Record the message; False if it is a duplicate."""
        seen = self._seen.get(conversation_id)
        if seen is None:
            seen = self._seen[conversation_id] = SeqSet()
        return seen.add(seq)

    def seen(self, conversation_id: str, seq: int) -> bool:
        seen = self._seen.get(conversation_id)
        return seen is not None and seq in seen
