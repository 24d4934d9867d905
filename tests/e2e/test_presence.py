"""Presence, contacts and typing against a real server with short presence timings."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from tests.e2e.wire import (
    another_device,
    assert_err,
    call,
    direct,
    new_user,
    new_users,
    recv,
    recv_until,
    send_http,
    ws_open,
)
from tests.harness import ServerProcess

ONLINE_DELAY = 0.4
OFFLINE_GRACE = 0.8


@pytest.fixture(scope="module")
def presence_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    srv = ServerProcess(
        tmp_path_factory.mktemp("presence") / "data",
        "--presence-online-delay",
        str(ONLINE_DELAY),
        "--presence-offline-grace",
        str(OFFLINE_GRACE),
    ).start()
    yield srv
    srv.stop()


def presence_of(user_id: str, status: str | None = None) -> Callable[[dict[str, Any]], bool]:
    return lambda f: (
        f.get("type") == "presence"
        and f.get("user_id") == user_id
        and (status is None or f.get("status") == status)
    )


async def quiet_for(ws: aiohttp.ClientWebSocketResponse, seconds: float) -> list[dict[str, Any]]:
    """Frames received during `seconds` (used where the point is that nothing comes)."""
    frames: list[dict[str, Any]] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            frames.append(await recv(ws, left))
        except TimeoutError:
            break
    return frames


async def get_presence(http: aiohttp.ClientSession, viewer: Any, *ids: str) -> dict[str, Any]:
    r = await call(
        http,
        "GET",
        viewer.base + "/v1/presence",
        token=viewer.token,
        params={"user_ids": ",".join(ids)},
    )
    assert r.status == 200, r
    return dict(r.body["presence"])


async def test_online_after_delay_then_offline_with_last_seen(
    presence_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    alice, bob = await new_users(http, presence_server.url, 2)
    await direct(http, alice, bob)  # peers may see each other
    watcher, _ = await ws_open(http, bob.base, bob.token)
    started = time.monotonic()
    ws, _ = await ws_open(http, alice.base, alice.token)
    event, _ = await recv_until(watcher, presence_of(alice.user_id, "online"))
    assert time.monotonic() - started >= ONLINE_DELAY * 0.9
    assert event["last_seen"] is None
    assert (await get_presence(http, bob, alice.user_id))[alice.user_id]["status"] == "online"

    closed_at = time.time() * 1000
    await ws.close()
    gone = time.monotonic()
    event, _ = await recv_until(watcher, presence_of(alice.user_id, "offline"))
    assert time.monotonic() - gone >= OFFLINE_GRACE * 0.9
    assert abs(event["last_seen"] - closed_at) < 1000
    seen = (await get_presence(http, bob, alice.user_id))[alice.user_id]
    assert seen == {"status": "offline", "last_seen": event["last_seen"]}
    await watcher.close()


async def test_reconnect_inside_grace_is_silent(
    presence_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    alice, bob = await new_users(http, presence_server.url, 2)
    await direct(http, alice, bob)
    watcher, _ = await ws_open(http, bob.base, bob.token)
    ws, _ = await ws_open(http, alice.base, alice.token)
    await recv_until(watcher, presence_of(alice.user_id, "online"))
    for _ in range(3):  # a flapping phone
        await ws.close()
        ws, _ = await ws_open(http, alice.base, alice.token)
    frames = await quiet_for(watcher, OFFLINE_GRACE * 2)
    assert not [f for f in frames if presence_of(alice.user_id)(f)], frames
    # A connection shorter than the online delay is not announced either.
    carol = await new_user(http, presence_server.url)
    await direct(http, carol, bob)
    short, _ = await ws_open(http, carol.base, carol.token)
    await short.close()
    frames = await quiet_for(watcher, ONLINE_DELAY * 2)
    assert not [f for f in frames if presence_of(carol.user_id)(f)], frames
    await ws.close()
    await watcher.close()


async def test_offline_only_when_last_device_leaves(
    presence_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    alice, bob = await new_users(http, presence_server.url, 2)
    await direct(http, alice, bob)
    devices = [alice, await another_device(http, alice), await another_device(http, alice)]
    watcher, _ = await ws_open(http, bob.base, bob.token)
    sockets = [(await ws_open(http, d.base, d.token))[0] for d in devices]
    await recv_until(watcher, presence_of(alice.user_id, "online"))
    for ws in sockets[:2]:
        await ws.close()
    frames = await quiet_for(watcher, OFFLINE_GRACE * 2)
    assert not [f for f in frames if presence_of(alice.user_id)(f)], frames
    assert (await get_presence(http, bob, alice.user_id))[alice.user_id]["status"] == "online"
    await sockets[2].close()
    await recv_until(watcher, presence_of(alice.user_id, "offline"))
    await watcher.close()


async def test_visibility_contacts_peers_and_strangers(
    presence_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    alice, bob, stranger, friend = await new_users(http, presence_server.url, 4)
    await direct(http, alice, bob)
    # Alice lists `friend` as a contact: friend may see alice; alice may not see friend.
    r = await call(http, "PUT", f"{alice.base}/v1/contacts/{friend.user_id}", token=alice.token)
    assert r.status == 204, r
    r = await call(http, "PUT", f"{alice.base}/v1/contacts/{friend.user_id}", token=alice.token)
    assert r.status == 204, r  # idempotent
    ws, _ = await ws_open(http, alice.base, alice.token)
    assert (await get_presence(http, bob, alice.user_id))[alice.user_id]["status"] in (
        "offline",
        "online",
    )
    seen = await get_presence(http, stranger, alice.user_id, bob.user_id)
    assert seen == {
        alice.user_id: {"status": "unknown", "last_seen": None},
        bob.user_id: {"status": "unknown", "last_seen": None},
    }
    assert (await get_presence(http, friend, alice.user_id))[alice.user_id]["status"] != "unknown"
    assert (await get_presence(http, alice, friend.user_id))[friend.user_id]["status"] == "unknown"

    r = await call(http, "GET", alice.base + "/v1/contacts", token=alice.token)
    assert r.status == 200, r
    (contact,) = r.body["contacts"]
    assert contact["user_id"] == friend.user_id
    assert contact["username"] == friend.username
    assert contact["presence"]["status"] == "unknown"  # friend has not added alice

    r = await call(http, "DELETE", f"{alice.base}/v1/contacts/{friend.user_id}", token=alice.token)
    assert r.status == 204, r
    r = await call(http, "GET", alice.base + "/v1/contacts", token=alice.token)
    assert r.body["contacts"] == []
    assert (await get_presence(http, friend, alice.user_id))[alice.user_id]["status"] == "unknown"
    await ws.close()


async def test_contact_and_presence_bad_input(
    presence_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    alice = await new_user(http, presence_server.url)
    r = await call(http, "PUT", f"{alice.base}/v1/contacts/u_nobody", token=alice.token)
    assert_err(r, 404, "not_found")
    r = await call(http, "PUT", f"{alice.base}/v1/contacts/{alice.user_id}", token=alice.token)
    assert_err(r, 422, "validation_error")
    r = await call(http, "GET", alice.base + "/v1/presence", token=alice.token)
    assert_err(r, 422, "validation_error")
    ids = ",".join(f"u{i}" for i in range(501))
    r = await call(
        http, "GET", alice.base + "/v1/presence", token=alice.token, params={"user_ids": ids}
    )
    assert_err(r, 422, "validation_error")
    r = await call(http, "GET", alice.base + "/v1/contacts")
    assert_err(r, 401, "unauthorized")


async def test_send_to_offline_peer_tells_the_sender(
    presence_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    alice, bob = await new_users(http, presence_server.url, 2)
    conv = await direct(http, alice, bob)
    r = await send_http(http, alice, conv["conversation_id"], "are you there?")
    assert r.status == 201, r
    peer = r.body["peer_presence"]
    assert peer["user_id"] == bob.user_id and peer["status"] == "offline"

    ws, _ = await ws_open(http, alice.base, alice.token)
    await ws.send_json(
        {
            "type": "send",
            "conversation_id": conv["conversation_id"],
            "client_msg_id": "p1",
            "body": "hello?",
        }
    )
    ack, _ = await recv_until(ws, lambda f: f["type"] == "ack")
    assert ack["peer_presence"]["user_id"] == bob.user_id
    assert ack["peer_presence"]["status"] == "offline"

    bob_ws, _ = await ws_open(http, bob.base, bob.token)
    await ws.send_json(
        {
            "type": "send",
            "conversation_id": conv["conversation_id"],
            "client_msg_id": "p2",
            "body": "there you are",
        }
    )
    ack, _ = await recv_until(ws, lambda f: f["type"] == "ack")
    assert "peer_presence" not in ack
    await ws.close()
    await bob_ws.close()


async def test_long_poll_counts_as_online(
    presence_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    alice, bob = await new_users(http, presence_server.url, 2)
    await direct(http, alice, bob)
    watcher, _ = await ws_open(http, bob.base, bob.token)
    poll = asyncio.create_task(
        call(
            http,
            "GET",
            alice.base + "/v1/events",
            token=alice.token,
            params={"since": "0", "timeout": "0"},
        )
    )
    assert (await poll).status == 200
    await recv_until(watcher, presence_of(alice.user_id, "online"))
    await watcher.close()


async def test_typing_reaches_only_the_other_members(
    presence_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    alice, bob, carol = await new_users(http, presence_server.url, 3)
    conv = await direct(http, alice, bob)
    alice2 = await another_device(http, alice)
    a1, _ = await ws_open(http, alice.base, alice.token)
    a2, _ = await ws_open(http, alice2.base, alice2.token)
    b, _ = await ws_open(http, bob.base, bob.token)
    c, _ = await ws_open(http, carol.base, carol.token)
    await a1.send_json({"type": "typing", "conversation_id": conv["conversation_id"]})
    event, _ = await recv_until(b, lambda f: f["type"] == "typing")
    assert event == {
        "type": "typing",
        "conversation_id": conv["conversation_id"],
        "user_id": alice.user_id,
    }
    # Neither alice's devices nor an outsider hear it; a ping marks "everything before".
    for ws in (a1, a2, c):
        await ws.send_json({"type": "ping"})
        _, before = await recv_until(ws, lambda f: f["type"] == "pong")
        assert not [f for f in before if f["type"] == "typing"], before
    # A non-member typing gets an error frame.
    await c.send_json({"type": "typing", "conversation_id": conv["conversation_id"]})
    err, _ = await recv_until(c, lambda f: f["type"] == "error")
    assert err["code"] == "not_found"
    for ws in (a1, a2, b, c):
        await ws.close()


async def _presence_counters(http: aiohttp.ClientSession, base: str) -> tuple[float, float]:
    async with http.get(base + "/metrics") as r:
        text = await r.text()
    values = {}
    for line in text.splitlines():
        if line.startswith(("parley_presence_announcements ", "parley_presence_events ")):
            name, value = line.split()
            values[name] = float(value)
    return values["parley_presence_announcements"], values["parley_presence_events"]


async def _wait_announcements(
    http: aiohttp.ClientSession, base: str, at_least: float
) -> tuple[float, float]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        counters = await _presence_counters(http, base)
        if counters[0] >= at_least:
            return counters
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {at_least} announcements")


async def test_an_announcement_costs_one_event_per_online_watcher(
    make_server: Any, http: aiohttp.ClientSession
) -> None:
    srv = make_server("--presence-online-delay", "0.2", "--presence-offline-grace", "0.2")
    star, *fans = await new_users(http, srv.url, 10)
    for fan in fans:  # all ten may see `star`; three of them are online
        r = await call(http, "PUT", f"{star.base}/v1/contacts/{fan.user_id}", token=star.token)
        assert r.status == 204
    base_ann, _ = await _presence_counters(http, srv.url)
    watchers = [(await ws_open(http, f.base, f.token))[0] for f in fans[:3]]
    _, events_before = await _wait_announcements(http, srv.url, base_ann + 3)
    ws, _ = await ws_open(http, star.base, star.token)
    for w in watchers:
        await recv_until(w, presence_of(star.user_id, "online"))
    announcements, events = await _wait_announcements(http, srv.url, base_ann + 4)
    assert announcements == base_ann + 4
    assert events - events_before == 3  # not 9: offline fans cost nothing
    for sock in (*watchers, ws):
        await sock.close()


async def test_a_full_batch_of_real_length_ids_fits_in_one_query(
    presence_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    alice = await new_user(http, presence_server.url)
    ids = [alice.user_id, *(f"u{i:024x}" for i in range(499))]  # ids as long as real ones
    seen = await get_presence(http, alice, *ids)
    assert len(seen) == 500
    assert seen[alice.user_id]["status"] in ("online", "offline")
    assert {v["status"] for k, v in seen.items() if k != alice.user_id} == {"unknown"}
