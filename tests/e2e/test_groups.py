"""Group chat: membership rules, one order for all, removal, receipts and unread counts."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from tests.e2e.wire import (
    User,
    add,
    all_events,
    another_device,
    assert_err,
    call,
    create_group,
    direct,
    history,
    new_users,
    recv_n,
    recv_until,
    remove,
    send_http,
    send_ok,
    ws_open,
)
from tests.harness import ServerProcess


async def get_conv(http: aiohttp.ClientSession, user: User, cid: str) -> Any:
    return await call(http, "GET", f"{user.base}/v1/conversations/{cid}", token=user.token)


async def test_create_group_and_everyone_is_told(
    shared_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    admin, b, c = await new_users(http, shared_server.url, 3)
    ws_b, _ = await ws_open(http, b.base, b.token)
    conv = await create_group(http, admin, [b, c, b], title="Trip")  # duplicates collapse
    assert conv["type"] == "group" and conv["title"] == "Trip"
    roles = {m["user_id"]: m["role"] for m in conv["members"]}
    assert roles == {admin.user_id: "admin", b.user_id: "member", c.user_id: "member"}
    assert conv["members"][0]["user_id"] == admin.user_id
    event, _ = await recv_until(ws_b, lambda f: f["type"] == "conversation")
    assert event["conversation"]["conversation_id"] == conv["conversation_id"]
    assert event["conversation"]["title"] == "Trip"
    events, _ = await all_events(http, c)
    assert [e["conversation"]["conversation_id"] for e in events] == [conv["conversation_id"]]
    await ws_b.close()


async def test_all_members_see_one_order_while_several_send(
    shared_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    members = await new_users(http, shared_server.url, 5)
    conv = await create_group(http, members[0], members[1:])
    cid = conv["conversation_id"]
    sockets = [(await ws_open(http, m.base, m.token))[0] for m in members]
    per_sender = 20

    async def blast(i: int) -> None:
        for k in range(per_sender):
            await sockets[i].send_json(
                {"type": "send", "conversation_id": cid, "client_msg_id": f"{i}-{k}", "body": "x"}
            )

    await asyncio.gather(*(blast(i) for i in range(len(members))))
    total = per_sender * len(members)
    orders = []
    for ws in sockets:
        got, _ = await recv_n(ws, total, lambda f: f["type"] == "message")
        orders.append([(e["message"]["seq"], e["message"]["client_msg_id"]) for e in got])
    assert [s for s, _ in orders[0]] == list(range(1, total + 1))
    assert all(o == orders[0] for o in orders)
    for i in range(len(members)):  # each sender's messages keep their send order
        mine = [c for _, c in orders[0] if c.startswith(f"{i}-")]
        assert mine == [f"{i}-{k}" for k in range(per_sender)]
    for ws in sockets:
        await ws.close()


async def test_removed_member_gets_nothing_new_and_reads_only_up_to_removal(
    shared_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    admin, b, c = await new_users(http, shared_server.url, 3)
    conv = await create_group(http, admin, [b, c])
    cid = conv["conversation_id"]
    for i in range(3):
        await send_ok(http, admin, cid, f"before {i}")
    ws_c, _ = await ws_open(http, c.base, c.token)
    r = await remove(http, admin, cid, c.user_id)
    assert r.status == 204, r
    told, _ = await recv_until(ws_c, lambda f: f["type"] == "conversation")
    assert c.user_id not in [m["user_id"] for m in told["conversation"]["members"]]
    newer = await direct(http, c, b)  # c's own activity after its removal
    for i in range(3):
        await send_ok(http, admin, cid, f"after {i}")
    listed = await call(http, "GET", c.base + "/v1/conversations", token=c.token)
    order = [x["conversation_id"] for x in listed.body["conversations"]]
    assert order == [newer["conversation_id"], cid]  # the group did not jump to the top
    await ws_c.send_json({"type": "ping"})
    _, before_pong = await recv_until(ws_c, lambda f: f["type"] == "pong")
    assert not [f for f in before_pong if f["type"] == "message"], before_pong

    page = await history(http, c, cid)
    assert [m["seq"] for m in page.body["messages"]] == [1, 2, 3]
    assert page.body["has_more"] is False
    page = await history(http, c, cid, after=3)
    assert page.body == {"messages": [], "has_more": False}
    page = await history(http, c, cid, before=100, limit=2)
    assert [m["seq"] for m in page.body["messages"]] == [2, 3]
    view = (await get_conv(http, c, cid)).body
    assert view["last_seq"] == 3 and view["last_message"]["body"] == "before 2"
    assert c.user_id not in [m["user_id"] for m in view["members"]]
    assert_err(await send_http(http, c, cid, "let me back"), 404, "not_found")
    # The remaining members see everything.
    assert [m["seq"] for m in (await history(http, b, cid)).body["messages"]] == list(range(1, 7))
    await ws_c.close()


async def test_permissions_admin_member_outsider(
    shared_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    admin, b, c, outsider = await new_users(http, shared_server.url, 4)
    conv = await create_group(http, admin, [b])
    cid = conv["conversation_id"]
    assert_err(await add(http, b, cid, c.user_id), 403, "forbidden")
    assert_err(await remove(http, b, cid, admin.user_id), 403, "forbidden")
    r = await call(
        http, "PATCH", f"{b.base}/v1/conversations/{cid}", token=b.token, json_body={"title": "x"}
    )
    assert_err(r, 403, "forbidden")
    for r in (
        await add(http, outsider, cid, c.user_id),
        await remove(http, outsider, cid, b.user_id),
        await call(
            http,
            "PATCH",
            f"{outsider.base}/v1/conversations/{cid}",
            token=outsider.token,
            json_body={"title": "x"},
        ),
        await get_conv(http, outsider, cid),
        await history(http, outsider, cid),
        await send_http(http, outsider, cid),
    ):
        assert_err(r, 404, "not_found")
    assert_err(await add(http, admin, cid, "u_nobody"), 404, "not_found")
    r = await call(
        http,
        "PATCH",
        f"{admin.base}/v1/conversations/{cid}",
        token=admin.token,
        json_body={"title": "Renamed"},
    )
    assert r.status == 200 and r.body["title"] == "Renamed", r
    r = await call(
        http, "PATCH", f"{admin.base}/v1/conversations/{cid}", token=admin.token, json_body={}
    )
    assert_err(r, 422, "validation_error")
    dm = await direct(http, admin, b)
    assert_err(await add(http, admin, dm["conversation_id"], c.user_id), 422, "not_a_group")


async def test_late_joiner_reads_whole_history_and_leave_passes_admin(
    shared_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    admin, b, late = await new_users(http, shared_server.url, 3)
    conv = await create_group(http, admin, [b])
    cid = conv["conversation_id"]
    for i in range(4):
        await send_ok(http, b, cid, f"m{i}")
    assert (await add(http, admin, cid, late.user_id)).status == 204
    assert (await add(http, admin, cid, late.user_id)).status == 204  # idempotent
    page = await history(http, late, cid)
    assert [m["body"] for m in page.body["messages"]] == ["m0", "m1", "m2", "m3"]
    view = (await get_conv(http, late, cid)).body
    assert view["unread"] == 0  # joining is not a backlog of unread
    # The admin leaves: the longest-standing member (b) becomes admin.
    assert (await remove(http, admin, cid, admin.user_id)).status == 204
    view = (await get_conv(http, b, cid)).body
    roles = {m["user_id"]: m["role"] for m in view["members"]}
    assert roles == {b.user_id: "admin", late.user_id: "member"}
    assert (await remove(http, late, cid, late.user_id)).status == 204  # leave
    assert (await add(http, b, cid, late.user_id)).status == 204  # and come back


async def test_group_size_limit(make_server: Any, http: aiohttp.ClientSession) -> None:
    srv = make_server("--max-group-members", "3")
    a, b, c, d = await new_users(http, srv.url, 4)
    r = await call(
        http,
        "POST",
        a.base + "/v1/conversations",
        token=a.token,
        json_body={
            "type": "group",
            "title": "big",
            "member_ids": [b.user_id, c.user_id, d.user_id],
        },
    )
    assert_err(r, 422, "too_many_members")
    conv = await create_group(http, a, [b, c])
    assert_err(await add(http, a, conv["conversation_id"], d.user_id), 422, "too_many_members")


async def test_unread_counts_and_cheap_receipts(
    shared_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    a, b, c = await new_users(http, shared_server.url, 3)
    conv = await create_group(http, a, [b, c])
    cid = conv["conversation_id"]
    for i in range(3):
        await send_ok(http, a, cid, f"a{i}")
    assert (await get_conv(http, b, cid)).body["unread"] == 3
    assert (await get_conv(http, a, cid)).body["unread"] == 0  # own messages

    b2 = await another_device(http, b)
    ws_a, _ = await ws_open(http, a.base, a.token)
    ws_b2, _ = await ws_open(http, b2.base, b2.token)
    ws_c, _ = await ws_open(http, c.base, c.token)
    r = await call(
        http, "POST", f"{b.base}/v1/conversations/{cid}/read", token=b.token, json_body={"seq": 2}
    )
    assert r.status == 204, r
    # b's other device and the sender hear of it; a bystander (c) does not.
    for ws in (ws_b2, ws_a):
        receipt, _ = await recv_until(ws, lambda f: f["type"] == "receipt")
        assert receipt["user_id"] == b.user_id and receipt["status"] == "read"
        assert receipt["seq"] == 2
    await ws_c.send_json({"type": "ping"})
    _, before = await recv_until(ws_c, lambda f: f["type"] == "pong")
    assert not [f for f in before if f["type"] == "receipt"], before
    view = (await get_conv(http, b2, cid)).body
    assert view["unread"] == 1
    marks = {m["user_id"]: (m["delivered_seq"], m["read_seq"]) for m in view["members"]}
    assert marks[b.user_id] == (2, 2)
    assert marks[a.user_id] == (3, 3)
    for ws in (ws_a, ws_b2, ws_c):
        await ws.close()


@pytest.mark.parametrize("n", [30])
async def test_fan_out_to_many_members_reaches_every_device(
    shared_server: ServerProcess, http: aiohttp.ClientSession, n: int
) -> None:
    users = await new_users(http, shared_server.url, n)
    conv = await create_group(http, users[0], users[1:])
    sockets = [(await ws_open(http, u.base, u.token))[0] for u in users]
    msg = await send_ok(http, users[0], conv["conversation_id"], "hello all")
    for ws in sockets:
        event, _ = await recv_until(ws, lambda f: f["type"] == "message")
        assert event["message"]["message_id"] == msg["message_id"]
        await ws.close()
