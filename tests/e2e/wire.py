"""Black-box wire helpers for the end-to-end tests: plain aiohttp, no project SDK.

Everything here talks HTTP and WebSocket to a real `parley serve` and checks the
contract's invariants that hold for every answer (no 500, exact error shape).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

PASSWORD = "correct horse battery"
ERROR_CODE = re.compile(r"^[a-z][a-z0-9_]*$")

#: Default wait for something the server should do "at once" (a frame, an answer).
WAIT = 10.0


def uname(prefix: str = "u") -> str:
    """A unique, valid username (3-32 chars of [a-z0-9_.-])."""
    return f"{prefix}{uuid.uuid4().hex[:20]}"


def cmid() -> str:
    """A unique client_msg_id."""
    return uuid.uuid4().hex


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Reply:
    status: int
    body: Any
    headers: Any = None
    raw: bytes = b""

    def __repr__(self) -> str:  # short, useful in assertion messages
        return f"Reply({self.status}, {self.body!r})"


async def call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    token: str | None = None,
    json_body: Any = None,
    data: bytes | str | None = None,
    headers: dict[str, str] | None = None,
    params: dict[str, Any] | None = None,
) -> Reply:
    """One HTTP request; never a 500, and every error has the exact contract shape."""
    hdrs: dict[str, str] = dict(headers or {})
    if token is not None:
        hdrs.update(bearer(token))
    if json_body is not None:
        data = json.dumps(json_body)
    if data is not None and "Content-Type" not in hdrs:
        hdrs["Content-Type"] = "application/json"
    async with http.request(method, url, data=data, headers=hdrs, params=params) as resp:
        raw = await resp.read()
        status = resp.status
        resp_headers = resp.headers
    assert status != 500, f"{method} {url} answered 500: {raw[:500]!r}"
    body: Any = None
    if raw:
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode(errors="replace")
    if status >= 400:
        assert_error_shape(body, where=f"{method} {url} -> {status}")
    return Reply(status, body, resp_headers, raw)


def assert_error_shape(body: Any, code: str | None = None, *, where: str = "") -> None:
    """Exactly {"error": {"code": snake_case, "message": str}}."""
    assert isinstance(body, dict), f"{where}: error body is not a JSON object: {body!r}"
    assert set(body) == {"error"}, f"{where}: error body keys {sorted(body)}: {body!r}"
    err = body["error"]
    assert isinstance(err, dict), f"{where}: error is not an object: {body!r}"
    assert set(err) == {"code", "message"}, f"{where}: error keys {sorted(err)}: {body!r}"
    assert isinstance(err["code"], str) and ERROR_CODE.match(err["code"]), body
    assert isinstance(err["message"], str), body
    if code is not None:
        assert err["code"] == code, f"{where}: expected code {code!r}, got {body!r}"


def assert_err(reply: Reply, status: int, code: str | None = None) -> None:
    assert reply.status == status, f"expected {status} {code or ''}, got {reply!r}"
    assert_error_shape(reply.body, code, where=f"status {status}")


@dataclass
class User:
    """A registered user with one logged-in device (more via `login`)."""

    base: str
    username: str
    password: str
    user_id: str
    token: str
    device_id: str
    display_name: Any = None
    extra_tokens: list[str] = field(default_factory=list)

    @property
    def auth(self) -> dict[str, str]:
        return bearer(self.token)


async def register(
    http: aiohttp.ClientSession,
    base: str,
    username: str | None = None,
    password: str = PASSWORD,
    display_name: str | None = None,
) -> Reply:
    body: dict[str, Any] = {"username": username or uname(), "password": password}
    if display_name is not None:
        body["display_name"] = display_name
    return await call(http, "POST", base + "/v1/accounts", json_body=body)


async def login(
    http: aiohttp.ClientSession,
    base: str,
    username: str,
    password: str = PASSWORD,
    device_name: str | None = None,
) -> Reply:
    body: dict[str, Any] = {"username": username, "password": password}
    if device_name is not None:
        body["device_name"] = device_name
    return await call(http, "POST", base + "/v1/sessions", json_body=body)


async def new_user(http: aiohttp.ClientSession, base: str, prefix: str = "u") -> User:
    """Register a fresh user and log in one device."""
    name = uname(prefix)
    r = await register(http, base, name, display_name=name.upper())
    assert r.status == 201, r
    s = await login(http, base, name, device_name="dev1")
    assert s.status == 201, s
    assert s.body["user_id"] == r.body["user_id"], (r, s)
    return User(
        base=base,
        username=name,
        password=PASSWORD,
        user_id=r.body["user_id"],
        token=s.body["token"],
        device_id=s.body["device_id"],
        display_name=r.body.get("display_name"),
    )


async def new_users(http: aiohttp.ClientSession, base: str, n: int) -> list[User]:
    return list(await asyncio.gather(*(new_user(http, base) for _ in range(n))))


async def another_device(http: aiohttp.ClientSession, user: User, name: str = "dev") -> User:
    """A second session (device) of the same user, as its own `User` view."""
    s = await login(http, user.base, user.username, user.password, device_name=name)
    assert s.status == 201, s
    return User(
        base=user.base,
        username=user.username,
        password=user.password,
        user_id=user.user_id,
        token=s.body["token"],
        device_id=s.body["device_id"],
        display_name=user.display_name,
    )


async def direct(http: aiohttp.ClientSession, a: User, b: User) -> dict[str, Any]:
    """The direct conversation between a and b (created if needed)."""
    r = await call(
        http,
        "POST",
        a.base + "/v1/conversations",
        token=a.token,
        json_body={"type": "direct", "user_id": b.user_id},
    )
    assert r.status in (200, 201), r
    return dict(r.body)


async def create_group(
    http: aiohttp.ClientSession, admin: User, members: list[User], title: str = "team"
) -> dict[str, Any]:
    r = await call(
        http,
        "POST",
        admin.base + "/v1/conversations",
        token=admin.token,
        json_body={"type": "group", "title": title, "member_ids": [m.user_id for m in members]},
    )
    assert r.status == 201, r
    return dict(r.body)


async def add(http: aiohttp.ClientSession, actor: User, cid: str, user_id: str) -> Reply:
    return await call(
        http,
        "POST",
        f"{actor.base}/v1/conversations/{cid}/members",
        token=actor.token,
        json_body={"user_id": user_id},
    )


async def remove(http: aiohttp.ClientSession, actor: User, cid: str, user_id: str) -> Reply:
    return await call(
        http, "DELETE", f"{actor.base}/v1/conversations/{cid}/members/{user_id}", token=actor.token
    )


async def rename(http: aiohttp.ClientSession, actor: User, cid: str, title: str) -> Reply:
    return await call(
        http,
        "PATCH",
        f"{actor.base}/v1/conversations/{cid}",
        token=actor.token,
        json_body={"title": title},
    )


async def read_up_to(http: aiohttp.ClientSession, user: User, cid: str, seq: int) -> Reply:
    return await call(
        http,
        "POST",
        f"{user.base}/v1/conversations/{cid}/read",
        token=user.token,
        json_body={"seq": seq},
    )


async def send_http(
    http: aiohttp.ClientSession,
    user: User,
    conversation_id: str,
    body: str = "hello",
    client_msg_id: str | None = None,
) -> Reply:
    return await call(
        http,
        "POST",
        f"{user.base}/v1/conversations/{conversation_id}/messages",
        token=user.token,
        json_body={"client_msg_id": client_msg_id or cmid(), "body": body},
    )


async def send_ok(
    http: aiohttp.ClientSession, user: User, conversation_id: str, body: str = "hello"
) -> dict[str, Any]:
    r = await send_http(http, user, conversation_id, body)
    assert r.status == 201, r
    return dict(r.body["message"])


async def history(
    http: aiohttp.ClientSession, user: User, conversation_id: str, **params: Any
) -> Reply:
    return await call(
        http,
        "GET",
        f"{user.base}/v1/conversations/{conversation_id}/messages",
        token=user.token,
        params={k: str(v) for k, v in params.items()},
    )


async def all_messages(
    http: aiohttp.ClientSession, user: User, conversation_id: str
) -> list[dict[str, Any]]:
    """Every message of a conversation, walking pages forward with `after`."""
    out: list[dict[str, Any]] = []
    after = 0
    while True:
        r = await history(http, user, conversation_id, after=after, limit=200)
        assert r.status == 200, r
        out.extend(r.body["messages"])
        if not r.body["has_more"]:
            return out
        assert r.body["messages"], r
        after = r.body["messages"][-1]["seq"]


async def poll(
    http: aiohttp.ClientSession, user: User, since: int | None = None, wait: float | None = None
) -> Reply:
    params: dict[str, Any] = {}
    if since is not None:
        params["since"] = str(since)
    if wait is not None:
        params["timeout"] = str(wait)
    return await call(http, "GET", user.base + "/v1/events", token=user.token, params=params)


async def cursor_now(http: aiohttp.ClientSession, user: User) -> int:
    r = await poll(http, user)
    assert r.status == 200, r
    return int(r.body["next"])


async def all_events(
    http: aiohttp.ClientSession, user: User, since: int = 0
) -> tuple[list[dict[str, Any]], int]:
    """Every logged event after `since` (pages through the 500-per-call cap), and the cursor."""
    out: list[dict[str, Any]] = []
    cur = since
    while True:
        r = await poll(http, user, since=cur, wait=0)
        assert r.status == 200, r
        evs = r.body["events"]
        out.extend(evs)
        if not evs:
            return out, cur
        cur = int(r.body["next"])


# --- WebSocket ----------------------------------------------------------------


def ws_url(base: str, since: int | None = None) -> str:
    url = base.replace("http://", "ws://", 1) + "/v1/ws"
    if since is not None:
        url += f"?since={since}"
    return url


async def ws_open(
    http: aiohttp.ClientSession,
    base: str,
    token: str | None = None,
    *,
    since: int | None = None,
    headers: dict[str, str] | None = None,
    auth_frame: bool = False,
    expect_ready: bool = True,
) -> tuple[aiohttp.ClientWebSocketResponse, dict[str, Any] | None]:
    """Open /v1/ws: header auth by default, or a first `auth` frame; returns (ws, ready)."""
    hdrs = dict(headers or {})
    if token is not None and not auth_frame:
        hdrs.update(bearer(token))
    ws = await http.ws_connect(
        ws_url(base, since), headers=hdrs, autoping=True, max_msg_size=0, heartbeat=None
    )
    if auth_frame:
        await ws.send_str(json.dumps({"type": "auth", "token": token}))
    ready = None
    if expect_ready:
        ready = await recv(ws)
        assert ready.get("type") == "ready", ready
    return ws, ready


async def recv(ws: aiohttp.ClientWebSocketResponse, within: float = WAIT) -> dict[str, Any]:
    """The next JSON frame; fails on close or timeout."""
    msg = await asyncio.wait_for(ws.receive(), within)
    if msg.type is not aiohttp.WSMsgType.TEXT:
        raise AssertionError(f"expected a text frame, got {msg.type!r} {msg.data!r} {msg.extra!r}")
    frame = json.loads(msg.data)
    assert isinstance(frame, dict), frame
    if frame.get("type") == "error":
        assert set(frame) == {"type", "code", "message", "ref"}, frame
        assert isinstance(frame["code"], str) and ERROR_CODE.match(frame["code"]), frame
    return frame


async def recv_until(
    ws: aiohttp.ClientWebSocketResponse,
    pred: Callable[[dict[str, Any]], bool],
    within: float = WAIT,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Read frames until one matches `pred`; returns (match, frames skipped before it)."""
    deadline = time.monotonic() + within
    skipped: list[dict[str, Any]] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no matching frame within {within}s; got {skipped[-20:]!r}")
        try:
            frame = await recv(ws, left)
        except TimeoutError:
            raise AssertionError(
                f"no matching frame within {within}s; got {skipped[-20:]!r}"
            ) from None
        if pred(frame):
            return frame, skipped
        skipped.append(frame)


