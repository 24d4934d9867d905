"""`parley bench peers`: Parley against Matrix Synapse, same box, same load, one run.

Both servers are driven the same way, over their plain HTTP client APIs (no
WebSocket for either: Synapse has none): P sender/receiver pairs in 1:1 rooms,
each sender keeping W messages outstanding until its receiver has them, each
receiver long-polling (`GET /v1/events` / `GET /sync`). A message is done when
its receiver has it; the figure is done messages per second, and the latency
from send to receipt.

Each server runs pinned to the server core with its storage: Parley with its
embedded SQLite (synchronous=FULL), Synapse with the PostgreSQL its docs
recommend, started here on a free port in a temp dir (fsync and
synchronous_commit on: both durable). Synapse gets its best case: presence off,
rate limits off, logging at WARNING.

Synapse is not one of Parley's dependencies: `make bench-peers` installs it into
its own virtualenv and passes `--synapse-python`.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp
import msgspec

from parley.bench import report
from parley.bench.targets import Target, free_port, pinned, plan_cores, spawn, start_parley
from parley.bench.wire import BenchError, body_time, stamped_body

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode
PASSWORD = "bench-password-1"


class Peer(Protocol):
    """One server's client API, as the load generator needs it."""

    name: str

    async def user(self, username: str) -> Any: ...
    async def pair(self, sender: Any, receiver: Any) -> str: ...
    async def send(self, sender: Any, room: str, txn: str, body: str) -> None: ...
    def receive(self, receiver: Any) -> AsyncIterator[list[str]]: ...


async def _call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    body: Any = None,
    token: str | None = None,
    ok: tuple[int, ...] = (200, 201),
) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = None
    if body is not None:
        data = _encode(body)
        headers["Content-Type"] = "application/json"
    async with http.request(method, url, data=data, headers=headers) as r:
        raw = await r.read()
        payload = _decode(raw) if raw else None
        if r.status not in ok:
            raise BenchError(f"{method} {url} -> {r.status} {raw[:300]!r}")
        return payload


@dataclass
class ParleyHttp:
    """Parley's contract over HTTP: POST a message, long-poll the event log."""

    http: aiohttp.ClientSession
    base: str
    name: str = "parley"

    async def user(self, username: str) -> dict[str, Any]:
        await _call(
            self.http,
            "POST",
            f"{self.base}/v1/accounts",
            {"username": username, "password": PASSWORD},
        )
        s = await _call(
            self.http,
            "POST",
            f"{self.base}/v1/sessions",
            {"username": username, "password": PASSWORD, "device_name": "bench"},
        )
        return {"id": s["user_id"], "token": s["token"]}

    async def pair(self, sender: dict[str, Any], receiver: dict[str, Any]) -> str:
        c = await _call(
            self.http,
            "POST",
            f"{self.base}/v1/conversations",
            {"type": "direct", "user_id": receiver["id"]},
            sender["token"],
        )
        return str(c["conversation_id"])

    async def send(self, sender: dict[str, Any], room: str, txn: str, body: str) -> None:
        await _call(
            self.http,
            "POST",
            f"{self.base}/v1/conversations/{room}/messages",
            {"client_msg_id": txn, "body": body},
            sender["token"],
        )

    async def receive(self, receiver: dict[str, Any]) -> AsyncIterator[list[str]]:
        page = await _call(self.http, "GET", f"{self.base}/v1/events", token=receiver["token"])
        cursor = page["next"]
        while True:
            page = await _call(
                self.http,
                "GET",
                f"{self.base}/v1/events?since={cursor}&timeout=30",
                token=receiver["token"],
            )
            cursor = page["next"]
            yield [e["message"]["body"] for e in page["events"] if e["type"] == "message"]


#: Only room messages in /sync, nothing the benchmark does not read.
_SYNC_FILTER = quote(
    json.dumps(
        {
            "presence": {"types": []},
            "account_data": {"types": []},
            "room": {
                "timeline": {"limit": 1000, "types": ["m.room.message"]},
                "state": {"lazy_load_members": True},
                "ephemeral": {"types": []},
                "account_data": {"types": []},
            },
        },
        separators=(",", ":"),
    )
)


