"""Fixtures for push tests: real `parley serve` processes and a local push service."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.harness import ServerProcess
from tests.push.pushsvc import PushService

#: Short presence timings (the push decision itself uses "a device is connected now").
FAST_PRESENCE = ("--presence-online-delay", "0.05", "--presence-offline-grace", "0.1")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


@pytest.fixture(scope="module")
def push_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server per module, with --allow-insecure-push so pushes may go to 127.0.0.1."""
    data = tmp_path_factory.mktemp("push") / "data"
    srv = ServerProcess(data, "--allow-insecure-push", *FAST_PRESENCE).start()
    yield srv
    srv.stop()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start a server with extra flags; all are stopped at the end of the test."""
    started: list[ServerProcess] = []

    def start(*args: str) -> ServerProcess:
        srv = ServerProcess(tmp_path / f"data{len(started)}", *args).start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


async def vapid_key(http: aiohttp.ClientSession, base: str) -> str:
    async with http.get(base + "/v1/push/vapid-public-key") as resp:
        assert resp.status == 200, await resp.text()
        body = await resp.json()
    return str(body["key"])


@pytest.fixture
async def push_service(
    http: aiohttp.ClientSession,
) -> AsyncIterator[Callable[[ServerProcess], Awaitable[PushService]]]:
    """`await push_service(server)`: a local push service trusting that server's VAPID key."""
    services: list[PushService] = []

    async def make(server: ServerProcess) -> PushService:
        svc = await PushService(await vapid_key(http, server.url)).start()
        services.append(svc)
        return svc

    yield make
    for svc in services:
        await svc.close()
    assert all(not s.errors for s in services), [s.errors for s in services]
