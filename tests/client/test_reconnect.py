"""The SDK across `kill -9` of the server: nothing lost, nothing doubled, order kept."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from parley.client import Ack, Disconnected, Message, ParleyClient
from tests.client.conftest import EventLog, MakeClient
from tests.harness import ServerProcess


async def _history(client: ParleyClient, conversation_id: str) -> list[Message]:
    messages: list[Message] = []
    async for page in client.history(conversation_id, page_size=7):
        messages[:0] = page
    return messages


async def test_kill_restart_while_two_clients_chat(tmp_path: Path, make_client: MakeClient) -> None:
    server = ServerProcess(tmp_path / "data", "--send-rate-limit", "0").start()
    try:
        alice = await make_client(server, "alice")
        bob = await make_client(server, "bob")
        conv = (await alice.create_direct(bob.user_id or "")).conversation_id
        la, lb = EventLog(alice), EventLog(bob)

        sent: dict[str, asyncio.Future[Ack]] = {}

        def burst(tag: str, n: int) -> None:
            for i in range(n):
                for who, client in (("a", alice), ("b", bob)):
                    body = f"{who}-{tag}-{i}"
                    sent[body] = client.send(conv, body)

        for cycle in (1, 2):
            burst(f"before{cycle}", 20)
            # Kill mid-stream: some sends acknowledged, others in flight or unsent.
            first = list(sent.values())[-40:-34]
            await asyncio.wait_for(asyncio.gather(*first), 20)
            burst(f"racing{cycle}", 20)
            server.kill()
            await la.wait_until(lambda log, c=cycle: log.disconnected() >= c)
            await lb.wait_until(lambda log, c=cycle: log.disconnected() >= c)
            burst(f"down{cycle}", 10)
            assert alice.pending_sends > 0 and bob.pending_sends > 0
            resent_before = alice.resent + bob.resent

            await asyncio.to_thread(server.start)
            await la.wait_until(lambda log, c=cycle: log.reconnected() >= c)
            await lb.wait_until(lambda log, c=cycle: log.reconnected() >= c)
            assert alice.resent + bob.resent > resent_before
            burst(f"after{cycle}", 10)

        acks = await asyncio.wait_for(asyncio.gather(*sent.values()), 60)
        total = len(sent)
        assert sorted(a.seq for a in acks) == list(range(1, total + 1))
        seq_of = {body: fut.result().seq for body, fut in sent.items()}
        body_of = {seq: body for body, seq in seq_of.items()}
        assert alice.pending_sends == 0 and bob.pending_sends == 0

        for log in (la, lb):
            await log.wait_until(lambda log: len(log.messages(conv)) >= total, within=30)
            streamed = log.messages(conv)
            assert [m.seq for m in streamed] == list(range(1, total + 1))
            assert [m.body for m in streamed] == [body_of[s] for s in range(1, total + 1)]
        for client in (alice, bob):
            history = await _history(client, conv)
            assert [m.seq for m in history] == list(range(1, total + 1))
            assert [m.body for m in history] == [body_of[s] for s in range(1, total + 1)]
        # Each sender's own messages keep their send order.
        for who in ("a", "b"):
            mine = [seq_of[b] for b in sent if b.startswith(who + "-")]
            assert mine == sorted(mine)
    finally:
        server.stop()


async def test_unacked_send_is_resent_with_same_client_msg_id(
    tmp_path: Path, make_client: MakeClient
) -> None:
    server = ServerProcess(tmp_path / "data").start()
    try:
        alice = await make_client(server, "alice")
        bob = await make_client(server, "bob")
        conv = (await alice.create_direct(bob.user_id or "")).conversation_id
        la, lb = EventLog(alice), EventLog(bob)
        await asyncio.wait_for(alice.send(conv, "first"), 10)

        server.kill()
        await la.wait_until(lambda log: log.count(Disconnected) >= 1)
        reconnected = asyncio.ensure_future(alice.wait_connected())
        pending = alice.send(conv, "queued while down", client_msg_id="resend-1")
        # Asking again with the same id while pending is the same send.
        assert alice.send(conv, "queued while down", client_msg_id="resend-1") is pending
        await asyncio.sleep(0.2)
        assert not reconnected.done()  # down: waits for the socket to come back
        await asyncio.to_thread(server.start)
        await asyncio.wait_for(reconnected, 30)

        ack = await asyncio.wait_for(pending, 30)
        assert (ack.seq, ack.client_msg_id) == (2, "resend-1")
        # Sending the same client_msg_id again is answered with the original message.
        again = await asyncio.wait_for(
            alice.send(conv, "queued while down", client_msg_id="resend-1"), 10
        )
        assert (again.seq, again.message_id) == (ack.seq, ack.message_id)
        over_http = await alice.post_message(conv, "queued while down", client_msg_id="resend-1")
        assert (over_http.seq, over_http.message_id) == (ack.seq, ack.message_id)

        await asyncio.wait_for(alice.send(conv, "third"), 10)
        for log in (la, lb):
            await log.wait_until(lambda log: any(m.seq == 3 for m in log.messages(conv)))
            assert [(m.seq, m.body) for m in log.messages(conv)] == [
                (1, "first"),
                (2, "queued while down"),
                (3, "third"),
            ]
        assert [m.seq for m in await _history(bob, conv)] == [1, 2, 3]
    finally:
        server.stop()


async def test_silent_server_is_detected_by_keepalive(
    tmp_path: Path, make_client: MakeClient
) -> None:
    server = ServerProcess(tmp_path / "data").start()
    try:
        alice = await make_client(server, "alice", ping_interval=0.2, pong_timeout=0.5)
        bob = await make_client(server, "bob")
        conv = (await alice.create_direct(bob.user_id or "")).conversation_id
        la = EventLog(alice)
        assert server.proc is not None
        # A frozen server keeps the TCP connection open but answers nothing:
        # only the keepalive ping can tell.
        server.proc.send_signal(signal.SIGSTOP)
        try:
            await la.wait_until(
                lambda log: any(
                    isinstance(e, Disconnected) and "ping" in e.reason for e in log.events
                )
            )
        finally:
            server.proc.send_signal(signal.SIGCONT)
        assert alice.pings_sent >= 1
        await la.wait_until(lambda log: log.reconnected() >= 1)
        ack = await asyncio.wait_for(alice.send(conv, "still here"), 20)
        await la.wait_until(lambda log: any(m.seq == ack.seq for m in log.messages(conv)))
    finally:
        server.stop()
