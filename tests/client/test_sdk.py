"""The SDK against a real server: REST helpers, sending, receipts, dedup, history."""

from __future__ import annotations

import asyncio

import pytest

from parley.client import (
    Connected,
    ParleyClient,
    ReceiptEvent,
    Resync,
    SeqSet,
    SessionRevoked,
    TypingEvent,
)
from parley.protocol.errors import Conflict, NotFound, TooLarge, Unauthorized
from tests.client.conftest import PASSWORD, EventLog, MakeClient, unique
from tests.harness import ServerProcess


def test_seqset_handles_gaps_and_duplicates() -> None:
    seen = SeqSet(max_stragglers=3)
    added = [seen.add(s) for s in (1, 2, 2, 4, 3, 4, 1)]
    assert added == [True, True, False, True, True, False, False]
    assert 4 in seen and 5 not in seen
    # A client that joined late never sees the seqs below its first one; the
    # stragglers stay bounded and later seqs are still told apart.
    late = SeqSet(max_stragglers=3)
    for s in range(100, 110):
        assert late.add(s)
    assert not late.add(105)
    assert late.add(110)


async def test_accounts_sessions_and_users(shared_server: ServerProcess) -> None:
    async with ParleyClient(shared_server.url) as anon:
        name = unique("acct")
        user = await anon.register(name, PASSWORD, display_name="Acct")
        assert (user.username, user.display_name) == (name, "Acct")
        with pytest.raises(Conflict) as taken:
            await anon.register(name, PASSWORD)
        assert taken.value.code == "username_taken"
        with pytest.raises(Unauthorized):
            await anon.login(name, "wrong password!")
        session = await anon.login(name, PASSWORD, device_name="laptop")
        assert session.user_id == user.user_id and anon.token == session.token
        assert (await anon.find_user(name)).user_id == user.user_id
        assert (await anon.get_user(user.user_id)).username == name
        with pytest.raises(NotFound):
            await anon.find_user(unique("nobody"))

    # A client built from a stored token works at once, socket included.
    async with ParleyClient(shared_server.url, session.token) as again:
        assert (await again.find_user(name)).user_id == user.user_id
        await again.connect()
        assert again.user_id == user.user_id and again.device_id == session.device_id

    async with ParleyClient(shared_server.url, "not-a-token") as bad:
        with pytest.raises(SessionRevoked):
            await bad.list_conversations()
        with pytest.raises(SessionRevoked):
            await bad.connect()


async def test_conversations_and_mark_read(
    shared_server: ServerProcess, make_client: MakeClient
) -> None:
    alice = await make_client(shared_server, "alice", connect=False)
    bob = await make_client(shared_server, "bob", connect=False)
    assert bob.user_id is not None
    conv = await alice.create_direct(bob.user_id)
    assert conv.type == "direct"
    assert {m.user_id for m in conv.members} == {alice.user_id, bob.user_id}
    assert (await bob.create_direct(alice.user_id or "")).conversation_id == conv.conversation_id
    for i in range(3):
        await alice.post_message(conv.conversation_id, f"m{i}")
    listed = await bob.list_conversations()
    assert [c.conversation_id for c in listed] == [conv.conversation_id]
    assert listed[0].unread == 3 and listed[0].last_seq == 3
    await bob.mark_read(conv.conversation_id, 2)
    got = await bob.get_conversation(conv.conversation_id)
    me = next(m for m in got.members if m.user_id == bob.user_id)
    assert (me.read_seq, got.unread) == (2, 1)


async def test_send_ack_message_and_delivered_receipt(
    shared_server: ServerProcess, make_client: MakeClient
) -> None:
    alice = await make_client(shared_server, "alice")
    bob = await make_client(shared_server, "bob")
    conv = (await alice.create_direct(bob.user_id or "")).conversation_id
    la, lb = EventLog(alice), EventLog(bob)

    ack = await asyncio.wait_for(alice.send(conv, "hello bob", client_msg_id="c-1"), 10)
    assert (ack.seq, ack.client_msg_id, ack.conversation_id) == (1, "c-1", conv)

    await lb.wait_until(lambda log: len(log.messages(conv)) == 1)
    msg = lb.messages(conv)[0]
    assert (msg.body, msg.sender_id, msg.message_id) == ("hello bob", alice.user_id, ack.message_id)
    # The sender's own device sees its message too (for its other devices' sake).
    await la.wait_until(lambda log: len(log.messages(conv)) == 1)
    # Bob's client acknowledges delivery by itself; Alice hears of it.
    await la.wait_until(
        lambda log: any(
            isinstance(e, ReceiptEvent)
            and e.user_id == bob.user_id
            and e.status == "delivered"
            and e.seq == 1
            for e in log.events
        )
    )
    # Pipelined sends get their seqs in call order.
    futures = [alice.send(conv, f"p{i}") for i in range(30)]
    acks = await asyncio.wait_for(asyncio.gather(*futures), 20)
    assert [a.seq for a in acks] == list(range(2, 32))
    await lb.wait_until(lambda log: len(log.messages(conv)) == 31)
    assert [m.seq for m in lb.messages(conv)] == list(range(1, 32))

    with pytest.raises(TooLarge):
        alice.send(conv, "x" * (16 * 1024 + 1))
    with pytest.raises(NotFound):
        await asyncio.wait_for(alice.send("c-does-not-exist", "hi"), 10)
    assert alice.pending_sends == 0


