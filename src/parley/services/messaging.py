"""Conversations, messages, receipts and event logs: the messenger's rules.

Everything durable goes through the store; everything live goes through the
bus, and only after the store has committed it ("publish after commit").
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import msgspec

from parley.bus.base import Bus
from parley.metrics import Metrics
from parley.protocol.errors import CursorExpired, InvalidRequest, NotFound, RateLimited
from parley.protocol.models import Conversation, Event, LoggedEvent, Message
from parley.services.clock import now_ms
from parley.services.ids import new_id, new_message_id
from parley.services.ratelimit import KeyedLimiter
from parley.storage.base import Committed, ConversationRecord, SendOutcome, Store

_encode = msgspec.json.Encoder().encode
T = TypeVar("T")

#: Most events one long-poll answer or one replay read returns at a time.
EVENTS_PAGE = 500


class MessagingService:
    def __init__(self, store: Store, bus: Bus, metrics: Metrics, *, send_rate: float = 0.0) -> None:
        self._store = store
        self._bus = bus
        self._metrics = metrics
        # Per device, shared by its HTTP requests and its sockets. Bursts of ten
        # seconds' worth: the default 100/s admits bursts of 1000. 0: no limit.
        self._send_limits = KeyedLimiter(send_rate, send_rate * 10)
        #: Called with every newly stored message once it is durable and its
        #: events are published (push notifications hang off this). Must not block.
        self.on_message: Callable[[SendOutcome], None] | None = None

    # publishing -----------------------------------------------------------------
    def _publish_committed(self, future: asyncio.Future[Any], started: float = 0.0) -> None:
        """Done-callback on a store write: publish its events, in commit order."""
        if future.cancelled() or future.exception() is not None:
            return
        outcome: Committed = future.result()
        for user_id, event in outcome.events:
            self._bus.publish(user_id, event.cursor, _encode(event))
        if isinstance(outcome, SendOutcome) and not outcome.duplicate:
            self._metrics.messages_in.inc()
            self._metrics.delivery_latency.observe(time.perf_counter() - started)
            if self.on_message is not None:
                self.on_message(outcome)

    def publish_live(self, user_ids: list[str], event: Event) -> None:
        """Send a live-only event (presence, typing): no cursor, not logged."""
        payload = _encode(event)
        for user_id in user_ids:
            self._bus.publish(user_id, None, payload)

    def _after_commit(
        self,
        future: asyncio.Future[T],
        first: Callable[[asyncio.Future[Any]], None] | None = None,
        started: float = 0.0,
    ) -> asyncio.Future[T]:
        """Run `first` (e.g. the sender's ack), then publish, once `future` completes.

        Returns the store's own future: a caller that may be cancelled (a
        request handler) must await it through `asyncio.shield`, or the
        cancellation would cancel the publication too.
        """
        if first is not None:
            future.add_done_callback(first)
        future.add_done_callback(functools.partial(self._publish_committed, started=started))
        return future

    # conversations ------------------------------------------------------------------
    async def open_direct(self, user_id: str, peer_id: str) -> tuple[Conversation, bool]:
        if peer_id == user_id:
            raise InvalidRequest("a direct conversation needs another user")
        outcome = await asyncio.shield(
            self._after_commit(self._store.open_direct(new_id("c"), user_id, peer_id, now_ms()))
        )
        return outcome.conversation.view_for(user_id), outcome.created

    async def _readable(self, user_id: str, conversation_id: str) -> ConversationRecord:
        """The conversation if `user_id` is or was a member (former members read
        history up to their removal); else `NotFound`, which does not reveal
        whether it exists."""
        record = await self._store.get_conversation(conversation_id)
        if record is None or (user_id not in record.members and user_id not in record.former):
            raise NotFound("no such conversation")
        return record

    async def is_member(self, user_id: str, conversation_id: str) -> ConversationRecord:
        """The conversation if `user_id` is a current member, else `NotFound`."""
        record = await self._readable(user_id, conversation_id)
        if user_id not in record.members:
            raise NotFound("no such conversation")
        return record

    async def _view(self, record: ConversationRecord, user_id: str) -> Conversation:
        view = record.view_for(user_id)
        if view.last_message is None and view.last_seq > 0:
            # A former member's view stops at its removal: fetch the message there.
            page, _ = await self._store.get_messages(
                record.conversation_id, before=view.last_seq + 1, after=None, limit=1
            )
            view.last_message = page[-1] if page else None
        return view

    async def conversation(self, user_id: str, conversation_id: str) -> Conversation:
        return await self._view(await self._readable(user_id, conversation_id), user_id)

    async def conversations(
        self, user_id: str, limit: int, before: int | None
    ) -> list[Conversation]:
        records = await self._store.list_conversations(user_id, limit, before)
        return [await self._view(r, user_id) for r in records]

    # groups ---------------------------------------------------------------------------
    async def create_group(
        self, user_id: str, title: str, member_ids: list[str], max_members: int
    ) -> Conversation:
        change = await asyncio.shield(
            self._after_commit(
                self._store.create_group(
                    new_id("c"), user_id, title, member_ids, now_ms(), max_members
                )
            )
        )
        return change.conversation.view_for(user_id)

    async def add_member(
        self, user_id: str, conversation_id: str, member_id: str, max_members: int
    ) -> None:
        await asyncio.shield(
            self._after_commit(
                self._store.add_member(conversation_id, user_id, member_id, now_ms(), max_members)
            )
        )

    async def remove_member(self, user_id: str, conversation_id: str, member_id: str) -> None:
        await asyncio.shield(
            self._after_commit(
                self._store.remove_member(conversation_id, user_id, member_id, now_ms())
            )
        )

    async def rename(self, user_id: str, conversation_id: str, title: str) -> Conversation:
        change = await asyncio.shield(
            self._after_commit(self._store.rename(conversation_id, user_id, title, now_ms()))
        )
        return change.conversation.view_for(user_id)

    # messages --------------------------------------------------------------------------
    def send(
        self,
        user_id: str,
        device_id: str,
        conversation_id: str,
        client_msg_id: str,
        body: str,
        on_durable: Callable[[asyncio.Future[Any]], None] | None = None,
    ) -> asyncio.Future[SendOutcome]:
        """Store and fan out a message. `on_durable` runs once it is durable and
        before any event about it is published (so an ack precedes the echo).
        Raises `RateLimited` at once if the device is over its send rate."""
        bucket = self._send_limits.bucket(device_id)
        if not bucket.take():
            raise RateLimited("sending too fast; slow down", retry_after=bucket.retry_after())
        started = time.perf_counter()
        future = self._store.append_message(
            conversation_id, user_id, client_msg_id, body, new_message_id(), now_ms()
        )
        return self._after_commit(future, on_durable, started)

    async def history(
        self,
        user_id: str,
        conversation_id: str,
        *,
        before: int | None,
        after: int | None,
        limit: int,
    ) -> tuple[list[Message], bool]:
        record = await self._readable(user_id, conversation_id)
        return await self._store.get_messages(
            conversation_id,
            before=before,
            after=after,
            limit=limit,
            upto=record.visible_seq(user_id),
        )

    def mark(
        self,
        user_id: str,
        conversation_id: str,
        status: Literal["delivered", "read"],
        seq: int,
    ) -> asyncio.Future[Committed]:
        """Move a watermark; members get a receipt event once it is durable."""
        return self._after_commit(self._store.move_watermark(conversation_id, user_id, status, seq))

    # event log ---------------------------------------------------------------------------
    async def cursor(self, user_id: str) -> int:
        return await self._store.current_cursor(user_id)

    async def events_after(
        self, user_id: str, since: int, limit: int = EVENTS_PAGE
    ) -> list[LoggedEvent]:
        """Logged events after `since`; `CursorExpired` if this log never had `since`."""
        events = await self._store.read_events(user_id, since, limit)
        if not events and since > 0 and since > await self._store.current_cursor(user_id):
            raise CursorExpired("cursor is not from this log; re-read state and start over")
        return events
