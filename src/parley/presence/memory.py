"""In-process presence: enough for one node; a cluster needs a shared backend."""

from __future__ import annotations

from collections.abc import Iterable

from parley.presence.base import PresenceBackend


class MemoryPresence(PresenceBackend):
    def __init__(self) -> None:
        self._devices: dict[str, set[str]] = {}

    def add_device(self, user_id: str, device_key: str) -> int:
        devices = self._devices.setdefault(user_id, set())
        devices.add(device_key)
        return len(devices)

    def remove_device(self, user_id: str, device_key: str) -> int:
        devices = self._devices.get(user_id)
        if devices is None:
            return 0
        devices.discard(device_key)
        if not devices:
            del self._devices[user_id]
            return 0
        return len(devices)

    def devices(self, user_id: str) -> int:
        return len(self._devices.get(user_id, ()))

    def connected_among(self, user_ids: Iterable[str]) -> list[str]:
        devices = self._devices
        return [u for u in user_ids if u in devices]
