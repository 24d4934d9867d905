"""Events: the long-poll stream, and the messenger invariant (REST state + events == fresh)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from tests.e2e.wire import (
    User,
    all_events,
    another_device,
    assert_err,
    call,
    cursor_now,
    direct,
    new_users,
    poll,
    recv,
    send_ok,
    ws_open,
)
from tests.harness import ServerProcess


async def test_no_since_returns_at_once_with_cursor(
    shared_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    a, b = await new_users(http, shared_server.url, 2)
    t0 = time.monotonic()
    r = await poll(http, a)
    assert time.monotonic() - t0 < 3, "no `since`: must return at once"
    assert r.status == 200, r
    assert r.body == {"events": [], "next": 0}, "a new user's current cursor is 0"
    # even with a long timeout, no `since` does not wait
    t0 = time.monotonic()
    r2 = await poll(http, a, wait=30)
    assert time.monotonic() - t0 < 3
    assert r2.body["events"] == [] and r2.body["next"] == r.body["next"]

    cid = (await direct(http, a, b))["conversation_id"]
    await send_ok(http, b, cid, "hi a")
    r3 = await poll(http, a)
    assert r3.body["events"] == []
    assert r3.body["next"] > r.body["next"]


async def test_since_returns_events_after(
    shared_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    a, b = await new_users(http, shared_server.url, 2)
    start = await cursor_now(http, a)
    cid = (await direct(http, a, b))["conversation_id"]
    m1 = await send_ok(http, b, cid, "one")
    m2 = await send_ok(http, a, cid, "two")  # own messages are in the log too
    t0 = time.monotonic()
    r = await poll(http, a, since=start, wait=30)
    assert time.monotonic() - t0 < 3, "events pending: must return at once"
    assert r.status == 200, r
    evs = r.body["events"]
    cursors = [e["cursor"] for e in evs]
    assert cursors == sorted(set(cursors)) and all(c > start for c in cursors), evs
    assert r.body["next"] == cursors[-1]
    msgs = [e["message"] for e in evs if e["type"] == "message"]
    assert [m["message_id"] for m in msgs] == [m1["message_id"], m2["message_id"]], evs
    assert msgs[0] == m1 and msgs[1] == m2
    for e in evs:
        assert e["type"] in ("message", "receipt", "conversation"), e
    # strictly after: from the cursor of the first message, only the second remains
    first_cursor = next(e["cursor"] for e in evs if e["type"] == "message")
    r2 = await poll(http, a, since=first_cursor, wait=0)
    assert [e["message"]["message_id"] for e in r2.body["events"] if e["type"] == "message"] == [
        m2["message_id"]
    ]
    # every device of the user sees the same log in the same order
    a2 = await another_device(http, a)
    same = await poll(http, a2, since=start, wait=0)
    assert same.body == r.body
    # caught up: empty, cursor unchanged
    r3 = await poll(http, a, since=r.body["next"], wait=0)
    assert r3.body == {"events": [], "next": r.body["next"]}


async def test_waiting_poll_returns_when_message_arrives(
    shared_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    a, b = await new_users(http, shared_server.url, 2)
    cid = (await direct(http, a, b))["conversation_id"]
    since = await cursor_now(http, a)
    t0 = time.monotonic()
    waiter = asyncio.create_task(poll(http, a, since=since, wait=30))
    await asyncio.sleep(0.3)  # let the poll start waiting (if it has not, it returns at once)
    assert not waiter.done(), waiter
    m = await send_ok(http, b, cid, "wake up")
    r = await asyncio.wait_for(waiter, 15)
    assert time.monotonic() - t0 < 15, "the poll must return when the message arrives"
    assert r.status == 200, r
    got = [e["message"] for e in r.body["events"] if e["type"] == "message"]
    assert got and got[0]["message_id"] == m["message_id"], r
    # The woken poll answers with the events as they were published; asking
    # again from the same cursor reads them from storage: the same page.
    again = await poll(http, a, since=since, wait=0)
    assert again.body == r.body, (again.body, r.body)


async def test_a_woken_poll_returns_everything_published_with_its_cursors(
    shared_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    a, b = await new_users(http, shared_server.url, 2)
    cid = (await direct(http, a, b))["conversation_id"]
    since = await cursor_now(http, a)
    waiter = asyncio.create_task(poll(http, a, since=since, wait=30))
    await asyncio.sleep(0.3)
    sent = await asyncio.gather(*(send_ok(http, b, cid, f"m{i}") for i in range(20)))
    seen: list[str] = []
    r = await asyncio.wait_for(waiter, 15)
    cursor = since
    while True:
        cursors = [e["cursor"] for e in r.body["events"]]
        assert cursors == list(range(cursor + 1, cursor + 1 + len(cursors))), r.body
        assert r.body["next"] == (cursors[-1] if cursors else cursor)
        cursor = r.body["next"]
        seen += [e["message"]["message_id"] for e in r.body["events"] if e["type"] == "message"]
        if len(seen) >= len(sent):
            break
        r = await poll(http, a, since=cursor, wait=5)
    assert sorted(seen) == sorted(m["message_id"] for m in sent)


async def test_poll_timeout_elapses_empty(
    shared_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    (a,) = await new_users(http, shared_server.url, 1)
    since = await cursor_now(http, a)
    t0 = time.monotonic()
    r = await poll(http, a, since=since, wait=1)
    elapsed = time.monotonic() - t0
    assert r.status == 200, r
    assert r.body == {"events": [], "next": since}
    assert 0.8 <= elapsed < 5, elapsed
    t0 = time.monotonic()
    r0 = await poll(http, a, since=since, wait=0)
    assert time.monotonic() - t0 < 2
    assert r0.body == {"events": [], "next": since}


async def test_poll_bad_parameters(
    shared_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    (a,) = await new_users(http, shared_server.url, 1)
    now = await cursor_now(http, a)
    for timeout in ("-1", "61", "abc", "1e9"):
        r = await call(
            http,
            "GET",
            a.base + "/v1/events",
            token=a.token,
            params={"since": str(now), "timeout": timeout},
        )
        assert_err(r, 422, "validation_error")
    r = await call(http, "GET", a.base + "/v1/events", token=a.token, params={"since": "x"})
    assert_err(r, 422, "validation_error")
    # a cursor this server never issued
    r = await poll(http, a, since=now + 1000, wait=0)
    assert_err(r, 410, "cursor_expired")


# --- the messenger invariant ------------------------------------------------------


async def fetch_state(http: aiohttp.ClientSession, user: User) -> dict[str, Any]:
    """Everything a client shows: conversations with members' watermarks and all messages."""
    r = await call(http, "GET", user.base + "/v1/conversations?limit=200", token=user.token)
    assert r.status == 200, r
    state: dict[str, Any] = {}
    for conv in r.body["conversations"]:
        cid = conv["conversation_id"]
        msgs: list[dict[str, Any]] = []
        after = 0
        while True:
            h = await call(
                http,
                "GET",
                f"{user.base}/v1/conversations/{cid}/messages",
                token=user.token,
                params={"after": str(after), "limit": "200"},
            )
            assert h.status == 200, h
            msgs.extend(h.body["messages"])
            if not h.body["has_more"]:
                break
            after = msgs[-1]["seq"]
        state[cid] = {
            "last_seq": conv["last_seq"],
            "members": {m["user_id"]: (m["delivered_seq"], m["read_seq"]) for m in conv["members"]},
            "messages": {m["seq"]: m for m in msgs},
        }
    return state


