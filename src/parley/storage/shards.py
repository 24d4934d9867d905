"""Hash sharding onto logical shards (design, section 6).

Every key maps to one of `LOGICAL_SHARDS` logical shards by a stable hash; a
deployment maps logical shards onto however many physical databases it has, so
adding a database moves whole logical shards and never rehashes a key.

What is keyed by what:
- a conversation's messages, members and counters: by `conversation_id`, so a
  page of history is one range scan on one shard;
- a user's event log, account, sessions and contacts: by `user_id`, so catch-up
  for one device is one range scan on one shard.
"""

from __future__ import annotations

import hashlib

#: Many more logical shards than we will ever have machines (the design's 1000,
#: rounded to a power of two), so growth is a remapping, not a rehash.
LOGICAL_SHARDS = 1024


def logical_shard(key: str) -> int:
    """The logical shard of a key: stable across processes, versions and machines."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % LOGICAL_SHARDS


def physical_shard(key: str, physical_count: int) -> int:
    """Which of `physical_count` databases holds a key: contiguous logical ranges per database."""
    return logical_shard(key) * physical_count // LOGICAL_SHARDS
