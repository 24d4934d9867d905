"""SQLite storage: the embedded default.

One writer thread owns every write. It takes whatever has queued up since its
last commit and commits it as one transaction (group commit). Sequence numbers
and cursors are assigned by that thread from counters it alone owns, inside the
transaction that stores them; a failed commit discards the counters and reloads
them from the database, so a retry assigns the same numbers and no gap appears.

A batch is acknowledged once the WAL holding it is synced, which a thread of
its own does for every batch committed since its last sync (`wal.WalSyncer`):
the writer never waits for the disk. Another thread copies the WAL back into
the database (`wal.Checkpointer`). Users' event-log entries are journaled with
their batch and reach their table later (`eventlog`).

Reads run on a small pool of reader threads, each with its own connection;
WAL lets them read committed data while the writer works. A read returns only
once everything it could have seen is durable.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import sqlite3
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import msgspec

from parley.protocol.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    ParleyError,
    Unavailable,
)
from parley.protocol.models import (
    Conversation,
    ConversationEvent,
    LoggedEvent,
    Message,
    MessageEvent,
    ReceiptEvent,
)
from parley.storage.base import (
    RECENT_MESSAGES,
    Committed,
    ConversationChange,
    ConversationRecord,
    DirectOutcome,
    MemberRecord,
    PushSubscriptionRecord,
    SendOutcome,
    SessionRecord,
    Store,
    UserEvent,
    UserRecord,
)
from parley.storage.cache import ConversationCache, ConversationLists, Place
from parley.storage.eventlog import (
    Backlog,
    EventRow,
    LogChange,
    Unwritten,
    decode_rows,
    encode_rows,
)
from parley.storage.wal import (
    WRITER_CHECKPOINT_PAGES,
    Checkpointer,
    WalReadahead,
    WalSyncer,
    checkpoint,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    user_id TEXT PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sessions (
    token_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    device_name TEXT NOT NULL,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS conversations (
    conversation_id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    title TEXT,
    created_at INTEGER NOT NULL,
    last_seq INTEGER NOT NULL DEFAULT 0,
    last_activity INTEGER NOT NULL,
    direct_key TEXT UNIQUE,
    version INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS conversation_versions (
    conversation_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    snapshot BLOB NOT NULL,
    PRIMARY KEY (conversation_id, version)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS members (
    conversation_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    role TEXT NOT NULL,
    delivered_seq INTEGER NOT NULL DEFAULT 0,
    read_seq INTEGER NOT NULL DEFAULT 0,
    unread INTEGER NOT NULL DEFAULT 0,
    joined_at INTEGER NOT NULL DEFAULT 0,
    left_seq INTEGER,
    left_at INTEGER,
    PRIMARY KEY (conversation_id, user_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS members_by_user ON members (user_id, conversation_id);
CREATE TABLE IF NOT EXISTS contacts (
    owner_id TEXT NOT NULL,
    contact_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (owner_id, contact_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS contacts_by_contact ON contacts (contact_id, owner_id);
CREATE TABLE IF NOT EXISTS push_subscriptions (
    endpoint TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    p256dh TEXT NOT NULL,
    auth TEXT NOT NULL,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS push_by_user ON push_subscriptions (user_id);
CREATE TABLE IF NOT EXISTS last_seen (
    user_id TEXT PRIMARY KEY,
    at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages (
    conversation_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    message_id TEXT NOT NULL,
    sender_id TEXT NOT NULL,
    client_msg_id TEXT NOT NULL,
    body TEXT NOT NULL,
    sent_at INTEGER NOT NULL,
    PRIMARY KEY (conversation_id, seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS messages_idempotency
    ON messages (conversation_id, sender_id, client_msg_id);
CREATE TABLE IF NOT EXISTS events (
    user_id TEXT NOT NULL,
    cursor INTEGER NOT NULL,
    kind TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    payload BLOB,
    PRIMARY KEY (user_id, cursor)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events_journal (
    id INTEGER PRIMARY KEY,
    rows BLOB NOT NULL
);
"""

#: Largest batch one commit takes: bounds the time a batch holds the writer
#: and the latency of the last write in it.
MAX_BATCH = 2048
#: Writes waiting beyond this are refused with 503 instead of growing memory
#: without bound while storage is failing.
MAX_QUEUED = 200_000
#: Backoff between retries of a failed commit: 10 ms doubling to 2 s.
RETRY_FIRST, RETRY_MAX = 0.01, 2.0
READER_THREADS = 4
_MESSAGE_COLUMNS = "conversation_id, seq, message_id, sender_id, client_msg_id, body, sent_at"
_small_json = msgspec.json.Encoder()
_conversation_decoder = msgspec.json.Decoder(Conversation)
_small_json_decoder = msgspec.json.Decoder(dict[str, Any])


def _connect(path: Path, *, readonly: bool, busy_timeout_ms: int) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    # NORMAL: COMMIT does not wait for the disk; `WalSyncer` syncs the WAL before
    # anything is acknowledged, so what is acked survives power loss as with FULL.
    # Checkpoints still sync the WAL before copying and the database after.
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    conn.execute("PRAGMA cache_size=-65536")  # 64 MiB page cache per connection
    if readonly:
        conn.execute("PRAGMA query_only=1")
    return conn


def _message(row: Sequence[Any]) -> Message:
    return Message(
        conversation_id=row[0],
        seq=row[1],
        message_id=row[2],
        sender_id=row[3],
        client_msg_id=row[4],
        body=row[5],
        sent_at=row[6],
    )


class _Op:
    """One queued write: a function run on the writer thread, its future, and
    when it was queued (for the writer's queue-wait metric)."""

    __slots__ = ("args", "fn", "future", "queued_at")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], future: asyncio.Future[Any]):
        self.fn, self.args, self.future = fn, args, future
        self.queued_at = time.perf_counter()


class _Committed:
    """A committed batch on its way to being acknowledged."""

    __slots__ = ("batch", "log", "number", "results", "snapshots")

    def __init__(
        self,
        number: int,
        batch: list[_Op],
        results: list[tuple[bool, Any]],
        snapshots: list[tuple[str, ConversationRecord | None]],
        log: LogChange,
    ) -> None:
        self.number, self.batch, self.results = number, batch, results
        self.snapshots, self.log = snapshots, log


