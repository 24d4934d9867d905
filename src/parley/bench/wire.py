"""A lean client for the load generator: the wire protocol, nothing else.

Sockets are aiohttp's client WebSockets (no compression, frames as bytes) behind
a callback interface: `on_frame` for every frame, `on_idle` once a read burst
has been handled (to coalesce `delivered` as a real client does), and a
synchronous `send` that queues for one writer task per socket. picows was tried
and measured no leaner per message here, so the bench needs nothing beyond the
server's own dependencies. JSON is msgspec, decoding only the fields read.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Literal

import aiohttp
import msgspec
from aiohttp import WSMsgType


class BenchError(Exception):
    """The bench cannot go on (server refused set-up, a worker died...)."""


class NotSupported(BenchError):
    """The server answered 422 not_supported: a feature it does not have yet."""


class Msg(msgspec.Struct):
    conversation_id: str
    seq: int
    sender_id: str = ""
    client_msg_id: str = ""
    body: str = ""


class Frame(msgspec.Struct):
    """Every server frame the bench reads, decoded leniently (unknown fields skipped)."""

    type: str
    client_msg_id: str | None = None
    conversation_id: str | None = None
    seq: int | None = None
    cursor: int | None = None
    status: str | None = None
    user_id: str | None = None
    code: str | None = None
    message: Msg | str | None = None


_decode_frame = msgspec.json.Decoder(Frame).decode
encode = msgspec.json.encode

FrameHandler = Callable[["Conn", Frame], None]


def _ignore(conn: Conn, frame: Frame) -> None:
    return None


class Conn:
    """One authenticated socket. `on_frame` runs for every frame after `ready`;
    `on_idle` when the frames that had arrived have all been handled."""

    def __init__(
        self,
        on_frame: FrameHandler = _ignore,
        on_idle: Callable[[Conn], None] | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.on_frame = on_frame
        self.on_idle = on_idle
        self.ws: aiohttp.ClientWebSocketResponse[Literal[False]] | None = None
        self.ready: asyncio.Future[Frame] = self.loop.create_future()
        self.closed: asyncio.Future[int | None] = self.loop.create_future()
        self.errors: dict[str, int] = {}
        self.failure: BaseException | None = None
        self.close_code: int | None = None
        #: free slot for the scenario's per-socket state
        self.state: Any = None
        self._out: deque[bytes] = deque()
        self._wake: asyncio.Future[None] | None = None
        self._idle_soon = False
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, ws: aiohttp.ClientWebSocketResponse[Literal[False]]) -> None:
        self.ws = ws
        self._tasks = [
            self.loop.create_task(self._read()),
            self.loop.create_task(self._write()),
        ]

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for msg in self.ws:
                if msg.type is WSMsgType.TEXT or msg.type is WSMsgType.BINARY:
                    self._frame(msg.data)
        except Exception as exc:
            if self.failure is None:
                self.failure = exc
        finally:
            self.close_code = self.ws.close_code
            if not self.ready.done():
                self.ready.set_exception(
                    BenchError(f"socket closed before ready (code {self.close_code})")
                )
            if not self.closed.done():
                self.closed.set_result(self.close_code)
            self._wakeup()

    def _frame(self, data: bytes) -> None:
        try:
            f = _decode_frame(data)
            if not self.ready.done():
                if f.type == "ready":
                    self.ready.set_result(f)
                    return
                if f.type == "error":
                    self.ready.set_exception(BenchError(f"refused: {f.code} {f.message}"))
                    return
            if f.type == "error":
                code = f.code or "?"
                self.errors[code] = self.errors.get(code, 0) + 1
            self.on_frame(self, f)
            if self.on_idle is not None and not self._idle_soon:
                # runs once the reader has drained what had arrived and yields
                self._idle_soon = True
                self.loop.call_soon(self._idle)
        except Exception as exc:
            if self.failure is None:
                self.failure = exc

    def _idle(self) -> None:
        self._idle_soon = False
        if self.on_idle is not None:
            try:
                self.on_idle(self)
            except Exception as exc:
                if self.failure is None:
                    self.failure = exc

    async def _write(self) -> None:
        ws = self.ws
        assert ws is not None
        out = self._out
        try:
            while not ws.closed:
                while out:
                    await ws.send_frame(out.popleft(), WSMsgType.TEXT)
                if ws.closed:
                    break
                self._wake = self.loop.create_future()
                await self._wake
        except (ConnectionError, RuntimeError):
            pass

    def _wakeup(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    # ours -------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        self._out.append(data)
        self._wakeup()

    async def close(self) -> None:
        if self.ws is not None and not self.ws.closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 5)
        self._wakeup()
        for task in self._tasks:
            task.cancel()

    @property
    def is_open(self) -> bool:
        return self.ws is not None and not self.ws.closed


_sessions: dict[tuple[int, str | None], aiohttp.ClientSession] = {}


def _session(local_addr: str | None) -> aiohttp.ClientSession:
    """One session per event loop and source address (sockets share nothing else)."""
    key = (id(asyncio.get_running_loop()), local_addr)
    session = _sessions.get(key)
    if session is None or session.closed:
        connector = aiohttp.TCPConnector(
            limit=0, local_addr=(local_addr, 0) if local_addr else None
        )
        session = _sessions[key] = aiohttp.ClientSession(connector=connector)
    return session


async def close_sessions() -> None:
    """Close this event loop's sessions (each load job calls it at the end)."""
    loop_id = id(asyncio.get_running_loop())
    for key in [k for k in _sessions if k[0] == loop_id]:
        await _sessions.pop(key).close()


