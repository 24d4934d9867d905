"""WebSocket /v1/ws: handshake and auth, replay then live, send/ack, receipts, errors."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from tests.e2e.wire import (
    another_device,
    assert_err,
    cmid,
    cursor_now,
    direct,
    history,
    is_msg_event,
    is_type,
    new_users,
    raw_handshake,
    recv,
    recv_close,
    recv_n,
    recv_until,
    send_f,
    send_frame,
    send_http,
    send_ok,
    ws_open,
    ws_url,
)
from tests.harness import ServerProcess

ACK_KEYS = {"type", "client_msg_id", "conversation_id", "seq", "message_id", "sent_at"}


async def ping_pong(ws: aiohttp.ClientWebSocketResponse) -> list[dict[str, Any]]:
    """The socket is open and serving: ping answers pong. Returns frames seen before it."""
    await send_frame(ws, {"type": "ping"})
    pong, skipped = await recv_until(ws, is_type("pong"))
    assert pong == {"type": "pong"}, pong
    return skipped


# --- handshake and authentication ---------------------------------------------------


async def test_header_auth_ready(shared_server: ServerProcess, http: aiohttp.ClientSession) -> None:
    (a,) = await new_users(http, shared_server.url, 1)
    now = await cursor_now(http, a)
    ws, ready = await ws_open(http, shared_server.url, a.token)
    try:
        assert ready is not None
        assert set(ready) >= {"type", "user_id", "device_id", "cursor"}, ready
        assert ready["user_id"] == a.user_id
        assert ready["device_id"] == a.device_id
        assert ready["cursor"] == now
        assert await ping_pong(ws) == []
    finally:
        await ws.close()


@pytest.mark.parametrize("header", ["Bearer nonsense", "Bearer ", "Basic abc", "nonsense"])
async def test_bad_header_token_is_401_before_upgrade(
    shared_server: ServerProcess, http: aiohttp.ClientSession, header: str
) -> None:
    r = await raw_handshake(http, shared_server.url, {"Authorization": header})
    assert_err(r, 401, "unauthorized")
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await http.ws_connect(ws_url(shared_server.url), headers={"Authorization": header})
    assert info.value.status == 401


async def test_auth_by_first_frame(
    shared_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    (a,) = await new_users(http, shared_server.url, 1)
    ws, ready = await ws_open(http, shared_server.url, a.token, auth_frame=True)
    try:
        assert ready is not None
        assert ready["user_id"] == a.user_id and ready["device_id"] == a.device_id
        await ping_pong(ws)
    finally:
        await ws.close()


async def test_bad_token_frame_closes_4401(
    shared_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    ws = await http.ws_connect(ws_url(shared_server.url))
    try:
        await send_frame(ws, {"type": "auth", "token": "not-a-token"})
        code, frames = await recv_close(ws)
        assert code == 4401, (code, frames)
        assert not [f for f in frames if f.get("type") == "ready"], frames
    finally:
        await ws.close()


@pytest.mark.slow
async def test_no_auth_frame_closes_4408(
    shared_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    ws = await http.ws_connect(ws_url(shared_server.url))
    try:
        t0 = time.monotonic()
        code, frames = await recv_close(ws, within=20)
        elapsed = time.monotonic() - t0
        assert code == 4408, (code, frames)
        assert 9 <= elapsed <= 15, elapsed
    finally:
        await ws.close()


async def test_origin_checked_on_handshake(
    shared_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    base = shared_server.url
    (a,) = await new_users(http, base, 1)
    for origin in ("http://evil.example", "null", "http://127.0.0.1:1"):
        r = await raw_handshake(
            http, base, {"Authorization": f"Bearer {a.token}", "Origin": origin}
        )
        assert_err(r, 403, "forbidden")
    # no Origin (SDKs, CLIs): fine; the server's own origin: fine
    ws, _ = await ws_open(http, base, a.token)
    await ws.close()
    ws, _ = await ws_open(http, base, a.token, headers={"Origin": base})
    await ws.close()


async def test_allowed_origins_flag(
    make_server: Callable[..., ServerProcess], http: aiohttp.ClientSession
) -> None:
    srv = make_server("--allowed-origins", "https://app.example,https://other.example")
    (a,) = await new_users(http, srv.url, 1)
    for origin in ("https://app.example", "https://other.example"):
        ws, ready = await ws_open(http, srv.url, a.token, headers={"Origin": origin})
        assert ready is not None
        await ws.close()
    r = await raw_handshake(
        http, srv.url, {"Authorization": f"Bearer {a.token}", "Origin": "https://evil.example"}
    )
    assert r.status == 403, r


# --- replay then live -----------------------------------------------------------


async def test_since_replays_then_live_without_gap_or_duplicate(
    shared_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    base = shared_server.url
    a, b = await new_users(http, base, 2)
    cid = (await direct(http, a, b))["conversation_id"]
    c0 = await cursor_now(http, b)
    before = [await send_ok(http, a, cid, f"old {i}") for i in range(5)]
    n_live = 30

    async def sender() -> None:
        for i in range(n_live):
            await send_ok(http, a, cid, f"live {i}")

    task = asyncio.create_task(sender())  # races with the connect below
    ws, ready = await ws_open(http, base, b.token, since=c0)
    try:
        assert ready is not None and ready["cursor"] >= c0
        total = len(before) + n_live
        got, seen = await recv_n(ws, total, is_msg_event(cid), within=30)
        await task
        seqs = [f["message"]["seq"] for f in got]
        assert seqs == list(range(1, total + 1)), seqs
        assert [f["message"] for f in got[:5]] == before
        cursors = [f["cursor"] for f in seen if "cursor" in f]
        assert cursors == sorted(set(cursors)), "cursors must strictly increase"
        assert all(c > c0 for c in cursors)
        # nothing more pending except later events: one more message arrives once
        last = await send_ok(http, a, cid, "after")
        f, skipped = await recv_until(ws, is_msg_event(cid))
        assert f["message"] == last
        assert not [s for s in skipped if s.get("type") == "message"], skipped
    finally:
        await ws.close()


async def test_ready_cursor_then_replay_then_live(
    shared_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    base = shared_server.url
    a, b = await new_users(http, base, 2)
    cid = (await direct(http, a, b))["conversation_id"]
    c0 = await cursor_now(http, b)
    sent = [await send_ok(http, a, cid, f"m{i}") for i in range(3)]
    now = await cursor_now(http, b)
    ws, ready = await ws_open(http, base, b.token, since=c0)
    try:
        # `ready` carries the current cursor; the replay (c0, now] follows it
        assert ready is not None and ready["cursor"] == now, (ready, c0, now)
        got, seen = await recv_n(ws, 3, is_msg_event(cid))
        assert [f["message"] for f in got] == sent
        assert all(c0 < f["cursor"] <= now for f in seen if "cursor" in f), seen
        live = await send_ok(http, a, cid, "live")
        f, _ = await recv_until(ws, is_msg_event(cid))
        assert f["message"] == live and f["cursor"] > now
    finally:
        await ws.close()


async def test_sync_frame_replays(
    shared_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    base = shared_server.url
    a, b = await new_users(http, base, 2)
    cid = (await direct(http, a, b))["conversation_id"]
    c0 = await cursor_now(http, b)
    sent = [await send_ok(http, a, cid, f"m{i}") for i in range(3)]
    ws, _ = await ws_open(http, base, b.token)
    try:
        await send_frame(ws, {"type": "sync", "since": c0})
        got, _ = await recv_n(ws, 3, is_msg_event(cid))
        assert [f["message"] for f in got] == sent
        assert await ping_pong(ws) == []
    finally:
        await ws.close()


async def test_without_since_only_live(
    shared_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    base = shared_server.url
    a, b = await new_users(http, base, 2)
    cid = (await direct(http, a, b))["conversation_id"]
    await send_ok(http, a, cid, "old")
    ws, ready = await ws_open(http, base, b.token)
    try:
        assert ready is not None
        new = await send_ok(http, a, cid, "new")
        f, skipped = await recv_until(ws, is_msg_event(cid))
        assert f["message"] == new, f
        assert f["cursor"] > ready["cursor"]
        assert not [s for s in skipped if "cursor" in s], skipped
    finally:
        await ws.close()


# --- sending ------------------------------------------------------------------------


async def test_send_ack_then_message_on_every_device(
    shared_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    base = shared_server.url
    a1, b1 = await new_users(http, base, 2)
    a2 = await another_device(http, a1)
    b2 = await another_device(http, b1)
    cid = (await direct(http, a1, b1))["conversation_id"]
    sockets = {}
    try:
        for name, dev in (("a1", a1), ("a2", a2), ("b1", b1), ("b2", b2)):
            sockets[name], _ = await ws_open(http, base, dev.token)
        key = cmid()
        await send_frame(sockets["a1"], send_f(cid, "hello everyone", key))
        ack, skipped = await recv_until(sockets["a1"], lambda f: f.get("type") != "presence")
        assert ack.get("type") == "ack", f"the ack must come first on the sender: {ack}"
        assert set(ack) >= ACK_KEYS, ack
        assert ack["client_msg_id"] == key and ack["conversation_id"] == cid
        assert ack["seq"] == 1
        expected = {
            "conversation_id": cid,
            "seq": 1,
            "message_id": ack["message_id"],
            "sender_id": a1.user_id,
            "client_msg_id": key,
            "body": "hello everyone",
            "sent_at": ack["sent_at"],
        }
        events = {}
        for name, ws in sockets.items():
            ev, _ = await recv_until(ws, is_msg_event(cid))
            assert ev["message"] == expected, (name, ev)
            assert isinstance(ev["cursor"], int)
            events[name] = ev
        # devices of one user see the same cursor
        assert events["a1"]["cursor"] == events["a2"]["cursor"]
        assert events["b1"]["cursor"] == events["b2"]["cursor"]
        hist = await history(http, b1, cid)
        assert hist.body["messages"] == [expected]

        # resend of the same client_msg_id: the same ack again, no new message
        await send_frame(sockets["a1"], send_f(cid, "hello everyone", key))
        ack2, _ = await recv_until(sockets["a1"], is_type("ack"))
        assert ack2 == ack
        skipped = await ping_pong(sockets["a1"])
        assert not [f for f in skipped if f.get("type") == "message"], skipped
        hist = await history(http, b1, cid)
        assert [m["seq"] for m in hist.body["messages"]] == [1]
        # an HTTP resend of a WebSocket-sent message: 200 with the same message
        r = await send_http(http, a2, cid, "hello everyone", client_msg_id=key)
        assert r.status == 200, r
        assert r.body["message"] == expected
    finally:
        for ws in sockets.values():
            await ws.close()


async def test_pipelined_sends_get_seqs_in_order(
    shared_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    base = shared_server.url
    a, b = await new_users(http, base, 2)
    cid = (await direct(http, a, b))["conversation_id"]
    ws, _ = await ws_open(http, base, a.token)
    try:
        keys = [f"k{i:03d}" for i in range(50)]
        for k in keys:
            await send_frame(ws, send_f(cid, f"body {k}", k))
        acks, seen = await recv_n(ws, 50, is_type("ack"), within=30)
        by_key = {f["client_msg_id"]: f["seq"] for f in acks}
        assert [by_key[k] for k in keys] == list(range(1, 51)), by_key
        errors = [f for f in seen if f.get("type") == "error"]
        assert not errors, errors
        # each ack precedes the sender's own message event for it
        pos_ack = {f["client_msg_id"]: i for i, f in enumerate(seen) if f["type"] == "ack"}
        pos_msg = {
            f["message"]["client_msg_id"]: i for i, f in enumerate(seen) if f["type"] == "message"
        }
        for k, i in pos_msg.items():
            assert pos_ack[k] < i, k
        hist = await history(http, b, cid, limit=200)
        assert [m["client_msg_id"] for m in hist.body["messages"]] == keys
    finally:
        await ws.close()


async def test_delivered_and_read_receipts(
    shared_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    base = shared_server.url
    a, b = await new_users(http, base, 2)
    cid = (await direct(http, a, b))["conversation_id"]
    wa, _ = await ws_open(http, base, a.token)
    wb, _ = await ws_open(http, base, b.token)
    try:
        await send_frame(wa, send_f(cid, "are you there?"))
        ev, _ = await recv_until(wb, is_msg_event(cid))
        seq = ev["message"]["seq"]
        await send_frame(wb, {"type": "delivered", "conversation_id": cid, "seq": seq})
        rec, _ = await recv_until(wa, is_type("receipt"))
        assert rec == {
            "type": "receipt",
            "cursor": rec["cursor"],
            "conversation_id": cid,
            "user_id": b.user_id,
            "status": "delivered",
            "seq": seq,
        }, rec
        # the reader's own devices get it too
        own, _ = await recv_until(wb, is_type("receipt"))
        assert own["status"] == "delivered" and own["user_id"] == b.user_id

        await send_frame(wb, {"type": "read", "conversation_id": cid, "seq": seq})
        rec2, _ = await recv_until(wa, is_type("receipt"))
        assert rec2["status"] == "read" and rec2["seq"] == seq and rec2["user_id"] == b.user_id
        assert rec2["cursor"] > rec["cursor"]
        own2, _ = await recv_until(wb, is_type("receipt"))
        assert own2 == rec2, (own2, rec2)  # same logged event, same cursor
        # going backwards is a no-op: no receipt
        await send_frame(wb, {"type": "delivered", "conversation_id": cid, "seq": 0})
        await send_frame(wb, {"type": "read", "conversation_id": cid, "seq": seq})
        skipped = await ping_pong(wb)
        assert not [f for f in skipped if f.get("type") in ("receipt", "error")], skipped
        m = await send_ok(http, b, cid, "yes")  # an unrelated event to wait for on a
        f, skipped = await recv_until(wa, is_msg_event(cid))
        assert f["message"] == m
        assert not [s for s in skipped if s.get("type") == "receipt"], skipped
    finally:
        await wa.close()
        await wb.close()


async def test_ping_pong(shared_server: ServerProcess, http: aiohttp.ClientSession) -> None:
    (a,) = await new_users(http, shared_server.url, 1)
    ws, _ = await ws_open(http, shared_server.url, a.token)
    try:
        for _ in range(3):
            await ping_pong(ws)
    finally:
        await ws.close()


# --- bad frames -------------------------------------------------------------------------


async def test_bad_frames_get_error_and_socket_stays_open(
    shared_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    base = shared_server.url
    a, b, c = await new_users(http, base, 3)
    cid = (await direct(http, a, b))["conversation_id"]
    other = (await direct(http, b, c))["conversation_id"]
    ws, _ = await ws_open(http, base, a.token)
    cases: list[tuple[str, str, str | None]] = [
        ("{not json", "malformed_json", None),
        ("", "malformed_json", None),
        (json.dumps({"type": "frobnicate"}), "unknown_frame_type", None),
        (json.dumps({"no_type": 1}), "unknown_frame_type", None),
        (
            json.dumps({"type": "send", "conversation_id": cid, "client_msg_id": "r1", "body": 5}),
            "validation_error",
            "r1",
        ),
        (
            json.dumps({"type": "send", "conversation_id": cid, "client_msg_id": "r2"}),
            "validation_error",
            "r2",
        ),
        (
            json.dumps({"type": "send", "conversation_id": cid, "client_msg_id": 7, "body": "x"}),
            "validation_error",
            None,
        ),
        (
            json.dumps({"type": "send", "conversation_id": cid, "client_msg_id": "r3", "body": ""}),
            "validation_error",
            "r3",
        ),
        (json.dumps(send_f(cid, "x" * 16385, "r4")), "body_too_large", "r4"),
        (json.dumps(send_f(other, "not mine", "r5")), "not_found", "r5"),
        (json.dumps(send_f("c-nope", "nowhere", "r6")), "not_found", "r6"),
        (
            json.dumps({"type": "delivered", "conversation_id": cid, "seq": "x"}),
            "validation_error",
            None,
        ),
        (json.dumps({"type": "read", "conversation_id": cid}), "validation_error", None),
        (json.dumps({"type": "sync", "since": "x"}), "validation_error", None),
        (json.dumps([1, 2, 3]), "validation_error", None),
        ("42", "validation_error", None),
    ]
    try:
        for text, code, ref in cases:
            await ws.send_str(text)
            err = await recv(ws)
            assert err["type"] == "error", (text, err)
            assert err["code"] == code, (text, err)
            assert err["ref"] == ref, (text, err)
            assert isinstance(err["message"], str) and err["message"]
            assert await ping_pong(ws) == [], text
        # a binary frame is not a JSON text message either, and does not kill the socket
        await ws.send_bytes(b"\x00\x01")
        err = await recv(ws)
        assert err["type"] == "error", err
        await ping_pong(ws)
        # and the socket still sends
        await send_frame(ws, send_f(cid, "still here", "ok1"))
        ack, _ = await recv_until(ws, is_type("ack"))
        assert ack["seq"] == 1, ack  # nothing bad was stored
    finally:
        await ws.close()


async def test_oversized_frame_closes_1009(
    shared_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    base = shared_server.url
    a, b = await new_users(http, base, 2)
    cid = (await direct(http, a, b))["conversation_id"]
    other, _ = await ws_open(http, base, a.token)  # the same user's other socket
    ws, _ = await ws_open(http, base, a.token)
    try:
        await send_frame(ws, send_f(cid, "y" * (64 * 1024 + 10)))
        code, frames = await recv_close(ws)
        assert code == 1009, (code, frames)
        # one socket's bad input does not affect another
        await ping_pong(other)
    finally:
        await ws.close()
        await other.close()
    # the server is fine, and nothing was stored
    hist = await history(http, b, cid)
    assert hist.status == 200 and hist.body["messages"] == [], hist