class SqliteStore(Store):
    def __init__(
        self,
        path: Path,
        *,
        busy_timeout_ms: int = 5000,
        wal_sync: Callable[[int], None] = os.fdatasync,
    ) -> None:
        """`busy_timeout_ms`: how long one attempt waits for a lock held by
        another process (a backup, an operator's shell) before it counts as failed.
        `wal_sync`: what makes the WAL durable, given its file descriptor."""
        self.path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._wal_sync = wal_sync
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._queued = 0
        self._writer: threading.Thread | None = None
        self._readers = ThreadPoolExecutor(READER_THREADS, thread_name_prefix="sqlite-read")
        self._local = threading.local()
        self._loop: asyncio.AbstractEventLoop | None = None
        # Owned by the writer thread alone; reloaded from disk after a failed commit.
        self._wconn: sqlite3.Connection | None = None
        self._checkpointer: Checkpointer | None = None
        self._readahead: WalReadahead | None = None
        self._syncer: WalSyncer[_Committed] | None = None
        #: Number of the last batch whose COMMIT has started (writer thread) and
        #: of the last one synced (loop): a read waits until the second has
        #: reached what the first was when it finished.
        self._committing = 0
        self._durable = 0
        self._durable_waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._convs: dict[str, ConversationRecord | None] = {}
        self._cursors: dict[str, int] = {}
        #: Conversations changed by the batch being written; snapshotted at commit.
        self._changed: set[str] = set()
        #: Rows whose in-memory state is ahead of disk until `_flush_state`.
        self._dirty_members: set[tuple[str, str]] = set()
        self._dirty_counters: set[str] = set()
        self._new_events: list[EventRow] = []
        #: Log entries not yet in `events` (see `eventlog`): the writer's, what
        #: this batch did to them, and whether the journal must first be
        #: written back whole (after a rollback).
        self._backlog = Backlog()
        self._log_change = LogChange()
        self._journal_replay_due = False
        # Read on the loop only; filled in commit order from writer snapshots.
        self.cache = ConversationCache()
        self.lists = ConversationLists()
        self.unwritten = Unwritten()
        #: Called on the writer thread with (batch size, commit seconds, seconds
        #: the batch's oldest write waited for the writer); for metrics.
        self.on_commit: Callable[[int, float, float], None] | None = None
        #: Called on the syncer thread with the seconds one WAL sync took; for metrics.
        self.on_sync: Callable[[float], None] | None = None
        #: Called on the loop with the seconds from a batch's sync to completing
        #: its futures (the event-log lag); for metrics.
        self.on_handoff: Callable[[float], None] | None = None

    @property
    def queued_writes(self) -> int:
        return self._queued

    # lifecycle --------------------------------------------------------------
    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._loop = asyncio.get_running_loop()
        conn = _connect(self.path, readonly=False, busy_timeout_ms=self._busy_timeout_ms)
        # Pages stay at SQLite's default 4 KiB. A commit logs every page it
        # touched in full, which made 1 KiB pages look cheaper, but measured at
        # 3k msg/s they log 1.6x the frames (deeper trees, more splits) for the
        # same CPU: each frame is two system calls, whatever its size.
        conn.execute(f"PRAGMA wal_autocheckpoint={WRITER_CHECKPOINT_PAGES}")
        conn.executescript(SCHEMA)
        conn.execute("BEGIN IMMEDIATE")
        self._write_back_journal(conn)
        conn.execute("COMMIT")
        self._log_change = LogChange()
        self._wconn = conn
        self._syncer = WalSyncer(Path(f"{self.path}-wal"), self._on_durable, self._wal_sync)
        self._checkpointer = Checkpointer(
            _connect(self.path, readonly=False, busy_timeout_ms=self._busy_timeout_ms), self.path
        )
        if sys.platform == "linux":  # posix_fadvise
            page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
            self._readahead = WalReadahead(self.path, page_size)
        self._writer = threading.Thread(target=self._write_loop, name="sqlite-writer", daemon=True)
        self._writer.start()

    async def close(self) -> None:
        if self._writer is not None:
            self._queue.put(None)
            await asyncio.get_running_loop().run_in_executor(None, self._writer.join)
            self._writer = None
        if self._syncer is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._syncer.stop)
            self._syncer = None
        if self._checkpointer is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._checkpointer.stop)
            self._checkpointer = None
        if self._readahead is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._readahead.stop)
            self._readahead = None
        self._readers.shutdown(wait=True)
        if self._wconn is not None:
            self._wconn.close()

    # plumbing ----------------------------------------------------------------
    def _submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        assert self._loop is not None, "store not open"
        if self._queued >= MAX_QUEUED:
            raise Unavailable("storage is falling behind; retry shortly")
        future: asyncio.Future[T] = self._loop.create_future()
        self._queued += 1
        self._queue.put(_Op(fn, args, future))
        return future

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        def run() -> T:
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = _connect(
                    self.path, readonly=True, busy_timeout_ms=self._busy_timeout_ms
                )
            return fn(conn, *args)

        result = await asyncio.get_running_loop().run_in_executor(self._readers, run)
        # Any batch whose COMMIT had started may be in what was read: it must
        # not be shown before it is durable (a crash could still take it back).
        await self._until_durable(self._committing)
        return result

    async def _until_durable(self, number: int) -> None:
        """Wait until batch `number` and all before it are durable and resolved."""
        if self._durable < number:
            assert self._loop is not None
            waiter = self._loop.create_future()
            self._durable_waiters.append((number, waiter))
            await waiter

    def _write_loop(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True
                    break
                batch.append(nxt)
            self._commit(batch)

    def _commit(self, batch: list[_Op]) -> None:
        """Run a batch in one transaction; retry the whole batch until it commits.

        Write functions check everything before their first write and raise a
        `ParleyError` only then, so a refused write needs no savepoint. A
        constraint violation (a bug, not an outage) rolls the batch back and
        reruns it with a savepoint per write, so that write fails alone.
        """
        conn = self._wconn
        assert conn is not None
        waited = time.perf_counter() - batch[0].queued_at
        self._coalesce_watermarks(batch)
        number = self._committing + 1
        attempt = 0
        isolate = False
        while True:
            started = time.perf_counter()
            results: list[tuple[bool, Any]] = []
            try:
                conn.execute("BEGIN IMMEDIATE")
                if self._journal_replay_due:
                    self._write_back_journal(conn)
                for op in batch:
                    results.append(self._run(conn, op, isolate))
                self._flush_state(conn)
                self._committing = number
                conn.execute("COMMIT")
                break
            except sqlite3.IntegrityError:
                if isolate:
                    raise  # _run catches these in isolation: cannot happen
                log.warning("a write broke a constraint; rerunning the batch write by write")
                conn.execute("ROLLBACK")
                self._forget_state()
                isolate = True
            except sqlite3.Error:
                attempt += 1
                log.exception("commit failed (attempt %d); retrying", attempt)
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                self._committing = number - 1  # rolled back: no read can see it
                self._forget_state()
                time.sleep(min(RETRY_MAX, RETRY_FIRST * 2 ** (attempt - 1)))
        if self.on_commit is not None:
            self.on_commit(len(batch), time.perf_counter() - started, waited)
        assert self._syncer is not None
        log_change, self._log_change = self._log_change, LogChange()
        self._syncer.submit(
            _Committed(number, batch, results, self._snapshot_changed(), log_change)
        )
        self._help_checkpoint(conn)

    def _help_checkpoint(self, conn: sqlite3.Connection) -> None:
        """After the batch is handed back: wake the WAL's readahead and the
        checkpointer, and when it asks, copy the few frames it has not so that
        the next write restarts the WAL (see `Checkpointer`)."""
        if self._readahead is not None:
            self._readahead.wake()
        checkpointer = self._checkpointer
        if checkpointer is None:
            return
        checkpointer.wake()
        if checkpointer.restart_due:
            checkpointer.restart_due = False
            try:
                checkpoint(conn)
            except sqlite3.Error:
                log.exception("checkpoint failed; the checkpointer will ask again")

    def _snapshot_changed(self) -> list[tuple[str, ConversationRecord | None]]:
        """Copies of the conversations the committed batch changed, for the cache.
        None where the writer dropped its record (after a refused write): the
        cache must then forget that conversation rather than keep an old copy."""
        snapshots = [
            (cid, record.snapshot() if (record := self._convs.get(cid)) is not None else None)
            for cid in self._changed
        ]
        self._changed.clear()
        return snapshots

    def _on_durable(self, durable: list[_Committed], sync_seconds: float) -> None:
        """On the syncer thread: hand the synced batches to the loop."""
        if self.on_sync is not None:
            self.on_sync(sync_seconds)
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._resolve, durable, time.perf_counter())

    def _resolve(self, durable: list[_Committed], synced: float) -> None:
        """On the loop, in commit order: refresh the cache, then complete the
        futures (their callbacks run in that order), so that whoever learns of a
        write reads it back; then release the reads waiting for these batches."""
        if self.on_handoff is not None:
            self.on_handoff(time.perf_counter() - synced)
        for committed in durable:
            self.unwritten.apply(committed.log)
            for cid, record in committed.snapshots:
                if record is None:
                    self.cache.discard(cid)
                    self.lists.forget_all()
                else:
                    self.cache.install(record)
                    self.lists.update(record)
            self._queued -= len(committed.batch)
            for op, (ok, value) in zip(committed.batch, committed.results, strict=True):
                if op.future.done():
                    continue
                if ok:
                    op.future.set_result(value)
                else:
                    op.future.set_exception(value)
        self._durable = durable[-1].number
        waiters = self._durable_waiters
        while waiters and waiters[0][0] <= self._durable:
            waiter = waiters.popleft()[1]
            if not waiter.done():
                waiter.set_result(None)

    def _coalesce_watermarks(self, batch: list[_Op]) -> None:
        """Watermarks are cumulative: of several moves of one member's watermark
        in one batch, only the last runs (with the highest seq) and the earlier
        ones complete as already covered. Fewer writes, one receipt instead of many."""
        last: dict[tuple[Any, ...], _Op] = {}
        for op in batch:
            if op.fn != self._w_move_watermark:
                continue
            key = op.args[:3]  # conversation, user, status
            earlier = last.get(key)
            if earlier is not None:
                op.args = (*key, max(earlier.args[3], op.args[3]))
                earlier.fn = _covered_by_a_later_move
            last[key] = op

    def _run(self, conn: sqlite3.Connection, op: _Op, isolate: bool) -> tuple[bool, Any]:
        if not isolate:
            try:
                return True, op.fn(conn, *op.args)
            except ParleyError as exc:
                return False, exc
        conn.execute("SAVEPOINT op")
        try:
            result = op.fn(conn, *op.args)
            self._flush_state(conn)
        except ParleyError as exc:
            conn.execute("ROLLBACK TO op")
            conn.execute("RELEASE op")
            return False, exc
        except sqlite3.IntegrityError:
            log.exception("write refused by a constraint")
            conn.execute("ROLLBACK TO op")
            conn.execute("RELEASE op")
            self._forget_state()
            self._write_back_journal(conn)
            return False, Unavailable("write refused", code="internal")
        conn.execute("RELEASE op")
        return True, result

    def _flush_state(self, conn: sqlite3.Connection) -> None:
        """Write the batch's log entries, counters and watermarks.

        Writes change conversation and member rows in memory only; a hundred
        messages into one conversation then cost one row update, not a hundred.
        Log entries go into the journal as one row, and the backlogs now due
        into `events` (see `eventlog`).
        """
        now = time.monotonic()
        if self._new_events:
            entries, self._new_events = self._new_events, []
            journal_id = conn.execute(
                "INSERT INTO events_journal (rows) VALUES (?)", (encode_rows(entries),)
            ).lastrowid
            assert journal_id is not None
            self._backlog.add(entries, journal_id, now)
            self._log_change.added += entries
        due = self._backlog.take_due(now)
        if due:
            due.sort()
            conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)", due)
            written = self._log_change.written
            for row in due:
                written[row[0]] = row[1]
            kept_from = self._backlog.oldest_journal_id()
            if kept_from is None:
                conn.execute("DELETE FROM events_journal")
            else:
                conn.execute("DELETE FROM events_journal WHERE id < ?", (kept_from,))
        if self._dirty_members:
            rows = [
                (m.role, m.delivered_seq, m.read_seq, m.unread, cid, uid)
                for cid, uid in self._dirty_members
                if (r := self._convs.get(cid)) is not None and (m := r.members.get(uid))
            ]
            conn.executemany(
                "UPDATE members SET role = ?, delivered_seq = ?, read_seq = ?, unread = ?"
                " WHERE conversation_id = ? AND user_id = ?",
                rows,
            )
            self._dirty_members.clear()
        if self._dirty_counters:
            conn.executemany(
                "UPDATE conversations SET last_seq = ?, last_activity = ?"
                " WHERE conversation_id = ?",
                [
                    (r.last_seq, r.last_activity, cid)
                    for cid in self._dirty_counters
                    if (r := self._convs.get(cid)) is not None
                ],
            )
            self._dirty_counters.clear()

    def _forget_state(self) -> None:
        """Drop writer state after a rollback; it reloads from disk (inside the
        open transaction, if any, so it sees that transaction's own writes),
        once the journal has been written back."""
        self._convs.clear()
        self._cursors.clear()
        self._dirty_members.clear()
        self._dirty_counters.clear()
        self._new_events.clear()
        self._backlog.clear()
        self._log_change = LogChange()
        self._journal_replay_due = True

    def _write_back_journal(self, conn: sqlite3.Connection) -> None:
        """Write every journaled log entry to `events` and empty the journal, so
        that cursors reload from disk as they were committed."""
        rows = [
            row
            for (blob,) in conn.execute("SELECT rows FROM events_journal ORDER BY id")
            for row in decode_rows(blob)
        ]
        if rows:  # else nothing to write: the commit stays empty
            rows.sort()
            conn.executemany("INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?, ?)", rows)
            conn.execute("DELETE FROM events_journal")
        self._log_change.all_written = True
        self._journal_replay_due = False

    # writer-side state ---------------------------------------------------------
    def _conv(self, conn: sqlite3.Connection, conversation_id: str) -> ConversationRecord | None:
        if conversation_id not in self._convs:
            self._convs[conversation_id] = _load_conversation(conn, conversation_id)
        return self._convs[conversation_id]

    def _log(
        self,
        conn: sqlite3.Connection,
        user_ids: Iterable[str],
        kind: str,
        conversation_id: str,
        seq: int,
        payload: bytes | None,
    ) -> list[tuple[str, int]]:
        """Append one entry to each user's log (written by `_flush_state`);
        returns (user, cursor) pairs."""
        logged = []
        for user_id in user_ids:
            cursor = self._cursors.get(user_id)
            if cursor is None:
                cursor = _max_cursor(conn, user_id)
            cursor += 1
            self._cursors[user_id] = cursor
            self._new_events.append((user_id, cursor, kind, conversation_id, seq, payload))
            logged.append((user_id, cursor))
        return logged

    # accounts -------------------------------------------------------------------
    async def create_user(self, user: UserRecord) -> None:
        await self._submit(self._w_create_user, user)

    @staticmethod
    def _w_create_user(conn: sqlite3.Connection, user: UserRecord) -> None:
        if conn.execute("SELECT 1 FROM users WHERE username = ?", (user.username,)).fetchone():
            raise Conflict("that username is taken", code="username_taken")
        conn.execute(
            "INSERT INTO users VALUES (?, ?, ?, ?, ?)",
            (user.user_id, user.username, user.display_name, user.password_hash, user.created_at),
        )

    async def get_user(self, user_id: str) -> UserRecord | None:
        return await self._read(_select_user, "user_id", user_id)

    async def get_user_by_username(self, username: str) -> UserRecord | None:
        return await self._read(_select_user, "username", username)

    async def create_session(self, session: SessionRecord) -> None:
        await self._submit(_insert_session, session)

    async def get_session(self, token_hash: str) -> SessionRecord | None:
        return await self._read(_select_session, token_hash)

    async def delete_session(self, token_hash: str) -> None:
        await self._submit(_delete_session, token_hash)

    # conversations ----------------------------------------------------------------
    def open_direct(
        self, conversation_id: str, user_a: str, user_b: str, now: int
    ) -> asyncio.Future[DirectOutcome]:
        return self._submit(self._w_open_direct, conversation_id, user_a, user_b, now)

    def _w_open_direct(
        self, conn: sqlite3.Connection, conversation_id: str, user_a: str, user_b: str, now: int
    ) -> DirectOutcome:
        key = ":".join(sorted((user_a, user_b)))
        row = conn.execute(
            "SELECT conversation_id FROM conversations WHERE direct_key = ?", (key,)
        ).fetchone()
        if row:
            existing = self._conv(conn, row[0])
            assert existing is not None
            return DirectOutcome(events=[], conversation=existing.snapshot(), created=False)
        record = self._insert_conversation(
            conn, conversation_id, "direct", None, now, key, [user_a, user_b], admin=None
        )
        return DirectOutcome(
            events=self._log_conversation(conn, record, record.members),
            conversation=record.snapshot(),
            created=True,
        )

    def _insert_conversation(
        self,
        conn: sqlite3.Connection,
        conversation_id: str,
        kind: Literal["direct", "group"],
        title: str | None,
        now: int,
        direct_key: str | None,
        member_ids: list[str],
        admin: str | None,
    ) -> ConversationRecord:
        conn.execute(
            "INSERT INTO conversations VALUES (?, ?, ?, ?, 0, ?, ?, 0)",
            (conversation_id, kind, title, now, now, direct_key),
        )
        members = _in_join_order(
            {
                u: MemberRecord(user_id=u, role="admin" if u == admin else "member", joined_at=now)
                for u in member_ids
            }
        )
        conn.executemany(
            "INSERT INTO members (conversation_id, user_id, role, joined_at) VALUES (?, ?, ?, ?)",
            [(conversation_id, m.user_id, m.role, now) for m in members.values()],
        )
        record = ConversationRecord(
            conversation_id=conversation_id,
            type=kind,
            title=title,
            created_at=now,
            last_seq=0,
            last_activity=now,
            members=members,
        )
        self._convs[conversation_id] = record
        self._changed.add(conversation_id)
        return record

    def _log_conversation(
        self, conn: sqlite3.Connection, record: ConversationRecord, user_ids: Iterable[str]
    ) -> list[UserEvent]:
        """Store one snapshot of the conversation and log it for each user.

        The snapshot is stored once, not once per member (a change to a group
        of 256 would otherwise log 256 copies of a 256-member list); each log
        entry keeps only that user's unread count.
        """
        record.version += 1
        self._changed.add(record.conversation_id)
        conn.execute(
            "UPDATE conversations SET version = ? WHERE conversation_id = ?",
            (record.version, record.conversation_id),
        )
        snapshot = msgspec.json.encode(record.view_for(""))
        conn.execute(
            "INSERT INTO conversation_versions VALUES (?, ?, ?)",
            (record.conversation_id, record.version, snapshot),
        )
        events: list[UserEvent] = []
        for user_id in user_ids:
            view = record.view_for(user_id)
            payload = _small_json.encode({"unread": view.unread})
            ((_, cursor),) = self._log(
                conn, (user_id,), "conversation", record.conversation_id, record.version, payload
            )
            events.append((user_id, ConversationEvent(cursor=cursor, conversation=view)))
        return events

    # groups --------------------------------------------------------------------------
    def create_group(
        self,
        conversation_id: str,
        creator_id: str,
        title: str,
        member_ids: list[str],
        now: int,
        max_members: int,
    ) -> asyncio.Future[ConversationChange]:
        return self._submit(
            self._w_create_group, conversation_id, creator_id, title, member_ids, now, max_members
        )

    def _w_create_group(
        self,
        conn: sqlite3.Connection,
        conversation_id: str,
        creator_id: str,
        title: str,
        member_ids: list[str],
        now: int,
        max_members: int,
    ) -> ConversationChange:
        members = list(dict.fromkeys([creator_id, *member_ids]))
        _check_size(len(members), max_members)
        _check_users_exist(conn, members)
        record = self._insert_conversation(
            conn, conversation_id, "group", title, now, None, members, admin=creator_id
        )
        return ConversationChange(
            events=self._log_conversation(conn, record, record.members),
            conversation=record.snapshot(),
        )

    def _group_for(
        self, conn: sqlite3.Connection, conversation_id: str, actor_id: str
    ) -> ConversationRecord:
        """The group `actor_id` is a member of, or the contract's refusal."""
        conv = self._conv(conn, conversation_id)
        if conv is None or actor_id not in conv.members:
            raise NotFound("no such conversation")
        if conv.type != "group":
            raise InvalidRequest("only groups have members to change", code="not_a_group")
        return conv

    def add_member(
        self, conversation_id: str, actor_id: str, user_id: str, now: int, max_members: int
    ) -> asyncio.Future[ConversationChange]:
        return self._submit(
            self._w_add_member, conversation_id, actor_id, user_id, now, max_members
        )

    def _w_add_member(
        self,
        conn: sqlite3.Connection,
        conversation_id: str,
        actor_id: str,
        user_id: str,
        now: int,
        max_members: int,
    ) -> ConversationChange:
        conv = self._group_for(conn, conversation_id, actor_id)
        if conv.members[actor_id].role != "admin":
            raise Forbidden("only an admin can add members")
        if user_id in conv.members:
            return ConversationChange(events=[], conversation=conv.snapshot())
        _check_users_exist(conn, [user_id])
        _check_size(len(conv.members) + 1, max_members)
        member = MemberRecord(
            user_id=user_id,
            role="member",
            delivered_seq=conv.last_seq,
            read_seq=conv.last_seq,
            joined_at=now,
        )
        conn.execute(
            "INSERT INTO members (conversation_id, user_id, role, delivered_seq, read_seq,"
            " unread, joined_at, left_seq) VALUES (?, ?, 'member', ?, ?, 0, ?, NULL)"
            " ON CONFLICT (conversation_id, user_id) DO UPDATE SET role = 'member',"
            " delivered_seq = excluded.delivered_seq, read_seq = excluded.read_seq,"
            " unread = 0, joined_at = excluded.joined_at, left_seq = NULL, left_at = NULL",
            (conversation_id, user_id, conv.last_seq, conv.last_seq, now),
        )
        conv.former.pop(user_id, None)
        conv.members[user_id] = member
        conv.members = _in_join_order(conv.members)
        return ConversationChange(
            events=self._log_conversation(conn, conv, conv.members),
            conversation=conv.snapshot(),
        )

    def remove_member(
        self, conversation_id: str, actor_id: str, user_id: str, now: int
    ) -> asyncio.Future[ConversationChange]:
        return self._submit(self._w_remove_member, conversation_id, actor_id, user_id, now)

    def _w_remove_member(
        self, conn: sqlite3.Connection, conversation_id: str, actor_id: str, user_id: str, now: int
    ) -> ConversationChange:
        conv = self._group_for(conn, conversation_id, actor_id)
        if actor_id != user_id and conv.members[actor_id].role != "admin":
            raise Forbidden("only an admin can remove other members")
        if user_id not in conv.members:
            return ConversationChange(events=[], conversation=conv.snapshot())
        removed = conv.members.pop(user_id)
        conv.former[user_id] = conv.last_seq
        conn.execute(
            "UPDATE members SET left_seq = ?, left_at = ?, unread = 0"
            " WHERE conversation_id = ? AND user_id = ?",
            (conv.last_seq, now, conversation_id, user_id),
        )
        admins = [m for m in conv.members.values() if m.role == "admin"]
        if removed.role == "admin" and not admins and conv.members:
            heir = next(iter(conv.members.values()))  # the longest-standing member
            heir.role = "admin"
            conn.execute(
                "UPDATE members SET role = 'admin' WHERE conversation_id = ? AND user_id = ?",
                (conversation_id, heir.user_id),
            )
        return ConversationChange(
            events=self._log_conversation(conn, conv, [*conv.members, user_id]),
            conversation=conv.snapshot(),
        )

    def rename(
        self, conversation_id: str, actor_id: str, title: str, now: int
    ) -> asyncio.Future[ConversationChange]:
        return self._submit(self._w_rename, conversation_id, actor_id, title, now)

    def _w_rename(
        self, conn: sqlite3.Connection, conversation_id: str, actor_id: str, title: str, now: int
    ) -> ConversationChange:
        conv = self._group_for(conn, conversation_id, actor_id)
        if conv.members[actor_id].role != "admin":
            raise Forbidden("only an admin can rename the group")
        if conv.title == title:
            return ConversationChange(events=[], conversation=conv.snapshot())
        conv.title = title
        conn.execute(
            "UPDATE conversations SET title = ? WHERE conversation_id = ?",
            (title, conversation_id),
        )
        return ConversationChange(
            events=self._log_conversation(conn, conv, conv.members),
            conversation=conv.snapshot(),
        )

    async def get_conversation(self, conversation_id: str) -> ConversationRecord | None:
        cached = self.cache.get(conversation_id)
        if cached is not None:
            return cached
        return await self._read(_load_conversation, conversation_id)

    async def list_conversations(
        self, user_id: str, limit: int, before: int | None
    ) -> list[ConversationRecord]:
        ids = self.lists.page(user_id, limit, before)
        if ids is None and self.lists.begin_load(user_id):
            places: dict[str, Place] | None = None
            try:
                places = await self._read(_places, user_id)
            finally:
                self.lists.end_load(user_id, places)
            ids = self.lists.page(user_id, limit, before)
        if ids is None:  # loading elsewhere, or changed while loading
            return await self._read(_list_conversations, user_id, limit, before)
        found = {cid: r for cid in ids if (r := self.cache.get(cid)) is not None}
        missing = [cid for cid in ids if cid not in found]
        if missing:
            found.update((r.conversation_id, r) for r in await self._read(_listed, missing))
        return [found[cid] for cid in ids if cid in found]

    # messages ------------------------------------------------------------------------
    def append_message(
        self,
        conversation_id: str,
        sender_id: str,
        client_msg_id: str,
        body: str,
        message_id: str,
        now: int,
    ) -> asyncio.Future[SendOutcome]:
        return self._submit(
            self._w_append_message, conversation_id, sender_id, client_msg_id, body, message_id, now
        )

    def _w_append_message(
        self,
        conn: sqlite3.Connection,
        conversation_id: str,
        sender_id: str,
        client_msg_id: str,
        body: str,
        message_id: str,
        now: int,
    ) -> SendOutcome:
        conv = self._conv(conn, conversation_id)
        if conv is None or sender_id not in conv.members:
            raise NotFound("no such conversation")
        seq = conv.last_seq + 1
        # The idempotency index finds a resend while inserting: a new message
        # costs one index descent, not a lookup and then an insert.
        inserted = conn.execute(
            "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (conversation_id, sender_id, client_msg_id) DO NOTHING",
            (conversation_id, seq, message_id, sender_id, client_msg_id, body, now),
        ).rowcount
        if not inserted:
            row = conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages"
                " WHERE conversation_id = ? AND sender_id = ? AND client_msg_id = ?",
                (conversation_id, sender_id, client_msg_id),
            ).fetchone()
            return SendOutcome(
                events=[],
                message=_message(row),
                duplicate=True,
                conversation_type=conv.type,
                member_ids=list(conv.members),
            )
        message = Message(
            conversation_id=conversation_id,
            seq=seq,
            message_id=message_id,
            sender_id=sender_id,
            client_msg_id=client_msg_id,
            body=body,
            sent_at=now,
        )
        conv.last_seq, conv.last_activity, conv.last_message = seq, now, message
        conv.remember(message)
        self._changed.add(conversation_id)
        self._dirty_counters.add(conversation_id)
        # Others have one more unread; the sender has read everything up to its own
        # message. If that covers messages from others, they are told (a reply is a
        # read), as if the sender had sent `read`.
        sender = conv.members[sender_id]
        read_before = sender.read_seq
        for member in conv.members.values():
            if member.user_id == sender_id:
                member.delivered_seq = member.read_seq = seq
                member.unread = 0
            else:
                member.unread += 1
            self._dirty_members.add((conversation_id, member.user_id))
        logged = self._log(conn, conv.members, "message", conversation_id, seq, None)
        events: list[UserEvent] = [(u, MessageEvent(cursor=c, message=message)) for u, c in logged]
        if read_before < seq - 1:
            events += self._log_receipt(conn, conv, sender_id, "read", read_before, seq)
        return SendOutcome(
            events=events,
            message=message,
            duplicate=False,
            conversation_type=conv.type,
            member_ids=list(conv.members),
        )

    async def get_messages(
        self,
        conversation_id: str,
        *,
        before: int | None,
        after: int | None,
        limit: int,
        upto: int | None = None,
    ) -> tuple[list[Message], bool]:
        cached = self.cache.get(conversation_id)
        if cached is not None:
            page = self.cache.page(cached, before, after, limit, upto)
            if page is not None:
                return page
        return await self._read(_select_messages, conversation_id, before, after, limit, upto)

    def move_watermark(
        self,
        conversation_id: str,
        user_id: str,
        status: Literal["delivered", "read"],
        seq: int,
    ) -> asyncio.Future[Committed]:
        return self._submit(self._w_move_watermark, conversation_id, user_id, status, seq)

    def _w_move_watermark(
        self,
        conn: sqlite3.Connection,
        conversation_id: str,
        user_id: str,
        status: Literal["delivered", "read"],
        seq: int,
    ) -> Committed:
        conv = self._conv(conn, conversation_id)
        member = conv.members.get(user_id) if conv else None
        if conv is None or member is None:
            raise NotFound("no such conversation")
        seq = min(seq, conv.last_seq)
        previous = member.delivered_seq if status == "delivered" else member.read_seq
        if status == "delivered":
            if seq <= member.delivered_seq:
                return Committed(events=[])
            member.delivered_seq = seq
        else:
            if seq <= member.read_seq:
                return Committed(events=[])
            member.read_seq = seq
            member.delivered_seq = max(member.delivered_seq, seq)
            (member.unread,) = conn.execute(
                "SELECT count(*) FROM messages"
                " WHERE conversation_id = ? AND seq > ? AND sender_id != ?",
                (conversation_id, seq, user_id),
            ).fetchone()
        self._dirty_members.add((conversation_id, user_id))
        self._changed.add(conversation_id)
        return Committed(events=self._log_receipt(conn, conv, user_id, status, previous, seq))

    def _log_receipt(
        self,
        conn: sqlite3.Connection,
        conv: ConversationRecord,
        user_id: str,
        status: Literal["delivered", "read"],
        previous: int,
        seq: int,
    ) -> list[UserEvent]:
        """Log that `user_id`'s watermark moved from `previous` to `seq`: for both
        members of a direct conversation; in a group for the member itself and
        the senders of the messages newly covered."""
        cid = conv.conversation_id
        if conv.type == "direct":
            audience: Iterable[str] = conv.members
        else:
            senders = conn.execute(
                "SELECT DISTINCT sender_id FROM messages"
                " WHERE conversation_id = ? AND seq > ? AND seq <= ?",
                (cid, previous, seq),
            ).fetchall()
            audience = {user_id, *(r[0] for r in senders if r[0] in conv.members)}
        payload = _small_json.encode({"user_id": user_id, "status": status})
        logged = self._log(conn, audience, "receipt", cid, seq, payload)
        return [
            (
                u,
                ReceiptEvent(
                    cursor=c, conversation_id=cid, user_id=user_id, status=status, seq=seq
                ),
            )
            for u, c in logged
        ]

    # event logs ---------------------------------------------------------------------
    async def read_events(self, user_id: str, after: int, limit: int) -> list[LoggedEvent]:
        # Like a read of the disk, this returns what was committed when called,
        # once durable. The entries not yet on disk are taken before the read:
        # one written back meanwhile is then in both, and counts once.
        await self._until_durable(self._committing)
        unwritten = self.unwritten.after(user_id, after)
        return await self._read(_select_events, user_id, after, limit, unwritten)

    async def current_cursor(self, user_id: str) -> int:
        await self._until_durable(self._committing)
        unwritten = self.unwritten.last_cursor(user_id)
        return max(unwritten, await self._read(_max_cursor, user_id))

    # contacts and presence ------------------------------------------------------------
    async def add_contact(self, owner_id: str, contact_id: str, now: int) -> None:
        await self._submit(_insert_contact, owner_id, contact_id, now)

    async def remove_contact(self, owner_id: str, contact_id: str) -> None:
        await self._submit(_delete_contact, owner_id, contact_id)

    async def list_contacts(self, owner_id: str) -> list[UserRecord]:
        return await self._read(_select_contacts, owner_id)

    async def presence_audience(self, user_id: str) -> set[str]:
        return await self._read(_select_audience, user_id)

    async def visible_to(self, viewer_id: str, user_ids: list[str]) -> set[str]:
        return await self._read(_select_visible, viewer_id, user_ids)

    async def set_last_seen(self, user_id: str, last_seen: int) -> None:
        await self._submit(_upsert_last_seen, user_id, last_seen)

    async def last_seen(self, user_ids: list[str]) -> dict[str, int]:
        return await self._read(_select_last_seen, user_ids)

    # push subscriptions ------------------------------------------------------------------
    async def add_push_subscription(self, sub: PushSubscriptionRecord) -> None:
        await self._submit(_upsert_push, sub)

    async def remove_push_subscription(self, endpoint: str, user_id: str | None = None) -> None:
        await self._submit(_delete_push, endpoint, user_id)

    async def push_subscriptions(self, user_ids: list[str]) -> list[PushSubscriptionRecord]:
        return await self._read(_select_push, user_ids)


