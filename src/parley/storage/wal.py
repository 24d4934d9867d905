"""The SQLite store's WAL, kept off the writer's path: one thread makes commits
durable, another copies them back into the database.

The writer commits with `synchronous=NORMAL`: COMMIT writes the batch's frames
to the WAL and returns without waiting for the disk. `WalSyncer` then fdatasyncs
the WAL, and only then are the batch's writes acknowledged. A sync covers every
batch committed before it started, so while one sync waits on a slow disk the
writer goes on committing, and the next sync makes all of them durable at
once. With `synchronous=FULL` each COMMIT waited for its own sync, and one slow
fsync (3-4 ms when a checkpoint's writes were in flight) held up every write
queued behind it.

What is acknowledged is as durable as with FULL: its frames, and the WAL header
before them, were synced. What was committed but not yet synced can be lost on
power loss (not on a crash of the process: the kernel still has it), and was
never acknowledged; SQLite's recovery ends the WAL at the last complete commit
whose frames made it to disk.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sqlite3
import struct
import sys
import threading
import time
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Seconds between the checkpointer's rounds while writes keep coming.
CHECKPOINT_INTERVAL = 0.1
#: WAL frames past which the writer is asked to help restart the WAL from its
#: start (512 MiB at 4 KiB pages; the file keeps that size and is reused).
#: The writer's help stalls it for its checkpoint's two fsyncs (6-9 ms on a
#: busy disk), which at 16,384 frames came every ~0.4 s at 5k msg/s and put
#: 40-60 queued writes into the tail each time; traced, most episodes above
#: p99 began with one. Interleaved, 4 pairs: p99 8.3-9.3 against 10.2-11.9 ms.
RESTART_PAGES = 131_072
#: Seconds between readaheads while writes keep coming, and the bytes of the
#: WAL each brings into memory: at 5k msg/s the writer writes ~7 MB meanwhile.
#: Each costs ~0.1-0.2 ms of CPU (0.9 % of the core at 40 per second, measured).
READ_AHEAD_INTERVAL = 0.05
READ_AHEAD_BYTES = 16 << 20
#: Sizes of the WAL file's header and of each frame's header (SQLite's format).
WAL_HEADER, WAL_FRAME_HEADER = 32, 24
#: The wal-index in the -shm file (https://www.sqlite.org/walformat.html): where
#: its header holds the last valid frame, the WAL's first salt (which each
#: restart of the WAL changes) and the frames already copied into the database;
#: then the 32 KiB blocks that map frames to database pages, the first holding
#: 4,062 page numbers after the headers, every other one 4,096 from its start.
WAL_INDEX_LAST_FRAME, WAL_INDEX_SALT, WAL_INDEX_BACKFILL = 16, 32, 96
WAL_INDEX_BLOCK, WAL_INDEX_FIRST_PAGES = 32_768, 136
WAL_INDEX_BLOCK_PAGES = 4_096
WAL_INDEX_FIRST_BLOCK_PAGES = WAL_INDEX_BLOCK_PAGES - WAL_INDEX_FIRST_PAGES // 4
#: Database pages the checkpointer writes back and waits for at a time. Written
#: back all at once by its fdatasync (~4 MB per round at 5k msg/s), they queued
#: ahead of the syncer's small WAL syncs on this VM's disk and made them wait:
#: traced, the tail episodes came every ~0.1 s, with the rounds. In steps of 16
#: pages (64 KiB) a WAL sync waits behind one step at most: interleaved at 5k
#: msg/s, p99 send->deliver 4.1-4.4 ms against 5.2-6.8 (docs/bench, ninth session).
WRITEBACK_PAGES = 16
#: The checkpointer's niceness: it yields the core to the event loop, the writer
#: and the syncer whenever they have work (Linux applies it to the one thread).
CHECKPOINTER_NICE = 19
#: The writer checkpoints by itself only past this many WAL frames: a backstop
#: in case the checkpointer cannot keep up (a long read pinning the WAL).
WRITER_CHECKPOINT_PAGES = 2 * RESTART_PAGES


class WalSyncer(Generic[T]):
    """Syncs the WAL after commits and hands the committed batches on, in
    commit order, once a sync covers them."""

    def __init__(
        self,
        wal: Path,
        on_durable: Callable[[list[T], float], None],
        sync: Callable[[int], None] = os.fdatasync,
    ) -> None:
        """`on_durable(items, sync_seconds)` runs on the syncer's thread.
        `sync` defaults to `os.fdatasync`, which is what SQLite itself calls on
        Linux; tests pass one that can be held closed."""
        # Make the WAL's directory entry durable once: syncing the file alone
        # does not, and the file lives as long as the writer's connection.
        dir_fd = os.open(wal.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self._fd = os.open(wal, os.O_RDONLY)
        self._on_durable = on_durable
        self._sync = sync
        self._pending: list[T] = []
        self._wanted = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="sqlite-sync", daemon=True)
        self._thread.start()

    def submit(self, item: T) -> None:
        """Called by the writer right after a COMMIT."""
        with self._wanted:
            self._pending.append(item)
            self._wanted.notify()

    def stop(self) -> None:
        """Sync and hand on what is pending, then stop."""
        with self._wanted:
            self._stopping = True
            self._wanted.notify()
        self._thread.join()
        os.close(self._fd)

    def _run(self) -> None:
        while True:
            with self._wanted:
                while not self._pending and not self._stopping:
                    self._wanted.wait()
                if not self._pending:
                    return
                items, self._pending = self._pending, []
            started = time.perf_counter()
            sync_or_stop(self._sync, self._fd, "the WAL")
            self._on_durable(items, time.perf_counter() - started)


def sync_or_stop(sync: Callable[[int], None], fd: int, what: str) -> None:
    """Sync, or stop the process if that fails. After a failed fsync the kernel
    may have dropped the pages it could not write, and a later sync can report
    success without them (PostgreSQL's "fsyncgate"): nothing written since the
    last good sync can be trusted. SQLite's recovery on restart finds what the
    disk really holds, and nothing unsynced was acknowledged."""
    try:
        sync(fd)
    except OSError:
        log.critical("fsync of %s failed; stopping so nothing unsynced is trusted", what)
        os._exit(70)


class WalIndex:
    """Reads SQLite's wal-index (the -shm file) for the threads that work
    beside the writer: where the WAL ends, how far checkpoints have copied it,
    and which database page each frame holds. A read racing SQLite's update of
    it can be stale or torn, so what is read only guides advice to the kernel,
    never what is made durable."""

    def __init__(self, database: Path) -> None:
        self._fd = os.open(f"{database}-shm", os.O_RDONLY)

    def close(self) -> None:
        os.close(self._fd)

    def _u32(self, offset: int) -> int:
        data = os.pread(self._fd, 4, offset)
        return int(struct.unpack("=I", data)[0]) if len(data) == 4 else 0

    def last_frame(self) -> int:
        """The WAL's last valid frame (frames count from 1)."""
        return self._u32(WAL_INDEX_LAST_FRAME)

    def backfilled(self) -> int:
        """Frames already copied into the database."""
        return self._u32(WAL_INDEX_BACKFILL)

    def generation(self) -> int:
        """The WAL's first salt: it changes each time the WAL restarts."""
        return self._u32(WAL_INDEX_SALT)

    def pages(self, first: int, last: int) -> list[int]:
        """The database pages frames `first`..`last` hold, in frame order."""
        pages: list[int] = []
        frame = first
        while frame <= last:
            if frame <= WAL_INDEX_FIRST_BLOCK_PAGES:
                start, end = WAL_INDEX_FIRST_PAGES + (frame - 1) * 4, WAL_INDEX_FIRST_BLOCK_PAGES
            else:
                block, slot = divmod(frame - WAL_INDEX_FIRST_BLOCK_PAGES - 1, WAL_INDEX_BLOCK_PAGES)
                start = (block + 1) * WAL_INDEX_BLOCK + slot * 4
                end = WAL_INDEX_FIRST_BLOCK_PAGES + (block + 1) * WAL_INDEX_BLOCK_PAGES
            count = min(last, end) - frame + 1
            data = os.pread(self._fd, count * 4, start)
            numbers = array("I", data[: len(data) - len(data) % 4])
            if len(numbers) < count:  # past the file's end: the WAL was restarted
                break
            pages.extend(numbers)
            frame += count
        return pages


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    if sys.platform != "linux":
        return None
    function = ctypes.CDLL(None, use_errno=True).sync_file_range
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


#: Linux's sync_file_range(2): wait for writes already under way, start the
#: range's, wait for them; None elsewhere, where the round's fdatasync does it all.
SYNC_FILE_RANGE = _sync_file_range()
SYNC_FILE_RANGE_WAIT_WRITE_WAIT = 1 | 2 | 4


def write_back(fd: int, pages: list[int], page_size: int) -> None:
    """Write the database's dirty `pages` to disk a few at a time, waiting for
    each step, so that no sync queued meanwhile waits behind all of them. Only
    pacing: errors are left to the fdatasync that follows, which decides."""
    if SYNC_FILE_RANGE is None:
        return
    ordered = sorted(set(pages) - {0})  # 0: a slot read before SQLite filled it
    for step in range(0, len(ordered), WRITEBACK_PAGES):
        low, high = ordered[step], ordered[min(step + WRITEBACK_PAGES, len(ordered)) - 1]
        offset, length = (low - 1) * page_size, (high - low + 1) * page_size
        SYNC_FILE_RANGE(fd, offset, length, SYNC_FILE_RANGE_WAIT_WRITE_WAIT)


class Checkpointer:
    """Copies the WAL back into the database on a thread of its own.

    A checkpoint writes every page the WAL changed into the database file and
    fsyncs it: 5-6 ms at 5k msg/s. Run by the writer (SQLite's automatic
    checkpoint), it held up every write queued behind it. Here it runs beside
    the writer in PASSIVE mode, which takes no lock the writer needs.

    SQLite restarts the WAL from its start only when a write begins after every
    frame has been copied, which under steady load a round running beside the
    writer never achieves. So once the WAL is long, `restart_due` asks the
    writer to run one checkpoint itself after its next commit: it copies only
    the frames since this round, and the write after it restarts the WAL.

    SQLite syncs the database only after a checkpoint that reached the end of
    the WAL, which under load is only the writer's: it then flushed everything
    the rounds had copied since the last restart (5-6 ms). So each round syncs
    the database itself, and the writer's sync has one round's worth left.
    Before that sync, the round writes back the pages it copied a few at a time
    (`write_back`), so that the syncer's WAL syncs queue behind a step of it,
    not behind the whole round.
    """

    def __init__(self, conn: sqlite3.Connection, database: Path) -> None:
        self._conn = conn
        self._db_fd = os.open(database, os.O_RDONLY)
        self._index = WalIndex(database)
        self._page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        self._wanted = threading.Event()
        self._stop = threading.Event()
        #: Set here, cleared by the writer when it has run its short checkpoint.
        self.restart_due = False
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Called by the writer after each commit: there is something to copy."""
        self._wanted.set()

    def stop(self) -> None:
        self._stop.set()  # before waking, so that the wake-up finds it
        self._wanted.set()
        self._thread.join()
        self._conn.close()
        self._index.close()
        os.close(self._db_fd)

    def _run(self) -> None:
        if sys.platform == "linux":
            # Its rounds are bursts of a few ms of CPU on the server's core;
            # interleaved at 5k msg/s, p99 5.8-6.5 ms niced against 6.9-8.0 not.
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), CHECKPOINTER_NICE)
        while True:
            self._wanted.wait()
            # Cleared before the pause: a commit during it or the round wakes the next.
            self._wanted.clear()
            if self._stop.wait(CHECKPOINT_INTERVAL):
                return
            generation, copied_before = self._index.generation(), self._index.backfilled()
            try:
                frames = checkpoint(self._conn)
            except sqlite3.Error:
                # Nothing is lost: the frames stay in the WAL for the next round.
                log.exception("checkpoint failed; retrying on the next round")
                continue
            copied = self._index.backfilled()
            # A new salt: the writer restarted the WAL meanwhile, and its frames
            # count from 1 again.
            first = 1 if self._index.generation() != generation else copied_before + 1
            write_back(self._db_fd, self._index.pages(first, copied), self._page_size)
            sync_or_stop(os.fdatasync, self._db_fd, "the database")
            if frames >= RESTART_PAGES:
                self.restart_due = True


class WalReadahead:
    """Keeps the stretch of the WAL the writer overwrites next in memory.

    A reused WAL is overwritten in place, and a frame is 24 bytes longer than a
    page, so every frame write covers part of a file page. Where that page has
    left the page cache (on this VM a reclaim daemon pages out file pages it
    samples as idle, whatever the process), the kernel reads it first, inside
    the writer's COMMIT: `perf` counted 130-4,500 such reads in a minute-long
    run, and COMMITs of up to 15 ms were traced to them. This thread asks for that
    stretch ahead of the writer, and for the WAL's start, where the writer goes
    on a restart (an asynchronous readahead, ~0.1 ms where the pages are cached).

    It has a thread of its own, at normal priority, because the checkpointer's
    rounds, niced, come too seldom when the core is busy: run from there, the
    readahead left as many reads as before.
    """

    def __init__(self, database: Path, page_size: int) -> None:
        self._wal_fd = os.open(f"{database}-wal", os.O_RDONLY)
        self._index = WalIndex(database)
        self._frame_bytes = WAL_FRAME_HEADER + page_size
        self._wanted = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-readahead", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Called by the writer after each commit."""
        self._wanted.set()

    def stop(self) -> None:
        self._stop.set()
        self._wanted.set()
        self._thread.join()
        self._index.close()
        os.close(self._wal_fd)

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            if self._stop.is_set():
                return
            self._read_ahead()
            if self._stop.wait(READ_AHEAD_INTERVAL):
                return

    def _read_ahead(self) -> None:
        ahead = WAL_HEADER + self._index.last_frame() * self._frame_bytes
        os.posix_fadvise(self._wal_fd, ahead, READ_AHEAD_BYTES, os.POSIX_FADV_WILLNEED)
        os.posix_fadvise(self._wal_fd, 0, READ_AHEAD_BYTES, os.POSIX_FADV_WILLNEED)


def checkpoint(conn: sqlite3.Connection) -> int:
    """Copy what the WAL holds into the database (PASSIVE: waits for no one);
    returns the frames in the WAL."""
    _busy, frames, _copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return int(frames)
