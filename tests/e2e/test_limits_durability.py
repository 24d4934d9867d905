"""Rate limits (defaults never refuse normal use; a low limit refuses correctly) and
durability (acknowledged messages survive `kill -9`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp

from tests.e2e.wire import (
    all_events,
    all_messages,
    assert_err,
    direct,
    is_type,
    new_users,
    recv_close,
    recv_n,
    send_f,
    send_frame,
    send_http,
    ws_open,
)
from tests.harness import ServerProcess


async def test_default_limits_allow_burst_500_then_50_per_second(
    shared_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    base = shared_server.url
    a, b = await new_users(http, base, 2)
    cid = (await direct(http, a, b))["conversation_id"]
    ws, _ = await ws_open(http, base, a.token)
    try:
        # a burst of 500 at once
        for i in range(500):
            await send_frame(ws, send_f(cid, f"burst {i}", f"b{i}"))
        acks, seen = await recv_n(ws, 500, is_type("ack"), within=60)
        errors = [f for f in seen if f.get("type") == "error"]
        assert not errors, errors[:5]
        # then a steady 50 per second for 3 seconds
        t0 = time.monotonic()
        for i in range(150):
            await send_frame(ws, send_f(cid, f"steady {i}", f"s{i}"))
            await asyncio.sleep(max(0.0, t0 + (i + 1) / 50 - time.monotonic()))
        acks2, seen2 = await recv_n(ws, 150, is_type("ack"), within=30)
        errors = [f for f in seen2 if f.get("type") == "error"]
        assert not errors, errors[:5]
        assert sorted(f["seq"] for f in acks + acks2) == list(range(1, 651))
    finally:
        await ws.close()
    # and over HTTP, a burst of 100 from another device of the same user is not refused
    replies = await asyncio.gather(*(send_http(http, b, cid, f"h{i}") for i in range(100)))
    assert [r.status for r in replies] == [201] * 100, [r for r in replies if r.status != 201][:3]


async def test_low_send_limit_refuses_http_with_429(
    make_server: Callable[..., ServerProcess], http: aiohttp.ClientSession
) -> None:
    srv = make_server("--send-rate-limit", "5")
    a, b = await new_users(http, srv.url, 2)
    cid = (await direct(http, a, b))["conversation_id"]
    statuses = []
    limited = None
    for i in range(120):
        r = await send_http(http, a, cid, f"m{i}")
        statuses.append(r.status)
        if r.status == 429:
            limited = r
            break
        assert r.status == 201, r
    assert limited is not None, f"120 quick sends at 5/s were never refused: {statuses[-5:]}"
    assert_err(limited, 429, "rate_limited")
    assert "Retry-After" in limited.headers, dict(limited.headers)
    assert float(limited.headers["Retry-After"]) > 0
    assert statuses.count(201) >= 5, "the burst allowance must let some through"
    # another device is not affected by this device's limit
    r = await send_http(http, b, cid, "other device")
    assert r.status == 201, r
    # nothing refused was stored
    msgs = await all_messages(http, b, cid)
    assert [m["seq"] for m in msgs] == list(range(1, len(msgs) + 1))
    assert len(msgs) == statuses.count(201) + 1


async def test_low_send_limit_on_websocket_errors_then_4429(
    make_server: Callable[..., ServerProcess], http: aiohttp.ClientSession
) -> None:
    srv = make_server("--send-rate-limit", "5")
    a, b = await new_users(http, srv.url, 2)
    cid = (await direct(http, a, b))["conversation_id"]
    ws, _ = await ws_open(http, srv.url, a.token)
    try:
        for i in range(200):
            try:
                await send_frame(ws, send_f(cid, f"m{i}", f"k{i}"))
            except (ConnectionError, RuntimeError):
                break  # the server already closed on us
        code, frames = await recv_close(ws, within=30)
    finally:
        await ws.close()
    assert code == 4429, (code, frames[-5:])
    errors = [f for f in frames if f.get("type") == "error"]
    assert errors, f"a rate_limited error frame must precede the 4429 close: {frames[-5:]}"
    assert errors[0]["code"] == "rate_limited", errors
    # frames are served in order: the sends accepted within the burst are acked before
    # the refusal, and the refusal names the refused send
    first_error = frames.index(errors[0])
    acks = [f for f in frames[:first_error] if f.get("type") == "ack"]
    n = len(acks)
    assert n >= 5, (
        "the burst allowance must let some sends through, and their acks must precede the "
        f"rate_limited error; first frames: "
        f"{[(f.get('type'), f.get('code'), f.get('ref')) for f in frames[:5]]}"
    )
    assert [f["client_msg_id"] for f in acks] == [f"k{i}" for i in range(n)]
    assert errors[0]["ref"] == f"k{n}", errors[0]
    # every acked send is stored, gaplessly, in send order
    stored = await all_messages(http, b, cid)
    assert [m["client_msg_id"] for m in stored] == [f"k{i}" for i in range(n)]


async def test_acked_messages_survive_kill_9(
    server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    base = server.url
    a, b = await new_users(http, base, 2)
    cid = (await direct(http, a, b))["conversation_id"]
    ws, _ = await ws_open(http, base, a.token)
    try:
        # 50 over WebSocket and 50 over HTTP, all acknowledged before the crash
        for i in range(50):
            await send_frame(ws, send_f(cid, f"ws {i}", f"w{i:03d}"))
        acks, _ = await recv_n(ws, 50, is_type("ack"), within=60)
        http_msgs = []
        for i in range(50):
            r = await send_http(http, a, cid, f"http {i}", client_msg_id=f"h{i:03d}")
            assert r.status == 201, r
            http_msgs.append(r.body["message"])
    finally:
        await ws.close()
    acked = {f["client_msg_id"]: f["seq"] for f in acks}
    acked.update({m["client_msg_id"]: m["seq"] for m in http_msgs})
    assert sorted(acked.values()) == list(range(1, 101))

    await asyncio.to_thread(server.restart)  # kill -9, then the same data dir

    msgs = await all_messages(http, b, cid)
    assert [m["seq"] for m in msgs] == list(range(1, 101))
    assert {m["client_msg_id"]: m["seq"] for m in msgs} == acked
    assert all(m["sender_id"] == a.user_id for m in msgs)
    # the event log replays them too, for both members, in seq order
    for user in (a, b):
        events, _ = await all_events(http, user, since=0)
        got = [e["message"] for e in events if e["type"] == "message"]
        assert [m["seq"] for m in got] == list(range(1, 101)), user.username
        assert got == msgs
    # and a WebSocket replay from 0 agrees
    ws, _ = await ws_open(http, base, b.token, since=0)
    try:
        replay, _ = await recv_n(ws, 100, lambda f: f.get("type") == "message", within=30)
        assert [f["message"] for f in replay] == msgs
    finally:
        await ws.close()
    # sending continues from seq 101, and the old client_msg_ids stay idempotent
    r = await send_http(http, a, cid, "after the crash")
    assert r.status == 201 and r.body["message"]["seq"] == 101, r
    r = await send_http(http, a, cid, "http 0", client_msg_id="h000")
    assert r.status == 200 and r.body["message"]["seq"] == acked["h000"], r
