"""Take the documentation screenshots of the web client (desktop and phone).

    .venv/bin/python -m tests.web.screenshots [OUT_DIR]

Starts a throwaway `parley serve`, fills it with a few people and realistic
conversations over the HTTP API, and photographs the client in headless
Chromium: docs/screenshots/desktop.png, desktop-dark.png, phone-list.png and
phone-chat.png.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from playwright.sync_api import Page, expect, sync_playwright

from tests.harness import ServerProcess
from tests.web.conftest import CHROMIUM, CHROMIUM_ARGS, PASSWORD, SERVER_FLAGS, ApiUser, api

ROOT = Path(__file__).resolve().parents[2]

PEOPLE = {
    "maya": "Maya Chen",
    "leo": "Leo Martins",
    "sofia": "Sofia Rossi",
    "daniel": "Daniel Okafor",
    "priya": "Priya Nair",
    "tom": "Tom Becker",
}

CHAT_WITH_LEO = [
    ("leo", "Hey Maya! Are we still on for Saturday?"),
    ("maya", "Yes! I booked the table at Lupa for 7:30 🍝"),
    ("leo", "Perfect. Should I bring anything?"),
    ("maya", "Maybe a bottle of that red you brought last time?"),
    ("maya", "Everyone loved it"),
    ("leo", "Ha, the Montepulciano. Consider it done"),
    ("leo", "Also, did you get a chance to look at the slides for Monday?"),
    (
        "maya",
        "Just finished going through them. The new charts are great, much clearer than before.",
    ),
    ("maya", "I left a few comments on the pricing page, mostly wording."),
    ("leo", "Thanks, I'll fix those tonight 🙌"),
    ("maya", "No rush. See you Saturday!"),
]


def session_for(base: str, username: str) -> dict[str, Any]:
    s = api(base, "POST", "/v1/sessions", {"username": username, "password": PASSWORD})
    return {**s, "username": username}


def seed(base: str) -> tuple[dict[str, ApiUser], dict[str, str]]:
    users: dict[str, ApiUser] = {}
    for name, display in PEOPLE.items():
        u = api(
            base,
            "POST",
            "/v1/accounts",
            {"username": name, "password": PASSWORD, "display_name": display},
        )
        users[name] = ApiUser(u["user_id"], name, session_for(base, name)["token"])
    convs: dict[str, str] = {}
    n = 0

    def say(who: str, cid: str, text: str) -> int:
        nonlocal n
        n += 1
        m = api(
            base,
            "POST",
            f"/v1/conversations/{cid}/messages",
            {"client_msg_id": f"seed-{n}", "body": text},
            users[who].token,
        )
        return int(m["message"]["seq"])

    def direct(a: str, b: str) -> str:
        c = api(
            base,
            "POST",
            "/v1/conversations",
            {"type": "direct", "user_id": users[b].user_id},
            users[a].token,
        )
        return str(c["conversation_id"])

    def group(owner: str, title: str, members: list[str]) -> str:
        body = {"type": "group", "title": title, "member_ids": [users[m].user_id for m in members]}
        return str(
            api(base, "POST", "/v1/conversations", body, users[owner].token)["conversation_id"]
        )

    def read(who: str, cid: str, seq: int) -> None:
        api(base, "POST", f"/v1/conversations/{cid}/read", {"seq": seq}, users[who].token)

    # Oldest activity first, so the list ends up in a natural order.
    cid = direct("maya", "tom")
    say("tom", cid, "Thanks for the book recommendation!")
    seq = say("maya", cid, "Anytime. Tell me what you think of the ending 📚")
    read("tom", cid, seq)
    convs["tom"] = cid

    cid = group("priya", "Weekend hike", ["maya", "daniel", "sofia"])
    say("priya", cid, "Trail map for Sunday is in the shared folder")
    say("daniel", cid, "I can drive, there's room for 3 more")
    seq = say("maya", cid, "Count me in 🙋‍♀️")
    for who in ("priya", "daniel", "sofia"):
        read(who, cid, seq)
    convs["hike"] = cid

    cid = direct("daniel", "maya")
    seq = say("daniel", cid, "Can you send me the invoice from March?")
    read("maya", cid, seq)
    seq = say("maya", cid, "Sent it to your work email just now")
    read("daniel", cid, seq)
    convs["daniel"] = cid

    cid = group("sofia", "Design team", ["maya", "leo", "priya", "daniel"])
    say("sofia", cid, "Standup moved to 10:15 tomorrow")
    seq = say("leo", cid, "Works for me")
    read("maya", cid, seq)
    say("priya", cid, "I pushed the new icon set, have a look when you can")
    say("sofia", cid, "Looks great Priya!")
    convs["design"] = cid

    cid = direct("leo", "maya")
    for who, text in CHAT_WITH_LEO:
        seq = say(who, cid, text)
        other = "maya" if who == "leo" else "leo"
        read(other, cid, seq)
    convs["leo"] = cid

    cid = direct("sofia", "maya")
    say("sofia", cid, "Are you coming to the climbing gym tonight?")
    say("sofia", cid, "We're going at 7")
    convs["sofia"] = cid
    return users, convs


def signed_in(browser: Any, base: str, username: str, **options: Any) -> Page:
    ctx = browser.new_context(**options)
    page: Page = ctx.new_page()
    page.goto(base + "/")
    page.evaluate(
        "s => localStorage.setItem('parley.session', s)", json.dumps(session_for(base, username))
    )
    page.reload()
    return page


def wait_settled(page: Page) -> None:
    expect(page.locator(".conv-item").first).to_be_visible()
    page.evaluate("document.fonts.ready")


def shoot(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    shots: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        srv = ServerProcess(Path(tmp) / "data", *SERVER_FLAGS).start()
        try:
            base = srv.url
            _, convs = seed(base)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                # Leo is online (his presence dot shows) and types while we look.
                leo = signed_in(browser, base, "leo", viewport={"width": 800, "height": 600})
                leo.goto(base + "/#/c/" + convs["leo"])
                expect(leo.get_by_label("Message", exact=True)).to_be_visible()

                for scheme, name in (("light", "desktop.png"), ("dark", "desktop-dark.png")):
                    page = signed_in(
                        browser,
                        base,
                        "maya",
                        viewport={"width": 1280, "height": 800},
                        color_scheme=scheme,
                    )
                    page.goto(base + "/#/c/" + convs["leo"])
                    wait_settled(page)
                    expect(page.locator(".chat-sub")).to_have_text("online")
                    expect(page.locator(".msg-list .msg")).to_have_count(len(CHAT_WITH_LEO))
                    page.get_by_label("Message", exact=True).fill("Let me know if you need a hand")
                    page.locator(".composer-input").dispatch_event("input")
                    # Typing notices go out at most every 2.5 s: type for longer than that.
                    leo.get_by_label("Message", exact=True).press_sequentially(
                        "Will do, see you", delay=180
                    )
                    expect(page.locator(".chat-sub")).to_have_text("typing…")
                    path = out / name
                    page.screenshot(path=str(path))
                    shots.append(path)
                    page.context.close()
                    leo.get_by_label("Message", exact=True).fill("")

                phone_opts: dict[str, Any] = {
                    "viewport": {"width": 375, "height": 740},
                    "device_scale_factor": 2,
                    "is_mobile": True,
                    "has_touch": True,
                }
                page = signed_in(browser, base, "maya", **phone_opts)
                page.goto(base + "/")
                wait_settled(page)
                expect(page.locator(".presence-dot").first).to_be_visible()
                path = out / "phone-list.png"
                page.screenshot(path=str(path))
                shots.append(path)
                page.goto(base + "/#/c/" + convs["leo"])
                expect(page.locator(".msg-list .msg")).to_have_count(len(CHAT_WITH_LEO))
                expect(page.locator(".chat-sub")).to_have_text("online")
                path = out / "phone-chat.png"
                page.screenshot(path=str(path))
                shots.append(path)
                browser.close()
        finally:
            srv.stop()
    return shots


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "screenshots"
    for path in shoot(out):
        print(path)


if __name__ == "__main__":
    main()
