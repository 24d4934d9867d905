"""The in-process bus: enough for one node, and the twin of the NATS bus.

Payloads cross it as bytes, exactly as they would cross NATS, so the
single-node path exercises the same wire format as a cluster.
"""

from __future__ import annotations

from parley.bus.base import Bus, Handler


class MemoryBus(Bus):
    """Delivers synchronously, so per-user order is publish order. Stops being
    enough when a user's connections may live on another process."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def publish(self, user_id: str, cursor: int | None, payload: bytes) -> None:
        handler = self._handlers.get(user_id)
        if handler is not None:
            handler(user_id, cursor, payload)

    def subscribe(self, user_id: str, handler: Handler) -> None:
        self._handlers[user_id] = handler

    def unsubscribe(self, user_id: str) -> None:
        self._handlers.pop(user_id, None)