# --- queries run on reader threads (and a few on the writer) -------------------------


def _covered_by_a_later_move(conn: sqlite3.Connection, *args: Any) -> Committed:
    return Committed(events=[])


def _select_user(conn: sqlite3.Connection, column: str, value: str) -> UserRecord | None:
    assert column in ("user_id", "username")
    row = conn.execute(
        "SELECT user_id, username, display_name, password_hash, created_at"
        f" FROM users WHERE {column} = ?",
        (value,),
    ).fetchone()
    return UserRecord(*row) if row else None


def _insert_session(conn: sqlite3.Connection, s: SessionRecord) -> None:
    conn.execute(
        "INSERT INTO sessions VALUES (?, ?, ?, ?, ?)",
        (s.token_hash, s.user_id, s.device_id, s.device_name, s.created_at),
    )


def _select_session(conn: sqlite3.Connection, token_hash: str) -> SessionRecord | None:
    row = conn.execute(
        "SELECT token_hash, user_id, device_id, device_name, created_at"
        " FROM sessions WHERE token_hash = ?",
        (token_hash,),
    ).fetchone()
    return SessionRecord(*row) if row else None


def _delete_session(conn: sqlite3.Connection, token_hash: str) -> None:
    conn.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash,))


def _max_cursor(conn: sqlite3.Connection, user_id: str) -> int:
    row = conn.execute("SELECT max(cursor) FROM events WHERE user_id = ?", (user_id,)).fetchone()
    return int(row[0] or 0)


