"""Smoke test of `parley bench`: every scenario with tiny sizes, against a real
`parley serve` (started by the test harness, given to the bench with --url) and
the bench's own bare relay, in one run. Checks the report's shape and that the
numbers are sane, not that they are fast."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from parley.bench import main
from parley.bench.cli import choose
from parley.bench.report import percentile, summarize_us
from parley.bench.scenarios import SCENARIOS
from tests.harness import ServerProcess

TINY = [
    "--no-pin",
    "--quiet",
    "--workers=1",
    "--pairs=3",
    "--window=4",
    "--warmup=0.3",
    "--duration=1",
    "--rates=500",
    "--latency-pairs=3",
    "--latency-duration=1",
    "--connections=120",
    "--probe-duration=0.5",
    "--history-messages=600",
    "--history-requests=20",
    "--catchup-messages=300",
    "--catchup-conversations=5",
    "--catchup-repeats=2",
    "--group-members=8",
    "--group-duration=1",
]


@pytest.fixture(scope="module")
def bench_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(
        tmp_path_factory.mktemp("bench") / "data",
        "--send-rate-limit",
        "0",
        "--auth-rate-limit",
        "100000",
    ).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def report(bench_server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = tmp_path_factory.mktemp("bench-out") / "report.json"
    assert bench_server.proc is not None
    argv = [*TINY, "--url", bench_server.url, "--server-pid", str(bench_server.proc.pid)]
    code = main([*argv, "--json", str(out)])
    data = json.loads(out.read_text())
    assert code == 0, data["skipped"]
    return data


def metrics(report: Any, target: str, scenario: str) -> dict[str, Any]:
    res = report["results"][target][scenario]
    assert "error" not in res, res["error"]
    m: dict[str, Any] = res["metrics"]
    return m


def test_report_records_machine_and_revision(report: Any) -> None:
    assert report["machine"]["cores"] >= 1
    assert report["machine"]["python"].count(".") == 2
    assert report["machine"]["kernel"]
    assert report["machine"]["cpu_model"]
    assert 0 <= report["machine"]["cpu_steal_pct_during_run"] <= 100
    assert "revision" in report["git"]
    assert set(report["results"]) == {"parley", "baseline"}
    assert report["table"], "no rows in the table"


@pytest.mark.parametrize("target", ["parley", "baseline"])
def test_throughput(report: Any, target: str) -> None:
    m = metrics(report, target, "throughput")
    assert m["messages_per_s"] > 50
    assert 0 < m["done_p50_ms"] <= m["done_p99_ms"] < 5000
    res = report["results"][target]["throughput"]
    assert res["errors"] == {}
    assert res["delivered_frames"] > 0  # at once, once per read burst
    assert 0 < m["server_cpu_pct"] <= 110 and 0 < m["load_cpu_pct"] <= 110
    assert sum(res["per_second"]) > 0


@pytest.mark.parametrize("target", ["parley", "baseline"])
def test_latency(report: Any, target: str) -> None:
    m = metrics(report, target, "latency")
    assert m["500_achieved_per_s"] > 250  # offered 500/s for 1 s
    assert 0 < m["500_ack_p50_ms"] <= m["500_ack_p99_ms"] < 5000
    assert 0 < m["500_deliver_p50_ms"] <= m["500_deliver_p99.9_ms"] < 5000
    # The server's core time per message over the window: its CPU over its rate.
    assert 0 < m["500_server_cpu_pct"] <= 110
    per_message = 1e4 * m["500_server_cpu_pct"] / m["500_achieved_per_s"]
    assert m["500_core_us_per_msg"] == pytest.approx(per_message, rel=0.01, abs=0.2)
    # receivers coalesce `delivered` over 50 ms as Parley's clients do: 3 pairs
    # over ~1.3 s send at most ~30 of them for ~650 messages, and at least one
    res = report["results"][target]["latency"]["rates"]["500"]
    assert 0 < res["delivered_frames"] <= 3 * (1.3 / 0.05 + 2) < res["sent"], res


def test_storage(report: Any) -> None:
    """The store alone, in a process of its own: what it stored, the CPU of its
    own threads (named, read from /proc) and what that makes per message."""
    m = metrics(report, "parley", "storage")
    res = report["results"]["parley"]["storage"]["rates"]["500"]
    assert m["500_stored_per_s"] > 250  # offered 500/s for 1 s
    assert res["commits_per_s"] > 0 and res["writes_per_commit"] >= 1
    threads = res["thread_cpu_s"]
    assert threads["sqlite-writer"] > 0 and "sqlite-sync" in threads, threads
    store = sum(s for name, s in threads.items() if name.startswith("sqlite-"))
    assert m["500_store_cpu_pct"] == pytest.approx(100 * store / res["seconds"], abs=0.2)
    assert m["500_store_us_per_msg"] == pytest.approx(
        1e6 * store / (res["stored_per_s"] * res["seconds"]), rel=0.01
    )
    assert report["results"]["baseline"]["storage"] == {"skipped": "the bare relay stores nothing"}


@pytest.mark.parametrize("target", ["parley", "baseline"])
def test_connections(report: Any, target: str) -> None:
    m = metrics(report, target, "connections")
    res = report["results"][target]["connections"]
    assert m["open"] == 120 and res["still_open"] == 120, res["failed"]
    assert m["connect_per_s"] > 10
    assert m["rss_per_conn_kib"] is not None and 0 < m["rss_per_conn_kib"] < 1000
    assert m["probe_deliver_p99_ms"] > 0


@pytest.mark.parametrize("target", ["parley", "baseline"])
def test_history(report: Any, target: str) -> None:
    m = metrics(report, target, "history")
    res = report["results"][target]["history"]
    assert res["messages"] == 600
    assert res["short_pages"] == 0
    assert 0 < m["newest_p50_ms"] <= m["newest_p99_ms"] < 5000
    assert 0 < m["deep_p50_ms"] <= m["deep_p99_ms"] < 5000


@pytest.mark.parametrize("target", ["parley", "baseline"])
def test_catchup(report: Any, target: str) -> None:
    m = metrics(report, target, "catchup")
    runs = report["results"][target]["catchup"]["runs"]
    assert len(runs) == 2 and all(r["messages"] == 300 for r in runs)
    assert 0 < m["catchup_median_s"] < 30


def test_group(report: Any) -> None:
    base = metrics(report, "baseline", "group")
    assert base["messages_per_s"] > 10
    assert base["deliveries_per_s"] == pytest.approx(base["messages_per_s"] * 7)
    assert 0 < base["last_member_p50_ms"] <= base["last_member_p99_ms"]
    res = report["results"]["parley"]["group"]
    if "skipped" in res:  # groups are not in the server yet
        assert "server has no groups" in res["skipped"]
    else:
        assert metrics(report, "parley", "group")["messages_per_s"] > 10


def test_ratio_column(report: Any) -> None:
    rows = {(r["scenario"], r["metric"]): r for r in report["table"]}
    row = rows[("throughput", "1:1 fully done")]
    assert row["ratio"] == pytest.approx(row["parley"] / row["baseline"])


def test_scenario_selection() -> None:
    assert choose([]) == (list(SCENARIOS), True, True)
    assert choose(["throughput"]) == (["throughput"], True, False)
    assert choose(["latency", "baseline"]) == (["latency"], True, True)
    names, parley, baseline = choose(["baseline"])
    assert not parley and baseline and "group" in names
    with pytest.raises(SystemExit):
        choose(["nonsense"])


def test_percentiles() -> None:
    values = list(range(1, 1001))
    assert percentile(values, 50) == 500
    assert percentile(values, 99) == 990
    assert percentile(values, 99.9) == 999
    assert percentile([], 50) is None
    s = summarize_us([1000, 2000, 3000])
    assert s["p50_ms"] == 2.0 and s["max_ms"] == 3.0 and s["count"] == 3
