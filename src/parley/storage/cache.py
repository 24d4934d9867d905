"""Recently active conversations and users' conversation lists in memory
(design section 7).

Filled only with snapshots the writer made right after a commit, installed in
commit order on the event loop: whatever a reader finds here is committed and
at least as new as anything it could read from disk. A miss falls through to
the database. Bounded by count and by the bytes of cached message bodies,
evicting the least recently active conversation first.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from itertools import chain

from parley.protocol.models import Message
from parley.storage.base import ConversationRecord

#: Conversations kept: every active chat of a busy node, at a few KiB each.
MAX_CONVERSATIONS = 20_000
#: Message text kept in memory across all cached conversations.
MAX_BODY_BYTES = 128 * 1024 * 1024
#: Users whose conversation list is kept (a few dozen bytes per conversation).
MAX_LISTS = 100_000


class ConversationCache:
    def __init__(
        self, max_conversations: int = MAX_CONVERSATIONS, max_body_bytes: int = MAX_BODY_BYTES
    ) -> None:
        self._records: OrderedDict[str, ConversationRecord] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self._bytes = 0
        self.max_conversations = max_conversations
        self.max_body_bytes = max_body_bytes
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._records)

    def install(self, record: ConversationRecord) -> None:
        cid = record.conversation_id
        size = record.recent_body_size
        self._bytes += size - self._sizes.get(cid, 0)
        self._records[cid] = record
        self._sizes[cid] = size
        self._records.move_to_end(cid)
        while self._records and (
            len(self._records) > self.max_conversations or self._bytes > self.max_body_bytes
        ):
            old, _ = self._records.popitem(last=False)
            self._bytes -= self._sizes.pop(old)

    def discard(self, conversation_id: str) -> None:
        if self._records.pop(conversation_id, None) is not None:
            self._bytes -= self._sizes.pop(conversation_id)

    def get(self, conversation_id: str) -> ConversationRecord | None:
        record = self._records.get(conversation_id)
        if record is None:
            self.misses += 1
        else:
            self.hits += 1
        return record

    @staticmethod
    def page(
        record: ConversationRecord,
        before: int | None,
        after: int | None,
        limit: int,
        upto: int | None,
    ) -> tuple[list[Message], bool] | None:
        """The history page the database would return, if the cached messages
        cover it; None otherwise. Seqs are gapless, so bounds are arithmetic."""
        top = record.last_seq if upto is None else min(record.last_seq, upto)
        if before is not None:
            top = min(top, before - 1)
        floor = 0 if after is None else after  # exclusive
        if after is not None and before is None:
            lo, hi = floor + 1, min(top, floor + limit)
            has_more = hi < top
        else:
            hi, lo = top, max(floor + 1, top - limit + 1)
            has_more = lo > floor + 1
        if hi < lo:
            return [], False
        recent = record.recent
        if not recent or lo < recent[0].seq or hi > recent[-1].seq:
            return None
        first = recent[0].seq
        return [recent[i - first] for i in range(lo, hi + 1)], has_more


#: A user's place for one conversation: the activity that orders its list, and
#: whether it is still a member (a former member's place is fixed at its removal).
Place = tuple[int, bool]


class ConversationLists:
    """Each recently listing user's conversations in list order, so that a
    conversation list reads only memory: the records come from
    `ConversationCache`, the order from here.

    Loaded from disk once per user, then kept current from the same committed
    snapshots. Snapshots installed while a load is reading are replayed onto
    its result, so a load never misses a commit that raced it. A removal is
    not replayed (where it leaves the former member's entry is on disk only):
    that user's list is dropped and read again on its next use."""

    def __init__(self, max_users: int = MAX_LISTS) -> None:
        self._lists: OrderedDict[str, dict[str, Place]] = OrderedDict()
        #: user → snapshots installed since its load began (None: start over)
        self._loading: dict[str, list[ConversationRecord | None]] = {}
        self.max_users = max_users

    def __len__(self) -> int:
        return len(self._lists)

    def page(self, user_id: str, limit: int, before: int | None) -> list[str] | None:
        """Conversation ids, most recent activity first, activity < `before`
        (ties by id, as the database orders them); None if not loaded."""
        places = self._lists.get(user_id)
        if places is None:
            return None
        self._lists.move_to_end(user_id)
        bound = before if before is not None else 2**62
        first = heapq.nsmallest(
            limit, ((-at, cid) for cid, (at, _) in places.items() if at < bound)
        )
        return [cid for _, cid in first]

    def begin_load(self, user_id: str) -> bool:
        """Watch installs for `user_id` while its list is read from disk; False
        if a load is already running (the caller then just reads the database)."""
        if user_id in self._loading:
            return False
        self._loading[user_id] = []
        return True

    def end_load(self, user_id: str, places: dict[str, Place] | None) -> None:
        """Keep what the load read (None: it failed), plus what committed since."""
        raced = self._loading.pop(user_id)
        if places is None or not all(_place(places, user_id, r) for r in raced):
            return
        self._lists[user_id] = places
        self._lists.move_to_end(user_id)
        while len(self._lists) > self.max_users:
            self._lists.popitem(last=False)

    def update(self, record: ConversationRecord) -> None:
        """A committed snapshot of `record`: move its members' entries."""
        for user_id in chain(record.members, record.former):
            raced = self._loading.get(user_id)
            if raced is not None:
                raced.append(record)
            places = self._lists.get(user_id)
            if places is not None and not _place(places, user_id, record):
                del self._lists[user_id]

    def forget_all(self) -> None:
        """Some conversation changed in a way no snapshot shows: read every list again."""
        self._lists.clear()
        for raced in self._loading.values():
            raced.append(None)


def _place(places: dict[str, Place], user_id: str, record: ConversationRecord | None) -> bool:
    """Apply one snapshot to a user's entries; False if only the disk knows the result."""
    if record is None:
        return False
    cid = record.conversation_id
    if user_id in record.members:
        places[cid] = (record.last_activity, True)
        return True
    place = places.get(cid)
    return place is not None and not place[1]  # already former: its place stays
