"""The redo log: acknowledged batches survive a crash that SQLite did not see."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

from parley.protocol.models import ReceiptEvent
from parley.storage.redo import RedoLog
from parley.storage.sqlite import SqliteStore


def _reopen(path: Path, applied: int) -> list[tuple[int, bytes]]:
    log = RedoLog(path)
    try:
        return log.open(applied)
    finally:
        log.close()


def test_records_after_the_applied_batch_come_back_in_order(tmp_path: Path) -> None:
    log = RedoLog(tmp_path / "db-redo")
    assert log.open(0) == []
    for batch in range(1, 6):
        log.append(batch, f"writes {batch}".encode())
    log.close()
    assert _reopen(tmp_path / "db-redo", 0) == [(b, f"writes {b}".encode()) for b in range(1, 6)]
    assert _reopen(tmp_path / "db-redo", 3) == [(4, b"writes 4"), (5, b"writes 5")]
    assert _reopen(tmp_path / "db-redo", 5) == []


def test_a_torn_record_and_what_follows_it_are_not_redone(tmp_path: Path) -> None:
    log = RedoLog(tmp_path / "db-redo")
    log.open(0)
    for batch in (1, 2, 3):
        log.append(batch, b"x" * 100)
    log.close()
    data = bytearray((tmp_path / "db-redo-0").read_bytes())
    second = 8 + 8 + 100  # header, batch, payload of the first record
    data[second + 20] ^= 0xFF  # a crash tore the second record
    (tmp_path / "db-redo-0").write_bytes(bytes(data))
    assert [b for b, _ in _reopen(tmp_path / "db-redo", 0)] == [1]


def test_files_take_turns_once_sqlite_holds_their_batches(tmp_path: Path) -> None:
    path = tmp_path / "db-redo"
    log = RedoLog(path)
    log.open(0)
    log.append(1, b"a" * 10)
    log.append(2, b"b" * 10)
    log.held_up_to(1)  # the first file still holds batch 2: the second one starts
    log.append(3, b"c" * 10)
    log.held_up_to(2)  # the first file is all held: writing moves back to it
    log.append(4, b"d" * 10)
    log.close()
    # Batch 4 overwrote batch 1 in the first file; batch 2's stale record follows.
    assert _reopen(path, 2) == [(3, b"c" * 10), (4, b"d" * 10)]
    assert _reopen(path, 3) == [(4, b"d" * 10)]
    # SQLite restored to a state no record continues from: nothing is redone.
    assert _reopen(path, 0) == []


CRASH_AFTER_ACKS = """
import asyncio, os, sys
from pathlib import Path
import parley.storage.sqlite as sqlite
from parley.storage.base import UserRecord

sqlite.APPLY_EVERY = sqlite.APPLY_WHEN_IDLE = 3600.0  # SQLite never commits

async def main() -> None:
    store = sqlite.SqliteStore(Path(sys.argv[1]))
    await store.open()
    for name in ("alice", "bob"):
        await store.create_user(UserRecord(f"u_{name}", name, name, "x", 0))
    await store.open_direct("c1", "u_alice", "u_bob", 0)
    sends = [
        store.append_message("c1", "u_alice", f"k{i}", f"body {i}", f"m{i}", i)
        for i in range(1, 51)
    ]
    await asyncio.gather(*sends)
    await store.move_watermark("c1", "u_bob", "read", 50)
    print("acked", flush=True)
    os._exit(0)  # no close, no commit: a crash right after the acks

asyncio.run(main())
"""


def _crash_after_acks(db: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CRASH_AFTER_ACKS), str(db)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.strip() == "acked", done.stderr


def _delete_database_but_not_its_log(db: Path) -> None:
    for leftover in db.parent.glob(f"{db.name}*"):
        if "redo" not in leftover.name:
            leftover.unlink()


async def test_acked_writes_sqlite_never_committed_are_redone(tmp_path: Path) -> None:
    db = tmp_path / "parley.db"
    _crash_after_acks(db)
    with sqlite3.connect(db) as raw:  # SQLite itself has none of it
        assert raw.execute("SELECT count(*) FROM messages").fetchone() == (0,)
        assert raw.execute("SELECT count(*) FROM users").fetchone() == (0,)

    store = SqliteStore(db)
    await store.open()
    try:
        page, has_more = await store.get_messages("c1", before=None, after=0, limit=100)
        assert [(m.seq, m.body) for m in page] == [(i, f"body {i}") for i in range(1, 51)]
        assert not has_more
        events = await store.read_events("u_alice", 0, 100)
        # conversation, 50 messages, bob's read receipt: gapless cursors
        assert [e.cursor for e in events] == list(range(1, 53))
        assert isinstance(events[-1], ReceiptEvent) and events[-1].seq == 50
        conv = await store.get_conversation("c1")
        assert conv is not None and conv.members["u_bob"].read_seq == 50
        # The counters continue where the acks left them.
        more = await store.append_message("c1", "u_bob", "k1", "reply", "m51", 51)
        assert more.message.seq == 51 and not more.duplicate
        again = await store.append_message("c1", "u_alice", "k7", "resent", "m52", 52)
        assert again.duplicate and again.message.seq == 7
    finally:
        await store.close()
    with sqlite3.connect(db) as raw:  # and now SQLite holds it
        assert raw.execute("SELECT count(*) FROM messages").fetchone() == (51,)


async def test_a_new_database_does_not_redo_a_deleted_ones_log(tmp_path: Path) -> None:
    db = tmp_path / "parley.db"
    _crash_after_acks(db)
    _delete_database_but_not_its_log(db)  # an operator starts over
    store = SqliteStore(db)
    await store.open()
    try:
        assert await store.get_user("u_alice") is None
        assert await store.read_events("u_alice", 0, 10) == []
    finally:
        await store.close()