#: Members are listed in the order they joined; of those who joined together (at
#: a group's creation) the admin first, then by id. Memory and disk agree on it.
_MEMBER_ORDER = "joined_at, role <> 'admin', user_id"


def _in_join_order(members: dict[str, MemberRecord]) -> dict[str, MemberRecord]:
    """`members` reordered as `_MEMBER_ORDER` orders rows."""
    ordered = sorted(members.values(), key=lambda m: (m.joined_at, m.role != "admin", m.user_id))
    return {m.user_id: m for m in ordered}


def _load_members(conn: sqlite3.Connection, records: list[ConversationRecord]) -> None:
    """Fill `members` (in join order) and `former` of each record."""
    by_id = {r.conversation_id: r for r in records}
    marks = ",".join("?" * len(by_id))
    for row in conn.execute(
        "SELECT conversation_id, user_id, role, delivered_seq, read_seq, unread, joined_at,"
        f" left_seq FROM members WHERE conversation_id IN ({marks})"
        f" ORDER BY conversation_id, {_MEMBER_ORDER}",
        list(by_id),
    ):
        record = by_id[row[0]]
        if row[7] is None:
            record.members[row[1]] = MemberRecord(*row[1:7])
        else:
            record.former[row[1]] = row[7]


def _recent_messages(conn: sqlite3.Connection, conversation_id: str, count: int) -> deque[Message]:
    rows = conn.execute(
        f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ?"
        " ORDER BY seq DESC LIMIT ?",
        (conversation_id, count),
    ).fetchall()
    return deque((_message(r) for r in reversed(rows)), maxlen=RECENT_MESSAGES)


