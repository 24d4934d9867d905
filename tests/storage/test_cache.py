"""The cache answers a history page exactly as the database would, or not at all."""

from __future__ import annotations

import itertools
import sqlite3
from collections import deque

from parley.protocol.models import Message
from parley.storage.base import RECENT_MESSAGES, ConversationRecord, MemberRecord
from parley.storage.cache import ConversationCache, ConversationLists
from parley.storage.sqlite import SCHEMA, _select_messages

LAST = 120


def _db_and_record() -> tuple[sqlite3.Connection, ConversationRecord]:
    conn = sqlite3.connect(":memory:")
    conn.executescript(SCHEMA)
    messages = [
        Message(
            conversation_id="c",
            seq=i,
            message_id=f"m{i}",
            sender_id="u",
            client_msg_id=f"k{i}",
            body=f"body {i}",
            sent_at=i,
        )
        for i in range(1, LAST + 1)
    ]
    conn.executemany(
        "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(m.conversation_id, m.seq, m.message_id, m.sender_id, m.client_msg_id, m.body, m.sent_at)
         for m in messages],
    )  # fmt: skip
    record = ConversationRecord(
        conversation_id="c",
        type="direct",
        title=None,
        created_at=0,
        last_seq=LAST,
        last_activity=LAST,
        recent=deque(messages[-RECENT_MESSAGES:], maxlen=RECENT_MESSAGES),
    )
    return conn, record


def test_cached_pages_equal_database_pages() -> None:
    conn, record = _db_and_record()
    bounds = [None, 0, 1, 30, 70, 71, 72, 100, 119, 120, 121, 500]
    served = 0
    for before, after, limit, upto in itertools.product(
        bounds, bounds, [1, 2, 10, 49, 50, 51, 200], [None, 60, 80, 120]
    ):
        cached = ConversationCache.page(record, before, after, limit, upto)
        expected = _select_messages(conn, "c", before, after, limit, upto)
        if cached is not None:
            served += 1
            assert cached == expected, (before, after, limit, upto)
    assert served > 500  # the cache does answer most recent pages


def test_newest_page_is_served_and_old_pages_fall_through() -> None:
    _, record = _db_and_record()
    page = ConversationCache.page(record, None, None, 50, None)
    assert page is not None
    assert [m.seq for m in page[0]] == list(range(71, 121)) and page[1] is True
    assert ConversationCache.page(record, 30, None, 10, None) is None


def test_cache_is_bounded_by_count_and_bytes() -> None:
    cache = ConversationCache(max_conversations=3, max_body_bytes=10_000)
    for i in range(5):
        _, record = _db_and_record()
        record.conversation_id = f"c{i}"
        cache.install(record)
    assert cache.get("c0") is None and cache.get("c4") is not None
    big = ConversationCache(max_conversations=100, max_body_bytes=700)
    for i in range(5):
        _, record = _db_and_record()  # 50 bodies of ~8 chars: ~400 bytes each
        record.conversation_id = f"c{i}"
        big.install(record)
    assert big.get("c3") is None and big.get("c4") is not None


def _conv(
    cid: str, activity: int, members: list[str], former: tuple[str, ...] = ()
) -> ConversationRecord:
    return ConversationRecord(
        conversation_id=cid,
        type="group",
        title=None,
        created_at=0,
        last_seq=0,
        last_activity=activity,
        members={u: MemberRecord(u, "member") for u in members},
        former={u: 0 for u in former},
    )


def test_list_order_bounds_and_ties_match_the_database() -> None:
    lists = ConversationLists()
    assert lists.page("u", 10, None) is None  # not loaded: the caller reads disk
    assert lists.begin_load("u") and not lists.begin_load("u")
    lists.end_load("u", {"a": (5, True), "b": (9, True), "c": (5, True), "d": (7, False)})
    assert lists.page("u", 10, None) == ["b", "d", "a", "c"]  # activity desc, then id
    assert lists.page("u", 2, None) == ["b", "d"]
    assert lists.page("u", 10, 7) == ["a", "c"]  # activity < before


