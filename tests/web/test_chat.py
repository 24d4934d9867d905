"""The web client end to end: two or three people in real browser contexts."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from playwright.sync_api import expect

from tests.harness import ServerProcess
from tests.web.conftest import (
    Client,
    api,
    api_user,
    bubbles,
    send,
    sign_up,
    start_chat,
    unique,
)


def test_direct_chat_live_with_ticks_typing_and_presence(
    web_server: ServerProcess, open_client: Callable[..., Client]
) -> None:
    alice = sign_up(open_client(web_server.url), unique("alice"))
    bob = sign_up(open_client(web_server.url), unique("bob"))

    start_chat(alice, bob.username)
    send(alice, "Hi Bob! Are you there?")
    mine = bubbles(alice).filter(has_text="Hi Bob! Are you there?")
    expect(mine).to_have_count(1)
    # Acked by the server (sent), then delivered to Bob's open client.
    expect(mine.get_by_role("img", name="delivered")).to_be_visible()

    # Bob sees the conversation appear live, with an unread badge, and opens it.
    item = bob.page.get_by_role("link", name=re.compile(alice.username))
    expect(item).to_be_visible()
    expect(item.get_by_label("1 new")).to_be_visible()
    item.click()
    expect(bubbles(bob).filter(has_text="Hi Bob! Are you there?")).to_be_visible()
    expect(item.get_by_label("1 new")).to_have_count(0)

    # Opening it read it: Alice's tick turns to "read".
    expect(mine.get_by_role("img", name="read")).to_be_visible()

    # Presence of the peer is shown in words.
    expect(alice.page.locator(".chat-sub")).to_have_text("online")
    expect(bob.page.locator(".chat-sub")).to_have_text("online")

    # Typing shows on the other side.
    bob.page.get_by_label("Message", exact=True).press_sequentially("Yes")
    expect(alice.page.locator(".chat-sub")).to_have_text("typing…")

    bob.page.get_by_label("Message", exact=True).press_sequentially(", I'm here.")
    bob.page.get_by_role("button", name="Send").click()
    expect(bubbles(alice).filter(has_text="Yes, I'm here.")).to_be_visible()
    reply = bubbles(bob).filter(has_text="Yes, I'm here.")
    expect(reply.get_by_role("img", name="read")).to_be_visible()
    expect(alice.page.locator(".chat-sub")).to_have_text("online")

    # A burst keeps its order on both sides.
    for i in range(5):
        send(alice, f"burst {i}")
    for client in (alice, bob):
        expect(bubbles(client).filter(has_text="burst 4")).to_be_visible()
        texts = bubbles(client).locator(".msg-text").all_inner_texts()
        assert [t for t in texts if t.startswith("burst")] == [f"burst {i}" for i in range(5)]
    expect(
        bubbles(alice).filter(has_text="burst 4").get_by_role("img", name="read")
    ).to_be_visible()
    assert not alice.errors and not bob.errors


def test_group_of_three(web_server: ServerProcess, open_client: Callable[..., Client]) -> None:
    ann = sign_up(open_client(web_server.url), unique("ann"))
    ben = sign_up(open_client(web_server.url), unique("ben"))
    cat = sign_up(open_client(web_server.url), unique("cat"))

    page = ann.page
    page.get_by_role("button", name="New group").click()
    page.get_by_label("Group name").fill("Weekend trip")
    for who in (ben, cat):
        page.get_by_label("Username").fill(who.username)
        page.get_by_role("button", name="Add", exact=True).click()
        expect(page.get_by_role("button", name=f"Remove {who.username}")).to_be_visible()
    page.get_by_role("button", name="Create group").click()
    expect(page.locator(".chat-title")).to_have_text("Weekend trip")
    expect(page.locator(".chat-sub")).to_contain_text("3 members")

    send(ann, "Who's bringing the tent?")
    for who in (ben, cat):
        link = who.page.get_by_role("link", name=re.compile("Weekend trip"))
        expect(link).to_be_visible()
        link.click()
        expect(bubbles(who).filter(has_text="Who's bringing the tent?")).to_be_visible()
    # Read by both other members: the tick says so.
    tent = bubbles(ann).filter(has_text="Who's bringing the tent?")
    expect(tent.get_by_role("img", name="read")).to_be_visible()

    send(ben, "I will")
    send(cat, "I'll bring food")
    for who in (ann, ben, cat):
        expect(bubbles(who).filter(has_text="I'll bring food")).to_be_visible()
        expect(bubbles(who).filter(has_text="I will")).to_be_visible()
    # Others' messages in a group carry the sender's name.
    expect(bubbles(ann).filter(has_text="I will").locator(".msg-sender")).to_have_text(ben.username)

    # The admin renames the group; everyone sees the new title.
    page.get_by_role("button", name="Group info").click()
    page.get_by_label("Group name").fill("Lake weekend")
    page.get_by_role("button", name="Rename").click()
    for who in (ann, ben, cat):
        expect(who.page.locator(".chat-title")).to_have_text("Lake weekend")

    # The admin removes Cat: Cat can no longer write, the others carry on.
    page.get_by_role("button", name=f"Remove {cat.username}").click()
    expect(page.get_by_role("button", name=f"Remove {cat.username}")).to_have_count(0)
    page.get_by_role("button", name="Close").click()
    expect(cat.page.locator(".composer-notice")).to_contain_text("no longer a member")
    expect(cat.page.get_by_label("Message", exact=True)).to_be_hidden()
    send(ann, "just the two of us now")
    # Sent and stored (ticked) on Ann's side before Ben is asked to show it.
    mine = bubbles(ann).filter(has_text="just the two of us now")
    expect(mine.get_by_role("img", name=re.compile("sent|delivered|read"))).to_be_visible()
    expect(bubbles(ben).filter(has_text="just the two of us now")).to_be_visible()
    expect(ann.page.locator(".chat-sub")).to_contain_text("2 members")

    # Ben leaves: the group disappears from his list.
    ben.page.get_by_role("button", name="Group info").click()
    ben.page.get_by_role("button", name="Leave group").click()
    expect(ben.page.get_by_role("link", name=re.compile("Lake weekend"))).to_have_count(0)
    expect(ann.page.locator(".chat-sub")).to_contain_text("1 member")
    assert bubbles(cat).filter(has_text="just the two of us now").count() == 0
    assert not ann.errors and not ben.errors and not cat.errors


def test_a_message_acked_before_the_history_arrives_stays_in_view(
    web_server: ServerProcess, open_client: Callable[..., Client]
) -> None:
    # A new chat's first page is read before the first message is stored but
    # reaches the page after that message's ack and event (a read waits for
    # the sync of what it saw, and HTTP and the WebSocket race): the message
    # must still be shown once the (empty) page is in.
    peer = sign_up(open_client(web_server.url), unique("peer"))
    client = sign_up(open_client(web_server.url), unique("quick"))
    page = client.page
    held: list[tuple[Any, Any]] = []

    def hold(route: Any) -> None:
        if route.request.method != "GET":
            route.continue_()
            return
        held.append((route, route.fetch()))  # answered by the server now, shown later

    history = re.compile(r"/v1/conversations/[^/?]+/messages")
    page.route(history, hold)
    start_chat(client, peer.username)
    for _ in range(100):
        if held:
            break
        page.wait_for_timeout(50)
    assert len(held) == 1, "the chat did not ask for its history"
    send(client, "before the history came")
    expect(bubbles(client)).to_have_count(1)
    expect(page.locator(".msg-list .msg.pending")).to_have_count(0)  # acked
    route, response = held[0]
    route.fulfill(response=response)
    page.unroute(history)
    expect(page.get_by_text("Loading messages")).to_have_count(0)
    expect(bubbles(client).locator(".msg-text")).to_have_text(["before the history came"])


def test_history_loads_older_pages_when_scrolled_up(
    web_server: ServerProcess, open_client: Callable[..., Client]
) -> None:
    base = web_server.url
    writer = api_user(base, unique("writer"))
    reader = sign_up(open_client(base), unique("reader"))
    me = api(base, "GET", f"/v1/users?username={reader.username}", token=writer.token)
    cid = api(
        base,
        "POST",
        "/v1/conversations",
        {"type": "direct", "user_id": me["user_id"]},
        writer.token,
    )["conversation_id"]
    total = 130
    for i in range(1, total + 1):
        api(
            base,
            "POST",
            f"/v1/conversations/{cid}/messages",
            {"client_msg_id": f"m{i}", "body": f"message number {i}"},
            writer.token,
        )

    page = reader.page
    page.get_by_role("link", name=re.compile(writer.username)).click()
    # The chat opens at its newest message, with one page loaded.
    newest = page.locator(".msg-list").get_by_text(f"message number {total}", exact=True)
    expect(newest).to_be_in_viewport()
    expect(bubbles(reader)).to_have_count(50)

    scroller = page.locator(".scroller")
    for expected in (100, 130):
        scroller.evaluate("el => el.scrollTo(0, 0)")
        expect(bubbles(reader)).to_have_count(expected)
    scroller.evaluate("el => el.scrollTo(0, 0)")
    expect(page.locator(".older-status")).to_have_text("This is the beginning of the conversation.")
    first = bubbles(reader).first.locator(".msg-text")
    expect(first).to_have_text("message number 1")
    texts = bubbles(reader).locator(".msg-text").all_inner_texts()
    assert texts == [f"message number {i}" for i in range(1, total + 1)]
    assert not reader.errors


def test_offline_then_back_shows_what_was_sent_meanwhile(
    web_server: ServerProcess, open_client: Callable[..., Client]
) -> None:
    alice = sign_up(open_client(web_server.url), unique("alice"))
    bob = sign_up(open_client(web_server.url), unique("bob"))
    start_chat(alice, bob.username)
    send(alice, "before the tunnel")
    bob.page.get_by_role("link", name=re.compile(alice.username)).click()
    expect(bubbles(bob).filter(has_text="before the tunnel")).to_be_visible()

    alice.context.set_offline(True)
    expect(alice.page.get_by_role("status").filter(has_text="Waiting for network")).to_be_visible()
    for i in range(3):
        send(bob, f"while you were away {i}")
    send(alice, "typed in the tunnel")
    queued = bubbles(alice).filter(has_text="typed in the tunnel")
    expect(queued.get_by_role("img", name="sending")).to_be_visible()
    expect(
        bubbles(bob).filter(has_text="while you were away 2").get_by_role("img", name="sent")
    ).to_be_visible()
    assert bubbles(alice).filter(has_text="while you were away").count() == 0

    alice.context.set_offline(False)
    for i in range(3):
        expect(bubbles(alice).filter(has_text=f"while you were away {i}")).to_be_visible()
    expect(bubbles(bob).filter(has_text="typed in the tunnel")).to_be_visible()
    expect(queued.get_by_role("img", name="read")).to_be_visible()
    expect(
        bubbles(bob).filter(has_text="while you were away 2").get_by_role("img", name="read")
    ).to_be_visible()
    # Exactly once each, in order, on both sides.
    for client in (alice, bob):
        texts = bubbles(client).locator(".msg-text").all_inner_texts()
        assert texts.count("typed in the tunnel") == 1
        away = [t for t in texts if t.startswith("while you were away")]
        assert away == [f"while you were away {i}" for i in range(3)]
    expect(alice.page.get_by_role("status").filter(has_text="Waiting for network")).to_be_hidden()


def test_reconnects_after_the_server_restarts(
    server: ServerProcess, open_client: Callable[..., Client]
) -> None:
    alice = sign_up(open_client(server.url), unique("alice"))
    bob = api_user(server.url, unique("bob"))
    start_chat(alice, bob.username)
    cid = alice.page.evaluate("decodeURIComponent(location.hash.slice(4))")
    server.restart()  # kill -9 and start again on the same port: every socket drops
    api(
        server.url,
        "POST",
        f"/v1/conversations/{cid}/messages",
        {"client_msg_id": "after-restart", "body": "did you miss me?"},
        bob.token,
    )
    expect(bubbles(alice).filter(has_text="did you miss me?")).to_be_visible(timeout=10_000)
    send(alice, "not at all")
    # Acknowledged by the restarted server: Bob has no device online, so "sent".
    expect(
        bubbles(alice).filter(has_text="not at all").get_by_role("img", name="sent")
    ).to_be_visible()
    page = api(server.url, "GET", f"/v1/conversations/{cid}/messages", token=bob.token)
    assert [m["body"] for m in page["messages"]] == ["did you miss me?", "not at all"]
