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
    assert sample(text, 'parley_errors_total{code="not_found"}') == 1
    assert sample(text, "parley_events_out_total") == 3  # the echo of each send to alice
    assert "parley_event_log_lag_seconds_bucket" in text
    await ws.close()
