"""The bus carries committed events to the node that holds a user's connections.

Contract: at-most-once, in publish order per user. The durable event log is
the source of truth: a subscriber that misses an event (a node restarted, a
subscription came late) finds it by cursor. `cursor` is None for live-only
events (presence, typing), which are never replayed.
"""

from __future__ import annotations

import abc
from collections.abc import Callable

#: Called with (user_id, cursor, encoded event) for every event of a subscribed user.
Handler = Callable[[str, int | None, bytes], None]


class Bus(abc.ABC):
    @abc.abstractmethod
    def publish(self, user_id: str, cursor: int | None, payload: bytes) -> None:
        """Send one encoded event towards every subscriber of `user_id`; never blocks."""

    @abc.abstractmethod
    def subscribe(self, user_id: str, handler: Handler) -> None:
        """Start receiving `user_id`'s events (one handler per user per node)."""

    @abc.abstractmethod
    def unsubscribe(self, user_id: str) -> None: ...

    async def close(self) -> None:  # noqa: B027 - optional hook, nothing to close in memory
        """Release connections to a broker, if any."""
