"""What memory serves equals what disk holds. Conversation lists, conversation
objects (members, watermarks, unread counts) and history pages read after a
mixed workload come from the cache, and must be exactly what the same reads
return after a kill -9 and restart, when every answer comes from SQLite. And
the events a live long-poll or WebSocket delivered (built from what was just
published) must be exactly the events a replay reads back from the log."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import aiohttp

from tests.e2e.wire import (
    User,
    add,
    all_events,
    call,
    create_group,
    cursor_now,
    direct,
    history,
    new_users,
    poll,
    read_up_to,
    recv_until,
    remove,
    rename,
    send_ok,
    ws_open,
)
from tests.harness import ServerProcess


async def _everything(
    http: aiohttp.ClientSession, users: list[User], cids: list[str]
) -> dict[str, Any]:
    """Every read a client makes, for every user: its list, each conversation it
    can see, and that conversation's newest history page."""
    seen: dict[str, Any] = {}
    for u in users:
        r = await call(http, "GET", f"{u.base}/v1/conversations", token=u.token)
        assert r.status == 200, r
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
    g1 = (await create_group(http, a, [b, c, d]))["conversation_id"]
    g2 = (await create_group(http, c, [a, e]))["conversation_id"]
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
    assert (await read_up_to(http, reader, g1, 5)).status == 204
    assert (await remove(http, a, g1, d.user_id)).status == 204
    assert (await remove(http, e, g2, e.user_id)).status == 204  # e leaves
    members[g1].remove(d)
    members[g2].remove(e)
    await asyncio.gather(chatter(g1), chatter(g2), chatter(directs[0]))
    assert (await add(http, a, g1, d.user_id)).status == 204
    assert (await rename(http, c, g2, "renamed")).status == 200
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


async def test_live_events_equal_replayed_events(
    make_server: Callable[..., ServerProcess], http: aiohttp.ClientSession
) -> None:
    server = make_server("--send-rate-limit", "0")
    a, b, c = await new_users(http, server.url, 3)
    start = await cursor_now(http, b)
    ws, _ = await ws_open(http, b.base, b.token)
    polled: list[dict[str, Any]] = []
    until: list[int] = []  # the cursor to stop at, once known

    async def long_poll() -> None:
        cursor = start
        while not until or cursor < until[0]:
            r = await poll(http, b, since=cursor, wait=1)
            assert r.status == 200, r
            polled.extend(r.body["events"])
            cursor = r.body["next"]

    poller = asyncio.create_task(long_poll())
    await asyncio.sleep(0.2)  # the first poll is waiting: it is woken, not answered from disk
    ab = (await direct(http, a, b))["conversation_id"]
    group = (await create_group(http, a, [b, c]))["conversation_id"]

    async def chatter(cid: str, senders: list[User]) -> None:
        for i in range(15):
            await send_ok(http, senders[i % len(senders)], cid, f"{i}")

    await asyncio.gather(chatter(ab, [a, b]), chatter(group, [a, b, c]), chatter(group, [c]))
    assert (await read_up_to(http, b, group, 10)).status == 204
    assert (await rename(http, a, group, "later")).status == 200
    await send_ok(http, c, group, "last")
    final = await cursor_now(http, b)
    last, before = await recv_until(ws, lambda f: f.get("cursor") == final)
    over_ws = [f for f in [*before, last] if "cursor" in f]  # presence, typing: live only
    until.append(final)
    await asyncio.wait_for(poller, 30)
    await ws.close()

    replayed, _ = await all_events(http, b, since=start)
    assert replayed[-1]["cursor"] == final and len(replayed) > 40
    assert [e for e in polled if "cursor" in e] == replayed
    assert over_ws == replayed
