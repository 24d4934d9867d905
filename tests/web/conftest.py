"""Browser tests: headless Chromium (Debian's `chromium`) driven by Playwright's sync API.

Each test gets fresh browser contexts (separate storage: separate users) on one
browser per session, against a real `parley serve` per module.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import playwright.sync_api as playwright_sync
import pytest

from tests.harness import ServerProcess

CHROMIUM = os.environ.get("PARLEY_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Fast presence so the tests see "online" without waiting out the defaults.
SERVER_FLAGS = ("--presence-online-delay", "0.2", "--presence-offline-grace", "1")
PASSWORD = "correct horse battery"
# A loaded CI machine can take a few seconds for what a quiet one does at once:
# every `expect(...)` waits up to 15 s (the same as actions), not Playwright's 5.
playwright_sync.expect.set_options(timeout=15_000)

if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
    # Fail loudly rather than skip: a missing browser must not pass as a green run.
    raise RuntimeError(f"{CHROMIUM} is missing: `make test` installs it (apt-get install chromium)")


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    with playwright_sync.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def web_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("web") / "data", *SERVER_FLAGS).start()
    yield srv
    srv.stop()


PHONE = {"viewport": {"width": 375, "height": 740}, "is_mobile": True, "has_touch": True}
DESKTOP = {"viewport": {"width": 1280, "height": 800}}


@dataclass
class Client:
    """One person at one browser: a context, its page, and what it saw go wrong."""

    context: Any
    page: Any
    username: str = ""
    errors: list[str] | None = None
    dialogs: list[str] | None = None


@pytest.fixture
def open_client(browser: Any) -> Iterator[Callable[..., Client]]:
    """Open a page in a fresh context; page errors and JS dialogs are recorded."""
    contexts: list[Any] = []

    def make(url: str, **options: Any) -> Client:
        opts = dict(DESKTOP)
        opts.update(options)
        ctx = browser.new_context(**opts)
        ctx.set_default_timeout(15_000)
        contexts.append(ctx)
        page = ctx.new_page()
        client = Client(ctx, page, errors=[], dialogs=[])
        page.on("pageerror", lambda e: client.errors.append(str(e)))  # type: ignore[union-attr]

        def on_dialog(d: Any) -> None:
            client.dialogs.append(d.message)  # type: ignore[union-attr]
            d.dismiss()

        page.on("dialog", on_dialog)
        page.goto(url)
        return client

    yield make
    for ctx in contexts:
        ctx.close()


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def sign_up(client: Client, username: str) -> Client:
    page = client.page
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign up").click()
    playwright_sync.expect(page.get_by_role("button", name="New chat")).to_be_visible()
    client.username = username
    return client


def start_chat(client: Client, username: str) -> None:
    page = client.page
    page.get_by_role("button", name="New chat").click()
    page.get_by_label("Username").fill(username)
    page.get_by_role("button", name="Start chat").click()
    playwright_sync.expect(page.get_by_label("Message", exact=True)).to_be_visible()


def send(client: Client, text: str) -> None:
    box = client.page.get_by_label("Message", exact=True)
    box.fill(text)
    box.press("Enter")


def bubbles(client: Client) -> Any:
    return client.page.locator(".msg-list .msg")


# --- plain HTTP helpers, for setting up state quickly -----------------------------


def api(base: str, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    with urllib.request.urlopen(req, timeout=30) as r:
        raw = r.read()
        return json.loads(raw) if raw else None


@dataclass
class ApiUser:
    user_id: str
    username: str
    token: str


def api_user(base: str, username: str, display_name: str | None = None) -> ApiUser:
    body: dict[str, str] = {"username": username, "password": PASSWORD}
    if display_name:
        body["display_name"] = display_name
    u = api(base, "POST", "/v1/accounts", body)
    s = api(base, "POST", "/v1/sessions", {"username": username, "password": PASSWORD})
    return ApiUser(u["user_id"], username, s["token"])
