"""Accounts, sessions and users: registration bounds, login, logout, restart."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from tests.e2e.wire import (
    PASSWORD,
    another_device,
    assert_err,
    call,
    login,
    new_user,
    recv_close,
    register,
    uname,
    ws_open,
)
from tests.harness import ServerProcess


@pytest.mark.parametrize("username", ["abc", "z" * 32, "a_b.c-9", "0123", "..."])
async def test_register_valid_usernames(
    shared_server: ServerProcess, http: aiohttp.ClientSession, username: str
) -> None:
    # The module's server is fresh, so these literal names are free.
    r = await register(http, shared_server.url, username, display_name="Someone")
    assert r.status == 201, r
    assert set(r.body) >= {"user_id", "username", "display_name"}, r
    assert r.body["username"] == username
    assert r.body["display_name"] == "Someone"
    assert isinstance(r.body["user_id"], str) and r.body["user_id"]


@pytest.mark.parametrize(
    "username",
    [
        "ab",
        "a" * 33,
        "Abcdef",
        "abc def",
        "abc/def",
        "héllo",
        "abc@def",
        "",
        "abc\n",
    ],
)
async def test_register_bad_username_is_422(
    shared_server: ServerProcess, http: aiohttp.ClientSession, username: str
) -> None:
    r = await call(
        http,
        "POST",
        shared_server.url + "/v1/accounts",
        json_body={"username": username, "password": PASSWORD},
    )
    assert_err(r, 422, "validation_error")


@pytest.mark.parametrize(
    "length,ok", [(7, False), (8, True), (256, True), (257, False), (0, False)]
)
async def test_register_password_bounds(
    shared_server: ServerProcess, http: aiohttp.ClientSession, length: int, ok: bool
) -> None:
    r = await call(
        http,
        "POST",
        shared_server.url + "/v1/accounts",
        json_body={"username": uname(), "password": "p" * length},
    )
    if ok:
        assert r.status == 201, r
    else:
        assert_err(r, 422, "validation_error")


async def test_register_missing_fields_is_422(
    shared_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    for body in ({"username": uname()}, {"password": PASSWORD}, {}):
        r = await call(http, "POST", shared_server.url + "/v1/accounts", json_body=body)
        assert_err(r, 422, "validation_error")


async def test_register_duplicate_is_409(
    shared_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    name = uname()
    r = await register(http, shared_server.url, name)
    assert r.status == 201, r
    again = await register(http, shared_server.url, name, password="another password")
    assert_err(again, 409, "username_taken")


async def test_login_and_wrong_password(
    shared_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    base = shared_server.url
    name = uname()
    r = await register(http, base, name)
    assert r.status == 201, r
    s = await login(http, base, name, device_name="laptop")
    assert s.status == 201, s
    assert set(s.body) >= {"token", "user_id", "device_id"}, s
    assert s.body["user_id"] == r.body["user_id"]
    # each session is a distinct device
    s2 = await login(http, base, name)
    assert s2.status == 201, s2
    assert s2.body["device_id"] != s.body["device_id"]
    assert s2.body["token"] != s.body["token"]

    bad = await login(http, base, name, password="wrong password!")
    assert_err(bad, 401, "unauthorized")
    nobody = await login(http, base, uname(), password=PASSWORD)
    assert_err(nobody, 401, "unauthorized")


async def test_token_required_and_checked(
    shared_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    base = shared_server.url
    u = await new_user(http, base)
    for headers in (
        {},
        {"Authorization": "Bearer nonsense"},
        {"Authorization": "Bearer "},
        {"Authorization": u.token},
        {"Authorization": f"Basic {u.token}"},
        {"Authorization": f"Bearer {u.token}x"},
    ):
        for method, path in (
            ("GET", f"/v1/users/{u.user_id}"),
            ("GET", "/v1/conversations"),
            ("GET", "/v1/events?timeout=0"),
            ("DELETE", "/v1/sessions/current"),
        ):
            r = await call(http, method, base + path, headers=headers)
            assert_err(r, 401, "unauthorized")
    ok = await call(http, "GET", f"{base}/v1/users/{u.user_id}", token=u.token)
    assert ok.status == 200, ok


@pytest.mark.parametrize("auth_frame", [False, True], ids=["header-auth", "frame-auth"])
async def test_logout_kills_token_and_websocket(
    shared_server: ServerProcess, http: aiohttp.ClientSession, auth_frame: bool
) -> None:
    base = shared_server.url
    a1 = await new_user(http, base)
    a2 = await another_device(http, a1)
    ws1, ready1 = await ws_open(http, base, a1.token, auth_frame=auth_frame)
    ws2, ready2 = await ws_open(http, base, a2.token)
    assert ready1 is not None and ready1["device_id"] == a1.device_id
    assert ready2 is not None and ready2["device_id"] == a2.device_id
    try:
        r = await call(http, "DELETE", base + "/v1/sessions/current", token=a1.token)
        assert r.status == 204, r
        # the token stops working at once on HTTP
        after = await call(http, "GET", f"{base}/v1/users/{a1.user_id}", token=a1.token)
        assert_err(after, 401, "unauthorized")
        # and that device's open socket is closed with 4401
        code, _ = await recv_close(ws1)
        assert code == 4401, code
        # the other device is unaffected
        other = await call(http, "GET", f"{base}/v1/users/{a1.user_id}", token=a2.token)
        assert other.status == 200, other
        await ws2.send_str('{"type": "ping"}')
        msg = await asyncio.wait_for(ws2.receive(), 10)
        assert msg.type is aiohttp.WSMsgType.TEXT and '"pong"' in msg.data, msg
        # a second logout with the dead token is 401, never a 500
        again = await call(http, "DELETE", base + "/v1/sessions/current", token=a1.token)
        assert_err(again, 401, "unauthorized")
    finally:
        await ws1.close()
        await ws2.close()


async def test_sessions_survive_restart(server: ServerProcess, http: aiohttp.ClientSession) -> None:
    base = server.url
    u = await new_user(http, base)
    await asyncio.to_thread(server.restart)  # kill -9, then start on the same data dir
    r = await call(http, "GET", f"{base}/v1/users/{u.user_id}", token=u.token)
    assert r.status == 200, r
    assert r.body["username"] == u.username
    ws, ready = await ws_open(http, base, u.token)
    assert ready is not None
    assert ready["user_id"] == u.user_id and ready["device_id"] == u.device_id
    await ws.close()
    # and logins still work against the stored password hash
    s = await login(http, base, u.username)
    assert s.status == 201, s


async def test_users_by_id_and_username(
    shared_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    base = shared_server.url
    a = await new_user(http, base)
    b = await new_user(http, base)
    expected = {"user_id": b.user_id, "username": b.username, "display_name": b.display_name}
    r = await call(http, "GET", f"{base}/v1/users/{b.user_id}", token=a.token)
    assert r.status == 200, r
    assert {k: r.body.get(k) for k in expected} == expected
    assert "password" not in str(r.body).lower()
    r2 = await call(http, "GET", f"{base}/v1/users", token=a.token, params={"username": b.username})
    assert r2.status == 200, r2
    assert {k: r2.body.get(k) for k in expected} == expected

    missing = await call(http, "GET", f"{base}/v1/users/u-does-not-exist", token=a.token)
    assert_err(missing, 404, "not_found")
    missing2 = await call(
        http, "GET", f"{base}/v1/users", token=a.token, params={"username": uname()}
    )
    assert_err(missing2, 404, "not_found")


async def test_sigterm_shuts_down_cleanly_and_keeps_data(
    server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    base = server.url
    u = await new_user(http, base)
    ws, _ = await ws_open(http, base, u.token)
    try:
        t0 = time.monotonic()
        await asyncio.to_thread(server.stop)  # SIGTERM, wait up to 15 s, else kill -9
        assert server.proc is not None
        assert server.proc.returncode == 0, (server.proc.returncode, server.output())
        assert time.monotonic() - t0 < 15
        # the open socket was closed by the server, not left hanging
        code, _ = await recv_close(ws, within=5)
        assert code is not None
    finally:
        await ws.close()
    await asyncio.to_thread(server.start)
    r = await call(http, "GET", f"{base}/v1/users/{u.user_id}", token=u.token)
    assert r.status == 200, r
