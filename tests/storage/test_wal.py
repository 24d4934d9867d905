"""The WAL off the writer's path: nothing is acknowledged or read back before
the sync that makes it durable, the writer goes on committing while a sync
waits, and the checkpointer, at the lowest CPU priority, keeps the WAL from growing
without end."""

from __future__ import annotations

import asyncio
import ctypes
import mmap
import os
import sqlite3
import struct
import sys
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from parley.storage import wal
from parley.storage.base import UserRecord
from parley.storage.sqlite import SqliteStore


class GatedSync:
    """fdatasync that waits while the gate is closed, counting its calls."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.open.set()
        self.calls = 0

    def __call__(self, fd: int) -> None:
        self.calls += 1
        self.open.wait()
        os.fdatasync(fd)


async def _opened(path: Path, sync: Callable[[int], None], users: list[str]) -> SqliteStore:
    store = SqliteStore(path, wal_sync=sync)
    await store.open()
    for user in users:
        await store.create_user(UserRecord(user, user, user, "x", 0))
    return store


@pytest.fixture
async def gated(tmp_path: Path) -> AsyncIterator[tuple[SqliteStore, GatedSync]]:
    sync = GatedSync()
    store = await _opened(tmp_path / "parley.db", sync, ["u_alice", "u_bob"])
    yield store, sync
    sync.open.set()
    await asyncio.wait_for(store.close(), 10)


async def test_acks_and_reads_wait_for_the_sync_while_the_writer_goes_on(
    gated: tuple[SqliteStore, GatedSync],
) -> None:
    store, sync = gated
    cid = (await store.open_direct("c1", "u_alice", "u_bob", 0)).conversation.conversation_id
    commits: list[int] = []
    store.on_commit = lambda size, _seconds, _waited: commits.append(size)
    sync.open.clear()
    first = store.append_message(cid, "u_alice", "k1", "one", "m1", 1)
    while not commits:  # noqa: ASYNC110 - committed; now its sync waits at the gate
        await asyncio.sleep(0.005)
    # The writer does not wait for that sync: later writes commit meanwhile.
    later = []
    for i in range(2, 6):
        later.append(store.append_message(cid, "u_alice", f"k{i}", f"m{i}", f"m{i}", i))
        while len(commits) < i:  # noqa: ASYNC110 - set on the writer thread
            await asyncio.sleep(0.005)
    # A reader thread can see the committed rows, but must not return them yet.
    read = asyncio.ensure_future(store.read_events("u_bob", 0, 100))
    await asyncio.sleep(0.2)
    assert not first.done() and not any(f.done() for f in later)
    assert not read.done(), "a read returned rows that were not yet durable"
    calls_while_closed = sync.calls
    sync.open.set()
    outcomes = await asyncio.wait_for(asyncio.gather(first, *later), 10)
    assert [o.message.seq for o in outcomes] == [1, 2, 3, 4, 5]
    events = await asyncio.wait_for(read, 10)
    assert [e.cursor for e in events][-5:] == [2, 3, 4, 5, 6]
    # One sync made the four later batches durable together.
    assert sync.calls - calls_while_closed <= 2


async def test_the_checkpointer_restarts_the_wal_and_nothing_is_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wal, "RESTART_PAGES", 100)
    monkeypatch.setattr(wal, "CHECKPOINT_INTERVAL", 0.01)
    path = tmp_path / "parley.db"
    users = [f"u_{i}" for i in range(20)]
    store = await _opened(path, os.fdatasync, ["u_alice", *users])
    conversations = [
        (await store.open_direct(f"c{i}", "u_alice", u, 0)).conversation.conversation_id
        for i, u in enumerate(users)
    ]

    def restarts() -> int:
        # The WAL header's checkpoint sequence number counts restarts.
        with open(f"{path}-wal", "rb") as f:
            return int(struct.unpack(">I", f.read(16)[12:16])[0])

    (checkpointer,) = [t for t in threading.enumerate() if t.name == "sqlite-checkpoint"]
    assert checkpointer.native_id is not None
    for _ in range(100):  # it lowers its own priority when it starts
        if os.getpriority(os.PRIO_PROCESS, checkpointer.native_id) == wal.CHECKPOINTER_NICE:
            break
        await asyncio.sleep(0.01)
    assert os.getpriority(os.PRIO_PROCESS, checkpointer.native_id) == wal.CHECKPOINTER_NICE
    before = restarts()
    sent = 0
    for round_ in range(60):
        await asyncio.gather(
            *(
                store.append_message(
                    cid, "u_alice", f"k{round_}", f"b{round_}", f"m{round_}.{i}", 1
                )
                for i, cid in enumerate(conversations)
            )
        )
        sent += len(conversations)
        await asyncio.sleep(0.005)
    assert restarts() - before >= 2, "the WAL was never restarted"
    await asyncio.wait_for(store.close(), 10)

    reopened = await _opened(path, os.fdatasync, [])
    try:
        total = 0
        for cid in conversations:
            page, _ = await reopened.get_messages(cid, before=None, after=0, limit=100)
            assert [m.seq for m in page] == list(range(1, 61))
            total += len(page)
        assert total == sent
    finally:
        await reopened.close()


def _frame_pages(path: Path, frames: int, page_size: int) -> list[int]:
    """The database page each of the WAL's first frames holds, read from the
    frames' own headers in the WAL file rather than from the wal-index."""
    data = Path(f"{path}-wal").read_bytes()
    frame = wal.WAL_FRAME_HEADER + page_size
    return [
        int(struct.unpack_from(">I", data, wal.WAL_HEADER + i * frame)[0]) for i in range(frames)
    ]


