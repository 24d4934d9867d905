"""The redo log: where a batch of writes becomes durable before SQLite has it.

A SQLite commit in WAL mode writes a frame (two system calls) for every page
the transaction touched, and a batch of chat traffic touches a few rows on
each of many pages: at one durable commit per batch, `COMMIT` was half of the
writer's CPU per write at 5k msg/s (44 of 85 us). So a batch is made durable
here instead, by one write and one fdatasync, and SQLite commits the
accumulated batches every so often: a hot page then reaches the WAL once per
interval, not once per batch. After a crash, the batches logged here but
missing from SQLite are run again, in order, from their logged writes (the
writes are deterministic: ids, times and counters come from their arguments
and the database).

Two files take turns. Once SQLite holds every batch in the file not being
written, durably, that file is overwritten from its start; an overwrite of
zero-filled space has no file size for fdatasync to journal. Records are
`[length u32][crc32 u32][batch u64][payload]`, the CRC covering batch and
payload. Recovery reads both files, keeps the records after the last batch
SQLite holds, and stops at the first gap: stale records are older than that,
and a record torn by a crash fails its CRC (it was never acknowledged).
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

_HEAD = struct.Struct("<II")  # payload length, crc32 of (batch + payload)
_BATCH = struct.Struct("<Q")
#: Bytes zero-filled ahead of use per file: more than one apply interval
#: writes at 10k writes/s (a file that fills up grows instead).
PREALLOCATE = 4 << 20


class _File:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1
        self.offset = 0
        #: The highest batch written since this file last started over.
        self.newest = 0


class RedoLog:
    def __init__(self, path: Path) -> None:
        self._files = [_File(path.with_name(f"{path.name}-{i}")) for i in (0, 1)]
        self._current = 0

    def discard(self) -> None:
        """Delete the files: for a new database, which no logged batch belongs to."""
        for f in self._files:
            f.path.unlink(missing_ok=True)

    def open(self, applied: int) -> list[tuple[int, bytes]]:
        """Open the files (creating them) and return the records after batch
        `applied` (the last one SQLite holds), in batch order."""
        found: dict[int, bytes] = {}
        for f in self._files:
            f.fd = os.open(f.path, os.O_RDWR | os.O_CREAT, 0o600)
            data = f.path.read_bytes()
            for batch, payload, end in _scan(data):
                if batch > applied:
                    found[batch] = payload
                    f.newest, f.offset = batch, end
            if len(data) < PREALLOCATE:
                os.pwrite(f.fd, bytes(PREALLOCATE - len(data)), len(data))
                os.fsync(f.fd)
        records = []
        batch = applied + 1
        while batch in found:
            records.append((batch, found[batch]))
            batch += 1
        # Go on after the newest record; both files stay until SQLite holds them.
        self._current = max((0, 1), key=lambda i: self._files[i].newest)
        return records

    def append(self, batch: int, payload: bytes) -> None:
        """Write one batch's record and wait until it is on disk. On an OSError
        the same call may be repeated: it rewrites the record in place."""
        f = self._files[self._current]
        body = _BATCH.pack(batch) + payload
        record = _HEAD.pack(len(payload), zlib.crc32(body)) + body
        os.pwrite(f.fd, record, f.offset)
        os.fdatasync(f.fd)
        f.offset += len(record)
        f.newest = batch

    def held_up_to(self, batch: int) -> None:
        """SQLite now holds every batch up to `batch` durably: a file whose
        records it all holds may start over."""
        current = self._files[self._current]
        other = self._files[1 - self._current]
        if current.newest <= batch:
            current.offset = current.newest = 0
        elif other.newest <= batch:
            other.offset = other.newest = 0
            self._current = 1 - self._current

    def close(self) -> None:
        for f in self._files:
            if f.fd >= 0:
                os.close(f.fd)
                f.fd = -1


def _scan(data: bytes) -> list[tuple[int, bytes, int]]:
    """The well-formed records at the start of a file: (batch, payload, end offset)."""
    records = []
    offset = 0
    header = _HEAD.size + _BATCH.size
    while offset + header <= len(data):
        length, crc = _HEAD.unpack_from(data, offset)
        end = offset + header + length
        if end > len(data) or zlib.crc32(data[offset + _HEAD.size : end]) != crc:
            break  # the zeroed tail, or a record torn by a crash
        (batch,) = _BATCH.unpack_from(data, offset + _HEAD.size)
        records.append((batch, data[offset + header : end], end))
        offset = end
    return records
