"""The WebSocket edge: `GET /v1/ws`.

One `WsConnection` per socket. Frames from a socket are served in order;
sends are pipelined (the next frame is read while earlier sends commit), and
since the store completes writes in order, acks come back in send order.
Outbound frames go through a bounded queue drained by one writer task.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any, Literal

import msgspec
from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.abc import AbstractStreamWriter

from parley.metrics import Metrics
from parley.protocol import frames, limits
from parley.protocol.errors import (
    Forbidden,
    InvalidRequest,
    ParleyError,
    RateLimited,
    Unauthorized,
)
from parley.protocol.frames import (
    AckFrame,
    AuthFrame,
    ClientFrame,
    DeliveredFrame,
    ErrorFrame,
    PingFrame,
    PongFrame,
    ReadFrame,
    ReadyFrame,
    SendFrame,
    SyncFrame,
    TypingFrame,
)
from parley.protocol.models import TypingEvent
from parley.server.config import ServerConfig
from parley.server.hub import Hub
from parley.server.params import bearer_token, since_param
from parley.services.accounts import AccountService, Principal
from parley.services.messaging import EVENTS_PAGE, MessagingService
from parley.services.presence import PresenceService
from parley.services.ratelimit import TokenBucket
from parley.storage.base import SendOutcome

log = logging.getLogger(__name__)
_encode = msgspec.json.Encoder().encode
_PONG = _encode(PongFrame())

#: A reader this far behind (bytes the kernel would not take yet) is cut off
#: (4008) instead of growing server memory; it reconnects with `?since=` and
#: loses nothing.
MAX_WRITE_BUFFER = 4 * 1024 * 1024
#: A replay sends its next page only once less than this waits in the buffer.
REPLAY_HIGH_WATER = 1024 * 1024
#: All frames from one socket: far above any real client, low enough to stop a
#: flood. Off, like the send limit, when `--send-rate-limit 0` (benchmarks).
FRAME_RATE, FRAME_BURST = 1000.0, 5000.0
#: Typing notices per socket: a keystroke storm becomes one notice a second.
TYPING_RATE, TYPING_BURST = 1.0, 3.0


class WsConnection:
    def __init__(
        self,
        ws: web.WebSocketResponse,
        principal: Principal,
        messaging: MessagingService,
        presence: PresenceService,
        metrics: Metrics,
        transport: asyncio.Transport | None,
        writer: AbstractStreamWriter | None = None,
        *,
        limit_frames: bool = True,
    ) -> None:
        self.metrics = metrics
        self.ws = ws
        self.user_id = principal.user_id
        self.device_id = principal.device_id
        self.messaging = messaging
        self.presence = presence
        self._outbox: list[bytes] = []
        self._flush_scheduled = False
        self._transport = transport
        self._writer = writer
        if transport is not None:
            # Flow control pauses writing above this mark; a replay waits on it.
            transport.set_write_buffer_limits(high=REPLAY_HIGH_WATER)
        #: While replaying, live events wait here so none is lost or doubled.
        self._held: list[tuple[int | None, bytes]] | None = []
        self._last_cursor = 0
        self._frames = TokenBucket(FRAME_RATE if limit_frames else 0.0, FRAME_BURST)
        #: The newest send in flight: sends complete in order, so once it is
        #: done every earlier one has been acked too.
        self._last_send: asyncio.Future[Any] | None = None
        self._typing = TokenBucket(TYPING_RATE, TYPING_BURST)
        self._closing = False
        self._close_task: asyncio.Task[None] | None = None

    # outbound ----------------------------------------------------------------------
    def deliver(self, cursor: int | None, payload: bytes) -> None:
        if self._held is not None:
            self._held.append((cursor, payload))
            return
        if cursor is not None:
            if cursor <= self._last_cursor:
                return  # already sent during the replay
            self._last_cursor = cursor
        self.push(payload)

    def push(self, data: bytes) -> None:
        """Queue one text frame; everything queued in this loop turn leaves in one write."""
        if self._closing:
            return
        self._outbox.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        # Frames are written straight to the transport, all at once: under load
        # a client gets its ack, echo and receipts in one send() instead of one
        # each (aiohttp's writer costs a system call per frame).
        self._flush_scheduled = False
        transport = self._transport
        if transport is None or transport.is_closing():
            self._outbox.clear()
            return
        chunks: list[bytes] = []
        for data in self._outbox:
            chunks += (_text_frame_header(len(data)), data)
        self._outbox.clear()
        transport.write(b"".join(chunks))
        replaying = self._held is not None  # replay paces itself (see _drained)
        if not replaying and transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            self.close_soon(frames.CLOSE_TOO_SLOW, "reading too slowly; reconnect with since")

    def send_error(self, exc: ParleyError, ref: str | None) -> None:
        self.metrics.errors.labels(exc.code).inc()
        self.push(_encode(ErrorFrame(code=exc.code, message=exc.message, ref=ref)))

    def close_soon(self, code: int, reason: str) -> None:
        if self._closing:
            return
        self._closing = True

        self._flush()  # what was queued before the close goes out before it

        async def close() -> None:
            await self.ws.close(code=code, message=reason.encode())

        self._close_task = asyncio.get_running_loop().create_task(close())

    async def finish(self) -> None:
        """Let a pending close (with its code) complete before the handler returns."""
        if self._close_task is not None:
            await self._close_task

    # replay -----------------------------------------------------------------------------
    async def replay(self, since: int) -> None:
        """Send every logged event after `since`, then whatever arrived meanwhile."""
        self._held = self._held if self._held is not None else []
        self._last_cursor = since
        while True:
            events = await self.messaging.events_after(self.user_id, self._last_cursor)
            for event in events:
                self._last_cursor = event.cursor
                self.push(_encode(event))
            await self._drained()
            if len(events) < EVENTS_PAGE:
                break
        self.go_live()

    async def _drained(self) -> None:
        """During a replay, let the client read what was sent before sending more:
        a long catch-up is paced by the reader instead of being cut off as slow."""
        self._flush()
        if self._writer is not None:
            await self._writer.drain()  # waits while the transport is over its high mark

    def go_live(self) -> None:
        held, self._held = self._held or [], None
        for cursor, payload in held:
            self.deliver(cursor, payload)

    def start_after(self, cursor: int) -> None:
        """Start live delivery after `cursor`, without replay."""
        self._last_cursor = cursor
        self.go_live()

    # inbound ------------------------------------------------------------------------------
    async def serve(self) -> None:
        async for msg in self.ws:
            if msg.type is WSMsgType.TEXT:
                await self.handle(msg.data)
            elif msg.type is WSMsgType.BINARY:
                self.send_error(InvalidRequest("frames must be JSON text"), None)
            elif msg.type is WSMsgType.ERROR:
                break
            if self._closing:
                break

    async def handle(self, data: str) -> None:
        ref: str | None = None
        try:
            raw = frames.decode_json(data)
            ref = frames.frame_ref(raw)
            if not self._frames.take():
                raise RateLimited("too many frames; slow down")
            frame = frames.parse_client_frame(raw)
            await self.dispatch(frame, ref)
        except RateLimited as exc:
            await self.rate_limited(exc, ref)
        except ParleyError as exc:
            self.send_error(exc, ref)

    async def rate_limited(self, exc: RateLimited, ref: str | None) -> None:
        """Ack what was accepted, then the error frame, then close 4429: in that order."""
        if self._last_send is not None:
            await asyncio.wait([self._last_send])
        self.send_error(exc, ref)
        self.close_soon(frames.CLOSE_RATE_LIMITED, "rate limited")

    async def dispatch(self, frame: ClientFrame, ref: str | None) -> None:
        if isinstance(frame, SendFrame):
            self._last_send = self.messaging.send(
                self.user_id,
                self.device_id,
                frame.conversation_id,
                frame.client_msg_id,
                frame.body,
                on_durable=functools.partial(self._acked, ref=ref, received=time.perf_counter()),
            )
        elif isinstance(frame, DeliveredFrame | ReadFrame):
            status: Literal["delivered", "read"] = (
                "delivered" if isinstance(frame, DeliveredFrame) else "read"
            )
            self.messaging.mark(
                self.user_id, frame.conversation_id, status, frame.seq
            ).add_done_callback(self._report_failure)
        elif isinstance(frame, PingFrame):
            self.push(_PONG)
        elif isinstance(frame, TypingFrame):
            record = await self.messaging.is_member(self.user_id, frame.conversation_id)
            if self._typing.take():
                others = [u for u in record.members if u != self.user_id]
                self.messaging.publish_live(
                    others,
                    TypingEvent(conversation_id=frame.conversation_id, user_id=self.user_id),
                )
        elif isinstance(frame, SyncFrame):
            self._held = []
            await self.replay(frame.since)
        elif isinstance(frame, AuthFrame):
            raise InvalidRequest("already authenticated")

    def _acked(self, future: asyncio.Future[Any], ref: str | None, received: float) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            self.send_error(_as_parley_error(exc), ref)
            return
        outcome: SendOutcome = future.result()
        m = outcome.message
        self.push(
            _encode(
                AckFrame(
                    client_msg_id=m.client_msg_id,
                    conversation_id=m.conversation_id,
                    seq=m.seq,
                    message_id=m.message_id,
                    sent_at=m.sent_at,
                    peer_presence=self.presence.offline_peer(
                        outcome.conversation_type, outcome.member_ids, self.user_id
                    ),
                )
            )
        )
        self.metrics.ack_latency.observe(time.perf_counter() - received)

    def _report_failure(self, future: asyncio.Future[Any]) -> None:
        if not future.cancelled() and future.exception() is not None:
            self.send_error(_as_parley_error(future.exception()), None)


def _as_parley_error(exc: BaseException | None) -> ParleyError:
    if isinstance(exc, ParleyError):
        return exc
    log.error("unexpected failure serving a frame", exc_info=exc)
    return ParleyError("internal error", code="internal", status=500)


class WsEndpoint:
    """The handshake: origin, authentication, limits, then hand over to a connection."""

    def __init__(
        self,
        config: ServerConfig,
        accounts: AccountService,
        messaging: MessagingService,
        presence: PresenceService,
        hub: Hub,
        metrics: Metrics,
    ) -> None:
        self.metrics = metrics
        self.config = config
        self.accounts = accounts
        self.messaging = messaging
        self.presence = presence
        self.hub = hub

    def check_origin(self, request: web.Request) -> None:
        origin = request.headers.get("Origin")
        if origin is None:
            return  # not a browser: SDKs and CLIs send none
        origin = origin.rstrip("/")
        own = {f"{scheme}://{request.host}" for scheme in ("http", "https")}
        if origin not in own and origin not in self.config.allowed_origins:
            raise Forbidden("origin not allowed")

    def check_capacity(self, user_id: str) -> None:
        if self.hub.count(user_id) >= self.config.max_connections_per_user:
            raise RateLimited("too many open connections for this user")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.check_origin(request)
        since = since_param(request)
        principal: Principal | None = None
        header = request.headers.get("Authorization")
        if header is not None:
            principal = await self.accounts.authenticate(bearer_token(header))
            self.check_capacity(principal.user_id)
        # No permessage-deflate: frames are written pre-framed and uncompressed
        # (see WsConnection._flush); chat frames are small anyway.
        ws = web.WebSocketResponse(
            max_msg_size=limits.MAX_FRAME_BYTES, autoping=True, compress=False
        )
        await ws.prepare(request)
        # From here on the socket is upgraded: no HTTP answer can be sent any more.
        try:
            await self._serve_upgraded(ws, request, principal, since)
        except Exception:
            log.exception("WebSocket connection failed")
            if not ws.closed:
                await ws.close(code=WSCloseCode.INTERNAL_ERROR, message=b"internal error")
        return ws

    async def _serve_upgraded(
        self,
        ws: web.WebSocketResponse,
        request: web.Request,
        principal: Principal | None,
        since: int | None,
    ) -> None:
        if principal is None:
            principal = await self._auth_by_frame(ws)
            if principal is None:
                return
            try:
                self.check_capacity(principal.user_id)
            except RateLimited as exc:
                await _refuse(ws, exc, frames.CLOSE_RATE_LIMITED)
                return
        conn = WsConnection(
            ws,
            principal,
            self.messaging,
            self.presence,
            self.metrics,
            request.transport,
            request.writer,
            limit_frames=self.config.send_rate_limit > 0,
        )
        device_key = f"ws:{id(conn)}"
        self.hub.attach(conn)
        self.presence.connected(principal.user_id, device_key)
        try:
            cursor = await self.messaging.cursor(principal.user_id)
            conn.push(
                _encode(
                    ReadyFrame(
                        user_id=principal.user_id, device_id=principal.device_id, cursor=cursor
                    )
                )
            )
            if since is None:
                conn.start_after(cursor)
            else:
                await conn.replay(since)
            await conn.serve()
        except ParleyError as exc:
            conn.send_error(exc, None)
            conn.close_soon(1008, exc.message)
        finally:
            self.hub.detach(conn)
            self.presence.disconnected(principal.user_id, device_key)
        await conn.finish()

    async def _auth_by_frame(self, ws: web.WebSocketResponse) -> Principal | None:
        try:
            msg = await ws.receive(timeout=limits.AUTH_FRAME_TIMEOUT)
        except TimeoutError:
            await ws.close(code=frames.CLOSE_AUTH_TIMEOUT, message=b"authenticate first")
            return None
        if msg.type is not WSMsgType.TEXT:
            await ws.close(code=frames.CLOSE_UNAUTHORIZED, message=b"authenticate first")
            return None
        try:
            frame = frames.parse_client_frame(frames.decode_json(msg.data))
            if not isinstance(frame, AuthFrame):
                raise Unauthorized("the first frame must be auth")
            return await self.accounts.authenticate(frame.token)
        except ParleyError as exc:
            await _refuse(ws, exc, frames.CLOSE_UNAUTHORIZED)
            return None


async def _refuse(ws: web.WebSocketResponse, exc: ParleyError, code: int) -> None:
    """Tell the client why in an error frame, then close with `code`."""
    await ws.send_frame(_encode(ErrorFrame(code=exc.code, message=exc.message)), WSMsgType.TEXT)
    await ws.close(code=code, message=exc.message.encode()[:120])


def _text_frame_header(length: int) -> bytes:
    """RFC 6455 header of a final, unmasked text frame (server to client)."""
    if length < 126:
        return bytes((0x81, length))
    if length < 65536:
        return bytes((0x81, 126)) + length.to_bytes(2, "big")
    return bytes((0x81, 127)) + length.to_bytes(8, "big")
