"""The SQLite store's promises under failure: retried in order, no gaps, one bad write alone."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from parley.storage.base import UserRecord
from parley.storage.sqlite import SqliteStore


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "parley.db", busy_timeout_ms=20)
    await s.open()
    for name in ("alice", "bob"):
        await s.create_user(UserRecord(f"u_{name}", name, name, "x", 0))
    yield s
    await s.close()


async def _direct(store: SqliteStore) -> str:
    outcome = await store.open_direct("c1", "u_alice", "u_bob", 0)
    return outcome.conversation.conversation_id


async def test_a_locked_database_delays_writes_but_loses_and_skips_nothing(
    store: SqliteStore,
) -> None:
    cid = await _direct(store)
    await store.append_message(cid, "u_alice", "k0", "first", "m0", 1)
    # Another process holds the write lock: every commit attempt fails meanwhile.
    blocker = sqlite3.connect(store.path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    futures = [
        store.append_message(cid, "u_alice", f"k{i}", f"body {i}", f"m{i}", i) for i in range(1, 21)
    ]
    done, _ = await asyncio.wait(futures, timeout=0.5)
    assert not done, "nothing may complete while the database refuses to commit"
    blocker.execute("ROLLBACK")
    blocker.close()
    outcomes = await asyncio.wait_for(asyncio.gather(*futures), 30)
    assert [o.message.seq for o in outcomes] == list(range(2, 22))
    page, has_more = await store.get_messages(cid, before=None, after=0, limit=200)
    assert [m.seq for m in page] == list(range(1, 22)) and not has_more
    events = await store.read_events("u_bob", 0, 100)
    assert [e.cursor for e in events] == list(range(1, 23))  # conversation + 21 messages


async def test_the_queue_wait_shows_how_long_a_stalled_writer_kept_writes_waiting(
    store: SqliteStore,
) -> None:
    cid = await _direct(store)
    batches: list[tuple[int, float]] = []
    store.on_commit = lambda size, _seconds, waited: batches.append((size, waited))
    blocker = sqlite3.connect(store.path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    # The writer takes the first write and retries it while the lock is held;
    # the second waits in the queue behind it.
    first = store.append_message(cid, "u_alice", "k1", "one", "m1", 1)
    await asyncio.sleep(0.1)
    second = store.append_message(cid, "u_alice", "k2", "two", "m2", 2)
    await asyncio.sleep(0.4)
    blocker.execute("ROLLBACK")
    blocker.close()
    await asyncio.wait_for(asyncio.gather(first, second), 30)
    assert len(batches) == 2, batches
    (first_size, first_wait), (second_size, second_wait) = batches
    assert first_size == second_size == 1
    assert first_wait < 0.1  # taken up at once; its retries count as commit time
    assert second_wait >= 0.35  # queued 0.1 s in, taken up after the lock went at 0.5 s


async def test_a_constraint_violation_reloads_state_and_spares_the_batch(
    store: SqliteStore,
) -> None:
    cid = await _direct(store)
    await store.append_message(cid, "u_alice", "k1", "one", "m1", 1)
    # Someone wrote seq 2 behind the writer's back: the next append collides with it.
    intruder = sqlite3.connect(store.path, isolation_level=None)
    intruder.execute(
        "INSERT INTO messages VALUES (?, 2, 'mx', 'u_bob', 'kx', 'intruder', 2)", (cid,)
    )
    intruder.close()
    colliding = store.append_message(cid, "u_alice", "k2", "two", "m2", 3)
    unrelated = store.add_contact("u_alice", "u_bob", 3)  # same batch
    outcome, contact = await asyncio.gather(colliding, unrelated)
    # The batch was rolled back and rerun write by write from state reloaded
    # from disk: the message lands after the intruder's, the other write too.
    assert outcome.message.seq == 3 and contact is None
    assert [u.user_id for u in await store.list_contacts("u_alice")] == ["u_bob"]
    page, _ = await store.get_messages(cid, before=None, after=0, limit=10)
    assert [(m.seq, m.body) for m in page] == [(1, "one"), (2, "intruder"), (3, "two")]


async def test_watermark_moves_in_one_batch_become_one_receipt(store: SqliteStore) -> None:
    cid = await _direct(store)
    for i in range(1, 6):
        await store.append_message(cid, "u_alice", f"k{i}", f"m{i}", f"m{i}", i)
    blocker = sqlite3.connect(store.path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # the writer stalls on its next batch...
    first = store.move_watermark(cid, "u_bob", "delivered", 1)

    def writer_took_it() -> None:  # ...once it has taken `first`; the rest queue behind it
        while not store._queue.empty():
            time.sleep(0.001)

    await asyncio.wait_for(asyncio.to_thread(writer_took_it), 10)
    moves = [store.move_watermark(cid, "u_bob", "delivered", s) for s in (4, 2, 3)]
    blocker.execute("ROLLBACK")
    blocker.close()
    outcomes = await asyncio.wait_for(asyncio.gather(first, *moves), 30)
    assert [len(o.events) for o in outcomes] == [2, 0, 0, 2]
    assert {e.seq for _, e in outcomes[3].events} == {4}  # the highest, not the last sent
    conv = await store.get_conversation(cid)
    assert conv is not None and conv.members["u_bob"].delivered_seq == 4
