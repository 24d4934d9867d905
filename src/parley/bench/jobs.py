"""What the load processes run. Everything here executes inside a load worker
(see `workers.py`); the orchestrator only sends arguments and merges results.

Latencies are recorded in microseconds, for messages *sent* inside the
measuring window (after the warm-up); throughput counts completions inside it.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypedDict

import aiohttp

from parley.bench.wire import (
    BenchError,
    Conn,
    Frame,
    Msg,
    body_time,
    connect,
    delivered_frame,
    send_frame,
    send_prefix,
)
from parley.bench.workers import WorkerCtx

FILLER = "x" * 80  # a chat-sized body: 19 digits of timestamp, a space, 80 bytes
BUCKET_NS = 100_000_000  # throughput-over-time resolution: 100 ms
now_ns = time.monotonic_ns


async def gather_limited(coros: list[Awaitable[Any]], limit: int) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def one(c: Awaitable[Any]) -> Any:
        async with sem:
            return await c

    return await asyncio.gather(*(one(c) for c in coros))


async def _close_all(conns: list[Conn]) -> None:
    await gather_limited([c.close() for c in conns], 500)


def _errors(conns: list[Conn]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in conns:
        for code, n in c.errors.items():
            out[code] = out.get(code, 0) + n
        if c.failure is not None:
            key = f"client:{type(c.failure).__name__}:{c.failure}"[:120]
            out[key] = out.get(key, 0) + 1
    return out


# --- 1:1 chat: throughput (closed loop) and latency (open loop) ---------------------------


class PairSpec(TypedDict):
    a_token: str
    a_user: str
    b_token: str
    b_user: str
    conversation_id: str


class ChatArgs(TypedDict):
    ws_url: str
    pairs: list[PairSpec]
    window: int  # closed loop: messages not yet fully done per pair (0: open loop)
    rate: float  # open loop: messages/s offered by this worker (0: closed loop)
    warmup: float
    duration: float
    drain: float
    #: receivers coalesce `delivered` over this many seconds (0: once per read burst)
    delivered_delay: float


class _Pair:
    __slots__ = (
        "a",
        "a_user",
        "acked",
        "b",
        "b_max",
        "b_sent",
        "b_timer",
        "b_user",
        "cid",
        "idx",
        "inflight",
        "n",
        "pending",
        "prefix",
    )

    def __init__(self, idx: int, spec: PairSpec) -> None:
        self.idx = idx
        self.cid = spec["conversation_id"]
        self.a_user = spec["a_user"]
        self.b_user = spec["b_user"]
        self.prefix = send_prefix(self.cid)
        self.pending: dict[str, int] = {}
        self.acked: deque[tuple[int, int]] = deque()
        self.inflight = 0
        self.n = 0
        self.b_max = 0
        self.b_sent = 0
        self.b_timer: asyncio.TimerHandle | None = None
        self.a: Conn | None = None
        self.b: Conn | None = None


class Chat:
    """P pairs; A sends to B, B acknowledges delivery with one cumulative
    `delivered` per read burst, or per `delivered_delay` as Parley's own
    clients do; a message is done when A holds its ack and the `delivered`
    receipt covering it."""

    def __init__(self, args: ChatArgs) -> None:
        self.args = args
        self.pairs = [_Pair(i, s) for i, s in enumerate(args["pairs"])]
        self.window = args["window"]
        self.start = self.m0 = self.m1 = self.end = 0
        self.sent = 0
        self.delivered_frames = 0
        self.completed = 0
        self.done_total = 0
        self.ack_lat: list[int] = []
        self.deliver_lat: list[int] = []
        self.done_lat: list[int] = []
        self.lag: list[int] = []
        self.buckets: list[int] = []
        self.sending = False
        #: client_msg_ids must be new on every run: a resent id is deduplicated
        self.tag = secrets.token_hex(4)

    async def open(self) -> None:
        url = self.args["ws_url"]

        async def one(p: _Pair, spec: PairSpec) -> None:
            p.a = await connect(url, spec["a_token"], on_frame=self.on_a)
            p.b = await connect(url, spec["b_token"], on_frame=self.on_b, on_idle=self.idle_b)
            p.a.state = p.b.state = p

        await gather_limited(
            [one(p, s) for p, s in zip(self.pairs, self.args["pairs"], strict=True)], 64
        )

    def conns(self) -> list[Conn]:
        return [c for p in self.pairs for c in (p.a, p.b) if c is not None]

    def send_one(self, p: _Pair) -> None:
        ts = now_ns()
        p.n += 1
        cmid = f"{self.tag}.{p.idx}.{p.n}"
        p.pending[cmid] = ts
        p.inflight += 1
        self.sent += 1
        assert p.a is not None
        p.a.send(send_frame(p.prefix, cmid, f"{ts:019d} {FILLER}"))

    def on_a(self, conn: Conn, f: Frame) -> None:
        p: _Pair = conn.state
        t = now_ns()
        if f.type == "ack":
            ts = p.pending.pop(f.client_msg_id or "", None)
            if ts is None or f.seq is None:
                return
            if self.m0 <= ts < self.m1:
                self.ack_lat.append((t - ts) // 1000)
            p.acked.append((f.seq, ts))
        elif f.type == "receipt" and f.user_id == p.b_user and f.seq is not None:
            seq = f.seq
            acked = p.acked
            n = 0
            while acked and acked[0][0] <= seq:
                ts = acked.popleft()[1]
                n += 1
                if self.m0 <= ts < self.m1:
                    self.done_lat.append((t - ts) // 1000)
            if not n:
                return
            p.inflight -= n
            self.done_total += n
            if self.m0 <= t < self.m1:
                self.completed += n
            b = (t - self.start) // BUCKET_NS
            if 0 <= b < len(self.buckets):
                self.buckets[b] += n
            if self.window and self.sending:
                if t >= self.end:
                    self.sending = False
                    return
                while p.inflight < self.window:
                    self.send_one(p)

    def on_b(self, conn: Conn, f: Frame) -> None:
        if f.type != "message":
            return
        m = f.message
        p: _Pair = conn.state
        if not isinstance(m, Msg) or m.sender_id != p.a_user:
            return
        ts = body_time(m.body)
        if self.m0 <= ts < self.m1:
            self.deliver_lat.append((now_ns() - ts) // 1000)
        if m.seq > p.b_max:
            p.b_max = m.seq

    def idle_b(self, conn: Conn) -> None:
        p: _Pair = conn.state
        if p.b_max <= p.b_sent or p.b_timer is not None:
            return
        delay = self.args["delivered_delay"]
        if delay:
            p.b_timer = asyncio.get_running_loop().call_later(delay, self.ack_b, p)
        else:
            self.ack_b(p)

    def ack_b(self, p: _Pair) -> None:
        """B's one cumulative `delivered` for everything it holds so far."""
        p.b_timer = None
        if p.b_max > p.b_sent and p.b is not None:
            p.b_sent = p.b_max
            p.b.send(delivered_frame(p.cid, p.b_max))
            self.delivered_frames += 1

    async def run(self, ctx: WorkerCtx, start: int) -> dict[str, Any]:
        a = self.args
        self.start = start
        self.m0 = start + int(a["warmup"] * 1e9)
        self.m1 = self.m0 + int(a["duration"] * 1e9)
        self.end = self.m1
        self.buckets = [0] * (int((a["warmup"] + a["duration"] + a["drain"]) * 10) + 2)
        self.sending = True
        cpu_at: list[float] = []
        wall_at: list[int] = []

        def mark_cpu() -> None:
            cpu_at.append(time.process_time())
            wall_at.append(now_ns())

        loop = asyncio.get_running_loop()
        loop.call_at(loop.time() + (self.m0 - now_ns()) / 1e9, mark_cpu)
        loop.call_at(loop.time() + (self.m1 - now_ns()) / 1e9, mark_cpu)
        if self.window:
            for p in self.pairs:
                for _ in range(self.window):
                    self.send_one(p)
        ticker = asyncio.create_task(self._tick(ctx)) if a["rate"] > 0 else None
        while now_ns() < self.end:
            await asyncio.sleep(0.25)
            ctx.progress(sent=self.sent, done=self.done_total)
            self._check()
        self.sending = False
        if ticker is not None:
            await ticker
        deadline = now_ns() + int(a["drain"] * 1e9)
        while now_ns() < deadline and any(p.inflight for p in self.pairs):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        ctx.progress(force=True, sent=self.sent, done=self.done_total)
        for p in self.pairs:
            if p.b_timer is not None:
                p.b_timer.cancel()
        conns = self.conns()
        await _close_all(conns)
        busy = None
        if len(cpu_at) == 2:
            busy = (cpu_at[1] - cpu_at[0]) / ((wall_at[1] - wall_at[0]) / 1e9)
        return {
            "load_cpu_busy": busy,
            "sent": self.sent,
            "delivered_frames": self.delivered_frames,
            "completed_in_window": self.completed,
            "unfinished": sum(p.inflight for p in self.pairs),
            "ack_us": self.ack_lat,
            "deliver_us": self.deliver_lat,
            "done_us": self.done_lat,
            "lag_us": self.lag,
            "buckets": self.buckets,
            "errors": _errors(conns),
        }

    def _check(self) -> None:
        for c in self.conns():
            if c.failure is not None:
                raise BenchError(f"client failure: {c.failure!r}")
            if not c.is_open:
                raise BenchError(f"server closed a socket (code {c.close_code}); errors {c.errors}")

    async def _tick(self, ctx: WorkerCtx) -> None:
        """Open loop: the i-th message is due at start + i/rate, whatever came back."""
        interval = 1e9 / self.args["rate"]
        pairs = self.pairs
        n = len(pairs)
        i = 0
        while self.sending:
            t = now_ns()
            if t >= self.end:
                break
            due = int((t - self.start) / interval)
            while i < due:
                lag = t - (self.start + int(i * interval))
                self.send_one(pairs[i % n])
                if self.m0 <= t < self.m1:
                    self.lag.append(lag // 1000)
                i += 1
            await asyncio.sleep(0.001)  # uvloop timers have 1 ms resolution


async def chat_job(ctx: WorkerCtx, args: ChatArgs) -> dict[str, Any]:
    chat = Chat(args)
    await chat.open()
    start = await ctx.barrier()
    return await chat.run(ctx, start)


# --- seeding: many pipelined sends, acked -------------------------------------------------


class SeedSpec(TypedDict):
    token: str
    conversation_id: str
    count: int


class SeedArgs(TypedDict):
    ws_url: str
    seeds: list[SeedSpec]
    window: int
    tag: str


async def seed_job(ctx: WorkerCtx, args: SeedArgs) -> dict[str, Any]:
    """Send `count` messages on each socket with `window` unacked at most."""
    done = asyncio.get_running_loop().create_future()
    total = sum(s["count"] for s in args["seeds"])
    state = {"acked": 0, "sent": 0}
    conns: list[Conn] = []

    tag = args["tag"] + secrets.token_hex(4) + "."

    class _S:
        __slots__ = ("idx", "inflight", "left", "n", "prefix")

        def __init__(self, idx: int, left: int, prefix: bytes) -> None:
            self.idx = idx
            self.inflight = self.n = 0
            self.left = left
            self.prefix = prefix

    def pump(conn: Conn) -> None:
        s: _S = conn.state
        while s.left and s.inflight < args["window"]:
            s.n += 1
            s.left -= 1
            s.inflight += 1
            state["sent"] += 1
            conn.send(send_frame(s.prefix, f"{tag}{s.idx}.{s.n}", "seed " + FILLER))

    def on_frame(conn: Conn, f: Frame) -> None:
        if f.type == "ack":
            conn.state.inflight -= 1
            state["acked"] += 1
            if state["acked"] == total and not done.done():
                done.set_result(None)
            pump(conn)
        elif f.type == "error" and not done.done():
            done.set_exception(BenchError(f"seeding refused: {f.code} {f.message}"))

    for i, spec in enumerate(args["seeds"]):
        c = await connect(args["ws_url"], spec["token"], on_frame=on_frame)
        c.state = _S(i, spec["count"], send_prefix(spec["conversation_id"]))
        conns.append(c)
    t0 = now_ns()
    for c in conns:
        pump(c)
    while not done.done():
        await asyncio.wait([done], timeout=0.5)
        ctx.progress(acked=state["acked"], of=total)
        for c in conns:
            if not c.is_open and not done.done():
                raise BenchError(f"seeding socket closed (code {c.close_code}): {c.errors}")
    done.result()
    seconds = (now_ns() - t0) / 1e9
    await _close_all(conns)
    return {"acked": state["acked"], "seconds": seconds}


# --- catch-up ------------------------------------------------------------------------------


class CatchupArgs(TypedDict):
    ws_url: str
    token: str
    since: int
    repeats: int


async def catchup_job(ctx: WorkerCtx, args: CatchupArgs) -> dict[str, Any]:
    """Reconnect with `?since=` and time until the last missed event has arrived."""
    runs: list[dict[str, Any]] = []
    for _ in range(args["repeats"]):
        loop = asyncio.get_running_loop()
        current = loop.create_future()
        count = {"messages": 0, "events": 0}

        def on_frame(
            conn: Conn,
            f: Frame,
            current: asyncio.Future[int] = current,
            count: dict[str, int] = count,
        ) -> None:
            if f.cursor is None:
                return
            count["events"] += 1
            if f.type == "message":
                count["messages"] += 1
            target = conn.ready.result().cursor or 0
            if f.cursor >= target and not current.done():
                current.set_result(now_ns())

        t0 = now_ns()
        conn = await connect(args["ws_url"], args["token"], since=args["since"], on_frame=on_frame)
        t_ready = now_ns()
        target = conn.ready.result().cursor or 0
        if target <= args["since"]:
            await conn.close()
            raise BenchError(f"nothing to catch up: cursor {target}, since {args['since']}")
        t_done = await asyncio.wait_for(current, 120)
        await conn.close()
        runs.append(
            {
                "seconds": (t_done - t0) / 1e9,
                "ready_seconds": (t_ready - t0) / 1e9,
                "events": count["events"],
                "messages": count["messages"],
            }
        )
        ctx.progress(force=True, runs=len(runs))
        await asyncio.sleep(0.2)
    return {"runs": runs}


# --- history pages over HTTP ------------------------------------------------------------


class HistoryArgs(TypedDict):
    base_url: str
    token: str
    conversation_id: str
    last_seq: int
    requests: int
    limit: int


async def history_job(ctx: WorkerCtx, args: HistoryArgs) -> dict[str, Any]:
    """One request at a time (latency, not throughput): newest page, then deep pages
    at `before=` spread evenly over the older half of the conversation."""
    import random

    rnd = random.Random(7)
    url = f"{args['base_url']}/v1/conversations/{args['conversation_id']}/messages"
    headers = {"Authorization": f"Bearer {args['token']}"}
    out: dict[str, list[int]] = {"newest_us": [], "deep_us": []}
    short = 0
    async with aiohttp.ClientSession(headers=headers) as http:

        async def get(params: dict[str, str]) -> int:
            nonlocal short
            t0 = now_ns()
            async with http.get(url, params=params) as r:
                raw = await r.read()
                if r.status != 200:
                    raise BenchError(f"history page -> {r.status} {raw[:200]!r}")
            dt = (now_ns() - t0) // 1000
            if raw.count(b'"seq"') < args["limit"]:
                short += 1
            return dt

        for _ in range(20):  # warm the connection and any caches
            await get({"limit": str(args["limit"])})
        lim = str(args["limit"])
        half = max(args["limit"] + 1, args["last_seq"] // 2)
        for i in range(args["requests"]):
            out["newest_us"].append(await get({"limit": lim}))
            before = rnd.randint(args["limit"] + 1, half)
            out["deep_us"].append(await get({"limit": lim, "before": str(before)}))
            if i % 50 == 0:
                ctx.progress(requests=i * 2)
    return {**out, "short_pages": short}


# --- idle connections ------------------------------------------------------------------


class ConnectionsArgs(TypedDict):
    ws_url: str
    tokens: list[str]
    local_addrs: list[str] | None
    concurrency: int
    hold: float
    probe: ChatArgs | None


async def connections_job(ctx: WorkerCtx, args: ConnectionsArgs) -> dict[str, Any]:
    """Open idle sockets (rounds: go, opened, probe done); worker 0 may run a chat
    probe while they are all open."""
    conns: list[Conn] = []
    failures: dict[str, int] = {}
    addrs = args["local_addrs"]
    await ctx.barrier()
    t0 = now_ns()

    async def one(i: int, token: str) -> None:
        try:
            conns.append(
                await connect(
                    args["ws_url"], token, local_addr=addrs[i % len(addrs)] if addrs else None
                )
            )
        except Exception as exc:
            key = f"{type(exc).__name__}: {exc}"[:100]
            failures[key] = failures.get(key, 0) + 1
        if i % 200 == 0:
            ctx.progress(opened=len(conns))

    await gather_limited([one(i, t) for i, t in enumerate(args["tokens"])], args["concurrency"])
    seconds = (now_ns() - t0) / 1e9
    ctx.progress(force=True, opened=len(conns))
    await ctx.barrier({"opened": len(conns), "failed": failures, "seconds": seconds})
    probe: dict[str, Any] | None = None
    if args["probe"] is not None:
        chat = Chat(args["probe"])
        await chat.open()
        probe = await chat.run(ctx, now_ns())
    else:
        await asyncio.sleep(args["hold"])
    still_open = sum(1 for c in conns if c.is_open)
    await ctx.barrier()
    await _close_all(conns)
    return {
        "opened": len(conns),
        "failed": failures,
        "seconds": seconds,
        "still_open": still_open,
        "probe": probe,
    }


# --- group fan-out ---------------------------------------------------------------------


class GroupArgs(TypedDict):
    ws_url: str
    conversation_id: str
    sender_token: str | None  # the worker holding the sender sets it
    sender_user: str
    member_tokens: list[str]  # receiving members on this worker
    window: int
    warmup: float
    duration: float
    drain: float


async def group_job(ctx: WorkerCtx, args: GroupArgs) -> dict[str, Any]:
    """One sender keeps `window` messages in flight, a message leaving the window
    once every receiving member on this worker has it. Members do not send
    `delivered` (in a group that is a receipt to every member: O(n²) frames)."""
    cid = args["conversation_id"]
    local = len(args["member_tokens"])
    #: seq -> [sent_ns, last_arrival_ns, members_arrived]
    seen: dict[int, list[int]] = {}
    state = {"inflight": 0, "sent": 0, "full": 0, "sending": False, "end": 0}
    sender: Conn | None = None
    prefix = send_prefix(cid)
    tag = secrets.token_hex(4)

    def send_one() -> None:
        assert sender is not None
        state["sent"] += 1
        state["inflight"] += 1
        ts = now_ns()
        sender.send(send_frame(prefix, f"g{tag}.{state['sent']}", f"{ts:019d} {FILLER}"))

    def on_member(conn: Conn, f: Frame) -> None:
        if f.type != "message":
            return
        m = f.message
        if not isinstance(m, Msg) or m.conversation_id != cid or m.sender_id != args["sender_user"]:
            return
        t = now_ns()
        rec = seen.get(m.seq)
        if rec is None:
            rec = seen[m.seq] = [body_time(m.body), t, 0]
        rec[1] = t
        rec[2] += 1
        if rec[2] == local:
            state["full"] += 1
            if sender is not None:
                state["inflight"] -= 1
                if state["sending"]:
                    if t >= state["end"]:
                        state["sending"] = False
                    else:
                        while state["inflight"] < args["window"]:
                            send_one()

    members = await gather_limited(
        [connect(args["ws_url"], tok, on_frame=on_member) for tok in args["member_tokens"]], 64
    )
    if args["sender_token"] is not None:
        sender = await connect(args["ws_url"], args["sender_token"])
    start = await ctx.barrier()
    m0 = start + int(args["warmup"] * 1e9)
    state["end"] = m1 = m0 + int(args["duration"] * 1e9)
    if sender is not None:
        state["sending"] = True
        for _ in range(args["window"]):
            send_one()
    while now_ns() < m1:
        await asyncio.sleep(0.25)
        ctx.progress(sent=state["sent"], full=state["full"])
        for c in members:
            if not c.is_open:
                raise BenchError(f"server closed a member socket (code {c.close_code})")
    state["sending"] = False
    await asyncio.sleep(args["drain"])
    conns = [*members, *([sender] if sender else [])]
    await _close_all(conns)
    return {
        "local": local,
        "seen": {seq: rec for seq, rec in seen.items()},
        "m0": m0,
        "m1": m1,
        "sent": state["sent"],
        "errors": _errors(conns),
    }


JOBS: dict[str, Callable[[WorkerCtx, Any], Coroutine[Any, Any, Any]]] = {
    "chat": chat_job,
    "seed": seed_job,
    "catchup": catchup_job,
    "history": history_job,
    "connections": connections_job,
    "group": group_job,
}
