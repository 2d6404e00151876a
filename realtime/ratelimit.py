"""Per-client token-bucket rate limiting with bounded memory.

Framework-free: ``ops`` keys a :class:`RateLimiter` by client address and turns a
refusal into ``429 Too Many Requests`` with ``Retry-After``.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """A token bucket per key: ``per_minute`` tokens refill evenly; a full bucket allows a burst.

    Memory is bounded: at most ``max_keys`` buckets are kept, least recently used
    evicted first. Evicting a bucket can only *favour* that client (it comes back
    full), so an attacker cycling addresses gains nothing over a fresh start, and
    a full bucket carries no information, so it is dropped when seen.
    ``per_minute <= 0`` disables the limit.
    """

    def __init__(
        self,
        per_minute: int,
        *,
        burst: int | None = None,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_minute = per_minute
        self.capacity = float(burst if burst is not None else max(per_minute, 1))
        self.rate = per_minute / 60.0  # tokens per second
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()
        self._calls = 0

    @property
    def enabled(self) -> bool:
        return self.per_minute > 0

    def __len__(self) -> int:
        return len(self._buckets)

    def acquire(self, key: str, cost: float = 1.0) -> float:
        """Take ``cost`` tokens for ``key``. Returns 0.0 if allowed, else seconds until it would be."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        with self._lock:
            bucket = self._buckets.pop(key, None)
            if bucket is None:
                bucket = _Bucket(self.capacity, now)
            else:
                bucket.tokens = min(self.capacity, bucket.tokens + (now - bucket.stamp) * self.rate)
                bucket.stamp = now
            if bucket.tokens >= cost:
                bucket.tokens -= cost
                wait = 0.0
            else:
                wait = (cost - bucket.tokens) / self.rate
            self._buckets[key] = bucket  # most recently used at the end
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
            self._calls += 1
        if self._calls % 1024 == 0:  # amortised: keeps idle memory near zero between bursts
            self.prune()
        return wait

    def retry_after(self, wait: float) -> int:
        """``wait`` rounded up to whole seconds for a ``Retry-After`` header (at least 1)."""
        return max(1, math.ceil(wait))

    def prune(self) -> int:
        """Drop buckets that have refilled completely (they equal a fresh bucket). Returns how many."""
        if not self.enabled:
            return 0
        now = self._clock()
        with self._lock:
            full = [
                k for k, b in self._buckets.items() if b.tokens + (now - b.stamp) * self.rate >= self.capacity
            ]
            for k in full:
                del self._buckets[k]
        return len(full)