@dataclass
class MatrixHttp:
    """The Matrix client-server API: PUT a room message, long-poll /sync."""

    http: aiohttp.ClientSession
    base: str
    name: str = "synapse"

    async def user(self, username: str) -> dict[str, Any]:
        url = f"{self.base}/_matrix/client/v3/register"
        body: dict[str, Any] = {"username": username, "password": PASSWORD}
        first = await _call(self.http, "POST", url, body, ok=(200, 401))
        if "access_token" not in first:  # user-interactive auth: one dummy stage
            body["auth"] = {"type": "m.login.dummy", "session": first["session"]}
            first = await _call(self.http, "POST", url, body)
        return {"id": first["user_id"], "token": first["access_token"]}

    async def pair(self, sender: dict[str, Any], receiver: dict[str, Any]) -> str:
        room = await _call(
            self.http,
            "POST",
            f"{self.base}/_matrix/client/v3/createRoom",
            {"preset": "trusted_private_chat", "is_direct": True, "invite": [receiver["id"]]},
            sender["token"],
        )
        room_id = str(room["room_id"])
        await _call(
            self.http,
            "POST",
            f"{self.base}/_matrix/client/v3/join/{quote(room_id)}",
            {},
            receiver["token"],
        )
        return room_id

    async def send(self, sender: dict[str, Any], room: str, txn: str, body: str) -> None:
        await _call(
            self.http,
            "PUT",
            f"{self.base}/_matrix/client/v3/rooms/{quote(room)}/send/m.room.message/{txn}",
            {"msgtype": "m.text", "body": body},
            sender["token"],
        )

    async def receive(self, receiver: dict[str, Any]) -> AsyncIterator[list[str]]:
        url = f"{self.base}/_matrix/client/v3/sync?filter={_SYNC_FILTER}"
        page = await _call(self.http, "GET", url + "&timeout=0", token=receiver["token"])
        since = page["next_batch"]
        while True:
            page = await _call(
                self.http, "GET", f"{url}&timeout=30000&since={since}", token=receiver["token"]
            )
            since = page["next_batch"]
            bodies = [
                e["content"]["body"]
                for room in page.get("rooms", {}).get("join", {}).values()
                for e in room.get("timeline", {}).get("events", [])
                if e.get("type") == "m.room.message" and "body" in e.get("content", {})
            ]
            yield bodies


@dataclass
class Tally:
    measuring: bool = False
    done: int = 0
    latencies_ms: list[float] = field(default_factory=list)


async def drive(
    peer: Peer,
    pairs: int,
    window: int,
    warmup: float,
    duration: float,
    cpu_seconds: Callable[[], float | None] = lambda: None,
) -> dict[str, Any]:
    """Run the pairs; done messages per second over `duration` after `warmup`,
    and the server's CPU over the same window (`cpu_seconds`: its CPU time)."""
    tag = secrets.token_hex(3)
    users = []
    for i in range(pairs):  # one at a time: registration hashes a password
        users.append((await peer.user(f"s{tag}x{i}"), await peer.user(f"r{tag}x{i}")))
    rooms = [await peer.pair(s, r) for s, r in users]
    tally = Tally()

    async def one_pair(i: int) -> None:
        sender, receiver = users[i]
        room = rooms[i]
        slots = asyncio.Semaphore(window)

        async def sending() -> None:
            n = 0
            while True:
                await slots.acquire()
                n += 1
                await peer.send(sender, room, f"t{tag}x{i}x{n}", stamped_body("hello"))

        async def receiving() -> None:
            async for bodies in peer.receive(receiver):
                now = time.monotonic_ns()
                for body in bodies:
                    slots.release()
                    if tally.measuring:
                        tally.done += 1
                        tally.latencies_ms.append((now - body_time(body)) / 1e6)

        # A failed request ends the whole run: a pair that silently stopped
        # would make the server look slower than it is.
        await asyncio.gather(sending(), receiving())

    runners = [asyncio.create_task(one_pair(i)) for i in range(pairs)]
    await asyncio.wait(runners, timeout=warmup, return_when=asyncio.FIRST_EXCEPTION)
    tally.measuring = True
    started, cpu_before = time.monotonic(), cpu_seconds()
    await asyncio.wait(runners, timeout=duration, return_when=asyncio.FIRST_EXCEPTION)
    tally.measuring = False
    elapsed, cpu_after = time.monotonic() - started, cpu_seconds()
    for task in runners:
        task.cancel()
    outcomes = await asyncio.gather(*runners, return_exceptions=True)
    errors = [o for o in outcomes if isinstance(o, Exception)]
    if errors:
        raise BenchError(f"{peer.name}: a pair failed: {errors[0]!r}")
    lat = sorted(tally.latencies_ms)

    def pct(q: float) -> float | None:
        value = report.percentile(lat, q)
        return None if value is None else round(value, 2)

    return {
        "messages_per_s": round(tally.done / elapsed, 1),
        "done_p50_ms": pct(50),
        "done_p99_ms": pct(99),
        "messages": tally.done,
        "server_cpu_pct": (
            round(100 * (cpu_after - cpu_before) / elapsed, 1)
            if cpu_before is not None and cpu_after is not None
            else None
        ),
    }


