"""Presence: who is online, told cheaply and without flapping (design 5c).

- Going online is announced only after it has lasted `online_delay`, going
  offline only after `offline_grace` without any device: a reconnect or a
  flapping phone inside those windows announces nothing at all.
- An announcement goes only to the users who may see it (the user's contacts
  and conversation peers) and who are connected: its cost is proportional to
  them, never to all users.
- The announced state is what everyone reads (`GET /v1/presence` and events
  agree); `last_seen` is kept durably when a user goes offline.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Literal

from parley.presence.base import PresenceBackend
from parley.protocol.models import PresenceEvent
from parley.services.clock import now_ms
from parley.storage.base import Store

log = logging.getLogger(__name__)

#: A long-poll keeps its device online this long after it returns (contract: 30 s).
LONG_POLL_LINGER = 30.0

Status = Literal["online", "offline", "unknown"]


class PresenceService:
    def __init__(
        self,
        store: Store,
        backend: PresenceBackend,
        publish: Callable[[list[str], PresenceEvent], None],
        *,
        online_delay: float,
        offline_grace: float,
    ) -> None:
        self._store = store
        self._backend = backend
        self._publish = publish
        self.online_delay = online_delay
        self.offline_grace = offline_grace
        self._online: set[str] = set()  # announced online
        self._last_seen: dict[str, int] = {}  # of announced-offline users, cached
        self._pending: dict[str, asyncio.TimerHandle] = {}
        self._poll_expiry: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: Announcements made (status changes) and events sent, for metrics and benchmarks.
        self.announcements = 0
        self.events_sent = 0

    # connections ----------------------------------------------------------------------
    def connected(self, user_id: str, device_key: str) -> None:
        if self._backend.add_device(user_id, device_key) != 1:
            return
        self._cancel(user_id)
        if user_id not in self._online:
            self._schedule(user_id, self.online_delay, "online")

    def disconnected(self, user_id: str, device_key: str) -> None:
        if self._backend.remove_device(user_id, device_key) != 0:
            return
        self._cancel(user_id)
        now = now_ms()
        if user_id in self._online:
            self._schedule(user_id, self.offline_grace, "offline", now)
        else:
            # Online was never announced: nobody is told, but the time is kept.
            self._remember_last_seen(user_id, now)

    def long_poll_started(self, user_id: str, device_id: str) -> None:
        """A long-poll counts as a connected device until 30 s after it returns."""
        handle = self._poll_expiry.pop(device_id, None)
        if handle is not None:
            handle.cancel()
        else:
            self.connected(user_id, "poll:" + device_id)

    def long_poll_ended(self, user_id: str, device_id: str) -> None:
        loop = asyncio.get_running_loop()

        def expire() -> None:
            del self._poll_expiry[device_id]
            self.disconnected(user_id, "poll:" + device_id)

        self._poll_expiry[device_id] = loop.call_later(LONG_POLL_LINGER, expire)

    def is_connected(self, user_id: str) -> bool:
        """Has a device connected now (not the debounced, announced state)."""
        return self._backend.devices(user_id) > 0

    def offline_peer(
        self, conversation_type: str, member_ids: list[str], sender_id: str
    ) -> PresenceEvent | None:
        """For a send into a direct conversation whose peer has no device
        connected: the peer's presence, so the sender can show "not delivered"
        (design 5c, second optimisation). None otherwise."""
        if conversation_type != "direct":
            return None
        for peer in member_ids:
            if peer != sender_id and not self.is_connected(peer):
                return PresenceEvent(
                    user_id=peer, status="offline", last_seen=self._last_seen.get(peer)
                )
        return None

    # announcing -------------------------------------------------------------------------
    def _cancel(self, user_id: str) -> None:
        handle = self._pending.pop(user_id, None)
        if handle is not None:
            handle.cancel()

    def _schedule(
        self, user_id: str, delay: float, status: Status, last_seen: int | None = None
    ) -> None:
        def fire() -> None:
            # The state changes now, synchronously, so a connect right after
            # this sees it; only telling the audience waits on a lookup.
            self._pending.pop(user_id, None)
            if status == "online":
                self._online.add(user_id)
                self._last_seen.pop(user_id, None)
            else:
                self._online.discard(user_id)
                assert last_seen is not None
                self._remember_last_seen(user_id, last_seen)
            self._spawn(self._announce(user_id, status, last_seen))

        self._pending[user_id] = asyncio.get_running_loop().call_later(delay, fire)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _announce(self, user_id: str, status: Status, last_seen: int | None) -> None:
        try:
            audience = await self._store.presence_audience(user_id)
        except Exception:
            log.exception("presence audience lookup failed for %s", user_id)
            return
        targets = self._backend.connected_among(audience)
        self.announcements += 1
        self.events_sent += len(targets)
        if targets:
            self._publish(
                targets, PresenceEvent(user_id=user_id, status=status, last_seen=last_seen)
            )

    def _remember_last_seen(self, user_id: str, at: int) -> None:
        self._last_seen[user_id] = at
        self._spawn(self._store.set_last_seen(user_id, at))

    # reading -------------------------------------------------------------------------------
    async def query(
        self, viewer_id: str, user_ids: list[str]
    ) -> dict[str, tuple[Status, int | None]]:
        """Status and last_seen of each user as `viewer_id` may see them."""
        visible = await self._store.visible_to(viewer_id, user_ids)
        missing = [u for u in visible if u not in self._online and u not in self._last_seen]
        stored = await self._store.last_seen(missing) if missing else {}
        out: dict[str, tuple[Status, int | None]] = {}
        for user_id in user_ids:
            if user_id not in visible:
                out[user_id] = ("unknown", None)
            elif user_id in self._online:
                out[user_id] = ("online", None)
            else:
                out[user_id] = ("offline", self._last_seen.get(user_id, stored.get(user_id)))
        return out

    def close(self) -> None:
        for handle in (*self._pending.values(), *self._poll_expiry.values()):
            handle.cancel()
        self._pending.clear()
        self._poll_expiry.clear()
