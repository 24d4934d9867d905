"""Bad input everywhere: malformed JSON, wrong types, oversized bodies, unknown routes.

The server answers every client mistake with a 4xx in the exact error shape, never 500,
and stays healthy for everyone else.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.e2e.wire import (
    User,
    assert_err,
    assert_error_shape,
    call,
    direct,
    new_users,
    recv,
    send_ok,
    ws_open,
    ws_url,
)
from tests.harness import ServerProcess


@pytest.fixture
async def pair(shared_server: ServerProcess, http: aiohttp.ClientSession) -> tuple[User, User, str]:
    a, b = await new_users(http, shared_server.url, 2)
    cid = (await direct(http, a, b))["conversation_id"]
    return a, b, cid


def post_endpoints(a: User, b: User, cid: str) -> list[tuple[str, str, str | None]]:
    """(method, path, token) of every JSON-body endpoint."""
    return [
        ("POST", "/v1/accounts", None),
        ("POST", "/v1/sessions", None),
        ("POST", "/v1/conversations", a.token),
        ("POST", f"/v1/conversations/{cid}/messages", a.token),
        ("POST", f"/v1/conversations/{cid}/read", a.token),
    ]


MALFORMED = [b"{", b"{not json}", b'{"a": 1,}', b"\xff\xfe\x00", b"nul", b'{"username": "x"']


async def test_malformed_json_is_400(
    shared_server: ServerProcess, http: aiohttp.ClientSession, pair: tuple[User, User, str]
) -> None:
    a, b, cid = pair
    for method, path, token in post_endpoints(a, b, cid):
        for raw in MALFORMED:
            r = await call(http, method, shared_server.url + path, token=token, data=raw)
            assert_err(r, 400, "malformed_json")


@pytest.mark.parametrize(
    "path_kind,body",
    [
        ("accounts", {"username": 123, "password": "password123"}),
        ("accounts", {"username": "abcdef", "password": 12345678}),
        ("accounts", {"username": ["abc"], "password": "password123"}),
        ("accounts", {"username": "abcdef", "password": "password123", "display_name": 5}),
        ("accounts", []),
        ("accounts", "a string"),
        ("accounts", None),
        ("sessions", {"username": 1, "password": "x"}),
        ("sessions", {"username": "abc"}),
        ("sessions", [1]),
        ("conversations", {"type": "direct"}),
        ("conversations", {"type": "direct", "user_id": 5}),
        ("conversations", {"type": "triangle", "user_id": "u1"}),
        ("conversations", {"user_id": "u1"}),
        ("conversations", {}),
        ("messages", {"client_msg_id": 1, "body": "x"}),
        ("messages", {"client_msg_id": "a", "body": None}),
        ("messages", {"client_msg_id": "a", "body": ["x"]}),
        ("messages", {"body": "x"}),
        ("messages", {"client_msg_id": "a"}),
        ("messages", 17),
        ("read", {"seq": "1"}),
        ("read", {"seq": None}),
        ("read", {"seq": True}),
        ("read", []),
    ],
)
async def test_wrong_types_are_422(
    shared_server: ServerProcess,
    http: aiohttp.ClientSession,
    pair: tuple[User, User, str],
    path_kind: str,
    body: Any,
) -> None:
    a, _, cid = pair
    path, token = {
        "accounts": ("/v1/accounts", None),
        "sessions": ("/v1/sessions", None),
        "conversations": ("/v1/conversations", a.token),
        "messages": (f"/v1/conversations/{cid}/messages", a.token),
        "read": (f"/v1/conversations/{cid}/read", a.token),
    }[path_kind]
    r = await call(http, "POST", shared_server.url + path, token=token, data=json.dumps(body))
    if path_kind == "sessions" and r.status == 401:
        pytest.fail(f"a mistyped login body is a validation error, not bad credentials: {r}")
    assert_err(r, 422, "validation_error")


async def test_http_body_over_128k_is_413(
    shared_server: ServerProcess, http: aiohttp.ClientSession, pair: tuple[User, User, str]
) -> None:
    a, b, cid = pair
    big = '{"client_msg_id": "big", "body": "' + "x" * (128 * 1024 + 100) + '"}'
    r = await call(
        http,
        "POST",
        f"{shared_server.url}/v1/conversations/{cid}/messages",
        token=a.token,
        data=big,
    )
    assert_err(r, 413, "request_too_large")
    big_acct = '{"username": "abcdef", "password": "' + "p" * (130 * 1024) + '"}'
    r = await call(http, "POST", shared_server.url + "/v1/accounts", data=big_acct)
    assert_err(r, 413, "request_too_large")

    # the same without a Content-Length (chunked upload)
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"client_msg_id": "chunked", "body": "'
        for _ in range(20):
            yield b"x" * 8192
        yield b'"}'

    async with http.post(
        f"{shared_server.url}/v1/conversations/{cid}/messages",
        data=chunks(),
        headers={"Authorization": f"Bearer {a.token}", "Content-Type": "application/json"},
    ) as resp:
        assert resp.status == 413, (resp.status, await resp.text())
        assert_error_shape(await resp.json(), "request_too_large")
    # a 16 KiB body JSON-escaped sixfold still fits under 128 KiB
    escaped = '{"client_msg_id": "esc", "body": "' + "\\u0001" * 16384 + '"}'
    assert len(escaped) < 128 * 1024
    r = await call(
        http,
        "POST",
        f"{shared_server.url}/v1/conversations/{cid}/messages",
        token=a.token,
        data=escaped,
    )
    assert r.status == 201, r
    # the server is still healthy for everyone
    m = await send_ok(http, b, cid, "still fine")
    assert m["seq"] == 2


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/v1/nope"),
        ("GET", "/nope"),
        ("POST", "/v1/accounts/extra/segments"),
        ("GET", "/v1/conversations/x/y/z"),
        ("GET", "/v2/accounts"),
    ],
)
async def test_unknown_route_is_404_json(
    shared_server: ServerProcess, http: aiohttp.ClientSession, method: str, path: str
) -> None:
    (a,) = await new_users(http, shared_server.url, 1)
    r = await call(http, method, shared_server.url + path, token=a.token)
    assert_err(r, 404, "not_found")
    # also without a token: still a JSON 404 or 401, never HTML
    r = await call(http, method, shared_server.url + path)
    assert r.status in (401, 404), r


async def test_wrong_method_is_405_json(
    shared_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    for method, path in (("PUT", "/v1/accounts"), ("GET", "/v1/sessions"), ("DELETE", "/healthz")):
        r = await call(http, method, shared_server.url + path)
        assert_err(r, 405, "method_not_allowed")


async def test_garbage_everywhere_never_500(
    shared_server: ServerProcess, http: aiohttp.ClientSession, pair: tuple[User, User, str]
) -> None:
    """Many odd inputs on every endpoint: each answer is a well-formed success or error.

    (Integers beyond 64 bits have their own test below.)"""
    a, b, cid = pair
    base = shared_server.url
    paths = [
        ("POST", "/v1/accounts"),
        ("POST", "/v1/sessions"),
        ("GET", "/v1/users/%00"),
        ("GET", "/v1/users?username="),
        ("GET", "/v1/users?username=%FF"),
        ("GET", "/v1/users"),
        ("POST", "/v1/conversations"),
        ("GET", "/v1/conversations?limit=-5"),
        ("GET", "/v1/conversations?limit=abc"),
        ("GET", "/v1/conversations?before=abc"),
        ("GET", "/v1/conversations/%2e%2e"),
        ("POST", f"/v1/conversations/{cid}/messages"),
        ("GET", f"/v1/conversations/{cid}/messages?before=-1"),
        ("GET", f"/v1/conversations/{cid}/messages?limit=1e3"),
        ("POST", f"/v1/conversations/{cid}/read"),
        ("GET", "/v1/events?since=-1"),
        ("GET", "/v1/events?timeout=NaN"),
        ("GET", "/v1/presence?user_ids="),
        ("GET", "/v1/presence"),
        ("PUT", "/v1/contacts/nobody"),
        ("DELETE", "/v1/contacts/nobody"),
    ]
    bodies: list[bytes | None] = [
        None,
        b"",
        b"null",
        b"0",
        b"[]",
        b'"x"',
        b'{"seq": 1e400}',
        b'{"seq": 99999999999999999999999}',
        b'{"username": "\\u0000abc", "password": "\\ud800\\ud800\\ud800"}',
        b'{"client_msg_id": "\\ud800", "body": "\\udfff"}',
        b'{"type": "direct", "user_id": "' + b"z" * 5000 + b'"}',
        b'{"a":' * 50 + b"1" + b"}" * 50,
        b"[" * 50 + b"]" * 50,
    ]
    failures = []
    for method, path in paths:
        for raw in bodies:
            try:
                r = await call(http, method, base + path, token=a.token, data=raw)
            except AssertionError as exc:  # a 500 or a malformed error body
                failures.append((method, path, (raw or b"")[:60], str(exc)[:160]))
                continue
            if r.status >= 500 and r.status != 503:
                failures.append((method, path, (raw or b"")[:60], r.status))
    distinct = sorted({(m, p, str(e)[-80:]) for m, p, _, e in failures})
    assert not failures, f"{len(failures)} bad answers:\n" + "\n".join(map(str, distinct))
    health = await call(http, "GET", base + "/healthz")
    assert health.status == 200
    m = await send_ok(http, b, cid, "alive")
    assert m["seq"] >= 1


DEEP = [b'{"a":' * 5000 + b"1" + b"}" * 5000, b"[" * 20000 + b"]" * 20000]


async def test_deeply_nested_json_is_a_client_error(
    shared_server: ServerProcess, http: aiohttp.ClientSession, pair: tuple[User, User, str]
) -> None:
    """A small body nested thousands deep is the client's mistake (400/422), not a 500."""
    a, b, cid = pair
    base = shared_server.url
    bad = []
    for method, path, token in post_endpoints(a, b, cid):
        for raw in DEEP:
            try:
                r = await call(http, method, base + path, token=token, data=raw)
            except AssertionError as exc:
                bad.append((path, raw[:8], str(exc)[-70:]))
                continue
            if r.status not in (400, 422):
                bad.append((path, raw[:8], r.status))
    ws, _ = await ws_open(http, base, a.token)
    try:
        for raw in DEEP:
            await ws.send_str(raw.decode())
            try:
                err = await recv(ws)
            except AssertionError as exc:
                bad.append(("ws frame", raw[:8], str(exc)[:200]))
                break
            if err["type"] != "error" or err["code"] not in ("malformed_json", "validation_error"):
                bad.append(("ws frame", raw[:8], err))
        else:
            await ws.send_str('{"type": "ping"}')
            assert await recv(ws) == {"type": "pong"}
    finally:
        await ws.close()
    assert (await send_ok(http, b, cid, "alive"))["seq"] >= 1
    assert not bad, "\n".join(map(str, bad))


