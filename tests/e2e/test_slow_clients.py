"""A connection that never finishes its request is closed, and harms nobody else."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from tests.e2e.wire import new_user
from tests.harness import ServerProcess


@pytest.mark.slow
async def test_half_sent_request_is_closed_and_others_are_served(
    server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")  # never finished
    await writer.drain()
    started = time.monotonic()
    user = await new_user(http, server.url)  # the server keeps serving others meanwhile
    assert user.token
    data = await asyncio.wait_for(reader.read(), 30)  # EOF once the server gives up
    waited = time.monotonic() - started
    assert 5 <= waited <= 25, waited
    assert b" 200 " not in data and b" 101 " not in data
    writer.close()
