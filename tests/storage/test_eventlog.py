"""Users' event logs written behind: entries are journaled with their batch,
reach `events` later, and no read, restart or rollback ever misses or doubles one."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from parley.storage import eventlog
from parley.storage.base import UserRecord
from parley.storage.sqlite import SqliteStore

USERS = [f"u_{i}" for i in range(6)]


async def _opened(path: Path) -> SqliteStore:
    store = SqliteStore(path, busy_timeout_ms=20)
    await store.open()
    return store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = await _opened(tmp_path / "parley.db")
    for user in USERS:
        await s.create_user(UserRecord(user, user, user, "x", 0))
    yield s
    await s.close()


def _on_disk(path: Path) -> tuple[int, int]:
    """(entries in `events`, rows in the journal), read by another connection."""
    conn = sqlite3.connect(path)
    try:
        (events,) = conn.execute("SELECT count(*) FROM events").fetchone()
        (journal,) = conn.execute("SELECT count(*) FROM events_journal").fetchone()
    finally:
        conn.close()
    return events, journal


async def _chats(store: SqliteStore) -> list[str]:
    """Three 1:1 chats: u_0-u_1, u_2-u_3, u_4-u_5."""
    return [
        (await store.open_direct(f"c{i}", USERS[i], USERS[i + 1], 0)).conversation.conversation_id
        for i in range(0, 6, 2)
    ]


async def _send(store: SqliteStore, cids: list[str], start: int, count: int) -> None:
    sends = [
        store.append_message(cid, USERS[2 * n], f"k{i}", f"body {i}", f"m{n}-{i}", i)
        for i in range(start, start + count)
        for n, cid in enumerate(cids)
    ]
    await asyncio.gather(*sends)


async def _cursors(store: SqliteStore, user: str, after: int = 0) -> list[int]:
    return [e.cursor for e in await store.read_events(user, after, 500)]


async def test_entries_reach_the_table_behind_and_reads_see_every_one_throughout(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(eventlog, "WRITE_BEHIND_SECONDS", 0.2)
    monkeypatch.setattr(eventlog, "USERS_PER_COMMIT", 1)  # one backlog per commit
    cids = await _chats(store)
    await _send(store, cids, 1, 10)
    events, journal = _on_disk(store.path)
    assert journal > 0 and events < 6 * 11, "entries were written with their batch"
    assert events + len(store.unwritten) == 6 * 11
    # Every user sees its whole log, from anywhere in it, while it is unwritten.
    for user in USERS:
        assert await _cursors(store, user) == list(range(1, 12))
        assert await _cursors(store, user, 7) == list(range(8, 12))
        assert await store.current_cursor(user) == 11
    await asyncio.sleep(0.25)
    # Each later commit writes one due backlog; reads stay whole meanwhile.
    for i in range(11, 17):
        await _send(store, cids[:1], i, 1)
        assert await _cursors(store, USERS[1]) == list(range(1, i + 2))
        assert await _cursors(store, USERS[4]) == list(range(1, 12))
    events, journal = _on_disk(store.path)
    assert events >= 6 * 11, "every backlog due was written back"
    assert journal <= 6, "journal rows whose entries are all written are deleted"
    assert len(store.unwritten.after(USERS[4], 0)) == 0
    assert await store.current_cursor(USERS[0]) == 17


async def test_a_reopened_store_writes_the_journal_back_and_cursors_go_on(
    tmp_path: Path,
) -> None:
    store = await _opened(tmp_path / "parley.db")
    for user in USERS:
        await store.create_user(UserRecord(user, user, user, "x", 0))
    cids = await _chats(store)
    await _send(store, cids, 1, 5)
    await store.close()  # as after kill -9: the entries are in the journal only
    events, journal = _on_disk(store.path)
    assert events == 0 and journal > 0
    reopened = await _opened(tmp_path / "parley.db")
    try:
        assert _on_disk(reopened.path) == (6 * 6, 0)
        await _send(reopened, cids, 6, 2)
        for user in USERS:
            events_ = await reopened.read_events(user, 0, 500)
            assert [e.cursor for e in events_] == list(range(1, 9))
            assert [e.message.seq for e in events_[1:]] == list(range(1, 8))  # type: ignore[attr-defined]
    finally:
        await reopened.close()


async def test_a_failed_commit_writes_the_journal_back_before_it_retries(
    store: SqliteStore,
) -> None:
    cids = await _chats(store)
    await _send(store, cids, 1, 3)
    blocker = sqlite3.connect(store.path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    later = asyncio.ensure_future(_send(store, cids, 4, 3))
    await asyncio.sleep(0.3)  # commits fail meanwhile; the writer rolls back
    blocker.execute("ROLLBACK")
    blocker.close()
    await asyncio.wait_for(later, 30)
    # Cursors were reloaded from the disk the journal was written back to:
    # they go on from where they were, with no gap and no repeat.
    for user in USERS:
        assert await _cursors(store, user) == list(range(1, 8))
    events, _ = _on_disk(store.path)
    assert events >= 6 * 4, "the journal was written back whole"
    assert events + len(store.unwritten) == 6 * 7
    # The loop's copy followed: of what it holds, only the later sends' entries.
    for user in USERS:
        assert [row[1] for row in store.unwritten.after(user, 0)] in ([], [5, 6, 7])
