"""The scenarios, orchestrator side: set-up over HTTP, jobs to the load workers,
results merged into metrics. Each returns a dict with `metrics` (name -> value)
and whatever raw data the JSON report and the plots want."""

from __future__ import annotations

import asyncio
import math
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from parley.bench.jobs import ChatArgs, PairSpec, gather_limited
from parley.bench.report import rate_key, summarize_us
from parley.bench.storage import Load, run_pinned
from parley.bench.targets import Target
from parley.bench.wire import Api, BenchError, NotSupported, User
from parley.bench.workers import Pool

PASSWORD = "bench-password-1"
#: Sockets per user in the connections scenario (the server allows 64 per user).
SOCKETS_PER_USER = 50
#: Client sockets per load process (each process may hold 20,000 files at most).
SOCKETS_PER_PROCESS = 8000


@dataclass
class Sizes:
    pairs: int = 64
    window: int = 8
    warmup: float = 1.0
    duration: float = 5.0
    rates: list[int] = field(default_factory=lambda: [1000, 5000, 10000])
    latency_pairs: int = 32
    latency_duration: float = 4.0
    #: Latency and connection probes: receivers send `delivered` the way Parley's
    #: SDK (50 ms) and web client (60 ms) do, one cumulative frame per conversation
    #: per 50 ms. Throughput needs every receipt at once (its window waits on them).
    delivered_delay: float = 0.05
    connections: int = 2000
    probe_rate: int = 1000
    probe_duration: float = 3.0
    history_messages: int = 20_000
    history_requests: int = 300
    catchup_messages: int = 10_000
    catchup_conversations: int = 50
    catchup_repeats: int = 3
    group_members: int = 256
    group_window: int = 8
    group_duration: float = 4.0
    presence_contacts: int = 1000
    presence_queries: int = 200

    @classmethod
    def full(cls) -> Sizes:
        return cls(
            pairs=100,
            window=16,
            duration=15.0,
            latency_pairs=50,
            latency_duration=10.0,
            connections=19_000,
            history_messages=100_000,
            history_requests=1000,
            catchup_repeats=5,
            group_duration=10.0,
        )


class Progress:
    """One status line per phase, updated in place on a terminal."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.label = ""
        self.t0 = time.monotonic()
        self.values: dict[int, dict[str, Any]] = {}
        self._last = 0.0

    def phase(self, label: str) -> None:
        self.end()
        self.label = label
        self.t0 = time.monotonic()
        self.values = {}
        self._show(force=True)

    def update(self, worker: int, values: dict[str, Any]) -> None:
        self.values[worker] = values
        self._show()

    def note(self, text: str) -> None:
        self.end()
        if not self.quiet:
            print(text, file=sys.stderr, flush=True)

    def _show(self, force: bool = False) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        if not force and now - self._last < (0.2 if self.tty else 3.0):
            return
        self._last = now
        totals: dict[str, Any] = {}
        for v in self.values.values():
            for k, x in v.items():
                totals[k] = totals.get(k, 0) + x if isinstance(x, int | float) else x
        counters = " ".join(
            f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}" for k, v in totals.items()
        )
        text = f"  {self.label} [{now - self.t0:5.1f}s] {counters}"
        if self.tty:
            print("\r\033[K" + text, end="", file=sys.stderr, flush=True)
        else:
            print(text, file=sys.stderr, flush=True)

    def end(self) -> None:
        if self.tty and self.label and not self.quiet:
            print(file=sys.stderr, flush=True)
        self.label = ""


class Users:
    """Users created on demand and reused by every scenario of a target."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.prefix = "b" + secrets.token_hex(4) + "_"
        self.users: list[User] = []
        self.directs: dict[tuple[int, int], str] = {}

    async def get(self, n: int, progress: Progress | None = None) -> list[User]:
        if n > len(self.users):
            if progress is not None:
                progress.phase(f"creating {n - len(self.users)} users")
            start = len(self.users)
            created = await gather_limited(
                [self.api.new_user(f"{self.prefix}{i}", PASSWORD) for i in range(start, n)], 8
            )
            self.users.extend(created)
        return self.users[:n]

    async def direct(self, i: int, j: int) -> str:
        key = (min(i, j), max(i, j))
        if key not in self.directs:
            users = await self.get(key[1] + 1)
            self.directs[key] = await self.api.direct(users[key[0]], users[key[1]].user_id)
        return self.directs[key]

    async def pairs(self, n: int) -> list[PairSpec]:
        """n sender/receiver pairs: users (2i, 2i+1) and their direct conversation."""
        users = await self.get(2 * n)
        cids = await gather_limited([self.direct(2 * i, 2 * i + 1) for i in range(n)], 16)
        return [
            PairSpec(
                a_token=users[2 * i].token,
                a_user=users[2 * i].user_id,
                b_token=users[2 * i + 1].token,
                b_user=users[2 * i + 1].user_id,
                conversation_id=cids[i],
            )
            for i in range(n)
        ]


