"""What memory serves equals what disk holds: conversation lists, conversation
objects (members, watermarks, unread counts) and history pages read after a
mixed workload come from the cache, and must be exactly what the same reads
return after a kill -9 and restart, when every answer comes from SQLite."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import aiohttp

from tests.e2e.wire import User, call, direct, history, new_users, send_ok
from tests.harness import ServerProcess


async def _group(http: aiohttp.ClientSession, admin: User, members: list[User]) -> str:
    r = await call(
        http,
        "POST",
        admin.base + "/v1/conversations",
        token=admin.token,
        json_body={"type": "group", "title": "g", "member_ids": [m.user_id for m in members]},
    )
    assert r.status == 201, r
    return str(r.body["conversation_id"])


async def _ok(reply_coro: Any, *statuses: int) -> Any:
    r = await reply_coro
    assert r.status in statuses, r
    return r


async def _everything(
    http: aiohttp.ClientSession, users: list[User], cids: list[str]
) -> dict[str, Any]:
    """Every read a client makes, for every user: its list, each conversation it
    can see, and that conversation's newest history page."""
    seen: dict[str, Any] = {}
    for u in users:
        r = await _ok(call(http, "GET", f"{u.base}/v1/conversations", token=u.token), 200)
        seen[f"{u.username} list"] = r.body["conversations"]
        for cid in cids:
            r = await call(http, "GET", f"{u.base}/v1/conversations/{cid}", token=u.token)
            seen[f"{u.username} {cid}"] = (r.status, r.body)
            page = await history(http, u, cid, limit=30)
            seen[f"{u.username} {cid} page"] = (page.status, page.body)
    return seen


async def test_memory_answers_equal_disk_answers(
    make_server: Callable[..., ServerProcess], http: aiohttp.ClientSession
) -> None:
    server = make_server("--send-rate-limit", "0")
    users = await new_users(http, server.url, 5)
    a, b, c, d, e = users
    directs = [(await direct(http, x, y))["conversation_id"] for x, y in ((a, b), (a, c), (d, e))]
    g1 = await _group(http, a, [b, c, d])
    g2 = await _group(http, c, [a, e])
    cids = [*directs, g1, g2]
    members = {
        directs[0]: [a, b],
        directs[1]: [a, c],
        directs[2]: [d, e],
        g1: [a, b, c, d],
        g2: [c, a, e],
    }
    # every user's list is read once first, so what follows moves lists held in memory
    await _everything(http, users, cids)

    rng = random.Random(7)

    async def chatter(cid: str) -> None:
        for i in range(12):
            sender = rng.choice(members[cid])
            await send_ok(http, sender, cid, f"{cid[-4:]} {i}")

    await asyncio.gather(*(chatter(cid) for cid in cids))
    # watermarks, a removal, a departure, a rejoin and a rename, amid more chat
    reader = members[g1][1]
    await _ok(
        call(http, "POST", f"{reader.base}/v1/conversations/{g1}/read", token=reader.token,
             json_body={"seq": 5}),
        204,
    )  # fmt: skip
    await _ok(
        call(http, "DELETE", f"{a.base}/v1/conversations/{g1}/members/{d.user_id}", token=a.token),
        204,
    )
    await _ok(
        call(http, "DELETE", f"{e.base}/v1/conversations/{g2}/members/{e.user_id}", token=e.token),
        204,
    )
    members[g1].remove(d)
    members[g2].remove(e)
    await asyncio.gather(chatter(g1), chatter(g2), chatter(directs[0]))
    await _ok(
        call(http, "POST", f"{a.base}/v1/conversations/{g1}/members", token=a.token,
             json_body={"user_id": d.user_id}),
        204,
    )  # fmt: skip
    await _ok(
        call(http, "PATCH", f"{c.base}/v1/conversations/{g2}", token=c.token,
             json_body={"title": "renamed"}),
        200, 204,
    )  # fmt: skip
    await send_ok(http, b, g1, "after the rejoin")

    from_memory = await _everything(http, users, cids)
    await asyncio.to_thread(server.restart)  # kill -9: memory is gone, disk answers
    from_disk = await _everything(http, users, cids)

    assert from_memory.keys() == from_disk.keys()
    for key in from_memory:
        assert from_memory[key] == from_disk[key], key
    # and the former member still sees the group where its removal left it
    e_list = [conv["conversation_id"] for conv in from_memory[f"{e.username} list"]]
    assert g2 in e_list
