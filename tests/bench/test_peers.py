"""The load generator of `parley bench peers`, driving a real `parley serve` over
HTTP the way it drives Synapse (which `make bench-peers` installs on its own)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from parley.bench.peers import ParleyHttp, drive
from parley.bench.targets import cpu_seconds
from tests.harness import ServerProcess


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(
        tmp_path / "data", "--send-rate-limit", "0", "--auth-rate-limit", "100000"
    ).start()
    yield srv
    srv.stop()


async def test_pairs_exchange_messages_and_report_rate_latency_and_cpu(
    server: ServerProcess,
) -> None:
    assert server.proc is not None
    pid = server.proc.pid
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        peer = ParleyHttp(http, server.url)
        res = await drive(peer, 3, 2, 0.5, 1.5, lambda: cpu_seconds(pid))
    assert res["messages"] > 10
    assert res["messages_per_s"] == pytest.approx(res["messages"] / 1.5, rel=0.2)
    assert 0 < res["done_p50_ms"] <= res["done_p99_ms"] < 5000
    assert 0 < res["server_cpu_pct"] <= 200


async def test_the_receiver_sees_exactly_what_was_sent(server: ServerProcess) -> None:
    async with aiohttp.ClientSession() as http:
        peer = ParleyHttp(http, server.url)
        alice, bob = await peer.user("peers-alice"), await peer.user("peers-bob")
        room = await peer.pair(alice, bob)
        inbox = peer.receive(bob)
        first = asyncio.ensure_future(anext(inbox))
        await asyncio.sleep(0.5)  # bob is now waiting in a long-poll
        await peer.send(alice, room, "t1", "one")
        await peer.send(alice, room, "t2", "two")
        await peer.send(alice, room, "t2", "two")  # a retry: stored once
        seen = await asyncio.wait_for(first, 10)
        while len(seen) < 2:
            seen += await asyncio.wait_for(anext(inbox), 10)
        assert seen == ["one", "two"]
        later: list[str] = []
        with pytest.raises(TimeoutError):  # nothing more: the retry was not a new message
            while True:
                later += await asyncio.wait_for(anext(inbox), 1)
        assert later == []
