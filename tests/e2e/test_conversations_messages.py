"""Direct conversations and messages over HTTP: creation, listing, send, history, reads."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from tests.e2e.wire import (
    User,
    assert_err,
    call,
    cmid,
    direct,
    history,
    new_user,
    new_users,
    send_http,
    send_ok,
)
from tests.harness import ServerProcess

CONVERSATION_KEYS = {
    "conversation_id",
    "type",
    "title",
    "created_at",
    "members",
    "last_seq",
    "last_message",
    "unread",
}
MESSAGE_KEYS = {
    "conversation_id",
    "seq",
    "message_id",
    "sender_id",
    "client_msg_id",
    "body",
    "sent_at",
}


async def get_conv(http: aiohttp.ClientSession, user: User, cid: str) -> dict[str, Any]:
    r = await call(http, "GET", f"{user.base}/v1/conversations/{cid}", token=user.token)
    assert r.status == 200, r
    return dict(r.body)


def member(conv: dict[str, Any], user_id: str) -> dict[str, Any]:
    found = [m for m in conv["members"] if m["user_id"] == user_id]
    assert len(found) == 1, conv
    return dict(found[0])


async def test_direct_create_get_and_idempotent(
    shared_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    base = shared_server.url
    a, b = await new_users(http, base, 2)
    r = await call(
        http,
        "POST",
        base + "/v1/conversations",
        token=a.token,
        json_body={"type": "direct", "user_id": b.user_id},
    )
    assert r.status == 201, r
    conv = r.body
    assert set(conv) >= CONVERSATION_KEYS, conv
    assert conv["type"] == "direct"
    assert conv["last_seq"] == 0
    assert conv["last_message"] is None
    assert conv["unread"] == 0
    assert isinstance(conv["created_at"], int) and conv["created_at"] > 1_600_000_000_000
    assert {m["user_id"] for m in conv["members"]} == {a.user_id, b.user_id}
    for m in conv["members"]:
        assert set(m) >= {"user_id", "role", "delivered_seq", "read_seq"}, m
        assert m["role"] in ("admin", "member")

    again = await call(
        http,
        "POST",
        base + "/v1/conversations",
        token=a.token,
        json_body={"type": "direct", "user_id": b.user_id},
    )
    assert again.status == 200, again
    assert again.body["conversation_id"] == conv["conversation_id"]
    # one direct conversation per pair, whichever side asks
    other_side = await call(
        http,
        "POST",
        base + "/v1/conversations",
        token=b.token,
        json_body={"type": "direct", "user_id": a.user_id},
    )
    assert other_side.status == 200, other_side
    assert other_side.body["conversation_id"] == conv["conversation_id"]

    for u in (a, b):
        got = await get_conv(http, u, conv["conversation_id"])
        assert got["conversation_id"] == conv["conversation_id"]
        assert got["type"] == "direct"


async def test_direct_with_unknown_user(
    shared_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    a = await new_user(http, shared_server.url)
    r = await call(
        http,
        "POST",
        shared_server.url + "/v1/conversations",
        token=a.token,
        json_body={"type": "direct", "user_id": "u-nobody-at-all"},
    )
    assert r.status in (404, 422), r


async def test_non_member_gets_404(
    shared_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    base = shared_server.url
    a, b, c = await new_users(http, base, 3)
    conv = await direct(http, a, b)
    cid = conv["conversation_id"]
    await send_ok(http, a, cid, "secret")
    r = await call(http, "GET", f"{base}/v1/conversations/{cid}", token=c.token)
    assert_err(r, 404, "not_found")
    r = await history(http, c, cid)
    assert_err(r, 404, "not_found")
    r = await send_http(http, c, cid, "intrusion")
    assert_err(r, 404, "not_found")
    r = await call(
        http, "POST", f"{base}/v1/conversations/{cid}/read", token=c.token, json_body={"seq": 1}
    )
    assert_err(r, 404, "not_found")
    # indistinguishable from a conversation that does not exist
    r = await call(http, "GET", f"{base}/v1/conversations/c-does-not-exist", token=c.token)
    assert_err(r, 404, "not_found")
    lst = await call(http, "GET", f"{base}/v1/conversations", token=c.token)
    assert lst.status == 200, lst
    assert cid not in [x["conversation_id"] for x in lst.body["conversations"]]


async def test_list_ordered_by_recent_activity(
    shared_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    base = shared_server.url
    a, b, c, d = await new_users(http, base, 4)
    ab = (await direct(http, a, b))["conversation_id"]
    ac = (await direct(http, a, c))["conversation_id"]
    ad = (await direct(http, a, d))["conversation_id"]

    async def order() -> list[str]:
        r = await call(http, "GET", f"{base}/v1/conversations", token=a.token)
        assert r.status == 200, r
        convs = r.body["conversations"]
        assert {x["conversation_id"] for x in convs} == {ab, ac, ad}, convs
        return [x["conversation_id"] for x in convs]

    m1 = await send_ok(http, b, ab, "first")
    got = await order()
    assert got[0] == ab, got
    m2 = await send_ok(http, c, ac, "second")
    got = await order()
    if m2["sent_at"] > m1["sent_at"]:
        assert got[:2] == [ac, ab], got
    else:  # same millisecond: either order is recent-first
        assert set(got[:2]) == {ac, ab}, got
    m3 = await send_ok(http, a, ab, "third")
    got = await order()
    if m3["sent_at"] > m2["sent_at"]:
        assert got[:2] == [ab, ac], got
    assert got[2] == ad, got

    # before=<ms>: only conversations whose activity is older
    if m3["sent_at"] > m2["sent_at"]:
        r = await call(
            http,
            "GET",
            f"{base}/v1/conversations",
            token=a.token,
            params={"before": str(m3["sent_at"])},
        )
        assert r.status == 200, r
        older = [x["conversation_id"] for x in r.body["conversations"]]
        assert ab not in older and older[:1] == [ac], older

    # limit applies to the most recent
    r = await call(http, "GET", f"{base}/v1/conversations", token=a.token, params={"limit": "1"})
    assert r.status == 200, r
    assert len(r.body["conversations"]) == 1
    assert r.body["conversations"][0]["conversation_id"] == got[0]


async def test_send_resend_and_message_shape(
    shared_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    base = shared_server.url
    a, b = await new_users(http, base, 2)
    cid = (await direct(http, a, b))["conversation_id"]
    key = cmid()
    r = await send_http(http, a, cid, "hello there", client_msg_id=key)
    assert r.status == 201, r
    msg = r.body["message"]
    assert set(msg) >= MESSAGE_KEYS, msg
    assert msg["conversation_id"] == cid
    assert msg["seq"] == 1
    assert msg["sender_id"] == a.user_id
    assert msg["client_msg_id"] == key
    assert msg["body"] == "hello there"
    assert isinstance(msg["sent_at"], int) and msg["sent_at"] > 1_600_000_000_000

    again = await send_http(http, a, cid, "hello there", client_msg_id=key)
    assert again.status == 200, again
    assert again.body["message"] == msg
    # even with a different body, the original is returned and nothing is created
    again2 = await send_http(http, a, cid, "something else", client_msg_id=key)
    assert again2.status == 200, again2
    assert again2.body["message"]["message_id"] == msg["message_id"]
    # the same client_msg_id from the other member is a different message
    other = await send_http(http, b, cid, "from b", client_msg_id=key)
    assert other.status == 201, other
    assert other.body["message"]["seq"] == 2

    conv = await get_conv(http, b, cid)
    assert conv["last_seq"] == 2
    assert conv["last_message"]["seq"] == 2
    hist = await history(http, a, cid)
    assert [m["seq"] for m in hist.body["messages"]] == [1, 2]
    assert hist.body["messages"][0] == msg


async def test_seq_gapless_under_concurrency(
    shared_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    base = shared_server.url
    a, b = await new_users(http, base, 2)
    cid = (await direct(http, a, b))["conversation_id"]
    n = 40
    replies = await asyncio.gather(
        *(send_http(http, a if i % 2 else b, cid, f"m{i}") for i in range(n))
    )
    assert all(r.status == 201 for r in replies), [r for r in replies if r.status != 201]
    seqs = sorted(r.body["message"]["seq"] for r in replies)
    assert seqs == list(range(1, n + 1))
    ids = {r.body["message"]["message_id"] for r in replies}
    assert len(ids) == n
    hist = await history(http, b, cid, limit=200)
    assert [m["seq"] for m in hist.body["messages"]] == list(range(1, n + 1))
    assert hist.body["has_more"] is False


async def test_body_and_client_msg_id_bounds(
    shared_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    base = shared_server.url
    a, b = await new_users(http, base, 2)
    cid = (await direct(http, a, b))["conversation_id"]
    # exactly 16 KiB: fine, ASCII or multi-byte
    assert (await send_http(http, a, cid, "x" * 16384)).status == 201
    assert (await send_http(http, a, cid, "é" * 8192)).status == 201
    # one byte over: 413 body_too_large (bytes count, not characters)
    assert_err(await send_http(http, a, cid, "x" * 16385), 413, "body_too_large")
    assert_err(await send_http(http, a, cid, "é" * 8192 + "x"), 413, "body_too_large")
    assert_err(await send_http(http, a, cid, "€" * 5462), 413, "body_too_large")
    # empty body
    assert_err(await send_http(http, a, cid, ""), 422, "validation_error")
    # whitespace is a body
    assert (await send_http(http, a, cid, " ")).status == 201
    # client_msg_id 1..64
    assert (await send_http(http, a, cid, "ok", client_msg_id="k" * 64)).status == 201
    assert (await send_http(http, a, cid, "ok", client_msg_id="k")).status == 201
    assert_err(await send_http(http, a, cid, "no", client_msg_id="k" * 65), 422, "validation_error")
    r = await call(
        http,
        "POST",
        f"{base}/v1/conversations/{cid}/messages",
        token=a.token,
        json_body={"client_msg_id": "", "body": "no"},
    )
    assert_err(r, 422, "validation_error")
    # nothing refused was stored: seqs are still gapless
    hist = await history(http, a, cid)
    assert [m["seq"] for m in hist.body["messages"]] == [1, 2, 3, 4, 5]


async def test_pagination(shared_server: ServerProcess, http: aiohttp.ClientSession) -> None:
    base = shared_server.url
    a, b = await new_users(http, base, 2)
    cid = (await direct(http, a, b))["conversation_id"]
    for i in range(1, 8):
        m = await send_ok(http, a, cid, f"m{i}")
        assert m["seq"] == i

    async def page(**params: Any) -> tuple[list[int], bool]:
        r = await history(http, b, cid, **params)
        assert r.status == 200, r
        assert set(r.body) >= {"messages", "has_more"}, r
        return [m["seq"] for m in r.body["messages"]], r.body["has_more"]

    assert await page() == ([1, 2, 3, 4, 5, 6, 7], False)
    assert await page(limit=3) == ([5, 6, 7], True)
    assert await page(limit=7) == ([1, 2, 3, 4, 5, 6, 7], False)
    assert await page(before=5, limit=3) == ([2, 3, 4], True)
    assert await page(before=2, limit=3) == ([1], False)
    assert await page(before=1, limit=3) == ([], False)
    assert await page(after=0, limit=3) == ([1, 2, 3], True)
    assert await page(after=4, limit=3) == ([5, 6, 7], False)
    assert await page(after=5, limit=3) == ([6, 7], False)
    assert await page(after=7) == ([], False)
    assert await page(limit=200) == ([1, 2, 3, 4, 5, 6, 7], False)
    assert await page(limit=1) == ([7], True)

    for bad in ("0", "201", "-1", "abc"):
        r = await history(http, b, cid, limit=bad)
        assert_err(r, 422, "validation_error")
    for key in ("before", "after"):
        r = await history(http, b, cid, **{key: "nope"})
        assert_err(r, 422, "validation_error")


async def test_read_watermark_never_moves_backwards(
    shared_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    base = shared_server.url
    a, b = await new_users(http, base, 2)
    cid = (await direct(http, a, b))["conversation_id"]
    for i in range(7):
        await send_ok(http, a, cid, f"m{i}")
    conv_b = await get_conv(http, b, cid)
    assert conv_b["unread"] == 7
    # the sender has read what it wrote
    assert member(conv_b, a.user_id)["read_seq"] == 7

    async def read(seq: Any) -> None:
        r = await call(
            http,
            "POST",
            f"{base}/v1/conversations/{cid}/read",
            token=b.token,
            json_body={"seq": seq},
        )
        assert r.status == 204, r
        assert not r.raw, r

    await read(5)
    conv_b = await get_conv(http, b, cid)
    me = member(conv_b, b.user_id)
    assert me["read_seq"] == 5
    assert me["delivered_seq"] >= 5  # read implies delivered
    assert conv_b["unread"] == 2

    await read(3)  # backwards: no-op
    for viewer in (a, b):
        m = member(await get_conv(http, viewer, cid), b.user_id)
        assert m["read_seq"] == 5, m
        assert m["delivered_seq"] >= 5, m

    await read(100)  # clamped to last_seq
    conv_b = await get_conv(http, b, cid)
    assert member(conv_b, b.user_id)["read_seq"] == 7
    assert conv_b["unread"] == 0

    for bad in ({"seq": "x"}, {}, {"seq": -1}, {"seq": 1.5}):
        r = await call(
            http, "POST", f"{base}/v1/conversations/{cid}/read", token=b.token, json_body=bad
        )
        assert_err(r, 422, "validation_error")
    assert member(await get_conv(http, b, cid), b.user_id)["read_seq"] == 7