def _conversation_from_row(
    conn: sqlite3.Connection, row: Sequence[Any], recent_count: int = RECENT_MESSAGES
) -> ConversationRecord:
    """`recent_count`: the newest messages to load with it (a list needs only
    the last one; the writer and the cache want a page's worth)."""
    recent = _recent_messages(conn, row[0], recent_count)
    return ConversationRecord(
        conversation_id=row[0],
        type=row[1],
        title=row[2],
        created_at=row[3],
        # The messages themselves are the truth about the last seq: after a
        # failed write the writer reloads from here and continues past them.
        last_seq=max(row[4], recent[-1].seq if recent else 0),
        last_activity=row[5],
        version=row[6],
        last_message=recent[-1] if recent else None,
        recent=recent,
    )


_CONVERSATION_COLUMNS = "conversation_id, type, title, created_at, last_seq, last_activity, version"


def _load_conversation(conn: sqlite3.Connection, conversation_id: str) -> ConversationRecord | None:
    row = conn.execute(
        f"SELECT {_CONVERSATION_COLUMNS} FROM conversations WHERE conversation_id = ?",
        (conversation_id,),
    ).fetchone()
    if not row:
        return None
    record = _conversation_from_row(conn, row)
    _load_members(conn, [record])
    return record


#: A user's place in each of its conversations: a former member's entry stays
#: where its removal put it (later activity there is not its business).
_ACTIVITY = "COALESCE(m.left_at, c.last_activity)"


