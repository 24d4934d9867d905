"""Safe by construction (text is text, strict headers) and the phone layout."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest
from playwright.sync_api import expect

from tests.harness import ServerProcess
from tests.web.conftest import PHONE, Client, bubbles, send, sign_up, start_chat, unique

XSS = "<img src=x onerror=alert(1)>"


def test_markup_in_a_message_is_shown_as_text_and_runs_nothing(
    web_server: ServerProcess, open_client: Callable[..., Client]
) -> None:
    mallory = sign_up(open_client(web_server.url), unique("mallory"))
    victim = sign_up(open_client(web_server.url), unique("victim"))
    start_chat(mallory, victim.username)
    payloads = [
        XSS,
        "<script>alert(2)</script>",
        '"><svg onload=alert(3)>',
        "**bold** &amp; <b>x</b>",
    ]
    for p in payloads:
        send(mallory, p)
    victim.page.get_by_role("link", name=re.compile(mallory.username)).click()
    texts = victim.page.locator(".msg-list .msg-text")
    expect(texts).to_have_count(len(payloads))
    assert texts.all_text_contents() == payloads
    for client in (victim, mallory):
        page = client.page
        assert page.locator(".msg-list img, .msg-list script, .msg-list b").count() == 0
        assert page.locator(".msg-list svg:not(.icon)").count() == 0
        # The list preview is text too.
        expect(page.locator(".conv-preview-text").first).to_contain_text("<b>x</b>")
        assert client.dialogs == [], client.dialogs
        assert client.errors == [], client.errors


def _get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, dict(r.headers.items()), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers.items()), e.read()


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/", "text/html"),
        ("/app/js/app.js", "text/javascript"),
        ("/app/styles.css", "text/css"),
        ("/manifest.webmanifest", "application/manifest+json"),
        ("/sw.js", "text/javascript"),
        ("/app/icons/icon.svg", "image/svg+xml"),
    ],
)
def test_web_files_are_served_with_strict_headers(
    web_server: ServerProcess, path: str, content_type: str
) -> None:
    status, headers, body = _get(web_server.url + path)
    assert status == 200 and body
    assert headers["Content-Type"].startswith(content_type)
    csp = headers["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'"  # no 'unsafe-inline', no 'unsafe-eval'
    assert directives["style-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"


def test_page_has_no_inline_script_and_no_path_escapes(web_server: ServerProcess) -> None:
    _, _, body = _get(web_server.url + "/")
    html = body.decode()
    assert re.findall(r"<script[^>]*>", html) == ['<script type="module" src="/app/js/app.js">']
    assert not re.search(r"\son[a-z]+\s*=", html)  # no inline event handlers
    assert 'name="viewport" content="width=device-width' in html
    for bad in ("/app/../server/static.py", "/app/%2e%2e/server/static.py", "/app/nope.js"):
        status, _, _ = _get(web_server.url + bad)
        assert status == 404, bad


def test_phone_layout_list_and_chat_are_separate_screens(
    web_server: ServerProcess, open_client: Callable[..., Client]
) -> None:
    friend = sign_up(open_client(web_server.url), unique("friend"))
    phone = open_client(web_server.url, **PHONE)

    def no_horizontal_overflow() -> None:
        widths = phone.page.evaluate(
            "() => [document.documentElement.scrollWidth, document.body.scrollWidth, innerWidth,"
            " Math.max(...[...document.querySelectorAll('body *')].map("
            "  e => e.getBoundingClientRect().right))]"
        )
        doc, body, inner, rightmost = widths
        assert inner == 375
        assert doc <= inner and body <= inner, widths
        assert rightmost <= inner + 0.5, widths

    expect(phone.page.get_by_role("button", name="Log in")).to_be_visible()
    no_horizontal_overflow()
    sign_up(phone, unique("phone"))
    no_horizontal_overflow()

    start_chat(phone, friend.username)
    page = phone.page
    # The chat is its own screen: the list is gone, a way back is there.
    expect(page.get_by_role("complementary", name="Chats")).to_be_hidden()
    back = page.get_by_role("button", name="Back to chats")
    expect(back).to_be_visible()
    send(phone, "x" * 400)  # one unbreakable word must wrap, not widen the page
    send(phone, "A normal sentence on a small screen, long enough to wrap onto a second line.")
    friend.page.get_by_role("link", name=re.compile(phone.username)).click()
    send(friend, "Hello from a desktop 👋")
    expect(bubbles(phone).filter(has_text="Hello from a desktop")).to_be_visible()
    no_horizontal_overflow()
    box = page.get_by_role("button", name="Send").bounding_box()
    assert box and box["x"] + box["width"] <= 375

    back.click()
    expect(page.get_by_role("complementary", name="Chats")).to_be_visible()
    expect(page.get_by_label("Message", exact=True)).to_be_hidden()
    expect(page.get_by_role("link", name=re.compile(friend.username))).to_be_visible()
    no_horizontal_overflow()
    # And forward again; the browser's back button returns to the list too.
    page.get_by_role("link", name=re.compile(friend.username)).click()
    expect(page.get_by_label("Message", exact=True)).to_be_visible()
    expect(page.get_by_role("complementary", name="Chats")).to_be_hidden()
    page.go_back()
    expect(page.get_by_role("complementary", name="Chats")).to_be_visible()
    assert not phone.errors


def test_keyboard_alone_signs_in_starts_a_chat_and_sends(
    web_server: ServerProcess, open_client: Callable[..., Client]
) -> None:
    peer = sign_up(open_client(web_server.url), unique("peer"))
    name = unique("keys")
    client = open_client(web_server.url)
    page = client.page
    # Sign up first (by keyboard: Tab to the button, Enter), log out, log in with Enter.
    expect(page.get_by_label("Username")).to_be_focused()
    page.keyboard.type(name)
    page.keyboard.press("Tab")
    page.keyboard.type("correct horse battery")
    for _ in range(2):
        page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Sign up")).to_be_focused()
    page.keyboard.press("Enter")
    logout = page.get_by_role("button", name="Log out")
    expect(logout).to_be_visible()
    # The app has loaded this account (its empty list says so) before we go on,
    # as a person would see before acting: each step then starts from a settled app.
    loaded = page.get_by_text("No conversations yet")
    expect(loaded).to_be_visible()
    logout.focus()
    page.keyboard.press("Enter")
    expect(page.get_by_label("Username")).to_be_focused()
    page.keyboard.type(name)
    page.keyboard.press("Tab")
    page.keyboard.type("correct horse battery")
    page.keyboard.press("Enter")  # Enter in the form logs in
    new_chat = page.get_by_role("button", name="New chat")
    expect(new_chat).to_be_visible()
    expect(loaded).to_be_visible()

    # Tab from the page start reaches "New chat"; its dialog opens with the field focused.
    for _ in range(10):
        page.keyboard.press("Tab")
        if new_chat.evaluate("el => el === document.activeElement"):
            break
    expect(new_chat).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_label("Username")).to_be_focused()
    page.keyboard.type(peer.username)
    page.keyboard.press("Enter")
    box = page.get_by_label("Message", exact=True)
    expect(box).to_be_focused()
    page.keyboard.type("sent with the keyboard")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("second line")
    page.keyboard.press("Enter")
    try:
        expect(bubbles(client).locator(".msg-text")).to_have_text(
            ["sent with the keyboard\nsecond line"]
        )
    except AssertionError as exc:  # say what the page was doing, for a rare failure
        state = page.evaluate(
            "() => ({composer: document.querySelector('.composer-input')?.value,"
            " focused: document.activeElement?.outerHTML.slice(0, 120),"
            " hash: location.hash, banner: document.querySelector('.conn-banner')?.textContent})"
        )
        raise AssertionError(f"{exc}\npage: {state}\npage errors: {client.errors}") from exc
    expect(box).to_have_value("")
    # Escape closes a dialog and gives focus back.
    new_chat.focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("dialog")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.get_by_role("dialog")).to_have_count(0)
    expect(new_chat).to_be_focused()
    assert not client.errors


def test_manifest_and_service_worker_are_installed(
    web_server: ServerProcess, open_client: Callable[..., Client]
) -> None:
    client = open_client(web_server.url)
    page = client.page
    scope = page.evaluate("navigator.serviceWorker.ready.then(r => r.active && r.scope)")
    assert scope == web_server.url + "/"
    manifest = page.evaluate(
        "fetch(document.querySelector('link[rel=manifest]').href).then(r => r.json())"
    )
    assert manifest["start_url"] == "/" and manifest["display"] == "standalone"
    assert {i["purpose"] for i in manifest["icons"]} == {"any", "maskable"}
    # The token never appears in a URL: not in the page's, not in the socket's.
    sign_up(client, unique("private"))
    with page.expect_websocket() as socket:
        page.reload()
    expect(page.get_by_role("button", name="New chat")).to_be_visible()
    token = page.evaluate("JSON.parse(localStorage.getItem('parley.session')).token")
    assert token and token not in socket.value.url and token not in page.url
    assert socket.value.url.startswith(web_server.url.replace("http", "ws") + "/v1/ws")
    assert not client.errors