@dataclass
class Ctx:
    target: Target
    api: Api
    pool: Pool
    workers: int
    sizes: Sizes
    users: Users
    progress: Progress
    #: results of earlier scenarios on this target (the group compares with 1:1)
    done: dict[str, dict[str, Any]] = field(default_factory=dict)

    async def run(self, job: str, args: list[Any], **kw: Any) -> list[Any]:
        return await self.pool.run(job, args, progress=self.progress.update, **kw)

    async def run_chat(self, args: list[ChatArgs]) -> dict[str, Any]:
        """A chat job, with the server's CPU use over the measuring window."""
        a = args[0]
        cpu: list[float | None] = []

        async def on_barrier(round_: int, infos: list[Any]) -> None:
            async def sample(delay: float) -> None:
                await asyncio.sleep(delay)
                cpu.append(self.target.cpu_seconds())

            start = 0.1 + a["warmup"]  # workers start 100 ms after the barrier
            tasks.append(asyncio.create_task(sample(start)))
            tasks.append(asyncio.create_task(sample(start + a["duration"])))

        tasks: list[asyncio.Task[None]] = []
        results = await self.run("chat", list(args), on_barrier=on_barrier)
        await asyncio.gather(*tasks)
        merged = merge_chat(results, a["duration"])
        if len(cpu) == 2 and cpu[0] is not None and cpu[1] is not None:
            merged["server_cpu_busy"] = (cpu[1] - cpu[0]) / a["duration"]
        return merged


def split(items: list[Any], k: int) -> list[list[Any]]:
    """Round-robin items into k non-empty lists (fewer if there are fewer items)."""
    k = max(1, min(k, len(items)))
    return [items[i::k] for i in range(k)]


def merge_chat(results: list[dict[str, Any]], duration: float) -> dict[str, Any]:
    ack = [v for r in results for v in r["ack_us"]]
    deliver = [v for r in results for v in r["deliver_us"]]
    done = [v for r in results for v in r["done_us"]]
    lag = [v for r in results for v in r["lag_us"]]
    buckets = [sum(b) for b in zip(*(r["buckets"] for r in results), strict=True)]
    errors: dict[str, int] = {}
    for r in results:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    completed = sum(r["completed_in_window"] for r in results)
    busy = [r["load_cpu_busy"] for r in results if r.get("load_cpu_busy") is not None]
    return {
        "load_cpu_busy": max(busy) if busy else None,
        "server_cpu_busy": None,
        "messages_per_s": completed / duration,
        "sent": sum(r["sent"] for r in results),
        "delivered_frames": sum(r["delivered_frames"] for r in results),
        "unfinished": sum(r["unfinished"] for r in results),
        "delivered_per_s": len(deliver) / duration,
        "ack": summarize_us(ack),
        "deliver": summarize_us(deliver),
        "done": summarize_us(done),
        "send_lag": summarize_us(lag),
        "per_second": [b * 10 for b in buckets],
        "errors": errors,
    }


def _pct(x: float | None) -> float | None:
    return None if x is None else round(100 * x, 1)


def chat_args(ctx: Ctx, pairs: list[PairSpec], **kw: Any) -> list[ChatArgs]:
    groups = split(pairs, ctx.workers)
    out: list[ChatArgs] = []
    for g in groups:
        args = ChatArgs(
            ws_url=ctx.target.ws_url,
            pairs=g,
            window=kw.get("window", 0),
            rate=kw.get("rate", 0.0) * len(g) / len(pairs),
            warmup=kw.get("warmup", ctx.sizes.warmup),
            duration=kw["duration"],
            drain=kw.get("drain", 5.0),
            delivered_delay=kw.get("delivered_delay", 0.0),
        )
        out.append(args)
    return out