def _list_conversations(
    conn: sqlite3.Connection, user_id: str, limit: int, before: int | None
) -> list[ConversationRecord]:
    rows = conn.execute(
        f"SELECT {', '.join('c.' + c for c in _CONVERSATION_COLUMNS.split(', '))},"
        f" {_ACTIVITY} AS activity"
        " FROM members m JOIN conversations c ON c.conversation_id = m.conversation_id"
        " WHERE m.user_id = ? AND activity < ?"
        " ORDER BY activity DESC, c.conversation_id LIMIT ?",
        (user_id, before if before is not None else 2**62, limit),
    ).fetchall()
    return _with_members(conn, [_conversation_from_row(conn, r, recent_count=1) for r in rows])


def _places(conn: sqlite3.Connection, user_id: str) -> dict[str, Place]:
    """Every conversation of the user with its list order, for `ConversationLists`."""
    rows = conn.execute(
        f"SELECT m.conversation_id, {_ACTIVITY}, m.left_seq IS NULL"
        " FROM members m JOIN conversations c ON c.conversation_id = m.conversation_id"
        " WHERE m.user_id = ?",
        (user_id,),
    )
    return {cid: (activity, bool(member)) for cid, activity, member in rows}


def _listed(conn: sqlite3.Connection, conversation_ids: list[str]) -> list[ConversationRecord]:
    """Conversations as a list shows them (with their last message only)."""
    rows = conn.execute(
        f"SELECT {_CONVERSATION_COLUMNS} FROM conversations"
        f" WHERE conversation_id IN ({','.join('?' * len(conversation_ids))})",
        conversation_ids,
    ).fetchall()
    return _with_members(conn, [_conversation_from_row(conn, r, recent_count=1) for r in rows])


