"""Token buckets: the one mechanism behind every rate limit."""

from __future__ import annotations

import time
from collections import OrderedDict


class TokenBucket:
    """`rate` tokens per second, holding at most `burst`. A rate of 0 means unlimited."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.stamp = time.monotonic()

    def level(self) -> float:
        """Tokens there now (refilled for the time since the last look)."""
        if self.rate <= 0:
            return self.burst
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        return self.tokens

    def take(self, n: float = 1.0) -> bool:
        if self.rate <= 0:
            return True
        if self.level() >= n:
            self.tokens -= n
            return True
        return False

    def retry_after(self, n: float = 1.0) -> float:
        """Seconds until `n` tokens will be there."""
        return 0.0 if self.rate <= 0 else max(0.0, (n - self.tokens) / self.rate)


class KeyedLimiter:
    """One bucket per key (an address, an account), remembering at most `max_keys` keys.

    The least recently used key is forgotten first; forgetting only ever
    refills a bucket, so memory stays bounded without ever wrongly refusing.
    """

    def __init__(self, rate: float, burst: float, max_keys: int = 100_000) -> None:
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def bucket(self, key: str) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst)
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket

    def take(self, key: str) -> bool:
        return self.bucket(key).take()
