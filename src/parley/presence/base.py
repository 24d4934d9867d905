"""Which users have a device connected: the raw facts presence is built on.

Contract: keyed by user, every call costs O(its arguments), never a scan of
all users or connections. A device is counted once however often it is added;
a user is connected while at least one of its devices is. The debouncing
(online delay, offline grace) is the presence service's rule, not the backend's.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable


class PresenceBackend(abc.ABC):
    @abc.abstractmethod
    def add_device(self, user_id: str, device_key: str) -> int:
        """Count a device as connected; returns the user's connected devices."""

    @abc.abstractmethod
    def remove_device(self, user_id: str, device_key: str) -> int:
        """Stop counting a device; returns the user's connected devices left."""

    @abc.abstractmethod
    def devices(self, user_id: str) -> int: ...

    @abc.abstractmethod
    def connected_among(self, user_ids: Iterable[str]) -> list[str]:
        """Those of `user_ids` with at least one device connected."""
