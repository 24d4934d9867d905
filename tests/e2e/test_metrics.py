"""`/metrics` in the Prometheus text format, counting what actually happened."""

from __future__ import annotations

import re

import aiohttp

from tests.e2e.wire import call, direct, new_users, recv_until, ws_open
from tests.harness import ServerProcess


def sample(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


async def test_metrics_count_messages_connections_and_errors(
    server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    alice, bob = await new_users(http, server.url, 2)
    conv = await direct(http, alice, bob)
    ws, _ = await ws_open(http, alice.base, alice.token)
    for i in range(3):
        await ws.send_json(
            {
                "type": "send",
                "conversation_id": conv["conversation_id"],
                "client_msg_id": f"m{i}",
                "body": "hi",
            }
        )
        await recv_until(ws, lambda f: f["type"] == "ack")
    assert (await call(http, "GET", server.url + "/v1/nope")).status == 404
    async with http.get(server.url + "/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    assert sample(text, "parley_messages_in_total") == 3
    assert sample(text, "parley_connections") == 1
    assert sample(text, "parley_ack_latency_seconds_count") == 3
    assert sample(text, "parley_delivery_latency_seconds_count") == 3
    assert sample(text, "parley_storage_batch_size_count") >= 3
    assert sample(text, "parley_storage_commit_seconds_count") >= 3
    # One queue wait per batch: the oldest write's, taken when the batch starts.
    assert sample(text, "parley_storage_queue_wait_seconds_count") >= 3
    # Each acked send waited for a WAL sync; one sync may cover several commits.
    assert sample(text, "parley_storage_sync_seconds_count") >= 3
    assert sample(text, "parley_storage_sync_seconds_count") <= sample(
        text, "parley_storage_commit_seconds_count"
    )
    assert sample(text, 'parley_errors_total{code="not_found"}') == 1
    assert sample(text, "parley_events_out_total") == 3  # the echo of each send to alice
    assert "parley_event_log_lag_seconds_bucket" in text
    assert sample(text, "parley_storage_log_entries_unwritten") >= 0
    # The server froze what startup built, so collections do not walk it again.
    assert sample(text, "parley_gc_frozen_objects") > 10_000
    assert 'python_gc_collections_total{generation="2"}' in text
    await ws.close()


async def test_reads_after_a_write_come_from_memory(
    server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    """Design section 7: a conversation just written to is read back from the
    cache (its committed snapshot), not from disk: history, the conversation,
    and the conversation list with its unread count."""
    alice, bob = await new_users(http, server.url, 2)
    conv = await direct(http, alice, bob)
    cid = conv["conversation_id"]
    sent = []
    for i in range(3):
        r = await call(
            http,
            "POST",
            f"{server.url}/v1/conversations/{cid}/messages",
            token=alice.token,
            json_body={"client_msg_id": f"c{i}", "body": f"cached {i}"},
        )
        assert r.status == 201, r
        sent.append(r.body["message"])

    async def cache_counts() -> tuple[float, float]:
        async with http.get(server.url + "/metrics") as r:
            text = await r.text()
        assert sample(text, "parley_cache_conversations") >= 1
        return sample(text, "parley_cache_hits"), sample(text, "parley_cache_misses")

    hits, misses = await cache_counts()
    r = await call(http, "GET", f"{server.url}/v1/conversations/{cid}/messages", token=bob.token)
    assert r.status == 200 and r.body["messages"] == sent, r
    r = await call(http, "GET", f"{server.url}/v1/conversations/{cid}", token=bob.token)
    assert r.status == 200 and r.body["last_message"] == sent[-1], r
    assert r.body["unread"] == 3, r
    for _ in range(2):  # the first read loads bob's list order; both read records from memory
        r = await call(http, "GET", f"{server.url}/v1/conversations", token=bob.token)
        assert r.status == 200, r
        first = r.body["conversations"][0]
        assert first["conversation_id"] == cid and first["unread"] == 3, r
        assert first["last_message"] == sent[-1], r
    hits_after, misses_after = await cache_counts()
    assert hits_after >= hits + 4 and misses_after == misses