# --- the scenarios ------------------------------------------------------------------------


async def throughput(ctx: Ctx) -> dict[str, Any]:
    s = ctx.sizes
    pairs = await ctx.users.pairs(s.pairs)
    ctx.progress.phase(f"throughput: {s.pairs} pairs, window {s.window}, {s.duration:g}s")
    res = await ctx.run_chat(chat_args(ctx, pairs, window=s.window, duration=s.duration))
    res["pairs"], res["window"], res["duration_s"] = s.pairs, s.window, s.duration
    res["metrics"] = {
        "messages_per_s": res["messages_per_s"],
        "done_p50_ms": res["done"]["p50_ms"],
        "done_p99_ms": res["done"]["p99_ms"],
        "server_cpu_pct": _pct(res["server_cpu_busy"]),
        "load_cpu_pct": _pct(res["load_cpu_busy"]),
    }
    return res


async def latency(ctx: Ctx) -> dict[str, Any]:
    s = ctx.sizes
    pairs = await ctx.users.pairs(s.latency_pairs)
    by_rate: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    for rate in s.rates:
        ctx.progress.phase(f"latency: {rate:,} msg/s offered, {s.latency_duration:g}s")
        res = await ctx.run_chat(
            chat_args(
                ctx,
                pairs,
                rate=float(rate),
                duration=s.latency_duration,
                delivered_delay=s.delivered_delay,
            )
        )
        by_rate[str(rate)] = res
        k = rate_key(rate)
        metrics[f"{k}_achieved_per_s"] = res["delivered_per_s"]
        for what in ("ack", "deliver"):
            for q in ("p50", "p99", "p99.9"):
                metrics[f"{k}_{what}_{q}_ms"] = res[what][f"{q}_ms"]
        busy, delivered = res["server_cpu_busy"], res["delivered_per_s"]
        metrics[f"{k}_server_cpu_pct"] = _pct(busy)
        # Steadier than a tail on a shared machine, and what a latency target
        # comes down to: a core can take 1e6 / this messages a second.
        metrics[f"{k}_core_us_per_msg"] = (
            round(1e6 * busy / delivered, 1) if busy is not None and delivered else None
        )
    return {"rates": by_rate, "metrics": metrics}


async def storage(ctx: Ctx) -> dict[str, Any]:
    """The embedded store alone at the latency scenario's rates (see `bench.storage`),
    on the server's core: what durable storage costs per message before any socket."""
    if ctx.target.name == "baseline":
        raise NotSupported("the bare relay stores nothing")
    s = ctx.sizes
    by_rate: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    for rate in s.rates:
        ctx.progress.phase(f"storage: the store alone, {rate:,} msg/s offered")
        load = Load(float(rate), s.latency_duration, s.warmup, s.latency_pairs, s.delivered_delay)
        res = await asyncio.to_thread(run_pinned, ctx.target.pinned, load)
        by_rate[str(rate)] = res
        k = rate_key(rate)
        metrics[f"{k}_stored_per_s"] = res["stored_per_s"]
        metrics[f"{k}_store_cpu_pct"] = _pct(res["store_cpu_busy"])
        metrics[f"{k}_store_us_per_msg"] = res["store_us_per_msg"]
    return {"rates": by_rate, "metrics": metrics}