def apply(state: dict[str, Any], ev: dict[str, Any]) -> None:
    if ev["type"] == "conversation":
        conv = ev["conversation"]
        cur = state.setdefault(
            conv["conversation_id"], {"last_seq": 0, "members": {}, "messages": {}}
        )
        cur["members"] = {
            m["user_id"]: (
                max(m["delivered_seq"], cur["members"].get(m["user_id"], (0, 0))[0]),
                max(m["read_seq"], cur["members"].get(m["user_id"], (0, 0))[1]),
            )
            for m in conv["members"]
        }
    elif ev["type"] == "message":
        m = ev["message"]
        assert m["conversation_id"] in state, f"message for an unannounced conversation: {ev}"
        conv = state[m["conversation_id"]]
        conv["messages"][m["seq"]] = m
        conv["last_seq"] = max(conv["last_seq"], m["seq"])
        # documented: sending moves the sender's own watermarks to the message
        d, r = conv["members"].get(m["sender_id"], (0, 0))
        conv["members"][m["sender_id"]] = (max(d, m["seq"]), max(r, m["seq"]))
    elif ev["type"] == "receipt":
        assert ev["conversation_id"] in state, f"receipt for an unannounced conversation: {ev}"
        conv = state[ev["conversation_id"]]
        d, r = conv["members"].get(ev["user_id"], (0, 0))
        if ev["status"] == "read":
            d, r = max(d, ev["seq"]), max(r, ev["seq"])
        else:
            d = max(d, ev["seq"])
        conv["members"][ev["user_id"]] = (d, r)