def _with_members(
    conn: sqlite3.Connection, records: list[ConversationRecord]
) -> list[ConversationRecord]:
    if records:
        _load_members(conn, records)
    return records


def _select_messages(
    conn: sqlite3.Connection,
    conversation_id: str,
    before: int | None,
    after: int | None,
    limit: int,
    upto: int | None,
) -> tuple[list[Message], bool]:
    lo = after if after is not None else -1
    hi = before if before is not None else 2**62
    if upto is not None:
        hi = min(hi, upto + 1)
    # With only `after`, read upwards from it; otherwise read downwards from the top.
    ascending = after is not None and before is None
    rows = conn.execute(
        f"SELECT {_MESSAGE_COLUMNS} FROM messages"
        " WHERE conversation_id = ? AND seq > ? AND seq < ?"
        f" ORDER BY seq {'ASC' if ascending else 'DESC'} LIMIT ?",
        (conversation_id, lo, hi, limit + 1),
    ).fetchall()
    has_more = len(rows) > limit
    rows = rows[:limit]
    if not ascending:
        rows.reverse()
    return [_message(r) for r in rows], has_more


#: Log entries with what they point to: the message, or the conversation's snapshot.
_JOINED_EVENTS = (
    "SELECT e.cursor, e.kind, e.conversation_id, e.seq, e.payload, v.snapshot,"
    " m.message_id, m.sender_id, m.client_msg_id, m.body, m.sent_at"
    " FROM {entries} e LEFT JOIN messages m"
    " ON e.kind = 'message' AND m.conversation_id = e.conversation_id AND m.seq = e.seq"
    " LEFT JOIN conversation_versions v ON e.kind = 'conversation'"
    " AND v.conversation_id = e.conversation_id AND v.version = e.seq"
)
_UNWRITTEN_ENTRIES = (
    "(SELECT column1 AS cursor, column2 AS kind, column3 AS conversation_id,"
    " column4 AS seq, column5 AS payload FROM (VALUES {values}))"
)


