"""`parley bench`: arguments, targets, the run, the table, JSON and plots."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from parley.bench import report
from parley.bench.report import Better, Row, rate_key
from parley.bench.scenarios import SCENARIOS, Ctx, Progress, Sizes, Users
from parley.bench.targets import (
    Target,
    external,
    plan_cores,
    raise_nofile,
    start_parley,
    start_relay,
)
from parley.bench.wire import Api, BenchError, NotSupported
from parley.bench.workers import Pool

NAMES = [*SCENARIOS, "baseline"]

Spec = tuple[str, str, str, str, Better]


def row_specs(rates: list[int]) -> list[Spec]:
    """(scenario, metric key, label, unit, better): the rows of the table, in order."""
    rows: list[Spec] = [
        ("throughput", "messages_per_s", "1:1 fully done", "msg/s", "higher"),
        ("throughput", "done_p50_ms", "send->receipt p50", "ms", "lower"),
        ("throughput", "done_p99_ms", "send->receipt p99", "ms", "lower"),
        ("throughput", "server_cpu_pct", "server CPU busy", "%", "lower"),
        ("throughput", "load_cpu_pct", "load generator CPU busy", "%", "lower"),
    ]
    for r in map(rate_key, rates):
        rows += [
            ("latency", f"{r}_achieved_per_s", f"@{r}/s delivered", "msg/s", "higher"),
            ("latency", f"{r}_ack_p50_ms", f"@{r}/s send->ack p50", "ms", "lower"),
            ("latency", f"{r}_ack_p99_ms", f"@{r}/s send->ack p99", "ms", "lower"),
            ("latency", f"{r}_deliver_p50_ms", f"@{r}/s send->deliver p50", "ms", "lower"),
            ("latency", f"{r}_deliver_p99_ms", f"@{r}/s send->deliver p99", "ms", "lower"),
            ("latency", f"{r}_deliver_p99.9_ms", f"@{r}/s send->deliver p99.9", "ms", "lower"),
            ("latency", f"{r}_server_cpu_pct", f"@{r}/s server CPU busy", "%", "lower"),
            ("latency", f"{r}_core_us_per_msg", f"@{r}/s server core per message", "us", "lower"),
        ]
    for r in map(rate_key, rates):
        rows += [
            ("storage", f"{r}_stored_per_s", f"@{r}/s stored, store alone", "msg/s", "higher"),
            ("storage", f"{r}_store_cpu_pct", f"@{r}/s store threads busy", "%", "lower"),
            ("storage", f"{r}_store_us_per_msg", f"@{r}/s store core per message", "us", "lower"),
        ]
    rows += [
        ("connections", "open", "idle sockets open", "conns", "higher"),
        ("connections", "connect_per_s", "connect rate", "conn/s", "higher"),
        ("connections", "rss_per_conn_kib", "server RSS per socket", "KiB", "lower"),
        ("connections", "idle_cpu_pct", "server CPU, all idle", "%", "lower"),
        ("connections", "probe_ack_p99_ms", "chat send->ack p99 while open", "ms", "lower"),
        ("connections", "probe_deliver_p99_ms", "chat send->deliver p99 while open", "ms", "lower"),
        ("history", "newest_p50_ms", "newest page p50", "ms", "lower"),
        ("history", "newest_p99_ms", "newest page p99", "ms", "lower"),
        ("history", "deep_p50_ms", "deep page p50", "ms", "lower"),
        ("history", "deep_p99_ms", "deep page p99", "ms", "lower"),
        ("history", "seed_per_s", "seeding (pipelined)", "msg/s", "higher"),
        ("catchup", "catchup_median_s", "time to current", "s", "lower"),
        ("catchup", "events_per_s", "replay rate", "events/s", "higher"),
        ("group", "messages_per_s", "group messages", "msg/s", "higher"),
        ("group", "deliveries_per_s", "group deliveries", "deliv/s", "higher"),
        ("group", "last_member_p50_ms", "to last member p50", "ms", "lower"),
        ("group", "last_member_p99_ms", "to last member p99", "ms", "lower"),
        ("group", "deliveries_vs_1to1", "deliveries / 1:1 msg/s", "x", "higher"),
        ("presence", "contacts", "contacts of the user", "users", "higher"),
        ("presence", "online_watchers", "of them online", "users", "higher"),
        ("presence", "events_per_online_change", "events per going online", "events", "lower"),
        ("presence", "events_per_offline_change", "events per going offline", "events", "lower"),
        ("presence", "batch500_p50_ms", "batch query of 500 p50", "ms", "lower"),
        ("presence", "batch500_p99_ms", "batch query of 500 p99", "ms", "lower"),
    ]
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="parley bench",
        description=(
            "Measure a Parley server (one it starts, pinned to a core, or --url) against a "
            "bare in-memory relay driven by the same load generator. Scenarios: "
            + ", ".join(NAMES)
            + ". Default: all. Naming 'baseline' with others also runs those on the relay; "
            "naming only scenarios measures Parley alone; 'baseline' alone measures the relay."
        ),
    )
    p.add_argument("scenarios", nargs="*", metavar="SCENARIO", help="default: all")
    p.add_argument("--full", action="store_true", help="the issue's sizes (takes much longer)")
    p.add_argument("--url", help="bench a running server instead of starting one")
    p.add_argument("--server-pid", type=int, help="with --url: its pid, for RSS figures")
    p.add_argument("--server-arg", action="append", default=[], help="extra `parley serve` flag")
    p.add_argument("--json", type=Path, help="write the full report here")
    p.add_argument("--plots", type=Path, help="write PNG plots into this directory")
    p.add_argument("--workers", type=int, help="load processes (default: the load cores)")
    p.add_argument("--no-pin", action="store_true", help="do not pin server and load to cores")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    g = p.add_argument_group("sizes (override --full / quick defaults)")
    g.add_argument("--pairs", type=int, help="throughput: sender/receiver pairs")
    g.add_argument("--window", type=int, help="throughput: unfinished messages per pair")
    g.add_argument("--duration", type=float, help="throughput: measured seconds")
    g.add_argument("--warmup", type=float, help="seconds before measuring")
    g.add_argument("--rates", help="latency: offered msg/s, comma-separated")
    g.add_argument("--latency-pairs", type=int)
    g.add_argument("--latency-duration", type=float)
    g.add_argument(
        "--delivered-delay",
        type=float,
        help="latency, connections: receivers coalesce `delivered` over this many"
        " seconds, as Parley's clients do (default 0.05; 0: once per read burst)",
    )
    g.add_argument("--connections", type=int, help="idle sockets (19000 for the issue's target)")
    g.add_argument("--probe-duration", type=float, help="connections: chat probe seconds")
    g.add_argument("--history-messages", type=int)
    g.add_argument("--history-requests", type=int)
    g.add_argument("--catchup-messages", type=int)
    g.add_argument("--catchup-conversations", type=int)
    g.add_argument("--catchup-repeats", type=int)
    g.add_argument("--group-members", type=int)
    g.add_argument("--group-duration", type=float)
    g.add_argument("--presence-contacts", type=int)
    g.add_argument("--presence-queries", type=int)
    return p


def sizes_from(args: argparse.Namespace) -> Sizes:
    s = Sizes.full() if args.full else Sizes()
    for name in vars(s):
        v = getattr(args, name, None)
        if v is not None:
            if name == "rates":
                v = [int(x) for x in str(v).split(",") if x.strip()]
            setattr(s, name, v)
    return s


def choose(names: list[str]) -> tuple[list[str], bool, bool]:
    """(scenarios, run on parley, run on baseline)."""
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        raise SystemExit(f"parley bench: unknown scenario {', '.join(unknown)} (known: {NAMES})")
    picked = [n for n in SCENARIOS if n in names]
    if not names:
        return list(SCENARIOS), True, True
    if not picked:  # only "baseline"
        return list(SCENARIOS), False, True
    return picked, True, "baseline" in names


async def run_target(
    target: Target, scenarios: list[str], pool: Pool, workers: int, sizes: Sizes, prog: Progress
) -> tuple[dict[str, Any], dict[str, str]]:
    api = Api(target.url)
    ctx = Ctx(target, api, pool, workers, sizes, Users(api), prog)
    out: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    try:
        for name in scenarios:
            prog.note(f"[{target.name}] {name}")
            t0 = time.monotonic()
            try:
                res = await SCENARIOS[name](ctx)
            except NotSupported as exc:
                why = f"skipped: server has no {name}s ({exc})" if name == "group" else str(exc)
                skipped[f"{target.name}/{name}"] = why
                out[name] = {"skipped": why}
                prog.note(f"  {why}")
                continue
            except (BenchError, OSError, TimeoutError) as exc:
                why = f"failed: {exc}"
                if not target.alive():
                    why += f"\nserver output:\n{target.output()}"
                skipped[f"{target.name}/{name}"] = why.splitlines()[0][:300]
                out[name] = {"error": why}
                prog.note(f"  {why}")
                pool.close()  # workers may be stuck at a barrier: start afresh
                if not target.alive():
                    break
                continue
            res["seconds"] = round(time.monotonic() - t0, 2)
            out[name] = res
            ctx.done[name] = res
            prog.end()
            if not target.alive():
                raise BenchError(f"{target.name} died during {name}:\n{target.output()}")
    finally:
        prog.end()
        await api.close()
    return out, skipped


async def run_all(
    args: argparse.Namespace, scenarios: list[str], on_parley: bool, on_baseline: bool
) -> dict[str, Any]:
    sizes = sizes_from(args)
    machine = report.machine()
    ticks_at_start = report.cpu_ticks()
    load = machine["load_average_at_start"]
    if load and load[0] > 0.5:
        Progress(args.quiet).note(
            f"warning: load average {load[0]} before starting: other work on this machine "
            "will show up in the figures"
        )
    server_core, load_cores = (None, None) if args.no_pin else plan_cores()
    if load_cores:
        os.sched_setaffinity(0, load_cores)
    workers = args.workers or max(1, len(load_cores or os.sched_getaffinity(0)))
    pool = Pool(load_cores)
    pool.ensure(workers)
    prog = Progress(args.quiet)
    results: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    targets_info: dict[str, Any] = {}
    plan = (["baseline"] if on_baseline else []) + (["parley"] if on_parley else [])
    try:
        for name in plan:
            if name == "baseline":
                prog.note(f"starting the bare relay (core {server_core})")
                target = start_relay(server_core)
            elif args.url:
                target = external(args.url, args.server_pid)
            else:
                prog.note(f"starting parley serve (core {server_core})")
                target = start_parley(server_core, list(args.server_arg))
            try:
                targets_info[name] = {"url": target.url, "pid": target.pid, "core": target.pinned}
                results[name], sk = await run_target(target, scenarios, pool, workers, sizes, prog)
                skipped.update(sk)
            finally:
                target.stop()
    finally:
        pool.close()
    machine["load_average_at_end"] = report.load_average()
    machine["fsync_ms_at_end"] = report.fsync_ms()
    machine["cpu_steal_pct_during_run"] = report.steal_pct(ticks_at_start, report.cpu_ticks())
    return {
        "machine": machine,
        "git": report.git_revision(),
        "sizes": vars(sizes),
        "full": bool(args.full),
        "cores": {"server": server_core, "load": load_cores, "load_processes": workers},
        "targets": targets_info,
        "results": results,
        "skipped": skipped,
    }


def rows_for(data: dict[str, Any], scenarios: list[str]) -> list[Row]:
    rows: list[Row] = []
    res = data["results"]
    for scenario, key, label, unit, better in row_specs(data["sizes"]["rates"]):
        if scenario not in scenarios:
            continue
        vals = []
        for t in ("parley", "baseline"):
            m = res.get(t, {}).get(scenario, {}).get("metrics", {})
            v = m.get(key)
            vals.append(float(v) if isinstance(v, int | float) else None)
        if vals == [None, None]:
            continue
        rows.append(Row(scenario, label, unit, better, vals[0], vals[1]))
    return rows


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    scenarios, on_parley, on_baseline = choose(args.scenarios)
    if args.plots is not None:
        from parley.bench.plots import require_matplotlib

        require_matplotlib()  # fail before minutes of measuring, not after
    raise_nofile()
    import uvloop

    t0 = time.monotonic()
    try:
        data = uvloop.run(run_all(args, scenarios, on_parley, on_baseline))
    except BenchError as exc:
        print(f"parley bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("parley bench: interrupted", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        return 1
    data["seconds"] = round(time.monotonic() - t0, 1)
    rows = rows_for(data, scenarios)
    data["table"] = [r.as_dict() for r in rows]
    m, g = data["machine"], data["git"]
    print()
    print(
        f"parley bench - {m['cpu_model']}, {m['cores']} cores, Python {m['python']}, "
        f"Linux {m['kernel']}; git {str(g['revision'])[:12]}{' (dirty)' if g['dirty'] else ''}; "
        f"{'full' if args.full else 'quick'} sizes, {data['seconds']}s"
    )
    load = (m.get("load_average_at_start") or [0.0])[0]
    pressure = m.get("cpu_pressure_pct_at_start")
    if load > 0.5 or (pressure or 0) > 5:
        print(
            f"note: load average {load}, CPU pressure {pressure}% when the run started: "
            "not a quiet machine, other work shows up in these figures"
        )
    steal = m.get("cpu_steal_pct_during_run")
    if steal:
        print(f"CPU steal during the run: {steal}% (time the hypervisor gave to other guests)")
    fs = [m.get("fsync_ms_at_start"), m.get("fsync_ms_at_end")]
    if all(fs):
        print(
            f"fsync of 4 KiB: p50 {fs[0]['p50']} ms / max {fs[0]['max']} ms at start, "
            f"p50 {fs[1]['p50']} ms / max {fs[1]['max']} ms at end"
        )
    print()
    print(report.table(rows, data["skipped"]))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=1, default=str) + "\n")
        print(f"\nJSON: {args.json}")
    if args.plots is not None:
        from parley.bench.plots import write_plots

        for path in write_plots(data, args.plots):
            print(f"plot: {path}")
    failed = [k for k, v in data["skipped"].items() if v.startswith("failed")]
    return 1 if failed else 0