async def test_rest_state_plus_events_equals_fresh_fetch(
    shared_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    base = shared_server.url
    a, b, c = await new_users(http, base, 3)
    ab = (await direct(http, a, b))["conversation_id"]
    for i in range(3):
        await send_ok(http, b, ab, f"before {i}")
    cursor = await cursor_now(http, a)
    state = await fetch_state(http, a)
    assert set(state) == {ab}

    # activity after the snapshot: new messages, a new conversation, receipts both ways
    for i in range(4):
        await send_ok(http, b if i % 2 else a, ab, f"after {i}")
    ac = (await direct(http, c, a))["conversation_id"]
    await send_ok(http, c, ac, "hello from c")
    for who, cid, seq in ((a, ab, 5), (b, ab, 7), (a, ac, 1), (a, ab, 2)):
        r = await call(
            http,
            "POST",
            f"{base}/v1/conversations/{cid}/read",
            token=who.token,
            json_body={"seq": seq},
        )
        assert r.status == 204, r

    events, _ = await all_events(http, a, since=cursor)
    assert events, "activity after the snapshot must be in the log"
    for ev in events:
        apply(state, ev)
    fresh = await fetch_state(http, a)
    assert state == fresh


async def test_http_read_reaches_the_sender_as_receipt(
    shared_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    base = shared_server.url
    a, b = await new_users(http, base, 2)
    cid = (await direct(http, a, b))["conversation_id"]
    m = await send_ok(http, a, cid, "read me")
    since = await cursor_now(http, a)
    r = await call(
        http, "POST", f"{base}/v1/conversations/{cid}/read", token=b.token, json_body={"seq": 1}
    )
    assert r.status == 204, r
    got = await poll(http, a, since=since, wait=10)
    receipts = [e for e in got.body["events"] if e["type"] == "receipt"]
    assert receipts == [
        {
            "type": "receipt",
            "cursor": receipts[0]["cursor"] if receipts else None,
            "conversation_id": cid,
            "user_id": b.user_id,
            "status": "read",
            "seq": m["seq"],
        }
    ], got


async def test_snapshot_during_activity_plus_ws_events_equals_fresh_fetch(
    shared_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    """The messenger invariant with the race a real client has: the snapshot is taken
    while others keep writing; events from the cursor read *before* the snapshot are
    applied (idempotently) and the result equals a fresh fetch."""
    base = shared_server.url
    a, b, c = await new_users(http, base, 3)
    ab = (await direct(http, a, b))["conversation_id"]
    await send_ok(http, b, ab, "hello")
    cursor = await cursor_now(http, a)

    async def activity() -> None:
        for i in range(15):
            await send_ok(http, b, ab, f"b{i}")
            if i == 5:
                ac = (await direct(http, c, a))["conversation_id"]
                await send_ok(http, c, ac, "hi from c")
            if i % 4 == 0:
                r = await call(
                    http,
                    "POST",
                    f"{base}/v1/conversations/{ab}/read",
                    token=a.token,
                    json_body={"seq": i + 1},
                )
                assert r.status == 204, r

    task = asyncio.create_task(activity())
    state = await fetch_state(http, a)
    await task
    target = await cursor_now(http, a)
    assert target > cursor
    ws, _ = await ws_open(http, base, a.token, since=cursor)
    try:
        seen = 0
        while seen < target:
            ev = await recv(ws)
            if "cursor" not in ev:
                continue  # live-only (presence/typing)
            assert ev["cursor"] > seen, ev
            seen = ev["cursor"]
            apply(state, ev)
    finally:
        await ws.close()
    assert state == await fetch_state(http, a)
