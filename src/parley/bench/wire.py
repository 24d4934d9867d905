"""A lean client for the load generator: the wire protocol, nothing else.

WebSockets go through picows (callbacks, synchronous sends, C framing): the
load generator has one core and must not be the bottleneck. HTTP set-up calls
go through aiohttp. JSON is msgspec, decoding only the fields the bench reads.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import msgspec

try:
    from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect
except ImportError as exc:  # pragma: no cover - picows is in the dev and bench extras
    raise ImportError("parley bench needs picows: pip install -e '.[bench]' (or '.[dev]')") from exc


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


class Conn(WSListener):
    """One authenticated socket. `on_frame` runs for every frame after `ready`;
    `on_idle` when the receive buffer has been drained (for coalescing replies)."""

    def __init__(
        self,
        on_frame: FrameHandler = _ignore,
        on_idle: Callable[[Conn], None] | None = None,
    ) -> None:
        super().__init__()
        loop = asyncio.get_running_loop()
        self.on_frame = on_frame
        self.on_idle = on_idle
        self.transport: WSTransport | None = None
        self.ready: asyncio.Future[Frame] = loop.create_future()
        self.closed: asyncio.Future[int | None] = loop.create_future()
        self.errors: dict[str, int] = {}
        self.failure: BaseException | None = None
        self.close_code: int | None = None
        #: free slot for the scenario's per-socket state
        self.state: Any = None

    # picows callbacks -------------------------------------------------------------
    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        try:
            msg_type = frame.msg_type
            if msg_type is WSMsgType.TEXT:
                f = _decode_frame(frame.get_payload_as_memoryview())
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
                if self.on_idle is not None and frame.last_in_buffer:
                    self.on_idle(self)
            elif msg_type is WSMsgType.CLOSE:
                self.close_code = frame.get_close_code().value
                transport.send_close(frame.get_close_code())
                transport.disconnect()
        except Exception as exc:
            if self.failure is None:
                self.failure = exc
            raise

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.ready.done():
            self.ready.set_exception(
                BenchError(f"socket closed before ready (code {self.close_code})")
            )
        if not self.closed.done():
            self.closed.set_result(self.close_code)

    # ours -------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.send(WSMsgType.TEXT, data)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_disconnected:
            self.transport.send_close(WSCloseCode.OK)
            self.transport.disconnect()

    @property
    def is_open(self) -> bool:
        return self.transport is not None and not self.transport.is_disconnected


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
    url = ws_url if since is None else f"{ws_url}?since={since}"
    kwargs: dict[str, Any] = {}
    if local_addr is not None:
        kwargs["local_addr"] = (local_addr, 0)
    await ws_connect(
        lambda: conn,
        url,
        extra_headers={"Authorization": f"Bearer {token}"},
        websocket_handshake_timeout=wait,
        max_frame_size=1 << 20,
        **kwargs,
    )
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

    async def healthy(self) -> bool:
        try:
            async with self.session.get(self.base_url + "/healthz") as r:
                return r.status == 200
        except aiohttp.ClientError:
            return False

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