def test_snapshots_move_members_and_leave_former_members_in_place() -> None:
    lists = ConversationLists()
    for user in ("u", "v"):
        lists.begin_load(user)
        lists.end_load(user, {"a": (1, True), "b": (2, True)})
    lists.update(_conv("a", 10, ["u", "v"]))
    assert lists.page("u", 10, None) == ["a", "b"]
    lists.update(_conv("c", 11, ["u"]))  # a new conversation appears on top
    assert lists.page("u", 10, None) == ["c", "a", "b"]
    # v was just removed from a: where that leaves it is on disk only
    lists.update(_conv("a", 12, ["u"], former=("v",)))
    assert lists.page("v", 10, None) is None
    lists.begin_load("v")
    lists.end_load("v", {"a": (12, False), "b": (2, True)})
    lists.update(_conv("a", 20, ["u"], former=("v",)))  # later activity: not v's business
    assert lists.page("v", 10, None) == ["a", "b"]
    assert lists.page("u", 10, None) == ["a", "c", "b"]


def test_a_commit_that_races_a_load_is_not_lost() -> None:
    lists = ConversationLists()
    lists.begin_load("u")
    lists.update(_conv("new", 50, ["u"]))  # committed while the load was reading
    lists.end_load("u", {"old": (1, True)})
    assert lists.page("u", 10, None) == ["new", "old"]
    # a removal that raced a load: the load's result is not kept
    lists.begin_load("w")
    lists.update(_conv("x", 60, [], former=("w",)))
    lists.end_load("w", {"x": (59, True)})
    assert lists.page("w", 10, None) is None
    # nor when every list had to be forgotten, or the load failed
    lists.begin_load("z")
    lists.forget_all()
    lists.end_load("z", {})
    assert lists.page("z", 10, None) is None and lists.page("u", 10, None) is None
    lists.begin_load("z")
    lists.end_load("z", None)
    assert lists.page("z", 10, None) is None and lists.begin_load("z")


def test_lists_are_bounded() -> None:
    lists = ConversationLists(max_users=2)
    for user in ("a", "b", "c"):
        lists.begin_load(user)
        lists.end_load(user, {})
    assert lists.page("a", 1, None) is None and lists.page("c", 1, None) == []


def test_a_snapshot_is_an_equal_copy_that_later_writes_do_not_touch() -> None:
    _, record = _db_and_record()
    record.members = {"u": MemberRecord("u", "admin", 3, 2, 1, 7)}
    record.former = {"v": 5}
    record.title, record.version = "t", 4
    record.last_message = record.recent[-1]
    snapshot = record.snapshot()
    assert snapshot == record  # every field, so a new field cannot be left out
    record.members["u"].unread += 1
    record.members["w"] = MemberRecord("w", "member")
    record.former["x"] = 1
    record.recent.append(record.recent[0])
    assert snapshot.members == {"u": MemberRecord("u", "admin", 3, 2, 1, 7)}
    assert snapshot.former == {"v": 5} and snapshot.recent[-1].seq == LAST


def test_remembered_body_size_follows_what_the_deque_keeps_and_drops() -> None:
    _, record = _db_and_record()
    assert record.recent_body_size == sum(len(m.body) for m in record.recent) > 0
    for i in range(RECENT_MESSAGES + 7):  # past the bound: the oldest ones drop out
        last = record.recent[-1]
        record.remember(
            Message(
                conversation_id="c",
                seq=last.seq + 1,
                message_id=f"n{i}",
                sender_id="u",
                client_msg_id=f"n{i}",
                body="x" * (i % 5),
                sent_at=i,
            )
        )
        assert record.recent_body_size == sum(len(m.body) for m in record.recent)
    snapshot = record.snapshot()
    assert snapshot.recent_body_size == record.recent_body_size
