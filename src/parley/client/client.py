"""`ParleyClient`: REST helpers plus one WebSocket that heals itself.

The socket is where messages are sent and events arrive. It is meant to be left
open for hours across server restarts and flaky networks, so the client keeps
the state needed to resume without loss or duplication: the last event cursor,
every send not yet acknowledged, the delivered watermarks it owes the server,
and the message seqs it has already handed to the application.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import aiohttp
import msgspec
from yarl import URL

from parley.client.dedup import MessageDedup
from parley.protocol import models
from parley.protocol.errors import (
    Conflict,
    CursorExpired,
    Forbidden,
    InvalidRequest,
    NotFound,
    ParleyError,
    RateLimited,
    TooLarge,
    Unauthorized,
    Unavailable,
)
from parley.protocol.frames import (
    CLOSE_TOO_SLOW,
    CLOSE_UNAUTHORIZED,
    AckFrame,
    DeliveredFrame,
    ErrorFrame,
    PingFrame,
    PongFrame,
    ReadFrame,
    ReadyFrame,
    SendFrame,
    TypingFrame,
)
from parley.protocol.limits import MAX_FRAME_BYTES, MAX_PAGE
from parley.protocol.requests import check_body_size

log = logging.getLogger("parley.client")

DEFAULT_SERVER: Final = "http://127.0.0.1:8080"
#: Users per `GET /v1/presence` call (the server refuses more).
PRESENCE_BATCH: Final = 500

T = TypeVar("T")

#: What the server may send on the socket. Unknown frame types are skipped (a
#: newer server may add some), so the union is decoded leniently.
ServerFrame = (
    ReadyFrame
    | AckFrame
    | ErrorFrame
    | PongFrame
    | models.MessageEvent
    | models.ReceiptEvent
    | models.ConversationEvent
    | models.PresenceEvent
    | models.TypingEvent
)
_frame_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(ServerFrame)
_PING: Final = msgspec.json.encode(PingFrame()).decode()

#: Error codes after which a send is kept and retried rather than failed:
#: the server promises that retrying with the same client_msg_id is safe.
_RETRYABLE_SEND_ERRORS: Final = frozenset({"unavailable", "rate_limited"})

_ERROR_CLASSES: Final[dict[int, type[ParleyError]]] = {
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    410: CursorExpired,
    413: TooLarge,
    422: InvalidRequest,
    503: Unavailable,
}


class ClientClosed(Exception):
    """The client was closed; sends still pending will never be acknowledged."""


class SessionRevoked(Unauthorized):
    """The token no longer works (logged out elsewhere, or never valid): do not retry."""


# --- lifecycle events, mixed into the event stream ---------------------------


@dataclass(frozen=True)
class Connected:
    """The socket is (again) open and `ready`; replay of missed events follows."""

    cursor: int
    reconnect: bool


@dataclass(frozen=True)
class Disconnected:
    """The socket dropped; the client is reconnecting with backoff."""

    reason: str


@dataclass(frozen=True)
class Resync:
    """The server no longer holds events after our cursor (410 `cursor_expired`).

    The stream restarts from the server's current cursor; the application should
    re-read conversations and history over REST to fill what it missed.
    """


#: Everything `ParleyClient.events()` yields.
ClientEvent = models.Event | Connected | Disconnected | Resync


@dataclass
class _PendingSend:
    frame: str
    future: asyncio.Future[AckFrame]


@dataclass
class _Conn:
    """One open socket and the tasks that serve it."""

    ws: aiohttp.ClientWebSocketResponse
    out: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    last_rx: float = 0.0
    abort: asyncio.Event = field(default_factory=asyncio.Event)
    ready_cursor: int = 0


class _Stop:
    def __init__(self, error: BaseException | None) -> None:
        self.error = error


def error_from_response(status: int, body: bytes, retry_after: str | None = None) -> ParleyError:
    """Turn an HTTP error answer into the matching `ParleyError` subclass."""
    code, message = "http_error", f"HTTP {status}"
    try:
        err = msgspec.json.decode(body, type=models.ErrorResponse).error
        code, message = err.code, err.message
    except (msgspec.DecodeError, msgspec.ValidationError):
        text = body.decode(errors="replace").strip()
        if text:
            message = f"HTTP {status}: {text[:200]}"
    if status == 429:
        try:
            wait = float(retry_after) if retry_after else 1.0
        except ValueError:
            wait = 1.0
        exc: ParleyError = RateLimited(message, retry_after=wait)
        exc.code = code
        return exc
    cls = SessionRevoked if status == 401 else _ERROR_CLASSES.get(status, ParleyError)
    return cls(message, code=code, status=status)


def _decode(data: bytes, as_type: type[T]) -> T:
    """Decode an answer; one the SDK does not understand is a `ParleyError`, not a crash."""
    try:
        return msgspec.json.decode(data, type=as_type)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ParleyError(
            f"unexpected answer from the server: {exc}", code="bad_response", status=502
        ) from None


class ParleyClient:
    """One user's session with a Parley server.

    Without a token, only `register` and `login` work; `login` stores the token.
    With a token (from an earlier `login`), everything works at once.

    `connect()` opens the event socket; from then on `events()` yields every
    event once, `send()` returns a future for the server's `ack`, and the client
    reconnects by itself (exponential backoff with jitter), resuming from the
    last cursor and resending unacknowledged sends with their `client_msg_id`.
    """

    def __init__(
        self,
        server: str = DEFAULT_SERVER,
        token: str | None = None,
        *,
        user_id: str | None = None,
        device_id: str | None = None,
        auto_delivered: bool = True,
        delivered_delay: float = 0.05,
        ping_interval: float = 20.0,
        pong_timeout: float = 10.0,
        reconnect_base: float = 0.25,
        reconnect_max: float = 30.0,
        request_timeout: float = 30.0,
    ) -> None:
        self.server = server.rstrip("/")
        self.token = token
        self.user_id = user_id
        self.device_id = device_id
        self.auto_delivered = auto_delivered
        self.delivered_delay = delivered_delay
        self.ping_interval = ping_interval
        self.pong_timeout = pong_timeout
        self.reconnect_base = reconnect_base
        self.reconnect_max = reconnect_max
        self.request_timeout = request_timeout
        #: Count of `delivered` frames written (coalescing makes it small).
        self.delivered_frames_sent = 0
        #: Count of successful reconnections after the first connect.
        self.reconnects = 0
        #: Count of send frames written again on a new socket (same client_msg_id).
        self.resent = 0
        #: Count of keepalive pings written on idle sockets.
        self.pings_sent = 0

        self._session: aiohttp.ClientSession | None = None
        self._cursor: int | None = None
        self._conn: _Conn | None = None
        self._runner: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._closed = False  # no more sends or connects (closed, or session revoked)
        self._shut = False  # close() ran: resources released
        self._queue: asyncio.Queue[ClientEvent | _Stop] = asyncio.Queue()
        self._pending: dict[str, _PendingSend] = {}
        self._dedup = MessageDedup()
        # Delivered watermarks: waiting to be written, written, and confirmed by
        # the server's receipt (only the written-but-unconfirmed are resent).
        self._delivered_due: dict[str, int] = {}
        self._delivered_sent: dict[str, int] = {}
        self._delivered_confirmed: dict[str, int] = {}
        self._delivered_timer: asyncio.TimerHandle | None = None

    # --- context manager ----------------------------------------------------

    async def __aenter__(self) -> ParleyClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def cursor(self) -> int | None:
        """The cursor of the last logged event received (where a reconnect resumes)."""
        return self._cursor

    @property
    def connected(self) -> bool:
        return self._conn is not None

    @property
    def pending_sends(self) -> int:
        """Sends written (or waiting to be) whose `ack` has not arrived yet."""
        return len(self._pending)

    # --- HTTP ---------------------------------------------------------------

    def _http(self) -> aiohttp.ClientSession:
        if self._shut:
            raise ClientClosed("client is closed")
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.request_timeout)
            )
        return self._session

    def _auth_headers(self) -> dict[str, str]:
        if not self.token:
            raise SessionRevoked("not logged in: no session token")
        return {"Authorization": f"Bearer {self.token}"}

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, str] | None = None,
        auth: bool = True,
    ) -> bytes:
        """One HTTP call; an error answer raises the matching `ParleyError`."""
        headers = self._auth_headers() if auth else {}
        data: bytes | None = None
        if body is not None:
            data = msgspec.json.encode(body)
            headers["Content-Type"] = "application/json"
        async with self._http().request(
            method, self.server + path, data=data, params=params, headers=headers
        ) as resp:
            payload = await resp.read()
            if resp.status >= 400:
                raise error_from_response(resp.status, payload, resp.headers.get("Retry-After"))
            return payload

    async def _get(self, path: str, type_: type[T], params: dict[str, str] | None = None) -> T:
        return _decode(await self._request("GET", path, params=params), type_)

    # --- accounts and sessions ----------------------------------------------

    async def register(
        self, username: str, password: str, display_name: str | None = None
    ) -> models.User:
        """Create an account. It does not log in: a session is one device."""
        body: dict[str, str] = {"username": username, "password": password}
        if display_name is not None:
            body["display_name"] = display_name
        data = await self._request("POST", "/v1/accounts", body=body, auth=False)
        return _decode(data, models.User)

    async def login(
        self, username: str, password: str, device_name: str | None = None
    ) -> models.Session:
        """Open a session (a new device) and keep its token for every later call."""
        body: dict[str, str] = {"username": username, "password": password}
        if device_name is not None:
            body["device_name"] = device_name
        data = await self._request("POST", "/v1/sessions", body=body, auth=False)
        session = _decode(data, models.Session)
        self.token, self.user_id, self.device_id = (
            session.token,
            session.user_id,
            session.device_id,
        )
        return session

    async def logout(self) -> None:
        """End this session on the server; the token stops working everywhere."""
        await self._request("DELETE", "/v1/sessions/current")
        self.token = None

    # --- users, contacts, presence ------------------------------------------

    async def get_user(self, user_id: str) -> models.User:
        return await self._get(f"/v1/users/{user_id}", models.User)

    async def find_user(self, username: str) -> models.User:
        """Look a user up by username (`NotFound` if there is none)."""
        return await self._get("/v1/users", models.User, {"username": username})

    async def add_contact(self, user_id: str) -> None:
        """Add a contact (idempotent). It lets *them* see *your* presence."""
        await self._request("PUT", f"/v1/contacts/{user_id}")

    async def remove_contact(self, user_id: str) -> None:
        await self._request("DELETE", f"/v1/contacts/{user_id}")

    async def contacts(self) -> list[models.Contact]:
        """Contacts with their presence, in one call (what a client pulls at start-up).

        A contact's status is `unknown` unless they may be seen: they list you
        as a contact too, or you share a conversation.
        """
        return (await self._get("/v1/contacts", models.ContactList)).contacts

    async def presence(self, user_ids: Iterable[str]) -> dict[str, models.PresenceStatus]:
        """`{user_id: PresenceStatus}` for the given users, duplicates collapsed.

        The server answers at most `PRESENCE_BATCH` users per call; longer lists
        are split into that many calls, made concurrently. Users whose presence
        this user may not see come back with status `unknown`.
        """
        ids = list(dict.fromkeys(user_ids))
        chunks = [ids[i : i + PRESENCE_BATCH] for i in range(0, len(ids), PRESENCE_BATCH)]
        pages = await asyncio.gather(
            *(
                self._get("/v1/presence", models.PresenceMap, {"user_ids": ",".join(chunk)})
                for chunk in chunks
            )
        )
        merged: dict[str, models.PresenceStatus] = {}
        for page in pages:
            merged.update(page.presence)
        return merged

    # --- conversations and messages -----------------------------------------

    async def create_direct(self, user_id: str) -> models.Conversation:
        """The direct conversation with `user_id`, created if it does not exist yet."""
        data = await self._request(
            "POST", "/v1/conversations", body={"type": "direct", "user_id": user_id}
        )
        return _decode(data, models.Conversation)

    async def get_conversation(self, conversation_id: str) -> models.Conversation:
        return await self._get(f"/v1/conversations/{conversation_id}", models.Conversation)

    async def list_conversations(
        self, *, limit: int | None = None, before: int | None = None
    ) -> list[models.Conversation]:
        """Conversations, most recent activity first."""
        params: dict[str, str] = {}
        if limit is not None:
            params["limit"] = str(limit)
        if before is not None:
            params["before"] = str(before)
        page = await self._get("/v1/conversations", models.ConversationList, params)
        return page.conversations

    async def all_conversations(self, page_size: int = 100) -> list[models.Conversation]:
        """Every conversation this user is a member of, most recent activity first.

        Pages with `before=` the oldest activity seen (a conversation's activity
        is its last message's `sent_at`, else its `created_at`). That bound is an
        exclusive millisecond, so each next page starts one millisecond higher
        and repeats are dropped; a page of nothing but repeats (many
        conversations sharing one millisecond) is asked for again, larger, up to
        the server's limit of 200. Beyond 200 in one millisecond, the protocol
        offers no way to page further and the rest of that millisecond is skipped.
        """
        seen: dict[str, models.Conversation] = {}
        before: int | None = None
        size = page_size
        while True:
            page = await self.list_conversations(limit=size, before=before)
            fresh = [c for c in page if c.conversation_id not in seen]
            for conv in fresh:
                seen[conv.conversation_id] = conv
            if len(page) < size:
                return list(seen.values())
            oldest = min(_activity(c) for c in page)
            if fresh:
                before, size = oldest + 1, page_size
            elif size < MAX_PAGE:
                size = min(2 * size, MAX_PAGE)
            else:
                before = oldest

    # --- groups ---------------------------------------------------------------

    async def create_group(self, title: str, member_ids: Iterable[str]) -> models.Conversation:
        """A new group with this user as its admin (at most 256 members by default:
        more is `InvalidRequest` with code `too_many_members`)."""
        body = {"type": "group", "title": title, "member_ids": list(member_ids)}
        data = await self._request("POST", "/v1/conversations", body=body)
        return _decode(data, models.Conversation)

    async def add_member(self, conversation_id: str, user_id: str) -> None:
        """Add a member (admins only: else `Forbidden`; idempotent).

        A direct conversation is `InvalidRequest` with code `not_a_group`; a full
        group, code `too_many_members`.
        """
        await self._request(
            "POST", f"/v1/conversations/{conversation_id}/members", body={"user_id": user_id}
        )

    async def remove_member(self, conversation_id: str, user_id: str) -> None:
        """Remove a member (admins only, or oneself: see `leave`).

        The removed member receives nothing sent after and reads history only up to it.
        """
        await self._request("DELETE", f"/v1/conversations/{conversation_id}/members/{user_id}")

    async def leave(self, conversation_id: str) -> None:
        """Leave a group; if the admin leaves, the longest-standing member takes over."""
        if not self.user_id:
            raise InvalidRequest("own user id unknown: log in or connect first")
        await self.remove_member(conversation_id, self.user_id)

    async def rename_group(self, conversation_id: str, title: str) -> models.Conversation:
        """Change a group's title (admins only); returns the updated conversation."""
        data = await self._request(
            "PATCH", f"/v1/conversations/{conversation_id}", body={"title": title}
        )
        return _decode(data, models.Conversation)

    async def members(self, conversation_id: str) -> list[models.Member]:
        """The current members with their role and delivered/read watermarks."""
        return (await self.get_conversation(conversation_id)).members

    async def get_messages(
        self,
        conversation_id: str,
        *,
        before: int | None = None,
        after: int | None = None,
        limit: int | None = None,
    ) -> models.MessagesPage:
        """One page of history, ascending seq (newest page without bounds)."""
        params: dict[str, str] = {}
        if before is not None:
            params["before"] = str(before)
        if after is not None:
            params["after"] = str(after)
        if limit is not None:
            params["limit"] = str(limit)
        return await self._get(
            f"/v1/conversations/{conversation_id}/messages", models.MessagesPage, params
        )

    async def history(
        self, conversation_id: str, *, page_size: int = 50, before: int | None = None
    ) -> AsyncIterator[list[models.Message]]:
        """Pages of history going back in time: newest page first, each ascending.

        Each next page is asked for with `before=` the oldest seq seen so far, so
        messages arriving meanwhile never shift the pages.
        """
        while True:
            page = await self.get_messages(conversation_id, before=before, limit=page_size)
            if page.messages:
                yield page.messages
            if not page.has_more or not page.messages:
                return
            before = page.messages[0].seq

    async def post_message(
        self, conversation_id: str, body: str, client_msg_id: str | None = None
    ) -> models.Message:
        """Send over HTTP (no socket needed); idempotent on `client_msg_id`."""
        return (await self.post_message_result(conversation_id, body, client_msg_id)).message

    async def post_message_result(
        self, conversation_id: str, body: str, client_msg_id: str | None = None
    ) -> models.SendResult:
        """As `post_message`, with the whole answer: `peer_presence` is set when the
        conversation is direct and the peer has no device online (as in the `ack`)."""
        payload = {"client_msg_id": client_msg_id or new_client_msg_id(), "body": body}
        data = await self._request(
            "POST", f"/v1/conversations/{conversation_id}/messages", body=payload
        )
        return _decode(data, models.SendResult)

    async def mark_read(self, conversation_id: str, seq: int) -> None:
        """Move the read watermark over HTTP (it never moves backwards)."""
        await self._request("POST", f"/v1/conversations/{conversation_id}/read", body={"seq": seq})

    async def poll_events(self, since: int | None = None, wait: float = 30) -> models.EventsPage:
        """Long-poll the event log (for callers that cannot keep a socket)."""
        params = {"timeout": str(wait)}
        if since is not None:
            params["since"] = str(since)
        return await self._get("/v1/events", models.EventsPage, params)

    # --- the socket: public API ---------------------------------------------

    @property
    def ws_url(self) -> URL:
        url = URL(self.server)
        scheme = {"http": "ws", "https": "wss"}.get(url.scheme, url.scheme)
        return url.with_scheme(scheme).with_path(url.path.rstrip("/") + "/v1/ws")

    async def connect(self, since: int | None = None) -> None:
        """Open the socket and wait for `ready`; later drops are healed in the background.

        `since`: replay every logged event after this cursor first (0: all of
        them). Without it the stream starts at the server's current cursor.
        The first attempt's failure is raised, so a wrong URL or token is loud.
        """
        if self._closed:
            raise ClientClosed("client is closed")
        if self._runner is not None:
            raise RuntimeError("already connected")
        if since is not None:
            self._cursor = since
        try:
            conn = await asyncio.wait_for(self._open(), self.request_timeout)
        except aiohttp.WSServerHandshakeError as exc:
            raise _handshake_error(exc) from None
        self._runner = asyncio.create_task(self._run(conn), name="parley-client")

    async def wait_connected(self) -> None:
        """Wait until the socket is open and `ready` (e.g. after a reconnect)."""
        await self._connected.wait()

    async def events(self) -> AsyncIterator[ClientEvent]:
        """Every event once, in stream order, until `close()` (or a revoked session raises).

        Meant for one consumer: events are handed out, not broadcast. They are
        buffered without bound until consumed, so keep consuming.
        """
        while True:
            item = await self._queue.get()
            if isinstance(item, _Stop):
                self._queue.put_nowait(item)  # let any other iterator stop too
                if item.error is not None:
                    raise item.error
                return
            yield item

    def send(
        self, conversation_id: str, body: str, client_msg_id: str | None = None
    ) -> asyncio.Future[AckFrame]:
        """Queue a message; the future resolves with the server's `ack` once durable.

        The send survives reconnects: until acknowledged, it is written again
        (same `client_msg_id`, so never duplicated) on every new socket. A send
        the server refuses for good fails the future with its `ParleyError`.
        Sends are written in call order, so they get their seqs in that order.
        The ack's `peer_presence` is set when the conversation is direct and the
        peer has no device online: the message waits for them ("sent, not delivered").
        """
        if self._closed:
            raise ClientClosed("client is closed")
        if not body:
            raise InvalidRequest("a message body must not be empty")
        check_body_size(body)
        cmid = client_msg_id or new_client_msg_id()
        existing = self._pending.get(cmid)
        if existing is not None:
            return existing.future
        frame = msgspec.json.encode(
            SendFrame(conversation_id=conversation_id, client_msg_id=cmid, body=body)
        ).decode()
        future: asyncio.Future[AckFrame] = asyncio.get_running_loop().create_future()
        pending = _PendingSend(frame, future)
        self._pending[cmid] = pending

        def forget_if_cancelled(fut: asyncio.Future[AckFrame]) -> None:
            if fut.cancelled() and self._pending.get(cmid) is pending:
                del self._pending[cmid]

        future.add_done_callback(forget_if_cancelled)
        if self._conn is not None:
            self._conn.out.put_nowait(frame)
        return future

    def read(self, conversation_id: str, seq: int) -> None:
        """Move the read watermark over the socket (fire and forget).

        Dropped while the socket is down; `mark_read` is the call that reports failure.
        """
        self._write(msgspec.json.encode(ReadFrame(conversation_id=conversation_id, seq=seq)))

    def typing(self, conversation_id: str) -> None:
        """Tell the other members this user is typing (live only, best effort)."""
        self._write(msgspec.json.encode(TypingFrame(conversation_id=conversation_id)))

    def force_reconnect(self, since: int | None = None) -> None:
        """Drop the socket now and reconnect, from `since` if given (else the last cursor).

        For callers that know the network changed; also how tests provoke replays.
        """
        if since is not None:
            self._cursor = since
        if self._conn is not None:
            self._conn.abort.set()

    async def close(self) -> None:
        """Flush owed `delivered` frames, close the socket, fail pending sends."""
        if self._shut:
            return
        self._shut = self._closed = True
        conn = self._conn
        if conn is not None:
            self._flush_delivered()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(conn.out.join(), 2.0)
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        if self._delivered_timer is not None:
            self._delivered_timer.cancel()
        self._fail_pending(ClientClosed("client closed before the ack arrived"))
        self._queue.put_nowait(_Stop(None))
        if self._session is not None:
            await self._session.close()

    # --- the socket: machinery ----------------------------------------------

    def _write(self, frame: bytes) -> None:
        if self._conn is not None:
            self._conn.out.put_nowait(frame.decode())

    def _fail_pending(self, exc: BaseException) -> None:
        pending, self._pending = self._pending, {}
        for p in pending.values():
            if not p.future.done():
                p.future.set_exception(exc)
                p.future.exception()  # retrieved: no "never retrieved" noise

    def _stop(self, error: BaseException) -> None:
        """A fatal condition: nothing more will arrive."""
        self._closed = True
        self._fail_pending(error)
        self._queue.put_nowait(_Stop(error))

    async def _open(self) -> _Conn:
        """Open a socket, read `ready`, and queue what the new socket owes the server."""
        params = {"since": str(self._cursor)} if self._cursor is not None else None
        ws = await self._http().ws_connect(
            self.ws_url,
            headers=self._auth_headers(),
            params=params,
            max_msg_size=4 * MAX_FRAME_BYTES,
            autoping=True,
        )
        try:
            msg = await ws.receive(timeout=self.request_timeout)
            if msg.type != aiohttp.WSMsgType.TEXT:
                if ws.close_code == CLOSE_UNAUTHORIZED:
                    raise SessionRevoked("the server refused the session token")
                raise ConnectionError(f"socket closed before ready ({ws.close_code})")
            frame = _frame_decoder.decode(msg.data)
            if isinstance(frame, ErrorFrame):
                if frame.code == "cursor_expired":
                    raise CursorExpired(frame.message)
                raise ParleyError(frame.message, code=frame.code)
            if not isinstance(frame, ReadyFrame):
                raise ConnectionError(f"expected a ready frame, got {type(frame).__name__}")
        except BaseException:
            await ws.close()
            raise
        self.user_id, self.device_id = frame.user_id, frame.device_id
        if self._cursor is None:
            self._cursor = frame.cursor
        conn = _Conn(ws, last_rx=asyncio.get_running_loop().time(), ready_cursor=frame.cursor)
        # Everything not acknowledged goes out again, in the original order,
        # before any new send can be queued behind it.
        for p in self._pending.values():
            conn.out.put_nowait(p.frame)
            self.resent += 1
        for conv, seq in self._delivered_sent.items():
            if seq > self._delivered_confirmed.get(conv, 0):
                conn.out.put_nowait(_delivered_frame(conv, seq))
        reconnect = self._runner is not None
        self._conn = conn
        self._connected.set()
        self._flush_delivered()
        self._queue.put_nowait(Connected(cursor=frame.cursor, reconnect=reconnect))
        return conn

    async def _run(self, conn: _Conn) -> None:
        """Serve the socket; when it drops, reconnect with backoff until closed."""
        while True:
            reason = await self._serve(conn)
            self._conn = None
            self._connected.clear()
            if self._closed:
                return
            self._queue.put_nowait(Disconnected(reason))
            attempt = 0 if conn.ws.close_code == CLOSE_TOO_SLOW else 1
            while True:
                await asyncio.sleep(self._backoff(attempt))
                attempt += 1
                try:
                    conn = await asyncio.wait_for(self._open(), self.request_timeout)
                except SessionRevoked as exc:
                    self._stop(exc)
                    return
                except aiohttp.WSServerHandshakeError as exc:
                    if exc.status == 401:
                        self._stop(SessionRevoked("the server refused the session token"))
                        return
                    if exc.status == 410:
                        self._resync()
                        attempt = 0
                    log.info("reconnect refused (%s), retrying", exc.status)
                except CursorExpired:
                    self._resync()
                    attempt = 0
                except (aiohttp.ClientError, OSError, TimeoutError, ParleyError) as exc:
                    log.info("reconnect failed (%r), retrying", exc)
                except msgspec.DecodeError as exc:
                    log.warning("bad frame from server (%s), retrying", exc)
                else:
                    self.reconnects += 1
                    break

    def _resync(self, resume_at: int | None = None) -> None:
        """Give up the cursor the server refused; resume at `resume_at`, else at its current."""
        self._cursor = resume_at
        self._queue.put_nowait(Resync())

    def _backoff(self, attempt: int) -> float:
        """Full jitter: a random wait up to an exponentially growing cap.

        Spreads a crowd of clients reconnecting after a server restart.
        """
        if attempt <= 0:
            return 0.0
        cap = min(self.reconnect_max, self.reconnect_base * 2 ** (attempt - 1))
        return random.uniform(cap / 2, cap)

    async def _serve(self, conn: _Conn) -> str:
        """Run reader, writer and keepalive for one socket; return why it ended."""
        reader = asyncio.create_task(self._read_loop(conn))
        writer = asyncio.create_task(self._write_loop(conn))
        keepalive = asyncio.create_task(self._keepalive(conn))
        abort = asyncio.create_task(self._aborted(conn))
        tasks = (reader, writer, keepalive, abort)
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            reason = "closed"
            for task in done:
                if not task.cancelled() and task.exception() is None:
                    reason = task.result()
                elif not task.cancelled():
                    reason = f"error: {task.exception()!r}"
            return reason
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # Never wait long for a polite close: the peer may be gone for good.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.ws.close(), 1.0)

    async def _aborted(self, conn: _Conn) -> str:
        await conn.abort.wait()
        return "reconnect requested"

    async def _write_loop(self, conn: _Conn) -> str:
        while True:
            frame = await conn.out.get()
            try:
                await conn.ws.send_str(frame)
            finally:
                conn.out.task_done()

    async def _keepalive(self, conn: _Conn) -> str:
        """Ping when idle; a socket that answers nothing within `pong_timeout` is dead."""
        loop = asyncio.get_running_loop()
        while True:
            idle = loop.time() - conn.last_rx
            if idle < self.ping_interval:
                await asyncio.sleep(self.ping_interval - idle)
                continue
            sent_at = loop.time()
            conn.out.put_nowait(_PING)
            self.pings_sent += 1
            await asyncio.sleep(self.pong_timeout)
            if conn.last_rx < sent_at:
                return "no answer to ping"

    async def _read_loop(self, conn: _Conn) -> str:
        loop = asyncio.get_running_loop()
        async for msg in conn.ws:
            conn.last_rx = loop.time()
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            try:
                frame = _frame_decoder.decode(msg.data)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                log.warning("skipping a frame the client does not understand: %s", exc)
                continue
            self._handle(frame)
        code = conn.ws.close_code
        if code == CLOSE_UNAUTHORIZED:
            self._stop(SessionRevoked("session ended by the server"))
        return f"closed by server ({code})"

    def _handle(self, frame: ServerFrame) -> None:
        if isinstance(frame, AckFrame):
            pending = self._pending.pop(frame.client_msg_id, None)
            if pending is not None and not pending.future.done():
                pending.future.set_result(frame)
        elif isinstance(frame, ErrorFrame):
            self._on_error(frame)
        elif isinstance(frame, PongFrame | ReadyFrame):
            pass
        elif isinstance(frame, models.PresenceEvent | models.TypingEvent):
            self._queue.put_nowait(frame)
        else:
            self._on_logged(frame)

    def _on_logged(self, event: models.LoggedEvent) -> None:
        # The log is totally ordered per user: anything at or below the cursor
        # already reached the application.
        if self._cursor is not None and event.cursor <= self._cursor:
            return
        self._cursor = event.cursor
        if isinstance(event, models.MessageEvent):
            msg = event.message
            if not self._dedup.add(msg.conversation_id, msg.seq):
                return
            if msg.sender_id == self.user_id:
                # Sending moves our own watermarks on the server, silently.
                self._confirm_delivered(msg.conversation_id, msg.seq)
            elif self.auto_delivered:
                self._owe_delivered(msg.conversation_id, msg.seq)
        elif isinstance(event, models.ReceiptEvent) and event.user_id == self.user_id:
            self._confirm_delivered(event.conversation_id, event.seq)
        self._queue.put_nowait(event)

    def _on_error(self, frame: ErrorFrame) -> None:
        if frame.code == "cursor_expired":
            # The refusing socket's `ready` carried the server's cursor at that
            # moment: resuming there leaves no gap after the application's resync.
            self._resync(self._conn.ready_cursor if self._conn is not None else None)
            self.force_reconnect()
            return
        ref = frame.ref
        pending = self._pending.get(ref) if ref else None
        if ref is None or pending is None:
            log.warning("server error frame: %s: %s", frame.code, frame.message)
            return
        if frame.code in _RETRYABLE_SEND_ERRORS:
            # Kept: written again after a pause, or on the next socket.
            asyncio.get_running_loop().call_later(1.0, self._rewrite, ref)
            return
        del self._pending[ref]
        if not pending.future.done():
            pending.future.set_exception(
                _ERROR_CODES.get(frame.code, ParleyError)(frame.message, code=frame.code)
            )

    def _rewrite(self, client_msg_id: str) -> None:
        pending = self._pending.get(client_msg_id)
        if pending is not None and self._conn is not None:
            self._conn.out.put_nowait(pending.frame)

    # --- delivered watermarks -----------------------------------------------

    def _owe_delivered(self, conversation_id: str, seq: int) -> None:
        """Note a message to acknowledge; frames are coalesced to one per conversation."""
        known = max(
            self._delivered_due.get(conversation_id, 0),
            self._delivered_sent.get(conversation_id, 0),
            self._delivered_confirmed.get(conversation_id, 0),
        )
        if seq <= known:
            return
        self._delivered_due[conversation_id] = seq
        if self._delivered_timer is None:
            self._delivered_timer = asyncio.get_running_loop().call_later(
                self.delivered_delay, self._flush_delivered
            )

    def _flush_delivered(self) -> None:
        self._delivered_timer = None
        if self._conn is None:
            return  # flushed when the next socket opens
        due, self._delivered_due = self._delivered_due, {}
        for conv, seq in due.items():
            if seq > self._delivered_sent.get(conv, 0):
                self._delivered_sent[conv] = seq
                self._conn.out.put_nowait(_delivered_frame(conv, seq))
                self.delivered_frames_sent += 1

    def _confirm_delivered(self, conversation_id: str, seq: int) -> None:
        if seq > self._delivered_confirmed.get(conversation_id, 0):
            self._delivered_confirmed[conversation_id] = seq


_ERROR_CODES: Final[dict[str, type[ParleyError]]] = {
    "unauthorized": Unauthorized,
    "forbidden": Forbidden,
    "not_found": NotFound,
    "validation_error": InvalidRequest,
    "body_too_large": TooLarge,
    "request_too_large": TooLarge,
}


def _delivered_frame(conversation_id: str, seq: int) -> str:
    return msgspec.json.encode(DeliveredFrame(conversation_id=conversation_id, seq=seq)).decode()


def _handshake_error(exc: aiohttp.WSServerHandshakeError) -> ParleyError:
    """The HTTP answer refusing an upgrade, as the matching `ParleyError`."""
    message = f"WebSocket refused: HTTP {exc.status} {exc.message}".strip()
    if exc.status == 401:
        return SessionRevoked("the server refused the session token")
    if exc.status == 429:
        return RateLimited(message)
    cls = _ERROR_CLASSES.get(exc.status, ParleyError)
    return cls(message, status=exc.status)


def _activity(conversation: models.Conversation) -> int:
    """When a conversation last had activity, as the server orders the list."""
    last = conversation.last_message
    return last.sent_at if last is not None else conversation.created_at


def new_client_msg_id() -> str:
    """A fresh idempotency key: random, so two devices never collide."""
    return uuid.uuid4().hex