HUGE = "99999999999999999999999"  # beyond any 64-bit integer


async def test_huge_integers_are_client_errors(
    shared_server: ServerProcess, http: aiohttp.ClientSession, pair: tuple[User, User, str]
) -> None:
    """Integers beyond 64 bits in queries, bodies and frames: a 4xx/clamp, never a 500."""
    a, _, cid = pair
    base = shared_server.url
    bad = []
    for path in (
        f"/v1/conversations/{cid}/messages?after={HUGE}",
        f"/v1/conversations/{cid}/messages?before={HUGE}",
        f"/v1/conversations/{cid}/messages?limit={HUGE}",
        f"/v1/conversations?limit={HUGE}",
        f"/v1/conversations?before={HUGE}",
        f"/v1/events?since={HUGE}&timeout=0",
        f"/v1/events?timeout={HUGE}",
        f"/v1/events?since=-{HUGE}&timeout=0",
    ):
        try:
            r = await call(http, "GET", base + path, token=a.token)
        except AssertionError as exc:
            bad.append((path, str(exc)[-90:]))
            continue
        if r.status not in (200, 400, 410, 422):
            bad.append((path, r.status))
    for body in (f'{{"seq": {HUGE}}}', f'{{"seq": -{HUGE}}}'):
        try:
            r = await call(
                http, "POST", f"{base}/v1/conversations/{cid}/read", token=a.token, data=body
            )
        except AssertionError as exc:
            bad.append((body, str(exc)[-90:]))
            continue
        if r.status not in (204, 400, 422):
            bad.append((body, r.status))
    ws, _ = await ws_open(http, base, a.token)
    try:
        for frame in (
            f'{{"type": "delivered", "conversation_id": "{cid}", "seq": {HUGE}}}',
            f'{{"type": "read", "conversation_id": "{cid}", "seq": {HUGE}}}',
            f'{{"type": "sync", "since": {HUGE}}}',
        ):
            await ws.send_str(frame)
            await ws.send_str('{"type": "ping"}')
            try:
                while (f := await recv(ws))["type"] != "pong":
                    if f["type"] not in ("error", "receipt"):
                        bad.append((frame, f))
            except AssertionError as exc:  # closed instead of answering
                bad.append((frame, str(exc)[:220]))
                break
    finally:
        await ws.close()
    # and `?since=` on the WebSocket URL: refused before the upgrade, or an error frame
    try:
        ws = await http.ws_connect(
            ws_url(base, since=int(HUGE)), headers={"Authorization": f"Bearer {a.token}"}
        )
    except aiohttp.WSServerHandshakeError as exc:
        if exc.status not in (400, 410, 422):
            bad.append(("ws ?since=HUGE", exc.status))
    else:
        try:
            first = await recv(ws)
            while first["type"] == "ready":
                first = await recv(ws)
            if first["type"] != "error":
                bad.append(("ws ?since=HUGE", first))
        except AssertionError as exc:
            bad.append(("ws ?since=HUGE", str(exc)[:220]))
        finally:
            await ws.close()
    assert not bad, "\n".join(map(str, bad))