async def connections(ctx: Ctx) -> dict[str, Any]:
    s = ctx.sizes
    n = s.connections
    n_users = math.ceil(n / SOCKETS_PER_USER)
    probe_pairs = await ctx.users.pairs(4)  # users 0-7: they hold no idle socket
    # (a message goes to every socket of the recipient: idle sockets of the probe's
    # users would multiply its cost by the sockets per user)
    idle_users = (await ctx.users.get(8 + n_users, ctx.progress))[8:]
    tokens = [idle_users[i % n_users].token for i in range(n)]
    procs = max(ctx.workers, math.ceil(n / SOCKETS_PER_PROCESS))
    chunks = split(tokens, procs)
    loopback = ctx.target.host in ("127.0.0.1", "localhost")
    probe = chat_args(
        ctx,
        probe_pairs,
        rate=float(s.probe_rate),
        duration=s.probe_duration,
        warmup=0.5,
        delivered_delay=s.delivered_delay,
    )
    probe[0]["pairs"] = probe_pairs
    probe[0]["rate"] = float(s.probe_rate)
    args = [
        {
            "ws_url": ctx.target.ws_url,
            "tokens": chunk,
            "local_addrs": [f"127.0.0.{2 + 4 * i + j}" for j in range(4)] if loopback else None,
            "concurrency": 200,
            "hold": 0.0,
            "probe": probe[0] if i == 0 else None,
        }
        for i, chunk in enumerate(chunks)
    ]
    rss: dict[str, Any] = {"before_kib": None, "after_kib": None, "idle_cpu_pct": None}

    async def on_barrier(round_: int, infos: list[Any]) -> None:
        if round_ == 0:
            await asyncio.sleep(0.5)
            rss["before_kib"] = ctx.target.rss_kib()
            ctx.progress.phase(f"connections: opening {n:,} sockets from {len(chunks)} processes")
        elif round_ == 1:
            await asyncio.sleep(0.5)
            cpu0 = ctx.target.cpu_seconds()
            await asyncio.sleep(2.0)
            cpu1 = ctx.target.cpu_seconds()
            if cpu0 is not None and cpu1 is not None:
                rss["idle_cpu_pct"] = round(100 * (cpu1 - cpu0) / 2.0, 1)
            rss["after_kib"] = ctx.target.rss_kib()
            ctx.progress.phase(f"connections: {n:,} open; chat probe at {s.probe_rate}/s")

    results = await ctx.run("connections", args, on_barrier=on_barrier)
    opened = sum(r["opened"] for r in results)
    failed: dict[str, int] = {}
    for r in results:
        for k, v in r["failed"].items():
            failed[k] = failed.get(k, 0) + v
    seconds = max(r["seconds"] for r in results)
    per_conn = None
    if rss["before_kib"] is not None and rss["after_kib"] is not None and opened:
        per_conn = (rss["after_kib"] - rss["before_kib"]) / opened
    probe_res = merge_chat([results[0]["probe"]], s.probe_duration)
    return {
        "requested": n,
        "opened": opened,
        "failed": failed,
        "still_open": sum(r["still_open"] for r in results),
        "processes": len(chunks),
        "connect_seconds": seconds,
        "rss": rss,
        "probe": probe_res,
        "metrics": {
            "open": opened,
            "connect_per_s": opened / seconds if seconds else None,
            "rss_per_conn_kib": per_conn,
            "idle_cpu_pct": rss["idle_cpu_pct"],
            "probe_ack_p99_ms": probe_res["ack"]["p99_ms"],
            "probe_deliver_p99_ms": probe_res["deliver"]["p99_ms"],
        },
    }


