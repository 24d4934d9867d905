"""A reply counts as a read: the other side's ticks turn to read without a `read` frame."""

from __future__ import annotations

import aiohttp

from tests.e2e.wire import direct, new_users, recv_until, send_ok, ws_open
from tests.harness import ServerProcess


async def test_replying_marks_the_peers_messages_read(
    shared_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    alice, bob = await new_users(http, shared_server.url, 2)
    cid = (await direct(http, alice, bob))["conversation_id"]
    await send_ok(http, bob, cid, "one")
    await send_ok(http, bob, cid, "two")
    ws_bob, _ = await ws_open(http, bob.base, bob.token)
    reply = await send_ok(http, alice, cid, "got both")
    receipt, skipped = await recv_until(ws_bob, lambda f: f["type"] == "receipt")
    assert receipt["user_id"] == alice.user_id
    assert receipt["status"] == "read" and receipt["seq"] == reply["seq"] == 3
    assert [f["message"]["seq"] for f in skipped if f["type"] == "message"] == [3]
    # Alice writing again, with nothing new from bob in between, is no news.
    await send_ok(http, alice, cid, "and one more")
    await ws_bob.send_json({"type": "ping"})
    _, before = await recv_until(ws_bob, lambda f: f["type"] == "pong")
    assert [f["type"] for f in before] == ["message"], before
    await ws_bob.close()
