"""Wall-clock milliseconds, the contract's unit for every timestamp."""

from __future__ import annotations

import time


def now_ms() -> int:
    return time.time_ns() // 1_000_000