async def recv_n(
    ws: aiohttp.ClientWebSocketResponse,
    n: int,
    pred: Callable[[dict[str, Any]], bool],
    within: float = WAIT,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Collect `n` frames matching `pred` (in arrival order) and every frame seen meanwhile."""
    deadline = time.monotonic() + within
    got: list[dict[str, Any]] = []
    seen: list[dict[str, Any]] = []
    while len(got) < n:
        left = deadline - time.monotonic()
        try:
            frame = await recv(ws, max(left, 0.001))
        except TimeoutError:
            raise AssertionError(
                f"got {len(got)}/{n} matching frames in {within}s; last: {seen[-10:]!r}"
            ) from None
        seen.append(frame)
        if pred(frame):
            got.append(frame)
    return got, seen


async def recv_close(
    ws: aiohttp.ClientWebSocketResponse, within: float = WAIT
) -> tuple[int | None, list[dict[str, Any]]]:
    """Read until the server closes; returns (close code, frames received before)."""
    deadline = time.monotonic() + within
    frames: list[dict[str, Any]] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"socket not closed within {within}s; got {frames[-10:]!r}")
        try:
            msg = await asyncio.wait_for(ws.receive(), left)
        except TimeoutError:
            raise AssertionError(
                f"socket not closed within {within}s; got {frames[-10:]!r}"
            ) from None
        if msg.type is aiohttp.WSMsgType.TEXT:
            frames.append(json.loads(msg.data))
            continue
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING):
            code = msg.data if isinstance(msg.data, int) else ws.close_code
            return code, frames
        if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
            return ws.close_code, frames


async def send_frame(ws: aiohttp.ClientWebSocketResponse, frame: dict[str, Any]) -> None:
    await ws.send_str(json.dumps(frame))


def send_f(conversation_id: str, body: str = "hi", client_msg_id: str | None = None) -> dict:
    return {
        "type": "send",
        "conversation_id": conversation_id,
        "client_msg_id": client_msg_id or cmid(),
        "body": body,
    }


def is_msg_event(conversation_id: str | None = None) -> Callable[[dict[str, Any]], bool]:
    def pred(f: dict[str, Any]) -> bool:
        return f.get("type") == "message" and (
            conversation_id is None or f["message"]["conversation_id"] == conversation_id
        )

    return pred


def is_type(kind: str) -> Callable[[dict[str, Any]], bool]:
    return lambda f: f.get("type") == kind


async def raw_handshake(
    http: aiohttp.ClientSession, base: str, headers: dict[str, str] | None = None
) -> Reply:
    """A WebSocket upgrade request that we expect the server to refuse (non-101)."""
    hdrs = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        **(headers or {}),
    }
    return await call(http, "GET", base + "/v1/ws", headers=hdrs)