def test_the_wal_index_names_the_page_of_every_frame(tmp_path: Path) -> None:
    path = tmp_path / "index.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in ("page_size=512", "journal_mode=WAL", "wal_autocheckpoint=0", "synchronous=OFF"):
        conn.execute(f"PRAGMA {pragma}")
    conn.execute("CREATE TABLE t (x BLOB)")
    index = wal.WalIndex(path)
    try:
        # Into the wal-index's third block: its first holds fewer page numbers.
        third_block = wal.WAL_INDEX_FIRST_BLOCK_PAGES + wal.WAL_INDEX_BLOCK_PAGES
        while index.last_frame() < third_block + 300:
            conn.execute("INSERT INTO t VALUES (randomblob(2000))")
        last = index.last_frame()
        expected = _frame_pages(path, last, 512)
        assert len(set(expected)) > 1000
        assert index.pages(1, last) == expected
        for first, end in [(4000, 4100), (4062, 4063), (third_block - 5, third_block + 5)]:
            assert index.pages(first, end) == expected[first - 1 : end]
        assert index.backfilled() == 0
        _busy, _frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        assert index.backfilled() == copied == last
        # All copied: the next write restarts the WAL, which a new salt tells.
        generation = index.generation()
        conn.execute("INSERT INTO t VALUES (randomblob(2000))")
        assert index.last_frame() < last and index.generation() != generation
    finally:
        index.close()
        conn.close()


async def test_each_round_writes_back_the_pages_it_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The checkpointer writes the database pages it copied back to disk a few
    # at a time, before its fdatasync, so that WAL syncs do not queue behind
    # the whole round. Over its rounds, that is every frame's page, in order.
    monkeypatch.setattr(wal, "CHECKPOINT_INTERVAL", 0.01)
    written: list[int] = []
    write_back = wal.write_back

    def recording(fd: int, pages: list[int], page_size: int) -> None:
        written.extend(pages)
        write_back(fd, pages, page_size)

    monkeypatch.setattr(wal, "write_back", recording)
    path = tmp_path / "parley.db"
    store = await _opened(path, os.fdatasync, ["u_alice", "u_bob"])
    index = wal.WalIndex(path)
    try:
        cid = (await store.open_direct("c1", "u_alice", "u_bob", 0)).conversation.conversation_id
        for i in range(40):
            await store.append_message(cid, "u_alice", f"k{i}", "x" * 3000, f"m{i}", 1)
        for _ in range(300):
            last = index.last_frame()
            if index.backfilled() == last and written[-last:] == _frame_pages(path, last, 4096):
                break
            await asyncio.sleep(0.01)
        assert index.backfilled() == last > 0
        # The pages of this WAL's frames, last: if the writer restarted the WAL
        # meanwhile (then this WAL may hold only a few frames), the rounds
        # before wrote back those of the frames it replaced.
        assert written[-last:] == _frame_pages(path, last, 4096)
        assert len(written) > 100
    finally:
        index.close()
        await asyncio.wait_for(store.close(), 10)
    if sys.platform == "linux":
        fd = os.open(path, os.O_RDONLY)
        try:  # the binding works: a failing call would go unnoticed in write_back
            assert wal.SYNC_FILE_RANGE is not None
            flags = wal.SYNC_FILE_RANGE_WAIT_WRITE_WAIT
            assert wal.SYNC_FILE_RANGE(fd, 0, 0, flags) == 0, os.strerror(ctypes.get_errno())
            assert wal.SYNC_FILE_RANGE(fd, -1, 0, flags) == -1  # EINVAL reaches us
        finally:
            os.close(fd)


