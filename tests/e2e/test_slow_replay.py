"""A catch-up larger than the server's slow-reader limit is paced, not cut off."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from typing import Any

import aiohttp

from tests.e2e.wire import direct, new_users, send_http
from tests.harness import ServerProcess

BODY = "x" * 15_000
# About 23 MB of events: more than the kernel's socket buffers on loopback plus
# the 4 MiB a live reader may fall behind before it is cut off.
MESSAGES = 1500


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readexactly(2)
    opcode, length = head[0] & 0x0F, head[1] & 0x7F
    if length == 126:
        length = int.from_bytes(await reader.readexactly(2), "big")
    elif length == 127:
        length = int.from_bytes(await reader.readexactly(8), "big")
    return opcode, await reader.readexactly(length)


async def test_a_big_catch_up_waits_for_a_slow_reader(
    make_server: Any, http: aiohttp.ClientSession
) -> None:
    server: ServerProcess = make_server("--send-rate-limit", "0")
    alice, bob = await new_users(http, server.url, 2)
    cid = (await direct(http, alice, bob))["conversation_id"]
    # Sent over HTTP, 16 at a time: over a WebSocket the sender's own echoes
    # (23 MB) would make the sender the slow reader on a loaded machine.
    gate = asyncio.Semaphore(16)

    async def send(i: int) -> None:
        async with gate:
            reply = await send_http(http, alice, cid, BODY, client_msg_id=f"k{i}")
            assert reply.status == 201, reply

    await asyncio.gather(*(send(i) for i in range(MESSAGES)))
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            "GET /v1/ws?since=0 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {bob.token}\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    assert b" 101 " in await reader.readuntil(b"\r\n\r\n")
    await asyncio.sleep(1.0)  # the point of the test: nobody reads for a while
    seqs = []
    while len(seqs) < MESSAGES:
        opcode, payload = await asyncio.wait_for(_read_frame(reader), 30)
        assert opcode == 1, (opcode, payload[:100])  # text, never a close
        frame = json.loads(payload)
        if frame["type"] == "message":
            seqs.append(frame["message"]["seq"])
    assert seqs == list(range(1, MESSAGES + 1))
    writer.close()
