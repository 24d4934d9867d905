"""Fixtures for the black-box tests: an aiohttp client session, extra servers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.harness import ServerProcess


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes about ten seconds (a server-side timeout)")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp client; every request is bounded so a hung server fails, not hangs."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=90)) as session:
        yield session


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