def _resident_pages(path: Path) -> list[bool]:
    """Which of the file's pages are in the page cache (mincore(2) on a mapping)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = path.stat().st_size
    pages = -(-size // mmap.PAGESIZE)
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        try:
            vector = (ctypes.c_ubyte * pages)()
            assert libc.mincore(addr, size, vector) == 0, os.strerror(ctypes.get_errno())
            return [bool(v & 1) for v in vector]
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)


@pytest.mark.skipif(sys.platform != "linux", reason="posix_fadvise readahead is Linux's")
async def test_the_wal_ahead_of_the_writer_is_brought_into_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A frame overwriting part of a page that left the page cache makes the
    # kernel read that page inside the writer's COMMIT; a readahead after each
    # commit reads the WAL's next stretch in first.
    monkeypatch.setattr(wal, "CHECKPOINT_INTERVAL", 60)  # the test checkpoints itself
    monkeypatch.setattr(wal, "READ_AHEAD_BYTES", 40 * mmap.PAGESIZE)
    path = tmp_path / "parley.db"
    wal_path = Path(f"{path}-wal")
    store = await _opened(path, os.fdatasync, ["u_alice", "u_bob"])
    try:
        cid = (await store.open_direct("c1", "u_alice", "u_bob", 0)).conversation.conversation_id
        sent = 0

        async def send(n: int) -> None:
            nonlocal sent
            sends = []
            for _ in range(n):
                sent += 1
                sends.append(
                    store.append_message(cid, "u_alice", f"k{sent}", "x" * 2000, f"m{sent}", 1)
                )
            await asyncio.gather(*sends)

        def last_frame() -> int:
            # The wal-index header in the -shm file (https://www.sqlite.org/walformat.html).
            with open(f"{path}-shm", "rb") as shm:
                return int(struct.unpack_from("=I", shm.read(20), wal.WAL_INDEX_LAST_FRAME)[0])

        # Grow the WAL to 300 frames and copy them all back: the next write
        # restarts the WAL from its start. 50 frames on, what follows is old
        # WAL, which the writer overwrites next.
        while os.path.getsize(wal_path) < 300 * 4120:  # noqa: ASYNC240 - a stat
            await send(20)
        with sqlite3.connect(path) as conn:
            wal.checkpoint(conn)
        await send(5)
        while last_frame() < 50:
            await send(5)
        assert last_frame() < 150, "the writer did not go back to the WAL's start"
        await asyncio.sleep(0.3)  # the last readahead is over; the next waits for a commit
        # Drop the whole WAL from the page cache (its pages are clean once synced).
        fd = os.open(wal_path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        start, ahead = slice(0, 30), slice(60, 300)
        resident = _resident_pages(wal_path)
        assert not any(resident[start] + resident[ahead])
        await send(1)  # wakes the readahead
        first = (wal.WAL_HEADER + last_frame() * 4120) // mmap.PAGESIZE + 1
        ahead = slice(first, first + 30)  # past every page the writer has written to
        for _ in range(200):
            resident = _resident_pages(wal_path)
            if all(resident[ahead]) and all(resident[start]):
                break
            await asyncio.sleep(0.01)
        assert all(resident[ahead]), "the WAL after the writer's last frame was not read in"
        assert all(resident[start]), "the WAL's start, where it restarts, was not read in"
    finally:
        await asyncio.wait_for(store.close(), 10)
