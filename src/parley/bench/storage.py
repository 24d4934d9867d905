"""The `storage` scenario: the embedded store alone, no sockets, no protocol.

It drives a `SqliteStore` the way the server does in the latency scenario (1:1
messages at a fixed offered rate; each receiver's `delivered` coalesced over
50 ms), in a process of its own pinned to the server's core, and reads each of
the store's threads' CPU from `/proc`. So it tells what durable storage alone
costs per message on this machine: the part of the server's core that no
WebSocket engine or protocol work can give back. Set beside the bare relay's
core per message at the same rate, it bounds what one core can do.

Run as `python -m parley.bench.storage --rate R --duration S`; prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from parley.bench.targets import pinned
from parley.bench.wire import BenchError
from parley.services.ids import new_message_id
from parley.storage.base import SendOutcome, UserRecord
from parley.storage.sqlite import SqliteStore

#: A typical chat line (the latency scenario's bodies are of this size).
BODY = "hello, how are you doing today? " * 2


def thread_cpu_seconds() -> dict[str, float]:
    """CPU seconds of each of this process's threads, by thread name (Linux
    `schedstat`: nanoseconds, not clock ticks, so short runs are exact)."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            ran_ns = int(Path(f"/proc/self/task/{tid}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # the thread ended meanwhile
        name = names.get(int(tid), "other")
        out[name] = out.get(name, 0.0) + ran_ns / 1e9
    return out


@dataclass(frozen=True)
class Load:
    """What the harness offers: `rate` messages a second over `pairs` 1:1
    conversations for `warmup` + `duration` seconds, receivers confirming
    delivery every `delivered_delay` seconds."""

    rate: float
    duration: float
    warmup: float
    pairs: int
    delivered_delay: float


class _Counts:
    def __init__(self) -> None:
        self.commits = 0
        self.writes = 0

    def on_commit(self, batch: int, _seconds: float, _waited: float) -> None:
        self.commits += 1
        self.writes += batch


async def measure(load: Load) -> dict[str, Any]:
    """Offer `load` to a new store; CPU per thread over its last `duration`."""
    with tempfile.TemporaryDirectory(prefix="parley-bench-store-") as workdir:
        store = SqliteStore(Path(workdir) / "parley.db")
        await store.open()
        try:
            return await _drive(store, load)
        finally:
            await store.close()


async def _drive(store: SqliteStore, load: Load) -> dict[str, Any]:
    chats: list[tuple[str, str, str]] = []  # conversation, sender, receiver
    for i in range(load.pairs):
        sender, receiver = f"s{i}", f"r{i}"
        for user_id in (sender, receiver):
            await store.create_user(UserRecord(user_id, user_id, user_id, "-", 0))
        conversation_id = f"c{i}"
        await store.open_direct(conversation_id, sender, receiver, 0)
        chats.append((conversation_id, sender, receiver))

    # What each receiver has been handed and not yet confirmed, by conversation.
    unconfirmed: dict[tuple[str, str], int] = {}
    failures: list[BaseException] = []
    stored = 0  # messages whose write is durable (their future completed)

    def on_stored(
        future: asyncio.Future[SendOutcome], *, conversation_id: str, receiver: str
    ) -> None:
        nonlocal stored
        error = future.exception()
        if error is not None:
            failures.append(error)
            return
        stored += 1
        key = (conversation_id, receiver)
        unconfirmed[key] = max(unconfirmed.get(key, 0), future.result().message.seq)

    async def confirm_delivered() -> None:
        while True:
            await asyncio.sleep(load.delivered_delay)
            due = list(unconfirmed.items())
            unconfirmed.clear()
            for (conversation_id, receiver), seq in due:
                store.move_watermark(conversation_id, receiver, "delivered", seq)

    async def offer(seconds: float) -> None:
        sent, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            while sent < int(elapsed * load.rate):
                conversation_id, sender, receiver = chats[sent % len(chats)]
                future = store.append_message(
                    conversation_id,
                    sender,
                    secrets.token_hex(8),
                    BODY,
                    new_message_id(),
                    int(time.time() * 1000),
                )
                future.add_done_callback(
                    partial(on_stored, conversation_id=conversation_id, receiver=receiver)
                )
                sent += 1
            await asyncio.sleep(0.001)

    confirming = asyncio.create_task(confirm_delivered())
    try:
        await offer(load.warmup)
        counts = _Counts()  # commits of the measured window only
        store.on_commit = counts.on_commit
        cpu_before, stored_before, started = thread_cpu_seconds(), stored, time.perf_counter()
        await offer(load.duration)
        elapsed = time.perf_counter() - started
        cpu_after, done = thread_cpu_seconds(), stored - stored_before
        store.on_commit = None
    finally:
        confirming.cancel()
    if failures:
        raise failures[0]
    threads = {
        name: round(seconds - cpu_before.get(name, 0.0), 4) for name, seconds in cpu_after.items()
    }
    store_seconds = sum(s for name, s in threads.items() if name.startswith("sqlite-"))
    return {
        "offered_per_s": load.rate,
        "stored_per_s": round(done / elapsed, 1),
        "seconds": round(elapsed, 3),
        "commits_per_s": round(counts.commits / elapsed, 1),
        "writes_per_commit": round(counts.writes / counts.commits, 2) if counts.commits else None,
        "thread_cpu_s": threads,
        "store_cpu_busy": round(store_seconds / elapsed, 4),
        "store_us_per_msg": round(1e6 * store_seconds / done, 1) if done else None,
        "driver_us_per_msg": round(1e6 * threads.get("MainThread", 0.0) / done, 1)
        if done
        else None,
    }


def run_pinned(core: int | None, load: Load) -> dict[str, Any]:
    """`measure` in a new process on `core` (the server's), so that it has the
    core to itself as a server would."""
    argv = [
        sys.executable,
        "-m",
        "parley.bench.storage",
        *(f"--{name.replace('_', '-')}={value}" for name, value in asdict(load).items()),
    ]
    done = subprocess.run(
        pinned(argv, core),
        capture_output=True,
        text=True,
        timeout=load.warmup + load.duration + 120,
    )
    if done.returncode != 0:
        raise BenchError(f"the storage harness failed:\n{done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    result["core"] = core
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m parley.bench.storage")
    p.add_argument("--rate", type=float, required=True, help="messages a second offered")
    p.add_argument("--duration", type=float, default=5.0, help="seconds measured")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    p.add_argument("--pairs", type=int, default=32, help="1:1 conversations")
    p.add_argument("--delivered-delay", type=float, default=0.05)
    args = p.parse_args(argv)
    if sys.platform != "linux":
        print("the storage scenario reads per-thread CPU from /proc: Linux only", file=sys.stderr)
        return 2
    import uvloop

    result = uvloop.run(measure(Load(**vars(args))))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