def _select_events(
    conn: sqlite3.Connection, user_id: str, after: int, limit: int, unwritten: list[EventRow]
) -> list[LoggedEvent]:
    """The page of `user_id`'s log after `after`: from `events`, then from the
    entries not yet written there (`unwritten`, all newer than those on disk)."""
    rows = conn.execute(
        _JOINED_EVENTS.format(entries="events")
        + " WHERE e.user_id = ? AND e.cursor > ? ORDER BY e.cursor LIMIT ?",
        (user_id, after, limit),
    ).fetchall()
    last = rows[-1][0] if rows else after
    newer = [row[1:] for row in unwritten if row[1] > last][: limit - len(rows)]
    if newer:
        values = ", ".join(["(?, ?, ?, ?, ?)"] * len(newer))
        rows += conn.execute(
            _JOINED_EVENTS.format(entries=_UNWRITTEN_ENTRIES.format(values=values))
            + " ORDER BY e.cursor",
            [value for row in newer for value in row],
        ).fetchall()
    events: list[LoggedEvent] = []
    for cursor, kind, conversation_id, seq, payload, snapshot, *msg in rows:
        if kind == "message":
            events.append(
                MessageEvent(cursor=cursor, message=_message((conversation_id, seq, *msg)))
            )
        elif kind == "receipt":
            fields = _small_json_decoder.decode(payload)
            events.append(
                ReceiptEvent(
                    cursor=cursor,
                    conversation_id=conversation_id,
                    user_id=fields["user_id"],
                    status=cast(Literal["delivered", "read"], fields["status"]),
                    seq=seq,
                )
            )
        else:
            conversation = _conversation_decoder.decode(snapshot)
            conversation.unread = _small_json_decoder.decode(payload)["unread"]
            events.append(ConversationEvent(cursor=cursor, conversation=conversation))
    return events


def _insert_contact(conn: sqlite3.Connection, owner_id: str, contact_id: str, now: int) -> None:
    conn.execute("INSERT OR IGNORE INTO contacts VALUES (?, ?, ?)", (owner_id, contact_id, now))


def _delete_contact(conn: sqlite3.Connection, owner_id: str, contact_id: str) -> None:
    conn.execute(
        "DELETE FROM contacts WHERE owner_id = ? AND contact_id = ?", (owner_id, contact_id)
    )


def _select_contacts(conn: sqlite3.Connection, owner_id: str) -> list[UserRecord]:
    rows = conn.execute(
        "SELECT u.user_id, u.username, u.display_name, u.password_hash, u.created_at"
        " FROM contacts c JOIN users u ON u.user_id = c.contact_id"
        " WHERE c.owner_id = ? ORDER BY u.username",
        (owner_id,),
    ).fetchall()
    return [UserRecord(*r) for r in rows]


def _select_audience(conn: sqlite3.Connection, user_id: str) -> set[str]:
    rows = conn.execute(
        "SELECT contact_id FROM contacts WHERE owner_id = ?"
        " UNION SELECT peer.user_id FROM members mine"
        " JOIN members peer ON peer.conversation_id = mine.conversation_id"
        " WHERE mine.user_id = ? AND peer.user_id != ?"
        " AND mine.left_seq IS NULL AND peer.left_seq IS NULL",
        (user_id, user_id, user_id),
    ).fetchall()
    return {r[0] for r in rows}


def _select_visible(conn: sqlite3.Connection, viewer_id: str, user_ids: list[str]) -> set[str]:
    if not user_ids:
        return set()
    marks = ",".join("?" * len(user_ids))
    rows = conn.execute(
        f"SELECT owner_id FROM contacts WHERE contact_id = ? AND owner_id IN ({marks})"
        " UNION SELECT peer.user_id FROM members mine"
        " JOIN members peer ON peer.conversation_id = mine.conversation_id"
        f" WHERE mine.user_id = ? AND peer.user_id IN ({marks})"
        " AND mine.left_seq IS NULL AND peer.left_seq IS NULL",
        (viewer_id, *user_ids, viewer_id, *user_ids),
    ).fetchall()
    visible = {r[0] for r in rows}
    if viewer_id in user_ids:
        visible.add(viewer_id)
    return visible


def _upsert_last_seen(conn: sqlite3.Connection, user_id: str, at: int) -> None:
    conn.execute(
        "INSERT INTO last_seen VALUES (?, ?) ON CONFLICT (user_id) DO UPDATE SET at = excluded.at",
        (user_id, at),
    )


def _select_last_seen(conn: sqlite3.Connection, user_ids: list[str]) -> dict[str, int]:
    if not user_ids:
        return {}
    marks = ",".join("?" * len(user_ids))
    rows = conn.execute(
        f"SELECT user_id, at FROM last_seen WHERE user_id IN ({marks})", user_ids
    ).fetchall()
    return {r[0]: r[1] for r in rows}


def _check_size(count: int, max_members: int) -> None:
    if count > max_members:
        raise InvalidRequest(f"a group has at most {max_members} members", code="too_many_members")


def _check_users_exist(conn: sqlite3.Connection, user_ids: list[str]) -> None:
    marks = ",".join("?" * len(user_ids))
    found = {
        r[0]
        for r in conn.execute(f"SELECT user_id FROM users WHERE user_id IN ({marks})", user_ids)
    }
    missing = [u for u in user_ids if u not in found]
    if missing:
        raise NotFound(f"no such user: {missing[0]}")


def _upsert_push(conn: sqlite3.Connection, sub: PushSubscriptionRecord) -> None:
    conn.execute(
        "INSERT INTO push_subscriptions VALUES (?, ?, ?, ?, ?) ON CONFLICT (endpoint) DO UPDATE"
        " SET user_id = excluded.user_id, p256dh = excluded.p256dh, auth = excluded.auth",
        (sub.endpoint, sub.user_id, sub.p256dh, sub.auth, sub.created_at),
    )


def _delete_push(conn: sqlite3.Connection, endpoint: str, user_id: str | None) -> None:
    if user_id is None:
        conn.execute("DELETE FROM push_subscriptions WHERE endpoint = ?", (endpoint,))
    else:
        conn.execute(
            "DELETE FROM push_subscriptions WHERE endpoint = ? AND user_id = ?", (endpoint, user_id)
        )


def _select_push(conn: sqlite3.Connection, user_ids: list[str]) -> list[PushSubscriptionRecord]:
    if not user_ids:
        return []
    marks = ",".join("?" * len(user_ids))
    rows = conn.execute(
        "SELECT user_id, endpoint, p256dh, auth, created_at FROM push_subscriptions"
        f" WHERE user_id IN ({marks})",
        user_ids,
    ).fetchall()
    return [PushSubscriptionRecord(*r) for r in rows]