# servers ------------------------------------------------------------------------------


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise BenchError(f"{name} not found under /usr/lib/postgresql/*/bin")
    return found[-1]


def _as_postgres(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root; run its tools as the `postgres` user then."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@dataclass
class Synapse:
    target: Target
    pg_dir: Path

    def stop(self) -> None:
        self.target.stop()
        subprocess.run(
            _as_postgres(
                [_pg_bin("pg_ctl"), "-D", str(self.pg_dir / "data"), "-m", "fast", "stop"]
            ),
            capture_output=True,
            check=False,
        )
        shutil.rmtree(self.pg_dir, ignore_errors=True)


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, check=False)
    if done.returncode != 0:
        raise BenchError(f"{' '.join(argv[:3])}... failed: {done.stderr.decode()[-2000:]}")


def start_synapse(python: str, core: int | None, timeout: float = 120.0) -> Synapse:
    workdir = Path(tempfile.mkdtemp(prefix="parley-bench-synapse-"))
    pg_dir = Path(tempfile.mkdtemp(prefix="parley-bench-pg-"))
    if os.geteuid() == 0:
        shutil.chown(pg_dir, "postgres", "postgres")
    pg_port = free_port()
    _run(
        _as_postgres(
            [_pg_bin("initdb"), "-D", str(pg_dir / "data"), "-U", "postgres", "-A", "trust",
             "-E", "UTF8", "--locale=C"]
        )
    )  # fmt: skip
    _run(
        pinned(
            _as_postgres(
                [_pg_bin("pg_ctl"), "-D", str(pg_dir / "data"), "-l", str(pg_dir / "pg.log"),
                 "-w", "-o", f"-p {pg_port} -k {pg_dir} -c listen_addresses=127.0.0.1", "start"]
            ),
            core,
        )
    )  # fmt: skip
    synapse = Synapse(Target("synapse", "", pid=None), pg_dir)
    try:
        _run(
            [_pg_bin("psql"), "-h", "127.0.0.1", "-p", str(pg_port), "-U", "postgres", "-c",
             "CREATE DATABASE synapse ENCODING 'UTF8' LC_COLLATE='C' LC_CTYPE='C'"
             " TEMPLATE template0"]
        )  # fmt: skip
        _run(
            [python, "-m", "synapse.app.homeserver", "--server-name", "bench.local",
             "--config-path", str(workdir / "generated.yaml"), "--generate-config",
             "--report-stats=no", "--data-directory", str(workdir / "data")]
        )  # fmt: skip
        port = free_port()
        (workdir / "log.yaml").write_text(
            json.dumps(
                {
                    "version": 1,
                    "handlers": {"console": {"class": "logging.StreamHandler"}},
                    "root": {"level": "WARNING", "handlers": ["console"]},
                    "disable_existing_loggers": False,
                }
            )
        )
        unlimited = {"per_second": 1_000_000, "burst_count": 1_000_000}
        config = {  # JSON is YAML
            "server_name": "bench.local",
            "pid_file": str(workdir / "homeserver.pid"),
            "listeners": [
                {
                    "port": port,
                    "bind_addresses": ["127.0.0.1"],
                    "type": "http",
                    "tls": False,
                    "x_forwarded": False,
                    "resources": [{"names": ["client"], "compress": False}],
                }
            ],
            "database": {
                "name": "psycopg2",
                "args": {
                    "user": "postgres",
                    "database": "synapse",
                    "host": "127.0.0.1",
                    "port": pg_port,
                    "cp_min": 5,
                    "cp_max": 10,
                },
            },
            "log_config": str(workdir / "log.yaml"),
            "media_store_path": str(workdir / "media"),
            "signing_key_path": str(workdir / "bench.local.signing.key"),
            "registration_shared_secret": secrets.token_hex(16),
            "macaroon_secret_key": secrets.token_hex(16),
            "form_secret": secrets.token_hex(16),
            "report_stats": False,
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "enable_registration": True,
            "enable_registration_without_verification": True,
            "presence": {"enabled": False},
            "rc_message": unlimited,
            "rc_registration": unlimited,
            "rc_login": {"address": unlimited, "account": unlimited, "failed_attempts": unlimited},
            "rc_joins": {"local": unlimited, "remote": unlimited},
            "rc_invites": {"per_room": unlimited, "per_user": unlimited, "per_issuer": unlimited},
            "rc_room_creation": unlimited,
        }
        (workdir / "homeserver.yaml").write_text(json.dumps(config, indent=1))
        synapse.target = spawn(
            "synapse",
            [python, "-m", "synapse.app.homeserver", "-c", str(workdir / "homeserver.yaml")],
            port,
            workdir,
            core,
            timeout,
            health="/health",
            cwd=workdir,
        )
        return synapse
    except BaseException:
        synapse.stop()
        raise


