"""Opaque ids: a one-letter kind prefix and random bits.

Ids of people, devices and conversations are 96 random bits: unguessable.
Message ids are minted on the hot path, so they are a random per-process
prefix plus a counter: unique across restarts and processes without a
system call per message (their secrecy protects nothing: only members see them).
"""

from __future__ import annotations

import itertools
import secrets


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


_process_prefix = secrets.token_hex(8)
_counter = itertools.count(1)


def new_message_id() -> str:
    return f"m{_process_prefix}{next(_counter):08x}"
