"""Recently active conversations in memory (design section 7).

Filled only with snapshots the writer made right after a commit, installed in
commit order on the event loop: whatever a reader finds here is committed and
at least as new as anything it could read from disk. A miss falls through to
the database. Bounded by count and by the bytes of cached message bodies,
evicting the least recently active conversation first.
"""

from __future__ import annotations

from collections import OrderedDict

from parley.protocol.models import Message
from parley.storage.base import ConversationRecord

#: Conversations kept: every active chat of a busy node, at a few KiB each.
MAX_CONVERSATIONS = 20_000
#: Message text kept in memory across all cached conversations.
MAX_BODY_BYTES = 128 * 1024 * 1024


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

    def install(self, record: ConversationRecord) -> None:
        cid = record.conversation_id
        size = sum(len(m.body) for m in record.recent)
        self._bytes += size - self._sizes.get(cid, 0)
        self._records[cid] = record
        self._sizes[cid] = size
        self._records.move_to_end(cid)
        while self._records and (
            len(self._records) > self.max_conversations or self._bytes > self.max_body_bytes
        ):
            old, _ = self._records.popitem(last=False)
            self._bytes -= self._sizes.pop(old)

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