# the command ----------------------------------------------------------------------------


async def _measure(peer_name: str, target: Target, args: argparse.Namespace) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=90)
    ) as http:
        url = target.url
        peer: Peer = ParleyHttp(http, url) if peer_name == "parley" else MatrixHttp(http, url)
        return await drive(
            peer, args.pairs, args.window, args.warmup, args.duration, target.cpu_seconds
        )


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="parley bench peers", description=__doc__)
    p.add_argument("--synapse-python", required=True, help="python of a venv with matrix-synapse")
    p.add_argument("--pairs", type=int, default=20)
    p.add_argument("--window", type=int, default=4, help="outstanding messages per pair")
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    # Synapse runs in its own directory. abspath, not resolve: the venv's python
    # is a symlink, and resolving it would leave the venv.
    args.synapse_python = os.path.abspath(args.synapse_python)
    if shutil.which("taskset") is None:
        raise SystemExit("parley bench peers: needs taskset (util-linux)")
    machine = report.machine()
    server_core, load_cores = plan_cores()
    if load_cores:
        os.sched_setaffinity(0, load_cores)
    import uvloop

    results: dict[str, Any] = {}
    for name in ("parley", "synapse"):
        print(f"[{name}] starting (core {server_core})", flush=True)
        synapse = start_synapse(args.synapse_python, server_core) if name == "synapse" else None
        target = synapse.target if synapse else start_parley(server_core, [])
        try:
            print(
                f"[{name}] {args.pairs} pairs, window {args.window}, {args.duration}s", flush=True
            )
            res = uvloop.run(_measure(name, target, args))
            res["server_rss_kib"] = target.rss_kib()
            results[name] = res
            print(f"[{name}] {res}", flush=True)
        finally:
            (synapse or target).stop()
    ratio = results["parley"]["messages_per_s"] / max(results["synapse"]["messages_per_s"], 1e-9)
    data = {
        "machine": machine,
        "git": report.git_revision(),
        "synapse_version": subprocess.run(
            [args.synapse_python, "-c", "import synapse; print(synapse.__version__)"],
            capture_output=True,
            text=True,
            check=False,
            cwd="/",  # else Synapse reports the git revision of the current directory
        ).stdout.strip(),
        "sizes": {k: getattr(args, k) for k in ("pairs", "window", "warmup", "duration")},
        "cores": {"server": server_core, "load": load_cores},
        "results": results,
        "throughput_ratio": round(ratio, 1),
    }
    print()
    print(f"{'server':10} {'msg/s':>10} {'p50 ms':>9} {'p99 ms':>9} {'CPU %':>7}")
    for name, r in results.items():
        print(
            f"{name:10} {r['messages_per_s']:>10,.0f} {r['done_p50_ms'] or 0:>9.1f}"
            f" {r['done_p99_ms'] or 0:>9.1f} {r['server_cpu_pct'] or 0:>7.1f}"
        )
    print(f"\nParley / Synapse throughput: {ratio:.1f}x (Synapse {data['synapse_version']})")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=1, default=str) + "\n")
        print(f"JSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
