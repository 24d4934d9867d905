"""The SDK's contacts, presence, typing and group calls against a real server.

The server runs with short presence timings, so going online and offline is
announced within a second; every test waits on a condition, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from parley.client import (
    PRESENCE_BATCH,
    ConversationEvent,
    ParleyClient,
    PresenceEvent,
    TypingEvent,
)
from parley.protocol.errors import Forbidden, InvalidRequest, NotFound
from tests.client.conftest import EventLog, MakeClient
from tests.harness import ServerProcess

ONLINE_DELAY = 0.3
OFFLINE_GRACE = 0.6
MAX_GROUP = 4


@pytest.fixture(scope="module")
def presence_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(
        Path(tmp_path_factory.mktemp("presence")) / "data",
        "--presence-online-delay",
        str(ONLINE_DELAY),
        "--presence-offline-grace",
        str(OFFLINE_GRACE),
        "--max-group-members",
        str(MAX_GROUP),
    ).start()
    yield srv
    srv.stop()


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    """Poll a REST-side condition until it holds (state the server does not push to us)."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(0.05)


def presence_of(user_id: str | None, status: str) -> Callable[[EventLog], bool]:
    return lambda log: any(
        isinstance(e, PresenceEvent) and e.user_id == user_id and e.status == status
        for e in log.events
    )


async def test_contacts_with_presence(
    presence_server: ServerProcess, make_client: MakeClient
) -> None:
    alice = await make_client(presence_server, "alice", connect=False)
    bob = await make_client(presence_server, "bob", connect=False)
    carol = await make_client(presence_server, "carol", connect=False)
    assert alice.user_id and bob.user_id and carol.user_id
    await alice.add_contact(bob.user_id)
    await alice.add_contact(bob.user_id)  # idempotent
    await alice.add_contact(carol.user_id)
    # Only bob lists alice back: alice may see bob's presence, not carol's.
    await bob.add_contact(alice.user_id)

    contacts = await alice.contacts()
    assert sorted(c.username for c in contacts) == sorted(
        [(await alice.get_user(u)).username for u in (bob.user_id, carol.user_id)]
    )
    by_id = {c.user_id: c.presence for c in contacts}
    assert by_id[bob.user_id].status == "offline"
    assert by_id[carol.user_id].status == "unknown" and by_id[carol.user_id].last_seen is None

    await bob.connect()

    async def bob_online() -> bool:
        return {c.user_id: c.presence.status for c in await alice.contacts()}[
            bob.user_id or ""
        ] == "online"

    await eventually(bob_online)
    await bob.close()

    async def bob_offline_with_last_seen() -> bool:
        seen = (await alice.presence([bob.user_id or ""]))[bob.user_id or ""]
        return seen.status == "offline" and seen.last_seen is not None

    await eventually(bob_offline_with_last_seen)

    await alice.remove_contact(carol.user_id)
    assert [c.user_id for c in await alice.contacts()] == [bob.user_id]
    with pytest.raises(NotFound):
        await alice.add_contact("u_nobody")