async def connect(
    ws_url: str,
    token: str,
    *,
    since: int | None = None,
    on_frame: FrameHandler = _ignore,
    on_idle: Callable[[Conn], None] | None = None,
    local_addr: str | None = None,
    wait: float = 15.0,
) -> Conn:
    """Open `/v1/ws` with the token in the header and wait for `ready`."""
    conn = Conn(on_frame, on_idle)
    ws = await _session(local_addr).ws_connect(
        ws_url,
        params=None if since is None else {"since": str(since)},
        headers={"Authorization": f"Bearer {token}"},
        timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
        max_msg_size=1 << 20,
        autoping=True,
        compress=0,
        decode_text=False,
    )
    conn.start(ws)
    await asyncio.wait_for(conn.ready, wait)
    return conn


# --- frames the bench sends --------------------------------------------------------


def send_prefix(conversation_id: str) -> bytes:
    """Everything of a send frame up to the client_msg_id value."""
    return b'{"type":"send","conversation_id":' + encode(conversation_id) + b',"client_msg_id":"'


def send_frame(prefix: bytes, client_msg_id: str, body: str) -> bytes:
    """`client_msg_id` and `body` must be plain ASCII without quotes or backslashes."""
    return b"".join((prefix, client_msg_id.encode(), b'","body":"', body.encode(), b'"}'))


def delivered_frame(conversation_id: str, seq: int) -> bytes:
    return b'{"type":"delivered","conversation_id":%s,"seq":%d}' % (encode(conversation_id), seq)


def stamped_body(filler: str) -> str:
    """A message body that carries its send time (CLOCK_MONOTONIC is system-wide on
    Linux, so any process on this machine can compute latency from it)."""
    return f"{time.monotonic_ns():019d} {filler}"


def body_time(body: str) -> int:
    return int(body[:19])


# --- HTTP set-up ----------------------------------------------------------------------


class User(msgspec.Struct):
    username: str
    user_id: str
    token: str
    device_id: str


class Api:
    """The few HTTP calls the bench needs; 429 answers are waited out and retried."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=64), timeout=aiohttp.ClientTimeout(total=120)
        )

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http", "ws", 1) + "/v1/ws"

    async def close(self) -> None:
        await self.session.close()

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        token: str | None = None,
        params: dict[str, Any] | None = None,
    ) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = encode(body) if body is not None else None
        if data is not None:
            headers["Content-Type"] = "application/json"
        for _ in range(60):
            async with self.session.request(
                method, self.base_url + path, data=data, headers=headers, params=params
            ) as r:
                raw = await r.read()
                if r.status == 429:
                    await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
                    continue
                payload = msgspec.json.decode(raw) if raw else None
                if r.status >= 400:
                    err = (payload or {}).get("error", {}) if isinstance(payload, dict) else {}
                    if r.status == 422 and err.get("code") == "not_supported":
                        raise NotSupported(err.get("message", "not supported"))
                    raise BenchError(f"{method} {path} -> {r.status} {raw[:300]!r}")
                return payload
        raise BenchError(f"{method} {path}: still rate limited after a minute")

    async def new_user(self, username: str, password: str) -> User:
        await self.call("POST", "/v1/accounts", {"username": username, "password": password})
        return await self.login(username, password)

    async def login(self, username: str, password: str) -> User:
        s = await self.call(
            "POST",
            "/v1/sessions",
            {"username": username, "password": password, "device_name": "bench"},
        )
        return User(username, s["user_id"], s["token"], s["device_id"])

    async def direct(self, user: User, peer_id: str) -> str:
        c = await self.call(
            "POST", "/v1/conversations", {"type": "direct", "user_id": peer_id}, user.token
        )
        return str(c["conversation_id"])

    async def group(self, user: User, title: str, member_ids: list[str]) -> str:
        c = await self.call(
            "POST",
            "/v1/conversations",
            {"type": "group", "title": title, "member_ids": member_ids},
            user.token,
        )
        return str(c["conversation_id"])

    async def cursor(self, user: User) -> int:
        page = await self.call("GET", "/v1/events", token=user.token)
        return int(page["next"])
