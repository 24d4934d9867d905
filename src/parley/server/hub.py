"""The connection registry (design 5a): user id → that user's open connections.

The hub subscribes to the bus for a user while the user has a connection or a
waiting long-poll on this node, and hands each event to every one of them.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from parley.bus.base import Bus
from parley.metrics import Metrics


class Connection(Protocol):
    """What the hub needs of a live connection (a WebSocket, today)."""

    user_id: str
    device_id: str

    def deliver(self, cursor: int | None, payload: bytes) -> None:
        """Queue one encoded event; never blocks."""

    def close_soon(self, code: int, reason: str) -> None: ...


class PollWaiter:
    """A long-poll waiting for a user's next logged event.

    It also keeps the events that arrive while it waits, already encoded: when
    they follow on from the poll's cursor, the poll answers with them instead
    of reading them back from storage.
    """

    __slots__ = ("events", "woken")

    def __init__(self) -> None:
        self.woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.events: list[tuple[int, bytes]] = []

    def events_after(self, since: int, limit: int) -> list[tuple[int, bytes]] | None:
        """The events kept, if they are exactly the next ones after `since`
        (no gap, nothing older); else None."""
        kept = self.events[:limit]
        if not kept or any(cursor != since + 1 + i for i, (cursor, _) in enumerate(kept)):
            return None
        return kept


class Hub:
    def __init__(self, bus: Bus, metrics: Metrics) -> None:
        self._bus = bus
        self._events_out = metrics.events_out
        self._connections: dict[str, set[Connection]] = {}
        self._waiters: dict[str, set[PollWaiter]] = {}
        self._watched: set[str] = set()

    # registry -----------------------------------------------------------------
    def attach(self, conn: Connection) -> None:
        conns = self._connections.setdefault(conn.user_id, set())
        conns.add(conn)
        self._watch(conn.user_id)

    def detach(self, conn: Connection) -> None:
        conns = self._connections.get(conn.user_id)
        if conns is not None:
            conns.discard(conn)
            if not conns:
                del self._connections[conn.user_id]
        self._unwatch_if_idle(conn.user_id)

    def count(self, user_id: str) -> int:
        return len(self._connections.get(user_id, ()))

    @property
    def total(self) -> int:
        return sum(len(c) for c in self._connections.values())

    def close_device(self, user_id: str, device_id: str, code: int, reason: str) -> None:
        for conn in list(self._connections.get(user_id, ())):
            if conn.device_id == device_id:
                conn.close_soon(code, reason)

    def close_all(self, code: int, reason: str) -> None:
        for conns in list(self._connections.values()):
            for conn in list(conns):
                conn.close_soon(code, reason)

    # long-poll ------------------------------------------------------------------
    def waiter(self, user_id: str) -> PollWaiter:
        """Wakes at the user's next logged event; `forget` it when done."""
        waiter = PollWaiter()
        self._waiters.setdefault(user_id, set()).add(waiter)
        self._watch(user_id)
        return waiter

    def forget(self, user_id: str, waiter: PollWaiter) -> None:
        waiters = self._waiters.get(user_id)
        if waiters is not None:
            waiters.discard(waiter)
            if not waiters:
                del self._waiters[user_id]
        self._unwatch_if_idle(user_id)

    # bus --------------------------------------------------------------------------
    def _watch(self, user_id: str) -> None:
        if user_id not in self._watched:
            self._watched.add(user_id)
            self._bus.subscribe(user_id, self._on_event)

    def _unwatch_if_idle(self, user_id: str) -> None:
        idle = user_id not in self._connections and user_id not in self._waiters
        if idle and user_id in self._watched:
            self._watched.discard(user_id)
            self._bus.unsubscribe(user_id)

    def _on_event(self, user_id: str, cursor: int | None, payload: bytes) -> None:
        conns = self._connections.get(user_id, ())
        for conn in list(conns):
            conn.deliver(cursor, payload)
        self._events_out.inc(len(conns))
        if cursor is not None:
            for waiter in self._waiters.get(user_id, ()):
                waiter.events.append((cursor, payload))
                if not waiter.woken.done():
                    waiter.woken.set_result(None)