async def test_delivered_acks_are_coalesced(
    shared_server: ServerProcess, make_client: MakeClient
) -> None:
    alice = await make_client(shared_server, "alice")
    bob = await make_client(shared_server, "bob", connect=False)
    conv = (await alice.create_direct(bob.user_id or "")).conversation_id
    start = (await bob.poll_events()).next
    for i in range(20):
        await alice.post_message(conv, f"offline {i}")
    la = EventLog(alice)
    # Bob comes online: the 20 messages are replayed in one burst and his
    # client owes one `delivered` watermark for all of them.
    await bob.connect(since=start)
    lb = EventLog(bob)
    await lb.wait_until(lambda log: len(log.messages(conv)) == 20)
    await la.wait_until(
        lambda log: any(
            isinstance(e, ReceiptEvent) and e.user_id == bob.user_id and e.seq == 20
            for e in log.events
        )
    )
    assert 1 <= bob.delivered_frames_sent < 5
    got = await alice.get_conversation(conv)
    assert next(m for m in got.members if m.user_id == bob.user_id).delivered_seq == 20


async def test_replayed_messages_are_deduplicated(
    shared_server: ServerProcess, make_client: MakeClient
) -> None:
    alice = await make_client(shared_server, "alice")
    bob = await make_client(shared_server, "bob")
    conv = (await alice.create_direct(bob.user_id or "")).conversation_id
    lb = EventLog(bob)
    for i in range(5):
        await asyncio.wait_for(alice.send(conv, f"m{i}"), 10)
    await lb.wait_until(lambda log: len(log.messages(conv)) == 5)

    # Reconnect asking for everything again: the server replays the whole log.
    bob.force_reconnect(since=0)
    await lb.wait_until(lambda log: log.reconnected() == 1)
    await asyncio.wait_for(alice.send(conv, "after replay"), 10)
    await lb.wait_until(lambda log: any(m.seq == 6 for m in log.messages(conv)))
    assert [m.seq for m in lb.messages(conv)] == [1, 2, 3, 4, 5, 6]
    assert lb.count(Connected) == 2


async def test_history_pagination(shared_server: ServerProcess, make_client: MakeClient) -> None:
    alice = await make_client(shared_server, "alice", connect=False)
    bob = await make_client(shared_server, "bob", connect=False)
    conv = (await alice.create_direct(bob.user_id or "")).conversation_id
    for i in range(1, 26):
        await alice.post_message(conv, f"n{i}")

    pages = [[m.seq for m in page] async for page in bob.history(conv, page_size=10)]
    assert pages == [list(range(16, 26)), list(range(6, 16)), list(range(1, 6))]
    older = [[m.seq for m in page] async for page in bob.history(conv, page_size=7, before=9)]
    assert older == [list(range(2, 9)), [1]]
    after = await bob.get_messages(conv, after=20, limit=3)
    assert [m.seq for m in after.messages] == [21, 22, 23] and after.has_more
    newest = await bob.get_messages(conv)
    assert [m.body for m in newest.messages] == [f"n{i}" for i in range(1, 26)]
    assert not newest.has_more


async def test_logout_ends_the_socket(
    shared_server: ServerProcess, make_client: MakeClient
) -> None:
    alice = await make_client(shared_server, "alice")
    la = EventLog(alice)
    async with ParleyClient(shared_server.url, alice.token) as same_device:
        await same_device.logout()
    await la.wait_until(lambda log: log.error is not None)
    assert isinstance(la.error, SessionRevoked)
    with pytest.raises(SessionRevoked):
        await alice.list_conversations()


async def test_read_and_typing_over_the_socket(
    shared_server: ServerProcess, make_client: MakeClient
) -> None:
    alice = await make_client(shared_server, "alice")
    bob = await make_client(shared_server, "bob")
    conv = (await alice.create_direct(bob.user_id or "")).conversation_id
    la = EventLog(alice)
    for i in range(3):
        await asyncio.wait_for(alice.send(conv, f"m{i}"), 10)
    bob.read(conv, 3)
    await la.wait_until(
        lambda log: any(
            isinstance(e, ReceiptEvent) and (e.user_id, e.status, e.seq) == (bob.user_id, "read", 3)
            for e in log.events
        )
    )
    bob.typing(conv)
    await la.wait_until(
        lambda log: any(isinstance(e, TypingEvent) and e.user_id == bob.user_id for e in log.events)
    )


async def test_cursor_unknown_to_server_resyncs(
    shared_server: ServerProcess, make_client: MakeClient
) -> None:
    alice = await make_client(shared_server, "alice")
    bob = await make_client(shared_server, "bob")
    conv = (await alice.create_direct(bob.user_id or "")).conversation_id
    lb = EventLog(bob)
    # A cursor the server never issued (e.g. state kept across a data wipe).
    bob.force_reconnect(since=10**9)
    await lb.wait_until(lambda log: log.count(Resync) >= 1)
    # Sent while Bob resynchronises: resuming where the refusing socket's
    # `ready` stood, he still gets it.
    ack = await asyncio.wait_for(alice.send(conv, "after resync"), 10)
    await lb.wait_until(lambda log: log.reconnected() >= 2)
    await lb.wait_until(lambda log: any(m.seq == ack.seq for m in log.messages(conv)))
