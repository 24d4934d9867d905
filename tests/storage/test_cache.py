"""The cache answers a history page exactly as the database would, or not at all."""

from __future__ import annotations

import itertools
import sqlite3
from collections import deque

from parley.protocol.models import Message
from parley.storage.base import RECENT_MESSAGES, ConversationRecord
from parley.storage.cache import ConversationCache
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