async def history(ctx: Ctx) -> dict[str, Any]:
    s = ctx.sizes
    users = await ctx.users.get(3)
    cid = await ctx.users.direct(1, 2)
    m = s.history_messages
    sockets = max(1, min(32, math.ceil(m / 3000)))
    per = [m // sockets + (1 if i < m % sockets else 0) for i in range(sockets)]
    seeds = [{"token": users[1].token, "conversation_id": cid, "count": c} for c in per]
    ctx.progress.phase(f"history: seeding {m:,} messages over {sockets} sockets")
    t0 = time.monotonic()
    seeded = await ctx.run(
        "seed",
        [
            {"ws_url": ctx.target.ws_url, "seeds": chunk, "window": 200, "tag": f"h{i}."}
            for i, chunk in enumerate(split(seeds, ctx.workers))
        ],
    )
    seed_seconds = time.monotonic() - t0
    acked = sum(r["acked"] for r in seeded)
    ctx.progress.phase(f"history: {s.history_requests} newest + {s.history_requests} deep pages")
    (res,) = await ctx.run(
        "history",
        [
            {
                "base_url": ctx.target.url,
                "token": users[2].token,
                "conversation_id": cid,
                "last_seq": acked,
                "requests": s.history_requests,
                "limit": 50,
            }
        ],
    )
    newest, deep = summarize_us(res["newest_us"]), summarize_us(res["deep_us"])
    return {
        "messages": acked,
        "seed_seconds": seed_seconds,
        "seed_per_s": acked / seed_seconds,
        "newest": newest,
        "deep": deep,
        "short_pages": res["short_pages"],
        "metrics": {
            "newest_p50_ms": newest["p50_ms"],
            "newest_p99_ms": newest["p99_ms"],
            "deep_p50_ms": deep["p50_ms"],
            "deep_p99_ms": deep["p99_ms"],
            "seed_per_s": acked / seed_seconds,
        },
    }


async def catchup(ctx: Ctx) -> dict[str, Any]:
    s = ctx.sizes
    c = s.catchup_conversations
    users = await ctx.users.get(c + 1, ctx.progress)
    cids = await gather_limited([ctx.users.direct(0, k) for k in range(1, c + 1)], 16)
    since = await ctx.api.cursor(users[0])
    per = [s.catchup_messages // c + (1 if i < s.catchup_messages % c else 0) for i in range(c)]
    seeds = [
        {"token": users[k + 1].token, "conversation_id": cids[k], "count": per[k]} for k in range(c)
    ]
    ctx.progress.phase(f"catchup: {s.catchup_messages:,} messages missed across {c} conversations")
    await ctx.run(
        "seed",
        [
            {"ws_url": ctx.target.ws_url, "seeds": chunk, "window": 100, "tag": f"c{i}."}
            for i, chunk in enumerate(split(seeds, ctx.workers))
        ],
    )
    ctx.progress.phase(f"catchup: reconnecting with since={since} ({s.catchup_repeats} times)")
    (res,) = await ctx.run(
        "catchup",
        [
            {
                "ws_url": ctx.target.ws_url,
                "token": users[0].token,
                "since": since,
                "repeats": s.catchup_repeats,
            }
        ],
    )
    runs = res["runs"]
    times = sorted(r["seconds"] for r in runs)
    msgs = runs[0]["messages"]
    if msgs < s.catchup_messages:
        raise BenchError(f"catch-up replayed {msgs} messages, expected {s.catchup_messages}")
    return {
        "runs": runs,
        "metrics": {
            "catchup_median_s": times[len(times) // 2],
            "catchup_best_s": times[0],
            "events_per_s": runs[0]["events"] / times[len(times) // 2],
        },
    }


async def group(ctx: Ctx) -> dict[str, Any]:
    s = ctx.sizes
    first = await ctx.users.get(2)
    # Ask with a tiny group first: a server without groups is told apart in a second,
    # before hundreds of members are created.
    await ctx.api.group(first[0], "bench probe", [first[1].user_id])
    members = await ctx.users.get(s.group_members, ctx.progress)
    sender = members[0]
    cid = await ctx.api.group(sender, "bench group", [u.user_id for u in members[1:]])
    recipients = members[1:]
    chunks = split(recipients, ctx.workers)
    args = [
        {
            "ws_url": ctx.target.ws_url,
            "conversation_id": cid,
            "sender_token": sender.token if i == 0 else None,
            "sender_user": sender.user_id,
            "member_tokens": [u.token for u in chunk],
            "window": s.group_window,
            "warmup": s.warmup,
            "duration": s.group_duration,
            "drain": 2.0,
        }
        for i, chunk in enumerate(chunks)
    ]
    ctx.progress.phase(
        f"group: {len(members)} members, window {s.group_window}, {s.group_duration:g}s"
    )
    results = await ctx.run("group", args)
    merged: dict[int, list[int]] = {}
    for r in results:
        for seq, (ts, last, count) in r["seen"].items():
            rec = merged.setdefault(int(seq), [ts, last, 0])
            rec[1] = max(rec[1], last)
            rec[2] += count
    m0, m1 = results[0]["m0"], results[0]["m1"]
    n = len(recipients)
    complete = [rec for rec in merged.values() if rec[2] == n]
    done_in_window = sum(1 for rec in complete if m0 <= rec[1] < m1)
    lat = [(rec[1] - rec[0]) // 1000 for rec in complete if m0 <= rec[0] < m1]
    incomplete = sum(1 for rec in merged.values() if rec[2] < n and m0 <= rec[0] < m1)
    last = summarize_us(lat)
    mps = done_in_window / s.group_duration
    one_to_one = ctx.done.get("throughput", {}).get("messages_per_s")
    errors: dict[str, int] = {}
    for r in results:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    return {
        "members": len(members),
        "recipients": n,
        "last_member": last,
        "incomplete": incomplete,
        "errors": errors,
        "metrics": {
            "messages_per_s": mps,
            "deliveries_per_s": mps * n,
            "last_member_p50_ms": last["p50_ms"],
            "last_member_p99_ms": last["p99_ms"],
            "deliveries_vs_1to1": (mps * n / one_to_one) if one_to_one else None,
        },
    }


async def _presence_counters(api: Api) -> tuple[float, float]:
    async with api.session.get(api.base_url + "/metrics") as r:
        text = await r.text()
    found = dict(
        line.split()
        for line in text.splitlines()
        if line.startswith(("parley_presence_announcements ", "parley_presence_events "))
    )
    return float(found["parley_presence_announcements"]), float(found["parley_presence_events"])


async def _await_announcements(api: Api, at_least: float, within: float = 60.0) -> float:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        announcements, events = await _presence_counters(api)
        if announcements >= at_least:
            return events
        await asyncio.sleep(0.05)
    raise BenchError(f"presence: fewer than {at_least:.0f} announcements after {within}s")


async def presence(ctx: Ctx) -> dict[str, Any]:
    """A user with `presence_contacts` contacts, a tenth of them online, goes
    online then offline: presence events per status change (should be the
    online tenth, not all); then batch queries of 500 users' presence."""
    if ctx.target.name != "parley":
        raise NotSupported("the bare relay has no presence")
    s = ctx.sizes
    n = s.presence_contacts
    users = await ctx.users.get(n + 1, ctx.progress)
    star, fans = users[0], users[1 : n + 1]
    ctx.progress.phase(f"presence: {n:,} contacts")
    await gather_limited(
        [ctx.api.call("PUT", f"/v1/contacts/{f.user_id}", token=star.token) for f in fans], 32
    )
    online = fans[: max(1, n // 10)]
    base, _ = await _presence_counters(ctx.api)
    ctx.progress.phase(f"presence: {len(online)} of them connect")
    # Sockets on their own session: the API session's pool is capped at 64.
    ws_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    sockets = await gather_limited(
        [
            ws_session.ws_connect(ctx.api.ws_url, headers={"Authorization": f"Bearer {f.token}"})
            for f in online
        ],
        32,
    )
    try:
        before = await _await_announcements(ctx.api, base + len(online))
        ctx.progress.phase("presence: the user goes online, then offline")
        star_ws = await ws_session.ws_connect(
            ctx.api.ws_url, headers={"Authorization": f"Bearer {star.token}"}
        )
        after_online = await _await_announcements(ctx.api, base + len(online) + 1)
        await star_ws.close()
        after_offline = await _await_announcements(ctx.api, base + len(online) + 2)
        ctx.progress.phase("presence: batch queries of 500 users")
        ids = ",".join(f.user_id for f in fans[:500])
        lat: list[int] = []
        for _ in range(s.presence_queries):
            t0 = time.perf_counter_ns()
            page = await ctx.api.call(
                "GET", "/v1/presence", token=online[0].token, params={"user_ids": ids}
            )
            lat.append((time.perf_counter_ns() - t0) // 1000)
            if len(page["presence"]) != min(500, n):
                raise BenchError("presence: batch answer has the wrong size")
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets))
        await ws_session.close()
    query = summarize_us(lat)
    return {
        "query": query,
        "metrics": {
            "contacts": n,
            "online_watchers": len(online),
            "events_per_online_change": after_online - before,
            "events_per_offline_change": after_offline - after_online,
            "batch500_p50_ms": query["p50_ms"],
            "batch500_p99_ms": query["p99_ms"],
        },
    }


SCENARIOS: dict[str, Callable[[Ctx], Awaitable[dict[str, Any]]]] = {
    # connections first: RSS per socket is cleanest before traffic has grown the heap
    "connections": connections,
    "throughput": throughput,
    "latency": latency,
    "storage": storage,
    "history": history,
    "catchup": catchup,
    "group": group,
    "presence": presence,
}

__all__ = ["SCENARIOS", "BenchError", "Ctx", "NotSupported", "Progress", "Sizes", "Users"]
