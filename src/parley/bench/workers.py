"""Load-generator processes: spawned once per run, pinned to the load cores,
each running one job at a time on its own uvloop.

A job is an async function in `parley.bench.jobs.JOBS`. Jobs of one run start
together: each calls `ctx.barrier()` when it is set up, and all are released
at once with a common start time (CLOCK_MONOTONIC is shared by every process),
so their measuring windows line up. Progress goes back over the same pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing
import os
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Coroutine
from multiprocessing.connection import Connection
from typing import Any

from parley.bench.wire import BenchError

#: How far in the future the common start is set, so every worker hears it in time.
START_MARGIN_NS = 100_000_000


class WorkerCtx:
    def __init__(self, conn: Connection, index: int) -> None:
        self.conn = conn
        self.index = index
        self._last_progress = 0.0

    def progress(self, force: bool = False, **values: Any) -> None:
        """Report counters (at most a few times a second unless `force`)."""
        now = time.monotonic()
        if force or now - self._last_progress >= 0.5:
            self._last_progress = now
            self.conn.send(("progress", values))

    async def barrier(self, info: Any = None) -> int:
        """Wait until every worker of the job is here; return the common start (ns)."""
        self.conn.send(("ready", info))
        loop = asyncio.get_running_loop()
        msg = await loop.run_in_executor(None, self.conn.recv)
        assert msg[0] == "go", msg
        start: int = msg[1]
        delay = (start - time.monotonic_ns()) / 1e9
        if delay > 0:
            await asyncio.sleep(delay)
        return start


async def _job(
    fn: Callable[[WorkerCtx, Any], Coroutine[Any, Any, Any]], ctx: WorkerCtx, args: Any
) -> Any:
    from parley.bench.wire import close_sessions

    # No collector pauses in the load generator: with thousands of sockets a full
    # collection takes tens of milliseconds and would be measured as latency.
    gc.collect()
    gc.disable()
    try:
        return await fn(ctx, args)
    finally:
        await close_sessions()
        gc.enable()
        gc.collect()


def _worker_main(conn: Connection, index: int, cores: list[int] | None) -> None:
    if cores:
        os.sched_setaffinity(0, cores)
    from parley.bench.jobs import JOBS
    from parley.bench.targets import raise_nofile

    raise_nofile()
    import uvloop

    while True:
        try:
            msg = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return
        if msg is None:
            return
        name, args = msg
        try:
            result: Any = uvloop.run(_job(JOBS[name], WorkerCtx(conn, index), args))
        except BaseException:
            conn.send(("error", traceback.format_exc()))
        else:
            conn.send(("result", result))


class Worker:
    def __init__(self, index: int, cores: list[int] | None) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=_worker_main, args=(child, index, cores), daemon=True, name=f"bench-load-{index}"
        )
        self.proc.start()
        child.close()
        self.index = index


Barrier = Callable[[int, list[Any]], Awaitable[None]]
Progress = Callable[[int, dict[str, Any]], None]


class Pool:
    def __init__(self, cores: list[int] | None) -> None:
        self.cores = cores
        self.workers: list[Worker] = []

    def ensure(self, n: int) -> None:
        while len(self.workers) < n:
            self.workers.append(Worker(len(self.workers), self.cores))

    def close(self) -> None:
        for w in self.workers:
            with contextlib.suppress(OSError):
                w.conn.send(None)
                w.conn.close()
        for w in self.workers:
            w.proc.join(5)
            if w.proc.is_alive():
                w.proc.kill()
        self.workers.clear()

    async def run(
        self,
        name: str,
        args: list[Any],
        *,
        progress: Progress | None = None,
        on_barrier: Barrier | None = None,
    ) -> list[Any]:
        """Run job `name` on len(args) workers, one argument each; return their results."""
        self.ensure(len(args))
        workers = self.workers[: len(args)]
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

        def reader(i: int, w: Worker) -> None:
            """A thread per worker: blocking reads (uvloop's readers would make the
            pipe non-blocking, and a large result arrives in pieces)."""
            while True:
                try:
                    msg = w.conn.recv()
                except (EOFError, OSError) as exc:
                    why = f"load process {w.index} died (exit code {w.proc.exitcode}): {exc!r}"
                    msg = ("error", why)
                try:
                    loop.call_soon_threadsafe(queue.put_nowait, (i, msg))
                except RuntimeError:  # the run is over (loop closed)
                    return
                if msg[0] in ("result", "error"):
                    return

        for i, w in enumerate(workers):
            w.conn.send((name, args[i]))
            threading.Thread(target=reader, args=(i, w), daemon=True).start()
        results: dict[int, Any] = {}
        waiting: dict[int, Any] = {}
        rounds = 0
        try:
            while len(results) < len(workers):
                i, msg = await queue.get()
                kind = msg[0]
                if kind == "progress":
                    if progress is not None:
                        progress(i, msg[1])
                elif kind == "ready":
                    waiting[i] = msg[1]
                    if len(waiting) == len(workers):
                        if on_barrier is not None:
                            await on_barrier(rounds, [waiting[k] for k in range(len(workers))])
                        rounds += 1
                        start = time.monotonic_ns() + START_MARGIN_NS
                        waiting.clear()
                        for w in workers:
                            w.conn.send(("go", start))
                elif kind == "result":
                    results[i] = msg[1]
                elif kind == "error":
                    raise BenchError(f"load worker {i} failed:\n{msg[1]}")
        except BaseException:
            self.close()  # workers may be stuck at a barrier: start afresh next time
            raise
        return [results[i] for i in range(len(workers))]
