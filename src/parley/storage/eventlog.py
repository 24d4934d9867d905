"""Users' event logs, written behind.

Every message adds an entry to the log of each member, and every receipt one
to each of its audience: four entries for a 1:1 message and its receipt, each
at the end of a different user's log, so each lands on a page of its own. Written
with their batch, they were half the pages the WAL took per message (measured
at 3k msg/s: the writer thread spent 37-42 % of the core with them, 30-32 %
without).

So a batch's new entries are stored durably, in the same commit, as one row
appended to a journal table (a page or two for the whole batch), and reach
the `events` table later, a user's whole backlog at once: each user's page is
then written about once a second instead of once per commit. Backlogs are
written oldest first, each commit taking the share of them that the time since
the last commit is of that second: written only once due, users who all began
chatting together came due together, and the commits writing their wave (64
users each) held up the messages queued behind them every second (p99 at 3k
msg/s 45-63 ms against 10-17 before). The journal rows every entry of which is
in `events` are deleted in that same commit.

Until then the entries are in memory twice: on the writer thread (`Backlog`,
which picks what to write back) and on the event loop (`Unwritten`, which
reads merge with what they find on disk), each updated in commit order. After
a rollback, and when the store opens, the journal is written back whole
(`INSERT OR IGNORE`: some entries may be there already), so the disk alone
again holds every entry.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field

import msgspec

#: One log entry: user, cursor, kind, conversation, seq, payload.
EventRow = tuple[str, int, str, str, int, bytes | None]

#: Seconds in which every backlog is written once, at an even pace.
WRITE_BEHIND_SECONDS = 1.0
#: Users whose backlog one commit writes at most: bounds what a commit takes on.
USERS_PER_COMMIT = 256
#: Past this many unwritten entries, backlogs are written whatever the pace
#: (still `USERS_PER_COMMIT` at a time): bounds memory.
MAX_UNWRITTEN = 200_000

#: A journal row's entries, as stored.
encode_rows = msgspec.msgpack.Encoder().encode
decode_rows = msgspec.msgpack.Decoder(list[EventRow]).decode


@dataclass(slots=True)
class LogChange:
    """What one committed batch did to the entries held in memory: those it
    added, and the highest cursor of each user whose backlog it wrote to disk
    (`all_written`: a replay wrote every earlier entry)."""

    added: list[EventRow] = field(default_factory=list)
    written: dict[str, int] = field(default_factory=dict)
    all_written: bool = False


class Backlog:
    """The writer's unwritten entries, by user, oldest backlog first."""

    def __init__(self) -> None:
        self._rows: dict[str, list[EventRow]] = {}
        #: user -> (monotonic time, journal row) of its oldest unwritten entry.
        self._since: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self.count = 0
        #: Backlogs owed to the pace but not yet taken (a fraction of a user).
        self._owed = 0.0
        self._last_take = time.monotonic()

    def add(self, rows: list[EventRow], journal_id: int, now: float) -> None:
        for row in rows:
            user = row[0]
            backlog = self._rows.get(user)
            if backlog is None:
                self._rows[user] = [row]
                self._since[user] = (now, journal_id)
            else:
                backlog.append(row)
        self.count += len(rows)

    def take_due(self, now: float) -> list[EventRow]:
        """Remove and return the backlogs due for writing, oldest first: this
        commit's share of the pace, and any that waited a whole period."""
        since = self._since
        elapsed, self._last_take = now - self._last_take, now
        self._owed = min(self._owed + len(since) * elapsed / WRITE_BEHIND_SECONDS, len(since))
        due: list[EventRow] = []
        for _ in range(USERS_PER_COMMIT):
            if not since:
                break
            user, (first, _journal_id) = next(iter(since.items()))
            paced = self._owed < 1 and now - first < WRITE_BEHIND_SECONDS
            if paced and self.count <= MAX_UNWRITTEN:
                break
            since.popitem(last=False)
            rows = self._rows.pop(user)
            self.count -= len(rows)
            self._owed = max(self._owed - 1, 0.0)
            due += rows
        return due

    def oldest_journal_id(self) -> int | None:
        """The first journal row still holding an unwritten entry."""
        return next(iter(self._since.values()))[1] if self._since else None

    def clear(self) -> None:
        self._rows.clear()
        self._since.clear()
        self.count = 0


class Unwritten:
    """The event loop's copy of the unwritten entries, for reads."""

    def __init__(self) -> None:
        self._rows: dict[str, list[EventRow]] = {}

    def apply(self, change: LogChange) -> None:
        rows = self._rows
        if change.all_written:
            rows.clear()
        for row in change.added:
            backlog = rows.get(row[0])
            if backlog is None:
                rows[row[0]] = [row]
            else:
                backlog.append(row)
        for user, cursor in change.written.items():
            kept = [row for row in rows.get(user, ()) if row[1] > cursor]
            if kept:
                rows[user] = kept
            else:
                rows.pop(user, None)

    def __len__(self) -> int:
        return sum(map(len, self._rows.values()))

    def after(self, user_id: str, cursor: int) -> list[EventRow]:
        return [row for row in self._rows.get(user_id, ()) if row[1] > cursor]

    def last_cursor(self, user_id: str) -> int:
        backlog = self._rows.get(user_id)
        return backlog[-1][1] if backlog else 0
