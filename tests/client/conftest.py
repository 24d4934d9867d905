"""Fixtures for SDK tests: logged-in clients on real servers, and event logs to wait on."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from parley.client import ClientEvent, Connected, Disconnected, Message, MessageEvent, ParleyClient
from tests.harness import ServerProcess

PASSWORD = "correct horse battery"


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


class EventLog:
    """Consumes a client's events into a list; tests wait on conditions over it."""

    def __init__(self, client: ParleyClient) -> None:
        self.client = client
        self.events: list[ClientEvent] = []
        self.error: BaseException | None = None
        self._cond = asyncio.Condition()
        self._task = asyncio.create_task(self._consume())

    async def _consume(self) -> None:
        try:
            async for event in self.client.events():
                async with self._cond:
                    self.events.append(event)
                    self._cond.notify_all()
        except Exception as exc:
            async with self._cond:
                self.error = exc
                self._cond.notify_all()

    async def wait_until(self, predicate: Callable[[EventLog], bool], within: float = 20.0) -> None:
        async def wait() -> None:
            async with self._cond:
                await self._cond.wait_for(lambda: self.error is not None or predicate(self))

        try:
            await asyncio.wait_for(wait(), within)
        except TimeoutError:
            raise AssertionError(f"not met in {within}s; events: {self.events}") from None
        if self.error is not None and not predicate(self):
            raise AssertionError(f"event stream failed: {self.error!r}")

    def messages(self, conversation_id: str | None = None) -> list[Message]:
        return [
            e.message
            for e in self.events
            if isinstance(e, MessageEvent)
            and (conversation_id is None or e.message.conversation_id == conversation_id)
        ]

    def count(self, kind: type) -> int:
        return sum(isinstance(e, kind) for e in self.events)

    def reconnected(self) -> int:
        return sum(isinstance(e, Connected) and e.reconnect for e in self.events)

    def disconnected(self) -> int:
        return self.count(Disconnected)

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


MakeClient = Callable[..., Awaitable[ParleyClient]]


@pytest.fixture
async def make_client() -> AsyncIterator[MakeClient]:
    """Register and log in a fresh user on `server`; optionally connect its socket."""
    clients: list[ParleyClient] = []

    async def make(
        server: ServerProcess, prefix: str = "user", *, connect: bool = True, **options: object
    ) -> ParleyClient:
        options.setdefault("reconnect_base", 0.05)
        options.setdefault("reconnect_max", 0.5)
        client = ParleyClient(server.url, **options)  # type: ignore[arg-type]
        clients.append(client)
        username = unique(prefix)
        await client.register(username, PASSWORD)
        await client.login(username, PASSWORD)
        if connect:
            await client.connect()
        return client

    yield make
    for client in clients:
        await client.close()