async def test_presence_batch_splits_long_lists(
    presence_server: ServerProcess, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = await make_client(presence_server, "alice", connect=False)
    bob = await make_client(presence_server, "bob")
    stranger = await make_client(presence_server, "stranger", connect=False)
    assert bob.user_id and stranger.user_id
    await alice.create_direct(bob.user_id)  # a conversation peer may be seen

    calls: list[int] = []
    original = ParleyClient._get

    async def counting_get(
        self: ParleyClient, path: str, type_: Any, params: dict[str, str] | None = None
    ) -> Any:
        if path == "/v1/presence" and params:
            calls.append(len(params["user_ids"].split(",")))
        return await original(self, path, type_, params)

    monkeypatch.setattr(ParleyClient, "_get", counting_get)

    assert await alice.presence([]) == {}
    assert calls == []
    ids = [bob.user_id, stranger.user_id, bob.user_id] + [f"u_fake{i}" for i in range(1100)]
    seen = await alice.presence(ids)
    assert len(seen) == 1102  # duplicates collapsed
    assert sorted(calls) == sorted([PRESENCE_BATCH, PRESENCE_BATCH, 1102 - 2 * PRESENCE_BATCH])
    assert seen[stranger.user_id].status == "unknown"
    assert seen["u_fake7"].status == "unknown"
    assert seen[bob.user_id].status in ("online", "offline")

    async def bob_online() -> bool:
        return (await alice.presence([bob.user_id or ""]))[bob.user_id or ""].status == "online"

    await eventually(bob_online)


async def test_presence_events_and_offline_peer_on_send(
    presence_server: ServerProcess, make_client: MakeClient
) -> None:
    alice = await make_client(presence_server, "alice")
    bob = await make_client(presence_server, "bob", connect=False)
    assert bob.user_id
    conv = (await alice.create_direct(bob.user_id)).conversation_id
    la = EventLog(alice)

    # Bob has no device online: both the ack and the HTTP answer say so.
    ack = await asyncio.wait_for(alice.send(conv, "are you there?"), 10)
    assert ack.peer_presence is not None
    assert (ack.peer_presence.user_id, ack.peer_presence.status) == (bob.user_id, "offline")
    result = await alice.post_message_result(conv, "hello?")
    assert result.peer_presence is not None and result.peer_presence.user_id == bob.user_id
    assert result.message.seq == 2

    await bob.connect()
    await la.wait_until(presence_of(bob.user_id, "online"))
    ack = await asyncio.wait_for(alice.send(conv, "there you are"), 10)
    assert ack.peer_presence is None
    assert (await alice.post_message_result(conv, "hi")).peer_presence is None

    await bob.close()
    await la.wait_until(presence_of(bob.user_id, "offline"))
    offline = [e for e in la.events if isinstance(e, PresenceEvent) and e.status == "offline"]
    assert offline[-1].last_seen is not None
    # The stream carries presence between logged events without disturbing them.
    assert [m.seq for m in la.messages(conv)] == [1, 2, 3, 4]


async def test_group_lifecycle(presence_server: ServerProcess, make_client: MakeClient) -> None:
    admin = await make_client(presence_server, "admin")
    b = await make_client(presence_server, "b")
    c = await make_client(presence_server, "c")
    d = await make_client(presence_server, "d", connect=False)
    assert admin.user_id and b.user_id and c.user_id and d.user_id
    la, lb, lc = EventLog(admin), EventLog(b), EventLog(c)

    group = await admin.create_group("Trip", [b.user_id, c.user_id])
    cid = group.conversation_id
    assert (group.type, group.title) == ("group", "Trip")
    roles = {m.user_id: m.role for m in await admin.members(cid)}
    assert roles == {admin.user_id: "admin", b.user_id: "member", c.user_id: "member"}
    await lb.wait_until(
        lambda log: any(
            isinstance(e, ConversationEvent) and e.conversation.conversation_id == cid
            for e in log.events
        )
    )

    # Everyone sends at once; everyone sees one order.
    acks = await asyncio.wait_for(
        asyncio.gather(
            *(
                cl.send(cid, f"{n}{i}")
                for i in range(5)
                for n, cl in (("a", admin), ("b", b), ("c", c))
            )
        ),
        20,
    )
    assert sorted(a.seq for a in acks) == list(range(1, 16))
    assert all(a.peer_presence is None for a in acks)  # groups never carry it
    for log in (la, lb, lc):
        await log.wait_until(lambda log: len(log.messages(cid)) == 15)
    orders = [[(m.seq, m.body) for m in log.messages(cid)] for log in (la, lb, lc)]
    assert orders[0] == orders[1] == orders[2]

    # Typing reaches the other members, not the typer.
    c.typing(cid)
    for log in (la, lb):
        await log.wait_until(
            lambda log: any(
                isinstance(e, TypingEvent) and (e.user_id, e.conversation_id) == (c.user_id, cid)
                for e in log.events
            )
        )
    assert not any(isinstance(e, TypingEvent) for e in lc.events)

    # Only the admin changes the group.
    with pytest.raises(Forbidden) as denied:
        await b.add_member(cid, d.user_id)
    assert denied.value.code == "forbidden"
    with pytest.raises(Forbidden):
        await b.rename_group(cid, "Mine")
    renamed = await admin.rename_group(cid, "Trip 2025")
    assert renamed.title == "Trip 2025"
    await admin.add_member(cid, d.user_id)
    assert len(await d.members(cid)) == 4
    # Full (the server here allows MAX_GROUP members); and a direct chat is no group.
    extra = await make_client(presence_server, "extra", connect=False)
    with pytest.raises(InvalidRequest) as full:
        await admin.add_member(cid, extra.user_id or "")
    assert full.value.code == "too_many_members"
    with pytest.raises(InvalidRequest) as too_big:
        await admin.create_group("big", [b.user_id, c.user_id, d.user_id, extra.user_id or ""])
    assert too_big.value.code == "too_many_members"
    dm = await admin.create_direct(b.user_id)
    with pytest.raises(InvalidRequest) as not_group:
        await admin.add_member(dm.conversation_id, d.user_id)
    assert not_group.value.code == "not_a_group"

    # A removed member is told, gets nothing new, and reads only up to the removal.
    await admin.remove_member(cid, c.user_id)
    await lc.wait_until(
        lambda log: any(
            isinstance(e, ConversationEvent)
            and e.conversation.conversation_id == cid
            and c.user_id not in [m.user_id for m in e.conversation.members]
            for e in log.events
        )
    )
    ack = await asyncio.wait_for(admin.send(cid, "after c left"), 10)
    await lb.wait_until(lambda log: any(m.seq == ack.seq for m in log.messages(cid)))
    assert all(m.seq < ack.seq for m in lc.messages(cid))
    assert [m.seq for m in (await c.get_messages(cid)).messages] == list(range(1, 16))
    with pytest.raises(NotFound):
        await asyncio.wait_for(c.send(cid, "let me back"), 10)

    # Leaving: the admin leaves and the longest-standing member takes over.
    await admin.leave(cid)
    roles = {m.user_id: m.role for m in await b.members(cid)}
    assert roles == {b.user_id: "admin", d.user_id: "member"}
    await d.leave(cid)
    assert [m.user_id for m in await b.members(cid)] == [b.user_id]
    with pytest.raises(NotFound):
        await d.post_message(cid, "gone")

    # History and sending work by conversation id alike for groups.
    await b.post_message(cid, "alone now")
    assert (await b.get_messages(cid, limit=1)).messages[0].body == "alone now"


async def test_all_conversations_pages_through_everything(
    presence_server: ServerProcess, make_client: MakeClient
) -> None:
    alice = await make_client(presence_server, "alice", connect=False)
    bob = await make_client(presence_server, "bob", connect=False)
    assert bob.user_id
    # Created back to back: several share a millisecond, which paging must not skip.
    created = [(await alice.create_group(f"g{i}", [bob.user_id])).conversation_id for i in range(7)]
    dm = (await alice.create_direct(bob.user_id)).conversation_id
    got = await alice.all_conversations(page_size=2)
    assert sorted(c.conversation_id for c in got) == sorted([*created, dm])
    assert len(got) == 8
    assert {c.conversation_id for c in await bob.all_conversations(page_size=3)} == {*created, dm}
